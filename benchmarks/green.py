"""Locks from many greenthreads of one eventlet-patched process: ours against upstream.

    .venv/bin/python benchmarks/green.py [--seconds 2] [--rounds 3] [--backends redis,memcached,zookeeper,etcd3]

N greenthreads (N = 1, 16, 256) of one process that called ``eventlet.monkey_patch()`` first,
each acquiring and releasing a lock of its own in a loop on one shared coordinator, for a fixed
time. Ours (this package, ``.venv/bin/python``) and upstream tooz 9.1.0 (``.venv-upstream``,
pure Python over green sockets) against the same server started here on loopback, in the same
run, alternating ours, upstream for ``--rounds`` rounds. Prints a Markdown table of acquire +
release pairs per second: the median of the rounds with min-max, and the ratio ours / upstream
as min-max over the rounds (each round's ours over the same round's upstream). For one
greenthread on redis and memcached it also shows the floor: two bare request/reply round
trips over a green socket (an acquire and a release are one request each), which bounds a
client that waits for its replies in the hub, as upstream's does. Ours, alone in the hub, looks
for the reply on the calling thread without sleeping first (``runtime::SPIN``), which spares
the CPU's wake-up and so can pass that floor.
"""

import argparse
import os
import statistics
import sys

import rates

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
UPSTREAM = os.environ.get("TOOZ_UPSTREAM_PYTHON", os.path.join(ROOT, ".venv-upstream", "bin", "python"))
SIZES = tuple(int(n) for n in os.environ.get("TOOZ_GREEN_SIZES", "1,16,256").split(","))

WORKER = r'''
import eventlet
eventlet.monkey_patch()
import json, sys, time, uuid
from tooz import coordination

url, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
coord = coordination.get_coordinator(url, uuid.uuid4().hex.encode())
coord.start()
locks = [coord.get_lock(("green-bench-%s-%d" % (uuid.uuid4().hex, i)).encode()) for i in range(n)]
count = [0]
deadline = time.monotonic() + seconds

def one(lock):
    while time.monotonic() < deadline:
        lock.acquire()
        lock.release()
        count[0] += 1

pool = eventlet.GreenPool(n)
for lock in locks:
    pool.spawn_n(one, lock)
pool.waitall()
coord.stop()
print(json.dumps({"rate": count[0] / seconds}))
'''


# The floor of one greenthread's pair on redis and memcached for a client over green sockets:
# two round trips to the server (a lock's acquire and release are one request each, on either
# side), over a green socket read in the hub, with no client library at all.
FLOOR = r'''
import eventlet
eventlet.monkey_patch()
import json, socket, sys, time

port, request, seconds = int(sys.argv[1]), sys.argv[2].encode().decode("unicode_escape").encode(), float(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
n, deadline = 0, time.monotonic() + seconds
while time.monotonic() < deadline:
    for _ in range(2):
        s.sendall(request)
        s.recv(4096)
    n += 1
print(json.dumps({"rate": n / seconds}))
'''
FLOOR_REQUEST = {"redis": r"PING\r\n", "memcached": r"version\r\n"}


def measure(python, url, n, seconds):
    return rates.measure(python, WORKER, (url, n, seconds), seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="redis,memcached,zookeeper,etcd3")
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import servers

    print("| backend | greenthreads | ours pairs/s | upstream pairs/s | ours ÷ upstream | 2-round-trip floor |")
    print("|---|---|---|---|---|---|")
    for backend in args.backends.split(","):
        server = getattr(servers, "etcd" if backend == "etcd3" else backend)().start()
        scheme = "etcd3+http" if backend == "etcd3" else backend
        try:
            url = "%s://127.0.0.1:%d" % (scheme, server.port)
            for n in SIZES:
                ours, upstream = [], []
                for _ in range(args.rounds):
                    ours.append(measure(sys.executable, url, n, args.seconds))
                    upstream.append(measure(UPSTREAM, url, n, args.seconds))
                floor = ""
                if n == 1 and backend in FLOOR_REQUEST:
                    floors = [rates.measure(sys.executable, FLOOR, (server.port, FLOOR_REQUEST[backend], args.seconds),
                                            args.seconds) for _ in range(args.rounds)]
                    floor = "%.0f (%.0f-%.0f)" % (statistics.median(floors), min(floors), max(floors))
                ratios = [o / u for o, u in zip(ours, upstream)]
                print("| %s | %d | %.0f (%.0f-%.0f) | %.0f (%.0f-%.0f) | %.2f-%.2f× | %s |"
                      % (backend, n, statistics.median(ours), min(ours), max(ours), statistics.median(upstream),
                         min(upstream), max(upstream), min(ratios), max(ratios), floor), flush=True)
        finally:
            server.close()


if __name__ == "__main__":
    main()
