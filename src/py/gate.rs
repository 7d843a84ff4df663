//! The one way our own threads (runtime workers finishing `tooz.aio` calls, the thread that
//! runs log records and callbacks) enter Python, closed at interpreter exit.
//!
//! A thread that asks for the GIL after CPython has begun to finalize is ended on the spot by
//! CPython (`pthread_exit`). That forced unwind runs into the `catch_unwind` that tokio's
//! tasks and Rust's threads sit under, and the process aborts ("FATAL: exception not
//! rethrown"). PyO3's own check for finalization exists only on Python ≥ 3.13 and races
//! anyway. So an `atexit` hook (which runs before finalization starts) closes this gate and
//! waits, without the GIL, for the threads already inside to leave; after it, no thread of
//! ours asks for the GIL again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::runtime::ForkCount;

static CLOSED: AtomicBool = AtomicBool::new(false);
/// The threads inside (a forked child does not wait for its parent's, which it does not have).
static INSIDE: ForkCount = ForkCount::new();
/// How long the exit hook waits for threads inside (a callback that never returns).
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// Runs `f` with the GIL from a thread of ours; `None` once the interpreter is exiting.
pub fn with_python<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    INSIDE.enter();
    let out = if CLOSED.load(Ordering::SeqCst) { None } else { Python::try_attach(f) };
    INSIDE.leave();
    out
}

fn busy() -> bool {
    INSIDE.count() > 0
}

/// The `atexit` hook: closes the gate, then lets the threads inside finish.
#[pyfunction]
fn close_gate(py: Python<'_>) {
    CLOSED.store(true, Ordering::SeqCst);
    py.detach(|| {
        let until = Instant::now() + EXIT_WAIT;
        while busy() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

/// Registers the exit hook (at import of the extension).
pub fn install(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let hook = wrap_pyfunction!(close_gate, m)?;
    m.py().import("atexit")?.call_method1("register", (hook,))?;
    Ok(())
}
