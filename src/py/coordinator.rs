//! `tooz._tooz.Coordinator`: one coordinator of the core, its calls as upstream's driver
//! methods (submitted calls give a `result::PyAsyncResult`; `get_lock` a `lock::PyLock`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;

use crate::coordinator::Coordinator;
use crate::driver::Op;
use crate::drivers::{self, Options, Url};
use crate::error::Error;
use crate::id::Id;
use crate::membership::Membership;
use crate::msgpack::Value;
use super::convert::{id_from_py, id_to_py, value_from_py};
use super::errors::to_py;
use super::{aio, green};
use super::lock::PyLock;
use super::result::{PyAsyncResult, Reply};
use super::wait::{settle, wait_call, SIGNAL_CHECK};

/// A positive number of seconds given by Python, as a `Duration`.
fn seconds(value: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| to_py(Error::InvalidArgument(format!("{what} must be a positive number of seconds, not {value}"))))
}

#[pyclass(frozen, module = "tooz._tooz", name = "Coordinator")]
pub(super) struct PyCoordinator {
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
