"""``file:///dir``: locks, groups and members in a local directory (upstream's layout)."""

import functools

import tooz
from tooz import coordination
from tooz.drivers import _native

FileFutureResult = functools.partial(coordination.CoordinatorResult)


class FileLock(_native.NativeLock):
    """A POSIX record lock on ``<dir>/<name>``, shared between the threads of a process."""


class FileDriver(_native.NativeDriver,
                 coordination.CoordinationDriverCachedRunWatchers,
                 coordination.CoordinationDriverWithExecutor):
    """Coordination in a directory: works across threads and processes of one host.

    URL: ``file:///path/to/dir``; option ``timeout`` (seconds, default 10): how long a member
    stays alive without a heartbeat.
    """

    CHARACTERISTICS = (
        coordination.Characteristics.NON_TIMEOUT_BASED,
        coordination.Characteristics.DISTRIBUTED_ACROSS_THREADS,
        coordination.Characteristics.DISTRIBUTED_ACROSS_PROCESSES,
    )
    LOCK_CLASS = FileLock
    HASH_ROUTINE = "sha1"

    def watch_elected_as_leader(self, group_id, callback):
        raise tooz.NotImplemented("not implemented")

    def unwatch_elected_as_leader(self, group_id, callback):
        raise tooz.NotImplemented("not implemented")
