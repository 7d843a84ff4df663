//! The fencing counter of a file lock, and the count of processes waiting for it, kept in a
//! small side file (`<dir>/.fences/<sha1(name)>`; upstream never looks there).
//!
//! Layout: bytes 0..8 hold the counter (u64, little-endian), bytes 8..16 the number of
//! processes showing that they wait, bytes 16..20 a release sequence that waiters sleep on
//! with a futex and a releaser bumps and wakes (both native-endian, local filesystems only:
//! a futex on a shared file mapping works between the processes of one host).
//!
//! On a local filesystem the file is mapped shared into memory, so bumping the counter under
//! the lock, reading it while polling, and counting waiters cost no system call: the page
//! cache is the one copy every process of the host sees. Elsewhere (NFS and the like, where
//! mappings of different hosts are not kept coherent) the counter is read and written with
//! `pread`/`pwrite` under the lock, whose acquisition makes the client revalidate its cache.
//!
//! The file is created at [`SIZE`] bytes and never shrunk by us, so the mapped page always
//! lies inside it. The counter starts from the decimal counter earlier versions of ours kept
//! as the lock file's contents, so tokens keep increasing across an upgrade.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

const SIZE: u64 = 64;

pub struct Fence {
    file: File,
    /// The shared mapping of the file's first page, when the filesystem is local.
    map: Option<NonNull<AtomicU64>>,
}

// SAFETY: the mapping is only reached through atomics; the pointer is valid until drop.
unsafe impl Send for Fence {}
unsafe impl Sync for Fence {}

impl Fence {
    /// Opens (creating if needed) the side file at `path`; `local`: map it.
    pub fn open(path: &Path, local: bool) -> io::Result<Fence> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().read(true).write(true).create(true).mode(0o666).open(path)?;
        if file.metadata()?.len() < SIZE {
            // Growing only: two processes doing this at once agree, and no one shrinks it.
            file.set_len(SIZE)?;
        }
        let map = if local { Self::map(&file)? } else { None };
        Ok(Fence { file, map })
    }

    fn map(file: &File) -> io::Result<Option<NonNull<AtomicU64>>> {
        let len = SIZE as usize;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: a fresh shared mapping of a file at least `len` bytes long.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, file.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(NonNull::new(p.cast::<AtomicU64>()))
    }

    fn word(&self, i: usize) -> Option<&AtomicU64> {
        // SAFETY: the mapping is page-aligned, `SIZE` long and lives as long as `self`.
        self.map.map(|p| unsafe { &*p.as_ptr().add(i) })
    }

    /// The counter as it stands (what a waiter compares between polls).
    pub fn counter(&self) -> Option<u64> {
        self.mapped_counter().or_else(|| {
            let mut buf = [0u8; 8];
            self.file.read_exact_at(&mut buf, 0).ok()?;
            Some(u64::from_le_bytes(buf))
        })
    }

    /// The counter where reading it costs no system call (a mapped file); None elsewhere.
    pub fn mapped_counter(&self) -> Option<u64> {
        self.word(0).map(|w| u64::from_le(w.load(Ordering::Acquire)))
    }

    /// The next token; only the exclusive holder of the lock calls this. `earlier`: the
    /// counter an earlier version kept elsewhere, read only while this one is still 0.
    pub fn bump(&self, earlier: impl FnOnce() -> Option<u64>) -> io::Result<u64> {
        let last = match self.counter() {
            Some(0) | None => earlier().unwrap_or(0),
            Some(n) => n,
        };
        let next = last + 1;
        match self.word(0) {
            Some(w) => w.store(next.to_le(), Ordering::Release),
            None => self.file.write_all_at(&next.to_le_bytes(), 0)?,
        }
        Ok(next)
    }

    /// Counts this process among the waiters (mapped files only; elsewhere a no-op).
    pub fn add_waiter(&self) {
        if let Some(w) = self.word(1) {
            w.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn remove_waiter(&self) {
        if let Some(w) = self.word(1) {
            // Never below zero, even if a crashed process's count was repaired by hand.
            let _ = w.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }

    /// Whether some process may be waiting: false only when the mapped count says none.
    /// (A process that died while waiting leaves the count up; then the caller asks the
    /// kernel, whose `flock` registry forgets the dead.)
    pub fn may_have_waiters(&self) -> bool {
        self.word(1).map_or(true, |w| w.load(Ordering::Acquire) != 0)
    }
}

impl Fence {
    fn release_word(&self) -> Option<&AtomicU32> {
        // SAFETY: bytes 16..20 of the mapping, 4-aligned.
        self.map.map(|p| unsafe { &*p.as_ptr().cast::<AtomicU32>().add(4) })
    }

    /// The release sequence (mapped files only): read it before an attempt, and sleep on
    /// it with [`Fence::sleep`] after the attempt failed.
    pub fn releases(&self) -> Option<u32> {
        self.release_word().map(|w| w.load(Ordering::Acquire))
    }

    /// Tells the longest sleeping waiter the lock was let go (after the unlock). One, not
    /// all: the kernel queues a futex's sleepers in order, so the lock goes round the waiting
    /// processes in turn, and the others sleep on instead of waking to lose the race (on two
    /// CPUs that herd slowed every hand-over). A sleeper that was woken and then gave up
    /// leaves the others to their safety-net timeout.
    pub fn wake(&self) {
        if let Some(w) = self.release_word() {
            w.fetch_add(1, Ordering::AcqRel);
            // SAFETY: FUTEX_WAKE on a word of our mapping; shared (not private): the
            // sleepers are other processes.
            unsafe { libc::syscall(libc::SYS_futex, w.as_ptr(), libc::FUTEX_WAKE, 1, 0, 0, 0) };
        }
    }

    /// Sleeps until the release sequence moves from `seen`, or for `at_most` (blocking the
    /// thread; returns at once if it already moved).
    pub fn sleep(&self, seen: u32, at_most: Duration) {
        let Some(w) = self.release_word() else { return std::thread::sleep(at_most) };
        let ts = libc::timespec { tv_sec: at_most.as_secs() as _, tv_nsec: at_most.subsec_nanos() as _ };
        // SAFETY: FUTEX_WAIT with a relative timeout on a word of our mapping.
        unsafe { libc::syscall(libc::SYS_futex, w.as_ptr(), libc::FUTEX_WAIT, seen, &ts as *const libc::timespec, 0, 0) };
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        if let Some(p) = self.map {
            // SAFETY: the mapping made in `map`, unmapped once.
            unsafe { libc::munmap(p.as_ptr().cast(), SIZE as usize) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_and_plain_views_share_one_counter() {
        let dir = std::env::temp_dir().join(format!("tooz-fence-{}", std::process::id()));
        let path = dir.join(".fences").join("x");
        let mapped = Fence::open(&path, true).unwrap();
        let plain = Fence::open(&path, false).unwrap();
        assert_eq!(mapped.counter(), Some(0));
        assert_eq!(mapped.bump(|| Some(41)).unwrap(), 42, "starts after an earlier version's counter");
        assert_eq!(plain.counter(), Some(42));
        assert_eq!(plain.bump(|| panic!("only read while 0")).unwrap(), 43);
        assert_eq!(mapped.counter(), Some(43));
        assert!(!mapped.may_have_waiters());
        assert!(plain.may_have_waiters(), "unmapped: ask the kernel");
        mapped.add_waiter();
        assert!(mapped.may_have_waiters());
        mapped.remove_waiter();
        mapped.remove_waiter();
        assert!(!mapped.may_have_waiters());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SIZE);
        // A sleeper is woken by a release (here from another thread, through another mapping).
        let seen = mapped.releases().unwrap();
        let began = std::time::Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                Fence::open(&path, true).unwrap().wake();
            });
            mapped.sleep(seen, Duration::from_secs(10));
        });
        assert!(began.elapsed() < Duration::from_secs(5));
        assert_ne!(mapped.releases(), Some(seen));
        let began = std::time::Instant::now();
        mapped.sleep(seen, Duration::from_secs(10));
        assert!(began.elapsed() < Duration::from_secs(5), "a sequence that moved returns at once");
        std::fs::remove_dir_all(dir).ok();
    }
}
