//! Idle connections kept for the next request, shared by the clients that pool them (redis's
//! blocking connections, memcached's, the SQL backends' sessions).
//!
//! A pool belongs to one process image. After `os.fork()` the child finds its parent's
//! connections in it: they are still the parent's (it goes on using them), so the child never
//! uses them and never closes them either (a TLS close would end the parent's session, and a
//! SQL client's goodbye would end the parent's locks); it forgets them and starts empty.

use std::sync::{Mutex, MutexGuard};

use crate::runtime::PerImage;

pub struct Idle<T> {
    /// This process image's connections (a child forgets, never closes, its parent's).
    slot: Mutex<PerImage<Vec<T>>>,
}

impl<T> Default for Idle<T> {
    fn default() -> Self {
        Idle { slot: Mutex::new(PerImage::new()) }
    }
}

impl<T> Idle<T> {
    /// This process's connections (an inherited lot is forgotten first).
    fn mine(&self) -> MutexGuard<'_, PerImage<Vec<T>>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection.
    pub fn take(&self) -> Option<T> {
        self.mine().get().pop()
    }

    /// The most recently used idle connection that is `usable`; unusable ones met on the way
    /// are dropped.
    pub fn take_where(&self, mut usable: impl FnMut(&T) -> bool) -> Option<T> {
        let mut guard = self.mine();
        let mine = guard.get();
        while let Some(conn) = mine.pop() {
            if usable(&conn) {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for later unless `max` are idle already: then it is handed back.
    pub fn put(&self, conn: T, max: usize) -> Option<T> {
        let mut guard = self.mine();
        let mine = guard.get();
        if mine.len() >= max {
            return Some(conn);
        }
        mine.push(conn);
        None
    }

    /// Takes every idle connection out (to close them).
    pub fn drain(&self) -> Vec<T> {
        std::mem::take(self.mine().get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_max_and_skips_unusable_ones() {
        let pool = Idle::default();
        assert_eq!(pool.put(1, 2), None);
        assert_eq!(pool.put(2, 2), None);
        assert_eq!(pool.put(3, 2), Some(3), "full: handed back");
        assert_eq!(pool.take(), Some(2), "most recent first");
        pool.put(4, 2);
        assert_eq!(pool.take_where(|c| *c != 4), Some(1), "4 unusable: dropped on the way");
        assert_eq!(pool.take(), None);
        pool.put(5, 2);
        assert_eq!(pool.drain(), vec![5]);
        assert_eq!(pool.take(), None);
    }
}
