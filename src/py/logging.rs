//! The core's log records (`crate::log`) into Python's `logging`, from a thread of our own:
//! runtime threads only queue records and never wait for the GIL. The thread is started on
//! the first record of a process (a forked child starts its own) and ends when the
//! interpreter can no longer be attached to (at exit).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pyo3::prelude::*;

use crate::log;
use crate::runtime;

/// The fork generation whose drain thread has been started.
static DRAINING: AtomicU64 = AtomicU64::new(u64::MAX);

pub fn ensure_drainer() {
    let generation = runtime::generation();
    if DRAINING.swap(generation, Ordering::SeqCst) == generation {
        return;
    }
    let spawned = std::thread::Builder::new().name("tooz-log".into()).spawn(move || drain(generation));
    if spawned.is_err() {
        DRAINING.store(u64::MAX, Ordering::SeqCst); // try again on the next record
    }
}

fn drain(generation: u64) {
    while runtime::generation() == generation {
        let Some(record) = log::next(Duration::from_secs(1)) else { continue };
        let attached = Python::try_attach(|py| -> PyResult<()> {
            let logger = py.import("logging")?.call_method1("getLogger", (record.logger.as_str(),))?;
            logger.call_method1("log", (record.level as i32, "%s", record.message.as_str()))?;
            Ok(())
        });
        match attached {
            None => return, // the interpreter is shutting down
            Some(Err(e)) => Python::try_attach(|py| e.print(py)).unwrap_or(()),
            Some(Ok(())) => {}
        }
    }
}
