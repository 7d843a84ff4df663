"""``memcached://``: the memcached backend (its Rust driver has not landed yet)."""

import functools

from tooz import coordination
from tooz.drivers import _native

MemcachedFutureResult = functools.partial(coordination.CoordinatorResult)


class MemcachedLock(_native.NativeLock):
    """A memcached key ``__TOOZ_LOCK_<name>`` holding the owner's member id, with a TTL."""


class MemcachedDriver(_native.UnavailableDriver,
                      coordination.CoordinationDriverCachedRunWatchers,
                      coordination.CoordinationDriverWithExecutor):
    CHARACTERISTICS = (
        coordination.Characteristics.DISTRIBUTED_ACROSS_THREADS,
        coordination.Characteristics.DISTRIBUTED_ACROSS_PROCESSES,
        coordination.Characteristics.DISTRIBUTED_ACROSS_HOSTS,
        coordination.Characteristics.CAUSAL,
    )
