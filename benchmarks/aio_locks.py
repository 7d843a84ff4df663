"""Many lock holders in one process: tooz.aio against the blocking APIs.

    .venv/bin/python benchmarks/aio_locks.py [--seconds 2] [--backends redis,memcached,zookeeper]

N tasks (N = 1, 16, 256), each acquiring and releasing a lock of its own in a loop, on one
coordinator, for a fixed time. Three ways of doing that work, against the same server started
here on loopback, in the same run:

* ``ours aio``: ``tooz.aio`` in one asyncio event loop (each task awaits the Rust future);
* ``upstream to_thread``: upstream tooz 9.1.0 in ``.venv-upstream``, each acquire/release
  through ``asyncio.to_thread`` (what asyncio code does with a blocking library);
* ``ours sync 1 thread``: our blocking API, one thread (the baseline ``aio`` must beat).

Prints a Markdown table of acquire+release pairs per second.
"""

import argparse
import os
import sys

import rates

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
UPSTREAM = os.environ.get("TOOZ_UPSTREAM_PYTHON", os.path.join(ROOT, ".venv-upstream", "bin", "python"))
TASKS = (1, 16, 256)

WORKER = r'''
import asyncio, json, sys, time, uuid
url, mode, tasks, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])

def names():
    return [("bench-%s-%d" % (uuid.uuid4().hex, i)).encode() for i in range(tasks)]

async def loop_aio():
    from tooz import aio
    coord = aio.get_coordinator(url, uuid.uuid4().hex.encode())
    await coord.start()
    locks = [coord.get_lock(n) for n in names()]
    count = 0
    deadline = time.monotonic() + seconds
    async def one(lock):
        nonlocal count
        while time.monotonic() < deadline:
            await lock.acquire()
            await lock.release()
            count += 1
    await asyncio.gather(*(one(l) for l in locks))
    await coord.stop()
    return count

async def loop_to_thread():
    from tooz import coordination
    coord = coordination.get_coordinator(url, uuid.uuid4().hex.encode())
    coord.start()
    locks = [coord.get_lock(n) for n in names()]
    count = 0
    deadline = time.monotonic() + seconds
    async def one(lock):
        nonlocal count
        while time.monotonic() < deadline:
            await asyncio.to_thread(lock.acquire)
            await asyncio.to_thread(lock.release)
            count += 1
    await asyncio.gather(*(one(l) for l in locks))
    coord.stop()
    return count

def loop_sync():
    from tooz import coordination
    coord = coordination.get_coordinator(url, uuid.uuid4().hex.encode())
    coord.start()
    locks = names()
    lock_objs = [coord.get_lock(n) for n in locks]
    count = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        lock = lock_objs[count % len(lock_objs)]
        lock.acquire()
        lock.release()
        count += 1
    coord.stop()
    return count

if mode == "aio":
    n = asyncio.run(loop_aio())
elif mode == "to_thread":
    n = asyncio.run(loop_to_thread())
else:
    n = loop_sync()
print(json.dumps({"rate": n / seconds}))
'''


def measure(python, url, mode, tasks, seconds):
    return rates.measure(python, WORKER, (url, mode, tasks, seconds), seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--backends", default="redis,memcached,zookeeper")
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import servers

    print("| backend | tasks | ours aio | upstream to_thread | ours sync 1 thread | aio ÷ upstream | aio ÷ sync |")
    print("|---|---|---|---|---|---|---|")
    for backend in args.backends.split(","):
        server = getattr(servers, backend)().start()
        try:
            url = "%s://127.0.0.1:%d" % (backend, server.port)
            sync = measure(sys.executable, url, "sync", 1, args.seconds)
            for tasks in TASKS:
                ours = measure(sys.executable, url, "aio", tasks, args.seconds)
                upstream = measure(UPSTREAM, url, "to_thread", tasks, args.seconds)
                print("| %s | %d | %.0f | %.0f | %.0f | %.2f× | %.2f× |"
                      % (backend, tasks, ours, upstream, sync, ours / upstream, ours / sync), flush=True)
        finally:
            server.close()


if __name__ == "__main__":
    main()
