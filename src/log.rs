//! Log records of the core, queued for whoever shows them.
//!
//! The core runs on runtime threads that must never wait for Python's GIL, so a record is
//! only pushed onto a bounded in-memory queue here; the Python binding drains the queue into
//! Python's `logging` from a thread of its own. The queue belongs to one process image: a
//! forked child starts with an empty one (the parent's lock may have been held at the fork).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use crate::runtime;

/// Python `logging` levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Debug = 10,
    Info = 20,
    Warning = 30,
    Error = 40,
}

#[derive(Clone, Debug)]
pub struct Record {
    pub level: Level,
    /// The Python logger name (upstream's: `tooz.coordination`, `tooz.drivers.<backend>`).
    pub logger: String,
    pub message: String,
}

/// Records beyond this many, not yet drained, are dropped (the oldest first).
const MAX_QUEUED: usize = 1000;

struct Queue {
    generation: u64,
    records: Mutex<VecDeque<Record>>,
    ready: Condvar,
}

static CURRENT: AtomicPtr<Queue> = AtomicPtr::new(std::ptr::null_mut());
/// Called after each record is queued (the binding makes sure a drainer runs).
static ON_EMIT: OnceLock<fn()> = OnceLock::new();

fn queue() -> &'static Queue {
    let generation = runtime::generation();
    let cur = CURRENT.load(Ordering::Acquire);
    // SAFETY: queues are leaked, never freed.
    if let Some(q) = unsafe { cur.as_ref() } {
        if q.generation == generation {
            return q;
        }
    }
    let fresh = Box::into_raw(Box::new(Queue { generation, records: Mutex::new(VecDeque::new()), ready: Condvar::new() }));
    match CURRENT.compare_exchange(cur, fresh, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => unsafe { &*fresh },
        Err(winner) => unsafe { &*winner },
    }
}

/// Registers the function called whenever a record is queued.
pub fn on_emit(hook: fn()) {
    let _ = ON_EMIT.set(hook);
}

/// Queues a record; never blocks on anything but the queue's own short lock.
pub fn emit(level: Level, logger: impl Into<String>, message: impl Into<String>) {
    let q = queue();
    {
        let mut records = q.records.lock().unwrap_or_else(|p| p.into_inner());
        if records.len() >= MAX_QUEUED {
            records.pop_front();
        }
        records.push_back(Record { level, logger: logger.into(), message: message.into() });
    }
    q.ready.notify_one();
    if let Some(hook) = ON_EMIT.get() {
        hook();
    }
}

/// Whether a connection is up, logged on changes only (an outage is one WARNING when it
/// starts and one INFO when it ends, not one record per failed call).
pub struct Health {
    logger: String,
    /// What is connected to what, for the messages (never a password).
    what: String,
    down: std::sync::atomic::AtomicBool,
}

impl Health {
    pub fn new(logger: impl Into<String>, what: impl Into<String>) -> Health {
        Health { logger: logger.into(), what: what.into(), down: std::sync::atomic::AtomicBool::new(false) }
    }

    /// A call failed for want of a connection.
    pub fn lost(&self, why: impl std::fmt::Display) {
        if !self.down.swap(true, std::sync::atomic::Ordering::SeqCst) {
            emit(Level::Warning, self.logger.clone(), format!("{}: connection lost ({why}); will reconnect", self.what));
        }
    }

    /// A call went through.
    pub fn up(&self) {
        if self.down.load(std::sync::atomic::Ordering::Relaxed) && self.down.swap(false, std::sync::atomic::Ordering::SeqCst) {
            emit(Level::Info, self.logger.clone(), format!("{}: connected again", self.what));
        }
    }
}

/// The next record, waiting at most `timeout` for one.
pub fn next(timeout: Duration) -> Option<Record> {
    let q = queue();
    let records = q.records.lock().unwrap_or_else(|p| p.into_inner());
    let (mut records, _) = q.ready.wait_timeout_while(records, timeout, |r| r.is_empty()).unwrap_or_else(|p| p.into_inner());
    records.pop_front()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_out_in_order_and_the_queue_is_bounded() {
        while next(Duration::ZERO).is_some() {}
        for i in 0..MAX_QUEUED + 5 {
            emit(Level::Warning, "tooz.test", format!("record {i}"));
        }
        let first = next(Duration::ZERO).expect("a record");
        assert_eq!(first.message, "record 5", "the oldest were dropped");
        assert_eq!(first.level, Level::Warning);
        let mut n = 1;
        while next(Duration::ZERO).is_some() {
            n += 1;
        }
        assert_eq!(n, MAX_QUEUED);
        assert!(next(Duration::from_millis(10)).is_none());
    }
}
