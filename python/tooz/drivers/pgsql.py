"""``postgresql://``: the PostgreSQL backend (its Rust driver has not landed yet)."""

from tooz import coordination
from tooz.drivers import _native


class PostgresLock(_native.NativeLock):
    """A PostgreSQL advisory lock keyed by two bytes of md5(name)."""


class PostgresDriver(_native.UnavailableDriver, coordination.CoordinationDriver):
    CHARACTERISTICS = (
        coordination.Characteristics.NON_TIMEOUT_BASED,
        coordination.Characteristics.DISTRIBUTED_ACROSS_THREADS,
        coordination.Characteristics.DISTRIBUTED_ACROSS_PROCESSES,
        coordination.Characteristics.DISTRIBUTED_ACROSS_HOSTS,
    )
