"""``mysql://``: the MySQL backend (its Rust driver has not landed yet)."""

from tooz import coordination
from tooz.drivers import _native


class MySQLLock(_native.NativeLock):
    """A MySQL ``GET_LOCK`` named lock."""


class MySQLDriver(_native.UnavailableDriver, coordination.CoordinationDriver):
    CHARACTERISTICS = (
        coordination.Characteristics.NON_TIMEOUT_BASED,
        coordination.Characteristics.DISTRIBUTED_ACROSS_THREADS,
        coordination.Characteristics.DISTRIBUTED_ACROSS_PROCESSES,
        coordination.Characteristics.DISTRIBUTED_ACROSS_HOSTS,
    )
