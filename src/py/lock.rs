//! `tooz._tooz.Lock`: a lock of the core, with upstream's `acquire(blocking, timeout)`
//! conventions, fencing tokens and lost-lock callbacks.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;

use crate::coordinator::Coordinator;
use crate::driver::{DriverLock, Wait};
use crate::error::Error;
use crate::lock::acquire::{Acquire, AcquireHere};
use crate::runtime;
use super::convert::id_to_py;
use super::errors::to_py;
use super::{aio, green, worker};
use super::result::Reply;
use super::wait::{wait_call, SIGNAL_CHECK};

/// `utils.convert_blocking`: a real bool is (blocking, timeout); anything else is a timeout.
/// No `blocking` at all is `True`.
fn wait_from(blocking: Option<&Bound<'_, PyAny>>, timeout: Option<f64>) -> PyResult<Wait> {
    let (blocking, timeout) = match blocking.map(|b| (b, b.cast::<pyo3::types::PyBool>())) {
        None => (true, timeout),
        Some((_, Ok(b))) => (b.is_true(), timeout),
        Some((b, Err(_))) => (true, Some(b.extract::<f64>()?)),
    };
    Ok(match (blocking, timeout) {
        (false, _) => Wait::No,
        (true, None) => Wait::Forever,
        (true, Some(t)) if t.is_nan() => Wait::Forever,
        (true, Some(t)) => Wait::For(Duration::from_secs_f64(t.clamp(0.0, 1e9))),
    })
}

#[pyclass(frozen, module = "tooz._tooz", name = "Lock")]
pub(super) struct PyLock {
    pub(super) lock: Arc<dyn DriverLock>,
    /// Its coordinator: in a pre-fork worker, an acquire first makes sure the worker keeps
    /// its own leases alive (`Coordinator::keep_leases`).
    pub(super) core: Coordinator,
}

#[pymethods]
impl PyLock {
    #[getter]
    fn name<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        id_to_py(py, &self.lock.name())
    }

    /// Whether this lock object holds the lock, as far as it knows (no I/O).
    #[getter]
    fn acquired(&self) -> bool {
        self.lock.acquired()
    }

    #[pyo3(signature = (blocking=None, shared=false, timeout=None))]
    fn acquire(&self, py: Python<'_>, blocking: Option<&Bound<'_, PyAny>>, shared: bool, timeout: Option<f64>) -> PyResult<bool> {
        let wait = wait_from(blocking, timeout)?;
        self.core.keep_leases();
        let lock = self.lock.clone();
        if green::active(py) {
            // Polled here for a moment, then on the runtime (see `green::wait_for`); dropped,
            // so withdrawn, when interrupted, and a lock won as the interruption came is let go.
            let attempt = lock.clone();
            return green::wait(py, async move { attempt.acquire(wait, shared).await }, green::Left::Abort, move |won| {
                if let Ok(true) = won {
                    aio::let_go(lock);
                }
            })?
            .map_err(to_py);
        }
        // Fast path: one attempt, no task (on this thread where the lock can); not when this
        // object owes waiters of other processes a turn first.
        let courteous = wait != Wait::No && lock.stepping_aside();
        let first = !courteous
            && py
                .detach(|| lock.try_acquire_here(shared).unwrap_or_else(|| runtime::block_on(lock.acquire(Wait::No, shared))))
                .map_err(to_py)?;
        if first || wait == Wait::No {
            return Ok(first);
        }
        // Wait on this thread, coming back regularly so Ctrl-C reaches Python; an interrupted
        // wait is withdrawn (dropping the acquire).
        let mut acquire = AcquireHere::start(lock, wait, shared);
        loop {
            if let Some(outcome) = py.detach(|| acquire.finish_within(SIGNAL_CHECK)) {
                return outcome.map_err(to_py);
            }
            py.check_signals()?;
        }
    }

    /// ``acquire`` for asyncio: (an asyncio future of the outcome, a cancel function).
    /// Cancelling withdraws the attempt (and releases the lock if it was won meanwhile).
    #[pyo3(signature = (blocking=None, shared=false, timeout=None))]
    fn acquire_async<'py>(&self, py: Python<'py>, blocking: Option<&Bound<'py, PyAny>>, shared: bool, timeout: Option<f64>) -> PyResult<(Bound<'py, PyAny>, aio::Cancel)> {
        let wait = wait_from(blocking, timeout)?;
        self.core.keep_leases();
        let lock = self.lock.clone();
        // Dropped (cancelled) before it finishes, the Acquire withdraws the attempt.
        let acquire = Acquire::start(lock.clone(), wait, shared);
        let (future, task) = aio::spawn(py, async move {
            match acquire.finish().await {
                Ok(won) => aio::Outcome::Acquired(won, lock),
                Err(e) => aio::Outcome::Failed(e),
            }
        })?;
        Ok((future, aio::Cancel { task }))
    }

    /// ``release`` for asyncio: runs to the end even if the awaiting task is cancelled.
    fn release_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let lock = self.lock.clone();
        let (future, _) = aio::spawn(py, async move {
            aio::Outcome::from(lock.release().await.map(Reply::Bool))
        })?;
        Ok(future)
    }

    /// The other lock calls for asyncio: ``what`` is one of ``is_still_owner``, ``break_``,
    /// ``heartbeat``.
    fn call_async<'py>(&self, py: Python<'py>, what: &str) -> PyResult<Bound<'py, PyAny>> {
        let lock = self.lock.clone();
        let op = match what {
            "is_still_owner" => 0,
            "break_" => 1,
            "heartbeat" => 2,
            other => return Err(to_py(Error::InvalidArgument(format!("no lock call {other:?}")))),
        };
        let (future, _) = aio::spawn(py, async move {
            let answer = match op {
                0 => lock.is_still_owner().await,
                1 => lock.break_().await,
                _ => lock.heartbeat().await,
            };
            aio::Outcome::from(answer.map(Reply::Bool))
        })?;
        Ok(future)
    }

    fn release(&self, py: Python<'_>) -> PyResult<bool> {
        let lock = self.lock.clone();
        if green::active(py) {
            return wait_call(py, async move { lock.release().await });
        }
        py.detach(|| lock.release_here().unwrap_or_else(|| runtime::block_on(lock.release()))).map_err(to_py)
    }

    fn break_(&self, py: Python<'_>) -> PyResult<bool> {
        let lock = self.lock.clone();
        wait_call(py, async move { lock.break_().await })
    }

    fn is_still_owner(&self, py: Python<'_>) -> PyResult<bool> {
        let lock = self.lock.clone();
        wait_call(py, async move { lock.is_still_owner().await })
    }

    fn heartbeat(&self, py: Python<'_>) -> PyResult<bool> {
        let lock = self.lock.clone();
        wait_call(py, async move { lock.heartbeat().await })
    }

    /// The fencing token of the last successful acquire (no I/O).
    #[getter]
    fn fencing_token(&self) -> Option<u64> {
        self.lock.fencing_token()
    }

    /// Calls ``callback()`` (on a thread of ours) when a holding turns out lost.
    fn on_lost(&self, callback: Py<PyAny>) {
        let callback = Arc::new(callback);
        self.lock.on_lost(Arc::new(move || worker::submit(worker::Job::Call(callback.clone()))));
    }

    fn get_owner<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let lock = self.lock.clone();
        let owner = wait_call(py, async move { lock.get_owner().await })?;
        Ok(owner.map(|id| id_to_py(py, &id)))
    }
}
