"""``memcached://host[:port]``: coordination through a memcached server (upstream's key layout).

Groups, members, locks and leaders are memcached keys, laid out exactly as upstream tooz lays
them out, so coordinators of both share one server. The work is done by the Rust core.
"""

import functools
import logging

from tooz import coordination
from tooz.drivers import _native

# The logger the core's records for this backend go to (tests patch it, as upstream's).
LOG = logging.getLogger("tooz.drivers.memcached")

MemcachedFutureResult = functools.partial(coordination.CoordinatorResult)


class MemcachedLock(_native.NativeLock):
    """A memcached key ``__TOOZ_LOCK_<name>`` holding the owner's member id, with a TTL.

    ``name`` is that key. The coordinator's heartbeat keeps held locks alive; a holder that
    dies loses its locks after ``lock_timeout`` seconds.
    """

    def heartbeat(self):
        """Extend the lock's expiry; False when this lock object does not hold it."""
        return self._native.heartbeat()

    def get_owner(self):
        """The member id stored under the key now (``None`` when the lock is free)."""
        return self._native.get_owner()


class MemcachedDriver(_native.NativeDriver,
                      coordination.CoordinationDriverCachedRunWatchers,
                      coordination.CoordinationDriverWithExecutor):
    """Coordination through memcached: works across threads, processes and hosts.

    URL: ``memcached://[host[:port]]`` (default ``localhost:11211``). Options (seconds unless
    said otherwise):

    ==================  =======================================================
    ``timeout``         30; also the default of the three below, and the limit
                        of one request to the server (connecting included)
    membership_timeout  how long a member stays alive without a heartbeat
    lock_timeout        how long a lock outlives its holder's last heartbeat
    leader_timeout      the same for the leader key of an elected member
    max_pool_size       most connections open at once (default: no limit)
    use_ssl             TLS (false); with ``ca_cert``, ``ssl_cert``, ``ssl_key``,
                        ``ssl_check_hostname`` (false: the chain is verified,
                        the host name is not)
    ==================  =======================================================
    """

    CHARACTERISTICS = (
        coordination.Characteristics.DISTRIBUTED_ACROSS_THREADS,
        coordination.Characteristics.DISTRIBUTED_ACROSS_PROCESSES,
        coordination.Characteristics.DISTRIBUTED_ACROSS_HOSTS,
        coordination.Characteristics.CAUSAL,
    )
    SCHEME = "memcached"
    LOCK_CLASS = MemcachedLock

    #: Key prefixes and keys, as upstream names them.
    GROUP_PREFIX = b'_TOOZ_GROUP_'
    GROUP_LEADER_PREFIX = b'_TOOZ_GROUP_LEADER_'
    MEMBER_PREFIX = b'_TOOZ_MEMBER_'
    GROUP_LIST_KEY = b'_TOOZ_GROUP_LIST'
    DEFAULT_TIMEOUT = 30
    STILL_ALIVE = b"It's alive!"

    def _destroy_group(self, group_id):
        """Delete the group's record, members and all, behind their backs (a test helper, as
        upstream's; the group list keeps its entry)."""
        self._core.destroy_group(group_id)
