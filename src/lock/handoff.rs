//! Fair hand-over of a contended lock between processes, shared by the file and ipc locks and the
//! locks that are keys on a server.
//!
//! Without it, a process that releases a lock takes it straight back: its next attempt comes
//! microseconds later, while the waiters of other processes sleep between polls, so one
//! process starves the others. These pieces stop that:
//!
//! * [`Courtesy`]: a coordinator whose release of a lock found other waiters (the backend
//!   tells: a registry of waiters kept beside the lock; file: once a burst is over, see below)
//!   steps aside for [`GRACE`] before its next attempt on that lock, so a waiter takes it
//!   first; [`Courtesies`] keeps the promise by lock name, so it outlives the lock object;
//! * [`Pace`]: a waiter polls every [`FAST_POLL`] while the lock changes hands (a marker the
//!   backend returns with a failed attempt, its fencing counter, moved since the last poll),
//!   and backs off towards a slow poll while one holder keeps the lock;
//! * [`Bursts`]: when a releaser steps aside (file) or hands the lock over (ipc): not at
//!   every release over waiters, but once its process has won the lock back over them for
//!   [`BURST`].

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::driver::Wait;

/// The poll interval of a waiter while the lock changes hands.
pub const FAST_POLL: Duration = Duration::from_micros(200);
/// How long a releaser that others were waiting for stays away: several fast polls, so a
/// waiter on a loaded machine still gets its turn.
pub const GRACE: Duration = Duration::from_millis(2);

/// One lock object's promise to step aside after a release that others were waiting for.
pub struct Courtesy {
    /// Until when, and the backend's marker (fencing counter) at the release, if it has one
    /// that is free to read.
    until: Mutex<Option<(Instant, Option<u64>)>>,
    /// How long it steps aside.
    grace: Duration,
}

impl Default for Courtesy {
    fn default() -> Self {
        Courtesy::with_grace(GRACE)
    }
}

impl Courtesy {
    /// Steps aside for `grace` instead of [`GRACE`]: for a backend whose hand-over to a
    /// waiter takes longer (a push to the waiter, then its round trip).
    pub fn with_grace(grace: Duration) -> Courtesy {
        Courtesy { until: Mutex::new(None), grace }
    }

    /// Records a release; `others_waiting` is what the backend saw at the release.
    pub fn released(&self, others_waiting: bool) {
        self.released_at(others_waiting, None);
    }

    /// [`Courtesy::released`], with the marker the lock had then: the step aside ends early
    /// once it moves (another holder took the lock).
    pub fn released_at(&self, others_waiting: bool, marker: Option<u64>) {
        *self.until.lock().unwrap_or_else(|p| p.into_inner()) = others_waiting.then(|| (Instant::now() + self.grace, marker));
    }

    /// Whether the next waiting attempt would step aside first.
    pub fn pending(&self) -> bool {
        self.until.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|(until, _)| until > Instant::now())
    }

    /// Drops the promise unkept: what a one-shot attempt does (see `step_aside`).
    pub fn forgo(&self) {
        self.until.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Waits out the grace before an attempt (never past `deadline`; a one-shot attempt
    /// does not wait).
    pub async fn step_aside(&self, wait: Wait, deadline: Option<Instant>) {
        self.step_aside_while(wait, deadline, || None).await
    }

    /// [`Courtesy::step_aside`], ending early once `marker()` differs from the marker given
    /// to [`Courtesy::released_at`] (checked every [`FAST_POLL`]).
    pub async fn step_aside_while(&self, wait: Wait, deadline: Option<Instant>, marker: impl Fn() -> Option<u64>) {
        if wait == Wait::No {
            return self.forgo();
        }
        let taken = self.until.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some((mut until, at_release)) = taken else { return };
        if let Some(d) = deadline {
            until = until.min(d);
        }
        loop {
            let now = Instant::now();
            if until <= now || (at_release.is_some() && marker() != at_release) {
                return;
            }
            let step = if at_release.is_some() { FAST_POLL.min(until - now) } else { until - now };
            pause(step).await;
        }
    }
}

/// One coordinator's [`Courtesy`]s, by lock key: many programs make a fresh lock object for
/// each hold (`with coordinator.get_lock(name):` in a loop), and the object that made the
/// promise is gone by the next acquire; the next object of the same name keeps it.
pub struct Courtesies {
    grace: Duration,
    by_key: Mutex<Book>,
}

#[derive(Default)]
struct Book {
    entries: HashMap<Vec<u8>, Arc<Courtesy>>,
    /// Entries left after the last sweep: the next one comes when the book has doubled.
    swept_at: usize,
}

impl Courtesies {
    pub fn with_grace(grace: Duration) -> Courtesies {
        Courtesies { grace, by_key: Mutex::new(Book::default()) }
    }

    /// The courtesy of lock `key`, shared by every lock object of that name alive (and kept
    /// while a promise is pending after the last one went).
    pub fn of(&self, key: &[u8]) -> Arc<Courtesy> {
        let mut book = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = book.entries.get(key) {
            return c.clone();
        }
        if book.entries.len() >= (2 * book.swept_at).max(64) {
            // Forget the names no lock object holds and no promise is pending for.
            book.entries.retain(|_, c| Arc::strong_count(c) > 1 || c.pending());
            book.swept_at = book.entries.len();
        }
        let c = Arc::new(Courtesy::with_grace(self.grace));
        book.entries.insert(key.to_vec(), c.clone());
        c
    }
}

impl Default for Courtesies {
    fn default() -> Self {
        Courtesies::with_grace(GRACE)
    }
}

/// How long a process may keep winning a lock back over waiting processes before it lets
/// one of them in (see [`Burst`]).
pub const BURST: Duration = GRACE;
/// How long no release may find anyone waiting before a run of releases over waiters ends:
/// well above a waiter's absences (ipc's 1 ms stay-away, a wake-up on a busy machine).
const QUIET: Duration = Duration::from_millis(20);

/// A process's run of releases of one lock over waiting processes. Handing a lock over at
/// every release costs a process wake-up per acquisition (tens of µs on a VM, more than many
/// critical sections); letting the releaser win it back for a short burst, then handing it
/// over, keeps the lock busy and still lets every waiter in within about a burst.
#[derive(Default)]
struct Burst {
    /// The first release of the run that found others waiting.
    since: Option<std::time::Instant>,
    /// The last release that did (a waiter may be away for a moment after losing a race, so
    /// a release may find none while they are still there).
    seen: Option<std::time::Instant>,
}

impl Burst {
    /// Records a release that found others waiting or not; whether this one is to let a
    /// waiter in (the burst is over; a new one starts with the next release over waiters).
    fn over(&mut self, waiting: bool) -> bool {
        let now = std::time::Instant::now();
        if !waiting {
            if self.seen.map_or(true, |t| now - t >= QUIET) {
                self.since = None;
            }
            return false;
        }
        self.seen = Some(now);
        let over = now - *self.since.get_or_insert(now) >= BURST;
        if over {
            self.since = None;
        }
        over
    }
}

/// The [`Burst`]s of this process, one per lock (a semaphore key, a lock file's path): kept
/// apart from lock objects, since many programs make a fresh one for each hold
/// (`with coord.get_lock(name):`). A lock's entry lasts while a run does.
pub struct Bursts<K>(Mutex<Option<HashMap<K, Burst>>>);

impl<K: Hash + Eq + Clone> Bursts<K> {
    pub const fn new() -> Self {
        Bursts(Mutex::new(None))
    }

    /// Records a release of lock `key` that found others waiting or not; whether this one is
    /// to let a waiter in.
    pub fn over(&self, key: &K, waiting: bool) -> bool {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !waiting && guard.as_ref().map_or(true, HashMap::is_empty) {
            return false; // the uncontended release, with no run anywhere: not even a hash
        }
        let map = guard.get_or_insert_with(HashMap::new);
        let (over, ended) = match map.get_mut(key) {
            // An uncontended release of a lock with no run: no clock read, no allocation.
            None if !waiting => return false,
            None => {
                let mut burst = Burst::default();
                let over = burst.over(true);
                map.insert(key.clone(), burst);
                (over, false)
            }
            Some(burst) => {
                let over = burst.over(waiting);
                (over, burst.since.is_none())
            }
        };
        if ended {
            map.remove(key);
        }
        over
    }
}

/// The pauses of one waiter between its attempts.
pub struct Pace {
    pause: Duration,
    longest: Duration,
    marker: Option<u64>,
}

impl Pace {
    pub fn new(longest: Duration) -> Pace {
        Pace { pause: FAST_POLL / 2, longest, marker: None }
    }

    /// The pause after a failed attempt that saw `marker` (None: the backend has none).
    pub fn after_busy(&mut self, marker: Option<u64>) -> Duration {
        let moved = marker.is_some() && self.marker.is_some() && marker != self.marker;
        self.marker = marker;
        self.pause = if moved { FAST_POLL } else { (self.pause * 2).min(self.longest) };
        self.pause
    }
}

/// Sleeps for `d` when nothing else can end the wait: on a caller's thread (`block_on`) the
/// thread itself sleeps, with no hop through the runtime's threads.
pub async fn pause(d: Duration) {
    if crate::runtime::on_caller_thread() {
        std::thread::sleep(d);
    } else {
        nap(d).await;
    }
}

/// Sleeps for `d`, finer than the runtime's millisecond timer when `d` is shorter than that.
pub async fn nap(d: Duration) {
    if d >= Duration::from_millis(2) {
        tokio::time::sleep(d).await;
    } else {
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(d)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_is_fast_while_the_lock_changes_hands_and_backs_off_otherwise() {
        let mut pace = Pace::new(Duration::from_millis(100));
        assert_eq!(pace.after_busy(Some(7)), FAST_POLL);
        assert_eq!(pace.after_busy(Some(7)), FAST_POLL * 2);
        assert_eq!(pace.after_busy(Some(7)), FAST_POLL * 4);
        assert_eq!(pace.after_busy(Some(8)), FAST_POLL, "a new holder: poll fast again");
        for _ in 0..20 {
            pace.after_busy(None);
        }
        assert_eq!(pace.after_busy(None), Duration::from_millis(100));
    }

    #[test]
    fn a_burst_lets_a_waiter_in_once_it_has_kept_the_lock_from_waiters_for_a_while() {
        let mut s = Burst::default();
        assert!(!s.over(false));
        assert!(!s.over(true), "the first release over waiters starts the clock");
        assert!(!s.over(false), "waiters away for a moment do not end the run");
        std::thread::sleep(BURST);
        assert!(s.over(true));
        assert!(!s.over(true), "a new run starts after a hand-over");
        std::thread::sleep(QUIET);
        assert!(!s.over(false), "nobody waited for a while: the run ends");
        assert!(!s.over(true), "and the next one starts afresh");
    }

    #[test]
    fn bursts_are_kept_per_lock_and_only_while_a_run_lasts() {
        let bursts: Bursts<u32> = Bursts::new();
        assert!(!bursts.over(&1, false));
        assert!(!bursts.over(&1, true));
        assert!(!bursts.over(&2, true));
        std::thread::sleep(BURST);
        assert!(bursts.over(&1, true), "lock 1's run is over, whichever object releases it");
        assert_eq!(bursts.0.lock().unwrap().as_ref().unwrap().len(), 1, "its entry is gone");
        assert!(bursts.over(&2, true));
    }

    #[test]
    fn a_promise_outlives_the_lock_object_and_idle_names_are_forgotten() {
        let book = Courtesies::with_grace(Duration::from_secs(60));
        let first = book.of(b"a");
        first.released(true);
        drop(first);
        assert!(book.of(b"a").pending(), "the next object of that name keeps the promise");
        let kept = book.of(b"b");
        for i in 0..200u32 {
            book.of(&i.to_be_bytes());
        }
        let left = book.by_key.lock().unwrap().entries.len();
        assert!(left < 100, "idle names are swept: {left} left");
        assert!(Arc::ptr_eq(&kept, &book.of(b"b")), "a name a lock object holds stays");
        assert!(book.of(b"a").pending(), "so does one whose promise is pending");
    }

    #[test]
    fn courtesy_steps_aside_only_after_a_release_others_waited_for() {
        crate::runtime::block_on(async {
            let c = Courtesy::default();
            let began = Instant::now();
            c.step_aside(Wait::Forever, None).await;
            c.released(false);
            c.step_aside(Wait::Forever, None).await;
            assert!(began.elapsed() < GRACE);
            c.released(true);
            c.step_aside(Wait::No, None).await;
            assert!(began.elapsed() < GRACE, "a one-shot attempt does not wait");
            c.released(true);
            let began = Instant::now();
            c.step_aside(Wait::Forever, None).await;
            assert!(began.elapsed() >= GRACE);
            let began = Instant::now();
            c.step_aside(Wait::Forever, None).await;
            assert!(began.elapsed() < GRACE, "once per release");
        });
    }
}
