"""tooz for asyncio: the coordination API as coroutines, on the same Rust drivers.

.. code-block:: python

    from tooz import aio

    async with aio.get_coordinator("redis://localhost:6379", b"host-1") as coord:
        await coord.join_group_create(b"workers", capabilities={"cores": 8})
        async with coord.get_lock(b"resource"):
            ...
        async for event in coord.watch_group(b"workers"):
            print(type(event).__name__, event.member_id)

Every call awaits the Rust core's future directly: no thread per call, no executor; the
heartbeat is a task of the Rust runtime. Calls of one coordinator run in the order they were
made, as with the blocking API; a sync process and an async one share keys, locks and
groups. Cancelling a task that waits in :meth:`AsyncLock.acquire` withdraws the attempt (no
lock is left held or queued); leaving ``async with lock`` by cancellation releases the lock.
"""

import asyncio
import weakref

import tooz
from tooz import coordination
from tooz.drivers import _native

__all__ = ["AsyncCoordinator", "AsyncLock", "get_coordinator"]


def get_coordinator(backend_url, member_id, characteristics=None, **options):
    """An :class:`AsyncCoordinator` for ``backend_url`` (the URLs and options of
    :func:`tooz.coordination.get_coordinator`). Not started: ``await coord.start()`` or use
    it as ``async with``."""
    driver = coordination.get_coordinator(backend_url, member_id, characteristics=characteristics, **options)
    if not isinstance(driver, _native.NativeDriver):
        raise tooz.ToozError("%s has no asyncio API (only the built-in backends do)" % type(driver).__name__)
    return AsyncCoordinator(driver)


def _value(result):
    return result.wait_async()


class AsyncLock:
    """A distributed lock, awaited. ``async with lock:`` acquires (blocking) and releases."""

    def __init__(self, native):
        self._native = native

    @property
    def name(self):
        return self._native.name

    @property
    def acquired(self):
        """Whether this lock object holds the lock, as far as it knows (no I/O)."""
        return self._native.acquired

    async def acquire(self, blocking=True, shared=False, timeout=None):
        """As ``Lock.acquire``: True once held, False when ``blocking`` is False or the time
        runs out first. Cancelled while waiting, the attempt is withdrawn."""
        future, cancel = self._native.acquire_async(blocking, shared, timeout)
        try:
            return await future
        except asyncio.CancelledError:
            cancel()
            raise

    async def release(self):
        """True if this object held the lock and released it; completes even if cancelled."""
        return await self._native.release_async()

    @property
    def fencing_token(self):
        """As ``Lock.fencing_token``."""
        return self._native.fencing_token

    def on_lost(self, callback):
        """As ``Lock.on_lost``: ``callback(lock)`` runs on a thread of ours, not in the loop
        (use ``loop.call_soon_threadsafe`` to get back to it)."""
        ref = weakref.ref(self)
        self._native.on_lost(lambda: callback(ref()) if ref() is not None else None)

    async def is_still_owner(self):
        return await self._native.call_async("is_still_owner")

    async def break_(self):
        return await self._native.call_async("break_")

    async def heartbeat(self):
        return await self._native.call_async("heartbeat")

    async def __aenter__(self):
        if not await self.acquire():
            raise coordination.LockAcquireFailed("Acquiring lock %s failed" % self.name)
        return self

    async def __aexit__(self, exc_type, exc, tb):
        await asyncio.shield(self.release())

    def __repr__(self):
        return "<AsyncLock %r acquired=%s>" % (self.name, self.acquired)


class AsyncCoordinator:
    """The coordination API of a started driver, as coroutines returning values (not
    ``CoordAsyncResult`` objects). Exceptions are the blocking API's."""

    def __init__(self, driver):
        self._driver = driver
        self._core = driver._core

    @property
    def member_id(self):
        return self._driver._member_id

    @property
    def is_started(self):
        return self._driver._started

    @property
    def requires_beating(self):
        return self._driver.requires_beating

    # ------------------------------------------------------------------ lifecycle

    async def start(self, start_heart=False):
        if self._driver._started:
            raise tooz.ToozError("Can not start a driver which has not been stopped")
        await _value(self._core.start_async())
        self._driver._started = True
        if start_heart and self._driver.requires_beating:
            self._core.start_heart()

    async def stop(self):
        """Leaves the groups joined (errors ignored, as upstream's stop does), then stops."""
        if not self._driver._started:
            raise tooz.ToozError("Can not stop a driver which has not been started")
        self._core.stop_heart()
        self._driver._started = False
        await _value(self._core.stop_async())

    async def __aenter__(self):
        await self.start(start_heart=True)
        return self

    async def __aexit__(self, exc_type, exc, tb):
        if self._driver._started:
            await self.stop()

    async def heartbeat(self):
        """One beat; returns the seconds until the next is due (as the blocking API)."""
        return await _value(self._core.heartbeat_async())

    # ---------------------------------------------------------------- groups

    async def create_group(self, group_id):
        return await _value(self._core.create_group(group_id))

    async def delete_group(self, group_id):
        return await _value(self._core.delete_group(group_id))

    async def get_groups(self):
        return await _value(self._core.get_groups())

    async def join_group(self, group_id, capabilities=None):
        return await _value(self._core.join_group(group_id, capabilities))

    async def join_group_create(self, group_id, capabilities=None):
        """Join ``group_id``, creating it first if it does not exist yet."""
        while True:
            try:
                return await self.join_group(group_id, capabilities)
            except coordination.GroupNotCreated:
                try:
                    await self.create_group(group_id)
                except coordination.GroupAlreadyExist:
                    pass

    async def leave_group(self, group_id):
        return await _value(self._core.leave_group(group_id))

    async def get_members(self, group_id):
        return await _value(self._core.get_members(group_id))

    async def get_member_capabilities(self, group_id, member_id):
        return await _value(self._core.get_member_capabilities(group_id, member_id))

    async def get_members_with_capabilities(self, group_id):
        return await _value(self._core.get_members_with_capabilities(group_id))

    async def update_capabilities(self, group_id, capabilities):
        return await _value(self._core.update_capabilities(group_id, capabilities))

    async def get_member_info(self, group_id, member_id):
        return await _value(self._core.get_member_info(group_id, member_id))

    async def watch_group(self, group_id, interval=1.0):
        """Membership changes of ``group_id`` as they happen: ``MemberJoinedGroup`` and
        ``MemberLeftGroup`` events, without ``run_watchers``. ZooKeeper and etcd push changes
        (a child watch, a watch stream); the other backends are looked at every ``interval``
        seconds, which is also the push backends' safety net. A missing group has no members."""
        before = await self._members_or_none(group_id)
        while True:
            future, cancel = self._core.next_members_async(group_id, list(before), interval)
            try:
                now = await future
            except asyncio.CancelledError:
                cancel()
                raise
            for member_id in now - before:
                yield coordination.MemberJoinedGroup(group_id, member_id)
            for member_id in before - now:
                yield coordination.MemberLeftGroup(group_id, member_id)
            before = now

    async def _members_or_none(self, group_id):
        try:
            return set(await self.get_members(group_id))
        except coordination.GroupNotCreated:
            return set()

    # ---------------------------------------------------------------- leaders

    async def get_leader(self, group_id):
        return await _value(self._core.get_leader(group_id))

    async def campaign(self, group_id, interval=1.0):
        """Returns once this member leads ``group_id``. After a lost attempt it waits for the
        leader to go: pushed by ZooKeeper and etcd; the other backends try again after a
        pause that grows to ``interval`` seconds."""
        pause = 0.05
        while True:
            won = await _value(self._core.elect_async([group_id]))
            if won:
                return coordination.LeaderElected(group_id, self.member_id)
            future, cancel = self._core.wait_leader_change_async(group_id, pause)
            try:
                await future
            except asyncio.CancelledError:
                cancel()
                raise
            pause = min(pause * 2, interval)

    async def stand_down_group_leader(self, group_id):
        return await _value(self._core.stand_down_group_leader_async(group_id))

    # ---------------------------------------------------------------- locks

    def get_lock(self, name):
        """An :class:`AsyncLock` (no I/O)."""
        return AsyncLock(self._core.get_lock(name))

    def __repr__(self):
        return "<AsyncCoordinator %r>" % (self._driver,)
