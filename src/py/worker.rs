//! The one thread of ours that calls into Python: it hands the core's log records
//! (`crate::log`) to Python's `logging` and runs callbacks such as `Lock.on_lost`'s. Runtime
//! threads never wait for the GIL: they queue work here. The thread starts on the first
//! piece of work of a process (a forked child starts its own) and ends when the interpreter
//! can no longer be attached to (at exit).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pyo3::prelude::*;

use crate::log;
use crate::queue::ForkLocal;
use crate::runtime;

pub enum Job {
    /// Log records are waiting in `crate::log`.
    Drain,
    /// Call `callable()` (shared: no GIL is needed to queue it).
    Call(std::sync::Arc<Py<PyAny>>),
}

/// Callbacks beyond this many, not yet run, are dropped (the oldest first).
const MAX_QUEUED: usize = 10_000;

static JOBS: ForkLocal<Job> = ForkLocal::new();
/// The fork generation whose thread has been started.
static RUNNING: AtomicU64 = AtomicU64::new(u64::MAX);

pub fn submit(job: Job) {
    if super::green::seen() {
        return super::green::hand_over(job);
    }
    let _ = JOBS.get().push(job, MAX_QUEUED);
    let generation = runtime::generation();
    if RUNNING.swap(generation, Ordering::SeqCst) == generation {
        return;
    }
    if std::thread::Builder::new().name("tooz-python".into()).spawn(move || run(generation)).is_err() {
        RUNNING.store(u64::MAX, Ordering::SeqCst); // try again with the next job
    }
}

/// `crate::log`'s hook: records are waiting.
pub fn records_waiting() {
    submit(Job::Drain);
}

fn run(generation: u64) {
    while runtime::generation() == generation {
        // Idle: no GIL taken (records always come with a `Drain` job).
        let Some(job) = JOBS.get().pop(Duration::from_secs(1)) else { continue };
        if super::green::seen() {
            super::green::hand_over(job);
            continue;
        }
        let attached = super::gate::with_python(|py| {
            // Patched since the thread started: Python's locks are green now, and only the
            // hub's greenthreads may take them.
            if super::green::active(py) {
                super::green::hand_over(job);
            } else {
                run_job(py, job);
            }
        });
        if attached.is_none() {
            return; // the interpreter is shutting down
        }
    }
}

/// Hands the waiting log records to `logging`, then runs the job's callback.
pub fn run_job(py: Python<'_>, job: Job) {
    while let Some(record) = log::next(Duration::ZERO) {
        let out = py.import("logging").and_then(|logging| {
            let logger = logging.call_method1("getLogger", (record.logger.as_str(),))?;
            logger.call_method1("log", (record.level as i32, "%s", record.message.as_str()))
        });
        if let Err(e) = out {
            e.print(py);
        }
    }
    if let Job::Call(callable) = job {
        if let Err(e) = callable.call0(py) {
            e.print(py);
        }
    }
}
