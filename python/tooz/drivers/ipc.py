"""``ipc://``: System V semaphores as locks, groups in shared memory (upstream's keys)."""

import hashlib

import tooz

from tooz import coordination
from tooz.drivers import _native

#: sysv_ipc's key range on 64-bit Linux (it folds keys into [LONG_MIN, LONG_MAX]).
_KEY_MIN = -(2 ** 63)
_KEY_MAX = 2 ** 63 - 1


def ftok(name, project):
    """The key upstream derives for ``name``: md5(project + name) folded into the key range."""
    if isinstance(name, str):
        name = name.encode("ascii")
    if isinstance(project, str):
        project = project.encode("ascii")
    span = abs(_KEY_MIN) + _KEY_MAX if _KEY_MIN <= 0 else _KEY_MAX - _KEY_MIN
    return int(hashlib.md5(project + name).hexdigest(), 16) % span + _KEY_MIN


class IPCLock(_native.NativeLock):
    """A System V semaphore; released by removing it, freed by the kernel if the holder dies."""

    def acquire(self, blocking=True, shared=False, timeout=None):
        if blocking is False and timeout is not None:
            raise tooz.NotImplemented("Timeout without blocking is not implemented")
        return super().acquire(blocking, shared, timeout)


class IPCDriver(_native.NativeDriver, coordination.CoordinationDriverWithExecutor):
    """Coordination through System V IPC on one host: locks, and groups without members."""

    CHARACTERISTICS = (
        coordination.Characteristics.NON_TIMEOUT_BASED,
        coordination.Characteristics.DISTRIBUTED_ACROSS_THREADS,
        coordination.Characteristics.DISTRIBUTED_ACROSS_PROCESSES,
    )
    SCHEME = 'ipc'
    LOCK_CLASS = IPCLock

    def heartbeat(self):
        """Nothing to refresh (the kernel frees a dead holder's semaphore): None, as upstream,
        for the cost of upstream's empty method."""
        return None

    def watch_join_group(self, group_id, callback):
        self.get_members(group_id).get()  # raises NotImplemented: ipc groups have no members
        super().watch_join_group(group_id, callback)

    def watch_leave_group(self, group_id, callback):
        self.get_members(group_id).get()
        super().watch_leave_group(group_id, callback)
