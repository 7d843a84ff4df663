//! The one mapping from the core's error enum onto the tooz exception tree.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use super::convert::id_to_py;
use crate::error::Error;

fn class<'py>(py: Python<'py>, cell: &'static PyOnceLock<Py<PyType>>, module: &str, name: &str) -> PyResult<Bound<'py, PyType>> {
    cell.import(py, module, name).cloned()
}

macro_rules! exc {
    ($py:expr, $module:literal, $name:literal) => {{
        static CELL: PyOnceLock<Py<PyType>> = PyOnceLock::new();
        class($py, &CELL, $module, $name)
    }};
}

fn build(py: Python<'_>, err: &Error) -> PyResult<PyErr> {
    let (cls, args): (Bound<'_, PyType>, Vec<Bound<'_, PyAny>>) = match err {
        Error::GroupNotCreated(g) => (exc!(py, "tooz.coordination", "GroupNotCreated")?, vec![id_to_py(py, g)]),
        Error::GroupAlreadyExist(g) => (exc!(py, "tooz.coordination", "GroupAlreadyExist")?, vec![id_to_py(py, g)]),
        Error::GroupNotEmpty(g) => (exc!(py, "tooz.coordination", "GroupNotEmpty")?, vec![id_to_py(py, g)]),
        Error::MemberAlreadyExist { group, member } => {
            (exc!(py, "tooz.coordination", "MemberAlreadyExist")?, vec![id_to_py(py, group), id_to_py(py, member)])
        }
        Error::MemberNotJoined { group, member } => {
            (exc!(py, "tooz.coordination", "MemberNotJoined")?, vec![id_to_py(py, group), id_to_py(py, member)])
        }
        Error::Connection(m) => (exc!(py, "tooz.coordination", "ToozConnectionError")?, vec![m.into_pyobject(py)?.into_any()]),
        Error::Timeout(m) => (exc!(py, "tooz.coordination", "OperationTimedOut")?, vec![m.into_pyobject(py)?.into_any()]),
        Error::Serialization(m) => (exc!(py, "tooz.utils", "SerializationError")?, vec![m.into_pyobject(py)?.into_any()]),
        Error::NotImplemented(m) => (exc!(py, "tooz", "NotImplemented")?, vec![m.into_pyobject(py)?.into_any()]),
        Error::InvalidArgument(m) => (exc!(py, "tooz.coordination", "ToozInvalidArgument")?, vec![m.into_pyobject(py)?.into_any()]),
        Error::Tooz(m) => (exc!(py, "tooz", "ToozError")?, vec![m.into_pyobject(py)?.into_any()]),
    };
    let args = pyo3::types::PyTuple::new(py, args)?;
    Ok(PyErr::from_value(cls.call1(args)?))
}

/// The tooz exception for `err` (or whatever went wrong building it).
pub fn to_py(err: Error) -> PyErr {
    Python::attach(|py| build(py, &err).unwrap_or_else(|e| e))
}
