"""The lock interface every backend's lock implements."""

import abc

import tooz


class _LockProxy:
    """What ``lock(...)`` returns: a context manager passing its arguments to ``acquire``."""

    def __init__(self, lock, *args, **kwargs):
        self.lock = lock
        self.args = args
        self.kwargs = kwargs

    def __enter__(self):
        return self.lock.__enter__(*self.args, **self.kwargs)

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.lock.__exit__(exc_type, exc_val, exc_tb)


class Lock(metaclass=abc.ABCMeta):
    def __init__(self, name):
        if not name:
            raise ValueError("Locks must be provided a name")
        self._name = name

    @property
    def name(self):
        return self._name

    def __call__(self, *args, **kwargs):
        return _LockProxy(self, *args, **kwargs)

    def __enter__(self, blocking=True, shared=False, timeout=None):
        acquired = self.acquire(blocking, shared, timeout)
        if not acquired:
            from tooz import coordination

            msg = "Acquiring lock %s failed" % self.name
            raise coordination.LockAcquireFailed(msg)
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.release()

    def is_still_owner(self):
        """Whether this lock object still holds the lock on the backend."""
        raise tooz.NotImplemented

    def break_(self):
        """Forcefully release the lock, whoever holds it."""
        raise tooz.NotImplemented

    @property
    def fencing_token(self):
        """The fencing token of the last successful acquire (None: the backend gives none)."""
        return None

    def on_lost(self, callback):
        """Call ``callback(lock)`` when a holding is lost without ``release()``."""
        raise tooz.NotImplemented

    @abc.abstractmethod
    def acquire(self, blocking=True, shared=False, timeout=None):
        """Take the lock. ``blocking``: True waits forever, False tries once, a number waits
        that many seconds. Returns whether the lock was taken."""

    @abc.abstractmethod
    def release(self):
        """Give the lock back; False when this object did not hold it."""
