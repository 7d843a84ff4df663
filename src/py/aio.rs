//! Rust futures as asyncio futures (`tooz.aio`).
//!
//! A call creates an `asyncio.Future` on the running loop and runs its Rust future on our
//! runtime (`runtime::runtime()`, rebuilt in a forked child). Outcomes come back in batches:
//! a finished future queues its outcome on the loop's [`Bridge`] without the GIL, and only
//! the first outcome of a batch takes the GIL, to schedule one `drain` on the loop
//! (`call_soon_threadsafe`); `drain` then sets every queued result on the loop's own thread.
//! Under load that is one cross-thread wake-up for many results, where one per result (what
//! `pyo3_async_runtimes::generic::future_into_py` does) costs more than a local round trip.
//! A future that is ready at once (no I/O) is resolved on the spot, without the runtime.
//!
//! The running loop is found with `pyo3_async_runtimes::get_running_loop`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Context;

use pyo3::prelude::*;

use super::errors::to_py;
use super::result::Reply;
use crate::driver::DriverLock;
use crate::error::Error;
use crate::runtime;

/// What a Rust future gives back to Python.
pub enum Outcome {
    Value(Reply),
    /// A lock was won: if nobody awaits the result any more (cancelled), it is released.
    Acquired(bool, Arc<dyn DriverLock>),
    Failed(Error),
}

/// A call's value, or its error.
impl From<crate::error::Result<Reply>> for Outcome {
    fn from(result: crate::error::Result<Reply>) -> Self {
        match result {
            Ok(reply) => Outcome::Value(reply),
            Err(e) => Outcome::Failed(e),
        }
    }
}

impl Outcome {
    fn resolve(self, py: Python<'_>, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future.call_method0("done")?.is_truthy()? {
            if let Outcome::Acquired(true, lock) = self {
                let_go(lock);
            }
            return Ok(());
        }
        match self {
            Outcome::Value(reply) => future.call_method1("set_result", (reply.into_py(py)?,))?,
            Outcome::Acquired(won, _) => future.call_method1("set_result", (won,))?,
            Outcome::Failed(e) => future.call_method1("set_exception", (to_py(e).into_value(py),))?,
        };
        Ok(())
    }

    /// Nobody will read it (the loop is gone): undo what must not be left behind.
    fn discard(self) {
        if let Outcome::Acquired(true, lock) = self {
            let_go(lock);
        }
    }
}

/// Releases, on the runtime, a lock won for a caller that is no longer there to hold it.
pub fn let_go(lock: Arc<dyn DriverLock>) {
    runtime::runtime().spawn(async move {
        let _ = lock.release().await;
    });
}

/// One event loop's queue of finished outcomes.
pub struct Bridge {
    event_loop: Py<PyAny>,
    queue: Mutex<Vec<(Py<PyAny>, Outcome)>>,
    scheduled: AtomicBool,
}

impl Bridge {
    fn complete(self: &Arc<Self>, future: Py<PyAny>, outcome: Outcome) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).push((future, outcome));
        if self.scheduled.swap(true, Ordering::SeqCst) {
            return; // a drain is already on its way and will take this one too
        }
        let scheduled = super::gate::with_python(|py| {
            let drain = Drain { bridge: self.clone() };
            self.event_loop.call_method1(py, "call_soon_threadsafe", (drain,)).is_ok()
        });
        if scheduled != Some(true) {
            // The loop is closed (or the interpreter is going): nobody will drain.
            let items = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
            for (_, outcome) in items {
                outcome.discard();
            }
        }
    }
}

#[pyclass(module = "tooz._tooz")]
struct Drain {
    bridge: Arc<Bridge>,
}

#[pymethods]
impl Drain {
    fn __call__(&self, py: Python<'_>) {
        self.bridge.scheduled.store(false, Ordering::SeqCst);
        let items = std::mem::take(&mut *self.bridge.queue.lock().unwrap_or_else(|p| p.into_inner()));
        for (future, outcome) in items {
            if let Err(e) = outcome.resolve(py, future.bind(py)) {
                e.print(py);
            }
        }
    }
}

/// The last loop's bridge (the common case: one loop per process or thread at a time).
static LAST: Mutex<Option<Arc<Bridge>>> = Mutex::new(None);

fn bridge(py: Python<'_>) -> PyResult<Arc<Bridge>> {
    let event_loop = pyo3_async_runtimes::get_running_loop(py)?;
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(b) = last.as_ref() {
        if b.event_loop.bind(py).is(&event_loop) {
            return Ok(b.clone());
        }
    }
    let fresh = Arc::new(Bridge { event_loop: event_loop.unbind(), queue: Mutex::new(Vec::new()), scheduled: AtomicBool::new(false) });
    *last = Some(fresh.clone());
    Ok(fresh)
}

/// An `asyncio.Future` of the running loop resolved with what `fut` gives, and the handle
/// of the runtime task (`None` when it was ready at once): aborting the task drops `fut`.
pub fn spawn<'py, F>(py: Python<'py>, fut: F) -> PyResult<(Bound<'py, PyAny>, Option<tokio::task::AbortHandle>)>
where
    F: Future<Output = Outcome> + Send + 'static,
{
    let bridge = bridge(py)?;
    let future = bridge.event_loop.bind(py).call_method0("create_future")?;
    let mut fut: Pin<Box<dyn Future<Output = Outcome> + Send>> = Box::pin(fut);
    let rt = runtime::runtime();
    let ready = {
        let _context = rt.enter();
        fut.as_mut().poll(&mut Context::from_waker(std::task::Waker::noop()))
    };
    if let std::task::Poll::Ready(outcome) = ready {
        outcome.resolve(py, &future)?;
        return Ok((future, None));
    }
    let target = future.clone().unbind();
    let task = rt.spawn(async move {
        let outcome = fut.await;
        bridge.complete(target, outcome);
    });
    Ok((future, Some(task.abort_handle())))
}

/// Cancels a call's runtime task (an acquire is withdrawn by its drop).
#[pyclass(module = "tooz._tooz", name = "Cancel")]
pub struct Cancel {
    pub task: Option<tokio::task::AbortHandle>,
}

#[pymethods]
impl Cancel {
    fn __call__(&self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
