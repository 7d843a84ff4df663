"""``etcd3+http://`` / ``etcd3+https://``: etcd v3, spoken over native gRPC by the Rust core,
with the keys, values and leases of upstream's etcd3gw (JSON gateway) driver, so processes on
upstream tooz and on this one share groups, members and locks on the same etcd.

URL: ``etcd3+http://[user:password@][host[:port]][?options]`` (default ``localhost:2379``);
``etcd3+https`` is TLS. A user name and password authenticate with etcd (never shown in
errors or reprs). Options (upstream's): ``timeout`` (30 s: the time limit of each call, and
the default of the next two), ``lock_timeout`` (lock lease TTL), ``membership_timeout``
(membership lease TTL), ``ca_cert``, ``cert_cert`` with ``cert_key`` (PEM files), and
``api_version`` (accepted; the gateway path it selects upstream does not exist in gRPC).
Beyond upstream: ``hosts`` (repeatable ``host[:port]``, added to the URL's host) lists more
cluster members; calls fail over between them.

Members and locks hang on leases that ``heartbeat()`` refreshes (start the heart, as with
upstream). Lock waiters and leader changes are driven by etcd's watch streams. Leader
election (not offered by upstream's driver) follows etcd's ``concurrency.Election``: the
candidate with the lowest create revision under ``tooz/elections/<group>/`` leads.
"""

import logging

from tooz import coordination
from tooz.drivers import _native

# The logger the core's records for this backend go to (tests patch it, as upstream's).
LOG = logging.getLogger("tooz.drivers.etcd3gw")


class Etcd3Lock(_native.NativeLock):
    """The etcd key ``/tooz/locks<name>`` holding 16 random bytes of this lock object, on a
    lease of its own (TTL ``lock_timeout``). ``acquire(blocking=n)`` returns False after ``n``
    seconds (upstream raises ``tenacity.RetryError``); a waiter is woken by a watch."""

    LOCK_PREFIX = b"/tooz/locks"

    def heartbeat(self):
        """Refresh the lock's lease; False when this object does not hold it (any more)."""
        return self._native.heartbeat()


class Etcd3Driver(_native.NativeDriver,
                  coordination.CoordinationDriverCachedRunWatchers,
                  coordination.CoordinationDriverWithExecutor):
    """etcd coordination: locks, groups, members with capabilities and join times, leader
    election, watchers."""

    DEFAULT_HOST = "localhost"
    DEFAULT_PORT = 2379
    DEFAULT_TIMEOUT = 30
    GROUP_PREFIX = b"tooz/groups/"
    CHARACTERISTICS = (
        coordination.Characteristics.NON_TIMEOUT_BASED,
        coordination.Characteristics.DISTRIBUTED_ACROSS_THREADS,
        coordination.Characteristics.DISTRIBUTED_ACROSS_PROCESSES,
        coordination.Characteristics.LINEARIZABLE,
        coordination.Characteristics.SERIALIZABLE,
    )
    SCHEME = "etcd3+http"
    LOCK_CLASS = Etcd3Lock
    LIST_OPTIONS = ("hosts",)

    def __init__(self, member_id, parsed_url, options):
        self.SCHEME = parsed_url.scheme if parsed_url.scheme in ("etcd3+http", "etcd3+https") else "etcd3+http"
        super().__init__(member_id, parsed_url, options)
        collapsed = {k: (v[-1] if isinstance(v, (list, tuple)) and v else v) for k, v in options.items()}
        timeout = float(collapsed.get("timeout", self.DEFAULT_TIMEOUT))
        self.lock_timeout = float(collapsed.get("lock_timeout", timeout))
        self.membership_timeout = float(collapsed.get("membership_timeout", timeout))

    def _destroy_group(self, group_id):
        """Delete the group's key whatever its members (a test helper upstream's suite uses)."""
        self._core.destroy_group(group_id)
