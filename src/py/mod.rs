//! The PyO3 binding: `tooz._tooz`. Everything Python-facing lives under `src/py/`: one file
//! per class it binds (`coordinator.rs`, `lock.rs`, `result.rs`, `hashring.rs`), how a call
//! waits for the core (`wait.rs`, `green.rs` in an eventlet process, `aio.rs` for asyncio,
//! `gate.rs`), conversions (`convert.rs`, `errors.rs`), and the thread that runs Python for
//! the core (`worker.rs`). This file registers them, with `utils.dumps`/`loads`.

mod aio;
mod convert;
mod coordinator;
mod errors;
mod gate;
mod green;
mod hashring;
mod lock;
mod result;
mod wait;
mod worker;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::msgpack;
use convert::{value_from_py, value_to_py};
use errors::to_py;

/// `tooz.utils.dumps`: oslo msgpack encoding.
#[pyfunction]
fn dumps<'py>(py: Python<'py>, obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(py, &msgpack::encode(&value_from_py(obj)?)))
}

/// `tooz.utils.loads`: oslo msgpack decoding.
#[pyfunction]
fn loads<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let v = msgpack::decode(data).map_err(to_py)?;
    value_to_py(py, &v)
}

#[pymodule]
fn _tooz(m: &Bound<'_, PyModule>) -> PyResult<()> {
    crate::log::on_emit(worker::records_waiting);
    gate::install(m)?;
    m.add_class::<coordinator::PyCoordinator>()?;
    m.add_class::<result::PyAsyncResult>()?;
    m.add_class::<lock::PyLock>()?;
    m.add_class::<hashring::PyHashRing>()?;
    m.add_function(wrap_pyfunction!(dumps, m)?)?;
    m.add_function(wrap_pyfunction!(loads, m)?)?;
    Ok(())
}
