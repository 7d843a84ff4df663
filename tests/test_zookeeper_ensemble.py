"""A 3-server ZooKeeper ensemble on loopback: clients keep their sessions (members, locks,
watches) when the server they talk to dies, and mutual exclusion holds throughout."""

import signal
import subprocess
import sys
import time

import pytest

from tooz import coordination

import servers
from conftest import new_id

WORKER = r"""
import os, sys, time
from tooz import coordination
url, group, member, counter, stop = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode(), sys.argv[4], sys.argv[5]
c = coordination.get_coordinator(url, member)
c.start()
c.join_group_create(group)
session = c._core  # noqa: keep the coordinator alive
lock = c.get_lock(b"ensemble-counter")
done = errors = 0
while not os.path.exists(stop):
    try:
        if not lock.acquire(blocking=5):
            continue
    except coordination.ToozError:
        errors += 1
        time.sleep(0.1)
        continue
    try:
        with open(counter) as f:
            n = int(f.read() or 0)
        time.sleep(0.005)
        with open(counter, "w") as f:
            f.write(str(n + 1))
        done += 1
    finally:
        try:
            lock.release()
        except coordination.ToozError:
            errors += 1
print(done, errors, flush=True)
c.stop()
"""


@pytest.fixture
def ensemble():
    members = servers.zookeeper_ensemble(3)
    for m in members:
        m.start()
    servers.wait_serving(members)
    yield members
    for m in members:
        m.close()


def test_failover_keeps_sessions_and_exclusion(ensemble, tmp_path):
    hosts = ",".join("127.0.0.1:%d" % m.port for m in ensemble)
    # The first host first: every client talks to server 1 until it dies.
    url = "zookeeper://?hosts=%s&randomize_hosts=false&timeout=10" % hosts
    group = new_id("g").decode()
    counter = tmp_path / "counter"
    counter.write_text("0")
    stop = tmp_path / "stop"
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, url, group, "w%d" % i, str(counter), str(stop)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    observer = coordination.get_coordinator(url.replace("randomize_hosts=false", "randomize_hosts=true"), b"observer")
    observer.start()
    try:
        def members():
            try:
                return observer.get_members(group.encode()).get()
            except coordination.GroupNotCreated:
                return set()

        deadline = time.monotonic() + 30
        while len(members()) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)
        ensemble[0].stop(signal.SIGKILL)  # the server every worker is connected to
        time.sleep(5)
        assert members() == {b"w0", b"w1", b"w2"}, "sessions moved"
        ensemble[0].start()
        servers.wait_serving([ensemble[0]])
        time.sleep(2)
        ensemble[1].stop(signal.SIGKILL)  # another one (quorum: 2 of 3 left)
        time.sleep(5)
        assert members() == {b"w0", b"w1", b"w2"}
    finally:
        stop.write_text("stop")
        outputs = [w.communicate(timeout=60) for w in workers]
        observer.stop()
    total = 0
    for (out, err), w in zip(outputs, workers):
        assert w.returncode == 0, err
        done, errors = (int(x) for x in out.split())
        print("worker: %d increments, %d calls failed during failovers" % (done, errors))
        assert done > 0
        total += done
    assert int(counter.read_text()) == total, "no increment lost: never two holders at once"
