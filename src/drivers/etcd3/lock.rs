//! Locks: upstream's key `/tooz/locks<name>`, holding the lock object's 16 random bytes, on a
//! lease of the lock's own (TTL `lock_timeout`, refreshed by the coordinator's heartbeats).
//!
//! Acquire = one transaction `create_revision(key) == 0 → put(key, token, lease)`, else read
//! the key. A lock object keeps its lease after a release and, at its next acquire, refreshes
//! it to a full TTL (keep-alive, sent alongside the transaction) instead of granting a new one:
//! a keep-alive is answered by the raft leader alone, a grant is a raft write. A waiter then opens a watch on the key from the revision it read and sleeps until
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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::clients::etcd::messages::{Compare, CompareResult as Cmp, Event, FilterType, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest};

use super::link::lapsed;
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
    /// A lease of ours not (or no longer) attached to the key, reused by the next acquire.
    spare: Mutex<Option<(i64, Instant)>>,
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
            spare: Mutex::new(None),
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

    /// The spare lease, if it is young enough to be worth refreshing rather than replacing.
    fn take_spare(&self) -> Option<i64> {
        let ttl = Duration::from_secs(self.shared.lock_ttl as u64);
        let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner()).take();
        match spare {
            Some((lease, refreshed)) if refreshed.elapsed() < ttl / 2 => Some(lease),
            Some((lease, _)) => {
                self.shared.revoke_later(lease);
                None
            }
            None => None,
        }
    }

    fn keep_spare(&self, lease: i64, refreshed: Instant) {
        let old = self.spare.lock().unwrap_or_else(|p| p.into_inner()).replace((lease, refreshed));
        if let Some((old, _)) = old {
            if old != lease {
                self.shared.revoke_later(old);
            }
        }
    }

    /// One attempt with a lease of ours: the spare one, refreshed to its full TTL in the same
    /// round trip as the transaction (a keep-alive is not a raft write; a grant is), or a new
    /// one. Returns what happened and the lease used.
    async fn attempt_with_lease(&self, waiting: Waiting) -> Result<(Attempt, i64)> {
        if let Some(lease) = self.take_spare() {
            let (alive, attempt) = tokio::join!(self.shared.keep_alive(lease), self.attempt(lease, waiting));
            match (alive, attempt) {
                (Ok(true), Ok(a)) => return Ok((a, lease)),
                (_, Err(e)) if lapsed(&e) => {}
                (Ok(false), Ok(Attempt::Won(_))) => {
                    // Cannot happen (a put on an unknown lease fails); be safe all the same.
                    self.shared.state().held.get().remove(&self.id);
                }
                (Ok(false), Ok(_)) => {}
                (Err(e), _) | (_, Err(e)) => {
                    self.shared.revoke_later(lease);
                    return Err(e);
                }
            }
        }
        let lease = self.shared.grant(self.shared.lock_ttl).await?;
        match self.attempt(lease, waiting).await {
            Ok(a) => Ok((a, lease)),
            Err(e) => {
                self.shared.revoke_later(lease);
                Err(e)
            }
        }
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
        if let Some(kv) = holder.first().filter(|kv| kv.value == self.token && kv.lease == lease) {
            return Ok(Attempt::Won(kv.create_revision));
        }
        Ok(Attempt::Taken(resp.revision()))
    }

    /// Drops this object's waiter entry when it gives up (best effort: it lapses with the lease).
    async fn withdraw(&self, waiting: Waiting) {
        if waiting == Waiting::Registered {
            let _ = self.shared.delete("withdraw lock waiter", self.waiting_key.clone()).await;
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
        let mut waiting = if wait == Wait::No { Waiting::No } else { Waiting::Register };
        loop {
            let refreshed = Instant::now();
            let (attempt, lease) = match self.attempt_with_lease(waiting).await {
                Ok(done) => done,
                Err(e) => {
                    self.withdraw(waiting).await;
                    return Err(e);
                }
            };
            match attempt {
                Attempt::Won(revision) => {
                    // The lease was granted or refreshed by a request sent after `refreshed`.
                    let (shared, id) = (self.shared.clone(), self.id);
                    let on_expiry = Box::new(move |why| shared.expired(id, lease, why));
                    let token = (revision > 0).then_some(revision as u64);
                    self.fate.acquired_on_lease(token, self.shared.lock_lease().deadline(refreshed), on_expiry);
                    let mut state = self.shared.state();
                    state.held.get().insert(self.id, (self.key.clone(), lease));
                    state.fates.get().insert(self.id, self.fate.clone());
                    return Ok(true);
                }
                Attempt::Taken(revision) => {
                    self.keep_spare(lease, refreshed);
                    if waiting == Waiting::Register {
                        waiting = Waiting::Registered;
                    }
                    if wait == Wait::No || deadline.is_some_and(|d| Instant::now() >= d) {
                        self.withdraw(waiting).await;
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
            // Past the holder's deadline, before its watchdog told: lost, and its lease revoked.
            self.fate.lost(crate::lock::fate::LEASE_RAN_OUT);
            self.shared.revoke_until_answered(lease);
            return Ok(false);
        }
        self.fate.released();
        let waiters = RangeRequest::key(self.waiters_prefix.clone()).prefix().count_only();
        let txn = TxnRequest::when([Compare::value(self.key.clone(), Cmp::Equal, self.token.clone())])
            .and_then([RequestOp::delete(self.key.clone()), RequestOp::range(waiters)]);
        let released = self.shared.txn("release lock", txn).await.map(|r| {
            let others_waiting = r.range(1).is_some_and(|g| g.count > 0);
            self.courtesy.released(r.succeeded && others_waiting);
            r.succeeded
        });
        // The lease now holds nothing: keep it for this object's next acquire, which refreshes
        // it to a full TTL in the same round trip as its transaction (and falls back to a new
        // grant if it lapsed meanwhile).
        match released {
            Ok(true) => self.keep_spare(lease, Instant::now()),
            _ => self.shared.revoke_later(lease),
        }
        released
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
        let alive = self.shared.keep_alive_lock(lease, &self.fate).await?;
        if !alive {
            self.shared.state().lost(self.id, "its lease lapsed before it was refreshed");
        }
        Ok(alive)
    }

    fn fencing_token(&self) -> Option<u64> {
        self.fate.token()
    }

    fn on_lost(&self, callback: OnLost) {
        self.fate.on_lost(callback);
    }
}

impl Drop for Etcd3Lock {
    fn drop(&mut self) {
        if let Some((lease, _)) = self.spare.lock().unwrap_or_else(|p| p.into_inner()).take() {
            self.shared.revoke_later(lease);
        }
    }
}
