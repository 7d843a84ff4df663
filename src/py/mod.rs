//! The PyO3 binding: `tooz._tooz`. Everything Python-facing lives under `src/py/`.

mod convert;
mod errors;
mod hashring;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PySet};

use crate::coordinator::{Coordinator, Pending};
use crate::driver::{DriverLock, MemberInfo, Op, Wait};
use crate::drivers::{self, Options, Url};
use crate::error::Error;
use crate::id::Id;
use crate::msgpack::{self, Value};
use crate::runtime;
use convert::{id_from_py, id_to_py, value_from_py, value_to_py};
use errors::to_py;

/// How often a blocked call wakes to let Python deliver signals (Ctrl-C).
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

#[derive(Clone)]
enum Reply {
    Unit,
    List(Vec<Id>),
    Set(Vec<Id>),
    Caps(Value),
    MembersCaps(Vec<(Id, Value)>),
    Info(MemberInfo),
    Leader(Option<Id>),
}

impl Reply {
    fn into_py(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
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
        })
    }
}

/// The asynchronous result of a coordinator call (registered as a `CoordAsyncResult`).
#[pyclass(frozen, module = "tooz._tooz", name = "AsyncResult")]
struct PyAsyncResult {
    pending: Pending<Reply>,
}

#[pymethods]
impl PyAsyncResult {
    /// Waits for the call and returns its value (or raises its tooz exception).
    #[pyo3(signature = (timeout=None))]
    fn get(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
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
}

#[pyclass(frozen, module = "tooz._tooz", name = "Coordinator")]
struct PyCoordinator {
    core: Coordinator,
    member: Id,
}

impl PyCoordinator {
    fn check(&self, op: Op) -> PyResult<()> {
        if self.core.driver().supports(op) {
            Ok(())
        } else {
            Err(to_py(Error::NotImplemented(format!("{} is not implemented by this backend", op.name()))))
        }
    }

    fn submit<F, Fut>(&self, op: Op, call: F) -> PyResult<PyAsyncResult>
    where
        F: FnOnce(Arc<dyn crate::driver::Driver>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = crate::error::Result<Reply>> + Send + 'static,
    {
        self.check(op)?;
        Ok(PyAsyncResult { pending: self.core.submit(call) })
    }

    fn run<T: Send>(&self, py: Python<'_>, f: impl std::future::Future<Output = crate::error::Result<T>> + Send) -> PyResult<T> {
        py.detach(|| runtime::block_on(f)).map_err(to_py)
    }
}

#[pymethods]
impl PyCoordinator {
    #[new]
    #[pyo3(signature = (scheme, member_id, path, host=None, port=None, username=None, password=None, options=HashMap::new()))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        scheme: String,
        member_id: &Bound<'_, PyAny>,
        path: String,
        host: Option<String>,
        port: Option<u16>,
        username: Option<String>,
        password: Option<String>,
        options: HashMap<String, String>,
    ) -> PyResult<Self> {
        let member = id_from_py(member_id, "member_id")?;
        let url = Url { scheme, host, port, path, username, password };
        let driver = drivers::build(&url, member.clone(), &Options::new(options)).map_err(to_py)?;
        Ok(PyCoordinator { core: Coordinator::new(driver), member })
    }

    #[getter]
    fn member_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        id_to_py(py, &self.member)
    }

    fn supports(&self, op: &str) -> bool {
        const ALL: &[Op] = &[
            Op::CreateGroup, Op::DeleteGroup, Op::GetGroups, Op::JoinGroup, Op::LeaveGroup, Op::GetMembers,
            Op::GetMemberCapabilities, Op::GetMembersWithCapabilities, Op::UpdateCapabilities,
            Op::GetMemberInfo, Op::GetLeader, Op::StandDownGroupLeader, Op::Elect, Op::WatchMembers,
        ];
        ALL.iter().any(|o| o.name() == op && self.core.driver().supports(*o))
    }

    fn requires_beating(&self) -> bool {
        self.core.driver().requires_beating()
    }

    fn start(&self, py: Python<'_>) -> PyResult<()> {
        let driver = self.core.driver().clone();
        self.run(py, async move { driver.start().await })
    }

    /// Stops the driver once every call submitted before has finished.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let pending = self.core.submit(|d| async move { d.stop().await });
        py.detach(move || pending.wait(None)).unwrap_or(Ok(())).map_err(to_py)
    }

    fn heartbeat(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        let driver = self.core.driver().clone();
        self.run(py, async move { driver.heartbeat().await })
    }

    fn create_group(&self, group_id: &Bound<'_, PyAny>) -> PyResult<PyAsyncResult> {
        let g = id_from_py(group_id, "group_id")?;
        self.submit(Op::CreateGroup, move |d| async move { d.create_group(&g).await.map(|_| Reply::Unit) })
    }

    fn delete_group(&self, group_id: &Bound<'_, PyAny>) -> PyResult<PyAsyncResult> {
        let g = id_from_py(group_id, "group_id")?;
        self.submit(Op::DeleteGroup, move |d| async move { d.delete_group(&g).await.map(|_| Reply::Unit) })
    }

    /// Removes a group's record behind its members' backs (upstream's `_destroy_group`).
    fn destroy_group(&self, py: Python<'_>, group_id: &Bound<'_, PyAny>) -> PyResult<()> {
        let g = id_from_py(group_id, "group_id")?;
        let driver = self.core.driver().clone();
        self.run(py, async move { driver.destroy_group(&g).await })
    }

    fn get_groups(&self) -> PyResult<PyAsyncResult> {
        self.submit(Op::GetGroups, move |d| async move { d.get_groups().await.map(Reply::List) })
    }

    #[pyo3(signature = (group_id, capabilities=None))]
    fn join_group(&self, group_id: &Bound<'_, PyAny>, capabilities: Option<&Bound<'_, PyAny>>) -> PyResult<PyAsyncResult> {
        let g = id_from_py(group_id, "group_id")?;
        let caps = capabilities.map(value_from_py).transpose()?.unwrap_or(Value::Nil);
        self.submit(Op::JoinGroup, move |d| async move { d.join_group(&g, &caps).await.map(|_| Reply::Unit) })
    }

    fn leave_group(&self, group_id: &Bound<'_, PyAny>) -> PyResult<PyAsyncResult> {
        let g = id_from_py(group_id, "group_id")?;
        self.submit(Op::LeaveGroup, move |d| async move { d.leave_group(&g).await.map(|_| Reply::Unit) })
    }

    fn get_members(&self, group_id: &Bound<'_, PyAny>) -> PyResult<PyAsyncResult> {
        let g = id_from_py(group_id, "group_id")?;
        self.submit(Op::GetMembers, move |d| async move { d.get_members(&g).await.map(Reply::Set) })
    }

    fn get_member_capabilities(&self, group_id: &Bound<'_, PyAny>, member_id: &Bound<'_, PyAny>) -> PyResult<PyAsyncResult> {
        let g = id_from_py(group_id, "group_id")?;
        let m = id_from_py(member_id, "member_id")?;
        self.submit(Op::GetMemberCapabilities, move |d| async move {
            d.get_member_capabilities(&g, &m).await.map(Reply::Caps)
        })
    }

    fn get_members_with_capabilities(&self, group_id: &Bound<'_, PyAny>) -> PyResult<PyAsyncResult> {
        let g = id_from_py(group_id, "group_id")?;
        self.submit(Op::GetMembersWithCapabilities, move |d| async move {
            d.get_members_with_capabilities(&g).await.map(Reply::MembersCaps)
        })
    }

    fn update_capabilities(&self, group_id: &Bound<'_, PyAny>, capabilities: &Bound<'_, PyAny>) -> PyResult<PyAsyncResult> {
        let g = id_from_py(group_id, "group_id")?;
        let caps = value_from_py(capabilities)?;
        self.submit(Op::UpdateCapabilities, move |d| async move {
            d.update_capabilities(&g, &caps).await.map(|_| Reply::Unit)
        })
    }

    fn get_member_info(&self, group_id: &Bound<'_, PyAny>, member_id: &Bound<'_, PyAny>) -> PyResult<PyAsyncResult> {
        let g = id_from_py(group_id, "group_id")?;
        let m = id_from_py(member_id, "member_id")?;
        self.submit(Op::GetMemberInfo, move |d| async move { d.get_member_info(&g, &m).await.map(Reply::Info) })
    }

    fn get_leader(&self, group_id: &Bound<'_, PyAny>) -> PyResult<PyAsyncResult> {
        let g = id_from_py(group_id, "group_id")?;
        self.submit(Op::GetLeader, move |d| async move { d.get_leader(&g).await.map(Reply::Leader) })
    }

    fn stand_down_group_leader(&self, py: Python<'_>, group_id: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.check(Op::StandDownGroupLeader)?;
        let g = id_from_py(group_id, "group_id")?;
        let driver = self.core.driver().clone();
        self.run(py, async move { driver.stand_down_group_leader(&g).await })
    }

    /// One election attempt per group; returns the groups this member just became leader of.
    fn elect<'py>(&self, py: Python<'py>, group_ids: Vec<Bound<'py, PyAny>>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        self.check(Op::Elect)?;
        let groups = group_ids.iter().map(|g| id_from_py(g, "group_id")).collect::<PyResult<Vec<_>>>()?;
        let driver = self.core.driver().clone();
        let won = self.run(py, async move {
            let mut won = Vec::new();
            for (i, g) in groups.iter().enumerate() {
                if driver.elect(g).await? {
                    won.push(i);
                }
            }
            Ok(won)
        })?;
        Ok(won.into_iter().map(|i| group_ids[i].clone()).collect())
    }

    fn get_lock(&self, name: &Bound<'_, PyAny>) -> PyResult<PyLock> {
        let name = id_from_py(name, "lock name")?;
        let lock = self.core.driver().lock(name.as_bytes()).map_err(to_py)?;
        Ok(PyLock { lock })
    }

    // -------------------------------------------------------- heartbeat task

    fn start_heart(&self) {
        self.core.start_heart()
    }

    fn stop_heart(&self) {
        self.core.stop_heart()
    }

    fn heart_alive(&self) -> bool {
        self.core.heart_alive()
    }

    fn heart_beats(&self) -> u64 {
        self.core.heart_beats()
    }

    #[pyo3(signature = (timeout=None))]
    fn wait_heart(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = timeout.map(|t| std::time::Instant::now() + Duration::from_secs_f64(t.max(0.0)));
        loop {
            let slice = deadline.map_or(SIGNAL_CHECK, |d| d.saturating_duration_since(std::time::Instant::now()).min(SIGNAL_CHECK));
            let alive = py.detach(|| self.core.wait_heart(Some(slice)));
            if !alive || deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Ok(alive);
            }
            py.check_signals()?;
        }
    }
}

/// `utils.convert_blocking`: a real bool is (blocking, timeout); anything else is a timeout.
fn wait_from(blocking: &Bound<'_, PyAny>, timeout: Option<f64>) -> PyResult<Wait> {
    let (blocking, timeout) = match blocking.downcast::<pyo3::types::PyBool>() {
        Ok(b) => (b.is_true(), timeout),
        Err(_) => (true, Some(blocking.extract::<f64>()?)),
    };
    Ok(match (blocking, timeout) {
        (false, _) => Wait::No,
        (true, None) => Wait::Forever,
        (true, Some(t)) if t.is_nan() => Wait::Forever,
        (true, Some(t)) => Wait::For(Duration::from_secs_f64(t.clamp(0.0, 1e9))),
    })
}

#[pyclass(frozen, module = "tooz._tooz", name = "Lock")]
struct PyLock {
    lock: Arc<dyn DriverLock>,
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
        let wait = match blocking {
            None => wait_from(&pyo3::types::PyBool::new(py, true).to_owned().into_any(), timeout)?,
            Some(b) => wait_from(b, timeout)?,
        };
        let lock = self.lock.clone();
        // Fast path: one attempt, no task.
        let first = py.detach(|| runtime::block_on(lock.acquire(Wait::No, shared))).map_err(to_py)?;
        if first || wait == Wait::No {
            return Ok(first);
        }
        // Wait on the runtime, waking regularly so Ctrl-C reaches Python.
        let task_lock = lock.clone();
        let mut task = runtime::runtime().spawn(async move { task_lock.acquire(wait, shared).await });
        loop {
            let done = py.detach(|| runtime::block_on(async { tokio::time::timeout(SIGNAL_CHECK, &mut task).await.ok() }));
            if let Some(joined) = done {
                return joined.map_err(|e| to_py(Error::Tooz(format!("lock wait failed: {e}"))))?.map_err(to_py);
            }
            if let Err(interrupted) = py.check_signals() {
                task.abort();
                let outcome = py.detach(|| runtime::block_on(&mut task));
                if let Ok(Ok(true)) = outcome {
                    let _ = py.detach(|| runtime::block_on(lock.release()));
                }
                return Err(interrupted);
            }
        }
    }

    fn release(&self, py: Python<'_>) -> PyResult<bool> {
        let lock = self.lock.clone();
        py.detach(|| runtime::block_on(lock.release())).map_err(to_py)
    }

    fn break_(&self, py: Python<'_>) -> PyResult<bool> {
        let lock = self.lock.clone();
        py.detach(|| runtime::block_on(lock.break_())).map_err(to_py)
    }

    fn is_still_owner(&self, py: Python<'_>) -> PyResult<bool> {
        let lock = self.lock.clone();
        py.detach(|| runtime::block_on(lock.is_still_owner())).map_err(to_py)
    }

    fn heartbeat(&self, py: Python<'_>) -> PyResult<bool> {
        let lock = self.lock.clone();
        py.detach(|| runtime::block_on(lock.heartbeat())).map_err(to_py)
    }
}

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
    m.add_class::<PyCoordinator>()?;
    m.add_class::<PyAsyncResult>()?;
    m.add_class::<PyLock>()?;
    m.add_class::<hashring::PyHashRing>()?;
    m.add_function(wrap_pyfunction!(dumps, m)?)?;
    m.add_function(wrap_pyfunction!(loads, m)?)?;
    Ok(())
}
