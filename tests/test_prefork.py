"""Pre-fork services (cinder-api, manila-api): the coordinator is started, heart included, in
the parent, then workers are forked and take locks through the coordinator they inherited,
with the parent's member id. Each worker's locks stay held until that worker lets them go:
the child keeps its own leases alive, the parent never extends a child's lock nor a child
another's, and the parent's membership lives on through the parent's heart.

Each case runs in a fresh interpreter (plain, or under ``eventlet.monkey_patch()`` with a
fresh hub in each child, as oslo.service's ProcessLauncher does)."""

import json
import subprocess
import sys

import pytest

from conftest import has, new_id, with_options

LEASE = 2.0

# The parent starts with its heart (and joins a group where there are groups), forks workers
# A and B. A takes the lock at once and holds it HOLD seconds (or is killed holding it, when
# KILL); B asks 0.5 s after A got it. Each child reports when it got the lock and what its
# release returned; wall-clock times, comparable across the processes.
SCENARIO = r"""
import sys
GREEN = sys.argv[4] == "green"
if GREEN:
    import eventlet
    eventlet.monkey_patch()
import json, os, signal, time
from tooz import coordination

url, name, group = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()
HOLD, KILL = float(sys.argv[5]), sys.argv[6] == "kill"
c = coordination.get_coordinator(url, b"prefork-parent")
c.start(start_heart=True)
if group:
    c.create_group(group).get()
    c.join_group(group).get()
report_r, report_w = os.pipe()
got_r, got_w = os.pipe()


def worker(role):
    if GREEN:
        eventlet.hubs.use_hub()
    lock = c.get_lock(name)
    if role == "A":
        assert lock.acquire(blocking=True)
        got = time.time()
        os.write(got_w, json.dumps(got).encode() + b"\n")
        if KILL:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(HOLD)
        releasing = time.time()
        released = lock.release()
        out = {"role": "A", "got": got, "releasing": releasing, "released": released}
    else:
        a_got = json.loads(os.read(got_r, 100).decode())
        time.sleep(max(0.0, a_got + 0.5 - time.time()))
        asked = time.time()
        assert lock.acquire(blocking=True)
        out = {"role": "B", "asked": asked, "got": time.time(), "a_got": a_got, "released": lock.release()}
    os.write(report_w, (json.dumps(out) + "\n").encode())


pids = []
for role in "AB":
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            worker(role)
            code = 0
        finally:
            os._exit(code)
    pids.append(pid)
statuses = [os.waitpid(pid, 0)[1] for pid in pids]
os.close(report_w)
reports = {}
with os.fdopen(report_r) as f:
    for line in f:
        r = json.loads(line)
        reports[r["role"]] = r
members = sorted(m.decode() for m in c.get_members(group).get()) if group else None
c.stop()
print(json.dumps({"reports": reports, "statuses": statuses, "members": members}))
"""


def _run(backend, mode, hold, kill=False):
    url = backend[1]
    if has(backend, "ttl_locks"):
        url = with_options(url, lock_timeout=int(LEASE))
    group = new_id("g").decode() if has(backend, "members") else ""
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", SCENARIO, url, new_id("l").decode(), group, mode,
                           str(hold), "kill" if kill else "hold"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1]), group


@pytest.mark.parametrize("mode", ["plain", "green"])
def test_a_forked_workers_lock_stays_held_until_it_lets_go(backend, mode):
    if mode == "green":
        pytest.importorskip("eventlet")
    out, group = _run(backend, mode, hold=2.5 * LEASE)
    a, b = out["reports"]["A"], out["reports"]["B"]
    print("%s %s: B got it %.2f s after A; A's release %s" % (backend[0], mode, b["got"] - a["got"], a["released"]))
    assert a["released"] is True, out
    assert b["got"] >= a["releasing"] - 0.05, out  # only once A let go
    assert b["released"] is True, out
    assert out["statuses"] == [0, 0], out
    if group:
        assert out["members"] == ["prefork-parent"], out  # the parent's member lives on


@pytest.mark.parametrize("mode", ["plain", "green"])
def test_a_killed_forked_holder_frees_its_lock_within_the_lease(backend, mode):
    """Worker A is killed (SIGKILL) holding the lock: nobody extends it any more (not the
    parent's heart, not a sibling), so B gets it within the lease and a second."""
    if mode == "green":
        pytest.importorskip("eventlet")
    if backend[0] == "zookeeper":
        pytest.skip("a killed holder's node lives as long as its session's timeout, not a lock lease")
    out, _ = _run(backend, mode, hold=0, kill=True)
    b = out["reports"]["B"]
    print("%s %s: B got it %.2f s after A was killed" % (backend[0], mode, b["got"] - b["a_got"]))
    assert "A" not in out["reports"], out
    assert b["got"] - b["a_got"] < LEASE + 1.0, out
    assert b["released"] is True, out
