"""``etcd3+http://`` / ``etcd3+https://``: the etcd v3 backend (its Rust driver has not landed yet)."""

from tooz import coordination
from tooz.drivers import _native


class Etcd3Lock(_native.NativeLock):
    """An etcd key ``/tooz/locks<name>`` attached to a lease."""


class Etcd3Driver(_native.UnavailableDriver,
                  coordination.CoordinationDriverCachedRunWatchers,
                  coordination.CoordinationDriverWithExecutor):
    DEFAULT_HOST = "localhost"
    DEFAULT_PORT = 2379
    DEFAULT_TIMEOUT = 30
    CHARACTERISTICS = (
        coordination.Characteristics.NON_TIMEOUT_BASED,
        coordination.Characteristics.DISTRIBUTED_ACROSS_THREADS,
        coordination.Characteristics.DISTRIBUTED_ACROSS_PROCESSES,
        coordination.Characteristics.LINEARIZABLE,
        coordination.Characteristics.SERIALIZABLE,
    )
