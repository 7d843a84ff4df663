"""``redis://``: the Redis backend (its Rust driver has not landed yet)."""

import functools

from tooz import coordination
from tooz.drivers import _native

RedisFutureResult = functools.partial(coordination.CoordinatorResult)


class RedisLock(_native.NativeLock):
    """A Redis key ``<namespace>_<name>_lock`` holding the owner's token, with a TTL."""


class RedisDriver(_native.UnavailableDriver,
                  coordination.CoordinationDriverCachedRunWatchers,
                  coordination.CoordinationDriverWithExecutor):
    CHARACTERISTICS = (
        coordination.Characteristics.DISTRIBUTED_ACROSS_THREADS,
        coordination.Characteristics.DISTRIBUTED_ACROSS_PROCESSES,
        coordination.Characteristics.DISTRIBUTED_ACROSS_HOSTS,
        coordination.Characteristics.CAUSAL,
    )
