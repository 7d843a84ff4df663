//! What sits above every driver: calls run in the order they were made (upstream runs a
//! driver's calls on a one-worker executor, and callers rely on that order), results are
//! waited on from any thread, the heartbeat runs as a task on the shared runtime, and
//! memberships are kept and healed (`membership.rs`) between calls.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use crate::driver::Driver;
use crate::error::Result;
use crate::log::{self, Level};
use crate::membership::Membership;

const LOGGER: &str = "tooz.coordination";
use crate::runtime;

/// The result of a call that is running on the runtime.
pub struct Pending<T> {
    state: Arc<PendingState<T>>,
}

struct PendingState<T> {
    value: Mutex<Option<Result<T>>>,
    ready: Condvar,
    /// Wakes async waiters (`tooz.aio`).
    ready_async: Notify,
}

impl<T: Clone> Pending<T> {
    fn new() -> Self {
        Pending {
            state: Arc::new(PendingState { value: Mutex::new(None), ready: Condvar::new(), ready_async: Notify::new() }),
        }
    }

    fn complete(&self, value: Result<T>) {
        *self.state.value.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
        self.state.ready.notify_all();
        self.state.ready_async.notify_waiters();
    }

    /// Waits for the result without blocking a thread. Dropping this wait leaves the call
    /// running (calls run in order and are not withdrawn, as upstream's).
    pub async fn wait_async(&self) -> Result<T> {
        loop {
            let notified = self.state.ready_async.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = self.state.value.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                return v;
            }
            notified.await;
        }
    }

    pub fn is_done(&self) -> bool {
        self.state.value.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Waits for the result; `None` when `timeout` passed first.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<Result<T>> {
        let guard = self.state.value.lock().unwrap_or_else(|p| p.into_inner());
        let guard = match timeout {
            None => self.state.ready.wait_while(guard, |v| v.is_none()).unwrap_or_else(|p| p.into_inner()),
            Some(t) => {
                self.state.ready.wait_timeout_while(guard, t, |v| v.is_none()).unwrap_or_else(|p| p.into_inner()).0
            }
        };
        guard.clone()
    }
}

impl<T> Clone for Pending<T> {
    fn clone(&self) -> Self {
        Pending { state: self.state.clone() }
    }
}

#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
    heart: Arc<HeartState>,
}

struct Inner {
    driver: Arc<dyn Driver>,
    membership: Arc<Membership>,
    /// Completion signal of the most recently submitted call, and the fork generation it
    /// belongs to (a call in flight in the parent never completes in a forked child).
    tail: Mutex<(u64, Option<oneshot::Receiver<()>>)>,
    /// The process image (fork generation) that started the coordinator; `u64::MAX`: none.
    started: AtomicU64,
}

struct HeartState {
    running: Mutex<bool>,
    stopped: Condvar,
    stop_requested: AtomicBool,
    wake: Notify,
    beats: AtomicU64,
    /// Counts the heart's starts: a renewal loop serves one run of the heart.
    runs: AtomicU64,
    generation: AtomicU64,
    /// The process image whose lease keeper runs ([`Coordinator::keep_leases`]), and the one
    /// whose keeper was told to stop; `u64::MAX`: none.
    keeper: AtomicU64,
    keeper_stop: AtomicU64,
}

impl HeartState {
    /// Whether the heart runs in process image `generation` (a forked child's copy of its
    /// parent's flag says nothing of the child).
    fn alive_in(&self, generation: u64) -> bool {
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) && self.generation.load(Ordering::SeqCst) == generation
    }
}

impl Coordinator {
    pub fn new(driver: Arc<dyn Driver>, membership: Membership) -> Self {
        Coordinator {
            inner: Arc::new(Inner {
                driver,
                membership: Arc::new(membership),
                tail: Mutex::new((runtime::generation(), None)),
                started: AtomicU64::new(u64::MAX),
            }),
            heart: Arc::new(HeartState {
                running: Mutex::new(false),
                stopped: Condvar::new(),
                stop_requested: AtomicBool::new(false),
                wake: Notify::new(),
                beats: AtomicU64::new(0),
                runs: AtomicU64::new(0),
                generation: AtomicU64::new(0),
                keeper: AtomicU64::new(u64::MAX),
                keeper_stop: AtomicU64::new(u64::MAX),
            }),
        }
    }

    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.inner.driver
    }

    pub fn membership(&self) -> &Arc<Membership> {
        &self.inner.membership
    }

    /// Runs `call` on the runtime after every call submitted before it has finished; then,
    /// if the backend may have lost this coordinator's memberships meanwhile, heals them
    /// before the next call runs.
    pub fn submit<T, F, Fut>(&self, call: F) -> Pending<T>
    where
        T: Clone + Send + 'static,
        F: FnOnce(Arc<dyn Driver>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        self.inner.submit(call)
    }
}

impl Inner {
    fn submit<T, F, Fut>(&self, call: F) -> Pending<T>
    where
        T: Clone + Send + 'static,
        F: FnOnce(Arc<dyn Driver>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let pending = Pending::new();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let previous = {
            let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
            let generation = runtime::generation();
            let previous = if tail.0 == generation { tail.1.take() } else { None };
            *tail = (generation, Some(done_rx));
            previous
        };
        let driver = self.driver.clone();
        let membership = self.membership.clone();
        let out = pending.clone();
        runtime::run_here_then_spawn(Box::pin(async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            out.complete(call(driver.clone()).await);
            if membership.heal_due(driver.as_ref()) {
                membership.heal(driver.as_ref()).await;
            }
            drop(done_tx);
        }));
        pending
    }
}

impl Coordinator {
    // ------------------------------------------------------------ process images

    /// Records that this process image started the coordinator.
    pub fn mark_started(&self) {
        self.inner.started.store(runtime::generation(), Ordering::SeqCst);
    }

    /// Whether this is a forked child of the process that started the coordinator (a
    /// pre-fork worker using what its parent set up): its `stop()` leaves the parent's
    /// memberships and session alone ([`Driver::stop_inherited`]).
    pub fn inherited(&self) -> bool {
        let started = self.inner.started.load(Ordering::SeqCst);
        started != u64::MAX && started != runtime::generation()
    }

    /// In a forked child of a process whose heart was beating at the fork, starts (once per
    /// process image) the task that keeps the leases of the locks this child takes alive:
    /// the heart stayed in the parent, and the parent must not extend a child's locks (it
    /// would keep a dead worker's locks alive). It extends nothing else — the parent's heart
    /// keeps the membership — and ends at `stop()`, or when the child starts a heart of its
    /// own. Cheap to call before every acquire.
    pub fn keep_leases(&self) {
        let generation = runtime::generation();
        let heart = &self.heart;
        if heart.keeper.load(Ordering::SeqCst) == generation || !self.inherited() {
            return;
        }
        // `try_lock`: a lock the fork copied held (by a thread the child does not have) would
        // never come free; the heart holds it only for a moment, while it runs.
        let running = heart.running.try_lock().map(|r| *r).unwrap_or(true);
        let beating_at_fork = running && heart.generation.load(Ordering::SeqCst) != generation;
        if !beating_at_fork || heart.keeper.swap(generation, Ordering::SeqCst) == generation {
            return;
        }
        let (inner, heart) = (self.inner.clone(), self.heart.clone());
        runtime::runtime().spawn(renew_leases(inner.driver.clone(), " of a forked worker", move || {
            heart.keeper_stop.load(Ordering::SeqCst) == generation || heart.alive_in(generation)
        }));
    }

    /// Leaves what is joined (failures ignored, as upstream's stop does), in call order; a
    /// forked child of the process that started the coordinator forgets the memberships
    /// instead (they are its parent's, which lives on).
    pub fn submit_leave_joined(&self) -> Pending<()> {
        let inherited = self.inherited();
        let membership = self.inner.membership.clone();
        self.submit(move |d| async move {
            leave_joined(&membership, d.as_ref(), inherited).await;
            Ok(())
        })
    }

    /// Stops, in call order: leaves what is joined first when `leave`, then the driver. In a
    /// forked child of the process that started the coordinator only the child's part stops
    /// (its lease keeper, and the locks it took: [`Driver::stop_inherited`]). `done` is the
    /// result once stopped.
    pub fn submit_stop<T: Clone + Send + 'static>(&self, leave: bool, done: T) -> Pending<T> {
        self.heart.keeper_stop.store(runtime::generation(), Ordering::SeqCst);
        let inherited = self.inherited();
        let membership = self.inner.membership.clone();
        self.submit(move |d| async move {
            if leave {
                leave_joined(&membership, d.as_ref(), inherited).await;
            }
            if inherited {
                d.stop_inherited().await?;
            } else {
                d.stop().await?;
            }
            Ok(done)
        })
    }

    // ------------------------------------------------------------ heartbeat

    pub fn heart_alive(&self) -> bool {
        self.heart.alive_in(runtime::generation())
    }

    pub fn heart_beats(&self) -> u64 {
        self.heart.beats.load(Ordering::SeqCst)
    }

    /// Starts the heartbeat task unless it is already running.
    pub fn start_heart(&self) {
        let heart = self.heart.clone();
        {
            let mut running = heart.running.lock().unwrap_or_else(|p| p.into_inner());
            if *running && heart.generation.load(Ordering::SeqCst) == runtime::generation() {
                return;
            }
            *running = true;
        }
        heart.generation.store(runtime::generation(), Ordering::SeqCst);
        heart.stop_requested.store(false, Ordering::SeqCst);
        heart.beats.store(0, Ordering::SeqCst);
        let inner = self.inner.clone();
        if inner.driver.renews_leases() {
            // The locks' leases on a loop of their own, so an unanswered membership beat never
            // delays a renewal (nor the other way round).
            let heart = heart.clone();
            let run = heart.runs.fetch_add(1, Ordering::SeqCst) + 1;
            runtime::runtime().spawn(renew_leases(inner.driver.clone(), "", move || {
                heart.stop_requested.load(Ordering::SeqCst) || heart.runs.load(Ordering::SeqCst) != run
            }));
        }
        runtime::runtime().spawn(async move {
            let driver = inner.driver.clone();
            let mut failures = 0u64;
            while !heart.stop_requested.load(Ordering::SeqCst) {
                let began = Instant::now();
                let pause = match driver.beat().await {
                    Ok(next) => {
                        heart.beats.fetch_add(1, Ordering::SeqCst);
                        if failures > 0 {
                            log::emit(
                                Level::Info,
                                LOGGER,
                                format!("heartbeat of {} works again after {failures} failed attempt(s)", inner.membership.label()),
                            );
                            failures = 0;
                        }
                        let took = began.elapsed().as_secs_f64();
                        if let Some(next) = next.filter(|n| took > *n) {
                            log::emit(
                                Level::Warning,
                                LOGGER,
                                format!(
                                    "heartbeat of {} took {took:.2}s, {:.2}s longer than the time to the next one: \
                                     locks and memberships may lapse",
                                    inner.membership.label(),
                                    took - next
                                ),
                            );
                        }
                        if inner.membership.heal_due(driver.as_ref()) {
                            // In call order, like any call: a no-op call, healed after.
                            let _ = inner.submit(|_| async { Ok(()) });
                        }
                        let next = next.unwrap_or(1.0).max(0.0);
                        let left = (next - began.elapsed().as_secs_f64()).max(0.0);
                        Duration::from_secs_f64(left / 2.0)
                    }
                    // Upstream retries a failed beat every second until it works (and logs
                    // each retry); one record per minute of failures is enough to see it.
                    Err(e) => {
                        if failures.is_multiple_of(60) {
                            log::emit(
                                Level::Warning,
                                LOGGER,
                                format!("heartbeat of {} failed, retrying every second: {e}", inner.membership.label()),
                            );
                        }
                        failures += 1;
                        Duration::from_secs(1)
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = heart.wake.notified() => {}
                }
            }
            *heart.running.lock().unwrap_or_else(|p| p.into_inner()) = false;
            heart.stopped.notify_all();
        });
    }

    pub fn stop_heart(&self) {
        self.heart.stop_requested.store(true, Ordering::SeqCst);
        self.heart.wake.notify_one();
    }

    /// Waits for the heartbeat task to end; returns whether it is still running.
    pub fn wait_heart(&self, timeout: Option<Duration>) -> bool {
        if self.heart.generation.load(Ordering::SeqCst) != runtime::generation() {
            return false;
        }
        let guard = self.heart.running.lock().unwrap_or_else(|p| p.into_inner());
        let guard = match timeout {
            None => self.heart.stopped.wait_while(guard, |r| *r).unwrap_or_else(|p| p.into_inner()),
            Some(t) => self.heart.stopped.wait_timeout_while(guard, t, |r| *r).unwrap_or_else(|p| p.into_inner()).0,
        };
        *guard
    }
}

/// Renews the leases of the locks `driver` holds until `done` says so: each renewal as it
/// falls due (the driver's `extend_locks` says when), a failed one again a tenth of a second
/// later (each renewal gives up by itself when the leases it renews run out on the holder's
/// clock, which tells their holders; what is left to renew then is what was taken since).
async fn renew_leases(driver: Arc<dyn Driver>, whose: &'static str, done: impl Fn() -> bool + Send + 'static) {
    let mut failures = 0u64;
    while !done() {
        let began = Instant::now();
        let pause = match driver.extend_locks().await {
            Ok(Some(next)) => {
                failures = 0;
                Duration::from_secs_f64(next.max(0.01)).saturating_sub(began.elapsed())
            }
            Ok(None) => return, // no leases on this backend
            Err(e) => {
                if failures.is_multiple_of(50) {
                    log::emit(Level::Warning, LOGGER, format!("renewing the leases of the locks{whose} failed, retrying: {e}"));
                }
                failures += 1;
                Duration::from_millis(100)
            }
        };
        tokio::time::sleep(pause).await;
    }
}

/// Leaves every joined group, or (in a forked child of the process that started the
/// coordinator: `inherited`) forgets them, the parent's.
async fn leave_joined(membership: &Membership, driver: &dyn Driver, inherited: bool) {
    if inherited {
        membership.forget_all();
    } else {
        membership.leave_all(driver).await;
    }
}
