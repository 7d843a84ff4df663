//! `ipc://`: System V semaphores as locks, and the group list in a shared-memory segment,
//! laid out as upstream tooz's ipc driver lays them out:
//!
//! * lock `name` = semaphore `ftok(name, "__TOOZ_LOCK_")`, created with value 1 and taken
//!   with SEM_UNDO (a killed holder frees it); release *removes* the semaphore, and waiters
//!   that see it vanish start over;
//! * groups = segment `ftok("GROUP_LIST", "_TOOZ_INTERNAL")`, 1024 bytes: a native-endian
//!   u16 length, then a msgpack array of the ids; changed under lock `TOOZ_INTERNAL_LOCK`.
//!   A process attaches the segment once, shared by its started coordinators; a coordinator
//!   that stops while no other process is attached removes the segment (upstream removes it
//!   whenever any coordinator stops, wiping the list under every other process too).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::sysv::{self, SemWait, Shm};
use crate::driver::{Driver, DriverLock, Op, Wait};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::msgpack::{self, Value};

const LOCK_PROJECT: &[u8] = b"__TOOZ_LOCK_";
const GROUP_LIST_SIZE: usize = 1024;

fn ipc_err(what: &str, e: std::io::Error) -> Error {
    Error::Tooz(format!("{what}: {e}"))
}

pub struct IpcDriver {
    internal_lock: IpcLock,
    attached: Mutex<Option<Arc<Shm>>>,
}

/// This process's one attachment of the group list, shared by its coordinators, so that the
/// segment's attachment count counts processes (a coordinator that was never stopped does not
/// keep the segment alive for ever).
static PROCESS_ATTACHMENT: Mutex<Option<std::sync::Weak<Shm>>> = Mutex::new(None);

fn attach_shared(id: i32) -> Result<Arc<Shm>> {
    let mut shared = PROCESS_ATTACHMENT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(shm) = shared.as_ref().and_then(std::sync::Weak::upgrade) {
        if shm.id() == id {
            return Ok(shm);
        }
    }
    let shm = Arc::new(Shm::attach(id, GROUP_LIST_SIZE).map_err(|e| ipc_err("cannot attach the group list", e))?);
    *shared = Some(Arc::downgrade(&shm));
    Ok(shm)
}

impl IpcDriver {
    pub fn new() -> IpcDriver {
        IpcDriver { internal_lock: IpcLock::new(b"TOOZ_INTERNAL_LOCK"), attached: Mutex::new(None) }
    }

    /// Runs `f` on the current group-list segment (reattaching if a peer replaced it).
    fn with_group_list<T>(&self, f: impl FnOnce(&Shm) -> Result<T>) -> Result<T> {
        let id = sysv::shm_id(sysv::ftok(b"GROUP_LIST", b"_TOOZ_INTERNAL"), GROUP_LIST_SIZE)
            .map_err(|e| ipc_err("cannot open the group list", e))?;
        let mut attached = self.attached.lock().unwrap_or_else(|p| p.into_inner());
        if attached.as_ref().map(|shm| shm.id()) != Some(id) {
            *attached = Some(attach_shared(id)?);
        }
        f(attached.as_ref().expect("attached above"))
    }

    fn read_groups(shm: &Shm) -> Result<Vec<Id>> {
        let len = u16::from_ne_bytes(shm.read(0, 2).try_into().unwrap_or([0, 0])) as usize;
        if len == 0 {
            return Ok(Vec::new());
        }
        match msgpack::decode(&shm.read(2, len))? {
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::Bin(b) => Ok(Id::Bytes(b)),
                    Value::Str(s) => Ok(Id::Text(s)),
                    other => Err(Error::Serialization(format!("unexpected entry in the group list: {other:?}"))),
                })
                .collect(),
            _ => Err(Error::Serialization("the shared group list is not a list".into())),
        }
    }

    fn write_groups(shm: &Shm, groups: &[Id]) -> Result<()> {
        let list = Value::Array(
            groups
                .iter()
                .map(|g| match g {
                    Id::Bytes(b) => Value::Bin(b.clone()),
                    Id::Text(s) => Value::Str(s.clone()),
                })
                .collect(),
        );
        let data = msgpack::encode(&list);
        if data.len() >= GROUP_LIST_SIZE - 2 {
            return Err(Error::Tooz("Group list is too big".into()));
        }
        shm.write(2, &data);
        shm.write(0, &(data.len() as u16).to_ne_bytes());
        Ok(())
    }

    /// Read-modify-write of the group list under the internal lock.
    async fn change_groups(&self, change: impl FnOnce(&mut Vec<Id>) -> Result<()>) -> Result<()> {
        self.internal_lock.acquire(Wait::Forever, false).await?;
        let out = self.with_group_list(|shm| {
            let mut groups = Self::read_groups(shm)?;
            change(&mut groups)?;
            Self::write_groups(shm, &groups)
        });
        self.internal_lock.release().await?;
        out
    }
}

impl Default for IpcDriver {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Driver for IpcDriver {
    fn supports(&self, op: Op) -> bool {
        matches!(op, Op::CreateGroup | Op::DeleteGroup | Op::GetGroups)
    }

    async fn start(&self) -> Result<()> {
        self.with_group_list(|_| Ok(())).map_err(|e| Error::Connection(e.to_string()))
    }

    async fn stop(&self) -> Result<()> {
        let shm = self.attached.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(shm) = shm {
            if shm.attachments().map(|n| n <= 1).unwrap_or(false) {
                shm.remove().map_err(|e| ipc_err("cannot remove the group list", e))?;
            }
        }
        Ok(())
    }

    async fn create_group(&self, group: &Id) -> Result<()> {
        self.change_groups(|groups| {
            if groups.contains(group) {
                return Err(Error::GroupAlreadyExist(group.clone()));
            }
            groups.push(group.clone());
            Ok(())
        })
        .await
    }

    async fn delete_group(&self, group: &Id) -> Result<()> {
        self.change_groups(|groups| {
            let before = groups.len();
            groups.retain(|g| g != group);
            if groups.len() == before {
                return Err(Error::GroupNotCreated(group.clone()));
            }
            Ok(())
        })
        .await
    }

    async fn get_groups(&self) -> Result<Vec<Id>> {
        self.internal_lock.acquire(Wait::Forever, false).await?;
        let out = self.with_group_list(Self::read_groups);
        self.internal_lock.release().await?;
        out
    }

    fn lock(&self, name: &[u8]) -> Result<Arc<dyn DriverLock>> {
        if name.is_empty() {
            return Err(Error::InvalidArgument("Locks must be provided a name".into()));
        }
        Ok(Arc::new(IpcLock::new(name)))
    }
}

pub struct IpcLock {
    name: Vec<u8>,
    key: libc::key_t,
    /// The semaphore id this object holds.
    held: Mutex<Option<i32>>,
}

impl IpcLock {
    pub fn new(name: &[u8]) -> IpcLock {
        IpcLock { name: name.to_vec(), key: sysv::ftok(name, LOCK_PROJECT), held: Mutex::new(None) }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<i32>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The semaphore for our key, created if missing; None if it vanished in between.
    fn semaphore(&self) -> Result<Option<i32>> {
        if let Some(id) = sysv::sem_create(self.key).map_err(|e| ipc_err("cannot create semaphore", e))? {
            return Ok(Some(id));
        }
        sysv::sem_open(self.key).map_err(|e| ipc_err("cannot open semaphore", e))
    }
}

#[async_trait]
impl DriverLock for IpcLock {
    fn name(&self) -> Id {
        Id::Bytes(self.name.clone())
    }

    fn acquired(&self) -> bool {
        self.held().is_some()
    }

    async fn acquire(&self, wait: Wait, shared: bool) -> Result<bool> {
        if shared {
            return Err(Error::NotImplemented("shared ipc locks are not supported".into()));
        }
        if self.held().is_some() {
            // Not re-entrant: a second acquire by the holder would deadlock on itself.
            if wait == Wait::No {
                return Ok(false);
            }
        }
        let deadline = wait.deadline();
        loop {
            let Some(id) = self.semaphore()? else { continue };
            let timeout = match (wait, deadline) {
                (Wait::No, _) => Some(Duration::ZERO),
                (_, Some(d)) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(false);
                    }
                    Some(d - now)
                }
                _ => None,
            };
            let outcome = if timeout == Some(Duration::ZERO) {
                sysv::sem_acquire(id, timeout)
            } else {
                tokio::task::spawn_blocking(move || sysv::sem_acquire(id, timeout))
                    .await
                    .map_err(|e| Error::Tooz(format!("semaphore wait failed: {e}")))?
            };
            match outcome.map_err(|e| ipc_err("cannot take semaphore", e))? {
                SemWait::Got => {
                    *self.held() = Some(id);
                    return Ok(true);
                }
                SemWait::Busy => return Ok(false),
                SemWait::Removed => continue,
            }
        }
    }

    /// Asked of the kernel: the semaphore this object took is still there (not broken or
    /// released by another object), taken (0), and last taken by this process.
    async fn is_still_owner(&self) -> Result<bool> {
        let Some(id) = *self.held() else { return Ok(false) };
        let current = sysv::sem_open(self.key).map_err(|e| ipc_err("cannot open semaphore", e))?;
        let state = sysv::sem_state(id).map_err(|e| ipc_err("cannot read semaphore", e))?;
        let owned = current == Some(id) && state == Some((0, std::process::id() as i32));
        if !owned {
            *self.held() = None;
        }
        Ok(owned)
    }

    async fn release(&self) -> Result<bool> {
        let Some(id) = self.held().take() else { return Ok(false) };
        sysv::sem_remove(id).map_err(|e| ipc_err("cannot remove semaphore", e))
    }

    async fn break_(&self) -> Result<bool> {
        match sysv::sem_open(self.key).map_err(|e| ipc_err("cannot open semaphore", e))? {
            None => Ok(false),
            Some(id) => sysv::sem_remove(id).map_err(|e| ipc_err("cannot remove semaphore", e)),
        }
    }
}
