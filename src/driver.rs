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

    /// Refreshes liveness; returns the seconds until the next beat is due.
    async fn heartbeat(&self) -> Result<Option<f64>> {
        Ok(None)
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
    /// Removes the group's record whatever it holds (upstream's test helper `_destroy_group`).
    async fn destroy_group(&self, _group: &Id) -> Result<()> {
        unsupported("destroy_group")
    }
    async fn join_group(&self, _group: &Id, _capabilities: &Value) -> Result<()> {
        unsupported("join_group")
    }
    async fn leave_group(&self, _group: &Id) -> Result<()> {
        unsupported("leave_group")
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
    async fn break_(&self) -> Result<bool> {
        unsupported("break_")
    }
    async fn is_still_owner(&self) -> Result<bool> {
        unsupported("is_still_owner")
    }
    async fn heartbeat(&self) -> Result<bool> {
        unsupported("heartbeat")
    }
}
