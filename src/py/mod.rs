//! The PyO3 binding: `tooz._tooz`. Everything Python-facing lives under `src/py/`.

mod aio;
mod convert;
mod errors;
mod gate;
mod green;
mod hashring;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PySet};

use crate::acquire::{Acquire, AcquireHere};
use crate::coordinator::{Coordinator, Pending};
use crate::driver::{DriverLock, MemberInfo, Op, Wait};
use crate::drivers::{self, Options, Url};
use crate::error::Error;
use crate::id::Id;
use crate::membership::Membership;
use crate::msgpack::{self, Value};
use crate::runtime;
use convert::{id_from_py, id_to_py, value_from_py, value_to_py};
use errors::to_py;

/// How often a blocked call wakes to let Python deliver signals (Ctrl-C).
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

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
struct PyAsyncResult {
    pending: Pending<Reply>,
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


/// A positive number of seconds given by Python, as a `Duration`.
fn seconds(value: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| to_py(Error::InvalidArgument(format!("{what} must be a positive number of seconds, not {value}"))))
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
        if !self.core.membership().is_started() {
            // As upstream, whose calls go to an executor that exists only while started.
            return Err(to_py(crate::error::Error::Tooz(format!(
                "{} cannot be called on a coordinator that is not started (start() it first)",
                op.name()
            ))));
        }
        Ok(PyAsyncResult { pending: self.core.submit(call) })
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
        let options = Options::new(options);
        // Beyond upstream: memberships the backend lost are re-joined (`rejoin=false`: not).
        let membership = Membership::new(member.clone(), &scheme, options.bool("rejoin", true));
        let url = Url { scheme, host, port, path, username, password };
        let driver = drivers::build(&url, member.clone(), &options).map_err(to_py)?;
        Ok(PyCoordinator { core: Coordinator::new(driver, membership), member })
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
        wait_call(py, async move { driver.start().await })?;
        self.core.membership().started(self.core.driver().as_ref());
        self.core.mark_started();
        Ok(())
    }

    // ---------------------------------------- calls of the blocking API, as results (tooz.aio)

    fn start_async(&self) -> PyAsyncResult {
        let m = self.core.membership().clone();
        let core = self.core.clone();
        PyAsyncResult {
            pending: self.core.submit(move |d| async move {
                d.start().await?;
                m.started(d.as_ref());
                core.mark_started();
                Ok(Reply::Unit)
            }),
        }
    }

    /// Leaves what is joined (failures ignored), then stops the driver; in a forked child of
    /// the process that started it, only what the child took (see `stop`).
    fn stop_async(&self) -> PyAsyncResult {
        PyAsyncResult { pending: self.core.submit_stop(true, Reply::Unit) }
    }

    fn heartbeat_async(&self) -> PyAsyncResult {
        PyAsyncResult { pending: self.core.submit(|d| async move { d.heartbeat().await.map(Reply::Float) }) }
    }

    fn stand_down_group_leader_async(&self, group_id: &Bound<'_, PyAny>) -> PyResult<PyAsyncResult> {
        let g = id_from_py(group_id, "group_id")?;
        self.submit(Op::StandDownGroupLeader, move |d| async move { d.stand_down_group_leader(&g).await.map(Reply::Bool) })
    }

    /// One election attempt per group; the result lists the groups just won.
    fn elect_async(&self, group_ids: Vec<Bound<'_, PyAny>>) -> PyResult<PyAsyncResult> {
        let groups = group_ids.iter().map(|g| id_from_py(g, "group_id")).collect::<PyResult<Vec<_>>>()?;
        self.submit(Op::Elect, move |d| async move {
            let mut won = Vec::new();
            for g in groups {
                if d.elect(&g).await? {
                    won.push(g);
                }
            }
            Ok(Reply::List(won))
        })
    }

    /// For ``tooz.aio.watch_group``: (an asyncio future of the members of `group_id` once
    /// they differ from `known`, a cancel function). Runs beside the ordered calls (it may
    /// wait long), pushed by backends that push and polled every `poll` seconds by the others.
    fn next_members_async<'py>(&self, py: Python<'py>, group_id: &Bound<'py, PyAny>, known: Vec<Bound<'py, PyAny>>, poll: f64) -> PyResult<(Bound<'py, PyAny>, aio::Cancel)> {
        self.check(Op::GetMembers)?;
        let g = id_from_py(group_id, "group_id")?;
        let known = known.iter().map(|m| id_from_py(m, "member_id")).collect::<PyResult<Vec<_>>>()?;
        let poll = seconds(poll, "interval")?;
        let driver = self.core.driver().clone();
        let (future, task) = aio::spawn(py, async move {
            aio::Outcome::from(driver.next_members(&g, &known, poll).await.map(Reply::Set))
        })?;
        Ok((future, aio::Cancel { task }))
    }

    /// For ``tooz.aio.campaign``: (an asyncio future resolved when the leadership of
    /// `group_id` may have changed, at most `poll` seconds later; a cancel function). Runs
    /// beside the ordered calls.
    fn wait_leader_change_async<'py>(&self, py: Python<'py>, group_id: &Bound<'py, PyAny>, poll: f64) -> PyResult<(Bound<'py, PyAny>, aio::Cancel)> {
        self.check(Op::Elect)?;
        let g = id_from_py(group_id, "group_id")?;
        let poll = seconds(poll, "interval")?;
        let driver = self.core.driver().clone();
        let (future, task) = aio::spawn(py, async move {
            aio::Outcome::from(driver.wait_leader_change(&g, poll).await.map(|()| Reply::Unit))
        })?;
        Ok((future, aio::Cancel { task }))
    }

    /// The groups this coordinator has joined and not left, as far as it knows (no I/O).
    fn joined_groups<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyAny>> {
        self.core.membership().groups().iter().map(|g| id_to_py(py, g)).collect()
    }

    fn is_joined(&self, group_id: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(self.core.membership().contains(&id_from_py(group_id, "group_id")?))
    }

    /// Records a membership made behind the core's back (``_joined_groups.add``).
    fn note_joined(&self, group_id: &Bound<'_, PyAny>) -> PyResult<()> {
        let g = id_from_py(group_id, "group_id")?;
        self.core.membership().add(&g, self.core.driver().epoch());
        Ok(())
    }

    fn forget_joined(&self, group_id: &Bound<'_, PyAny>) -> PyResult<()> {
        self.core.membership().forget(&id_from_py(group_id, "group_id")?);
        Ok(())
    }

    fn clear_joined(&self) {
        self.core.membership().clear()
    }

    /// A watcher saw this member missing from the group: after any pending heal, look again
    /// and forget the group if it is really gone. Returns whether it was.
    fn booted_out(&self, py: Python<'_>, group_id: &Bound<'_, PyAny>) -> PyResult<bool> {
        let g = id_from_py(group_id, "group_id")?;
        let membership = self.core.membership().clone();
        let pending = self.core.submit(move |d| async move { membership.confirm_absent(d.as_ref(), &g).await });
        settle(py, pending)?.unwrap_or(Ok(true)).map_err(to_py)
    }

    /// Leaves every joined group, after every call submitted before; failures are ignored
    /// (stop's clean-up, as upstream's).
    fn leave_joined(&self, py: Python<'_>) {
        let _ = settle(py, self.core.submit_leave_joined());
    }

    /// Stops the driver once every call submitted before has finished. In a forked child of
    /// the process that started the coordinator (a pre-fork worker), only the child's part:
    /// its locks are released, the parent's session and locks are left alone.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        settle(py, self.core.submit_stop(false, ()))?.unwrap_or(Ok(())).map_err(to_py)
    }

    fn heartbeat(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        let driver = self.core.driver().clone();
        wait_call(py, async move { driver.heartbeat().await })
    }

    fn create_group(&self, group_id: &Bound<'_, PyAny>) -> PyResult<PyAsyncResult> {
        let g = id_from_py(group_id, "group_id")?;
        self.submit(Op::CreateGroup, move |d| async move { d.create_group(&g).await.map(|_| Reply::Unit) })
    }

    fn delete_group(&self, group_id: &Bound<'_, PyAny>) -> PyResult<PyAsyncResult> {
        let g = id_from_py(group_id, "group_id")?;
        self.submit(Op::DeleteGroup, move |d| async move { d.delete_group(&g).await.map(|_| Reply::Unit) })
    }

    /// Upstream's `_destroy_group` (a test helper): blocks until done.
    fn destroy_group(&self, py: Python<'_>, group_id: &Bound<'_, PyAny>) -> PyResult<()> {
        let g = id_from_py(group_id, "group_id")?;
        let pending = self.core.submit(move |d| async move { d.destroy_group(&g).await });
        settle(py, pending)?.unwrap_or(Ok(())).map_err(to_py)
    }

    fn get_groups(&self) -> PyResult<PyAsyncResult> {
        self.submit(Op::GetGroups, move |d| async move { d.get_groups().await.map(Reply::List) })
    }

    #[pyo3(signature = (group_id, capabilities=None))]
    fn join_group(&self, group_id: &Bound<'_, PyAny>, capabilities: Option<&Bound<'_, PyAny>>) -> PyResult<PyAsyncResult> {
        let g = id_from_py(group_id, "group_id")?;
        let caps = capabilities.map(value_from_py).transpose()?.unwrap_or(Value::Nil);
        let m = self.core.membership().clone();
        self.submit(Op::JoinGroup, move |d| async move { m.join(d.as_ref(), &g, &caps).await.map(|_| Reply::Unit) })
    }

    fn leave_group(&self, group_id: &Bound<'_, PyAny>) -> PyResult<PyAsyncResult> {
        let g = id_from_py(group_id, "group_id")?;
        let m = self.core.membership().clone();
        self.submit(Op::LeaveGroup, move |d| async move { m.leave(d.as_ref(), &g).await.map(|_| Reply::Unit) })
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
        let m = self.core.membership().clone();
        self.submit(Op::UpdateCapabilities, move |d| async move {
            m.update_capabilities(d.as_ref(), &g, &caps).await.map(|_| Reply::Unit)
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
        wait_call(py, async move { driver.stand_down_group_leader(&g).await })
    }

    /// One election attempt per group; returns the groups this member just became leader of.
    fn elect<'py>(&self, py: Python<'py>, group_ids: Vec<Bound<'py, PyAny>>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        self.check(Op::Elect)?;
        let groups = group_ids.iter().map(|g| id_from_py(g, "group_id")).collect::<PyResult<Vec<_>>>()?;
        let driver = self.core.driver().clone();
        let won = wait_call(py, async move {
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
        Ok(PyLock { lock, core: self.core.clone() })
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
        if green::active(py) {
            // Until the heart stops, polled on the runtime while this greenthread waits.
            let core = self.core.clone();
            let stopped = async move {
                while core.wait_heart(Some(Duration::ZERO)) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            return Ok(green::wait_for(py, stopped, timeout, green::Left::Abort, |_| {})?.is_none());
        }
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
/// No `blocking` at all is `True`.
fn wait_from(blocking: Option<&Bound<'_, PyAny>>, timeout: Option<f64>) -> PyResult<Wait> {
    let (blocking, timeout) = match blocking.map(|b| (b, b.downcast::<pyo3::types::PyBool>())) {
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
struct PyLock {
    lock: Arc<dyn DriverLock>,
    /// Its coordinator: in a pre-fork worker, an acquire first makes sure the worker keeps
    /// its own leases alive (`Coordinator::keep_leases`).
    core: Coordinator,
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

/// A call that needs no undoing, run to its end (waited for in the hub in a green process).
fn wait_call<T: Send + 'static>(
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
fn settle<T: Clone + Send + 'static>(py: Python<'_>, pending: Pending<T>) -> PyResult<Option<crate::error::Result<T>>> {
    if green::active(py) {
        // The call itself runs on as a task of its own; only this wait for it is dropped.
        return green::wait(py, async move { pending.wait_async().await }, green::Left::Abort, |_| {}).map(Some);
    }
    Ok(py.detach(move || pending.wait(None)))
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
    crate::log::on_emit(worker::records_waiting);
    gate::install(m)?;
    m.add_class::<PyCoordinator>()?;
    m.add_class::<PyAsyncResult>()?;
    m.add_class::<PyLock>()?;
    m.add_class::<hashring::PyHashRing>()?;
    m.add_function(wrap_pyfunction!(dumps, m)?)?;
    m.add_function(wrap_pyfunction!(loads, m)?)?;
    Ok(())
}
