//! The one interface every backend implements. Drivers know nothing of Python; the generic
//! behaviour above them (ordering of calls, heartbeat task) is in `coordinator.rs`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::id::Id;
use crate::msgpack::Value;

/// Operations a backend may or may not offer. Upstream raises `tooz.NotImplemented` at call
/// time for the ones a driver lacks, so the set must be known before anything runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    CreateGroup,
    DeleteGroup,
    GetGroups,
    JoinGroup,
    LeaveGroup,
    GetMembers,
    GetMemberCapabilities,
    GetMembersWithCapabilities,
    UpdateCapabilities,
    GetMemberInfo,
    GetLeader,
    StandDownGroupLeader,
    /// Leader election through `run_watchers` (`run_elect_coordinator`).
    Elect,
    /// Membership watchers (`watch_join_group` / `watch_leave_group` and their polling).
    WatchMembers,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::CreateGroup => "create_group",
            Op::DeleteGroup => "delete_group",
            Op::GetGroups => "get_groups",
            Op::JoinGroup => "join_group",
            Op::LeaveGroup => "leave_group",
            Op::GetMembers => "get_members",
            Op::GetMemberCapabilities => "get_member_capabilities",
            Op::GetMembersWithCapabilities => "get_members_with_capabilities",
            Op::UpdateCapabilities => "update_capabilities",
            Op::GetMemberInfo => "get_member_info",
            Op::GetLeader => "get_leader",
            Op::StandDownGroupLeader => "stand_down_group_leader",
            Op::Elect => "run_elect_coordinator",
            Op::WatchMembers => "watch_join_group",
        }
    }
}

/// How long an acquire may wait.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Wait {
    /// One attempt.
    No,
    Forever,
    For(Duration),
}

impl Wait {
    pub fn deadline(self) -> Option<tokio::time::Instant> {
        match self {
            Wait::For(d) => Some(tokio::time::Instant::now() + d),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct MemberInfo {
    pub capabilities: Value,
    /// Seconds since the epoch.
    pub created_at: f64,
    pub updated_at: f64,
}

/// A missing group has no members.
pub fn members_or_none(found: Result<Vec<Id>>) -> Result<Vec<Id>> {
    match found {
        Err(Error::GroupNotCreated(_)) => Ok(Vec::new()),
        other => other,
    }
}

/// Whether two member lists hold the same members (in any order).
pub fn same_members(a: &[Id], b: &[Id]) -> bool {
    fn set(l: &[Id]) -> std::collections::HashSet<&[u8]> {
        l.iter().map(Id::as_bytes).collect()
    }
    set(a) == set(b)
}

pub fn unsupported<T>(what: &str) -> Result<T> {
    Err(Error::NotImplemented(format!("{what} is not implemented by this backend")))
}

#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// The operations this backend offers (see [`Op`]).
    fn supports(&self, op: Op) -> bool;

    /// Whether liveness must be refreshed by calling [`Driver::heartbeat`] periodically.
    fn requires_beating(&self) -> bool {
        false
    }

    async fn start(&self) -> Result<()>;
    async fn stop(&self) -> Result<()>;

    /// A number that changes whenever the backend may have lost what this coordinator wrote
    /// (a new connection after one was lost, a new session after one expired): the
    /// coordinator then checks its memberships and heals them. Constant for backends whose
    /// state cannot be lost that way.
    fn epoch(&self) -> u64 {
        0
    }

    /// Refreshes liveness; returns the seconds until the next beat is due.
    async fn heartbeat(&self) -> Result<Option<f64>> {
        Ok(None)
    }

    /// The membership part of a heartbeat alone, for a backend whose locks' leases are
    /// renewed on a loop of their own ([`Driver::renews_leases`]): the heart runs both, and
    /// neither waits behind the other's unanswered request. The whole heartbeat otherwise.
    async fn beat(&self) -> Result<Option<f64>> {
        self.heartbeat().await
    }

    /// Whether this backend's locks (and leaderships) live on leases that
    /// [`Driver::extend_locks`] renews: the heart then renews them on a loop of its own.
    fn renews_leases(&self) -> bool {
        false
    }

    /// Extends the leases of the locks this process image took, and nothing else (no
    /// membership beat): what the heart's renewal loop runs, and what keeps a forked worker's
    /// locks alive when the heart that beats them stayed in the parent. The seconds until the
    /// next extension is due; `None` where locks have no lease.
    async fn extend_locks(&self) -> Result<Option<f64>> {
        Ok(None)
    }

    /// `stop()` in a forked child of the process that started the coordinator: releases the
    /// locks this process image took and lets its connections go, and leaves the parent's
    /// session, memberships and locks alone. [`Driver::stop`] by default, for backends whose
    /// child works over a session or connections of its own.
    async fn stop_inherited(&self) -> Result<()> {
        self.stop().await
    }

    async fn create_group(&self, _group: &Id) -> Result<()> {
        unsupported("create_group")
    }
    async fn delete_group(&self, _group: &Id) -> Result<()> {
        unsupported("delete_group")
    }
    async fn get_groups(&self) -> Result<Vec<Id>> {
        unsupported("get_groups")
    }
    /// Removes a group's record with its members behind their backs, as an operator or an
    /// expiry would (upstream's `_destroy_group`, which its test suite calls); the group list
    /// is left alone.
    async fn destroy_group(&self, _group: &Id) -> Result<()> {
        unsupported("_destroy_group")
    }
    async fn join_group(&self, _group: &Id, _capabilities: &Value) -> Result<()> {
        unsupported("join_group")
    }
    async fn leave_group(&self, _group: &Id) -> Result<()> {
        unsupported("leave_group")
    }
    /// Puts this coordinator's membership back after the backend may have lost it: like
    /// `join_group`, but `MemberAlreadyExist` only when the entry found is this
    /// coordinator's *current* one (a backend whose entries belong to a session replaces
    /// one left by an earlier, ended session).
    async fn rejoin_group(&self, group: &Id, capabilities: &Value) -> Result<()> {
        self.join_group(group, capabilities).await
    }
    async fn get_members(&self, _group: &Id) -> Result<Vec<Id>> {
        unsupported("get_members")
    }
    async fn get_member_capabilities(&self, _group: &Id, _member: &Id) -> Result<Value> {
        unsupported("get_member_capabilities")
    }
    async fn get_members_with_capabilities(&self, _group: &Id) -> Result<Vec<(Id, Value)>> {
        unsupported("get_members_with_capabilities")
    }
    async fn update_capabilities(&self, _group: &Id, _capabilities: &Value) -> Result<()> {
        unsupported("update_capabilities")
    }
    async fn get_member_info(&self, _group: &Id, _member: &Id) -> Result<MemberInfo> {
        unsupported("get_member_info")
    }
    async fn get_leader(&self, _group: &Id) -> Result<Option<Id>> {
        unsupported("get_leader")
    }
    async fn stand_down_group_leader(&self, _group: &Id) -> Result<bool> {
        unsupported("stand_down_group_leader")
    }
    /// One non-blocking attempt to become the group's leader; true when this call won.
    async fn elect(&self, _group: &Id) -> Result<bool> {
        unsupported("run_elect_coordinator")
    }

    /// Waits until the members of `group` differ from `known` and returns them (a group that
    /// does not exist has none). A backend that pushes changes (ZooKeeper child watches, etcd
    /// watch streams) waits for the push and looks every `poll` only as a safety net; this
    /// default looks every `poll`.
    async fn next_members(&self, group: &Id, known: &[Id], poll: Duration) -> Result<Vec<Id>> {
        loop {
            tokio::time::sleep(poll).await;
            let now = members_or_none(self.get_members(group).await)?;
            if !same_members(&now, known) {
                return Ok(now);
            }
        }
    }

    /// After an election attempt in `group` that did not win: waits until the leadership may
    /// have changed (the leader left), at most `poll`. A backend that pushes changes wakes
    /// at once; this default just waits `poll`.
    async fn wait_leader_change(&self, _group: &Id, poll: Duration) -> Result<()> {
        tokio::time::sleep(poll).await;
        Ok(())
    }

    /// A lock object for `name` (no I/O).
    fn lock(&self, name: &[u8]) -> Result<Arc<dyn DriverLock>>;
}

#[async_trait]
pub trait DriverLock: Send + Sync + 'static {
    /// The name upstream reports as `Lock.name` (a backend key or a path).
    fn name(&self) -> Id;
    /// Whether this lock object believes it holds the lock (no I/O; upstream's `acquired`).
    fn acquired(&self) -> bool;
    async fn acquire(&self, wait: Wait, shared: bool) -> Result<bool>;
    async fn release(&self) -> Result<bool>;
    /// `acquire(Wait::No, shared)` done on the caller's thread, for a lock whose attempt is a
    /// system call that never waits (a file's record lock); `None`: no such path, use
    /// `acquire` on the runtime.
    fn try_acquire_here(&self, _shared: bool) -> Option<Result<bool>> {
        None
    }
    /// Whether a waiting acquire would step aside first for others that waited (`lock/handoff.rs`):
    /// then a waiting caller must not make a one-shot attempt before it.
    fn stepping_aside(&self) -> bool {
        false
    }
    /// `release()` done on the caller's thread, where `try_acquire_here` exists.
    fn release_here(&self) -> Option<Result<bool>> {
        None
    }
    async fn break_(&self) -> Result<bool> {
        unsupported("break_")
    }
    async fn is_still_owner(&self) -> Result<bool> {
        unsupported("is_still_owner")
    }
    async fn heartbeat(&self) -> Result<bool> {
        unsupported("heartbeat")
    }
    /// The fencing token of the last successful acquire: greater than every token issued
    /// before it for the same lock name on the same backend. `None` before one, or on a
    /// backend that cannot give one.
    fn fencing_token(&self) -> Option<u64> {
        None
    }
    /// Registers a callback for when a holding turns out lost without `release()` (see
    /// `lock/fate.rs`). Kernel-held locks (file, ipc) cannot be lost behind their holder's back:
    /// the callback is kept and never called.
    fn on_lost(&self, _callback: crate::lock::fate::OnLost) {}
    /// Who holds the lock now, as the backend says (`None`: nobody).
    async fn get_owner(&self) -> Result<Option<Id>> {
        unsupported("get_owner")
    }
}
