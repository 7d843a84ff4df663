"""``zookeeper://`` / ``kazoo://``: the ZooKeeper backend (its Rust driver has not landed yet)."""

from tooz import coordination
from tooz.drivers import _native


class ZooKeeperLock(_native.NativeLock):
    """The kazoo lock recipe under ``/<namespace>/locks/<name>``."""


class KazooDriver(_native.UnavailableDriver, coordination.CoordinationDriverCachedRunWatchers):
    CHARACTERISTICS = (
        coordination.Characteristics.NON_TIMEOUT_BASED,
        coordination.Characteristics.DISTRIBUTED_ACROSS_THREADS,
        coordination.Characteristics.DISTRIBUTED_ACROSS_PROCESSES,
        coordination.Characteristics.DISTRIBUTED_ACROSS_HOSTS,
        coordination.Characteristics.SEQUENTIAL,
    )
