//! The lease every lock of a coordinator hangs on, as etcd's `concurrency.Session` does: one
//! lease of TTL `lock_timeout` per coordinator (and process image: a forked worker grants its
//! own), granted by the first acquire and refreshed by one keep-alive per renewal period, however
//! many locks are held on it. Keys and values are upstream's (`lock.rs`); only the lease id in
//! the key's metadata differs, which no upstream process reads.
//!
//! A release deletes its key (compare-and-delete), leaving the lease to the other holdings. The
//! holder's clock (`lock/lease.rs`) runs once per lease, from when the request that last set it
//! was sent: every holding on it has that deadline. When the lease lapses (etcd answers that it
//! no longer knows it) or runs out on the holder's clock, every lock on it is lost and told at
//! once, the lease is revoked (on the holder's clock: once etcd answers), and the next acquire
//! grants a new one. An idle lease (nothing held or awaited on it) is let go at a renewal.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::link::lapsed;
use super::{Shared, State};
use crate::error::Result;
use crate::lock::fate::Fate;
use crate::lock::lease::Lease;

/// The shared lock lease: its id, and when the request that last set it (grant or refresh)
/// was sent.
#[derive(Clone, Copy)]
pub(super) struct LockLease {
    pub(super) id: i64,
    pub(super) sent: Instant,
}

/// An acquire that finds the lease refreshed longer ago than this refreshes it in the same
/// round trip as its transaction, so a lock taken without a running heart still gets nearly a
/// whole `lock_timeout` (a keep-alive is answered by the raft leader alone: no write).
const FRESH: Duration = Duration::from_secs(1);

/// How many times an acquire takes a new lease when etcd says the one it used lapsed.
const LAPSED_RETRIES: usize = 3;

impl State {
    fn lock_lease(&mut self) -> &mut Option<LockLease> {
        self.lock_lease.get()
    }

    /// Takes the lease `id` out of use and reports every lock held on it lost.
    fn retire_lock_lease(&mut self, id: i64, why: &str) {
        if self.lock_lease().is_some_and(|l| l.id == id) {
            *self.lock_lease() = None;
        }
        let on_it: Vec<u64> = self.held.get().iter().filter(|(_, (_, l))| *l == id).map(|(k, _)| *k).collect();
        for k in on_it {
            self.lost(k, why);
        }
    }
}

impl Shared {
    /// The lease of a lock, as its holder reckons it (`lock/lease.rs`): etcd ends a lease no
    /// sooner than its TTL after the request that set it arrived.
    pub(super) fn lock_lease(&self) -> Lease {
        Lease::exact(Duration::from_secs(self.lock_ttl.max(1) as u64))
    }

    /// The lease to put a lock key on now: the current one, or a new one when there is none.
    async fn current_lock_lease(&self) -> Result<LockLease> {
        if let Some(l) = *self.state().lock_lease() {
            return Ok(l);
        }
        let _one = self.granting.lock().await;
        if let Some(l) = *self.state().lock_lease() {
            return Ok(l);
        }
        let sent = Instant::now();
        let id = self.grant(self.lock_ttl).await?;
        let lease = LockLease { id, sent };
        *self.state().lock_lease() = Some(lease);
        Ok(lease)
    }

    /// Runs `attempt` (a transaction that puts a key on the lease it is given) on the shared
    /// lease, refreshing the lease alongside when it is not fresh, and on a new lease when etcd
    /// says the one used lapsed. Returns the outcome and the lease it used.
    pub(super) async fn with_lock_lease<T, F, Fut>(&self, attempt: F) -> Result<(T, i64)>
    where
        F: Fn(i64) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut tries = 0;
        loop {
            let lease = self.current_lock_lease().await?;
            let outcome = if lease.sent.elapsed() >= FRESH {
                let (refreshed, outcome) = tokio::join!(self.refresh_lock_lease(lease.id), attempt(lease.id));
                // (A refresh that failed leaves the answer to the attempt: a transaction that
                // won holds the key, which must not be left behind.)
                if matches!(refreshed, Ok(false)) && tries < LAPSED_RETRIES {
                    // The lease had lapsed (and is retired): whatever the attempt wrote on it
                    // went with it. Again, on a new lease.
                    tries += 1;
                    continue;
                }
                outcome
            } else {
                attempt(lease.id).await
            };
            match outcome {
                Err(e) if lapsed(&e) && tries < LAPSED_RETRIES => {
                    tries += 1;
                    self.state().retire_lock_lease(lease.id, "its lease lapsed before it was refreshed");
                }
                other => return other.map(|t| (t, lease.id)),
            }
        }
    }

    /// Records lock `id` held with `fate` on lease `lease`, its holder's clock set by the
    /// lease's last refresh. Under the state's lock, so that a refresh either counts this
    /// holding or set the time it starts from.
    pub(super) fn hold(self: &Arc<Self>, id: u64, key: Vec<u8>, lease: i64, token: Option<u64>, fate: &Arc<Fate>) {
        let mut st = self.state();
        let deadline = match *st.lock_lease() {
            Some(l) if l.id == lease => self.lock_lease().deadline(l.sent),
            // Retired while the transaction was under way: the holding is already past its
            // deadline, and its watchdog says so at once.
            _ => Instant::now(),
        };
        st.held.get().insert(id, (key, lease));
        st.fates.get().insert(id, fate.clone());
        let me = self.clone();
        let on_expiry = Box::new(move |why| me.expired(lease, why));
        fate.acquired_on_lease(token, deadline, on_expiry);
    }

    /// Refreshes lease `id` once; every holding on it moves its clock on, or, when etcd no
    /// longer knows the lease, is lost. Whether it lives.
    pub(super) async fn refresh_lock_lease(&self, id: i64) -> Result<bool> {
        let sent = Instant::now();
        let alive = self.keep_alive(id).await?;
        let mut st = self.state();
        if !alive {
            st.retire_lock_lease(id, "its lease lapsed before it was refreshed");
            return Ok(false);
        }
        if let Some(l) = st.lock_lease().as_mut().filter(|l| l.id == id) {
            l.sent = l.sent.max(sent);
        }
        let on_it: Vec<Arc<Fate>> = {
            let ids: Vec<u64> = st.held.get().iter().filter(|(_, (_, l))| *l == id).map(|(k, _)| *k).collect();
            let fates = st.fates.get();
            ids.iter().filter_map(|k| fates.get(k).cloned()).collect()
        };
        drop(st);
        let deadline = self.lock_lease().deadline(sent);
        for fate in on_it {
            fate.renewed(deadline);
        }
        Ok(true)
    }

    /// What a renewal refreshes: the lease and its holder's deadline, while anything is held or
    /// awaited on it; an idle lease is let go (revoked) instead, so that nothing refreshes it
    /// for nothing.
    pub(super) fn lock_lease_to_renew(self: &Arc<Self>) -> Option<(i64, Instant)> {
        let mut st = self.state();
        let lease = (*st.lock_lease())?;
        let in_use = st.held.get().values().any(|(_, l)| *l == lease.id) || self.waiting.load(Ordering::SeqCst) > 0;
        if in_use {
            return Some((lease.id, self.lock_lease().deadline(lease.sent)));
        }
        *st.lock_lease() = None;
        drop(st);
        self.revoke_later(lease.id);
        None
    }

    /// Lets go of this image's lock lease at stop: revoking it deletes every key on it.
    pub(super) fn take_lock_lease(&self) -> Option<i64> {
        self.state().lock_lease().take().map(|l| l.id)
    }

    /// A holding on lease `lease` ran out on the holder's clock: every lock on the lease is
    /// lost (and told), and the lease revoked once etcd answers again (a refresh whose answer
    /// was lost may have kept it, and the keys with it), so others need not wait out its TTL.
    pub(super) fn expired(self: &Arc<Self>, lease: i64, why: &'static str) {
        let retiring = {
            let mut st = self.state();
            let current = st.lock_lease().is_some_and(|l| l.id == lease);
            st.retire_lock_lease(lease, why);
            current
        };
        if retiring {
            self.revoke_until_answered(lease);
        }
    }
}
