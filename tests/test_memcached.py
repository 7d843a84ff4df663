"""memcached-specific behaviour: the keys on the wire, interop with upstream tooz (pymemcache),
dead holders, server outages and restarts, garbage in the server, TLS."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import tooz
from tooz import coordination
from tooz import utils
from tooz.drivers import memcached as memcached_driver

import servers
from certs import make_pki
from conftest import Peer, PeerError, count_under_lock, new_id


# ---------------------------------------------------------------- helpers


class Raw:
    """Speaks memcached's text protocol directly, to look at and plant keys."""

    def __init__(self, port):
        self.port = port

    def _talk(self, request, done):
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(request)
            buf = b""
            while not done(buf):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            return buf

    def get(self, key):
        """(flags, data) or None."""
        reply = self._talk(b"get " + key + b"\r\n", lambda b: b.endswith(b"END\r\n"))
        if reply == b"END\r\n":
            return None
        header, rest = reply.split(b"\r\n", 1)
        _, _, flags, length = header.split(b" ")
        return int(flags), rest[:int(length)]

    def set(self, key, flags, data, exptime=0):
        reply = self._talk(b"set %s %d %d %d\r\n%s\r\n" % (key, flags, exptime, len(data), data),
                           lambda b: b.endswith(b"\r\n"))
        assert reply == b"STORED\r\n", reply

    def delete(self, key):
        return self._talk(b"delete " + key + b"\r\n", lambda b: b.endswith(b"\r\n")) == b"DELETED\r\n"

    def stats(self):
        """The server's general ``stats``, by name (values as text)."""
        reply = self._talk(b"stats\r\n", lambda b: b.endswith(b"END\r\n"))
        return {line.split()[1]: line.split()[2] for line in reply.split(b"\r\n") if line.startswith(b"STAT ")}

    def cas_unique(self, key):
        """The item's CAS unique (meta get), or None when the key does not exist."""
        reply = self._talk(b"mg " + key + b" c\r\n", lambda b: b.endswith(b"\r\n"))
        if reply == b"EN\r\n":
            return None
        code, token = reply.split()
        assert code == b"HD" and token.startswith(b"c"), reply
        return int(token[1:])


@pytest.fixture
def raw(memcached_server):
    return Raw(memcached_server.port)


@pytest.fixture
def mc_url(memcached_server):
    return memcached_server.url


@pytest.fixture
def url(mc_url):
    """Overrides conftest's per-backend ``url``: every coordinator here is a memcached one."""
    return mc_url


@pytest.fixture
def private_server():
    """A memcached of this test's own, free to be stopped and restarted."""
    server = servers.memcached().start()
    server.url = "memcached://127.0.0.1:%d" % server.port
    yield server
    server.close()


@pytest.fixture
def upstream(mc_url, upstream_python):
    peers = []

    def make(member_id=None, url=None):
        p = Peer(url or mc_url, member_id or new_id("up"), python=upstream_python)
        peers.append(p)
        return p

    yield make
    for p in peers:
        p.close()


def wait_until(predicate, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# ---------------------------------------------------------------- classes and options


def test_driver_classes(mc_url, make_coordinator):
    c = coordination.get_coordinator(mc_url, b"me")
    assert isinstance(c, memcached_driver.MemcachedDriver)
    assert isinstance(c, coordination.CoordinationDriverCachedRunWatchers)
    assert isinstance(c, coordination.CoordinationDriverWithExecutor)
    assert c.requires_beating is True
    assert coordination.Characteristics.DISTRIBUTED_ACROSS_HOSTS in c.CHARACTERISTICS
    assert coordination.Characteristics.NON_TIMEOUT_BASED not in c.CHARACTERISTICS
    lock = make_coordinator().get_lock(b"x")
    assert isinstance(lock, memcached_driver.MemcachedLock)


def test_heartbeat_interval_is_the_smallest_timeout(mc_url, make_coordinator):
    assert make_coordinator(url=mc_url).heartbeat() == 30
    c = make_coordinator(url=mc_url + "?timeout=20&lock_timeout=7&leader_timeout=9")
    assert c.heartbeat() == 7
    c = make_coordinator(url=mc_url + "?membership_timeout=4&timeout=20")
    assert c.heartbeat() == 4


@pytest.mark.parametrize("option", ["timeout=abc", "lock_timeout=-1", "max_pool_size=0", "max_pool_size=x"])
def test_bad_options(mc_url, option):
    with pytest.raises(coordination.ToozInvalidArgument):
        coordination.get_coordinator(mc_url + "?" + option, b"me")


def test_unreachable_server_fails_start():
    c = coordination.get_coordinator("memcached://localhost:1/f00", b"me")
    with pytest.raises(coordination.ToozConnectionError):
        c.start()
    assert not c.is_started


def test_unusable_ids_and_names(mc_url, make_coordinator):
    c = make_coordinator(start=False, member_id=b"has space")
    with pytest.raises(tooz.ToozError):
        c.start()
    coord = make_coordinator()
    with pytest.raises(coordination.ToozInvalidArgument):
        coord.get_lock(b"a b")
    with pytest.raises(coordination.ToozInvalidArgument):
        coord.get_lock(b"x" * 300)
    with pytest.raises(tooz.ToozError):
        coord.create_group(b"bad\ngroup").get()


def test_pool_of_one_connection_serves_many_threads(mc_url, make_coordinator):
    c = make_coordinator(url=mc_url + "?max_pool_size=1")
    assert count_under_lock(c, new_id("l"), threads=4, rounds=20) == 80


# ---------------------------------------------------------------- the keys on the wire


def test_keys_flags_and_values(raw, make_coordinator):
    c = make_coordinator()
    member = c._member_id
    group = new_id("g")
    c.create_group(group).get()
    c.join_group(group, {"weight": 2}).get()
    assert raw.get(b"_TOOZ_MEMBER_" + member) == (1, b"It's alive!")
    flags, data = raw.get(b"_TOOZ_GROUP_" + group)
    assert flags == 2
    assert utils.loads(data) == {member: {b"capabilities": {"weight": 2}}}
    flags, data = raw.get(b"_TOOZ_GROUP_LIST")
    assert flags == 2 and group in utils.loads(data)

    name = new_id("l")
    lock = c.get_lock(name)
    assert lock.name == b"__TOOZ_LOCK_" + name
    assert lock.acquire()
    assert raw.get(b"__TOOZ_LOCK_" + name) == (1, member)
    assert lock.release()
    assert raw.get(b"__TOOZ_LOCK_" + name) is None

    c.leave_group(group).get()
    c.delete_group(group).get()
    assert raw.get(b"_TOOZ_GROUP_" + group) is None
    flags, data = raw.get(b"_TOOZ_GROUP_LIST")
    assert group not in utils.loads(data)
    c.stop()
    assert raw.get(b"_TOOZ_MEMBER_" + member) is None, "stop() deletes the beat key"


def test_str_member_id_is_stored_as_msgpack_str(raw, make_coordinator):
    c = make_coordinator(member_id="text-%s" % new_id().decode())
    name = new_id("l")
    lock = c.get_lock(name)
    assert lock.acquire()
    flags, data = raw.get(b"__TOOZ_LOCK_" + name)
    assert flags == 2 and utils.loads(data) == c._member_id
    assert lock.is_still_owner()
    assert lock.release()


def test_lock_heartbeat_extends_the_ttl(mc_url, make_coordinator):
    # memcached's clock ticks in whole seconds: a 2 s TTL beaten every 0.5 s keeps a margin
    # on a loaded machine (with 1 s, one late beat could find the key gone).
    c = make_coordinator(url=mc_url + "?lock_timeout=2")
    other = make_coordinator()
    name = new_id("l")
    lock = c.get_lock(name)
    assert lock.heartbeat() is False, "not held"
    assert lock.acquire()
    for _ in range(8):  # 4 s: twice the TTL
        time.sleep(0.5)
        assert lock.heartbeat() is True
    assert other.get_lock(name).acquire(blocking=False) is False
    assert wait_until(lambda: other.get_lock(name).acquire(blocking=False), 10), "lapses without beats"
    assert lock.is_still_owner() is False
    assert lock.release() is False, "someone else's now"


def test_a_holding_is_its_cas_unique(raw, make_coordinator):
    """On memcached 1.6.10+ the lock key's CAS unique is the fencing token and what release,
    extension and ownership checks compare against: an extension touches the key (a fresh
    TTL), which leaves its CAS unique as it was."""
    c = make_coordinator()
    name = new_id("l")
    key = b"__TOOZ_LOCK_" + name
    lock = c.get_lock(name)
    assert lock.acquire()
    assert lock.fencing_token == raw.cas_unique(key)
    token = lock.fencing_token
    for _ in range(3):
        assert lock.heartbeat() is True
        assert raw.get(key) == (1, c._member_id), "the same bytes as before"
        assert raw.cas_unique(key) == token, "a touch leaves the CAS unique as it was"
    assert lock.fencing_token == token, "the token is the acquisition's"
    assert lock.is_still_owner() is True
    assert lock.release() is True
    assert raw.get(key) is None
    assert lock.acquire()
    assert lock.fencing_token > raw.cas_unique(key) - 1 >= token
    assert lock.release() is True


def test_release_never_deletes_a_later_holding_of_the_same_member(raw, make_coordinator):
    """Two coordinators with one member id (a restarted process) store the same bytes: only
    the CAS unique tells the holdings apart, and a stale one is neither released nor
    extended."""
    member = new_id("m")
    first, second = make_coordinator(member_id=member), make_coordinator(member_id=member)
    name = new_id("l")
    key = b"__TOOZ_LOCK_" + name
    stale = first.get_lock(name)
    lost = []
    stale.on_lost(lambda lk: lost.append(lk))
    assert stale.acquire()
    assert raw.delete(key), "the key lapses (or is evicted)"
    taken = second.get_lock(name)
    assert taken.acquire(blocking=False)
    assert raw.get(key) == (1, member)
    assert stale.heartbeat() is False
    assert wait_until(lambda: lost == [stale], 5), "told on a thread of ours"
    assert stale.release() is False
    assert raw.cas_unique(key) is not None, "the later holding is still there"
    assert taken.is_still_owner() is True
    assert taken.release() is True


@pytest.fixture
def cas_off_url():
    """A memcached with CAS uniques switched off (``-C``): every one is 0."""
    server = servers.memcached(extra=("-C",)).start()
    yield "memcached://127.0.0.1:%d" % server.port
    server.close()


def test_without_cas_uniques_locks_take_the_classic_way(cas_off_url, make_coordinator):
    """``-C``: the CAS unique an add returns proves nothing, so locks fall back to the fencing
    counter and to read-compare-delete, and still do everything."""
    a, b = make_coordinator(url=cas_off_url), make_coordinator(url=cas_off_url)
    name = new_id("l")
    raw = Raw(int(cas_off_url.rsplit(":", 1)[1]))
    key = b"__TOOZ_LOCK_" + name
    tokens = []
    for holder in (a, b, a, b):
        lock = holder.get_lock(name)
        assert lock.acquire(blocking=5)
        assert raw.get(key) == (1, holder._member_id)
        assert (a if holder is b else b).get_lock(name).acquire(blocking=False) is False
        tokens.append(lock.fencing_token)
        assert lock.heartbeat() is True
        assert lock.is_still_owner() is True
        assert lock.release() is True
        assert raw.get(key) is None
    assert tokens == sorted(tokens) and len(set(tokens)) == 4 and tokens[0] >= 1, tokens
    assert raw.get(key + b":fence") == (0, str(tokens[-1]).encode())
    lock = a.get_lock(name)
    lost = []
    lock.on_lost(lambda lk: lost.append(lk))
    assert lock.acquire()
    assert raw.delete(key)
    assert b.get_lock(name).acquire(blocking=False)
    assert lock.heartbeat() is False
    assert wait_until(lambda: lost == [lock], 5)
    assert lock.release() is False
    assert raw.get(key) == (1, b._member_id), "the other holder's key stays"


def test_dead_member_is_pruned_by_the_next_lister(mc_url, make_coordinator, raw):
    a = make_coordinator(url=mc_url + "?membership_timeout=1")
    b = make_coordinator()
    group = new_id("g")
    a.create_group(group).get()
    a.join_group(group).get()
    b.join_group(group).get()
    assert wait_until(lambda: raw.get(b"_TOOZ_MEMBER_" + a._member_id) is None, 5)
    assert a.get_members(group).get() == {a._member_id, b._member_id}, "never prunes itself"
    assert b.get_members(group).get() == {b._member_id}
    assert set(utils.loads(raw.get(b"_TOOZ_GROUP_" + group)[1])) == {b._member_id}, "written back"


# ---------------------------------------------------------------- interop with upstream tooz


def test_upstream_and_ours_share_locks_both_ways(upstream, coord):
    name = new_id("l")
    up = upstream()
    up.call("lock = c.get_lock(%r)" % name)
    assert up.call("lock.name") == b"__TOOZ_LOCK_" + name
    assert up.call("lock.acquire(blocking=False)") is True
    ours = coord.get_lock(name)
    assert ours.acquire(blocking=False) is False
    assert ours.is_still_owner() is False
    assert ours.release() is False, "not ours to release"
    assert up.call("lock.get_owner()") == up.call("c._member_id")
    assert ours.get_owner() == up.call("c._member_id"), "both read the same owner"
    assert up.call("lock.release()") is True
    assert ours.get_owner() is None
    assert ours.acquire(blocking=5) is True
    assert up.call("lock.get_owner()") == coord._member_id
    assert ours.get_owner() == coord._member_id
    assert up.call("lock.acquire(blocking=False)") is False
    # Upstream's blocking acquire polls every second; it must not get in while we hold.
    up.send("lock.acquire()")
    assert not up.ready(1.5)
    assert ours.release() is True
    assert up.ready(10) and up.receive() is True
    assert up.call("lock.break_()") is True


def test_upstream_breaks_our_lock(upstream, coord):
    name = new_id("l")
    ours = coord.get_lock(name)
    assert ours.acquire()
    up = upstream()
    up.call("lock = c.get_lock(%r)" % name)
    assert up.call("lock.break_()") is True
    assert ours.is_still_owner() is False
    assert ours.release() is False


def test_groups_members_and_capabilities_both_ways(upstream, make_coordinator):
    ours = make_coordinator()
    up = upstream()
    up_id = up.call("c._member_id")
    group = new_id("g")
    up.call("c.create_group(%r).get()" % group)
    assert group in ours.get_groups().get()
    ours.join_group(group, {"role": "ours", "set": {1, 2}, "raw": b"\x00"}).get()
    up.call("c.join_group(%r, {'role': 'up'}).get()" % group)
    assert up.call("c.get_members(%r).get()" % group) == {up_id, ours._member_id}
    assert ours.get_members_with_capabilities(group).get() == {
        up_id: {"role": "up"}, ours._member_id: {"role": "ours", "set": {1, 2}, "raw": b"\x00"}}
    assert up.call("c.get_member_capabilities(%r, %r).get()" % (group, ours._member_id)) == {
        "role": "ours", "set": {1, 2}, "raw": b"\x00"}
    up.call("c.update_capabilities(%r, {'role': 'up2'}).get()" % group)
    assert ours.get_member_capabilities(group, up_id).get() == {"role": "up2"}
    ours.update_capabilities(group, [1, "two"]).get()
    assert up.call("c.get_member_capabilities(%r, %r).get()" % (group, ours._member_id)) == [1, "two"]
    with pytest.raises(coordination.MemberAlreadyExist):
        ours.join_group(group).get()
    with pytest.raises(PeerError, match="GroupNotEmpty"):
        up.call("c.delete_group(%r).get()" % group)
    up.call("c.leave_group(%r).get()" % group)
    ours.leave_group(group).get()
    up.call("c.delete_group(%r).get()" % group)
    assert group not in ours.get_groups().get()
    with pytest.raises(coordination.GroupNotCreated):
        ours.get_members(group).get()

    # ... and a group of ours, deleted by us, as upstream sees it.
    g2 = new_id("g")
    ours.create_group(g2).get()
    assert g2 in up.call("c.get_groups().get()")
    up.call("c.join_group(%r).get()" % g2)
    with pytest.raises(coordination.GroupNotEmpty):
        ours.delete_group(g2).get()
    up.call("c.leave_group(%r).get()" % g2)
    ours.delete_group(g2).get()
    assert g2 not in up.call("c.get_groups().get()")


def test_str_ids_interoperate(upstream, make_coordinator):
    ours = make_coordinator(member_id="ours-text")
    group = "g-text-%s" % new_id().decode()
    up = upstream()
    up.call("c.create_group(%r).get()" % group)
    assert group in ours.get_groups().get()
    ours.join_group(group).get()
    assert up.call("c.get_members(%r).get()" % group) == {"ours-text"}
    ours.leave_group(group).get()
    ours.delete_group(group).get()


def test_dead_upstream_member_is_pruned_and_vice_versa(upstream, make_coordinator, mc_url):
    ours = make_coordinator()
    group = new_id("g")
    ours.create_group(group).get()
    ours.join_group(group).get()
    up = upstream(url=mc_url + "?membership_timeout=1")
    up_id = up.call("c._member_id")
    up.call("c.join_group(%r).get()" % group)
    assert ours.get_members(group).get() == {ours._member_id, up_id}
    up.kill()
    assert wait_until(lambda: ours.get_members(group).get() == {ours._member_id}, 5)

    quiet = make_coordinator(url=mc_url + "?membership_timeout=1")
    quiet.join_group(group).get()
    watcher = upstream()
    assert watcher.call("c.get_members(%r).get()" % group) == {ours._member_id, quiet._member_id}
    assert wait_until(lambda: watcher.call("c.get_members(%r).get()" % group) == {ours._member_id}, 5)


# ---------------------------------------------------------------- leader election


def test_leader_election_and_get_leader(make_coordinator):
    group = new_id("g")
    a, b = make_coordinator(), make_coordinator()
    a.create_group(group).get()
    elected_a, elected_b = [], []
    a.watch_elected_as_leader(group, elected_a.append)
    b.watch_elected_as_leader(group, elected_b.append)
    assert a.get_leader(group).get() is None
    a.run_watchers()
    b.run_watchers()
    assert [(e.group_id, e.member_id) for e in elected_a] == [(group, a._member_id)]
    assert isinstance(elected_a[0], coordination.LeaderElected)
    assert elected_b == []
    assert a.get_leader(group).get() == a._member_id
    assert b.get_leader(group).get() == a._member_id
    a.run_watchers()
    assert len(elected_a) == 1, "an existing leader is not elected again"
    a.stop()
    assert b.get_leader(group).get() is None, "stop() gives leadership up"
    b.run_watchers()
    assert [e.member_id for e in elected_b] == [b._member_id]
    assert b.get_leader(group).get() == b._member_id


def test_leadership_lapses_with_a_dead_leader(mc_url, make_coordinator):
    group = new_id("g")
    code = r"""
import sys, time
from tooz import coordination
c = coordination.get_coordinator(sys.argv[1], b'doomed-leader')
c.start(start_heart=True)
c.watch_elected_as_leader(sys.argv[2].encode(), lambda e: print('elected', flush=True))
c.run_watchers()
time.sleep(600)
"""
    proc = subprocess.Popen([sys.executable, "-c", code, mc_url + "?leader_timeout=2", group.decode()],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "elected", proc.stderr.read()
        c = make_coordinator()
        elected = []
        c.watch_elected_as_leader(group, elected.append)
        c.run_watchers()
        assert elected == []
        assert c.get_leader(group).get() == b"doomed-leader"
        time.sleep(3.5)
        c.run_watchers()
        assert elected == [], "the beating leader keeps its key"
        proc.kill()
        proc.wait(10)
        assert wait_until(lambda: (c.run_watchers(), elected)[1], 6)
        assert c.get_leader(group).get() == c._member_id
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_leader_seen_by_upstream_and_back(upstream, make_coordinator):
    group = new_id("g")
    ours = make_coordinator()
    up = upstream()
    up_id = up.call("c._member_id")
    up.call("events = []")
    up.call("c.watch_elected_as_leader(%r, events.append)" % group)
    up.call("c.run_watchers()")
    assert up.call("len(events)") == 1
    assert ours.get_leader(group).get() == up_id
    elected = []
    ours.watch_elected_as_leader(group, elected.append)
    ours.run_watchers()
    assert elected == []
    up.call("c.stop()")
    ours.run_watchers()
    assert [e.member_id for e in elected] == [ours._member_id]
    up2 = upstream()
    assert up2.call("c.get_leader(%r).get()" % group) == ours._member_id


# ---------------------------------------------------------------- dead holders


HOLDER = r"""
import sys
from tooz import coordination
c = coordination.get_coordinator(sys.argv[1], b'holder')
c.start(start_heart=True)
lock = c.get_lock(sys.argv[2].encode())
assert lock.acquire(blocking=False)
print('held', flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("holder_python", ["ours", "upstream"])
def test_holder_killed_lock_free_after_lock_timeout(mc_url, coord, holder_python, request):
    name = new_id("l")
    python = sys.executable if holder_python == "ours" else request.getfixturevalue("upstream_python")
    # Upstream sends TTL = lock_timeout and beats every lock_timeout / 2: with 2 its key can
    # lapse between beats on memcached's whole-second clock, so give it 3.
    lock_timeout = 2 if holder_python == "ours" else 3
    holder = subprocess.Popen(
        [python, "-c", HOLDER, mc_url + "?lock_timeout=%d" % lock_timeout, name.decode()],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        lock = coord.get_lock(name)
        # A beating holder keeps it well past its lock_timeout.
        assert lock.acquire(blocking=4) is False
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        began = time.monotonic()
        assert lock.acquire(blocking=10) is True
        elapsed = time.monotonic() - began
        assert elapsed < lock_timeout + 2, "freed %.1fs after the kill (lock_timeout=%d)" % (elapsed, lock_timeout)
        lock.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)


# ---------------------------------------------------------------- outages


def test_server_down_then_back(private_server, make_coordinator):
    url = private_server.url + "?timeout=3"
    c = make_coordinator(url=url)
    group = new_id("g")
    c.create_group(group).get()
    lock = c.get_lock(new_id("l"))
    assert lock.acquire()

    private_server.stop()
    for call in (lambda: c.get_groups().get(timeout=10), lambda: c.create_group(new_id("g")).get(timeout=10),
                 c.heartbeat, lambda: c.get_lock(new_id("l")).acquire(blocking=False), lock.is_still_owner):
        began = time.monotonic()
        with pytest.raises(coordination.ToozConnectionError):
            call()
        assert time.monotonic() - began < 3.5

    private_server.start()  # same port, empty memory
    assert c.get_groups().get() == []
    c.heartbeat()
    assert lock.is_still_owner() is False, "the restart lost the lock"
    assert lock.release() is False
    assert lock.acquire(blocking=False) is True
    assert lock.release() is True
    c.create_group(group).get()
    c.join_group(group).get()
    assert c.get_members(group).get() == {c._member_id}


def _wait_stopped(pid, timeout=5):
    """Signals are asynchronous: wait until the kernel shows the process stopped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/%d/stat" % pid) as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.01)
    raise AssertionError("process %d did not stop" % pid)


def test_hung_server_times_out(private_server, make_coordinator):
    c = make_coordinator(url=private_server.url + "?timeout=1")
    assert c.get_groups().get() == []
    os.killpg(private_server.proc.pid, signal.SIGSTOP)
    try:
        _wait_stopped(private_server.proc.pid)
        began = time.monotonic()
        with pytest.raises(coordination.ToozConnectionError):
            c.get_groups().get(timeout=10)
        elapsed = time.monotonic() - began
        assert 0.8 < elapsed < 3, elapsed
        began = time.monotonic()
        with pytest.raises(coordination.ToozConnectionError):
            c.get_lock(new_id("l")).acquire(blocking=True)
        assert time.monotonic() - began < 3
    finally:
        os.killpg(private_server.proc.pid, signal.SIGCONT)
    assert c.get_groups().get(timeout=10) == []


def test_heart_survives_an_outage(private_server, make_coordinator):
    c = make_coordinator(url=private_server.url + "?timeout=2", start=False)
    c.start(start_heart=True)
    make_coordinator.started.append(c)
    private_server.stop()
    time.sleep(1.5)
    assert c.heart.is_alive(), "failed beats are retried, not fatal"
    private_server.start()
    raw = Raw(private_server.port)
    assert wait_until(lambda: raw.get(b"_TOOZ_MEMBER_" + c._member_id) is not None, 5)


# Coordinators made, started and stopped again and again in one process (a CLI, tests, a
# short-lived job): as upstream's, each start connects and each stop closes.
LIFECYCLES = r"""
import sys
from tooz import coordination
for _ in range(int(sys.argv[2])):
    c = coordination.get_coordinator(sys.argv[1], b"cycle")
    c.start()
    lock = c.get_lock(b"l")
    assert lock.acquire() and lock.release()
    c.stop()
"""


def test_coordinators_made_again_share_one_connection(private_server):
    """A stopped coordinator leaves its connection to the next coordinator of the same
    server in the process (``pool::Shelf``): 20 start-stop cycles open one connection, where
    they opened 20 before (the heartbeat's own, at each start), each left in TIME_WAIT."""
    raw = Raw(private_server.port)
    before = int(raw.stats()[b"total_connections"])
    subprocess.run([sys.executable, "-c", LIFECYCLES, private_server.url, "20"], check=True, timeout=60)
    opened = int(raw.stats()[b"total_connections"]) - before - 1  # less the stats request's own
    assert opened == 1


def test_beats_in_a_tight_loop_are_stored_and_still_find_a_hung_server(private_server, make_coordinator):
    """Beats sent faster than one every 50 ms go out quietly (``noreply``) but for one every
    50 ms that asks for a reply: each is a real set, and a server that stops answering is
    still reported within the timeout."""
    raw = Raw(private_server.port)
    c = make_coordinator(url=private_server.url + "?timeout=1")
    c.heartbeat()
    sets = int(raw.stats()[b"cmd_set"])
    for _ in range(2000):
        c.heartbeat()
    assert wait_until(lambda: int(raw.stats()[b"cmd_set"]) - sets >= 2000, 5)
    os.killpg(private_server.proc.pid, signal.SIGSTOP)
    try:
        _wait_stopped(private_server.proc.pid)
        began = time.monotonic()
        with pytest.raises(coordination.ToozConnectionError):
            while time.monotonic() - began < 10:
                c.heartbeat()
        assert time.monotonic() - began < 2.5
    finally:
        os.killpg(private_server.proc.pid, signal.SIGCONT)
    c.heartbeat()


def test_stop_while_server_down_does_not_raise(private_server, make_coordinator):
    c = make_coordinator(url=private_server.url + "?timeout=2")
    group = new_id("g")
    c.create_group(group).get()
    c.join_group(group).get()
    assert c.get_lock(new_id("l")).acquire()
    private_server.stop()
    c.stop()
    assert not c.is_started


# ---------------------------------------------------------------- garbage in the server


@pytest.mark.parametrize("flags,data,error", [
    (2, b"\xc1\xc1", coordination.SerializationError),  # not msgpack
    (2, b"\x93\x01\x02\x03", tooz.ToozError),  # a list, not a map
    (2, b"\x81\x01\x80", tooz.ToozError),  # a member id that is an int
    (2, b"\x81\xa1m\x05", tooz.ToozError),  # a member entry that is not a map
    (1, b"raw bytes", tooz.ToozError),
    (7, b"\x80", coordination.SerializationError),  # unknown flags
])
def test_garbage_under_a_group_key(raw, coord, flags, data, error):
    group = new_id("g")
    raw.set(b"_TOOZ_GROUP_" + group, flags, data)
    for call in (lambda: coord.get_members(group).get(), lambda: coord.join_group(group).get(),
                 lambda: coord.leave_group(group).get(), lambda: coord.get_members_with_capabilities(group).get(),
                 lambda: coord.update_capabilities(group, {}).get(), lambda: coord.delete_group(group).get()):
        with pytest.raises(error):
            call()
    with pytest.raises(coordination.GroupAlreadyExist):
        coord.create_group(group).get()
    raw.set(b"_TOOZ_GROUP_" + group, 2, b"\x80")
    coord.join_group(group).get()
    assert coord.get_members(group).get() == {coord._member_id}, "works again once the record is sane"
    coord.leave_group(group).get()
    coord.delete_group(group).get()


def test_garbage_in_the_group_list_and_lock_keys(raw, memcached_server, make_coordinator):
    # A private key space is not possible on a shared server: restore the list afterwards.
    saved = raw.get(b"_TOOZ_GROUP_LIST")
    c = make_coordinator()
    try:
        raw.set(b"_TOOZ_GROUP_LIST", 2, b"\x81\x01\x02")
        with pytest.raises(tooz.ToozError):
            c.get_groups().get()
        with pytest.raises(tooz.ToozError):
            c.create_group(new_id("g")).get()
        raw.set(b"_TOOZ_GROUP_LIST", 2, b"\xc1")
        with pytest.raises(coordination.SerializationError):
            c.get_groups().get()
    finally:
        if saved is not None:
            raw.set(b"_TOOZ_GROUP_LIST", saved[0], saved[1])
        else:
            raw.set(b"_TOOZ_GROUP_LIST", 2, b"\x90")

    group = new_id("g")
    raw.set(b"__TOOZ_LOCK__TOOZ_GROUP_LEADER_" + group, 2, b"\xc1")
    with pytest.raises(coordination.SerializationError):
        c.get_leader(group).get()
    raw.set(b"__TOOZ_LOCK__TOOZ_GROUP_LEADER_" + group, 2, b"\x05")
    with pytest.raises(tooz.ToozError):
        c.get_leader(group).get()
    name = new_id("l")
    lock = c.get_lock(name)
    raw.set(b"__TOOZ_LOCK_" + name, 9, b"junk")
    assert lock.acquire(blocking=False) is False
    assert lock.break_() is True
    assert lock.acquire(blocking=False) is True
    raw.set(b"__TOOZ_LOCK_" + name, 2, b"\xc1")
    assert lock.is_still_owner() is False
    assert lock.release() is False


# ---------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("tls"), san="DNS:memcached.invalid")


@pytest.fixture
def tls_server(tls_files):
    import shutil

    binary = shutil.which("memcached") or "/usr/bin/memcached"

    def argv(port, workdir):
        return [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-u", "root", "-m", "64", "-Z",
                "-o", "ssl_chain_cert=%s,ssl_key=%s" % (tls_files / "server.crt", tls_files / "server.key")]

    server = servers.Server("memcached-tls", argv).start()
    yield server
    server.close()


def test_tls(tls_server, tls_files, make_coordinator):
    base = "memcached://127.0.0.1:%d?timeout=5&use_ssl=true" % tls_server.port
    c = make_coordinator(url=base + "&ca_cert=%s" % (tls_files / "ca.pem"))
    group = new_id("g")
    c.create_group(group).get()
    c.join_group(group).get()
    assert c.get_members(group).get() == {c._member_id}
    lock = c.get_lock(new_id("l"))
    assert lock.acquire() and lock.release()

    # The certificate names another host: refused only when host names are checked.
    strict = make_coordinator(url=base + "&ssl_check_hostname=true&ca_cert=%s" % (tls_files / "ca.pem"),
                              start=False)
    with pytest.raises(coordination.ToozConnectionError):
        strict.start()
    # A chain that does not lead to a trusted root is refused.
    untrusted = make_coordinator(url=base, start=False)
    with pytest.raises(coordination.ToozConnectionError):
        untrusted.start()
    # Plain text to a TLS port fails cleanly rather than hanging.
    plain = make_coordinator(url="memcached://127.0.0.1:%d?timeout=2" % tls_server.port, start=False)
    with pytest.raises(coordination.ToozConnectionError):
        plain.start()


def test_tls_interop_with_upstream(tls_server, tls_files, make_coordinator, upstream_python):
    # Upstream insists on a client certificate with use_ssl (the server does not ask for one).
    url = "memcached://127.0.0.1:%d?timeout=5&use_ssl=true&ca_cert=%s&ssl_cert=%s&ssl_key=%s" % (
        tls_server.port, tls_files / "ca.pem", tls_files / "server.crt", tls_files / "server.key")
    ours = make_coordinator(url=url)
    up = Peer(url, new_id("up"), python=upstream_python)
    try:
        group = new_id("g")
        up.call("c.create_group(%r).get()" % group)
        ours.join_group(group).get()
        assert up.call("c.get_members(%r).get()" % group) == {ours._member_id}
    finally:
        up.close()
