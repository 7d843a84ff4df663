"""``redis://``: Redis (and Redis Sentinel), with upstream tooz's keys and scripts semantics.

URL: ``redis://[username:password@]host[:port][?options]``; without a host, the path is a
unix socket. Options (upstream's): ``timeout`` (30 s; also the default ``socket_timeout``),
``membership_timeout``, ``lock_timeout`` (= timeout), ``namespace`` (``_tooz``), ``encoding``
(utf8), ``db``, ``socket_timeout``, ``socket_connect_timeout``, ``ssl``, ``ssl_certfile``,
``ssl_keyfile``, ``ssl_ca_certs``, ``sentinel=<master name>`` (the URL's host:port is then the
first sentinel), repeatable ``sentinel_fallback=host:port``, ``sentinel_username``,
``sentinel_password``, ``sentinel_ssl``. redis-py-only options (``health_check_interval``,
``retry_on_timeout``, ``socket_keepalive``) are accepted and have no effect.
"""

import functools
import logging

from tooz import coordination
from tooz.drivers import _native

# The logger the core's records for this backend go to (tests patch it, as upstream's).
LOG = logging.getLogger("tooz.drivers.redis")

RedisFutureResult = functools.partial(coordination.CoordinatorResult)


class RedisLock(_native.NativeLock):
    """A Redis key ``<namespace>_<name>_lock`` holding the owner's token, with a TTL."""

    def heartbeat(self):
        """Extend the lock's expiry; False when this object does not hold it."""
        return self._native.heartbeat()


class RedisDriver(_native.NativeDriver,
                  coordination.CoordinationDriverCachedRunWatchers,
                  coordination.CoordinationDriverWithExecutor):
    """Redis coordination: locks, groups, members with expiry, leader election, watchers."""

    CHARACTERISTICS = (
        coordination.Characteristics.DISTRIBUTED_ACROSS_THREADS,
        coordination.Characteristics.DISTRIBUTED_ACROSS_PROCESSES,
        coordination.Characteristics.DISTRIBUTED_ACROSS_HOSTS,
        coordination.Characteristics.CAUSAL,
    )
    SCHEME = "redis"
    LOCK_CLASS = RedisLock
    LIST_OPTIONS = ("sentinel_fallback",)
    # The URL options upstream hands to its redis-py client, by the type they are read as;
    # ours reads the same names (the redis-py-only ones are accepted and have no effect).
    CLIENT_LIST_ARGS = frozenset({"sentinel_fallback"})
    CLIENT_BOOL_ARGS = frozenset({"retry_on_timeout", "socket_keepalive", "ssl", "sentinel_ssl"})
    CLIENT_INT_ARGS = frozenset({"db"})
    CLIENT_FLOAT_ARGS = frozenset({"socket_timeout", "socket_connect_timeout", "health_check_interval"})
    CLIENT_ARGS = CLIENT_LIST_ARGS | CLIENT_BOOL_ARGS | CLIENT_INT_ARGS | CLIENT_FLOAT_ARGS | frozenset(
        {"encoding", "ssl_certfile", "ssl_keyfile", "ssl_ca_certs", "sentinel", "sentinel_username", "sentinel_password"})
    CLIENT_DEFAULT_SOCKET_TO = 30
    # Options that are not passed on as they are (upstream: the repeatable ones).
    EXCLUDE_OPTIONS = CLIENT_LIST_ARGS
    DEFAULT_ENCODING = "utf8"
    MIN_VERSION = "2.6.0"
    DEFAULT_NAMESPACE = b"_tooz"
    GROUP_EXISTS = b"__created__"
    GROUP_EXISTS_VALUE = b"1"
    NAMESPACE_SEP = b":"
    STILL_ALIVE = b"Not dead!"

    @property
    def namespace(self):
        """The key namespace, encoded (``namespace`` option, default ``_tooz``)."""
        value = self._options.get("namespace", self.DEFAULT_NAMESPACE)
        encoding = self._options.get("encoding", self.DEFAULT_ENCODING)
        return value if isinstance(value, bytes) else str(value).encode(encoding)

    def _destroy_group(self, group_id):
        """Delete the group's hash, members and all, behind their backs (a test helper, as
        upstream's)."""
        self._core.destroy_group(group_id)

    @property
    def running(self):
        return self._started
