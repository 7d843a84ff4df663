//! Rust futures as asyncio awaitables (`tooz.aio`), through pyo3-async-runtimes' generic
//! layer on *our* runtime: `runtime::runtime()` is rebuilt in a forked child, so the adapter
//! asks for it on every spawn instead of keeping one.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pyo3::prelude::*;
use pyo3_async_runtimes::generic::{self, ContextExt, JoinError, Runtime};
use pyo3_async_runtimes::TaskLocals;

use crate::runtime;

pub struct Rt;

pub struct Join(tokio::task::JoinError);

impl JoinError for Join {
    fn is_panic(&self) -> bool {
        self.0.is_panic()
    }

    fn into_panic(self) -> Box<dyn std::any::Any + Send + 'static> {
        self.0.into_panic()
    }
}

pub struct Handle(tokio::task::JoinHandle<()>);

impl Future for Handle {
    type Output = Result<(), Join>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map_err(Join)
    }
}

impl Runtime for Rt {
    type JoinError = Join;
    type JoinHandle = Handle;

    fn spawn<F>(fut: F) -> Handle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        Handle(runtime::runtime().spawn(fut))
    }
}

tokio::task_local! {
    static TASK_LOCALS: std::cell::OnceCell<TaskLocals>;
}

impl ContextExt for Rt {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        let cell = std::cell::OnceCell::new();
        let _ = cell.set(locals);
        Box::pin(TASK_LOCALS.scope(cell, fut))
    }

    fn get_task_locals() -> Option<TaskLocals> {
        TASK_LOCALS
            .try_with(|cell| cell.get().map(|locals| Python::attach(|py| locals.clone_ref(py))))
            .unwrap_or_default()
    }
}

/// An asyncio future of the running loop that resolves to what `fut` gives. Cancelling it
/// drops `fut` (which must leave nothing behind when dropped: see `crate::acquire`).
pub fn awaitable<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let locals = generic::get_current_locals::<Rt>(py)?;
    generic::future_into_py_with_locals::<Rt, F, T>(py, locals, fut)
}
