//! Log records of the core, queued for whoever shows them.
//!
//! The core runs on runtime threads that must never wait for Python's GIL, so a record is
//! only pushed onto a bounded in-memory queue here; the Python binding drains the queue into
//! Python's `logging` from a thread of its own. The queue belongs to one process image
//! (`queue.rs`): a forked child starts with an empty one.

use std::sync::OnceLock;
use std::time::Duration;

use crate::queue::ForkLocal;

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

static QUEUE: ForkLocal<Record> = ForkLocal::new();
/// Called after each record is queued (the binding makes sure a drainer runs).
static ON_EMIT: OnceLock<fn()> = OnceLock::new();

/// Registers the function called whenever a record is queued.
pub fn on_emit(hook: fn()) {
    let _ = ON_EMIT.set(hook);
}

/// Queues a record; never blocks on anything but the queue's own short lock.
pub fn emit(level: Level, logger: impl Into<String>, message: impl Into<String>) {
    QUEUE.get().push(Record { level, logger: logger.into(), message: message.into() }, MAX_QUEUED);
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
    QUEUE.get().pop(timeout)
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
