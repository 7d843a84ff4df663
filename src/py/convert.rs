//! Python objects to and from the core's types: ids, msgpack values, ext types.
//!
//! Plain types (None, bool, int, float, str, bytes, list, tuple, dict) are converted here;
//! the oslo extension types (UUID, datetime, date, set, frozenset, itertools.count, ...) are
//! delegated to `tooz.utils._ext_pack` / `_ext_unpack`, which use this codec for nesting.

use pyo3::exceptions::PyRecursionError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use super::errors::to_py;
use crate::error::Error;
use crate::id::Id;
use crate::msgpack::{Value, MAX_DEPTH};

pub fn id_to_py<'py>(py: Python<'py>, id: &Id) -> Bound<'py, PyAny> {
    match id {
        Id::Bytes(b) => PyBytes::new(py, b).into_any(),
        Id::Text(s) => PyString::new(py, s).into_any(),
    }
}

/// A group/member/lock id: `bytes` or `str`, kept as given.
pub fn id_from_py(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Id> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Id::Bytes(b.as_bytes().to_vec()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return match s.to_cow() {
            Ok(s) => Ok(Id::Text(s.into_owned())),
            Err(_) => Err(to_py(Error::InvalidArgument(format!("{what} is not valid unicode")))),
        };
    }
    Err(to_py(Error::InvalidArgument(format!(
        "{what} must be bytes or str, not {}",
        obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()
    ))))
}

fn serialization(msg: String) -> PyErr {
    to_py(Error::Serialization(msg))
}

fn ext_hook<'py>(py: Python<'py>, cell: &'static PyOnceLock<Py<PyAny>>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    cell.import(py, "tooz.utils", name).cloned()
}

pub fn value_from_py(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    from_py(obj, 0)
}

fn from_py(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    if depth > MAX_DEPTH {
        return Err(serialization("Failed to serialize object: nesting is too deep".into()));
    }
    if obj.is_none() {
        return Ok(Value::Nil);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(Value::Int(i));
        }
        return obj
            .extract::<u64>()
            .map(Value::UInt)
            .map_err(|_| serialization("Failed to serialize object: integer out of range".into()));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(Value::Float(f.value()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        let s = s.to_cow().map_err(|e| serialization(format!("Failed to serialize object: {e}")))?;
        return Ok(Value::Str(s.into_owned()));
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Value::Bin(b.as_bytes().to_vec()));
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(Value::Bin(b.to_vec()));
    }
    if let Ok(l) = obj.cast::<PyList>() {
        return l.iter().map(|i| from_py(&i, depth + 1)).collect::<PyResult<_>>().map(Value::Array);
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        return t.iter().map(|i| from_py(&i, depth + 1)).collect::<PyResult<_>>().map(Value::Array);
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut items = Vec::with_capacity(d.len());
        for (k, v) in d.iter() {
            items.push((from_py(&k, depth + 1)?, from_py(&v, depth + 1)?));
        }
        return Ok(Value::Map(items));
    }
    static PACK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let (code, payload): (i8, Vec<u8>) = ext_hook(obj.py(), &PACK, "_ext_pack")?.call1((obj,))?.extract()?;
    Ok(Value::Ext(code, payload))
}

pub fn value_to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    to_py_value(py, v, 0)
}

fn to_py_value<'py>(py: Python<'py>, v: &Value, depth: usize) -> PyResult<Bound<'py, PyAny>> {
    if depth > MAX_DEPTH {
        return Err(PyRecursionError::new_err("value nests too deeply"));
    }
    Ok(match v {
        Value::Nil => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Int(i) => i.into_pyobject(py)?.into_any(),
        Value::UInt(u) => u.into_pyobject(py)?.into_any(),
        Value::Float(f) => PyFloat::new(py, *f).into_any(),
        Value::Str(s) => PyString::new(py, s).into_any(),
        Value::Bin(b) => PyBytes::new(py, b).into_any(),
        Value::Array(items) => {
            let out = PyList::empty(py);
            for i in items {
                out.append(to_py_value(py, i, depth + 1)?)?;
            }
            out.into_any()
        }
        Value::Map(items) => {
            let out = PyDict::new(py);
            for (k, item) in items {
                if !matches!(k, Value::Str(_) | Value::Bin(_)) {
                    return Err(serialization("Failed to deserialize object: map keys must be str or bytes".into()));
                }
                out.set_item(to_py_value(py, k, depth + 1)?, to_py_value(py, item, depth + 1)?)?;
            }
            out.into_any()
        }
        Value::Ext(code, payload) => {
            static UNPACK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
            ext_hook(py, &UNPACK, "_ext_unpack")?.call1((*code, PyBytes::new(py, payload)))?
        }
    })
}
