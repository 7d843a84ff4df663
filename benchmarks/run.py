"""Ours against upstream tooz, same machine, same servers, same run.

    .venv/bin/python benchmarks/run.py [--rounds 5] [--seconds 1] [--only NAME[,NAME]] [--backends file,ipc]

Each workload of ``workloads.py`` runs in a fresh process under our interpreter (``.venv/bin/python``
with this package installed) and under ``.venv-upstream/bin/python`` (upstream tooz 9.1.0 from
PyPI), alternating A, B, A, B for ``--rounds`` rounds to cancel drift. A loop of single
operations runs for ``--seconds`` (time-based rounds, so the faster side does more); a
workload of several processes does its given number of operations. The ratio column is the
ratio of the medians, with the lowest and highest ratio of a round (ours ÷ upstream of the
same round) beside it. Prints one Markdown
table per backend: ops/s of each side (median of rounds, with min-max), the ratio ours /
upstream, p50/p99 latency, and, where there is one, the raw-operation floor. Workloads that
report acquisitions per process (``lock_fairness``) get a second table: the fewest and most
acquisitions of one process in each round, and their spread (most / fewest).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
UPSTREAM = os.environ.get("TOOZ_UPSTREAM_PYTHON", os.path.join(ROOT, ".venv-upstream", "bin", "python"))

# (workload, ops per round — milliseconds for lock_fairness —, floor workload(s) or None). Two
# floors: the bare wire (a Rust program, no Python) and the same round trips from Python with
# the client library upstream uses.
PLAN = {
    "redis": [
        ("lock_uncontended", 3000, ("floor_redis_set_del", "floor_redis_py_set_del")),
        ("lock_contended", 1000, None),
        ("lock_fairness", 3000, None),
        ("join_leave", 1000, None),
        ("get_members_50", 300, None),
        ("heartbeat", 2000, None),
        ("coordinator_lifecycle", 300, None),
        ("busy_python_no_heart", 1000, None),
        ("busy_python_with_heart", 1000, None),
    ],
    "zookeeper": [
        ("lock_uncontended", 1000, "floor_zk_create_delete"),
        ("lock_contended", 400, None),
        ("lock_fairness", 3000, None),
        ("join_leave", 1000, None),
        ("get_members_50", 300, None),
        ("heartbeat", 2000, None),
        ("coordinator_lifecycle", 100, None),
    ],
    "etcd3": [
        ("lock_uncontended", 1000, "floor_etcd3_grpc_txns"),
        ("lock_contended", 400, None),
        ("lock_fairness", 3000, None),
        ("join_leave", 1000, None),
        ("get_members_50", 300, None),
        ("heartbeat", 1000, None),
        ("coordinator_lifecycle", 200, None),
    ],
    "file": [
        ("lock_uncontended", 50000, "floor_fcntl_lock"),
        ("lock_contended", 2000, None),
        ("lock_fairness", 3000, None),
        ("join_leave", 1000, None),
        ("get_members_50", 300, None),
        ("heartbeat", 1000, None),
        ("coordinator_lifecycle", 300, None),
        ("busy_python_no_heart", 1000, None),
        ("busy_python_with_heart", 1000, None),
    ],
    "memcached": [
        ("lock_uncontended", 3000, ("floor_memcached_add_delete", "floor_memcached_py_add_delete")),
        ("lock_contended", 400, None),
        ("lock_fairness", 3000, None),
        ("join_leave", 1000, None),
        ("get_members_50", 300, None),
        ("heartbeat", 2000, None),
        ("coordinator_lifecycle", 300, None),
    ],
    "postgresql": [
        ("lock_uncontended", 1000, "floor_pg_advisory_lock"),
        ("lock_contended", 200, None),
        ("lock_fairness", 3000, None),
        ("coordinator_lifecycle", 100, None),
    ],
    # Upstream's blocking MySQL acquire polls GET_LOCK(name, 0) with 1 s pauses: few ops.
    "mysql": [
        ("lock_uncontended", 1000, "floor_mysql_get_lock"),
        ("lock_contended", 40, None),
        ("lock_fairness", 5000, None),
        ("coordinator_lifecycle", 100, None),
    ],
    "ipc": [
        ("lock_uncontended", 5000, None),
        ("lock_contended", 2000, None),
        ("lock_fairness", 3000, None),
        ("coordinator_lifecycle", 300, None),
        ("heartbeat", 2000, None),
    ],
    "none": [
        ("hashring_build_100", 20, None),
        ("hashring_build_100_bulk", 50, None),
        ("hashring_build_1000", 5, None),
        ("hashring_get_nodes", 100000, None),
        ("hashring_get_nodes_replicas", 100000, None),
    ],
}

# Floors that need a client library only upstream's virtualenv has run under its interpreter.
FLOOR_PYTHON = {"floor_zk_create_delete": "upstream", "floor_pg_advisory_lock": "upstream",
                "floor_mysql_get_lock": "upstream", "floor_redis_py_set_del": "upstream",
                "floor_memcached_py_add_delete": "upstream"}

# Servers started for the run (backend -> tests/servers.py Server), stopped at the end.
SERVERS = {}


# Backends served by a server from tests/servers.py, started once for the whole run.
NETWORKED = ("redis", "memcached", "zookeeper", "etcd3", "postgresql", "mysql")
# Backend -> its launcher in tests/servers.py, where the names differ.
LAUNCHER = {"etcd3": "etcd", "postgresql": "postgres", "mysql": "mariadb"}


def url_for(backend, scratch):
    if backend in NETWORKED:
        if backend not in SERVERS:
            sys.path.insert(0, os.path.join(ROOT, "tests"))
            import servers

            SERVERS[backend] = getattr(servers, LAUNCHER.get(backend, backend))().start()
        server = SERVERS[backend]
        return getattr(server, "url", None) or "%s://127.0.0.1:%d" % (backend, server.port)
    if backend == "file":
        return "file://" + os.path.join(scratch, "file")
    if backend == "ipc":
        return "ipc://"
    return "none://"


# Seconds of each timed loop (``--seconds``).
SECONDS = [1.0]


def run_one(python, workload, url, ops):
    out = subprocess.run([python, os.path.join(HERE, "workloads.py"), workload, url, "--ops", str(ops),
                          "--seconds", str(SECONDS[0])],
                         capture_output=True, text=True, timeout=900, cwd=HERE)
    if out.returncode != 0:
        raise SystemExit("%s %s failed under %s:\n%s" % (workload, url, python, out.stderr))
    return json.loads(out.stdout.strip().splitlines()[-1])


def pct(samples, q):
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def summarise(results):
    rates = [r["ops"] / r["seconds"] for r in results]
    samples = [x for r in results for x in r["samples_us"]]
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates),
            "p50": pct(samples, 0.50), "p99": pct(samples, 0.99)}


def fmt_rate(s):
    return "%s (%s–%s)" % (human(s["median"]), human(s["min"]), human(s["max"]))


def human(x):
    if x >= 1e6:
        return "%.2fM" % (x / 1e6)
    if x >= 1e3:
        return "%.1fk" % (x / 1e3)
    return "%.1f" % x


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--only", default="")
    parser.add_argument("--backends", default=",".join(PLAN))
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    SECONDS[0] = args.seconds
    if not os.path.exists(UPSTREAM):
        raise SystemExit("upstream virtualenv missing at %s: run scripts/setup.sh" % UPSTREAM)
    ours = sys.executable
    print("Machine: %s, %s CPUs, Python %s" % (platform.platform(), os.cpu_count(), platform.python_version()))
    print("Rounds: %d of %g s, interleaved ours/upstream; ops/s shown as median (min–max)\n"
          % (args.rounds, args.seconds))
    scratch = tempfile.mkdtemp(prefix="tooz-bench-")
    try:
        run_backends(args, only, ours, scratch)
    finally:
        for server in SERVERS.values():
            server.close()


def run_backends(args, only, ours, scratch):
    for backend in args.backends.split(","):
        rows = []
        for workload, ops, floor in PLAN[backend]:
            if only and workload not in only:
                continue
            url = url_for(backend, scratch)
            floors = (floor,) if isinstance(floor, str) else (floor or ())
            a, b, f = [], [], {fl: [] for fl in floors}
            for _ in range(args.rounds):
                # The floor right after ours: their ratio is read per round.
                a.append(run_one(ours, workload, url, ops))
                for fl in floors:
                    f[fl].append(run_one(UPSTREAM if FLOOR_PYTHON.get(fl) == "upstream" else ours, fl, url, ops))
                b.append(run_one(UPSTREAM, workload, url, ops))
            sa, sb = summarise(a), summarise(b)
            rows.append((workload, sa, sb, [(summarise(f[fl]), round_ratios(a, f[fl])) for fl in floors], a, b))
        if not rows:
            continue
        print("### %s\n" % ("hash ring (no backend)" if backend == "none" else backend))
        print("| operation | upstream ops/s | ours ops/s | ours/upstream | p50 µs up / ours | p99 µs up / ours "
              "| floor ops/s | ours/floor |")
        print("|---|---|---|---|---|---|---|---|")
        for workload, sa, sb, sf, a, b in rows:
            floor_cols = ("%s | %s" % (" / ".join(human(x["median"]) for x, _ in sf),
                                       " / ".join("%.2f (%s)" % (sa["median"] / x["median"], r) for x, r in sf))
                          ) if sf else "– | –"
            print("| %s | %s | %s | **%.2f×** (%s) | %.2f / %.2f | %.2f / %.2f | %s |" % (
                workload, fmt_rate(sb), fmt_rate(sa), sa["median"] / sb["median"], round_ratios(a, b), sb["p50"],
                sa["p50"], sb["p99"], sa["p99"], floor_cols))
        print()
        print_fairness(rows)


def round_ratios(ours, upstream):
    """The lowest and highest ours ÷ upstream of one round (each pair ran back to back)."""
    ratios = [(x["ops"] / x["seconds"]) / (y["ops"] / y["seconds"]) for x, y in zip(ours, upstream)]
    return "%.2f–%.2f" % (min(ratios), max(ratios))


def spread(results):
    """Fewest … most acquisitions of one process, over every round, and the worst spread."""
    if not all("per_process" in r for r in results):
        return None
    fewest = min(min(r["per_process"]) for r in results)
    most = max(max(r["per_process"]) for r in results)
    worst = max(max(r["per_process"]) / max(1, min(r["per_process"])) for r in results)
    return "%s … %s" % (fewest, most), worst


def print_fairness(rows):
    rows = [(w, spread(a), spread(b), sa, sb) for w, sa, sb, _, a, b in rows]
    rows = [r for r in rows if r[1] and r[2]]
    if not rows:
        return
    print("| contended lock, 4 processes | upstream per process | upstream spread | ours per process "
          "| ours spread | ours/upstream ops/s |")
    print("|---|---|---|---|---|---|")
    for workload, (ours_range, ours_worst), (up_range, up_worst), sa, sb in rows:
        print("| %s | %s | %.1f× | %s | **%.1f×** | %.2f× |" % (
            workload, up_range, up_worst, ours_range, ours_worst, sa["median"] / sb["median"]))
    print()


if __name__ == "__main__":
    main()
