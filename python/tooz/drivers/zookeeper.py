"""``zookeeper://`` / ``kazoo://``: ZooKeeper, with the znodes and lock recipe of upstream's
kazoo-based driver (so both implementations share groups, locks and leaders).

URL: ``zookeeper://[username:password@][host[:port]][?options]``; a username and password
turn on digest authentication and give created nodes a digest ACL for that user. Options
(upstream's): ``timeout`` (10 s: session timeout, connect timeout and the time limit of each
call; also what ``heartbeat()`` returns), ``namespace`` (``tooz``), ``hosts`` (repeatable,
``host[:port]``, added to the URL's host; default ``localhost:2181``; a trailing ``/path`` is a
chroot), ``randomize_hosts`` (true), ``use_ssl`` (false), ``verify_certs`` (true), ``ca``,
``certfile``, ``keyfile`` (PEM files). ``handler`` (``threading``/``eventlet``),
``connection_retry`` and ``command_retry`` are accepted and have no effect; an encrypted key
(``keyfile_password``) is refused.

Members are ephemeral nodes: they live as long as the coordinator's session, which the client
keeps alive by itself (heartbeats are cheap reads). Leader election uses kazoo's lock recipe
on ``/<namespace>/<group>/leader``, which, as upstream, then appears as a member ``leader``.
"""

from tooz import coordination
from tooz.drivers import _native


class ZooKeeperLock(_native.NativeLock):
    """kazoo's lock recipe under ``/<namespace>/locks/<name>``: an ephemeral sequential node
    per contender, lowest sequence holds. ``acquire(blocking=n)`` returns False after ``n``
    seconds (upstream raises kazoo's ``LockTimeout``)."""


class ZooAsyncResult(coordination.CoordAsyncResult):
    """Upstream's result type: ``get(timeout)`` hands the pending request and the timeout to
    ``handler``; ``done()`` asks the request. Kept for code that builds one; the driver's own
    calls return the core's results."""

    def __init__(self, kazoo_async_result, handler, *args, **kwargs):
        self._kazoo_async_result = kazoo_async_result
        self._handler = handler
        self._args = args
        self._kwargs = kwargs

    def get(self, timeout=None):
        return self._handler(self._kazoo_async_result, timeout, *self._args, **self._kwargs)

    def done(self):
        if self._kazoo_async_result is None:
            return True
        return bool(self._kazoo_async_result.ready())


class KazooDriver(_native.NativeDriver, coordination.CoordinationDriverCachedRunWatchers):
    """ZooKeeper coordination: groups, ephemeral members with capabilities and their
    creation/update times, locks, leader election, watchers."""

    CHARACTERISTICS = (
        coordination.Characteristics.NON_TIMEOUT_BASED,
        coordination.Characteristics.DISTRIBUTED_ACROSS_THREADS,
        coordination.Characteristics.DISTRIBUTED_ACROSS_PROCESSES,
        coordination.Characteristics.DISTRIBUTED_ACROSS_HOSTS,
        coordination.Characteristics.SEQUENTIAL,
    )
    SCHEME = "zookeeper"
    LOCK_CLASS = ZooKeeperLock
    LIST_OPTIONS = ("hosts",)
    #: Default namespace when none is provided.
    TOOZ_NAMESPACE = b"tooz"
    HANDLERS = ("threading", "eventlet")

    def __init__(self, member_id, parsed_url, options):
        super().__init__(member_id, parsed_url, options)
        timeout = options.get("timeout")
        if isinstance(timeout, (list, tuple)):
            timeout = timeout[-1] if timeout else None
        self.timeout = float(timeout) if timeout is not None else 10.0
