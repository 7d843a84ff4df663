//! A redis lock: the key upstream writes (`SET NX PX`, the owner's token), with our fencing
//! counter and waiters' registry beside it (see `mod.rs`), waited for by polling
//! (`lock/ttl.rs`) and extended by the coordinator's heartbeats.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::time::Instant;

use super::scripts::WAITER_MS;
use super::{Held, Shared};
use crate::driver::{DriverLock, Wait};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::lock::fate::{Fate, OnLost, LEASE_RAN_OUT};
use crate::lock::handoff::Courtesy;
use crate::lock::ttl::{self as ttl_lock, Attempt};

pub struct RedisLock {
    pub(super) shared: Arc<Shared>,
    pub(super) id: u64,
    pub(super) key: Vec<u8>,
    pub(super) token: Vec<u8>,
    /// The counter of fencing tokens (`<lock key>:fence`; upstream never touches it).
    pub(super) fence_key: Vec<u8>,
    /// Where it registers while it waits (`<lock key>:waiters`).
    pub(super) waiters_key: Vec<u8>,
    pub(super) courtesy: Arc<Courtesy>,
    pub(super) fate: Arc<Fate>,
}

impl RedisLock {
    /// Held through this coordinator, and not past the holder's deadline of its lease.
    fn held_here(&self) -> bool {
        self.shared.held.lock().unwrap_or_else(|p| p.into_inner()).get().contains_key(&self.id) && self.fate.holding()
    }

    /// One SET NX; a failed one registers this lock object as a waiter when `wait`s.
    async fn try_once(&self, wait: Wait) -> Result<Attempt> {
        let ms = Shared::px(self.shared.lock_timeout).to_string();
        let register: &[u8] = if wait == Wait::No { b"0" } else { WAITER_MS };
        let keys: [&[u8]; 3] = [&self.key, &self.fence_key, &self.waiters_key];
        let sent = Instant::now();
        let fence: i64 =
            self.shared.eval("acquire lock", &self.shared.scripts.acquire_lock, &keys, &[&self.token, ms.as_bytes(), register]).await?;
        if fence <= 0 {
            return Ok(Attempt::Busy(Some(fence.unsigned_abs())));
        }
        let (shared, id, key, token) = (self.shared.clone(), self.id, self.key.clone(), self.token.clone());
        let on_expiry = Box::new(move |why: &'static str| shared.expired(id, key, token, why));
        self.fate.acquired_on_lease(Some(fence as u64), self.shared.lease().deadline(sent), on_expiry);
        Ok(Attempt::Got)
    }
}

#[async_trait]
impl DriverLock for RedisLock {
    fn name(&self) -> Id {
        Id::Bytes(self.key.clone())
    }

    fn acquired(&self) -> bool {
        self.held_here()
    }

    async fn acquire(&self, wait: Wait, shared: bool) -> Result<bool> {
        if shared {
            return Err(Error::NotImplemented("shared redis locks are not supported".into()));
        }
        let got = ttl_lock::acquire_with(&self.shared.scope, &self.key, wait, &self.courtesy, || self.try_once(wait)).await?;
        if got {
            let held = Held { key: self.key.clone(), token: self.token.clone(), fate: self.fate.clone() };
            self.shared.held.lock().unwrap_or_else(|p| p.into_inner()).get().insert(self.id, held);
        }
        Ok(got)
    }

    async fn release(&self) -> Result<bool> {
        let was_held = self.shared.held.lock().unwrap_or_else(|p| p.into_inner()).get().remove(&self.id).is_some();
        if !was_held {
            return Ok(false);
        }
        if !self.fate.holding() {
            // Past the holder's deadline, before its watchdog told: lost, and the key deleted
            // if it is still ours.
            self.fate.lost(LEASE_RAN_OUT);
            self.shared.delete_when_back(self.key.clone(), self.token.clone());
            return Ok(false);
        }
        self.fate.released();
        let released = self.shared.release(&self.key, &self.token).await;
        ttl_lock::wake(&self.shared.scope, &self.key);
        let (released, others_waiting) = released?;
        self.courtesy.released(others_waiting);
        Ok(released)
    }

    async fn break_(&self) -> Result<bool> {
        let n: i64 = self.shared.query("break lock", redis::cmd("DEL").arg(&self.key)).await?;
        ttl_lock::wake(&self.shared.scope, &self.key);
        Ok(n > 0)
    }

    async fn is_still_owner(&self) -> Result<bool> {
        if !self.held_here() {
            // Never held, released, or lost (maybe on the holder's clock, the server out of
            // reach): nothing of this object's can be the owner.
            return Ok(false);
        }
        let owner: Option<Vec<u8>> = self.shared.query("check lock owner", redis::cmd("GET").arg(&self.key)).await?;
        let owned = owner.as_deref() == Some(self.token.as_slice());
        if !owned && self.held_here() {
            self.shared.lost(self.id, "its key expired or was taken by another holder");
        }
        Ok(owned)
    }

    async fn heartbeat(&self) -> Result<bool> {
        if !self.held_here() {
            return Ok(false);
        }
        let extended = self.shared.extend(&self.key, &self.token, &self.fate).await?;
        if !extended {
            self.shared.lost(self.id, "its key expired or was taken by another holder before it was extended");
        }
        Ok(extended)
    }

    fn fencing_token(&self) -> Option<u64> {
        self.fate.token()
    }

    fn on_lost(&self, callback: OnLost) {
        self.fate.on_lost(callback);
    }
}
