"""``file:///dir``: locks, groups and members in a local directory (upstream's layout)."""

import functools
import hashlib
import logging
import os

from tooz import coordination
from tooz import utils
from tooz.drivers import _native

# The logger the core's records for this backend go to (tests patch it, as upstream's).
LOG = logging.getLogger("tooz.drivers.file")

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
    SCHEME = 'file'
    LOCK_CLASS = FileLock
    HASH_ROUTINE = "sha1"

    def __init__(self, member_id, parsed_url, options):
        super().__init__(member_id, parsed_url, options)
        self._dir = parsed_url.path
        self._group_dir = os.path.join(self._dir, "groups")
        self._tmpdir = os.path.join(self._dir, "tmp")
        self._driver_lock_path = os.path.join(self._dir, ".driver_lock")

    @classmethod
    def _make_filesystem_safe(cls, item):
        """The directory/file name of a group or member id: sha1 of its UTF-8 bytes."""
        return hashlib.new(cls.HASH_ROUTINE, utils.to_binary(item, encoding="utf8")).hexdigest()
