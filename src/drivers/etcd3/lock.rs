//! Locks: upstream's key `/tooz/locks<name>`, holding the lock object's 16 random bytes, on the
//! coordinator's lock lease (`lock_lease.rs`: one lease for all its locks, TTL `lock_timeout`,
//! refreshed by one keep-alive per renewal however many locks are held).
//!
//! Acquire = one transaction `create_revision(key) == 0 → put(key, token, lease)`, else read
//! the key; release = `value == token → delete(key)`. A waiter then opens a watch on the key from the revision it read and sleeps until
//! etcd pushes the key's deletion (release, break, or the holder's lease lapsing), then tries
//! again: no polling, and a release elsewhere reaches waiters in one round trip.
//!
//! Fair hand-over (`lock/handoff.rs`; ours only, upstream never reads these keys): a waiting lock
//! object registers under `/tooz/lock-waiters/<hex name>/<hex token>`, on its lease, in the
//! same transaction as its failed attempt, and deletes the entry in the transaction that wins
//! (or when it gives up). A release counts the entries in its own transaction: when others
//! wait, this object's next waiting acquire steps aside for [`HANDOVER_GRACE`] first, so a
//! waiter woken by the deletion takes the lock instead of the releaser retaking it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::clients::etcd::messages::{Compare, KeyValue, CompareResult as Cmp, Event, FilterType, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest};

use crate::lock::handoff::Courtesy;
use super::watch::wait_for_event;
use super::{first_kvs, Shared, LOCK_PREFIX};
use crate::driver::{DriverLock, Wait};
use crate::lock::fate::{Fate, OnLost};
use crate::error::{Error, Result};
use crate::id::Id;

pub struct Etcd3Lock {
    shared: Arc<Shared>,
    id: u64,
    key: Vec<u8>,
    token: Vec<u8>,
    /// Serialises this object's release and heartbeat (upstream's `_exclusive_access`).
    busy: tokio::sync::Mutex<()>,
    /// This object's entry among the lock's waiters, and their common prefix.
    waiting_key: Vec<u8>,
    waiters_prefix: Vec<u8>,
    courtesy: Arc<Courtesy>,
    fate: Arc<Fate>,
}

/// What one acquisition attempt found.
enum Attempt {
    /// Taken, at this revision (the key's create revision: the fencing token).
    Won(i64),
    /// Held by someone else; the revision to watch from.
    Taken(i64),
}

impl Etcd3Lock {
    pub(super) fn new(shared: Arc<Shared>, name: &[u8]) -> Etcd3Lock {
        let token = uuid::Uuid::new_v4();
        let waiters_prefix = [WAITERS_PREFIX, hex(name).as_bytes(), b"/"].concat();
        let courtesy = shared.courtesies.of(name);
        Etcd3Lock {
            id: shared.next_lock.fetch_add(1, Ordering::Relaxed),
            shared,
            key: [LOCK_PREFIX, name].concat(),
            token: token.as_bytes().to_vec(),
            busy: tokio::sync::Mutex::new(()),
            waiting_key: [waiters_prefix.as_slice(), token.simple().to_string().as_bytes()].concat(),
            waiters_prefix,
            courtesy,
            fate: Arc::new(Fate::new("tooz.drivers.etcd3gw", String::from_utf8_lossy(name).into_owned())),
        }
    }

    /// Held through this coordinator, and not past the holder's deadline of its lease.
    fn held_here(&self) -> bool {
        self.shared.state().held.get().contains_key(&self.id) && self.fate.holding()
    }

    /// The transaction: put-if-absent; on success also drop this object's waiter entry if it
    /// has one, on failure read the holder (and register as a waiter if asked).
    async fn attempt(&self, lease: i64, waiting: Waiting) -> Result<Attempt> {
        let mut won = vec![RequestOp::put(self.key.clone(), self.token.clone(), lease)];
        let mut lost = vec![RequestOp::range(RangeRequest::key(self.key.clone()))];
        match waiting {
            Waiting::Registered => won.push(RequestOp::delete(self.waiting_key.clone())),
            Waiting::Register => lost.push(RequestOp::put(self.waiting_key.clone(), b"", lease)),
            Waiting::No => {}
        }
        let txn = TxnRequest::when([Compare::create_revision(self.key.clone(), Cmp::Equal, 0)]).and_then(won).or_else(lost);
        let resp = self.shared.txn("acquire lock", txn).await?;
        if resp.succeeded {
            return Ok(Attempt::Won(resp.revision()));
        }
        let holder = first_kvs(&resp, 0);
        // Our own token without our record of holding it: an earlier attempt whose answer was
        // lost (the call was retried on another endpoint) did get it.
        // (Unless this object holds it already: a lock is not re-entrant.)
        let mine = |kv: &&KeyValue| kv.value == self.token && kv.lease == lease && !self.shared.state().held.get().contains_key(&self.id);
        if let Some(kv) = holder.first().filter(mine) {
            return Ok(Attempt::Won(kv.create_revision));
        }
        Ok(Attempt::Taken(resp.revision()))
    }

}

/// A waiting acquire's entry among the lock's waiters: deleted when the acquire gives up, fails
/// or is cancelled (dropped mid-wait), in the background; the winning transaction deletes it
/// itself. (It lives on the coordinator's lock lease, which outlives the wait.)
struct Entry<'a> {
    lock: &'a Etcd3Lock,
    waiting: Waiting,
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        if self.waiting == Waiting::Registered {
            let (shared, key) = (self.lock.shared.clone(), self.lock.waiting_key.clone());
            crate::runtime::runtime().spawn(async move {
                let _ = shared.delete("withdraw lock waiter", key).await;
            });
        }
        if self.waiting != Waiting::No {
            self.lock.shared.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Where this object stands among the lock's waiters (see the module notes).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Waiting {
    No,
    /// Not yet: a failed attempt registers.
    Register,
    Registered,
}

/// How long a releaser others wait for stays away: the deletion's push to the waiters and
/// one transaction of theirs, with room for a loaded machine.
pub(super) const HANDOVER_GRACE: Duration = Duration::from_millis(5);

/// Root of the waiter entries (not under `/tooz/locks`, so no lock name can reach them).
const WAITERS_PREFIX: &[u8] = b"/tooz/lock-waiters/";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[async_trait]
impl DriverLock for Etcd3Lock {
    fn name(&self) -> Id {
        Id::Bytes(self.key[LOCK_PREFIX.len()..].to_vec())
    }

    fn acquired(&self) -> bool {
        self.held_here()
    }

    async fn acquire(&self, wait: Wait, shared: bool) -> Result<bool> {
        if shared {
            return Err(Error::NotImplemented("shared etcd locks are not supported".into()));
        }
        let deadline = wait.deadline();
        self.courtesy.step_aside(wait, deadline).await;
        // A waiting acquire registers with its first failed attempt (one that wins at once
        // writes nothing more); a one-shot attempt never does.
        let mut entry = Entry { lock: self, waiting: if wait == Wait::No { Waiting::No } else { Waiting::Register } };
        if entry.waiting != Waiting::No {
            self.shared.waiting.fetch_add(1, Ordering::SeqCst);
        }
        loop {
            let waiting = entry.waiting;
            let (attempt, lease) = self.shared.with_lock_lease(|lease| self.attempt(lease, waiting)).await?;
            match attempt {
                Attempt::Won(revision) => {
                    if waiting == Waiting::Registered {
                        // The winning transaction deleted the entry.
                        entry.waiting = Waiting::Register;
                    }
                    let token = (revision > 0).then_some(revision as u64);
                    self.shared.hold(self.id, self.key.clone(), lease, token, &self.fate);
                    return Ok(true);
                }
                Attempt::Taken(revision) => {
                    if waiting == Waiting::Register {
                        entry.waiting = Waiting::Registered;
                    }
                    if wait == Wait::No || deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(false);
                    }
                    // Woken by etcd when the holder's key is deleted.
                    let watch = WatchCreateRequest::key(self.key.clone()).without(FilterType::NoPut);
                    wait_for_event(&self.shared.link, "watch lock", watch, revision, deadline, Event::is_delete).await;
                }
            }
        }
    }

    fn stepping_aside(&self) -> bool {
        self.courtesy.pending()
    }

    async fn release(&self) -> Result<bool> {
        let _one = self.busy.lock().await;
        let lease = {
            let mut state = self.shared.state();
            state.fates.get().remove(&self.id);
            match state.held.get().remove(&self.id) {
                Some((_, lease)) => lease,
                None => return Ok(false),
            }
        };
        if !self.fate.holding() {
            // Past the holder's deadline, before its watchdog told: lost, with every lock on
            // its lease, and the lease revoked.
            self.shared.expired(lease, crate::lock::fate::LEASE_RAN_OUT);
            self.fate.lost(crate::lock::fate::LEASE_RAN_OUT);
            return Ok(false);
        }
        self.fate.released();
        let waiters = RangeRequest::key(self.waiters_prefix.clone()).prefix().count_only();
        let txn = TxnRequest::when([Compare::value(self.key.clone(), Cmp::Equal, self.token.clone())])
            .and_then([RequestOp::delete(self.key.clone()), RequestOp::range(waiters)]);
        self.shared.txn("release lock", txn).await.map(|r| {
            let others_waiting = r.range(1).is_some_and(|g| g.count > 0);
            self.courtesy.released(r.succeeded && others_waiting);
            r.succeeded
        })
    }

    async fn break_(&self) -> Result<bool> {
        let r = self.shared.delete("break lock", self.key.clone()).await?;
        self.shared.state().held.get().retain(|_, (k, _)| *k != self.key);
        Ok(r.deleted > 0)
    }

    async fn is_still_owner(&self) -> Result<bool> {
        if !self.held_here() {
            // Never held, released, or lost (maybe on the holder's clock, etcd out of reach).
            return Ok(false);
        }
        let r = self.shared.get("check lock owner", RangeRequest::key(self.key.clone())).await?;
        let owner = r.kvs.first().is_some_and(|kv| kv.value == self.token);
        if !owner {
            self.shared.state().lost(self.id, "its key was deleted, or its lease lapsed");
        }
        Ok(owner)
    }

    async fn heartbeat(&self) -> Result<bool> {
        let _one = self.busy.lock().await;
        let lease = match self.shared.state().held.get().get(&self.id) {
            Some((_, lease)) => *lease,
            None => return Ok(false),
        };
        // The coordinator's lock lease, and with it every lock held on it.
        Ok(self.shared.refresh_lock_lease(lease).await? && self.held_here())
    }

    fn fencing_token(&self) -> Option<u64> {
        self.fate.token()
    }

    fn on_lost(&self, callback: OnLost) {
        self.fate.on_lost(callback);
    }
}
