//! Waiting for a lock that lives as a key with a TTL on a server (memcached; redis and etcd
//! work the same way): there is no server-side notification, so a waiter polls. Two things
//! keep that cheap and quick:
//!
//! * a release in this process wakes this process's waiters on the same key at once
//!   ([`wake`]), so threads of one process hand a lock over without a poll delay;
//! * polls for a holder elsewhere are paced by [`handoff::Pace`]: fast while the lock changes
//!   hands, backing off to [`MAX_POLL`] while one holder keeps it; and a releaser steps aside
//!   for the waiters it saw ([`handoff::Courtesy`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::handoff::{self, Courtesy, Pace};
use crate::driver::Wait;
use crate::error::Result;

pub const MAX_POLL: Duration = Duration::from_millis(100);

fn table() -> &'static Mutex<HashMap<Vec<u8>, Weak<Notify>>> {
    static TABLE: OnceLock<Mutex<HashMap<Vec<u8>, Weak<Notify>>>> = OnceLock::new();
    TABLE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The process-wide wake-up signal of a backend key (`scope` separates backends/servers).
fn signal(scope: &str, key: &[u8]) -> Arc<Notify> {
    let mut full = scope.as_bytes().to_vec();
    full.push(0);
    full.extend_from_slice(key);
    let mut table = table().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = table.get(&full).and_then(Weak::upgrade) {
        return n;
    }
    if table.len() > 1024 {
        table.retain(|_, w| w.strong_count() > 0);
    }
    let n = Arc::new(Notify::new());
    table.insert(full, Arc::downgrade(&n));
    n
}

/// Wakes this process's waiters on `key` (after a release or a break).
pub fn wake(scope: &str, key: &[u8]) {
    let n = table().lock().unwrap_or_else(|p| p.into_inner()).get(&{
        let mut full = scope.as_bytes().to_vec();
        full.push(0);
        full.extend_from_slice(key);
        full
    }).and_then(Weak::upgrade);
    if let Some(n) = n {
        n.notify_waiters();
    }
}

/// What one attempt to take the lock found.
pub enum Attempt {
    Got,
    /// Held elsewhere; with the backend's hand-over marker (see [`Pace`]) if it has one.
    Busy(Option<u64>),
}

/// Calls `attempt` until it takes the lock or `wait` runs out; false when it ran out.
pub async fn acquire_with<F, Fut>(scope: &str, key: &[u8], wait: Wait, courtesy: &Courtesy, mut attempt: F) -> Result<bool>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Attempt>>,
{
    let deadline = wait.deadline();
    let signal = signal(scope, key);
    let mut pace = Pace::new(MAX_POLL);
    courtesy.step_aside(wait, deadline).await;
    loop {
        // Registered before the attempt, so a release between the two is not missed.
        let woken = signal.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let marker = match attempt().await? {
            Attempt::Got => return Ok(true),
            Attempt::Busy(marker) => marker,
        };
        let pause = pace.after_busy(marker);
        let sleep_for = match (wait, deadline) {
            (Wait::No, _) => return Ok(false),
            (_, Some(d)) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                pause.min(left)
            }
            _ => pause,
        };
        tokio::select! {
            _ = handoff::nap(sleep_for) => {}
            _ = &mut woken => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn gives_up_at_the_deadline_and_wakes_on_release() {
        crate::runtime::block_on(async {
            let tries = AtomicUsize::new(0);
            let began = Instant::now();
            let courtesy = Courtesy::default();
            let got = acquire_with("t", b"k", Wait::For(Duration::from_millis(150)), &courtesy, || async {
                tries.fetch_add(1, Ordering::SeqCst);
                Ok(Attempt::Busy(None))
            })
            .await
            .unwrap();
            assert!(!got);
            assert!(began.elapsed() >= Duration::from_millis(150));
            assert!(tries.load(Ordering::SeqCst) >= 2);

            assert!(!acquire_with("t", b"k", Wait::No, &courtesy, || async { Ok(Attempt::Busy(None)) }).await.unwrap());

            let free = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let f2 = free.clone();
            let waiter = tokio::spawn(async move {
                let began = Instant::now();
                let ok = acquire_with("t", b"k2", Wait::Forever, &Courtesy::default(), || {
                    let f = f2.clone();
                    async move { Ok(if f.load(Ordering::SeqCst) { Attempt::Got } else { Attempt::Busy(None) }) }
                })
                .await
                .unwrap();
                (ok, began.elapsed())
            });
            tokio::time::sleep(Duration::from_millis(400)).await;
            free.store(true, Ordering::SeqCst);
            let woke_at = Instant::now();
            wake("t", b"k2");
            let (ok, _) = waiter.await.unwrap();
            assert!(ok);
            assert!(woke_at.elapsed() < MAX_POLL, "woken, not polled");
        });
    }
}
