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
//! A call is first polled on the calling thread for a moment ([`INLINE`], about what a green
//! socket call may hold the thread) when no other call of ours waits in the hub: a call that
//! ends within a round trip to the server then costs no hop to a runtime thread and back and
//! no wake-up through the hub, which is what one greenthread alone would otherwise pay. One
//! that takes longer goes on where it stands, moved to the runtime. The thread does not sleep
//! for the first [`runtime::SPIN`] of each wait in that moment: a near server answers sooner
//! than a sleeping CPU wakes up.
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
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

use super::errors::to_py;
use super::worker::{self, Job};
use crate::error::Error;
use crate::queue::ForkLocal;
use crate::runtime::{self, ForkCount};

/// The fork generation in which the process was seen green (`u64::MAX`: not seen).
static GREEN: AtomicU64 = AtomicU64::new(u64::MAX);
/// The fork generation whose deliverer greenthread has been started.
static DELIVERER: AtomicU64 = AtomicU64::new(u64::MAX);
/// The deliverer's wake-up, one per process image (a child makes its own). Leaked, never
/// closed: a child that kept its parent's hub still has the parent's deliverer registered on
/// that descriptor, which must not be reused by another eventfd. An atomic rather than a lock,
/// which a fork could copy held.
static DELIVERY: AtomicPtr<(u64, Signal)> = AtomicPtr::new(std::ptr::null_mut());
/// Work for the deliverer, in the order it came.
static JOBS: ForkLocal<Job> = ForkLocal::new();
const MAX_QUEUED: usize = 10_000;
/// Calls whose greenthread waits in the hub for them now.
static IN_HUB: ForkCount = ForkCount::new();
/// How long a call may hold the OS thread before its greenthread goes to wait in the hub
/// (when no other call is waiting there): about what a green socket call may.
const INLINE: std::time::Duration = std::time::Duration::from_micros(250);

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
    let Ok(Some(patcher)) = modules.bind(py).get_item(intern!(py, "eventlet.patcher")) else {
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
fn delivery() -> crate::error::Result<&'static Signal> {
    let generation = runtime::generation();
    let cur = DELIVERY.load(Ordering::Acquire);
    // SAFETY: slots are leaked, never freed.
    if let Some((g, signal)) = unsafe { cur.as_ref() } {
        if *g == generation {
            return Ok(signal);
        }
    }
    let fresh = Box::into_raw(Box::new((generation, Signal::new()?)));
    match DELIVERY.compare_exchange(cur, fresh, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Ok(unsafe { &(*fresh).1 }),
        // Another thread made one first; ours (never used) is leaked with the rest.
        Err(winner) => Ok(unsafe { &(*winner).1 }),
    }
}

/// Starts the deliverer greenthread in the calling thread's hub, once per process image.
fn ensure_deliverer(py: Python<'_>) -> PyResult<()> {
    let generation = runtime::generation();
    if DELIVERER.load(Ordering::SeqCst) == generation {
        return Ok(());
    }
    let signal = delivery().map_err(to_py)?;
    let deliver = wrap_pyfunction!(deliver, py)?;
    let ended = wrap_pyfunction!(deliverer_ended, py)?;
    helpers(py)?.call_method1("start_deliverer", (signal.fd(), deliver, ended))?;
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

/// Called by a deliverer greenthread that stops (killed with its hub): the next green call
/// starts another.
#[pyfunction]
fn deliverer_ended() {
    DELIVERER.store(u64::MAX, Ordering::SeqCst);
}

/// Run by the deliverer greenthread when woken: every queued record and callback.
#[pyfunction]
fn deliver(py: Python<'_>) {
    while let Some(job) = JOBS.get().pop(std::time::Duration::ZERO) {
        worker::run_job(py, job);
    }
}

/// What becomes of a call whose greenthread stops waiting for it (an exception thrown into
/// it, or the time limit of [`wait_for`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// Dropped: for an acquire (its drop withdraws the attempt) and for calls that only
    /// watch another (waiting for a submitted call's result, for the heart to stop).
    Abort,
    /// Run to its end, as a blocking call in a thread would be (a release, an election).
    Finish,
}

/// The state a call's task and its waiting greenthread share.
struct Shared<T> {
    value: Option<T>,
    /// The greenthread no longer waits: a value that still comes goes to `undo`.
    abandoned: bool,
    /// The task is over (it stored its value, or it panicked or was aborted).
    ended: bool,
}

/// Marks the task over, and wakes the waiter, however the task ends (a panic included).
struct Ended<T> {
    shared: Arc<Mutex<Shared<T>>>,
    signal: Arc<Signal>,
}

impl<T> Drop for Ended<T> {
    fn drop(&mut self) {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).ended = true;
        self.signal.fire();
    }
}

/// Runs `fut` on the runtime while the calling greenthread waits in the hub; the result, or
/// the exception the greenthread was interrupted with. What happens to an interrupted call
/// is `left`'s; a result that still comes is given to `undo`.
pub fn wait<T, F>(py: Python<'_>, fut: F, left: Left, undo: impl FnOnce(T) + Send + 'static) -> PyResult<T>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    match wait_for(py, fut, None, left, undo)? {
        Some(v) => Ok(v),
        None => Err(to_py(Error::Tooz("a green wait without a time limit ended with no result".into()))),
    }
}

/// [`wait`] with a time limit: `None` when it passed first.
pub fn wait_for<T, F>(
    py: Python<'_>,
    fut: F,
    timeout: Option<f64>,
    left: Left,
    undo: impl FnOnce(T) + Send + 'static,
) -> PyResult<Option<T>>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    ensure_deliverer(py)?;
    let helpers = helpers(py)?;
    let deadline = timeout.map(|t| std::time::Instant::now() + std::time::Duration::from_secs_f64(t.max(0.0)));
    let mut fut = Box::pin(fut);
    if IN_HUB.count() == 0 {
        // No other call of ours is waiting in the hub (one greenthread at a time uses us):
        // most calls end within a round trip to the server, shorter than the hub's wake-up
        // through an eventfd and a hop to a runtime thread and back. So the call is polled
        // here for a moment first, as long as a green socket call might hold the thread.
        let budget = deadline.map_or(INLINE, |d| d.saturating_duration_since(std::time::Instant::now()).min(INLINE));
        if let Some(v) = py.detach(|| runtime::poll_briefly(&mut fut, budget)) {
            return Ok(Some(v));
        }
    }
    let signal = Arc::new(Signal::new().map_err(to_py)?);
    let shared = Arc::new(Mutex::new(Shared { value: None, abandoned: false, ended: false }));
    let undo: Arc<Mutex<Option<Box<dyn FnOnce(T) + Send>>>> = Arc::new(Mutex::new(Some(Box::new(undo))));
    let generation = runtime::generation();
    let task = {
        let ended = Ended { shared: shared.clone(), signal: signal.clone() };
        let undo = undo.clone();
        runtime::runtime().spawn(async move {
            let value = fut.await;
            let mut s = ended.shared.lock().unwrap_or_else(|p| p.into_inner());
            if s.abandoned {
                drop(s);
                if let Some(undo) = undo.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    undo(value);
                }
            } else {
                s.value = Some(value);
            }
            // `ended` marks the end and fires as it drops.
        })
    };
    loop {
        if runtime::generation() != generation {
            // A greenthread of the parent, carried into a forked child with its hub: the task
            // and its runtime stayed in the parent (the eventfd is shared with it).
            std::mem::forget(task);
            return Err(to_py(Error::Tooz("a call made before fork() cannot be waited for in the child".into())));
        }
        {
            let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = s.value.take() {
                return Ok(Some(v));
            }
            if s.ended {
                return Err(to_py(Error::Tooz("the call ended in the core without a result (a panic)".into())));
            }
        }
        let left_s = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()).as_secs_f64());
        let outcome = match left_s {
            Some(l) if l <= 0.0 => Ok(false),
            _ => {
                IN_HUB.enter();
                let woken = helpers.call_method1("wait_readable", (signal.fd(), left_s)).and_then(|v| v.is_truthy());
                IN_HUB.leave();
                woken
            }
        };
        let interrupted = match outcome {
            Ok(true) => continue,
            Ok(false) => None,
            Err(e) => Some(e),
        };
        // Timed out or interrupted: nobody takes the result any more.
        let late = {
            let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
            s.abandoned = true;
            s.value.take()
        };
        if left == Left::Abort {
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
