//! Whole-file POSIX record locks (`fcntl(F_SETLK)`, what Python's `fcntl.lockf` takes), made
//! safe between threads of one process.
//!
//! A record lock belongs to the process, not to a thread or an open file, so two threads
//! would both "get" it. Every path therefore has one process-wide barrier that hands the
//! lock to one holder at a time (or to several shared holders, which only the process
//! itself can tell apart; between processes the lock is always exclusive). Upstream tooz's
//! file driver behaves the same way, so ours and theirs exclude each other on a directory.
//!
//! Fairness between processes (see `lock/handoff.rs`): a process with a waiter holds a shared
//! `flock` on the lock file through a descriptor of its own. `flock` locks are independent of
//! record locks on local filesystems, so this does not touch the lock itself, and a releaser
//! finds out whether anyone waits by trying an exclusive `flock` (on filesystems that may
//! emulate `flock` with record locks, NFS and the like, no one registers). Waiting processes
//! are also counted in the lock's side file (`fence.rs`), so a releaser asks the kernel only
//! when that count says someone may wait. A waiter reads the fencing counter from the side
//! file to tell whether the lock changed hands since its last try.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::fence::Fence;
use crate::lock::handoff::{self, Bursts, Courtesy, Pace};
use crate::driver::Wait;
use crate::error::{Error, Result};
use crate::runtime;

pub struct Barrier {
    path: PathBuf,
    inner: Mutex<Inner>,
    changed: Notify,
}

#[derive(Default)]
struct Inner {
    holders: usize,
    shared: bool,
    /// The lock file, kept open between holds (unlocking instead of closing saves two system
    /// calls per acquire; lock files are never deleted, by upstream or by us).
    file: Option<File>,
    /// Whether `flock` is independent of record locks where the file lives.
    flock_apart: bool,
    /// Acquires of this process waiting for another process to let go.
    waiters: usize,
    /// The descriptor whose shared `flock` says so while there are waiters. Opened once and
    /// kept: closing any descriptor of the file would drop this process's record lock.
    waiting: Option<File>,
    /// Whether `waiting` holds its shared `flock`.
    shown: bool,
    /// Where the lock's fencing counter and waiter count live (locks of `FileLock` only).
    fence_path: Option<PathBuf>,
    fence: Option<Arc<Fence>>,
    /// Whether this process is counted among the fence's waiters.
    counted: bool,
}

impl Inner {
    /// The side file, opened at first use (None for a lock without one).
    fn fence(&mut self) -> io::Result<Option<&Arc<Fence>>> {
        if self.fence.is_none() {
            if let Some(path) = &self.fence_path {
                self.fence = Some(Arc::new(Fence::open(path, self.flock_apart)?));
            }
        }
        Ok(self.fence.as_ref())
    }
}

/// This process's runs of releases over waiters, per lock file (`handoff::Bursts`).
static BURSTS: Bursts<PathBuf> = Bursts::new();

type Registry = (u64, HashMap<PathBuf, Weak<Barrier>>);
static BARRIERS: Mutex<Option<Registry>> = Mutex::new(None);

/// The process-wide barrier of `path` (a fresh set after a fork: the child holds no locks).
pub fn barrier(path: &Path) -> Arc<Barrier> {
    let mut reg = BARRIERS.lock().unwrap_or_else(|p| p.into_inner());
    let generation = runtime::generation();
    let map = match &mut *reg {
        Some((g, map)) if *g == generation => map,
        slot => &mut slot.insert((generation, HashMap::new())).1,
    };
    if let Some(b) = map.get(path).and_then(Weak::upgrade) {
        return b;
    }
    map.retain(|_, w| w.strong_count() > 0);
    let b = Arc::new(Barrier { path: path.to_owned(), inner: Mutex::new(Inner::default()), changed: Notify::new() });
    map.insert(path.to_owned(), Arc::downgrade(&b));
    b
}

fn open_lock_file(path: &Path) -> io::Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    OpenOptions::new().read(true).append(true).create(true).mode(0o666).open(path)
}

fn record_lock(file: &File, kind: libc::c_int) -> io::Result<bool> {
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = 0;
    fl.l_len = 0;
    loop {
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) } == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EACCES) | Some(libc::EAGAIN) => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// Whether some other process holds a lock on the file (`F_GETLK`).
pub fn held_elsewhere(path: &Path) -> io::Result<bool> {
    let file = match OpenOptions::new().read(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

const LONGEST_PAUSE: Duration = Duration::from_millis(100);
/// The longest a waiter sleeping on the release futex goes without a look of its own.
const WOKEN_SAFETY_NET: Duration = Duration::from_millis(10);

enum Step {
    Got,
    /// Another holder in this process: wait for the barrier to change.
    InProcess,
    /// Another process holds the record lock: poll again later. With the fencing counter,
    /// and the side file's release sequence as it was before the attempt (to sleep on).
    OtherProcess(Option<u64>, Option<(Arc<Fence>, u32)>),
}

/// Filesystems where `flock` and record locks never interact (elsewhere, NFS, SMB, FUSE or
/// cluster filesystems, `flock` may be emulated by record locks and would block the lock).
fn flock_is_apart(file: &File) -> bool {
    // tmpfs, ext2/3/4, xfs, btrfs, overlayfs, zfs, f2fs, ramfs.
    const LOCAL: [i64; 8] = [0x0102_1994, 0xEF53, 0x5846_5342, 0x9123_683E, 0x794C_7630, 0x2FC1_2FC1, 0xF2F5_2010, 0x8584_58F6];
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    LOCAL.contains(&(st.f_type as i64))
}

/// `flock(op | LOCK_NB)`: whether it took.
fn try_flock(file: &File, op: libc::c_int) -> bool {
    loop {
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
            return true;
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return false;
        }
    }
}

/// The fencing counter kept as the file's contents (see [`Barrier::next_token`]).
fn read_counter(file: &File) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 24];
    let n = file.read_at(&mut buf, 0).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
}

/// Takes one waiter off the barrier's count when an acquire stops waiting, however it ends.
struct Waiting<'a>(&'a Barrier);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut inner = self.0.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.waiters -= 1;
        if inner.waiters > 0 {
            return;
        }
        if inner.shown {
            inner.shown = false;
            if let Some(file) = &inner.waiting {
                unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
            }
        }
        if inner.counted {
            inner.counted = false;
            if let Some(fence) = &inner.fence {
                fence.remove_waiter();
            }
        }
    }
}

impl Barrier {
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn try_enter(&self, shared: bool) -> Result<Step> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.holders > 0 {
            if shared && inner.shared {
                inner.holders += 1;
                return Ok(Step::Got);
            }
            return Ok(Step::InProcess);
        }
        if inner.file.is_none() {
            let file = open_lock_file(&self.path)
                .map_err(|e| Error::io(&format!("cannot open lock file {}", self.path.display()), e))?;
            inner.flock_apart = flock_is_apart(&file);
            inner.file = Some(file);
        }
        // Read before the attempt, so a release between a failed attempt and the sleep
        // still wakes it.
        let seen = inner.fence().ok().flatten().and_then(|f| f.releases());
        let file = inner.file.as_ref().expect("opened above");
        if record_lock(file, libc::F_WRLCK).map_err(|e| Error::io(&format!("cannot lock {}", self.path.display()), e))? {
            inner.holders = 1;
            inner.shared = shared;
            Ok(Step::Got)
        } else {
            let fence = inner.fence.as_ref();
            Ok(Step::OtherProcess(fence.and_then(|f| f.counter()), fence.cloned().zip(seen)))
        }
    }

    /// Counts an acquire as waiting, until the guard is dropped.
    fn start_waiting(&self) -> Waiting<'_> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.waiters += 1;
        if !inner.counted {
            if let Ok(Some(fence)) = inner.fence() {
                fence.add_waiter();
                inner.counted = true;
            }
        }
        Waiting(self)
    }

    /// Makes sure this process's waiting shows (the shared `flock` may have been refused
    /// while a releaser was looking; then the next poll tries again).
    fn show_waiting(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.shown || inner.waiters == 0 || !inner.flock_apart {
            return;
        }
        if inner.waiting.is_none() {
            inner.waiting = open_lock_file(&self.path).ok();
        }
        inner.shown = inner.waiting.as_ref().is_some_and(|file| try_flock(file, libc::LOCK_SH));
    }

    /// Takes the lock; false when `wait` ran out first.
    pub async fn acquire(&self, shared: bool, wait: Wait, deadline: Option<Instant>) -> Result<bool> {
        let mut pace = Pace::new(LONGEST_PAUSE);
        let mut waiting = None;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let step = self.try_enter(shared)?;
            let mut sleep_on = None;
            let sleep_for = match step {
                Step::Got => return Ok(true),
                _ if wait == Wait::No => return Ok(false),
                Step::InProcess => None,
                Step::OtherProcess(counter, on) => {
                    waiting.get_or_insert_with(|| self.start_waiting());
                    self.show_waiting();
                    let pause = pace.after_busy(counter);
                    // A sleeper on the side file's futex is woken by every release of a
                    // process on ours: the timeout is only a safety net (a holder on upstream
                    // tooz, or one that died, wakes no one; the pace has backed off by then
                    // anyway, the counter staying put).
                    let pause = if on.is_some() { pause.max(WOKEN_SAFETY_NET) } else { pause };
                    sleep_on = on;
                    Some(pause)
                }
            };
            let until = match (sleep_for, deadline) {
                (Some(p), Some(d)) => Some((Instant::now() + p).min(d)),
                (Some(p), None) => Some(Instant::now() + p),
                (None, d) => d,
            };
            if let Some(d) = deadline {
                if Instant::now() >= d {
                    return Ok(false);
                }
            }
            match until {
                Some(t) => {
                    let pause = t.saturating_duration_since(Instant::now());
                    if let Some((fence, seen)) = sleep_on.as_ref().filter(|_| runtime::on_caller_thread()) {
                        // On the caller's own thread: sleep right here, and the kernel wakes
                        // this thread at the release (any process's, this one's included, bumps
                        // the sequence), with no hop through a thread of the runtime.
                        fence.sleep(*seen, pause);
                        // Back to the caller's `block_on` for a moment: its time limit (the
                        // slice after which Python looks for signals) can only end the wait
                        // at a point where this future is pending.
                        tokio::task::yield_now().await;
                        continue;
                    }
                    let nap = async move {
                        match sleep_on {
                            // Woken by the next release of any process of this host.
                            Some((fence, seen)) => {
                                let _ = tokio::task::spawn_blocking(move || fence.sleep(seen, pause)).await;
                            }
                            None => handoff::nap(pause).await,
                        }
                    };
                    tokio::select! {
                        _ = nap => {}
                        _ = &mut notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// The fencing counter, where reading it costs no system call (a mapped side file).
    fn counter(&self) -> Option<u64> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.fence.as_ref().and_then(|f| f.mapped_counter())
    }

    /// Whether some lock object of this process holds the lock.
    pub fn held_in_process(&self) -> bool {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).holders > 0
    }

    /// Replaces the lock file's contents, through the descriptor that holds the lock (closing
    /// any other descriptor of the file would drop the process's record lock).
    pub fn write_contents(&self, data: &[u8]) -> Result<()> {
        use std::io::Write;
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let file = match (&inner.file, inner.holders) {
            (Some(f), n) if n > 0 => f,
            _ => return Err(Error::Tooz(format!("{} is not held", self.path.display()))),
        };
        file.set_len(0)
            .and_then(|_| (&*file).write_all(data))
            .map_err(|e| Error::io(&format!("cannot write {}", self.path.display()), e))
    }

    /// The next fencing token, from the lock's side file (see `fence.rs`); only the
    /// exclusive holder may ask.
    pub fn next_token(&self) -> Result<u64> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.file.is_none() || inner.holders == 0 || inner.shared {
            return Err(Error::Tooz(format!("{} is not held exclusively", self.path.display())));
        }
        let io = |e| Error::io(&format!("cannot keep the fencing counter of {}", self.path.display()), e);
        inner.fence().map_err(io)?;
        let (Some(fence), Some(file)) = (&inner.fence, &inner.file) else {
            return Err(Error::Tooz(format!("{} has no fencing counter", self.path.display())));
        };
        fence.bump(|| read_counter(file)).map_err(io)
    }

    /// Gives one hold back; the record lock goes when the last holder leaves. Whether
    /// others (in this process or another) were waiting for it then, and if so the fencing
    /// counter at that moment (the marker a courteous releaser watches, see `lock/handoff.rs`).
    pub fn release(&self) -> Released {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.holders = inner.holders.saturating_sub(1);
        let mut others_waiting = false;
        if inner.holders == 0 {
            inner.shared = false;
            if let Some(file) = &inner.file {
                if record_lock(file, libc::F_UNLCK).is_err() {
                    // Closing the descriptor drops the record lock whatever happened.
                    inner.file = None;
                } else if inner.fence.as_deref().map_or(true, Fence::may_have_waiters) {
                    if inner.flock_apart {
                        // Someone's shared flock refuses this exclusive one: a waiter.
                        others_waiting = !try_flock(file, libc::LOCK_EX);
                        if !others_waiting {
                            unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
                        }
                    }
                    if let Some(fence) = &inner.fence {
                        fence.wake();
                    }
                }
            }
        }
        let marker = if others_waiting { inner.fence.as_ref().and_then(|f| f.mapped_counter()) } else { None };
        drop(inner);
        self.changed.notify_waiters();
        Released { others_waiting, marker }
    }
}

/// What [`Barrier::release`] saw.
pub struct Released {
    pub others_waiting: bool,
    pub marker: Option<u64>,
}

/// A lock object: counts the holds *it* has on the barrier (shared holds stack).
pub struct PathLock {
    barrier: Arc<Barrier>,
    held: Mutex<usize>,
    courtesy: Courtesy,
}

impl PathLock {
    pub fn new(path: &Path) -> PathLock {
        PathLock { barrier: barrier(path), held: Mutex::new(0), courtesy: Courtesy::default() }
    }

    /// A lock with fencing tokens, kept in the side file at `fence` (`fence.rs`).
    pub fn fenced(path: &Path, fence: &Path) -> PathLock {
        let lock = PathLock::new(path);
        lock.barrier.inner.lock().unwrap_or_else(|p| p.into_inner()).fence_path.get_or_insert_with(|| fence.to_owned());
        lock
    }

    pub fn path(&self) -> &Path {
        self.barrier.path()
    }

    pub fn barrier(&self) -> &Barrier {
        &self.barrier
    }

    pub fn is_held(&self) -> bool {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) > 0
    }

    pub async fn acquire(&self, shared: bool, wait: Wait) -> Result<bool> {
        let deadline = wait.deadline();
        // Away until another process has taken the lock (its counter moved), or the grace ends.
        self.courtesy.step_aside_while(wait, deadline, || self.barrier.counter()).await;
        let got = self.barrier.acquire(shared, wait, deadline).await?;
        if got {
            *self.held.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        }
        Ok(got)
    }

    /// Whether a waiting acquire of this object would first step aside (`lock/handoff.rs`).
    pub fn stepping_aside(&self) -> bool {
        self.courtesy.pending()
    }

    /// One attempt that does not wait, outside the runtime (see `DriverLock::try_acquire_here`).
    pub fn try_acquire_here(&self, shared: bool) -> Result<bool> {
        self.courtesy.forgo();
        let got = matches!(self.barrier.try_enter(shared)?, Step::Got);
        if got {
            *self.held.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        }
        Ok(got)
    }

    pub fn release(&self) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if *held == 0 {
            return false;
        }
        *held -= 1;
        let seen = self.barrier.release();
        let step_aside = BURSTS.over(&self.barrier.path, seen.others_waiting);
        self.courtesy.released_at(step_aside, seen.marker);
        true
    }

    /// Runs `f` while holding the lock exclusively.
    pub async fn with<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.barrier.acquire(false, Wait::Forever, None).await?;
        let out = f();
        self.barrier.release();
        out
    }
}

impl Drop for PathLock {
    fn drop(&mut self) {
        while self.release() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_of_one_process_exclude_each_other() {
        let dir = std::env::temp_dir().join(format!("tooz-fslock-{}", std::process::id()));
        let path = dir.join("l");
        let a = PathLock::new(&path);
        let b = PathLock::new(&path);
        runtime::block_on(async {
            assert!(a.acquire(false, Wait::No).await.unwrap());
            assert!(!b.acquire(false, Wait::No).await.unwrap());
            assert!(!b.acquire(false, Wait::For(Duration::from_millis(30))).await.unwrap());
            assert!(!a.acquire(false, Wait::No).await.unwrap(), "not re-entrant");
            assert!(a.release());
            assert!(!a.release());
            assert!(b.acquire(false, Wait::No).await.unwrap());
            assert!(b.release());
            // Shared holders stack; an exclusive one waits for all of them.
            assert!(a.acquire(true, Wait::No).await.unwrap());
            assert!(b.acquire(true, Wait::No).await.unwrap());
            let c = PathLock::new(&path);
            assert!(!c.acquire(false, Wait::No).await.unwrap());
            a.release();
            assert!(!c.acquire(false, Wait::No).await.unwrap());
            b.release();
            assert!(c.acquire(false, Wait::No).await.unwrap());
        });
        std::fs::remove_dir_all(dir).ok();
    }

    /// An open-file-description lock of another descriptor conflicts with this process's
    /// record locks as another process's would.
    fn ofd_lock(file: &File, kind: libc::c_int) {
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = kind as _;
        fl.l_whence = libc::SEEK_SET as _;
        assert_eq!(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) }, 0);
    }

    #[test]
    fn a_waiter_shows_while_it_waits_and_the_releaser_sees_it() {
        let dir = std::env::temp_dir().join(format!("tooz-fslock-fair-{}", std::process::id()));
        let path = dir.join("l");
        let lock = Arc::new(PathLock::new(&path));
        runtime::block_on(async {
            assert!(lock.barrier().acquire(false, Wait::No, None).await.unwrap());
            assert!(!lock.barrier().release().others_waiting, "no one waits");
            if !lock.barrier().inner.lock().unwrap().flock_apart {
                return; // a filesystem where waiters do not register
            }
            let elsewhere = open_lock_file(&path).unwrap();
            ofd_lock(&elsewhere, libc::F_WRLCK);
            let waiter = {
                let lock = lock.clone();
                tokio::spawn(async move { lock.acquire(false, Wait::For(Duration::from_secs(10))).await })
            };
            let probe = open_lock_file(&path).unwrap();
            let mut shown = false;
            for _ in 0..200 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if !try_flock(&probe, libc::LOCK_EX) {
                    shown = true;
                    break;
                }
                unsafe { libc::flock(probe.as_raw_fd(), libc::LOCK_UN) };
            }
            assert!(shown, "the waiter's shared flock refuses an exclusive one");
            ofd_lock(&elsewhere, libc::F_UNLCK);
            assert!(waiter.await.unwrap().unwrap(), "the waiter gets the lock once it is free");
            assert!(try_flock(&probe, libc::LOCK_EX), "and no longer shows as waiting");
            unsafe { libc::flock(probe.as_raw_fd(), libc::LOCK_UN) };
            // It holds the record lock: the other description cannot take it.
            let mut fl: libc::flock = unsafe { std::mem::zeroed() };
            fl.l_type = libc::F_WRLCK as _;
            assert_ne!(unsafe { libc::fcntl(elsewhere.as_raw_fd(), libc::F_OFD_SETLK, &fl) }, 0);
            assert!(lock.release());
        });
        std::fs::remove_dir_all(dir).ok();
    }
}
