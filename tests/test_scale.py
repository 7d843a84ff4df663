"""Many locks through one heartbeat, and member reads that check liveness in batches: every
held lock stays held and owned past its TTL, a lock whose key another process deleted is the
only one reported lost, a member that stopped beating is still pruned."""

import threading
import time

import pytest

from conftest import need, new_id, wait_for, with_options

LOCKS = 1000


def held_for_a_while(backend, make_coordinator, n, lock_timeout):
    """A coordinator without a heart holding ``n`` locks, and when it took the first."""
    c = make_coordinator(url=with_options(backend[1], lock_timeout=lock_timeout))
    prefix = new_id("many")
    names = ["%s-%d" % (prefix, i) for i in range(n)]
    locks = [c.get_lock(name) for name in names]
    began = time.monotonic()
    for lock in locks:
        assert lock.acquire(blocking=False)
    return c, names, locks, began


def test_a_thousand_locks_stay_held_through_heartbeats(backend, make_coordinator):
    need(backend, "ttl_locks", "lock_heartbeat")
    c, names, locks, began = held_for_a_while(backend, make_coordinator, LOCKS, lock_timeout=5)
    taken = time.monotonic() - began
    assert taken < 3, "acquiring took %.1f s: too long for this test's 5 s TTL" % taken
    lost = []
    for lock in locks:
        lock.on_lost(lambda lk: lost.append(lk.name))
    # Beats well inside the TTL, until past the TTL of the first lock taken.
    while time.monotonic() < began + 5 + 1.5:
        c.heartbeat()
        time.sleep(1)
    assert lost == []
    assert all(lock.acquired for lock in locks)
    assert all(lock.is_still_owner() for lock in locks[:: LOCKS // 50])
    other = make_coordinator()
    for name in names[:: LOCKS // 20]:
        assert other.get_lock(name).acquire(blocking=False) is False, name


def redis_script_calls(url):
    """How many script calls (EVALSHA, EVAL) the redis server has run: INFO commandstats,
    over a socket of the test's own."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port or 6379)) as s:
        s.sendall(b"INFO commandstats\r\n")
        data = b""
        while b"\r\n" not in data:
            data += s.recv(65536)
        header, _, body = data.partition(b"\r\n")
        assert header.startswith(b"$"), header
        while len(body) < int(header[1:]):
            body += s.recv(65536)
    calls = 0
    for line in body.decode().splitlines():
        if line.startswith(("cmdstat_eval:", "cmdstat_evalsha:")):
            calls += int(line.split("calls=")[1].split(",")[0])
    return calls


def test_one_heartbeat_extends_every_lock_in_few_requests(backend, make_coordinator):
    """On redis the server counts its script calls: a beat over 1,000 locks is one script call
    per thousand locks, not one per lock."""
    if backend[0] != "redis":
        pytest.skip("counted on redis, whose server counts its commands")
    c, _, locks, _ = held_for_a_while(backend, make_coordinator, LOCKS, lock_timeout=30)
    before = redis_script_calls(backend[1])
    c.heartbeat()
    spent = redis_script_calls(backend[1]) - before
    # One extension script (a failed call would be tried once more on a fresh connection).
    assert 1 <= spent <= 2, "one heartbeat ran %d scripts" % spent


def test_a_deleted_lock_alone_is_lost(backend, make_coordinator):
    need(backend, "ttl_locks", "lock_heartbeat", "break")
    c, names, locks, _ = held_for_a_while(backend, make_coordinator, 20, lock_timeout=30)
    lost = []
    for lock in locks:
        lock.on_lost(lambda lk: lost.append(lk.name))
    victim = locks[7]
    assert make_coordinator().get_lock(names[7]).break_() is True
    c.heartbeat()
    if backend[0] == "etcd3":
        # etcd keeps the shared lease alive whatever became of one key on it: the holder
        # learns of the deletion when it looks at the key (as upstream's driver does).
        assert victim.is_still_owner() is False
    assert wait_for(lambda: lost == [victim.name], timeout=5), lost
    assert not victim.acquired
    assert all(lock.acquired and lock.is_still_owner() for lock in locks if lock is not victim)


def test_heart_keeps_many_locks_of_many_threads(backend, make_coordinator):
    """Locks taken and released by threads while the heart renews them all: none is lost."""
    need(backend, "ttl_locks", "lock_heartbeat")
    c = make_coordinator(url=with_options(backend[1], lock_timeout=2), start=False)
    c.start(start_heart=True)
    make_coordinator.started.append(c)
    prefix = new_id("churn")
    kept = [c.get_lock("%s-kept-%d" % (prefix, i)) for i in range(100)]
    for lock in kept:
        assert lock.acquire(blocking=False)
    lost = []
    for lock in kept:
        lock.on_lost(lambda lk: lost.append(lk.name))
    stop = time.monotonic() + 4

    def churn(t):
        lock = c.get_lock("%s-churn-%d" % (prefix, t))
        while time.monotonic() < stop:
            assert lock.acquire(blocking=False)
            assert lock.release()

    threads = [threading.Thread(target=churn, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lost == []
    assert all(lock.is_still_owner() for lock in kept)


def test_dead_member_pruned_while_readers_skip_live_ones(backend, make_coordinator, group):
    """Group reads that skip members known to live a while yet still drop a member within its
    membership timeout once it stops beating, and see one that joins or leaves at once."""
    need(backend, "members", "heartbeat", "beat_liveness")
    url = with_options(backend[1], timeout=2)
    reader = make_coordinator(url=url, start=False)
    reader.start(start_heart=True)
    make_coordinator.started.append(reader)
    silent = make_coordinator(url=url)
    reader.create_group(group).get()
    silent.join_group(group).get()
    assert reader.get_members(group).get() == {silent._member_id}
    late = make_coordinator(url=url, start=False)
    late.start(start_heart=True)
    make_coordinator.started.append(late)
    late.join_group(group).get()
    assert reader.get_members(group).get() == {silent._member_id, late._member_id}
    began = time.monotonic()
    while silent._member_id in reader.get_members(group).get():
        assert time.monotonic() - began < 2 + 2, "a silent member outlived its membership timeout"
        time.sleep(0.1)
    late.leave_group(group).get()
    assert reader.get_members(group).get() == set()
