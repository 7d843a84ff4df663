//! Eventlet-patched ("green") processes.
//!
//! After `eventlet.monkey_patch()` every greenthread of a service shares one OS thread, so a
//! call that blocks that thread in the core freezes the whole service. In such a process each
//! waiting call runs on the runtime instead, and the calling greenthread waits in eventlet's
//! hub for an eventfd the runtime task signals when it is done (`tooz._green.wait_readable`,
//! `eventlet.hubs.trampoline`): the other greenthreads run meanwhile. An exception raised in
//! the waiting greenthread (`eventlet.Timeout`, `GreenThread.kill()`) abandons the call: its
//! task is aborted, which drops the future (an acquire withdraws its attempt, as on Ctrl-C),
//! and a result that arrived anyway is undone (a lock won meanwhile is released).
//!
//! Nor does Python run on a thread of ours there (its locks are green and belong to the hub's
//! thread): log records and callbacks are handed to a greenthread of the hub (the
//! *deliverer*, started by the first green call of the process) through another eventfd.
//!
//! The process is seen as green when `eventlet.patcher.is_monkey_patched("thread")` says so,
//! asked at call time (a service may patch after importing tooz); once seen, it stays green
//! for this process image (a forked child asks again).

use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

use super::errors::to_py;
use super::worker::{self, Job};
use crate::error::Error;
use crate::queue::ForkLocal;
use crate::runtime;

/// The fork generation in which the process was seen green (`u64::MAX`: not seen).
static GREEN: AtomicU64 = AtomicU64::new(u64::MAX);
/// The fork generation whose deliverer greenthread has been started.
static DELIVERER: AtomicU64 = AtomicU64::new(u64::MAX);
/// The deliverer's wake-up (one per process image: a child makes its own).
static DELIVERY: Mutex<Option<(u64, Arc<Signal>)>> = Mutex::new(None);
/// Work for the deliverer, in the order it came.
static JOBS: ForkLocal<Job> = ForkLocal::new();
const MAX_QUEUED: usize = 10_000;

static MODULES: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
static HELPERS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// An eventfd: written by the runtime, waited for in the hub.
struct Signal(OwnedFd);

impl Signal {
    fn new() -> crate::error::Result<Signal> {
        // SAFETY: eventfd has no memory arguments; a valid descriptor is owned from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(Error::Tooz(format!("cannot make an eventfd: {}", std::io::Error::last_os_error())));
        }
        Ok(Signal(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn fire(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to a descriptor this value owns. A full counter
        // (EAGAIN) is already readable, which is all the waiter needs.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Whether this process is eventlet-patched (cheap when eventlet was never imported: one
/// dict lookup). Safe to ask from any thread that holds the GIL.
pub fn active(py: Python<'_>) -> bool {
    let generation = runtime::generation();
    if GREEN.load(Ordering::Relaxed) == generation {
        return true;
    }
    let Ok(modules) = MODULES.get_or_try_init(py, || -> PyResult<Py<PyDict>> {
        Ok(py.import("sys")?.getattr("modules")?.cast_into::<PyDict>()?.unbind())
    }) else {
        return false;
    };
    let Ok(Some(patcher)) = modules.bind(py).get_item("eventlet.patcher") else {
        return false;
    };
    let patched = patcher.call_method1("is_monkey_patched", ("thread",)).and_then(|v| v.is_truthy()).unwrap_or(false);
    if patched {
        GREEN.store(generation, Ordering::Relaxed);
    }
    patched
}

/// Whether the process was seen green already (no GIL needed).
pub fn seen() -> bool {
    GREEN.load(Ordering::Relaxed) == runtime::generation()
}

fn helpers(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    Ok(HELPERS.get_or_try_init(py, || -> PyResult<Py<PyModule>> { Ok(py.import("tooz._green")?.unbind()) })?.bind(py))
}

/// The deliverer's signal of this process image, made on first use.
fn delivery() -> crate::error::Result<Arc<Signal>> {
    let generation = runtime::generation();
    let mut slot = DELIVERY.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((g, signal)) = slot.as_ref() {
        if *g == generation {
            return Ok(signal.clone());
        }
    }
    let signal = Arc::new(Signal::new()?);
    *slot = Some((generation, signal.clone()));
    Ok(signal)
}

/// Starts the deliverer greenthread in the calling thread's hub, once per process image.
fn ensure_deliverer(py: Python<'_>) -> PyResult<()> {
    let generation = runtime::generation();
    if DELIVERER.load(Ordering::SeqCst) == generation {
        return Ok(());
    }
    let signal = delivery().map_err(to_py)?;
    let deliver = wrap_pyfunction!(deliver, py)?;
    helpers(py)?.call_method1("start_deliverer", (signal.fd(), deliver))?;
    DELIVERER.store(generation, Ordering::SeqCst);
    // Work queued before the deliverer existed.
    signal.fire();
    Ok(())
}

/// Queues `job` for the deliverer greenthread (from any thread, no GIL needed).
pub fn hand_over(job: Job) {
    let _ = JOBS.get().push(job, MAX_QUEUED);
    if let Ok(signal) = delivery() {
        signal.fire();
    }
}

/// Run by the deliverer greenthread when woken: every queued record and callback.
#[pyfunction]
fn deliver(py: Python<'_>) {
    while let Some(job) = JOBS.get().pop(std::time::Duration::ZERO) {
        worker::run_job(py, job);
    }
}

/// Runs `fut` on the runtime while the calling greenthread waits in the hub; the result, or
/// the exception the greenthread was interrupted with. An interrupted call is aborted, and
/// a result that still came is given to `undo`.
pub fn wait<T, F>(py: Python<'_>, fut: F, undo: impl FnOnce(T) + Send + 'static) -> PyResult<T>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    match wait_for(py, fut, None, undo)? {
        Some(v) => Ok(v),
        None => Err(to_py(Error::Tooz("a green wait without a time limit ended with no result".into()))),
    }
}

/// [`wait`] with a time limit: `None` when it passed first (the call then goes on, and its
/// result is given to `undo`).
pub fn wait_for<T, F>(py: Python<'_>, fut: F, timeout: Option<f64>, undo: impl FnOnce(T) + Send + 'static) -> PyResult<Option<T>>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    ensure_deliverer(py)?;
    let signal = Arc::new(Signal::new().map_err(to_py)?);
    // The result, or (with `abandoned`) nobody to take it.
    let slot: Arc<Mutex<(Option<T>, bool)>> = Arc::new(Mutex::new((None, false)));
    let undo: Arc<Mutex<Option<Box<dyn FnOnce(T) + Send>>>> = Arc::new(Mutex::new(Some(Box::new(undo))));
    let task = {
        let (signal, slot, undo) = (signal.clone(), slot.clone(), undo.clone());
        runtime::runtime().spawn(async move {
            let value = fut.await;
            let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
            if s.1 {
                drop(s);
                if let Some(undo) = undo.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    undo(value);
                }
            } else {
                s.0 = Some(value);
                drop(s);
                signal.fire();
            }
        })
    };
    let deadline = timeout.map(|t| std::time::Instant::now() + std::time::Duration::from_secs_f64(t.max(0.0)));
    let helpers = helpers(py)?;
    loop {
        if let Some(v) = slot.lock().unwrap_or_else(|p| p.into_inner()).0.take() {
            return Ok(Some(v));
        }
        let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()).as_secs_f64());
        let outcome = match left {
            Some(l) if l <= 0.0 => Ok(false),
            _ => helpers.call_method1("wait_readable", (signal.fd(), left)).and_then(|v| v.is_truthy()),
        };
        let interrupted = match outcome {
            Ok(true) => continue,
            Ok(false) => None,
            Err(e) => Some(e),
        };
        // Timed out or interrupted: nobody takes the result any more.
        let late = {
            let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
            s.1 = true;
            s.0.take()
        };
        if interrupted.is_some() {
            task.abort();
        }
        if let Some(v) = late {
            if let Some(undo) = undo.lock().unwrap_or_else(|p| p.into_inner()).take() {
                undo(v);
            }
        }
        return match interrupted {
            Some(e) => Err(e),
            None => Ok(None),
        };
    }
}
