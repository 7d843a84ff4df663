//! Idle connections kept for the next request, shared by the clients that pool them (redis's
//! blocking connections, memcached's, the SQL backends' sessions); and [`Shelf`], the
//! connections a stopped client leaves for the next client of the same server.
//!
//! A pool belongs to one process image. After `os.fork()` the child finds its parent's
//! connections in it: they are still the parent's (it goes on using them), so the child never
//! uses them and never closes them either (a TLS close would end the parent's session, and a
//! SQL client's goodbye would end the parent's locks); it forgets them and starts empty.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

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

/// Connections that stopped clients left, by server, for the next client of that server in
/// this process image: a coordinator made and started again (short-lived programs, tests, a
/// CLI) is spared a connect, and the server a connection torn down, left in TIME_WAIT, at
/// each turn. At most [`SHELF_PER_KEY`] per server, each for at most [`SHELF_LIFE`].
pub struct Shelf<K, T>(Mutex<Option<PerImage<HashMap<K, Vec<(T, Instant)>>>>>);

pub const SHELF_PER_KEY: usize = 2;
pub const SHELF_LIFE: Duration = Duration::from_secs(30);

impl<K: Hash + Eq, T> Shelf<K, T> {
    pub const fn new() -> Self {
        Shelf(Mutex::new(None))
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<K, Vec<(T, Instant)>>) -> R) -> R {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(guard.get_or_insert_with(PerImage::new).get())
    }

    /// Leaves `conn` for the next client of `key` (dropped if the shelf is full for it).
    pub fn put(&self, key: K, conn: T) {
        let unwanted = self.with(|shelf| {
            let kept = shelf.entry(key).or_default();
            kept.retain(|(_, at)| at.elapsed() < SHELF_LIFE);
            if kept.len() < SHELF_PER_KEY {
                kept.push((conn, Instant::now()));
                None
            } else {
                Some(conn)
            }
        });
        drop(unwanted);
    }

    /// The newest connection left for `key` that is `usable`; older or unusable ones met on
    /// the way are dropped.
    pub fn take(&self, key: &K, mut usable: impl FnMut(&mut T) -> bool) -> Option<T> {
        let mut dropped = Vec::new();
        let found = self.with(|shelf| {
            let kept = shelf.get_mut(key)?;
            while let Some((mut conn, at)) = kept.pop() {
                if at.elapsed() < SHELF_LIFE && usable(&mut conn) {
                    return Some(conn);
                }
                dropped.push(conn);
            }
            None
        });
        drop(dropped);
        found
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

    #[test]
    fn a_shelf_keeps_a_few_usable_connections_per_server() {
        let shelf: Shelf<&str, u32> = Shelf::new();
        shelf.put("a", 1);
        shelf.put("a", 2);
        shelf.put("a", 3);
        shelf.put("b", 9);
        assert_eq!(shelf.take(&"a", |c| *c != 2), Some(1), "3 was one too many; 2 unusable: dropped");
        assert_eq!(shelf.take(&"a", |_| true), None);
        assert_eq!(shelf.take(&"b", |_| true), Some(9));
        assert_eq!(shelf.take(&"c", |_| true), None);
    }
}
