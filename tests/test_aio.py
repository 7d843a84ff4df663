"""tooz.aio on every backend: groups, locks, watches, leaders, cancellation, and a sync and an
async coordinator side by side. Each test runs its coroutine with ``asyncio.run`` (one test
under uvloop)."""

import asyncio
import subprocess
import sys
import threading
import time

import pytest

import tooz
from tooz import aio
from tooz import coordination

from conftest import Peer, distinct_lock_names, has, has_groups, need, new_id


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def async_coordinators(url):
    """Builds started AsyncCoordinators on the backend's URL; stops them afterwards."""
    made = []

    async def make(member_id=None, start_heart=False):
        c = aio.get_coordinator(url, member_id or new_id())
        await c.start(start_heart=start_heart)
        made.append(c)
        return c

    yield make

    async def stop_all():
        for c in made:
            if c.is_started:
                await c.stop()

    asyncio.run(stop_all())


def test_groups_members_and_capabilities(backend, async_coordinators, make_coordinator):
    sync = make_coordinator()

    async def body():
        c = await async_coordinators()
        group = new_id("g")
        if not has_groups(backend):
            with pytest.raises(tooz.NotImplemented):
                await c.create_group(group)
            return
        if not has(backend, "members"):
            await c.create_group(group)
            assert group in await c.get_groups()
            with pytest.raises(tooz.NotImplemented):
                await c.join_group(group)
            await c.delete_group(group)
            return
        await c.join_group_create(group, capabilities=b"async")
        assert group in c._driver._joined_groups
        with pytest.raises(coordination.GroupAlreadyExist):
            await c.create_group(group)
        sync.join_group(group, capabilities=b"sync").get()
        assert await c.get_members(group) == {c.member_id, sync._member_id}
        assert await c.get_member_capabilities(group, sync._member_id) == b"sync"
        assert sync.get_member_capabilities(group, c.member_id).get() == b"async"
        if has(backend, "update_capabilities"):
            await c.update_capabilities(group, {"cores": 8})
            assert (await c.get_members_with_capabilities(group))[c.member_id] == {"cores": 8}
        if has(backend, "member_info"):
            info = await c.get_member_info(group, c.member_id)
            assert "created_at" in info
        else:
            with pytest.raises(tooz.NotImplemented):
                await c.get_member_info(group, c.member_id)
        await c.leave_group(group)
        with pytest.raises(coordination.MemberNotJoined):
            await c.leave_group(group)
        with pytest.raises(coordination.GroupNotCreated):
            await c.get_members(new_id("missing"))
        assert isinstance(await c.heartbeat(), (int, float, type(None)))

    run(body())


def test_sync_and_async_exclude_each_other(backend, async_coordinators, make_coordinator):
    sync = make_coordinator()
    name = new_id("l")
    sync_lock = sync.get_lock(name)

    async def body():
        c = await async_coordinators()
        lock = c.get_lock(name)
        assert sync_lock.acquire(blocking=False)
        assert await lock.acquire(blocking=False) is False
        assert lock.acquired is False
        assert sync_lock.release()
        assert await lock.acquire(blocking=False)
        assert sync_lock.acquire(blocking=False) is False
        assert await lock.release()

    run(body())


def test_async_with_and_contention(backend, async_coordinators, make_coordinator):
    sync = make_coordinator()
    name = new_id("l")

    async def body():
        c = await async_coordinators()
        lock = c.get_lock(name)
        async with lock:
            assert lock.acquired
            assert sync.get_lock(name).acquire(blocking=False) is False
        assert lock.acquired is False
        other = sync.get_lock(name)
        assert other.acquire(blocking=False)
        began = time.monotonic()
        assert await lock.acquire(blocking=0.3) is False
        assert time.monotonic() - began >= 0.25
        waiter = asyncio.ensure_future(lock.acquire())
        await asyncio.sleep(0.2)
        assert not waiter.done()
        await asyncio.get_running_loop().run_in_executor(None, other.release)
        assert await asyncio.wait_for(waiter, 20) is True
        assert await lock.release() is True
        assert await lock.release() is False

    run(body())


CANCEL_BACKENDS = ("file", "ipc", "redis", "memcached", "zookeeper")


def test_cancelled_acquire_is_withdrawn(backend, url, async_coordinators, make_coordinator):
    if backend[0] not in CANCEL_BACKENDS:
        pytest.skip("cancellation is tested on %s" % ", ".join(CANCEL_BACKENDS))
    holder = make_coordinator()
    name = new_id("l")
    held = holder.get_lock(name)
    assert held.acquire()

    async def body():
        c = await async_coordinators()
        waiting = [asyncio.ensure_future(c.get_lock(name).acquire()) for _ in range(3)]
        timed = asyncio.ensure_future(asyncio.wait_for(c.get_lock(name).acquire(), 0.3))
        await asyncio.sleep(0.5)
        for w in waiting:
            w.cancel()
        for w in waiting:
            with pytest.raises(asyncio.CancelledError):
                await w
        with pytest.raises(asyncio.TimeoutError):
            await timed

    run(body())
    assert held.release()
    time.sleep(1.0)  # a waiter left behind would take the lock by now
    other = Peer(url, new_id("peer"))
    try:
        other.call("lock = c.get_lock(%r)" % name)
        assert other.call("lock.acquire(blocking=False)") is True, "another process gets it at once"
        assert other.call("lock.release()") is True
    finally:
        other.close()


def test_cancelling_the_holder_releases(backend, async_coordinators, make_coordinator):
    sync = make_coordinator()
    name = new_id("l")

    async def body():
        c = await async_coordinators()
        entered = asyncio.Event()

        async def hold():
            async with c.get_lock(name):
                entered.set()
                await asyncio.sleep(3600)

        task = asyncio.ensure_future(hold())
        await entered.wait()
        assert sync.get_lock(name).acquire(blocking=False) is False
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(body())
    lock = sync.get_lock(name)
    assert lock.acquire(blocking=False) is True
    lock.release()


def test_watch_group_delivers_joins_and_leaves(backend, async_coordinators, make_coordinator):
    need(backend, "members")
    sync = make_coordinator()
    group = new_id("g")
    sync.create_group(group).get()

    async def body():
        c = await async_coordinators()
        events = c.watch_group(group, interval=0.1)
        first = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0.3)
        await asyncio.get_running_loop().run_in_executor(None, lambda: sync.join_group(group).get())
        joined = await asyncio.wait_for(first, 10)
        assert isinstance(joined, coordination.MemberJoinedGroup) and joined.member_id == sync._member_id
        await asyncio.get_running_loop().run_in_executor(None, lambda: sync.leave_group(group).get())
        left = await asyncio.wait_for(events.__anext__(), 10)
        assert isinstance(left, coordination.MemberLeftGroup) and left.member_id == sync._member_id
        await events.aclose()

    run(body())


def test_watch_group_is_pushed_where_the_backend_pushes(backend, async_coordinators, make_coordinator):
    """With a poll interval far longer than the test, only a push can deliver the events: a
    group created after the watch began, a join, a leave."""
    need(backend, "pushed_watch")
    sync = make_coordinator()
    group = new_id("g")

    async def body():
        c = await async_coordinators()
        events = c.watch_group(group, interval=300)
        first = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0.3)
        in_thread = asyncio.get_running_loop().run_in_executor
        await in_thread(None, lambda: sync.create_group(group).get())
        await asyncio.sleep(0.3)
        assert not first.done(), "an empty new group changes no membership"
        began = time.monotonic()
        await in_thread(None, lambda: sync.join_group(group).get())
        joined = await asyncio.wait_for(first, 20)
        assert isinstance(joined, coordination.MemberJoinedGroup) and joined.member_id == sync._member_id
        await in_thread(None, lambda: sync.leave_group(group).get())
        left = await asyncio.wait_for(events.__anext__(), 20)
        assert isinstance(left, coordination.MemberLeftGroup)
        assert time.monotonic() - began < 60, "pushed, not polled"
        # A watch left waiting is withdrawn when its task is cancelled.
        waiting = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0.2)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await c.get_members(group) == set(), "the coordinator still answers"

    run(body())


def test_watch_group_rejects_a_bad_interval(backend, async_coordinators):
    need(backend, "members")

    async def body():
        c = await async_coordinators()
        with pytest.raises(tooz.ToozError):
            await c.watch_group(new_id("g"), interval=0).__anext__()

    run(body())


def test_campaign_and_stand_down(backend, async_coordinators):
    need(backend, "election")
    group = new_id("g")

    async def body():
        first = await async_coordinators(start_heart=True)
        second = await async_coordinators(start_heart=True)
        for c in (first, second):
            try:
                await c.create_group(group)
            except coordination.GroupAlreadyExist:
                pass
        elected = await asyncio.wait_for(first.campaign(group), 10)
        assert elected.member_id == first.member_id
        if has(backend, "get_leader"):
            assert await second.get_leader(group) == first.member_id
        contender = asyncio.ensure_future(second.campaign(group, interval=0.1))
        await asyncio.sleep(0.5)
        assert not contender.done(), "one leader at a time"
        if has(backend, "stand_down"):
            await first.stand_down_group_leader(group)
        else:
            await first.stop()
        elected = await asyncio.wait_for(contender, 30)
        assert elected.member_id == second.member_id

    run(body())


def test_campaign_is_woken_by_the_leaders_departure_where_the_backend_pushes(backend, async_coordinators):
    """A contender that has waited long (its retry pause grown to many seconds) still wins
    within moments of the leader standing down: the backend's push wakes it."""
    need(backend, "pushed_watch", "stand_down")
    group = new_id("g")

    async def body():
        first = await async_coordinators(start_heart=True)
        second = await async_coordinators(start_heart=True)
        await first.create_group(group)
        await asyncio.wait_for(first.campaign(group), 10)
        contender = asyncio.ensure_future(second.campaign(group, interval=300))
        # Polling alone would try at 0, 0.05, 0.15, … 6.35, 12.75 and 25.55 s (the pause
        # doubling): a stand-down at 13 s would wait 12.5 s for the next attempt.
        await asyncio.sleep(13)
        assert not contender.done()
        await first.stand_down_group_leader(group)
        began = time.monotonic()
        elected = await asyncio.wait_for(contender, 30)
        assert elected.member_id == second.member_id
        assert time.monotonic() - began < 5, "pushed, not polled"
        # A campaign left waiting is withdrawn when its task is cancelled.
        third = await async_coordinators(start_heart=True)
        waiting = asyncio.ensure_future(third.campaign(group))
        await asyncio.sleep(0.3)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await third.get_leader(group) == second.member_id

    run(body())


EXIT_MID_FLIGHT = r"""
import asyncio, random, sys, uuid
from tooz import aio, coordination

async def main(url):
    name = uuid.uuid4().hex.encode()
    holder = coordination.get_coordinator(url, uuid.uuid4().hex.encode())
    holder.start()
    assert holder.get_lock(name).acquire()
    c = aio.get_coordinator(url, uuid.uuid4().hex.encode())
    await c.start()
    # Waits that end (time out) one after another on the core's threads, over the next
    # half second: the interpreter finalizes meanwhile.
    for _ in range(400):
        asyncio.ensure_future(c.get_lock(name).acquire(timeout=random.uniform(0.05, 0.5)))
    await asyncio.sleep(0.02)
    sys.exit(0)

asyncio.run(main(sys.argv[1]))
"""


def test_exiting_with_calls_in_flight_is_clean(backend):
    """The interpreter exits while the core's threads are still finishing calls: none of them
    may ask for the GIL once CPython finalizes (it would end the thread under tokio's
    catch_unwind, and the process would abort)."""
    if backend[0] in ("ipc", "postgresql", "mysql"):
        pytest.skip("a semaphore or a server connection per lock: 300 of them is too many")
    for _ in range(10):
        out = subprocess.run([sys.executable, "-c", EXIT_MID_FLIGHT, backend[1]], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "FATAL" not in out.stderr


def test_many_concurrent_acquires_make_no_threads(backend, async_coordinators):
    if backend[0] == "ipc":
        pytest.skip("a SysV semaphore per lock: 1,000 of them is a host-wide resource")

    # A backend with a server connection per held lock (as upstream) gets 100: the test
    # servers accept 300 connections.
    n = 100 if has(backend, "connection_release") else 1000

    async def body():
        c = await async_coordinators()
        locks = [c.get_lock(name) for name in distinct_lock_names(backend, n)]
        before = threading.active_count()
        assert all(await asyncio.gather(*(lock.acquire() for lock in locks)))
        assert threading.active_count() == before, "no Python thread per call"
        assert all(await asyncio.gather(*(lock.release() for lock in locks)))

    run(body())


def test_under_uvloop(backend, async_coordinators):
    uvloop = pytest.importorskip("uvloop")

    async def body():
        c = await async_coordinators()
        lock = c.get_lock(new_id("l"))
        async with lock:
            assert await lock.is_still_owner() if has(backend, "is_still_owner") else lock.acquired
        if has_groups(backend):
            assert await c.get_groups() is not None

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(body())


def test_lifecycle_errors(url):
    async def body():
        c = aio.get_coordinator(url, new_id())
        with pytest.raises(tooz.ToozError):
            await c.stop()
        async with c:
            assert c.is_started
            with pytest.raises(tooz.ToozError):
                await c.start()
        assert not c.is_started

    run(body())
