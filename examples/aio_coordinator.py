"""tooz.aio: the same coordination as coroutines, for asyncio services.

    python examples/aio_coordinator.py [URL]

Calls return their values (no ``.get()``), locks are ``async with``, a group's changes come
from an ``async for``, and an election is a coroutine that returns once this member leads.
Without a URL it uses file:// in a temporary directory.
"""

import asyncio

import tooz
from tooz import aio
from example_url import example_url

GROUP = b"async-workers"


async def main(url):
    # As a context manager: started with its heartbeat, stopped on exit.
    async with aio.get_coordinator(url, b"async-1") as one, aio.get_coordinator(url, b"async-2") as two:
        await one.join_group_create(GROUP, capabilities={"cores": 8})
        print("members:", await one.get_members(GROUP))

        # A group's changes as they happen: the watch runs in a task of its own.
        async def watch():
            async for event in one.watch_group(GROUP, interval=0.1):
                print("%s: %s" % (type(event).__name__, event.member_id.decode()))
                return

        watching = asyncio.create_task(watch())
        await asyncio.sleep(0.2)
        await two.join_group_create(GROUP, capabilities={"cores": 2})
        await asyncio.wait_for(watching, 10)

        # Locks: a task waiting for a lock can be cancelled, and nothing is left held or queued.
        lock_one, lock_two = one.get_lock(b"resource"), two.get_lock(b"resource")
        async with lock_one:
            print("async-1 holds the lock; async-2 tries:", await lock_two.acquire(blocking=False))
            waiting = asyncio.create_task(lock_two.acquire())
            await asyncio.sleep(0.1)
            waiting.cancel()
            try:
                await waiting
            except asyncio.CancelledError:
                print("async-2's wait cancelled")
        print("released; async-2 tries again:", await lock_two.acquire(blocking=False))
        await lock_two.release()

        # An election: campaign() returns once this member leads.
        elected = await one.campaign(GROUP)
        print("leader:", elected.member_id.decode())
        try:
            await one.stand_down_group_leader(GROUP)
        except tooz.NotImplemented:  # redis, memcached: a leader steps aside by stopping
            print("(this backend has no stand_down_group_leader)")
        else:
            elected = await asyncio.wait_for(two.campaign(GROUP, interval=0.1), 10)
            print("after async-1 stood down, leader:", elected.member_id.decode())

        await one.leave_group(GROUP)
        await two.leave_group(GROUP)


if __name__ == "__main__":
    with example_url() as url:
        asyncio.run(main(url))
