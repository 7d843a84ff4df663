"""Fencing tokens and lost-lock notice.

Tokens: every acquisition of a lock name on a backend gets a token greater than every token
before it, across processes (checked in the order the holders saw under the lock). Lost
locks: a holder stalled past its lock's lifetime is told (``on_lost``) when it resumes, and
neither claims nor releases the lock that has a new holder by then."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tooz import coordination

import servers
from conftest import Peer, new_id, wait_for

# Backends that give tokens (ipc's SysV semaphores have nowhere to keep a counter).
FENCED = ("file", "redis", "memcached", "zookeeper", "etcd3")

WORKER = r"""
import sys, time
from tooz import coordination
url, name, rounds, log, member = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), sys.argv[4], sys.argv[5]
c = coordination.get_coordinator(url, member.encode())
c.start(start_heart=True)
lock = c.get_lock(name)
for _ in range(rounds):
    with lock:
        with open(log, "a") as f:
            f.write("%d %s\n" % (lock.fencing_token, member))
        time.sleep(0.002)
c.stop()
"""




def test_tokens_increase_in_acquisition_order_across_processes(backend, url, make_coordinator, tmp_path):
    if backend[0] not in FENCED:
        lock = make_coordinator().get_lock(new_id("l"))
        assert lock.acquire()
        assert lock.fencing_token is None, "no token where the backend cannot give one"
        lock.release()
        return
    name = new_id("l")
    log = tmp_path / "order"
    # One holder from this process first, with a token, then a fleet.
    c = make_coordinator()
    lock = c.get_lock(name)
    assert lock.fencing_token is None, "no token before an acquire"
    assert lock.acquire()
    first = lock.fencing_token
    assert isinstance(first, int)
    lock.release()
    assert lock.acquire()
    assert lock.fencing_token > first
    lock.release()
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, url, name.decode(), "15", str(log), "w%d" % i])
               for i in range(4)]
    for w in workers:
        assert w.wait(120) == 0
    tokens = [int(line.split()[0]) for line in log.read_text().splitlines()]
    assert len(tokens) == 60
    assert all(a < b for a, b in zip(tokens, tokens[1:])), tokens
    assert tokens[0] > lock.fencing_token


def test_tokens_keep_increasing_after_a_killed_holder(backend, url, make_coordinator):
    if backend[0] not in FENCED:
        pytest.skip("no tokens on %s" % backend[0])
    name = new_id("l")
    if backend[0] in ("redis", "memcached", "etcd3"):
        url = url + ("&" if "?" in url else "?") + "lock_timeout=2"
    holder = Peer(url, new_id("holder"))
    try:
        holder.call("lock = c.get_lock(%r)" % name)
        assert holder.call("lock.acquire()") is True
        killed_token = holder.call("lock.fencing_token")
    finally:
        holder.kill()
    lock = make_coordinator(url=url).get_lock(name)
    assert lock.acquire(blocking=30), "the killed holder's lock frees"
    assert lock.fencing_token > killed_token
    lock.release()


def test_file_tokens_go_on_from_the_counter_an_earlier_version_kept_in_the_lock_file(tmp_path):
    (tmp_path / "upgraded").write_text("41")
    c = coordination.get_coordinator("file://%s" % tmp_path, new_id())
    c.start()
    lock = c.get_lock(b"upgraded")
    assert lock.acquire()
    assert lock.fencing_token == 42
    lock.release()
    assert lock.acquire()
    assert lock.fencing_token == 43
    lock.release()
    c.stop()
    assert (tmp_path / "upgraded").read_text() == "41", "the lock file itself is left alone"


def test_file_tokens_survive_in_the_fences_directory(tmp_path):
    url = "file://%s" % tmp_path
    tokens = []
    for _ in range(3):
        c = coordination.get_coordinator(url, new_id())
        c.start()
        lock = c.get_lock(b"persisted")
        assert lock.acquire()
        tokens.append(lock.fencing_token)
        lock.release()
        c.stop()
    assert tokens == sorted(tokens) and len(set(tokens)) == 3


def test_zookeeper_tokens_survive_a_server_restart(tmp_path):
    server = servers.zookeeper().start()
    try:
        url = "zookeeper://127.0.0.1:%d?timeout=5" % server.port
        c = coordination.get_coordinator(url, new_id())
        c.start()
        lock = c.get_lock(b"restarted")
        assert lock.acquire()
        before = lock.fencing_token
        lock.release()
        c.stop()
        server.stop()
        server.start()  # same data directory: the lock directory and its counter persist
        c = coordination.get_coordinator(url, new_id())
        c.start()
        lock = c.get_lock(b"restarted")
        assert lock.acquire(blocking=10)
        assert lock.fencing_token > before
        lock.release()
        c.stop()
    finally:
        server.close()


# ------------------------------------------------------------------------- lost locks

LOST = {
    # (URL options, seconds to stall the holder)
    "etcd3": ("?lock_timeout=2", 5),
    "redis": ("?lock_timeout=2", 4),
    "memcached": ("?lock_timeout=2", 5),
    "zookeeper": ("?timeout=2", 5),
}


@pytest.fixture(params=sorted(LOST))
def lost_target(request):
    launcher, scheme = {"etcd3": ("etcd", "etcd3+http")}.get(request.param, (request.param, request.param))
    server = getattr(servers, launcher)().start()
    query, stall = LOST[request.param]
    yield request.param, "%s://127.0.0.1:%d%s" % (scheme, server.port, query), stall
    server.close()


def test_a_stalled_holder_is_told_its_lock_was_lost(lost_target):
    name, url, stall = lost_target
    lock_name = new_id("l")
    holder = Peer(url, new_id("holder"))
    other = coordination.get_coordinator(url, new_id("other"))
    other.start()
    try:
        holder.call("import time; lost = []; lock = c.get_lock(%r)" % lock_name)
        holder.call("lock.on_lost(lambda l: lost.append((time.monotonic(), l is lock)))")
        assert holder.call("lock.acquire()") is True
        old_token = holder.call("lock.fencing_token")
        holder.call("c.heart.start()")
        os.kill(holder.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(stall)  # past the lock's TTL / the session's timeout
            taken = other.get_lock(lock_name)
            assert taken.acquire(blocking=20), "the stalled holder's lock lapsed"
            assert taken.fencing_token > old_token
        finally:
            os.kill(holder.proc.pid, signal.SIGCONT)
        resumed = time.monotonic()
        assert wait_for(lambda: holder.call("len(lost)") == 1, timeout=10), "on_lost fired"
        told_after = holder.call("lost[0][0] - time.monotonic()") + (time.monotonic() - resumed)
        print("%s: on_lost %.2f s after the holder resumed" % (name, max(told_after, 0.0)))
        assert holder.call("lost[0][1]") is True, "called with the lock"
        assert holder.call("lock.acquired") is False
        assert holder.call("lock.is_still_owner()") is False
        assert holder.call("lock.release()") is False, "nothing of the new holder's is touched"
        assert taken.is_still_owner() is True
        time.sleep(1)
        assert holder.call("len(lost)") == 1, "once"
        assert taken.release() is True
    finally:
        holder.close()
        other.stop()


def test_memcached_eviction_is_noticed():
    server = servers.Server("memcached", lambda port, workdir: [
        "/usr/bin/memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-u", "root", "-m", "2"]).start()
    try:
        url = "memcached://127.0.0.1:%d" % server.port
        c = coordination.get_coordinator(url, b"holder")
        c.start()
        lost = []
        lock = c.get_lock(b"evictable")
        lock.on_lost(lambda lk: lost.append(lk))
        assert lock.acquire()
        filler = coordination.get_coordinator(url, b"filler")
        filler.start()
        # Items of the lock key's size class, far more than 2 MB of them: the least recently
        # used go, the lock's key among them.
        for i in range(40000):
            filler.get_lock(b"filler-%06d" % i).acquire(blocking=False)
        assert lock.is_still_owner() is False, "the holder is told, not fooled"
        assert wait_for(lambda: lost == [lock], timeout=5)
        assert lock.acquired is False
        filler.stop()
        c.stop()
    finally:
        server.close()


def test_is_still_owner_asks_the_backend(backend, make_coordinator):
    c = make_coordinator()
    name = new_id("l")
    lock = c.get_lock(name)
    assert lock.is_still_owner() is False
    assert lock.acquire()
    assert lock.is_still_owner() is True
    if backend[0] in ("redis", "memcached", "ipc"):
        assert c.get_lock(name).break_() is True
        assert lock.is_still_owner() is False, "broken behind its back"
        assert lock.acquired is False
    else:
        assert lock.release() is True
        assert lock.is_still_owner() is False
