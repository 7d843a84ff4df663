//! `tooz._tooz.AsyncResult`: the result of a submitted coordinator call (upstream's
//! `CoordAsyncResult`), waited for with a timeout, in the hub, or as an asyncio future; and
//! [`Reply`], the values such a call gives Python.

use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PySet};

use crate::coordinator::Pending;
use crate::driver::MemberInfo;
use crate::error::Error;
use crate::id::Id;
use crate::msgpack::Value;
use super::convert::{id_to_py, value_to_py};
use super::errors::to_py;
use super::{aio, green};
use super::wait::SIGNAL_CHECK;

#[derive(Clone)]
pub(crate) enum Reply {
    Unit,
    List(Vec<Id>),
    Set(Vec<Id>),
    Caps(Value),
    MembersCaps(Vec<(Id, Value)>),
    Info(MemberInfo),
    Leader(Option<Id>),
    Bool(bool),
    Float(Option<f64>),
}

impl Reply {
    pub(crate) fn into_py(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(match self {
            Reply::Unit => py.None(),
            Reply::List(ids) => PyList::new(py, ids.iter().map(|i| id_to_py(py, i)))?.into_any().unbind(),
            Reply::Set(ids) => PySet::new(py, ids.iter().map(|i| id_to_py(py, i)))?.into_any().unbind(),
            Reply::Caps(v) => value_to_py(py, &v)?.unbind(),
            Reply::MembersCaps(items) => {
                let d = PyDict::new(py);
                for (id, caps) in items {
                    d.set_item(id_to_py(py, &id), value_to_py(py, &caps)?)?;
                }
                d.into_any().unbind()
            }
            Reply::Info(info) => {
                let datetime = py.import("datetime")?.getattr("datetime")?;
                let d = PyDict::new(py);
                d.set_item("capabilities", value_to_py(py, &info.capabilities)?)?;
                d.set_item("created_at", datetime.call_method1("fromtimestamp", (info.created_at,))?)?;
                d.set_item("updated_at", datetime.call_method1("fromtimestamp", (info.updated_at,))?)?;
                d.into_any().unbind()
            }
            Reply::Leader(id) => match id {
                Some(id) => id_to_py(py, &id).unbind(),
                None => py.None(),
            },
            Reply::Bool(b) => pyo3::types::PyBool::new(py, b).to_owned().into_any().unbind(),
            Reply::Float(f) => f.into_pyobject(py)?.unbind(),
        })
    }
}

/// The asynchronous result of a coordinator call (registered as a `CoordAsyncResult`).
#[pyclass(frozen, module = "tooz._tooz", name = "AsyncResult")]
pub(super) struct PyAsyncResult {
    pub(super) pending: Pending<Reply>,
}

#[pymethods]
impl PyAsyncResult {
    /// Waits for the call and returns its value (or raises its tooz exception).
    #[pyo3(signature = (timeout=None))]
    fn get(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        if green::active(py) {
            let pending = self.pending.clone();
            return match green::wait_for(py, async move { pending.wait_async().await }, timeout, green::Left::Abort, |_| {})? {
                Some(result) => result.map_err(to_py)?.into_py(py),
                None => Err(to_py(Error::Timeout("Operation timed out".into()))),
            };
        }
        let deadline = timeout.map(|t| std::time::Instant::now() + Duration::from_secs_f64(t.max(0.0)));
        loop {
            let slice = match deadline {
                Some(d) => d.saturating_duration_since(std::time::Instant::now()).min(SIGNAL_CHECK),
                None => SIGNAL_CHECK,
            };
            let pending = self.pending.clone();
            if let Some(result) = py.detach(move || pending.wait(Some(slice))) {
                return result.map_err(to_py)?.into_py(py);
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Err(to_py(Error::Timeout("Operation timed out".into())));
            }
            py.check_signals()?;
        }
    }

    fn done(&self) -> bool {
        self.pending.is_done()
    }

    /// An asyncio future of the running loop with the call's value (``tooz.aio``).
    fn wait_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let pending = self.pending.clone();
        let (future, _) = aio::spawn(py, async move {
            aio::Outcome::from(pending.wait_async().await)
        })?;
        Ok(future)
    }
}
