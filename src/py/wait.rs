//! How a Python call waits for the core: with the GIL released, waking every
//! [`SIGNAL_CHECK`] for Python's signal handlers; in an eventlet process, in the hub.

use std::time::Duration;

use pyo3::prelude::*;

use crate::coordinator::Pending;
use crate::runtime;
use super::errors::to_py;
use super::green;

/// How often a blocked call wakes to let Python deliver signals (Ctrl-C).
pub(super) const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// A call that needs no undoing, run to its end (waited for in the hub in a green process).
pub(super) fn wait_call<T: Send + 'static>(
    py: Python<'_>,
    f: impl std::future::Future<Output = crate::error::Result<T>> + Send + 'static,
) -> PyResult<T> {
    if green::active(py) {
        return green::wait(py, f, green::Left::Finish, |_| {})?.map_err(to_py);
    }
    py.detach(|| runtime::block_on(f)).map_err(to_py)
}

/// The result of a submitted call, waited for without a time limit (in the hub in a green
/// process).
pub(super) fn settle<T: Clone + Send + 'static>(py: Python<'_>, pending: Pending<T>) -> PyResult<Option<crate::error::Result<T>>> {
    if green::active(py) {
        // The call itself runs on as a task of its own; only this wait for it is dropped.
        return green::wait(py, async move { pending.wait_async().await }, green::Left::Abort, |_| {}).map(Some);
    }
    Ok(py.detach(move || pending.wait(None)))
}
