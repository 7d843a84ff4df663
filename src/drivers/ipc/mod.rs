//! `ipc://`: System V semaphores as locks, and the group list in a shared-memory segment,
//! laid out as upstream tooz's ipc driver lays them out:
//!
//! * lock `name` = semaphore `ftok(name, "__TOOZ_LOCK_")`, created with value 1 and taken
//!   with SEM_UNDO (a killed holder frees it); release *removes* the semaphore, and waiters
//!   that see it vanish start over; ours hands it to a waiter instead once this process has
//!   kept winning it back over waiters for a while (`let_go`), ours and upstream's alike;
//! * groups = segment `ftok("GROUP_LIST", "_TOOZ_INTERNAL")`, 1024 bytes: a native-endian
//!   u16 length, then a msgpack array of the ids; changed under lock `TOOZ_INTERNAL_LOCK`.
//!   A process attaches the segment once, shared by its started coordinators; a coordinator
//!   that stops while no other process is attached removes the segment (upstream removes it
//!   whenever any coordinator stops, wiping the list under every other process too).

pub mod sysv;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::lock::handoff::Bursts;
use self::sysv::{SemWait, Shm};
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

/// The longest one blocking semaphore wait lasts before the acquire looks again: bounds how
/// long a wait that was given up (Ctrl-C, a cancelled task) goes on in the kernel.
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// A semaphore this process took and nobody has claimed yet: dropped unclaimed (the acquire
/// that waited for it was abandoned), it is released as [`IpcLock::release`] would.
struct Taken(Option<i32>);

impl Taken {
    fn keep(mut self) -> i32 {
        self.0.take().expect("claimed once")
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if let Some(id) = self.0.take() {
            let _ = let_go(id, None);
        }
    }
}

/// How long a waiting acquire stays away after it saw the semaphore removed and at once
/// taken again (a releaser's burst) before it queues on the new one.
const REQUEUE_PAUSE: Duration = Duration::from_millis(1);

/// This process's runs of releases over waiters, per semaphore key (`handoff::Bursts`).
static BURSTS: Bursts<libc::key_t> = Bursts::new();

/// Gives up semaphore `id` (held by this process), the lock of `key`.
///
/// With nobody waiting, or while this process's run of releases of the lock over waiters is
/// young (`BURSTS`), the semaphore is removed, as upstream's release does: waiters see it
/// vanish and race to recreate it, and the releaser, still running, usually wins it back,
/// which keeps the lock busy (a hand-over costs a process wake-up, tens of µs on a VM). Once
/// the burst is over (or for a wait given up, `key` None), it is handed to a waiting
/// process: a V operation, for which the kernel completes the first P in its queue (ours
/// queue again at each wait slice, upstream's wait in one P), so that process holds it
/// before it even runs and the releaser cannot take it back first. Only when the kernel
/// says this process took it last: a forked child releasing what its parent holds removes
/// it, as before, rather than raise its count to 2.
fn let_go(id: i32, key: Option<libc::key_t>) -> Result<bool> {
    let io = |e| ipc_err("cannot release semaphore", e);
    let waiting = sysv::sem_waiting(id).unwrap_or(0) > 0;
    let hand_over = key.map_or(waiting, |k| BURSTS.over(&k, waiting))
        && sysv::sem_state(id).map_err(io)? == Some((0, std::process::id() as i32));
    if !hand_over {
        return sysv::sem_remove(id).map_err(io);
    }
    let posted = sysv::sem_post(id).map_err(io)?;
    // The waiter gave up just before the V, and nobody else waits: take it back (one try,
    // so never from someone who took it meanwhile) and remove it, as a release with nobody
    // waiting does, rather than leave it in the kernel.
    if posted && sysv::sem_waiting(id).unwrap_or(1) == 0 {
        if let Ok(SemWait::Got) = sysv::sem_acquire(id, Duration::ZERO) {
            let _ = sysv::sem_remove(id);
        }
    }
    Ok(posted)
}

enum Attempt {
    Got(Taken),
    /// Held by another for the whole slice.
    Busy,
    /// Removed meanwhile (a release): start over with the next semaphore.
    Removed,
}

/// One P operation on semaphore `id` lasting at most `slice` (zero: one try).
fn take(id: i32, slice: Duration) -> Result<Attempt> {
    Ok(match sysv::sem_acquire(id, slice).map_err(|e| ipc_err("cannot take semaphore", e))? {
        SemWait::Got => Attempt::Got(Taken(Some(id))),
        SemWait::Busy => Attempt::Busy,
        SemWait::Removed => Attempt::Removed,
    })
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
        // Whether the last attempt saw the semaphore removed (then the next one is a single try).
        let mut removed = false;
        loop {
            let Some(id) = self.semaphore()? else { continue };
            let slice = match (wait, deadline) {
                (Wait::No, _) => Duration::ZERO,
                _ if removed => Duration::ZERO,
                (_, Some(d)) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(false);
                    }
                    (d - now).min(WAIT_SLICE)
                }
                _ => WAIT_SLICE,
            };
            let outcome = if slice.is_zero() || crate::runtime::on_caller_thread() {
                // One try, or a caller's thread: the kernel wakes this very thread.
                take(id, slice)
            } else {
                // A runtime thread must not block: a blocking-pool thread waits. If this
                // future is dropped meanwhile, a semaphore won after that is given back by
                // `Taken`'s drop, with the task's unread output.
                tokio::task::spawn_blocking(move || take(id, slice))
                    .await
                    .map_err(|e| Error::Tooz(format!("semaphore wait failed: {e}")))?
            };
            match outcome? {
                Attempt::Got(taken) => {
                    *self.held() = Some(taken.keep());
                    return Ok(true);
                }
                Attempt::Busy if wait == Wait::No => return Ok(false),
                Attempt::Removed => removed = wait != Wait::No,
                // Removed by a release, then taken again at once: by a releaser winning it back
                // in its burst (`let_go`). Stay away a moment rather than queue again at once,
                // where its next release would wake this waiter (and every other) once more.
                Attempt::Busy if removed => {
                    removed = false;
                    crate::lock::handoff::pause(REQUEUE_PAUSE).await;
                }
                // Busy for this slice: look again. Yielding lets a caller's thread see signals
                // (and a wait given up end) between slices.
                Attempt::Busy => tokio::task::yield_now().await,
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
        let_go(id, Some(self.key))
    }

    async fn break_(&self) -> Result<bool> {
        match sysv::sem_open(self.key).map_err(|e| ipc_err("cannot open semaphore", e))? {
            None => Ok(false),
            Some(id) => sysv::sem_remove(id).map_err(|e| ipc_err("cannot remove semaphore", e)),
        }
    }
}
