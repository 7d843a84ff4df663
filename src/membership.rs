//! What a coordinator believes it has joined, kept as calls complete (not when a caller reads
//! a result: services fire and forget joins and leaves), and re-asserted after the backend
//! may have lost it.
//!
//! Healing: when the driver's [`Driver::epoch`] moves (a new connection after one was lost,
//! a new session after one expired), every group this coordinator joined is joined again
//! with its last capabilities, re-creating the group if it is gone. A join that finds the
//! member still there costs one round trip and changes nothing. Locks are never re-taken.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::log::{self, Level};
use crate::msgpack::Value;
use crate::runtime;

struct Joined {
    capabilities: Value,
    /// The driver epoch in which this membership was last known to be on the backend.
    epoch: u64,
}

pub struct Membership {
    member: Id,
    backend: String,
    heal: bool,
    started: AtomicBool,
    joined: Mutex<Table>,
    /// The driver epoch up to which every membership has been checked.
    healed_epoch: AtomicU64,
}

const LOGGER: &str = "tooz.coordination";

/// The memberships, and the process image (`runtime::generation`) that made them.
struct Table {
    generation: u64,
    groups: HashMap<Id, Joined>,
}

impl Membership {
    pub fn new(member: Id, backend: &str, heal: bool) -> Membership {
        Membership {
            member,
            backend: backend.to_owned(),
            heal,
            started: AtomicBool::new(false),
            joined: Mutex::new(Table { generation: runtime::generation(), groups: HashMap::new() }),
            healed_epoch: AtomicU64::new(0),
        }
    }

    /// "member m1 on redis", for log records.
    pub fn label(&self) -> String {
        format!("member {} on {}", self.member, self.backend)
    }

    /// The memberships of this process. A forked child starts with none: what its parent
    /// joined stays the parent's (a child that re-joined them on its own session would take
    /// them away from the parent when it exits), and a child's `stop()` leaves nothing of them.
    fn joined(&self) -> MappedGuard<'_> {
        let mut table = self.joined.lock().unwrap_or_else(|p| p.into_inner());
        let generation = runtime::generation();
        if table.generation != generation {
            table.generation = generation;
            table.groups.clear();
        }
        MappedGuard(table)
    }

    /// The driver has started: what it holds now is the baseline.
    pub fn started(&self, driver: &dyn Driver) {
        self.joined().clear();
        self.healed_epoch.store(driver.epoch(), Ordering::SeqCst);
        self.started.store(true, Ordering::SeqCst);
    }

    /// Between `start()` and `stop()`.
    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    pub fn groups(&self) -> Vec<Id> {
        self.joined().keys().cloned().collect()
    }

    pub fn contains(&self, group: &Id) -> bool {
        self.joined().contains_key(group)
    }

    /// Records a membership made outside the core's own calls (keeps known capabilities).
    pub fn add(&self, group: &Id, epoch: u64) {
        self.joined().entry(group.clone()).or_insert(Joined { capabilities: Value::Nil, epoch });
    }

    pub fn forget(&self, group: &Id) {
        self.joined().remove(group);
    }

    pub fn clear(&self) {
        self.joined().clear();
    }

    /// `join_group`, recorded when it succeeds.
    pub async fn join(&self, driver: &dyn Driver, group: &Id, capabilities: &Value) -> Result<()> {
        driver.join_group(group, capabilities).await?;
        self.joined().insert(group.clone(), Joined { capabilities: capabilities.clone(), epoch: driver.epoch() });
        Ok(())
    }

    /// `leave_group`; the group is forgotten when the leave succeeds or finds this member
    /// (or the group) already gone.
    pub async fn leave(&self, driver: &dyn Driver, group: &Id) -> Result<()> {
        let out = driver.leave_group(group).await;
        if matches!(out, Ok(()) | Err(Error::MemberNotJoined { .. }) | Err(Error::GroupNotCreated(_))) {
            self.forget(group);
        }
        out
    }

    /// `update_capabilities`, remembered for re-joins.
    pub async fn update_capabilities(&self, driver: &dyn Driver, group: &Id, capabilities: &Value) -> Result<()> {
        driver.update_capabilities(group, capabilities).await?;
        if let Some(j) = self.joined().get_mut(group) {
            j.capabilities = capabilities.clone();
        }
        Ok(())
    }

    /// Forgets what is joined without leaving it (a forked child stopping what its parent
    /// joined: the memberships are the parent's).
    pub fn forget_all(&self) {
        self.started.store(false, Ordering::SeqCst);
        self.joined().clear();
    }

    /// Leaves every joined group, ignoring failures (a stop's clean-up: the group may be gone,
    /// or the server). No healing after this.
    pub async fn leave_all(&self, driver: &dyn Driver) {
        self.started.store(false, Ordering::SeqCst);
        let groups: Vec<Id> = self.joined().drain().map(|(g, _)| g).collect();
        for group in groups {
            if let Err(e) = driver.leave_group(&group).await {
                log::emit(Level::Debug, LOGGER, format!("leaving group {group} while stopping: {e}"));
            }
        }
    }

    /// Whether the driver's epoch has moved past the last check.
    pub fn heal_due(&self, driver: &dyn Driver) -> bool {
        self.heal && self.started.load(Ordering::SeqCst) && driver.epoch() != self.healed_epoch.load(Ordering::SeqCst)
    }

    /// Re-joins what the backend may have lost since the last check. Stops at the first
    /// failure (the backend is still away); the next call or beat tries again.
    pub async fn heal(&self, driver: &dyn Driver) {
        if !self.heal_due(driver) {
            return;
        }
        let epoch = driver.epoch();
        // Liveness first (a beat key, member keys): a member re-joined without it would be
        // pruned as dead by the next coordinator that lists the group.
        if driver.requires_beating() {
            if let Err(e) = driver.heartbeat().await {
                log::emit(Level::Debug, LOGGER, format!("heartbeat before re-joining failed, will retry: {e}"));
                return;
            }
        }
        let todo: Vec<(Id, Value)> =
            self.joined().iter().filter(|(_, j)| j.epoch != epoch).map(|(g, j)| (g.clone(), j.capabilities.clone())).collect();
        for (group, capabilities) in todo {
            match self.rejoin(driver, &group, &capabilities).await {
                Ok(what) => {
                    if let Some(what) = what {
                        log::emit(
                            Level::Warning,
                            LOGGER,
                            format!(
                                "member {} {what} group {group} on {}: the backend had lost its membership \
                                 (connection lost, server restarted or session expired)",
                                self.member, self.backend
                            ),
                        );
                    }
                    if let Some(j) = self.joined().get_mut(&group) {
                        j.epoch = epoch;
                    }
                }
                Err(e) => {
                    log::emit(Level::Debug, LOGGER, format!("re-joining group {group} failed, will retry: {e}"));
                    return;
                }
            }
        }
        self.healed_epoch.store(epoch, Ordering::SeqCst);
    }

    /// Joins `group` again; `Some(what was done)`, or `None` when the member was still there.
    async fn rejoin(&self, driver: &dyn Driver, group: &Id, capabilities: &Value) -> Result<Option<&'static str>> {
        match driver.rejoin_group(group, capabilities).await {
            Ok(()) => return Ok(Some("re-joined")),
            Err(Error::MemberAlreadyExist { .. }) => return Ok(None),
            Err(Error::GroupNotCreated(_)) => {}
            Err(e) => return Err(e),
        }
        match driver.create_group(group).await {
            Ok(()) | Err(Error::GroupAlreadyExist(_)) => {}
            Err(e) => return Err(e),
        }
        match driver.rejoin_group(group, capabilities).await {
            Ok(()) => Ok(Some("re-created and re-joined")),
            Err(Error::MemberAlreadyExist { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A watcher saw this member missing from `group`. After healing (which runs before this
    /// check in call order) a fresh look decides: still missing means booted out for real
    /// (someone removed us), and the group is forgotten.
    pub async fn confirm_absent(&self, driver: &dyn Driver, group: &Id) -> Result<bool> {
        if !self.contains(group) {
            return Ok(true);
        }
        let absent = if self.heal {
            match driver.get_members(group).await {
                Ok(members) => !members.iter().any(|m| m.as_bytes() == self.member.as_bytes()),
                Err(Error::GroupNotCreated(_)) => true,
                Err(e) => return Err(e),
            }
        } else {
            true
        };
        if absent {
            self.forget(group);
        }
        Ok(absent)
    }
}

/// The lock on [`Table`], seen as its map of groups.
struct MappedGuard<'a>(std::sync::MutexGuard<'a, Table>);

impl std::ops::Deref for MappedGuard<'_> {
    type Target = HashMap<Id, Joined>;
    fn deref(&self) -> &Self::Target {
        &self.0.groups
    }
}

impl std::ops::DerefMut for MappedGuard<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0.groups
    }
}

/// A shared handle, as the coordinator's calls capture it.
pub type SharedMembership = Arc<Membership>;
