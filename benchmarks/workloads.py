"""Benchmark workloads, run unchanged under upstream tooz and under ours.

    python workloads.py WORKLOAD URL [--ops N] [--seconds S]

prints one JSON object: {"ops": N, "seconds": S, "samples_us": [...]} where samples are
per-operation latencies (or per-batch averages for sub-microsecond operations). Only the public
tooz API is used, so the same file measures both implementations. With ``--seconds``, the
loops of single operations run for that long instead of ``--ops`` times (what ``run.py`` does:
time-based rounds); workloads of several processes still use ``--ops``.
"""

import argparse
import fcntl
import json
import multiprocessing
import os
import sys
import tempfile
import time
import urllib.parse
import uuid


def _coordinator(url, member=None):
    from tooz import coordination

    c = coordination.get_coordinator(url, member or uuid.uuid4().hex.encode())
    c.start()
    return c


# Seconds a timed loop runs (``--seconds``); None: ``ops`` operations.
SECONDS = None


def _timed(op, ops, batch=1):
    samples = []
    began = time.perf_counter()
    until = began + SECONDS if SECONDS else None
    batches = 0
    while (time.perf_counter() < until) if until else (batches < ops // batch):
        t0 = time.perf_counter()
        for _ in range(batch):
            op()
        samples.append((time.perf_counter() - t0) * 1e6 / batch)
        batches += 1
    return {"ops": batches * batch, "seconds": time.perf_counter() - began, "samples_us": samples}


def _warm_up(op, ops):
    """A few operations before the timed loop (connections, caches): ``min(ops, 200)``."""
    for _ in range(min(ops, 200)):
        op()


def lock_uncontended(url, ops):
    c = _coordinator(url)
    lock = c.get_lock(b"bench-" + uuid.uuid4().hex.encode())

    def op():
        lock.acquire()
        lock.release()

    _warm_up(op, ops)
    out = _timed(op, ops)
    c.stop()
    return out


def _contender(url, name, counter_path, rounds, ready, go):
    c = _coordinator(url)
    lock = c.get_lock(name)
    ready.set()
    go.wait()
    for _ in range(rounds):
        with lock:
            with open(counter_path, "r+") as f:
                n = int(f.read() or 0)
                f.seek(0)
                f.write(str(n + 1))
                f.truncate()
    c.stop()


def lock_contended(url, ops, processes=4):
    """4 processes increment a shared counter under one lock; checks no increment was lost."""
    name = b"bench-" + uuid.uuid4().hex.encode()
    fd, counter_path = tempfile.mkstemp()
    os.write(fd, b"0")
    os.close(fd)
    per = max(1, ops // processes)
    ctx = multiprocessing.get_context("spawn")
    ready = [ctx.Event() for _ in range(processes)]
    go = ctx.Event()
    procs = [ctx.Process(target=_contender, args=(url, name, counter_path, per, r, go)) for r in ready]
    for p in procs:
        p.start()
    for r in ready:
        r.wait(60)
    began = time.perf_counter()
    go.set()
    for p in procs:
        p.join()
    seconds = time.perf_counter() - began
    with open(counter_path) as f:
        total = int(f.read())
    os.unlink(counter_path)
    if total != per * processes:
        raise SystemExit("lost increments: %d != %d" % (total, per * processes))
    return {"ops": total, "seconds": seconds, "samples_us": [seconds * 1e6 / total]}


def _hammer(url, name, counter_path, seconds, ready, go, counts, slot):
    c = _coordinator(url)
    lock = c.get_lock(name)
    ready.set()
    go.wait()
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        with lock:
            with open(counter_path, "r+") as f:
                total = int(f.read() or 0)
                f.seek(0)
                f.write(str(total + 1))
                f.truncate()
        n += 1
    counts[slot] = n
    c.stop()


def lock_fairness(url, ops, processes=4):
    """4 processes hammer one lock for ``ops`` milliseconds, each counting its acquisitions:
    ``per_process`` shows whether one process starves the others (the counter they bump under
    the lock checks that none of the acquisitions overlapped)."""
    name = b"bench-" + uuid.uuid4().hex.encode()
    fd, counter_path = tempfile.mkstemp()
    os.write(fd, b"0")
    os.close(fd)
    seconds = ops / 1000.0
    ctx = multiprocessing.get_context("spawn")
    counts = ctx.Array("q", processes)
    ready = [ctx.Event() for _ in range(processes)]
    go = ctx.Event()
    procs = [ctx.Process(target=_hammer, args=(url, name, counter_path, seconds, r, go, counts, i))
             for i, r in enumerate(ready)]
    for p in procs:
        p.start()
    for r in ready:
        r.wait(60)
    go.set()
    for p in procs:
        p.join()
    with open(counter_path) as f:
        total = int(f.read())
    os.unlink(counter_path)
    per_process = sorted(counts[:])
    if total != sum(per_process):
        raise SystemExit("overlapping holders: counter %d != %d acquisitions" % (total, sum(per_process)))
    return {"ops": total, "seconds": seconds, "samples_us": [seconds * 1e6 / max(1, total)],
            "per_process": per_process}


def join_leave(url, ops):
    c = _coordinator(url)
    group = b"bench-" + uuid.uuid4().hex.encode()
    c.create_group(group).get()

    def op():
        c.join_group(group).get()
        c.leave_group(group).get()

    out = _timed(op, ops)
    c.delete_group(group).get()
    c.stop()
    return out


def get_members_50(url, ops):
    group = b"bench-" + uuid.uuid4().hex.encode()
    members = [_coordinator(url) for _ in range(50)]
    members[0].create_group(group).get()
    for m in members:
        m.join_group(group).get()
    c = members[0]

    def op():
        got = c.get_members(group).get()
        assert len(got) == 50

    out = _timed(op, ops)
    for m in members:
        m.stop()
    return out


def heartbeat(url, ops):
    c = _coordinator(url)
    group = b"bench-" + uuid.uuid4().hex.encode()
    try:
        c.create_group(group).get()
        c.join_group(group).get()
    except Exception:  # noqa: BLE001 - backends without members still beat
        group = None
    # A heartbeat that does nothing (ipc) takes about as long as reading the clock: timed by
    # the thousand there.
    out = _timed(c.heartbeat, ops, batch=1000 if url.startswith("ipc:") else 1)
    c.stop()
    return out


def coordinator_lifecycle(url, ops):
    from tooz import coordination

    def op():
        c = coordination.get_coordinator(url, b"bench-member")
        c.start()
        c.stop()

    return _timed(op, ops)


def _busy_python(seconds):
    """Iterations of a pure-Python loop in ``seconds``: what a busy service thread gets done."""
    n = 0
    end = time.perf_counter() + seconds
    while True:
        for _ in range(1000):
            n += 1
        if time.perf_counter() >= end:
            return n


def _busy_with(url, heart, ops):
    from tooz import coordination

    # A short liveness window makes the heart beat often (upstream's file driver only takes
    # whole seconds).
    fast = {"file": "timeout=1", "redis": "membership_timeout=0.02",
            "memcached": "membership_timeout=0.02", "zookeeper": "timeout=2"}
    sep = "&" if "?" in url else "?"
    c = coordination.get_coordinator(url + sep + fast.get(url.split(":")[0], ""), uuid.uuid4().hex.encode())
    c.start(start_heart=heart)
    seconds = max(0.2, ops / 1000.0)
    _busy_python(0.05)
    began = time.perf_counter()
    n = _busy_python(seconds)
    elapsed = time.perf_counter() - began
    beats = c.heart.beats if heart else 0
    c.stop()
    if heart and beats < 1:
        raise SystemExit("the heart did not beat (%d beats)" % beats)
    return {"ops": n, "seconds": elapsed, "samples_us": [elapsed * 1e6 / n]}


def busy_python_no_heart(url, ops):
    """Baseline for busy_python_with_heart: a started coordinator without its heart."""
    return _busy_with(url, False, ops)


def busy_python_with_heart(url, ops):
    """A busy Python thread while the coordinator's heart beats every ~10 ms."""
    return _busy_with(url, True, ops)


def _ring_nodes(n):
    return ["node-%d" % i for i in range(n)]


def hashring_build_100(url, ops):
    from tooz import hashring

    def op():
        ring = hashring.HashRing([])
        for i, node in enumerate(_ring_nodes(100)):
            ring.add_node(node, weight=1 + i % 4)

    return _timed(op, ops)


def hashring_build_1000(url, ops):
    from tooz import hashring

    def op():
        ring = hashring.HashRing([])
        for i, node in enumerate(_ring_nodes(1000)):
            ring.add_node(node, weight=1 + i % 4)

    return _timed(op, ops)


def hashring_build_100_bulk(url, ops):
    """The same weighted ring, each weight's nodes given in one ``add_nodes`` call."""
    from tooz import hashring

    nodes = _ring_nodes(100)

    def op():
        ring = hashring.HashRing([])
        for weight in range(1, 5):
            ring.add_nodes([n for i, n in enumerate(nodes) if 1 + i % 4 == weight], weight=weight)

    return _timed(op, ops)


def _keys(n):
    return [os.urandom(16) for _ in range(n)]


def hashring_get_nodes(url, ops):
    from tooz import hashring

    ring = hashring.HashRing(_ring_nodes(100))
    keys = _keys(1000)
    i = [0]

    def op():
        ring.get_nodes(keys[i[0] % 1000])
        i[0] += 1

    return _timed(op, ops, batch=1000)


def hashring_get_nodes_replicas(url, ops):
    from tooz import hashring

    ring = hashring.HashRing(_ring_nodes(100))
    keys = _keys(1000)
    ignore = {"node-1", "node-2"}
    i = [0]

    def op():
        ring.get_nodes(keys[i[0] % 1000], ignore_nodes=ignore, replicas=3)
        i[0] += 1

    return _timed(op, ops, batch=1000)


# --------------------------------------------------------------- floors: the raw operation


def floor_fcntl_lock(url, ops):
    """A whole-file POSIX lock and unlock on an open file: what a file lock cannot beat."""
    path = os.path.join(tempfile.mkdtemp(), "lock")
    f = open(path, "a")

    def op():
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.lockf(f, fcntl.LOCK_UN)

    _warm_up(op, ops)
    return _timed(op, ops)


def _rust_floor(example, url, ops):
    """Runs ``benchmarks/<example>.rs`` (Cargo's example ``<example>``, built on first use)
    against ``url``; it prints the
    JSON line ``_timed`` would."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    binary = os.path.join(root, "target", "release", "examples", example)
    if not os.path.exists(binary):
        subprocess.run(["cargo", "build", "--quiet", "--release", "--example", example], cwd=root, check=True,
                       stdout=sys.stderr)
    out = subprocess.run([binary, url, str(ops)], capture_output=True, text=True, check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def floor_redis_set_del(url, ops):
    """``SET k v NX PX 30000`` + ``DEL k``, the two round trips a redis lock acquire + release
    cannot do without, and nothing else: plain blocking TCP on one connection, no client
    library, no Python (``benchmarks/two_round_trips.rs``)."""
    return _rust_floor("two_round_trips", url, ops)


def floor_memcached_add_delete(url, ops):
    """``add`` + ``delete`` (text protocol), the two round trips a memcached lock acquire +
    release cannot do without, sent as ``floor_redis_set_del`` sends its pair."""
    return _rust_floor("two_round_trips", url, ops)


def floor_redis_py_set_del(url, ops):
    """``floor_redis_set_del``'s pair sent from Python by redis-py, the client upstream's
    driver uses (runs under the upstream virtualenv): what the same two round trips cost a
    Python program, with no lock logic at all."""
    import redis

    parsed = urllib.parse.urlsplit(url)
    client = redis.Redis(host=parsed.hostname, port=parsed.port)
    key = "bench-floor-" + uuid.uuid4().hex

    def op():
        client.set(key, "0123456789abcdef", nx=True, px=30000)
        client.delete(key)

    _warm_up(op, ops)
    out = _timed(op, ops)
    client.close()
    return out


def floor_memcached_py_add_delete(url, ops):
    """``floor_memcached_add_delete``'s pair sent from Python by pymemcache, the client
    upstream's driver uses (upstream virtualenv), replies awaited."""
    from pymemcache.client.base import Client

    parsed = urllib.parse.urlsplit(url)
    client = Client((parsed.hostname, parsed.port))
    key = "bench-floor-" + uuid.uuid4().hex

    def op():
        client.add(key, b"0123456789abcdef", expire=30, noreply=False)
        client.delete(key, noreply=False)

    _warm_up(op, ops)
    out = _timed(op, ops)
    client.close()
    return out


def floor_zk_create_delete(url, ops):
    """Create + delete of an ephemeral node with kazoo (runs under the upstream virtualenv,
    which has it): the round trips a ZooKeeper lock cannot avoid, minus its children listing."""
    import urllib.parse

    from kazoo.client import KazooClient

    parsed = urllib.parse.urlsplit(url)
    client = KazooClient(hosts="%s:%d" % (parsed.hostname, parsed.port))
    client.start(timeout=10)
    base = "/bench-floor-" + uuid.uuid4().hex
    client.ensure_path(base)

    def op():
        client.create(base + "/node", b"member", ephemeral=True)
        client.delete(base + "/node")

    _warm_up(op, ops)
    out = _timed(op, ops)
    client.delete(base, recursive=True)
    client.stop()
    return out


def floor_etcd3_grpc_txns(url, ops):
    """The two transactions an etcd lock cannot do without (put-if-absent on a lease, then
    delete-if-ours), sent by a bare gRPC client (``tooz::clients::etcd``, the client our driver
    uses, in the small Rust program ``benchmarks/etcd3_floor.rs``) on one connection, with one lease
    granted up front: no lease per acquisition, no Python."""
    return _rust_floor("etcd3_floor", url, ops)


def floor_pg_advisory_lock(url, ops):
    """``pg_advisory_lock`` + ``pg_advisory_unlock`` on one open psycopg2 connection (runs
    under the upstream virtualenv, which has psycopg2): two round trips, no connecting."""
    import psycopg2

    parsed = urllib.parse.urlsplit(url)
    conn = psycopg2.connect(host=parsed.hostname, port=parsed.port, user=parsed.username,
                            password=parsed.password, dbname=parsed.path[1:])
    conn.autocommit = True
    cur = conn.cursor()

    def op():
        cur.execute("SELECT pg_advisory_lock(1, 2)")
        cur.fetchone()
        cur.execute("SELECT pg_advisory_unlock(1, 2)")
        cur.fetchone()

    _warm_up(op, ops)
    out = _timed(op, ops)
    conn.close()
    return out


def floor_mysql_get_lock(url, ops):
    """``GET_LOCK`` + ``RELEASE_LOCK`` on one open PyMySQL connection (upstream virtualenv)."""
    import pymysql

    parsed = urllib.parse.urlsplit(url)
    conn = pymysql.connect(host=parsed.hostname, port=parsed.port, user=parsed.username,
                           password=parsed.password, database=parsed.path[1:])
    cur = conn.cursor()

    def op():
        cur.execute("SELECT GET_LOCK('bench-floor', 0)")
        cur.fetchone()
        cur.execute("SELECT RELEASE_LOCK('bench-floor')")
        cur.fetchone()

    _warm_up(op, ops)
    out = _timed(op, ops)
    conn.close()
    return out


WORKLOADS = {name: fn for name, fn in globals().items()
             if callable(fn) and not name.startswith("_") and fn.__module__ == __name__
             and name not in ("main",)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("url")
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args()
    global SECONDS
    SECONDS = args.seconds
    print(json.dumps(WORKLOADS[args.workload](args.url, args.ops)))


if __name__ == "__main__":
    sys.exit(main())
