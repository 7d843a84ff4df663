//! The one tokio runtime of the process, safe across `os.fork()`.
//!
//! A forked child inherits the parent's memory but none of its threads, so the parent's
//! runtime is dead weight there. A `pthread_atfork` child hook bumps a generation counter;
//! the first use in the child builds a fresh runtime. The parent's runtime is leaked in the
//! child on purpose: dropping it would try to join threads that do not exist.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Wake, Waker};

use tokio::runtime::{Builder, Runtime};

static GENERATION: AtomicU64 = AtomicU64::new(0);
static CURRENT: AtomicPtr<Slot> = AtomicPtr::new(std::ptr::null_mut());
static HOOK: Once = Once::new();

struct Slot {
    generation: u64,
    runtime: Runtime,
}

extern "C" fn after_fork_in_child() {
    GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// How many times this process image has been forked into (0 in the original process).
pub fn generation() -> u64 {
    GENERATION.load(Ordering::SeqCst)
}

pub fn runtime() -> &'static Runtime {
    HOOK.call_once(|| unsafe {
        libc::pthread_atfork(None, None, Some(after_fork_in_child));
    });
    let generation = generation();
    let cur = CURRENT.load(Ordering::Acquire);
    if !cur.is_null() {
        // SAFETY: slots are leaked, never freed.
        let slot = unsafe { &*cur };
        if slot.generation == generation {
            return &slot.runtime;
        }
    }
    let runtime = Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tooz-runtime")
        .thread_stack_size(8 << 20)
        .enable_all()
        .build()
        .expect("cannot build the tokio runtime");
    let fresh = Box::into_raw(Box::new(Slot { generation, runtime }));
    match CURRENT.compare_exchange(cur, fresh, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => unsafe { &(*fresh).runtime },
        Err(winner) => {
            // Another thread installed one first; ours was never used. Leak it rather than
            // drop a runtime from a context that might be async.
            unsafe { &(*winner).runtime }
        }
    }
}

thread_local! {
    static CALLER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Until when this thread polls a future in [`poll_briefly`].
    static BRIEF: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
}

/// What is left of the moment [`poll_briefly`] polls for, when this thread is in one: a client
/// may wait that long for a reply here (e.g. in `poll(2)`) before handing its wait to the
/// runtime's reactor.
pub fn brief_budget() -> Option<std::time::Duration> {
    BRIEF.with(|b| b.get()).map(|until| until.saturating_duration_since(std::time::Instant::now())).filter(|d| !d.is_zero())
}

/// Runs a future to completion from a thread that is not a runtime worker.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    struct Caller(bool);
    impl Drop for Caller {
        fn drop(&mut self) {
            CALLER.with(|c| c.set(self.0));
        }
    }
    let _restore = Caller(CALLER.with(|c| c.replace(true)));
    runtime().block_on(fut)
}

/// Whether this thread is a caller's, waiting in [`block_on`] for the future it polls: a
/// client may then wait for a reply in a blocking system call (the kernel wakes this thread
/// when the bytes arrive, without a hop through a runtime worker); on a worker it must not.
pub fn on_caller_thread() -> bool {
    CALLER.with(|c| c.get())
}

/// Waits, through the runtime's reactor, until the socket `fd` is ready for `interest`. It is
/// registered for this wait only: a socket the reactor does not otherwise watch (one a
/// caller's thread reads itself) wakes no runtime thread at other times.
///
/// # Safety
/// `fd` must stay open, and the same descriptor, until the future is done or dropped.
pub async unsafe fn fd_ready(fd: std::os::fd::RawFd, interest: tokio::io::Interest) -> std::io::Result<()> {
    struct Borrowed(std::os::fd::RawFd);
    impl std::os::fd::AsRawFd for Borrowed {
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            self.0
        }
    }
    // SAFETY: the caller keeps `fd` open and the same until `watched` is dropped below.
    let watched = unsafe { tokio::io::unix::AsyncFd::register_with_interest(Borrowed(fd), interest) }
        .map_err(|e| e.into_parts().1)?;
    watched.ready(interest).await.map(drop)
}

/// A task to run to completion on the runtime.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Polls `task` once on the calling thread, so that a call needing no I/O wait (most of a
/// local backend's) completes without a hand-off to a runtime thread. A task still pending
/// moves to the runtime at its first wake-up (its reply or timer is ready), not before:
/// spawning it at once would wake a runtime thread only to poll it, find it still waiting and
/// park again, once per call.
pub fn run_here_then_spawn(mut task: Task) {
    let rt = runtime();
    let parked = Arc::new(Parked { slot: Mutex::new((None, false)), handle: rt.handle().clone() });
    let waker = Waker::from(parked.clone());
    let ready = {
        let _context = rt.enter();
        task.as_mut().poll(&mut Context::from_waker(&waker)).is_ready()
    };
    if ready {
        return;
    }
    let woken_meanwhile = {
        let mut slot = parked.slot.lock().unwrap_or_else(|p| p.into_inner());
        if slot.1 {
            Some(task)
        } else {
            slot.0 = Some(task);
            None
        }
    };
    if let Some(task) = woken_meanwhile {
        rt.spawn(task);
    }
}

/// A task polled once off the runtime, waiting for its first wake-up: `(task, woken)`. The
/// runtime's own polls register the runtime's waker; a later wake-up of this one finds the
/// slot empty and does nothing.
struct Parked {
    slot: Mutex<(Option<Task>, bool)>,
    handle: tokio::runtime::Handle,
}

impl Wake for Parked {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let task = {
            let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            slot.1 = true;
            slot.0.take()
        };
        if let Some(task) = task {
            self.handle.spawn(task);
        }
    }
}

/// A count of threads or calls inside something, per fork generation: a forked child starts
/// from zero (it has none of its parent's threads, nor the greenthreads of a hub it replaced).
/// The count is in the low bits, the generation it belongs to above them; an atomic rather
/// than a lock, which a fork could copy held.
pub struct ForkCount(AtomicU64);

const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

impl ForkCount {
    pub const fn new() -> Self {
        ForkCount(AtomicU64::new(0))
    }

    pub fn enter(&self) {
        let generation = generation();
        let _ = self.0.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
            Some(if v >> COUNT_BITS == generation { v + 1 } else { (generation << COUNT_BITS) | 1 })
        });
    }

    pub fn leave(&self) {
        let generation = generation();
        let _ = self.0.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
            (v >> COUNT_BITS == generation && v & COUNT_MASK > 0).then(|| v - 1)
        });
    }

    /// How many are inside in this process image.
    pub fn count(&self) -> u64 {
        let v = self.0.load(Ordering::SeqCst);
        if v >> COUNT_BITS == generation() {
            v & COUNT_MASK
        } else {
            0
        }
    }
}

impl Default for ForkCount {
    fn default() -> Self {
        Self::new()
    }
}

/// A value that belongs to the process image that made it: a forked child finds the default
/// instead (e.g. the locks a coordinator holds: the parent's are not the child's to extend or
/// release). The parent's value is leaked in the child, not dropped: it may hold resources of
/// the parent's runtime.
pub struct PerImage<T: Default> {
    generation: u64,
    value: T,
}

impl<T: Default> PerImage<T> {
    pub fn new() -> Self {
        PerImage { generation: generation(), value: T::default() }
    }

    /// This process image's value.
    pub fn get(&mut self) -> &mut T {
        let now = generation();
        if self.generation != now {
            std::mem::forget(std::mem::take(&mut self.value));
            self.generation = now;
        }
        &mut self.value
    }
}

impl<T: Default> Default for PerImage<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// How long a thread in a brief moment ([`poll_briefly`]) looks for what it waits for without
/// sleeping, before it sleeps for the rest. A reply from a server on the same host or a near
/// one comes within tens of microseconds; a thread that sleeps for it pays its CPU's wake-up
/// on top (measured on this project's 2-vCPU VM: a Redis PING round trip 56-60 us sleeping in
/// `recv`, 22 us looking without sleeping). Past it, a far server costs at most this much
/// CPU time more per wait.
pub const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// Waits without sleeping until `ready()` or `limit` has passed (then `false`).
pub fn spin_until(limit: std::time::Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        if ready() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::hint::spin_loop();
    }
}

/// Polls `fut` on the calling thread (not a runtime worker, and not one that may block: the
/// future's I/O waits are the runtime's) until it is ready or `budget` has passed, waiting
/// between wake-ups first without sleeping ([`SPIN`]), then parked: its output, or `None` with
/// the future still pending, to be finished elsewhere (e.g. spawned). For a caller that may
/// block only briefly but would pay more for handing a call that is quick anyway to a runtime
/// thread and back.
pub fn poll_briefly<F: Future + Unpin>(fut: &mut F, budget: std::time::Duration) -> Option<F::Output> {
    struct Unpark {
        thread: std::thread::Thread,
        woken: std::sync::atomic::AtomicBool,
    }
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            // The token first: a spin that sees the flag then takes the token (below), so
            // none is left to cut the next wait's sleep short.
            self.thread.unpark();
            self.woken.store(true, Ordering::Release);
        }
    }
    struct Brief(Option<std::time::Instant>);
    impl Drop for Brief {
        fn drop(&mut self) {
            BRIEF.with(|b| b.set(self.0));
        }
    }
    let until = std::time::Instant::now() + budget;
    let _restore = Brief(BRIEF.with(|b| b.replace(Some(until))));
    let unpark = Arc::new(Unpark { thread: std::thread::current(), woken: false.into() });
    let waker = Waker::from(unpark.clone());
    let mut cx = Context::from_waker(&waker);
    let _context = runtime().enter();
    loop {
        unpark.woken.store(false, Ordering::Relaxed);
        if let std::task::Poll::Ready(v) = Pin::new(&mut *fut).poll(&mut cx) {
            return Some(v);
        }
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        if spin_until(left.min(SPIN), || unpark.woken.load(Ordering::Acquire)) {
            std::thread::park_timeout(std::time::Duration::ZERO);
            continue;
        }
        // A wake-up that came meanwhile left its token: this returns at once then.
        std::thread::park_timeout(until.saturating_duration_since(std::time::Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::task::Poll;
    use std::time::Duration;

    #[test]
    fn a_task_that_needs_no_wait_runs_on_the_calling_thread() {
        let here = std::thread::current().id();
        let (tx, rx) = mpsc::channel();
        run_here_then_spawn(Box::pin(async move { tx.send(std::thread::current().id()).unwrap() }));
        assert_eq!(rx.try_recv().unwrap(), here);
    }

    #[test]
    fn a_waiting_task_runs_on_when_woken_from_any_thread() {
        let (wake_tx, wake_rx) = tokio::sync::oneshot::channel::<u32>();
        let (tx, rx) = mpsc::channel();
        run_here_then_spawn(Box::pin(async move { tx.send(wake_rx.await.unwrap() + 1).unwrap() }));
        assert!(rx.try_recv().is_err());
        std::thread::spawn(move || wake_tx.send(41).unwrap()).join().unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 42);
    }

    #[test]
    fn a_task_woken_during_its_first_poll_is_not_lost() {
        let (tx, rx) = mpsc::channel();
        let mut first = true;
        let wakes_itself = std::future::poll_fn(move |cx| {
            if std::mem::take(&mut first) {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        });
        run_here_then_spawn(Box::pin(async move {
            wakes_itself.await;
            tx.send(()).unwrap();
        }));
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
    }

    #[test]
    fn a_timer_set_on_the_calling_thread_fires_on_the_runtime() {
        let (tx, rx) = mpsc::channel();
        run_here_then_spawn(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(()).unwrap();
        }));
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
    }

    #[test]
    fn a_brief_poll_gives_a_quick_future_its_output_and_leaves_a_slow_one_pending() {
        let mut quick = Box::pin(async {
            tokio::task::yield_now().await;
            7
        });
        assert_eq!(poll_briefly(&mut quick, Duration::from_millis(500)), Some(7));
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let mut slow = Box::pin(async move { rx.await.unwrap() + 1 });
        let started = std::time::Instant::now();
        assert_eq!(poll_briefly(&mut slow, Duration::from_micros(300)), None);
        assert!(started.elapsed() < Duration::from_millis(100));
        let woken = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            tx.send(41).unwrap()
        });
        assert_eq!(poll_briefly(&mut slow, Duration::from_secs(10)), Some(42));
        woken.join().unwrap();
    }

    #[test]
    fn a_spin_ends_when_ready_or_after_its_limit() {
        let mut looks = 0;
        assert!(spin_until(Duration::from_secs(5), || {
            looks += 1;
            looks == 3
        }));
        assert_eq!(looks, 3);
        let started = std::time::Instant::now();
        assert!(!spin_until(Duration::from_micros(200), || false));
        assert!(started.elapsed() >= Duration::from_micros(200));
    }

    #[test]
    fn a_fork_count_counts_in_and_out() {
        let c = ForkCount::new();
        c.enter();
        c.enter();
        c.leave();
        assert_eq!(c.count(), 1);
        c.leave();
        c.leave();
        assert_eq!(c.count(), 0);
    }
}
