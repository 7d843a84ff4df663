"""The glue between tooz's driver classes and the Rust core (``tooz._tooz``).

Every built-in backend's driver class mixes in :class:`NativeDriver`: its group, lock and
heartbeat calls go straight to a Rust ``Coordinator``, which runs them on the shared tokio
runtime without holding the GIL. Which calls a backend offers is decided in Rust; the others
raise ``tooz.NotImplemented`` at call time, as upstream's drivers do.
"""

import collections.abc
import weakref

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


class _JoinedGroups(collections.abc.MutableSet):
    """``_joined_groups`` of a native driver: a live view of what the Rust core records as
    joined. The core updates it when a join or leave *completes*, whether or not anyone
    reads the result (services fire and forget these calls)."""

    __slots__ = ("_core",)

    def __init__(self, core):
        self._core = core

    def __contains__(self, group_id):
        try:
            return self._core.is_joined(group_id)
        except (coordination.ToozInvalidArgument, TypeError):
            return False

    def __iter__(self):
        return iter(self._core.joined_groups())

    def __len__(self):
        return len(self._core.joined_groups())

    def add(self, group_id):
        self._core.note_joined(group_id)

    def discard(self, group_id):
        if group_id in self:
            self._core.forget_joined(group_id)

    def __repr__(self):
        return "{%s}" % ", ".join(repr(g) for g in self)


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

    @property
    def fencing_token(self):
        """The fencing token of the last successful acquire: greater than every token
        issued before it for this lock name on this backend (None before the first acquire,
        or on a backend that cannot give one; see docs/drivers.rst for each backend's guarantee).
        Pass it with every write the lock protects, and have the store refuse a token lower
        than one it has seen."""
        return self._native.fencing_token

    def on_lost(self, callback):
        """Call ``callback(lock)`` once (on a thread of ours) when the core learns that a
        holding of this lock was lost without ``release()``: its TTL lapsed, its key was
        deleted or taken, its session ended. ``acquired`` and ``is_still_owner()`` are False
        by then."""
        ref = weakref.ref(self)

        def notify():
            lock = ref()
            if lock is not None:
                callback(lock)

        self._native.on_lost(notify)


class SessionLock(NativeLock):
    """A lock the server holds for one connection of ours (PostgreSQL, MySQL).

    The server frees such a lock as soon as that connection closes, which may happen behind
    our back (a server restart, a network cut, a killed session). Upstream cannot tell; here
    :meth:`is_still_owner` checks the connection, and a holding found lost (there or at
    ``release()``) is logged by the core on the driver's logger and reported to
    :meth:`on_lost` callbacks.
    """

    #: The driver module's logger (set by the subclass).
    LOG = None

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
    @property
    def _joined_groups(self):
        core = self.__dict__.get("_core")
        return _JoinedGroups(core) if core is not None else set()

    @_joined_groups.setter
    def _joined_groups(self, groups):
        # The base classes reset it to an empty set (at construction and start).
        core = self.__dict__.get("_core")
        if core is not None:
            core.clear_joined()
            for group_id in groups:
                core.note_joined(group_id)

    def _booted_out(self, group_id):
        # After any pending heal, the core looks again before forgetting the group.
        return self._core.booted_out(group_id)

    def start(self, start_heart=False):
        coordination.CoordinationDriver.start(self, start_heart)

    def stop(self):
        if not self._started:
            raise tooz.ToozError("Can not stop a driver which has not been started")
        if self.heart.is_alive():
            self.heart.stop()
            self.heart.wait()
        # Leaves what the core records as joined once every earlier call has completed (so
        # an un-awaited leave is not left twice); failures are ignored, as upstream does.
        self._core.leave_joined()
        self._stop()
        self._started = False

    def _start(self):
        self._core.start()

    def _stop(self):
        self._core.stop()

    def heartbeat(self):
        if not self.requires_beating:
            return None  # nothing to refresh (ipc): no crossing into the core for nothing
        return self._core.heartbeat()

    def create_group(self, group_id):
        return self._core.create_group(group_id)

    def delete_group(self, group_id):
        return self._core.delete_group(group_id)

    def get_groups(self):
        return self._core.get_groups()

    def join_group(self, group_id, capabilities=None):
        return self._core.join_group(group_id, capabilities)

    def leave_group(self, group_id):
        return self._core.leave_group(group_id)

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
