"""Per-call cost of calls that are pure Rust work, two builds of ours side by side.

    .venv/bin/python benchmarks/percall.py --other /path/to/site-packages-of-another-build

Measures, in fresh processes and interleaved rounds (this build, then the other, then this...):
``HashRing.get_nodes`` on a 32-node ring, a ``file://`` lock's acquire+release, and
``get_members`` of a 10-member group on ``file://``. Prints ns per call (median of each build's
rounds) and this ÷ other as min-max over the rounds. ``--other`` is a directory whose ``tooz``
package is imported instead of the installed one (a copy of another build's installed
``tooz/`` folder): how the PyO3 upgrade and the 3.11 stable ABI were measured.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, tempfile, time, uuid
from tooz import coordination, hashring

seconds = float(sys.argv[1])

def timed(call):
    n, began = 0, time.perf_counter()
    while True:
        for _ in range(200):
            call()
        n += 200
        took = time.perf_counter() - began
        if took >= seconds:
            return took / n * 1e9

out = {}
ring = hashring.HashRing(["node-%d" % i for i in range(32)])
keys = [b"key-%d" % i for i in range(64)]
it = iter(range(10 ** 12))
out["HashRing.get_nodes"] = timed(lambda: ring.get_nodes(keys[next(it) % 64]))

d = tempfile.mkdtemp()
c = coordination.get_coordinator("file://" + d, b"percall")
c.start()
lock = c.get_lock(b"percall-lock")
def lock_pair():
    lock.acquire()
    lock.release()
out["file lock acquire+release"] = timed(lock_pair)

c.create_group(b"g").get()
others = []
for i in range(9):
    o = coordination.get_coordinator("file://" + d, b"m-%d" % i)
    o.start()
    o.join_group(b"g").get()
    others.append(o)
c.join_group(b"g").get()
out["get_members (file, 10 members)"] = timed(lambda: c.get_members(b"g").get())
for o in others:
    o.stop()
c.stop()
print(json.dumps(out))
"""


def run(python, path, seconds):
    env = dict(os.environ)
    if path:
        env["PYTHONPATH"] = path
    with tempfile.TemporaryDirectory() as cwd:
        out = subprocess.run([python, "-c", CHILD, str(seconds)], env=env, cwd=cwd, check=True,
                             capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--other", required=True, help="a directory holding another build's tooz/ package")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    a = p.parse_args()
    ours, other = [], []
    for _ in range(a.rounds):
        ours.append(run(sys.executable, None, a.seconds))
        other.append(run(sys.executable, a.other, a.seconds))
    print("%-34s %12s %12s %18s" % ("call", "this ns", "other ns", "this / other"))
    for name in ours[0]:
        mine = [r[name] for r in ours]
        theirs = [r[name] for r in other]
        ratios = [m / t for m, t in zip(mine, theirs)]
        print("%-34s %12.0f %12.0f %11.2f-%.2fx" % (name, statistics.median(mine), statistics.median(theirs),
                                                    min(ratios), max(ratios)))


if __name__ == "__main__":
    main()
