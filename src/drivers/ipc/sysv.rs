//! System V semaphores and shared memory, keyed the way the `sysv_ipc` Python module (which
//! upstream tooz's ipc driver uses) derives keys, so both address the same kernel objects.

use std::io;
use std::time::Duration;

use md5::{Digest, Md5};

/// `tooz.drivers.ipc.ftok`: md5(project + name) as an integer, folded into sysv_ipc's key
/// range [LONG_MIN, LONG_MAX] and then truncated to the kernel's 32-bit `key_t`.
pub fn ftok(name: &[u8], project: &[u8]) -> libc::key_t {
    let mut h = Md5::new();
    h.update(project);
    h.update(name);
    let digest = u128::from_be_bytes(h.finalize().into());
    let range = u64::MAX as u128; // |LONG_MIN| + LONG_MAX
    let folded = (digest % range) as u64;
    let key = (folded as i64).wrapping_add(i64::MIN);
    key as i32 as libc::key_t
}

extern "C" {
    // glibc has it; the libc crate does not declare it.
    fn semtimedop(semid: libc::c_int, sops: *mut libc::sembuf, nsops: libc::size_t, timeout: *const libc::timespec) -> libc::c_int;
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Creates the semaphore (value 1) unless it exists; `Ok(None)` when it already exists.
pub fn sem_create(key: libc::key_t) -> io::Result<Option<i32>> {
    let id = unsafe { libc::semget(key, 1, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
    if id < 0 {
        let e = last_error();
        return if errno(&e) == libc::EEXIST { Ok(None) } else { Err(e) };
    }
    if unsafe { libc::semctl(id, 0, libc::SETVAL, 1 as libc::c_int) } < 0 {
        return Err(last_error());
    }
    Ok(Some(id))
}

/// Opens an existing semaphore; `Ok(None)` when there is none.
pub fn sem_open(key: libc::key_t) -> io::Result<Option<i32>> {
    let id = unsafe { libc::semget(key, 0, 0) };
    if id < 0 {
        let e = last_error();
        return if errno(&e) == libc::ENOENT { Ok(None) } else { Err(e) };
    }
    Ok(Some(id))
}

pub enum SemWait {
    Got,
    Busy,
    /// The semaphore was removed while we waited.
    Removed,
}

/// One operation adding `delta` to the semaphore, with SEM_UNDO (the kernel undoes it if
/// the process dies), waiting at most `wait` (zero: not at all) where it would block.
fn sem_op(id: i32, delta: libc::c_short, wait: Duration) -> io::Result<SemWait> {
    let nowait = wait.is_zero();
    let mut op = libc::sembuf {
        sem_num: 0,
        sem_op: delta,
        sem_flg: (libc::SEM_UNDO | if nowait { libc::IPC_NOWAIT } else { 0 }) as libc::c_short,
    };
    let started = std::time::Instant::now();
    loop {
        let rc = if nowait {
            unsafe { libc::semop(id, &mut op, 1) }
        } else {
            let left = wait.saturating_sub(started.elapsed());
            let ts = libc::timespec { tv_sec: left.as_secs() as _, tv_nsec: left.subsec_nanos() as _ };
            unsafe { semtimedop(id, &mut op, 1, &ts) }
        };
        if rc == 0 {
            return Ok(SemWait::Got);
        }
        let e = last_error();
        match errno(&e) {
            libc::EINTR => continue,
            libc::EAGAIN => return Ok(SemWait::Busy),
            libc::EIDRM | libc::EINVAL => return Ok(SemWait::Removed),
            _ => return Err(e),
        }
    }
}

/// P operation, waiting at most `wait` (zero: one try).
pub fn sem_acquire(id: i32, wait: Duration) -> io::Result<SemWait> {
    sem_op(id, -1, wait)
}

/// (value, pid of the last operation) of a semaphore; `None` when it is gone.
pub fn sem_state(id: i32) -> io::Result<Option<(i32, i32)>> {
    let value = unsafe { libc::semctl(id, 0, libc::GETVAL) };
    let pid = if value < 0 { -1 } else { unsafe { libc::semctl(id, 0, libc::GETPID) } };
    if value < 0 || pid < 0 {
        let e = last_error();
        return if matches!(errno(&e), libc::EIDRM | libc::EINVAL) { Ok(None) } else { Err(e) };
    }
    Ok(Some((value, pid)))
}

/// How many processes wait in a P operation on the semaphore (`GETNCNT`).
pub fn sem_waiting(id: i32) -> io::Result<i32> {
    let n = unsafe { libc::semctl(id, 0, libc::GETNCNT) };
    if n < 0 {
        return Err(last_error());
    }
    Ok(n)
}

/// V operation (its SEM_UNDO cancels the adjustment of our P): with processes waiting, the
/// kernel completes the first P in its queue at once, so that process holds the semaphore
/// before it even runs. False when the semaphore is gone. A V never blocks.
pub fn sem_post(id: i32) -> io::Result<bool> {
    Ok(!matches!(sem_op(id, 1, Duration::ZERO)?, SemWait::Removed))
}

/// Removes the semaphore; false when it was already gone.
pub fn sem_remove(id: i32) -> io::Result<bool> {
    if unsafe { libc::semctl(id, 0, libc::IPC_RMID) } < 0 {
        let e = last_error();
        return if matches!(errno(&e), libc::EIDRM | libc::EINVAL) { Ok(false) } else { Err(e) };
    }
    Ok(true)
}

/// A shared-memory segment, attached for the lifetime of this value.
pub struct Shm {
    id: i32,
    addr: *mut u8,
    size: usize,
}

// SAFETY: the mapping is process-wide; all access goes through `&self` copies of bytes. The
// memory is shared with other processes anyway, so callers already serialise writers (the
// ipc driver does so under a SysV semaphore); sharing it between threads adds nothing.
unsafe impl Send for Shm {}
unsafe impl Sync for Shm {}

/// The id of the segment with `key`, created (zero-filled) when missing.
pub fn shm_id(key: libc::key_t, size: usize) -> io::Result<i32> {
    let id = unsafe { libc::shmget(key, size, libc::IPC_CREAT | 0o600) };
    if id < 0 {
        return Err(last_error());
    }
    Ok(id)
}

impl Shm {
    pub fn attach(id: i32, size: usize) -> io::Result<Shm> {
        let addr = unsafe { libc::shmat(id, std::ptr::null(), 0) };
        if addr as isize == -1 {
            return Err(last_error());
        }
        Ok(Shm { id, addr: addr as *mut u8, size })
    }

    pub fn id(&self) -> i32 {
        self.id
    }

    /// How many processes have the segment attached.
    pub fn attachments(&self) -> io::Result<u64> {
        let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
        if unsafe { libc::shmctl(self.id, libc::IPC_STAT, &mut ds) } < 0 {
            return Err(last_error());
        }
        Ok(ds.shm_nattch as u64)
    }

    /// Marks the segment for removal (it goes when the last process detaches).
    pub fn remove(&self) -> io::Result<()> {
        if unsafe { libc::shmctl(self.id, libc::IPC_RMID, std::ptr::null_mut()) } < 0 {
            return Err(last_error());
        }
        Ok(())
    }

    pub fn read(&self, offset: usize, len: usize) -> Vec<u8> {
        let end = (offset + len).min(self.size);
        let start = offset.min(end);
        let mut out = vec![0u8; end - start];
        // SAFETY: the segment is at least `size` bytes and stays attached while `self` lives.
        unsafe { std::ptr::copy_nonoverlapping(self.addr.add(start), out.as_mut_ptr(), end - start) };
        out
    }

    pub fn write(&self, offset: usize, data: &[u8]) {
        let end = (offset + data.len()).min(self.size);
        let n = end.saturating_sub(offset);
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.addr.add(offset), n) };
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        unsafe { libc::shmdt(self.addr as *const libc::c_void) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_sysv_ipc() {
        // Values read off upstream tooz 9.1.0 with sysv_ipc 1.2.0 on x86-64.
        assert_eq!(ftok(b"mylock", b"__TOOZ_LOCK_"), -1721798819);
        assert_eq!(ftok(b"GROUP_LIST", b"_TOOZ_INTERNAL"), 5139689563633823633i64 as i32);
    }
}
