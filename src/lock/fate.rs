//! What a lock object knows about its holding beyond the backend: the fencing token of its
//! last acquisition, and whom to tell when a holding turns out to be lost (its TTL lapsed, its
//! key was deleted or taken, its session ended) without `release()` having been called.
//!
//! Drivers call [`Fate::acquired`] / [`Fate::released`] around a holding and [`Fate::lost`]
//! when they learn of a loss (a failed extension at a heartbeat, an ownership check that
//! fails, a new session); the first loss of a holding is logged and reported, later ones are
//! not.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::log::{self, Level};

/// Called (once per lost holding) when the lock is found lost.
pub type OnLost = Arc<dyn Fn() + Send + Sync>;

pub struct Fate {
    logger: &'static str,
    what: String,
    token: Mutex<Option<u64>>,
    holding: AtomicBool,
    callbacks: Mutex<Vec<OnLost>>,
}

impl Fate {
    /// `what` names the lock (and backend) in log records.
    pub fn new(logger: &'static str, what: String) -> Fate {
        Fate { logger, what, token: Mutex::new(None), holding: AtomicBool::new(false), callbacks: Mutex::new(Vec::new()) }
    }

    pub fn acquired(&self, token: Option<u64>) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = token;
        self.holding.store(true, Ordering::SeqCst);
    }

    /// Released on purpose: no loss to report.
    pub fn released(&self) {
        self.holding.store(false, Ordering::SeqCst);
    }

    pub fn holding(&self) -> bool {
        self.holding.load(Ordering::SeqCst)
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
        log::emit(Level::Warning, self.logger, format!("lock {} was lost: {why}", self.what));
        let callbacks = self.callbacks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for callback in callbacks {
            callback();
        }
        true
    }
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
}
