//! Locks (and leaderships) of the memcached driver: a key `__TOOZ_LOCK_<name>` holding the
//! holder's member id with the holder's TTL, exactly as upstream writes it, so upstream
//! processes (`add`, `get` + compare + `delete`, `touch`) share locks with ours.
//!
//! With the meta commands (memcached 1.6.10 and later) an acquire + release is two round
//! trips, each one write:
//!
//! * acquire: `ms <key> ... ME c` (an add that returns the new item's CAS unique) and
//!   `mg <key> c` (a waiter's look at whoever holds it). The CAS unique is the fencing token —
//!   memcached draws CAS uniques from one counter for the whole server, so a later holder's is
//!   higher — and the proof of ownership later requests compare against. The look's CAS is the
//!   waiter's hand-over marker (`handoff::Pace`): it changes when the lock changes hands.
//! * release: `md <key> C<cas>` (deletes the key only while it is still this holding, in one
//!   atomic step) and `mg <key>:waiting` (whether others wait: fair hand-over, `lock/handoff.rs`).
//! * extension (the heartbeat): `mg <key> T<ttl> c` gives the key a fresh TTL and says its CAS
//!   unique, which a touch does not change: the holding lasts if it is still this holding's.
//!   A touch is idempotent, so a renewal given up on and sent again (`lock/lease.rs`) cannot
//!   make the next one fail, as a rewrite would (its new CAS unique unknown to us, should the
//!   abandoned one reach the server after all). Should the key be another holder's by then,
//!   its TTL was refreshed once: a live holder's anyway, a dead one's a lease longer.
//!
//! Without them (an older server, or CAS uniques switched off with `-C`), the classic way:
//! `add`, then `incr` of a counter `<key>:fence` for the token; a release reads the key (and
//! the waiting mark) and deletes it if it names this member — not atomic; an extension reads
//! the key, then `touch`es it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::time::Instant as TokioInstant;

use super::{decode, encode, id_value, ttl, value_id, Shared, MAX_CAS_ATTEMPTS};
use crate::clients::memcache::meta::{self, Code, Status};
use crate::clients::memcache::{self, Client, Reply, Store};
use crate::driver::{unsupported, DriverLock, Wait};
use crate::lock::handoff::Courtesy;
use crate::lock::ttl::{self as ttl_lock, Attempt};
use crate::error::{Error, Result};
use crate::lock::fate::{Fate, OnLost};
use crate::lock::lease::{until_answered, Lease};
use crate::id::Id;

/// How long a waiter's mark lasts (memcached counts whole seconds, and a key with TTL 1 can
/// lapse at once), and how often a waiter renews it.
const WAITING_SECONDS: f64 = 2.0;
const WAITING_RENEW: Duration = Duration::from_millis(500);

const GONE: &str = "its key expired, was evicted or was taken by another holder";

/// A lock key and whether this lock object holds it.
pub(super) struct LockState {
    pub(super) key: Vec<u8>,
    ttl: u32,
    pub(super) shared: Arc<Shared>,
    acquired: AtomicBool,
    /// The counter of fencing tokens of the classic way (`<lock key>:fence`, no expiry;
    /// upstream never touches it). memcached may evict it under memory pressure, and tokens
    /// then start over.
    fence_key: Vec<u8>,
    /// Set by waiters, for [`WAITING_SECONDS`] after their last try (ours only): tells a
    /// releaser that others wait, so it steps aside (`lock/handoff.rs`).
    waiting_key: Vec<u8>,
    courtesy: Arc<Courtesy>,
    fate: Arc<Fate>,
    /// The CAS unique of the key while it is held through meta commands (`None`: not held,
    /// or held the classic way): it stays what the acquire's add gave (an extension touches).
    /// Release, extension and ownership checks take it in turn.
    cas: tokio::sync::Mutex<Option<u64>>,
}

/// What one try to take the lock found.
enum Try {
    /// Taken; with the key's CAS unique when taken through meta commands.
    Got(Option<u64>),
    /// Held elsewhere, with the hand-over marker.
    Busy(Option<u64>),
}

/// What a meta get (`mg … c`, a look or a touch) says of a holding whose key had CAS unique
/// `held`: whether the key is still that holding (it exists, with that CAS unique).
fn still_held(reply: &Reply, held: u64, what: &str) -> Result<bool> {
    match reply {
        Reply::Meta(Status { code: Code::Hd, cas: Some(now) }) => Ok(*now == held),
        Reply::Meta(Status { code: Code::Hd | Code::En, .. }) => Ok(false),
        other => Err(unexpected(what, Some(other))),
    }
}

fn unexpected(what: &str, reply: Option<&Reply>) -> Error {
    Error::Tooz(format!("unexpected memcached reply to {what}: {reply:?}"))
}

fn status(reply: Option<&Reply>) -> Option<Status> {
    match reply {
        Some(Reply::Meta(s)) => Some(*s),
        _ => None,
    }
}

impl LockState {
    pub(super) fn new(shared: Arc<Shared>, key: Vec<u8>, timeout: f64) -> LockState {
        let what = format!("{} of member {}", String::from_utf8_lossy(&key), shared.member);
        LockState {
            fence_key: [key.as_slice(), b":fence"].concat(),
            waiting_key: [key.as_slice(), b":waiting"].concat(),
            courtesy: shared.courtesies.of(&key),
            fate: Arc::new(Fate::new("tooz.drivers.memcached", what)),
            key,
            ttl: ttl(timeout),
            shared,
            acquired: AtomicBool::new(false),
            cas: tokio::sync::Mutex::new(None),
        }
    }

    fn client(&self) -> &Client {
        &self.shared.client
    }

    /// Held, and not past the holder's deadline of its lease.
    fn is_acquired(&self) -> bool {
        self.acquired.load(Ordering::SeqCst) && self.fate.holding()
    }

    /// The holder's deadline of the current holding.
    pub(super) fn fate_deadline(&self) -> Option<tokio::time::Instant> {
        self.fate.deadline()
    }

    /// The lease of the key, as its holder reckons it (`lock/lease.rs`): memcached counts
    /// whole seconds.
    fn lease(&self) -> Lease {
        Lease::coarse(Duration::from_secs(u64::from(self.ttl)))
    }

    pub(super) fn forget(self: &Arc<Self>) {
        let mut guard = self.shared.held.lock().unwrap_or_else(|p| p.into_inner());
        let held = guard.get();
        self.acquired.store(false, Ordering::SeqCst);
        held.retain(|l| !Arc::ptr_eq(l, self));
    }

    /// The holding turned out lost: forgotten, and its holder told.
    fn lost(self: &Arc<Self>, why: &str) {
        if self.acquired.load(Ordering::SeqCst) {
            self.forget();
            self.fate.lost(why);
        }
    }

    /// The lease ran out on the holder's clock: lost (and told), and the key deleted once the
    /// server answers again if it is still this holding (a renewal whose answer was lost may
    /// have extended it), so others need not wait out its TTL. Through meta commands only: the
    /// classic protocol cannot delete only if the key is still this holding.
    fn expired(self: &Arc<Self>, why: &'static str) {
        self.lost(why);
        let me = self.clone();
        crate::runtime::runtime().spawn(async move {
            // Taken once a renewal still waiting for its answer gives up.
            let Some(cas) = me.cas.lock().await.take() else { return };
            let request = meta::delete_if(&me.key, cas);
            // A request given up on takes its connection with it: nothing to reset.
            if until_answered(me.lease(), || {}, || me.client().request("unlock", &request)).await {
                ttl_lock::wake(&me.shared.scope, &me.key);
            }
        });
    }

    /// The value this member writes under the key: (flags, bytes).
    fn owner_value(&self) -> (u32, Vec<u8>) {
        encode(&id_value(&self.shared.member))
    }

    pub(super) async fn acquire(self: &Arc<Self>, wait: Wait) -> Result<bool> {
        let (flags, owner) = self.owner_value();
        let with_meta = self.client().speaks_meta().await?;
        let tried = AtomicBool::new(false);
        let marked: Mutex<Option<Instant>> = Mutex::new(None);
        let took: Mutex<Option<u64>> = Mutex::new(None);
        let sent_last = Mutex::new(TokioInstant::now());
        let got = ttl_lock::acquire_with(&self.shared.scope, &self.key, wait, &self.courtesy, || async {
            let first = !tried.swap(true, Ordering::Relaxed);
            *sent_last.lock().unwrap_or_else(|p| p.into_inner()) = TokioInstant::now();
            let outcome = if with_meta { self.try_meta(flags, &owner).await? } else { self.try_classic(first, flags, &owner).await? };
            match outcome {
                Try::Got(cas) => {
                    *took.lock().unwrap_or_else(|p| p.into_inner()) = cas;
                    Ok(Attempt::Got)
                }
                Try::Busy(marker) => {
                    if wait != Wait::No {
                        self.show_waiting(&marked).await?;
                    }
                    Ok(Attempt::Busy(marker))
                }
            }
        })
        .await?;
        if !got {
            return Ok(false);
        }
        // A CAS unique of 0: the server has them switched off (`-C`), and they prove nothing.
        let cas = took.lock().unwrap_or_else(|p| p.into_inner()).take();
        let cas = match cas {
            Some(0) => {
                self.client().stop_meta();
                None
            }
            other => other,
        };
        *self.cas.lock().await = cas;
        {
            let mut guard = self.shared.held.lock().unwrap_or_else(|p| p.into_inner());
            let held = guard.get();
            if !self.acquired.swap(true, Ordering::SeqCst) {
                held.push(self.clone());
            }
        }
        let token = match cas {
            Some(cas) => Ok(cas),
            None => self.next_token().await,
        };
        let sent = *sent_last.lock().unwrap_or_else(|p| p.into_inner());
        let me = self.clone();
        self.fate.acquired_on_lease(token.as_ref().ok().copied(), self.lease().deadline(sent), Box::new(move |why| me.expired(why)));
        if let Err(e) = token {
            let _ = self.release().await;
            return Err(e);
        }
        Ok(true)
    }

    /// One round trip: add the key (its CAS unique back) and look at whoever holds it.
    async fn try_meta(&self, flags: u32, owner: &[u8]) -> Result<Try> {
        let mut request = meta::add(&self.key, flags, self.ttl, owner);
        request.extend_from_slice(&meta::look(&self.key));
        let replies = self.client().pipeline("lock", &request, 2).await?;
        match status(replies.first()) {
            Some(Status { code: Code::Hd, cas }) => Ok(Try::Got(Some(cas.unwrap_or(0)))),
            Some(Status { code: Code::Ns, .. }) => match status(replies.get(1)) {
                // The holder's CAS unique; 0 when the key was freed since the add.
                Some(Status { code: Code::Hd, cas }) => Ok(Try::Busy(Some(cas.unwrap_or(0)))),
                Some(Status { code: Code::En, .. }) => Ok(Try::Busy(Some(0))),
                _ => Err(unexpected("mg", replies.get(1))),
            },
            _ => Err(unexpected("ms (add)", replies.first())),
        }
    }

    /// The classic way: after a failed add, a poll looks first (the lock key and the fencing
    /// counter in one multi-get) and adds only when the lock is free: one round trip while it
    /// stays held.
    async fn try_classic(&self, first: bool, flags: u32, owner: &[u8]) -> Result<Try> {
        let mut marker = None;
        if !first {
            let (held, fence) = self.peek().await?;
            marker = fence;
            if held {
                return Ok(Try::Busy(marker));
            }
        }
        if self.client().store(Store::Add, &self.key, flags, self.ttl, owner).await? {
            return Ok(Try::Got(None));
        }
        Ok(Try::Busy(marker))
    }

    /// The next fencing token of the classic way: `incr` of the counter, created at 1 if
    /// missing.
    async fn next_token(&self) -> Result<u64> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            if let Some(n) = self.client().incr(&self.fence_key, 1).await? {
                return Ok(n);
            }
            if self.client().store(Store::Add, &self.fence_key, 0, 0, b"1").await? {
                return Ok(1);
            }
        }
        Err(Error::Tooz(format!("the fencing counter {} kept changing; gave up", String::from_utf8_lossy(&self.fence_key))))
    }

    /// Marks the lock as waited for, unless this waiter did so less than [`WAITING_RENEW`]
    /// ago (`marked`: when it last did).
    async fn show_waiting(&self, marked: &Mutex<Option<Instant>>) -> Result<()> {
        let due = marked.lock().unwrap_or_else(|p| p.into_inner()).map_or(true, |at| at.elapsed() >= WAITING_RENEW);
        if due && memcache::check_key(&self.waiting_key).is_ok() {
            self.client().store(Store::Set, &self.waiting_key, 0, memcache::expiry(WAITING_SECONDS), b"1").await?;
            *marked.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        Ok(())
    }

    /// Whether the lock key exists, and the fencing counter (which tells whether the lock
    /// changed hands since the last look, see `handoff::Pace`).
    async fn peek(&self) -> Result<(bool, Option<u64>)> {
        let items = self.client().get_many(&[&self.key, &self.fence_key], false).await?;
        let held = items.iter().any(|i| i.key == self.key);
        let fence = items.iter().find(|i| i.key == self.fence_key);
        Ok((held, fence.and_then(|item| std::str::from_utf8(&item.data).ok()?.trim().parse().ok())))
    }

    /// The member id stored under the key (`None`: free, or not a member id).
    pub(super) async fn owner(&self) -> Result<Option<Id>> {
        match self.client().get(&self.key).await? {
            None => Ok(None),
            Some(item) => Ok(decode(&item).ok().as_ref().and_then(value_id)),
        }
    }

    fn waiting_key_usable(&self) -> bool {
        memcache::check_key(&self.waiting_key).is_ok()
    }

    pub(super) async fn release(self: &Arc<Self>) -> Result<bool> {
        let mut cas = self.cas.lock().await;
        if !self.is_acquired() {
            return Ok(false);
        }
        match cas.take() {
            Some(held) => self.release_meta(held).await,
            None => self.release_classic().await,
        }
    }

    /// One round trip: delete the key if it is still this holding, and see whether others wait.
    async fn release_meta(self: &Arc<Self>, cas: u64) -> Result<bool> {
        let mut request = meta::delete_if(&self.key, cas);
        if self.waiting_key_usable() {
            request.extend_from_slice(&meta::look(&self.waiting_key));
        }
        let sent = self.client().pipeline("unlock", &request, 1 + usize::from(self.waiting_key_usable())).await;
        let replies = match sent {
            Ok(replies) => replies,
            Err(e) => {
                // Deleted or not, this object is done with it: an undeleted key lapses.
                self.fate.released();
                self.forget();
                return Err(e);
            }
        };
        match status(replies.first()) {
            Some(Status { code: Code::Hd, .. }) => {}
            Some(Status { code: Code::Ex | Code::Nf, .. }) => {
                self.lost(GONE);
                return Ok(false);
            }
            _ => {
                self.fate.released();
                self.forget();
                return Err(unexpected("md", replies.first()));
            }
        }
        let others_waiting = matches!(status(replies.get(1)), Some(Status { code: Code::Hd, .. }));
        self.fate.released();
        self.forget();
        ttl_lock::wake(&self.shared.scope, &self.key);
        self.courtesy.released(others_waiting);
        Ok(true)
    }

    /// Not atomic (the classic protocol has no compare-and-delete): read, compare, delete.
    /// The read also tells whether others wait.
    async fn release_classic(self: &Arc<Self>) -> Result<bool> {
        let keys: &[&[u8]] = if self.waiting_key_usable() { &[&self.key, &self.waiting_key] } else { &[&self.key] };
        let items = self.client().get_many(keys, false).await?;
        let owner = items.iter().find(|i| i.key == self.key).and_then(|i| decode(i).ok()).as_ref().and_then(value_id);
        let others_waiting = items.iter().any(|i| i.key == self.waiting_key);
        if owner.as_ref() != Some(&self.shared.member) {
            self.lost(GONE);
            return Ok(false);
        }
        self.fate.released();
        let deleted = self.client().delete(&self.key).await;
        self.forget();
        let deleted = deleted?;
        ttl_lock::wake(&self.shared.scope, &self.key);
        self.courtesy.released(others_waiting);
        Ok(deleted)
    }

    /// Extends a held lock; finds it lost if its key is gone or is another holder's (a
    /// `touch` alone would extend another holder's key).
    pub(super) async fn touch(self: &Arc<Self>) -> Result<bool> {
        let cas = self.cas.lock().await;
        if !self.is_acquired() {
            return Ok(false);
        }
        let sent = TokioInstant::now();
        let extended = match *cas {
            Some(held) => still_held(&self.client().request("extend", &meta::touch(&self.key, self.ttl)).await?, held, "mg (touch)")?,
            None => self.owner().await?.as_ref() == Some(&self.shared.member) && self.client().touch(&self.key, self.ttl).await?,
        };
        self.extension_answered(extended, sent);
        Ok(extended)
    }

    /// An extension sent at `sent` was answered: the holder's clock moves on, or (the key gone
    /// or another holder's) the holding is lost.
    fn extension_answered(self: &Arc<Self>, extended: bool, sent: TokioInstant) {
        if extended {
            self.fate.renewed(self.lease().deadline(sent));
        } else {
            self.lost(&format!("{GONE} before it was extended"));
        }
    }

    /// Extends every lock of `locks` held through meta commands with one pipelined write of
    /// their touches (one round trip; the lease clock runs once, from when it was sent), and
    /// the others one by one the classic way. Each finds itself lost as [`LockState::touch`]
    /// does.
    pub(super) async fn touch_all(locks: &[Arc<LockState>]) -> Result<()> {
        let mut batch = Vec::with_capacity(locks.len());
        let mut classic = Vec::new();
        for lock in locks {
            let cas = lock.cas.lock().await;
            if !lock.is_acquired() {
                continue;
            }
            match *cas {
                Some(held) => batch.push((lock, held, cas)),
                None => classic.push(lock),
            }
        }
        if let Some((first, _, _)) = batch.first() {
            let client = first.client();
            let request: Vec<u8> = batch.iter().flat_map(|(l, _, _)| meta::touch(&l.key, l.ttl)).collect();
            let sent = TokioInstant::now();
            let replies = client.pipeline("extend", &request, batch.len()).await?;
            for ((lock, held, _cas), reply) in batch.iter().zip(&replies) {
                lock.extension_answered(still_held(reply, *held, "mg (touch)")?, sent);
            }
        }
        drop(batch);
        for lock in classic {
            lock.touch().await?;
        }
        Ok(())
    }

    /// Whether the key is still this holding (through meta commands: still its CAS unique;
    /// else: still names this member); finds it lost when not.
    async fn still_owned(self: &Arc<Self>) -> Result<bool> {
        let cas = self.cas.lock().await;
        if !self.is_acquired() {
            return Ok(false);
        }
        let owned = match *cas {
            Some(held) => still_held(&self.client().request("look", &meta::look(&self.key)).await?, held, "mg")?,
            None => self.owner().await?.as_ref() == Some(&self.shared.member),
        };
        if !owned {
            self.lost(GONE);
        }
        Ok(owned)
    }
}

pub struct MemcachedLock(pub(super) Arc<LockState>);

#[async_trait]
impl DriverLock for MemcachedLock {
    fn name(&self) -> Id {
        Id::Bytes(self.0.key.clone())
    }

    fn acquired(&self) -> bool {
        self.0.is_acquired()
    }

    async fn acquire(&self, wait: Wait, shared: bool) -> Result<bool> {
        if shared {
            return unsupported("shared locks");
        }
        self.0.acquire(wait).await
    }

    async fn release(&self) -> Result<bool> {
        self.0.release().await
    }

    async fn break_(&self) -> Result<bool> {
        let deleted = self.0.client().delete(&self.0.key).await?;
        if deleted {
            ttl_lock::wake(&self.0.shared.scope, &self.0.key);
        }
        Ok(deleted)
    }

    async fn is_still_owner(&self) -> Result<bool> {
        self.0.still_owned().await
    }

    fn fencing_token(&self) -> Option<u64> {
        self.0.fate.token()
    }

    fn on_lost(&self, callback: OnLost) {
        self.0.fate.on_lost(callback);
    }

    async fn heartbeat(&self) -> Result<bool> {
        self.0.touch().await
    }

    async fn get_owner(&self) -> Result<Option<Id>> {
        self.0.owner().await
    }
}
