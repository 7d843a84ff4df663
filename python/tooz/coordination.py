"""Coordinators: the driver interface, its events and exceptions, and ``get_coordinator``."""

import abc
import collections
import concurrent.futures
import enum
import functools
import importlib.metadata
import logging
import threading
import time
import typing
import urllib.parse

import tooz
from tooz import utils

LOG = logging.getLogger(__name__)

TOOZ_BACKENDS_NAMESPACE = "tooz.backends"

Capabilities = typing.Dict[str, typing.Any]


class Characteristics(enum.Enum):
    """What a backend guarantees; ``get_coordinator(characteristics=...)`` checks them."""

    DISTRIBUTED_ACROSS_THREADS = "DISTRIBUTED_ACROSS_THREADS"
    DISTRIBUTED_ACROSS_PROCESSES = "DISTRIBUTED_ACROSS_PROCESSES"
    DISTRIBUTED_ACROSS_HOSTS = "DISTRIBUTED_ACROSS_HOSTS"
    NON_TIMEOUT_BASED = "NON_TIMEOUT_BASED"
    LINEARIZABLE = "LINEARIZABLE"
    SEQUENTIAL = "SEQUENTIAL"
    CAUSAL = "CAUSAL"
    SERIALIZABLE = "SERIALIZABLE"
    SAME_VIEW_UNDER_PARTITIONS = "SAME_VIEW_UNDER_PARTITIONS"
    SAME_VIEW_ACROSS_CLIENTS = "SAME_VIEW_ACROSS_CLIENTS"


def _as_text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value


# ------------------------------------------------------------------------------ exceptions

ToozError = tooz.ToozError
SerializationError = utils.SerializationError


class ToozDriverChosenPoorly(tooz.ToozError):
    """The chosen backend lacks a characteristic that was asked for."""


class ToozConnectionError(tooz.ToozError):
    """The backend could not be reached, or the connection to it was lost."""


class OperationTimedOut(tooz.ToozError):
    """An operation did not complete in time."""


class LockAcquireFailed(tooz.ToozError):
    """A lock used as a context manager could not be taken."""


class ToozInvalidArgument(tooz.ToozError, ValueError):
    """An option, id or name was not acceptable (also a ``ValueError``, as upstream raises)."""


class GroupNotCreated(tooz.ToozError):
    def __init__(self, group_id):
        self.group_id = _as_text(group_id)
        super().__init__("Group %s does not exist" % self.group_id)


class GroupAlreadyExist(tooz.ToozError):
    def __init__(self, group_id):
        self.group_id = _as_text(group_id)
        super().__init__("Group %s already exists" % self.group_id)


class MemberAlreadyExist(tooz.ToozError):
    def __init__(self, group_id, member_id):
        self.group_id = _as_text(group_id)
        self.member_id = _as_text(member_id)
        super().__init__("Member %s has already joined %s" % (self.member_id, self.group_id))


class MemberNotJoined(tooz.ToozError):
    def __init__(self, group_id, member_id):
        self.group_id = _as_text(group_id)
        self.member_id = _as_text(member_id)
        super().__init__("Member %s has not joined %s" % (self.member_id, self.group_id))


class GroupNotEmpty(tooz.ToozError):
    def __init__(self, group_id):
        self.group_id = _as_text(group_id)
        super().__init__("Group %s is not empty" % self.group_id)


class WatchCallbackNotFound(tooz.ToozError):
    def __init__(self, group_id, callback):
        self.group_id = _as_text(group_id)
        self.callback = callback
        name = getattr(callback, "__name__", repr(callback))
        super().__init__("Callback %s is not registered on group %s" % (name, self.group_id))


# ------------------------------------------------------------------------------ events


class Event:
    """Base of the events handed to watch callbacks."""


class MemberJoinedGroup(Event):
    def __init__(self, group_id, member_id):
        self.group_id = group_id
        self.member_id = member_id

    def __repr__(self):
        return "<%s: group %s: +member %s>" % (
            self.__class__.__name__, _as_text(self.group_id), _as_text(self.member_id))


class MemberLeftGroup(Event):
    def __init__(self, group_id, member_id):
        self.group_id = group_id
        self.member_id = member_id

    def __repr__(self):
        return "<%s: group %s: -member %s>" % (
            self.__class__.__name__, _as_text(self.group_id), _as_text(self.member_id))


class LeaderElected(Event):
    def __init__(self, group_id, member_id):
        self.group_id = group_id
        self.member_id = member_id


class EventCallback(typing.Protocol):
    def __call__(self, event): ...


class Hooks(list):
    def run(self, *args, **kwargs):
        return [hook(*args, **kwargs) for hook in self]


# ------------------------------------------------------------------------------ heartbeat


class Heart:
    """Calls ``driver.heartbeat()`` from a daemon thread until stopped.

    The backends built into this package beat from the Rust runtime instead (see
    ``tooz.drivers._native``); this class serves drivers written in Python.
    """

    def __init__(self, driver, thread_cls=threading.Thread, event_cls=threading.Event):
        self._driver = driver
        self._thread_cls = thread_cls
        self._event_cls = event_cls
        self._dead = None  # made by start(): most coordinators never start a Python heart
        self._runner = None
        self._beats = 0

    @property
    def beats(self):
        return self._beats

    def is_alive(self):
        return self._runner is not None and self._runner.is_alive()

    def _beat_forever_until_stopped(self):
        while not self._dead.is_set():
            began = time.monotonic()
            try:
                wait_for = self._driver.heartbeat()
            except Exception:  # noqa: BLE001 - a failed beat is retried, as upstream does
                LOG.warning("Heartbeat failed, retrying in 1 second", exc_info=True)
                self._dead.wait(1)
                continue
            self._beats += 1
            if wait_for is None:
                wait_for = 1.0
            left = (wait_for - (time.monotonic() - began)) / 2.0
            if left < 0:
                LOG.warning("Heartbeating took too long to execute (it ran for %0.2f seconds)",
                            time.monotonic() - began)
                left = 0
            self._dead.wait(left)

    def start(self, thread_cls=None):
        if self.is_alive():
            return
        self._dead = self._event_cls()
        self._beats = 0
        self._runner = (thread_cls or self._thread_cls)(target=self._beat_forever_until_stopped)
        self._runner.daemon = True
        self._runner.start()

    def stop(self):
        if self._dead is not None:
            self._dead.set()

    def wait(self, timeout=None):
        if self._runner is None:
            raise RuntimeError("Can not wait on a heart that has not been started")
        self._runner.join(timeout)
        return self._runner.is_alive()


# ------------------------------------------------------------------------------ results


T = typing.TypeVar("T")
# What a member's capabilities are, for annotations (upstream's alias).
Capabilities = dict[str, typing.Any]


class CoordAsyncResult(typing.Generic[T], metaclass=abc.ABCMeta):
    """The result of an asynchronous coordinator call."""

    @abc.abstractmethod
    def get(self, timeout=None):
        """Wait for the call (at most ``timeout`` seconds) and return its value."""

    @abc.abstractmethod
    def done(self):
        """Whether the call has finished."""


class CoordinatorResult(CoordAsyncResult[T]):
    """A ``CoordAsyncResult`` over a ``concurrent.futures.Future``."""

    def __init__(self, fut, failure_translator=None):
        self._fut = fut
        self._failure_translator = failure_translator

    def get(self, timeout=None):
        try:
            if self._failure_translator:
                with self._failure_translator():
                    return self._fut.result(timeout=timeout)
            return self._fut.result(timeout=timeout)
        except concurrent.futures.TimeoutError as e:
            utils.raise_with_cause(OperationTimedOut, str(e) or "Operation timed out", cause=e)

    def done(self):
        return self._fut.done()


# ------------------------------------------------------------------------------ drivers


class CoordinationDriver:
    """The interface of every backend. Methods a backend lacks raise ``tooz.NotImplemented``."""

    requires_beating = False
    CHARACTERISTICS = ()

    def __init__(self, member_id, parsed_url, options):
        super().__init__()
        self._member_id = member_id
        self._started = False
        self._hooks_join_group = collections.defaultdict(Hooks)
        self._hooks_leave_group = collections.defaultdict(Hooks)
        self._hooks_elected_leader = collections.defaultdict(Hooks)
        self._joined_groups = set()
        self.requires_beating = type(self).heartbeat is not CoordinationDriver.heartbeat
        self.heart = Heart(self)

    def _has_hooks_for_group(self, group_id):
        return group_id in self._hooks_join_group or group_id in self._hooks_leave_group

    def join_partitioned_group(self, group_id, weight=1, partitions=32):
        """Join ``group_id`` (creating it if needed) and return a Partitioner over its members."""
        from tooz import partitioner

        self.join_group_create(group_id, capabilities={"weight": weight})
        return partitioner.Partitioner(self, group_id, partitions=partitions)

    def leave_partitioned_group(self, partitioner):
        leaving = self.leave_group(partitioner.group_id)
        partitioner.stop()
        return leaving.get()

    def run_watchers(self, timeout=None):
        """Run the callbacks of whatever happened since the last call; returns their results."""
        raise tooz.NotImplemented("not implemented")

    def run_elect_coordinator(self):
        """Try to become leader of each group with election callbacks; run them on success."""
        raise tooz.NotImplemented("not implemented")

    @staticmethod
    def _unwatch(hooks_by_group, group_id, callback):
        hooks = hooks_by_group.get(group_id)
        if hooks is None or callback not in hooks:
            raise WatchCallbackNotFound(group_id, callback)
        hooks.remove(callback)
        if not hooks:
            del hooks_by_group[group_id]

    def watch_join_group(self, group_id, callback):
        self._hooks_join_group[group_id].append(callback)

    def unwatch_join_group(self, group_id, callback):
        self._unwatch(self._hooks_join_group, group_id, callback)

    def watch_leave_group(self, group_id, callback):
        self._hooks_leave_group[group_id].append(callback)

    def unwatch_leave_group(self, group_id, callback):
        self._unwatch(self._hooks_leave_group, group_id, callback)

    def watch_elected_as_leader(self, group_id, callback):
        self._hooks_elected_leader[group_id].append(callback)

    def unwatch_elected_as_leader(self, group_id, callback):
        self._unwatch(self._hooks_elected_leader, group_id, callback)

    def stand_down_group_leader(self, group_id):
        raise tooz.NotImplemented("not implemented")

    @property
    def is_started(self):
        return self._started

    def start(self, start_heart=False):
        if self._started:
            raise tooz.ToozError("Can not start a driver which has not been stopped")
        self._start()
        if self.requires_beating and start_heart:
            self.heart.start()
        self._started = True
        self._joined_groups = set()

    def _start(self):
        pass

    def stop(self):
        if not self._started:
            raise tooz.ToozError("Can not stop a driver which has not been started")
        if self.heart.is_alive():
            self.heart.stop()
            self.heart.wait()
        # Clean-up: the group or the membership may be gone already; like upstream, failures
        # here are no reason to complain.
        leaving = []
        for group_id in list(self._joined_groups):
            try:
                leaving.append(self.leave_group(group_id))
            except tooz.ToozError:
                LOG.debug("Unable to leave group '%s' while stopping", _as_text(group_id), exc_info=True)
        for fut in leaving:
            try:
                fut.get()
            except tooz.ToozError:
                LOG.debug("Unable to leave a group while stopping", exc_info=True)
        self._stop()
        self._started = False

    def _stop(self):
        pass

    def create_group(self, group_id):
        raise tooz.NotImplemented("not implemented")

    def get_groups(self):
        raise tooz.NotImplemented("not implemented")

    def join_group(self, group_id, capabilities=None):
        raise tooz.NotImplemented("not implemented")

    def join_group_create(self, group_id, capabilities=None):
        """Join ``group_id``, creating it first if it does not exist yet."""
        while True:
            try:
                return self.join_group(group_id, capabilities).get()
            except GroupNotCreated:
                try:
                    self.create_group(group_id).get()
                except GroupAlreadyExist:
                    pass

    def leave_group(self, group_id):
        raise tooz.NotImplemented("not implemented")

    def delete_group(self, group_id):
        raise tooz.NotImplemented("not implemented")

    def get_members(self, group_id):
        raise tooz.NotImplemented("not implemented")

    def get_member_capabilities(self, group_id, member_id):
        raise tooz.NotImplemented("not implemented")

    def get_members_with_capabilities(self, group_id):
        raise tooz.NotImplemented("not implemented")

    def get_member_info(self, group_id, member_id):
        raise tooz.NotImplemented("not implemented")

    def update_capabilities(self, group_id, capabilities):
        raise tooz.NotImplemented("not implemented")

    def get_leader(self, group_id):
        raise tooz.NotImplemented("not implemented")

    def get_lock(self, name):
        raise tooz.NotImplemented("not implemented")

    def heartbeat(self):
        """Refresh liveness; returns the seconds before the next beat is due (or None)."""


class CoordinationDriverWithExecutor(CoordinationDriver):
    """A driver whose calls run on an executor chosen by the ``executor`` option."""

    EXCLUDE_OPTIONS = None

    def __init__(self, member_id, parsed_url, options):
        self._options = utils.collapse(options, exclude=self.EXCLUDE_OPTIONS)
        self._executor = utils.ProxyExecutor.build(self.__class__.__name__, self._options)
        super().__init__(member_id, parsed_url, options)

    def start(self, start_heart=False):
        self._executor.start()
        super().start(start_heart)

    def stop(self):
        super().stop()
        self._executor.stop()


class CoordinationDriverCachedRunWatchers(CoordinationDriver):
    """Membership watchers by polling: ``run_watchers`` diffs ``get_members`` against a cache."""

    def __init__(self, member_id, parsed_url, options):
        super().__init__(member_id, parsed_url, options)
        self._group_members = collections.defaultdict(set)
        self._joined_groups = set()

    def _init_watch_group(self, group_id):
        if group_id not in self._group_members:
            self._group_members[group_id] = self.get_members(group_id).get()

    def watch_join_group(self, group_id, callback):
        self._init_watch_group(group_id)
        super().watch_join_group(group_id, callback)

    def unwatch_join_group(self, group_id, callback):
        super().unwatch_join_group(group_id, callback)
        if not self._has_hooks_for_group(group_id):
            self._group_members.pop(group_id, None)

    def watch_leave_group(self, group_id, callback):
        self._init_watch_group(group_id)
        super().watch_leave_group(group_id, callback)

    def unwatch_leave_group(self, group_id, callback):
        super().unwatch_leave_group(group_id, callback)
        if not self._has_hooks_for_group(group_id):
            self._group_members.pop(group_id, None)

    def _booted_out(self, group_id):
        """This member was found missing from ``group_id``: forget having joined it. Returns
        whether it is really gone (a driver that heals memberships may have re-joined)."""
        self._joined_groups.discard(group_id)
        return True

    def run_watchers(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        results = []
        watched = set(self._hooks_join_group) | set(self._hooks_leave_group)
        for group_id in watched:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                members = set(self.get_members(group_id).get(timeout=left))
            except GroupNotCreated:
                members = set()
            else:
                if group_id in self._joined_groups and self._member_id not in members:
                    # Our membership expired: we were booted out of the group (unless the
                    # membership was healed meanwhile, in which case we are in it again).
                    if not self._booted_out(group_id):
                        members.add(self._member_id)
            before = self._group_members.get(group_id, set())
            join_hooks = self._hooks_join_group.get(group_id, ())
            leave_hooks = self._hooks_leave_group.get(group_id, ())
            for member_id in members - before:
                event = MemberJoinedGroup(group_id, member_id)
                results.extend(hook(event) for hook in join_hooks)
            for member_id in before - members:
                event = MemberLeftGroup(group_id, member_id)
                results.extend(hook(event) for hook in leave_hooks)
            self._group_members[group_id] = members
        return results


# ------------------------------------------------------------------------------ get_coordinator


class _SplitResult(urllib.parse.SplitResult):
    """``urllib.parse.SplitResult`` plus ``params()``, as oslo.utils' netutils gives drivers."""

    __slots__ = ()

    def params(self, collapse=True):
        params = urllib.parse.parse_qs(self.query)
        if collapse:
            return {key: values[-1] for key, values in params.items()}
        return params


def _urlsplit(url):
    if not isinstance(url, str):
        raise ToozInvalidArgument("backend_url must be a str, not %s" % type(url).__name__)
    scheme, netloc, path, query, fragment = urllib.parse.urlsplit(url)
    if "#" in path:
        path, fragment = path.split("#", 1)
    if "?" in path:
        path, query = path.split("?", 1)
    return _SplitResult(scheme, netloc, path, query, fragment)


try:
    from stevedore.exception import NoMatches as _NoMatchesBase
except ImportError:  # stevedore is not required; keep its exception's shape
    _NoMatchesBase = RuntimeError


class NoMatches(_NoMatchesBase):
    """No backend is registered under the URL's scheme (a ``RuntimeError``, as upstream)."""


@functools.lru_cache(maxsize=None)
def _backend_entry_points():
    found = importlib.metadata.entry_points(group=TOOZ_BACKENDS_NAMESPACE)
    table = {}
    for ep in found:
        table.setdefault(ep.name, ep)
    return table


_LOADED = {}


def _load_driver_class(name):
    ep = _backend_entry_points().get(name)
    if ep is None:
        _backend_entry_points.cache_clear()  # a backend may have been installed since
        ep = _backend_entry_points().get(name)
    if ep is None:
        raise NoMatches("No '%s' driver found, looking for '%s'" % (TOOZ_BACKENDS_NAMESPACE, name))
    loaded = _LOADED.get(ep)
    if loaded is None:
        loaded = _LOADED[ep] = ep.load()
    return loaded


def get_coordinator(backend_url, member_id, characteristics=None, **kwargs):
    """The (unstarted) coordinator of ``backend_url``'s backend for ``member_id``.

    URL query options and keyword arguments are merged, keyword arguments winning.
    """
    parsed_url = _urlsplit(backend_url)
    query = urllib.parse.parse_qs(parsed_url.query)
    if kwargs:
        options = {key: [value] for key, value in kwargs.items()}
        for key, values in query.items():
            options.setdefault(key, values)
    else:
        options = query
    driver = _load_driver_class(parsed_url.scheme)(member_id, parsed_url, options)
    missing = set(characteristics or ()) - set(driver.CHARACTERISTICS)
    if missing:
        raise ToozDriverChosenPoorly(
            "Desired characteristics %s is not a strict subset of driver characteristics %s"
            % (characteristics, driver.CHARACTERISTICS))
    return driver
