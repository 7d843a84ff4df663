"""How the cost of group calls grows with the work, ours against upstream tooz.

    python3 benchmarks/scale.py [--sizes 10,100,1000] [--backends redis,memcached,zookeeper,etcd3,file]
                                [--rounds 3]

For each backend and each size N, one group is filled with N live members (N coordinators of
ours, started in this process: the keys are the same for both implementations), then a reader
process of each side (ours: this interpreter; upstream tooz 9.1.0: ``.venv-upstream``) times:

* ``get_members`` and ``get_members_with_capabilities`` of the N-member group;
* ``run_watchers`` of a coordinator watching joins and leaves of 100 groups (nothing changes);
* ``join 50 at once``: 50 processes, released together, each join the same group; the
  slowest join's latency (ms).

Readers alternate ours, upstream for ``--rounds`` rounds. Prints one Markdown table per
backend: calls per second of each side (median), the ratio ours/upstream, and µs per member
for the group reads (flat when the cost grows linearly with the members).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from run import SERVERS, UPSTREAM, url_for  # noqa: E402  (shares the run's servers)

READER = r'''
import json, multiprocessing, sys, time, uuid
from tooz import coordination
url, what, group, n = sys.argv[1], sys.argv[2], sys.argv[3].encode(), int(sys.argv[4])

def coordinator():
    c = coordination.get_coordinator(url, uuid.uuid4().hex.encode())
    c.start()
    return c

def timed(op, seconds=1.0):
    op()  # warm
    calls, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        op()
        calls += 1
    return calls / (time.perf_counter() - began)

def joiner(go, out):
    c = coordinator()
    go.wait()
    t0 = time.perf_counter()
    c.join_group(group).get()
    out.put(time.perf_counter() - t0)
    c.stop()

if what == "get_members":
    c = coordinator()
    def op():
        assert len(c.get_members(group).get()) == n
    rate = timed(op)
elif what == "get_members_with_capabilities":
    c = coordinator()
    def op():
        assert len(c.get_members_with_capabilities(group).get()) == n
    rate = timed(op)
elif what == "run_watchers_100":
    c = coordinator()
    noop = lambda event: None
    for i in range(100):
        g = group + b"-%d" % i
        try:
            c.create_group(g).get()
        except coordination.GroupAlreadyExist:
            pass
        c.watch_join_group(g, noop)
        c.watch_leave_group(g, noop)
    rate = timed(c.run_watchers)
elif what == "join_50":
    try:
        coordinator().create_group(group).get()
    except coordination.GroupAlreadyExist:  # an earlier round made it
        pass
    ctx = multiprocessing.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=joiner, args=(go, out)) for _ in range(50)]
    for p in procs:
        p.start()
    time.sleep(2.0)  # every joiner connected
    go.set()
    rate = max(out.get(timeout=60) for _ in procs) * 1000.0
    for p in procs:
        p.join()
print(json.dumps(rate))
'''

# Reads whose cost depends on the group's size, then fixed-size rows.
SIZED = ("get_members", "get_members_with_capabilities")
FIXED = ("run_watchers_100", "join_50")


def read(python, url, what, group, n):
    out = subprocess.run([python, "-c", READER, url, what, group, str(n)], capture_output=True,
                         text=True, timeout=600, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise SystemExit("%s %s failed under %s:\n%s" % (what, url, python, out.stderr[-3000:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def fill(url, group, n):
    """``n`` started coordinators of ours, each a member of ``group`` with capabilities, kept
    alive by their hearts (a heart is a task on the core's runtime, not a thread)."""
    from tooz import coordination

    members = []
    for i in range(n):
        c = coordination.get_coordinator(url, uuid.uuid4().hex.encode())
        c.start(start_heart=True)
        if i == 0:
            c.create_group(group).get()
        members.append((c, c.join_group(group, capabilities={"index": i})))
    for _, joined in members:
        joined.get()
    return [c for c, _ in members]


def compare(url, what, group, n, rounds):
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(read(sys.executable, url, what, group, n))
        theirs.append(read(UPSTREAM, url, what, group, n))
    return statistics.median(ours), statistics.median(theirs)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--backends", default="redis,memcached,zookeeper,etcd3,file")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    scratch = tempfile.mkdtemp(prefix="tooz-scale-")
    try:
        for backend in args.backends.split(","):
            url = url_for(backend, scratch)
            print("### %s\n" % backend)
            print("| operation | members | upstream calls/s | ours calls/s | ours/upstream | µs per member up / ours |")
            print("|---|---|---|---|---|---|")
            for n in sizes:
                group = "scale-" + uuid.uuid4().hex
                members = fill(url, group.encode(), n)
                try:
                    for what in SIZED:
                        ours, theirs = compare(url, what, group, n, args.rounds)
                        print("| %s | %d | %.1f | %.1f | %.2f× | %.1f / %.1f |" % (
                            what, n, theirs, ours, ours / theirs, 1e6 / theirs / n, 1e6 / ours / n))
                        sys.stdout.flush()
                finally:
                    for c in members:
                        c.stop()
            ours, theirs = compare(url, "run_watchers_100", "scale-" + uuid.uuid4().hex, 0, args.rounds)
            print("| run_watchers, 100 groups watched | – | %.1f | %.1f | %.2f× | |" % (theirs, ours, ours / theirs))
            ours, theirs = compare(url, "join_50", "scale-" + uuid.uuid4().hex, 0, args.rounds)
            print("| 50 processes join at once: slowest join (ms, lower is better) | – | %.1f | %.1f | %.2f× | |"
                  % (theirs, ours, theirs / ours))
            print()
            sys.stdout.flush()
    finally:
        for server in SERVERS.values():
            server.close()


if __name__ == "__main__":
    sys.exit(main())
