//! What a lock object knows about its holding beyond the backend: the fencing token of its
//! last acquisition, and whom to tell when a holding turns out to be lost (its TTL lapsed, its
//! key was deleted or taken, its session ended) without `release()` having been called.
//!
//! Drivers call [`Fate::acquired`] / [`Fate::released`] around a holding and [`Fate::lost`]
//! when they learn of a loss (a failed extension at a heartbeat, an ownership check that
//! fails, a new session); the first loss of a holding is logged and reported, later ones are
//! not.
//!
//! A holding on a lease (a key with a TTL) also runs on the holder's own clock
//! ([`Fate::acquired_on_lease`], [`Fate::renewed`]; the deadlines come from `lease.rs`): past
//! its deadline the holding is not held, whatever the server was last heard to say, and a
//! watchdog task reports the loss at that moment — it waits on nothing but the clock, so a
//! renewal stuck on an unanswered request cannot delay it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::log::{self, Level};

/// Called (once per lost holding) when the lock is found lost.
pub type OnLost = Arc<dyn Fn() + Send + Sync>;

/// What a lease backend does when a holding's clock ran out: forget the holding (no more
/// renewals), report it with [`Fate::lost`], and delete the key if it is still this holder's
/// once the server answers again. Given the reason to report.
pub type OnExpiry = Box<dyn FnOnce(&'static str) + Send>;

/// The reason logged and reported when a holding's own clock ran out.
pub const LEASE_RAN_OUT: &str = "its lease ran out on the holder's clock: no renewal was answered in time \
                                 (server unreachable or too slow), so another process may take it now";

pub struct Fate {
    logger: &'static str,
    /// What is held ("lock", "leadership"), and which one, for log records.
    kind: &'static str,
    what: String,
    token: Mutex<Option<u64>>,
    holding: AtomicBool,
    callbacks: Mutex<Vec<OnLost>>,
    /// The holder's deadline of a holding on a lease (`None`: not on a lease), and which
    /// holding it belongs to.
    clock: Mutex<Clock>,
    /// Counts holdings: a watchdog serves one, and ends when another begins.
    term: AtomicU64,
    /// Wakes the watchdog when the holding ends on purpose.
    ended: Notify,
}

#[derive(Clone, Copy, Default)]
struct Clock {
    deadline: Option<Instant>,
}

impl Fate {
    /// `what` names the lock (and backend) in log records.
    pub fn new(logger: &'static str, what: String) -> Fate {
        Fate::of("lock", logger, what)
    }

    /// The fate of something else held on a lease (a `kind` such as "leadership").
    pub fn of(kind: &'static str, logger: &'static str, what: String) -> Fate {
        Fate {
            logger,
            kind,
            what,
            token: Mutex::new(None),
            holding: AtomicBool::new(false),
            callbacks: Mutex::new(Vec::new()),
            clock: Mutex::new(Clock::default()),
            term: AtomicU64::new(0),
            ended: Notify::new(),
        }
    }

    fn clock(&self) -> std::sync::MutexGuard<'_, Clock> {
        self.clock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A holding that lasts until it is released or found lost (a kernel lock, a session's).
    pub fn acquired(&self, token: Option<u64>) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = token;
        self.term.fetch_add(1, Ordering::SeqCst);
        self.clock().deadline = None;
        self.holding.store(true, Ordering::SeqCst);
        self.ended.notify_waiters();
    }

    /// A holding on a lease, held on this side until `deadline` unless [`Fate::renewed`]:
    /// then `on_expiry` runs, from a watchdog on the runtime.
    pub fn acquired_on_lease(self: &Arc<Self>, token: Option<u64>, deadline: Instant, on_expiry: OnExpiry) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = token;
        let term = self.term.fetch_add(1, Ordering::SeqCst) + 1;
        self.clock().deadline = Some(deadline);
        self.holding.store(true, Ordering::SeqCst);
        self.ended.notify_waiters();
        crate::runtime::runtime().spawn(watch(self.clone(), term, on_expiry));
    }

    /// The lease was extended by a request sent when `deadline` was computed: the holder's
    /// clock moves on to it (never back: answers may come out of order).
    pub fn renewed(&self, deadline: Instant) {
        let mut clock = self.clock();
        if let Some(d) = clock.deadline.as_mut() {
            *d = (*d).max(deadline);
        }
    }

    /// The holder's deadline of the current holding on a lease.
    pub fn deadline(&self) -> Option<Instant> {
        self.clock().deadline.filter(|_| self.holding.load(Ordering::SeqCst))
    }

    /// Released on purpose: no loss to report.
    pub fn released(&self) {
        self.holding.store(false, Ordering::SeqCst);
        self.ended.notify_waiters();
    }

    /// Whether the holding lasts: not released, not found lost, and its lease (if any) not
    /// past the holder's deadline.
    pub fn holding(&self) -> bool {
        self.holding.load(Ordering::SeqCst) && self.clock().deadline.is_none_or(|d| Instant::now() < d)
    }

    /// The fencing token of the last successful acquisition.
    pub fn token(&self) -> Option<u64> {
        *self.token.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn on_lost(&self, callback: OnLost) {
        self.callbacks.lock().unwrap_or_else(|p| p.into_inner()).push(callback);
    }

    /// The holding is gone (`why`): logged and reported once; false if it was not held.
    pub fn lost(&self, why: &str) -> bool {
        if !self.holding.swap(false, Ordering::SeqCst) {
            return false;
        }
        log::emit(Level::Warning, self.logger, format!("{} {} was lost: {why}", self.kind, self.what));
        let callbacks = self.callbacks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for callback in callbacks {
            callback();
        }
        true
    }
}

/// The watchdog of holding `term`: sleeps until its deadline (again, if it was renewed
/// meanwhile) and, if the holding still lasts then, runs `on_expiry`. Ends as soon as the
/// holding ends otherwise.
fn watch(fate: Arc<Fate>, term: u64, on_expiry: OnExpiry) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        loop {
            let ended = fate.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if fate.term.load(Ordering::SeqCst) != term || !fate.holding.load(Ordering::SeqCst) {
                return;
            }
            let Some(deadline) = fate.clock().deadline else { return };
            if Instant::now() >= deadline {
                on_expiry(LEASE_RAN_OUT);
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = &mut ended => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn a_holding_is_reported_lost_once_and_a_release_is_not_a_loss() {
        let fate = Fate::new("tooz.test", "l".into());
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        fate.on_lost(Arc::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
        }));
        assert!(!fate.lost("not held"), "nothing to lose");
        fate.acquired(Some(7));
        assert_eq!(fate.token(), Some(7));
        assert!(fate.lost("expired"));
        assert!(!fate.lost("again"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        fate.acquired(Some(8));
        fate.released();
        assert!(!fate.lost("after release"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(fate.token(), Some(8), "the last token stays readable");
    }

    #[test]
    fn a_lease_ends_on_the_holders_clock_unless_renewed_or_released() {
        use std::time::Duration;
        let expired = Arc::new(AtomicUsize::new(0));
        let on_expiry = |fate: &Arc<Fate>, expired: &Arc<AtomicUsize>| -> OnExpiry {
            let (f, e) = (fate.clone(), expired.clone());
            Box::new(move |why| {
                e.fetch_add(1, Ordering::SeqCst);
                f.lost(why);
            })
        };
        crate::runtime::block_on(async {
            let fate = Arc::new(Fate::new("tooz.test", "l".into()));
            let start = Instant::now();
            fate.acquired_on_lease(Some(1), start + Duration::from_millis(150), on_expiry(&fate, &expired));
            assert!(fate.holding());
            // A renewal moves the deadline on; an older answer arriving late does not move it back.
            fate.renewed(start + Duration::from_millis(300));
            fate.renewed(start + Duration::from_millis(200));
            tokio::time::sleep(Duration::from_millis(220)).await;
            assert!(fate.holding(), "renewed until 300 ms");
            assert_eq!(expired.load(Ordering::SeqCst), 0);
            tokio::time::sleep_until(start + Duration::from_millis(300)).await;
            assert!(!fate.holding(), "past its deadline it is not held, whatever the watchdog did yet");
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(expired.load(Ordering::SeqCst), 1, "the watchdog told once");

            // Released before its deadline: the watchdog ends without telling.
            let start = Instant::now();
            fate.acquired_on_lease(Some(2), start + Duration::from_millis(100), on_expiry(&fate, &expired));
            fate.released();
            tokio::time::sleep(Duration::from_millis(150)).await;
            assert_eq!(expired.load(Ordering::SeqCst), 1);

            // Taken again: the earlier holding's watchdog does not end the new one.
            let start = Instant::now();
            fate.acquired_on_lease(Some(3), start + Duration::from_millis(100), on_expiry(&fate, &expired));
            fate.acquired_on_lease(Some(4), start + Duration::from_secs(60), on_expiry(&fate, &expired));
            tokio::time::sleep(Duration::from_millis(150)).await;
            assert!(fate.holding());
            assert_eq!(expired.load(Ordering::SeqCst), 1);
            fate.released();
        });
    }
}
