"""The glue between tooz's driver classes and the Rust core (``tooz._tooz``).

Every built-in backend's driver class mixes in :class:`NativeDriver`: its group, lock and
heartbeat calls go straight to a Rust ``Coordinator``, which runs them on the shared tokio
runtime without holding the GIL. Which calls a backend offers is decided in Rust; the others
raise ``tooz.NotImplemented`` at call time, as upstream's drivers do.
"""

import tooz
from tooz import _tooz
from tooz import coordination
from tooz import locking


def _option_text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def _url_parts(parsed_url):
    try:
        port = parsed_url.port
    except ValueError as e:
        raise coordination.ToozInvalidArgument("invalid port in backend URL: %s" % e) from e
    return {
        "path": parsed_url.path,
        "host": parsed_url.hostname,
        "port": port,
        "username": parsed_url.username,
        "password": parsed_url.password,
    }


class _TrackedResult(coordination.CoordAsyncResult):
    """A result that also records a successful join/leave in ``_joined_groups``."""

    __slots__ = ("_result", "_on_success", "_seen")

    def __init__(self, result, on_success):
        self._result = result
        self._on_success = on_success
        self._seen = False

    def get(self, timeout=None):
        value = self._result.get(timeout)
        if not self._seen:
            self._seen = True
            self._on_success()
        return value

    def done(self):
        return self._result.done()


coordination.CoordAsyncResult.register(_tooz.AsyncResult)


class NativeHeart(coordination.Heart):
    """The heartbeat, run as a task on the Rust runtime (no Python thread, no GIL)."""

    def __init__(self, driver, core):  # no thread, no event: the beating is done in Rust
        self._driver = driver
        self._core = core
        self._started_once = False

    @property
    def beats(self):
        return self._core.heart_beats()

    def is_alive(self):
        return self._core.heart_alive()

    def start(self, thread_cls=None):
        self._started_once = True
        self._core.start_heart()

    def stop(self):
        self._core.stop_heart()

    def wait(self, timeout=None):
        if not self._started_once:
            raise RuntimeError("Can not wait on a heart that has not been started")
        return self._core.wait_heart(timeout)


class NativeLock(locking.Lock):
    """A lock object of the Rust core."""

    def __init__(self, native):
        super().__init__(native.name)
        self._native = native

    @property
    def acquired(self):
        """Whether this lock object holds the lock, as far as it knows (no I/O)."""
        return self._native.acquired

    def acquire(self, blocking=True, shared=False, timeout=None):
        return self._native.acquire(blocking, shared, timeout)

    def release(self):
        return self._native.release()

    def break_(self):
        return self._native.break_()

    def is_still_owner(self):
        return self._native.is_still_owner()


class SessionLock(NativeLock):
    """A lock the server holds for one connection of ours (PostgreSQL, MySQL).

    The server frees such a lock as soon as that connection closes, which may happen behind
    our back (a server restart, a network cut, a killed session). Upstream cannot tell; here
    :meth:`is_still_owner` checks the connection, and a lock found lost that way (or when
    released) is reported in the driver's log.
    """

    #: The driver module's logger (set by the subclass).
    LOG = None

    def _lost(self):
        if self.LOG is not None:
            self.LOG.warning("lock %r was lost: its connection to the server is gone, and the "
                             "server released the lock with it", self.name)

    def release(self):
        held = self._native.acquired
        released = self._native.release()
        if held and not released:
            self._lost()
        return released

    def is_still_owner(self):
        held = self._native.acquired
        owner = self._native.is_still_owner()
        if held and not owner:
            self._lost()
        return owner

    def __del__(self):
        native = getattr(self, "_native", None)
        if native is not None and native.acquired and self.LOG is not None:
            self.LOG.warning("unreleased lock %r garbage collected (its connection is closed, "
                             "which releases it)", self.name)


class LocksOnly:
    """Mixin of a backend that offers locks only: watching raises ``tooz.NotImplemented``,
    as upstream's PostgreSQL and MySQL drivers do (the group calls raise it from Rust)."""

    def watch_join_group(self, group_id, callback):
        raise tooz.NotImplemented("not implemented")

    def unwatch_join_group(self, group_id, callback):
        raise tooz.NotImplemented("not implemented")

    def watch_leave_group(self, group_id, callback):
        raise tooz.NotImplemented("not implemented")

    def unwatch_leave_group(self, group_id, callback):
        raise tooz.NotImplemented("not implemented")

    def watch_elected_as_leader(self, group_id, callback):
        raise tooz.NotImplemented("not implemented")

    def unwatch_elected_as_leader(self, group_id, callback):
        raise tooz.NotImplemented("not implemented")


class NativeDriver:
    """Mixin placed first in a built-in driver's bases; the Rust core does the work."""

    LOCK_CLASS = NativeLock
    #: The Rust driver to build (several URL schemes may share one).
    SCHEME = None
    #: Options that are lists (repeatable) rather than collapsed to their last value.
    LIST_OPTIONS = ()

    def __init__(self, member_id, parsed_url, options):
        super().__init__(member_id, parsed_url, options)
        collapsed = {}
        for key, value in options.items():
            if isinstance(value, (list, tuple)):
                if key in self.LIST_OPTIONS:
                    collapsed[key] = ",".join(_option_text(v) for v in value)
                elif value:
                    collapsed[key] = _option_text(value[-1])
            else:
                collapsed[key] = _option_text(value)
        self._core = _tooz.Coordinator(self.SCHEME, member_id, options=collapsed, **_url_parts(parsed_url))
        self.requires_beating = self._core.requires_beating()
        self.heart = NativeHeart(self, self._core)

    def __repr__(self):
        return "<%s member_id=%r started=%s>" % (type(self).__name__, self._member_id, self._started)

    # The calls run on the Rust runtime: the executor upstream's drivers start (and the
    # ``executor`` option still selects and validates) is never needed, so it is not started.
    def start(self, start_heart=False):
        coordination.CoordinationDriver.start(self, start_heart)

    def stop(self):
        coordination.CoordinationDriver.stop(self)

    def _start(self):
        self._core.start()

    def _stop(self):
        self._core.stop()

    def heartbeat(self):
        return self._core.heartbeat()

    def create_group(self, group_id):
        return self._core.create_group(group_id)

    def delete_group(self, group_id):
        return self._core.delete_group(group_id)

    def get_groups(self):
        return self._core.get_groups()

    def join_group(self, group_id, capabilities=None):
        result = self._core.join_group(group_id, capabilities)
        return _TrackedResult(result, lambda: self._joined_groups.add(group_id))

    def leave_group(self, group_id):
        result = self._core.leave_group(group_id)
        return _TrackedResult(result, lambda: self._joined_groups.discard(group_id))

    def get_members(self, group_id):
        return self._core.get_members(group_id)

    def get_member_capabilities(self, group_id, member_id):
        return self._core.get_member_capabilities(group_id, member_id)

    def get_members_with_capabilities(self, group_id):
        return self._core.get_members_with_capabilities(group_id)

    def update_capabilities(self, group_id, capabilities):
        return self._core.update_capabilities(group_id, capabilities)

    def get_member_info(self, group_id, member_id):
        return self._core.get_member_info(group_id, member_id)

    def get_leader(self, group_id):
        return self._core.get_leader(group_id)

    def stand_down_group_leader(self, group_id):
        return self._core.stand_down_group_leader(group_id)

    def run_elect_coordinator(self):
        if not self._core.supports("run_elect_coordinator"):
            raise tooz.NotImplemented("not implemented")
        candidates = [g for g, hooks in self._hooks_elected_leader.items() if hooks]
        if not candidates:
            return
        for group_id in self._core.elect(candidates):
            self._hooks_elected_leader[group_id].run(coordination.LeaderElected(group_id, self._member_id))

    def run_watchers(self, timeout=None):
        results = super().run_watchers(timeout)
        if self._core.supports("run_elect_coordinator"):
            self.run_elect_coordinator()
        return results

    def get_lock(self, name):
        return self.LOCK_CLASS(self._core.get_lock(name))


class UnavailableDriver:
    """Mixin of a backend whose Rust driver has not landed yet: constructing it fails."""

    def __init__(self, member_id, parsed_url, options):
        raise tooz.ToozError(
            "The %s backend is not yet available in this version of tooz" % parsed_url.scheme)
