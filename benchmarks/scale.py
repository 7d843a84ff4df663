"""How the cost of group calls grows with the work, ours against upstream tooz.

    .venv/bin/python benchmarks/scale.py [--sizes 10,100,1000,10000] [--backends redis,memcached,zookeeper,etcd3,file]
                                [--rounds 3] [--rows members,watchers,join,heartbeat,fleet]
                                [--beat-sizes 10,100,1000,10000] [--fleet-sizes 10,100,500]

For each backend and each size N, one group is filled with N live members by a populator
process (``POPULATE`` below: it writes the members in bulk in the backend's layout, which is the
same for both implementations, and keeps them alive), both sides are checked to report exactly
N members, then a reader process of each side (ours: this interpreter; upstream tooz 9.1.0:
``.venv-upstream``) times:

* ``get_members`` and ``get_members_with_capabilities`` of the N-member group;
* ``run_watchers`` of a coordinator watching joins and leaves of 100 groups (nothing changes);
* ``join 50 at once``: 50 processes, released together, each join the same group; the
  slowest join's latency (ms), and how long after the release all 50 had joined. Each stays until all have joined, so that early joiners'
  leaving does not compete with the late ones' joins.

and, in rows of their own (``fleet.py``): ``heartbeat``, the wall time of one heartbeat of a
coordinator holding N locks; ``fleet``, what an idle fleet of N members costs the server process
(its CPU and requests, per member per second, from its own counters).

Readers alternate ours, upstream for ``--rounds`` rounds. Prints one Markdown table per
backend: µs per call of each side (median of the rounds), how many times faster ours is, and
µs per member for the group reads (flat when the cost grows linearly with the members); the
join row gives each round's slowest join.
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
import fleet  # noqa: E402

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

def joiner(go, out, done):
    c = coordinator()
    go.wait()
    t0 = time.perf_counter()
    c.join_group(group).get()
    t1 = time.perf_counter()
    out.put((t1 - t0, t1))
    done.wait()  # stay until every joiner has joined: an early one's leave is not a join
    c.stop()

if what == "count":  # how many members each read reports (the populator's check)
    c = coordinator()
    rate = [len(c.get_members(group).get()), len(c.get_members_with_capabilities(group).get())]
elif what == "get_members":
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
    go, out, done = ctx.Event(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=joiner, args=(go, out, done)) for _ in range(50)]
    for p in procs:
        p.start()
    time.sleep(2.0)  # every joiner connected
    released = time.perf_counter()  # the clock is system-wide: comparable across processes
    go.set()
    joins = [out.get(timeout=60) for _ in procs]
    done.set()
    rate = [max(j[0] for j in joins) * 1000.0, (max(j[1] for j in joins) - released) * 1000.0]
    for p in procs:
        p.join()
print(json.dumps(rate))
'''

# Fills one group with N live members in bulk, in the backend's own layout (the same for both
# implementations: that is what lets them share groups), and keeps them alive until its stdin
# closes. Run under upstream's interpreter for its raw clients (redis-py, pymemcache, kazoo,
# etcd3gw), reached through a started upstream coordinator so that they are configured as its
# driver configures them. The group itself is made by ``create_group``; members are N random
# ids with capabilities ``{"index": i}``.
POPULATE = r"""
import datetime, hashlib, os, select, sys, time, uuid
from tooz import coordination, utils
backend, url, group, n = sys.argv[1], sys.argv[2], sys.argv[3].encode(), int(sys.argv[4])
ALIVE = 3600  # seconds a member's liveness key or lease lasts: longer than any run
c = coordination.get_coordinator(url, b"populator-" + uuid.uuid4().hex.encode())
c.start()
c.create_group(group).get()
members = [(uuid.uuid4().hex.encode(), {"index": i}) for i in range(n)]
touch = None
if backend == "redis":  # the group's hash holds capabilities; a beat key per member
    pipe = c._client.pipeline(transaction=False)
    for at in range(0, n, 1000):
        chunk = members[at:at + 1000]
        pipe.hset(b"_tooz_group:" + group, mapping={m: utils.dumps(caps) for m, caps in chunk})
        for m, _ in chunk:
            pipe.psetex(b"_tooz_beats:" + m, ALIVE * 1000, b"Not dead!")
        pipe.execute()
elif backend == "memcached":  # one value maps members to capabilities; a key per member
    c.client.set(b"_TOOZ_GROUP_" + group, {m: {b"capabilities": caps} for m, caps in members})
    for at in range(0, n, 1000):
        c.client.set_many({b"_TOOZ_MEMBER_" + m: b"It's alive!" for m, _ in members[at:at + 1000]},
                          expire=ALIVE, noreply=False)
elif backend == "zookeeper":  # ephemeral children of the group's node, held by this session
    base = "/tooz/" + group.decode()
    pending = [c._coord.create_async(base + "/" + m.decode(), utils.dumps(caps), ephemeral=True)
               for m, caps in members]
    for p in pending:
        p.get(timeout=120)
elif backend == "etcd3":  # keys under the group's prefix, attached to one lease
    import base64
    b64 = lambda b: base64.b64encode(b).decode()
    lease = c.client.lease(ALIVE)
    prefix = b"tooz/groups/" + group + b"/"
    for at in range(0, n, 100):  # etcd allows 128 operations per transaction
        puts = [{"request_put": {"key": b64(prefix + m), "value": b64(utils.dumps(caps)), "lease": lease.id}}
                for m, caps in members[at:at + 100]]
        assert c.client.transaction({"compare": [], "success": puts, "failure": []}).get("succeeded")
elif backend == "file":  # a record per member; alive while its mtime is recent
    safe = lambda b: hashlib.sha1(b).hexdigest()
    where = os.path.join(url[len("file://"):], "groups", safe(group))
    paths = []
    for m, caps in members:
        paths.append(os.path.join(where, safe(m) + ".raw"))
        record = {"capabilities": caps, "joined_on": datetime.datetime.now(), "member_id": m,
                  "encoded": False}
        with open(paths[-1], "wb") as f:
            f.write(utils.dumps(record))
    touch = lambda: [os.utime(p) for p in paths]
else:
    raise SystemExit("no populator for " + backend)
print("ready", flush=True)
while not select.select([sys.stdin], [], [], 3.0)[0]:  # until stdin closes
    if touch:
        touch()
c.stop()
"""

# Reads whose cost depends on the group's size, then fixed-size rows.
SIZED = ("get_members", "get_members_with_capabilities")
FIXED = ("run_watchers_100", "join_50")


def read(python, url, what, group, n):
    out = subprocess.run([python, "-c", READER, url, what, group, str(n)], capture_output=True,
                         text=True, timeout=600, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise SystemExit("%s %s failed under %s:\n%s" % (what, url, python, out.stderr[-3000:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def fill(backend, url, group, n):
    """Start the populator on ``group`` with ``n`` members; returns it once they are written.
    Closing its stdin ends it (and, on ZooKeeper, the session holding the members)."""
    proc = subprocess.Popen([UPSTREAM, "-c", POPULATE, backend, url, group, str(n)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=tempfile.gettempdir())
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        proc.wait()
        raise SystemExit("populating %d members of %s failed (see above)" % (n, url))
    return proc


def unfill(proc):
    proc.stdin.close()
    proc.wait(timeout=60)


def compare(url, what, group, n, rounds):
    """Each side's results over ``rounds`` interleaved rounds (ours, upstream)."""
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(read(sys.executable, url, what, group, n))
        theirs.append(read(UPSTREAM, url, what, group, n))
    return ours, theirs


def spread(values, fmt="%.0f"):
    return "%s (%s)" % (fmt % statistics.median(values), ", ".join(fmt % v for v in values))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,100,1000,10000", help="group sizes, comma-separated")
    parser.add_argument("--backends", default="redis,memcached,zookeeper,etcd3,file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", default="members,watchers,join",
                        help="which rows: members (the sized reads), watchers, join, heartbeat, fleet")
    parser.add_argument("--beat-sizes", default="10,100,1000,10000", help="locks held, for the heartbeat row")
    parser.add_argument("--fleet-sizes", default="10,100,500", help="members, for the fleet row")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rows = set(args.rows.split(","))
    scratch = tempfile.mkdtemp(prefix="tooz-scale-")
    try:
        for backend in args.backends.split(","):
            url = url_for(backend, scratch)
            print("### %s\n" % backend)
            if "heartbeat" in rows:
                fleet.heartbeat_table(backend, url, [int(v) for v in args.beat_sizes.split(",")], args.rounds, UPSTREAM)
            if "fleet" in rows:
                fleet.fleet_table(backend, url, SERVERS[backend], [int(v) for v in args.fleet_sizes.split(",")],
                                  args.rounds, UPSTREAM)
            if not rows & {"members", "watchers", "join"}:
                continue
            print("| operation | members | upstream µs/call | ours µs/call | ours/upstream speed | "
                  "µs per member up / ours |")
            print("|---|---|---|---|---|---|")
            for n in sizes if "members" in rows else ():
                group = "scale-" + uuid.uuid4().hex
                populator = fill(backend, url, group, n)
                try:
                    for python in (sys.executable, UPSTREAM):
                        counts = read(python, url, "count", group, n)
                        if counts != [n, n]:
                            raise SystemExit("%s: %s sees %s members, not %d" % (url, python, counts, n))
                    for what in SIZED:
                        ours, theirs = (statistics.median(side) for side in compare(url, what, group, n, args.rounds))
                        print("| %s | %d | %.0f | %.0f | %.2f× | %.2f / %.2f |" % (
                            what, n, 1e6 / theirs, 1e6 / ours, ours / theirs, 1e6 / theirs / n, 1e6 / ours / n))
                        sys.stdout.flush()
                finally:
                    unfill(populator)
            if "watchers" in rows:
                ours, theirs = (statistics.median(side) for side in
                                compare(url, "run_watchers_100", "scale-" + uuid.uuid4().hex, 0, args.rounds))
                print("| run_watchers, 100 groups watched | – | %.0f | %.0f | %.2f× | |"
                      % (1e6 / theirs, 1e6 / ours, ours / theirs))
            if "join" in rows:
                ours, theirs = compare(url, "join_50", "scale-" + uuid.uuid4().hex, 0, args.rounds)
                for i, what in enumerate(("slowest join", "all joined, after the release")):
                    a, b = [r[i] for r in ours], [r[i] for r in theirs]
                    print("| 50 processes join at once: %s, ms: median (each round) | – | %s | %s | %.2f× | |"
                          % (what, spread(b), spread(a), statistics.median(b) / statistics.median(a)))
            print()
            sys.stdout.flush()
    finally:
        for server in SERVERS.values():
            server.close()


if __name__ == "__main__":
    sys.exit(main())
