"""ZooKeeper specifics: interop with upstream tooz + kazoo, znode layout, session faults,
server outages, options, digest authentication."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import tooz
from tooz import coordination
from tooz import locking
from tooz.drivers import zookeeper as zk_driver

from conftest import Peer, PeerError, assert_green_wait_withdrawn, new_id, wait_for, with_options
from certs import make_pki
from servers import free_port, zookeeper


@pytest.fixture
def ns():
    return new_id("ns").decode()


@pytest.fixture
def ns_url(zookeeper_server, ns):
    return "zookeeper://127.0.0.1:%d?namespace=%s" % (zookeeper_server.port, ns)


@pytest.fixture
def url(ns_url):
    """These tests are about zookeeper only: not parametrised over the other backends."""
    return ns_url


@pytest.fixture
def peers():
    made = []

    def make(url, python=sys.executable, member_id=None):
        p = Peer(url, member_id or new_id("peer"), python=python)
        made.append(p)
        return p

    yield make
    for p in made:
        if p.proc.poll() is None:
            try:
                os.kill(p.proc.pid, signal.SIGCONT)
            except OSError:
                pass
        p.close()


@pytest.fixture
def upstream(ns_url, upstream_python, peers):
    """Coordinators on upstream tooz (kazoo); ``c._coord`` there is the raw KazooClient."""

    def make(url=None):
        return peers(url or ns_url, python=upstream_python, member_id=new_id("up"))

    return make


# ------------------------------------------------------------------ classes and names


def test_driver_classes(ns_url):
    for scheme in ("zookeeper", "kazoo"):
        c = coordination.get_coordinator(ns_url.replace("zookeeper://", scheme + "://"), b"me")
        assert isinstance(c, zk_driver.KazooDriver)
        assert isinstance(c, coordination.CoordinationDriverCachedRunWatchers)
        assert not isinstance(c, coordination.CoordinationDriverWithExecutor)
        assert c.requires_beating is True
        assert coordination.Characteristics.SEQUENTIAL in c.CHARACTERISTICS
    assert issubclass(zk_driver.ZooKeeperLock, locking.Lock)
    assert issubclass(zk_driver.ZooAsyncResult, coordination.CoordAsyncResult)


def test_zoo_async_result_runs_its_handler():
    r = zk_driver.ZooAsyncResult(None, lambda pending, timeout, x: (pending, timeout, x), 3)
    assert r.done()
    assert r.get(5) == (None, 5, 3)


# ------------------------------------------------------------------ interop with upstream


@pytest.mark.interop
def test_znodes_are_upstreams(upstream, ns, make_coordinator):
    """Our groups, members, locks and leader contenders sit where kazoo looks for them."""
    up = upstream()
    ours = make_coordinator()
    group = new_id("g")
    ours.create_group(group).get()
    ours.join_group(group, {"k": "v"}).get()
    assert up.call("c._coord.get_children('/%s')" % ns) == [group.decode()]
    assert up.call("c._coord.get_children('/%s/%s')" % (ns, group.decode())) == [ours._member_id.decode()]
    assert up.call("c._coord.exists('/%s/%s/%s').ephemeralOwner != 0" % (ns, group.decode(), ours._member_id.decode()))
    up.call("from tooz import utils")
    assert up.call("utils.loads(c._coord.get('/%s/%s/%s')[0])" % (ns, group.decode(), ours._member_id.decode())) == {
        "k": "v"}
    lock = ours.get_lock(b"res")
    assert lock.acquire()
    [node] = up.call("c._coord.get_children('/%s/locks/res')" % ns)
    assert len(node) == 32 + len("__lock__") + 10 and "__lock__" in node
    assert up.call("c._coord.get('/%s/locks/res/%s')[0]" % (ns, node)) == ours._member_id
    assert up.call("c._coord.exists('/%s/locks/res/%s').ephemeralOwner != 0" % (ns, node))
    lock.release()
    assert up.call("c._coord.get_children('/%s/locks/res')" % ns) == []


@pytest.mark.interop
def test_locks_exclude_both_ways(upstream, make_coordinator):
    name = new_id("l")
    up = upstream()
    up.call("lock = c.get_lock(%r)" % name)
    assert up.call("lock.acquire(blocking=False)") is True
    ours = make_coordinator().get_lock(name)
    assert ours.acquire(blocking=False) is False
    assert ours.acquire(blocking=0.3) is False
    got = []
    waiter = threading.Thread(target=lambda: got.append(ours.acquire(blocking=10)))
    waiter.start()
    time.sleep(0.3)
    assert got == []
    assert up.call("lock.release()") is True
    waiter.join(10)
    assert got == [True], "woken by the release of upstream's node"
    assert up.call("lock.acquire(blocking=False)") is False
    up.send("lock.acquire(blocking=True)")
    assert not up.ready(0.5), "upstream got a lock we hold"
    assert ours.release()
    assert up.ready(10) and up.receive() is True
    assert ours.is_still_owner() is False
    assert up.call("lock.release()") is True


@pytest.mark.interop
def test_queue_of_waiters_across_implementations(upstream, make_coordinator):
    """Waiters of both kinds get the lock in turn, one at a time."""
    name = new_id("l")
    holder = make_coordinator().get_lock(name)
    assert holder.acquire()
    up = upstream()
    up.call("lock = c.get_lock(%r)" % name)
    up.send("lock.acquire(blocking=True)")
    time.sleep(0.3)  # upstream queues first
    ours = make_coordinator().get_lock(name)
    got = []
    waiter = threading.Thread(target=lambda: got.append(ours.acquire(blocking=20)))
    waiter.start()
    time.sleep(0.3)
    holder.release()
    assert up.ready(10) and up.receive() is True
    time.sleep(0.3)
    assert got == [], "still upstream's turn"
    assert up.call("lock.release()") is True
    waiter.join(10)
    assert got == [True]
    ours.release()


@pytest.mark.interop
def test_members_and_info_seen_both_ways(upstream, make_coordinator):
    up = upstream()
    ours = make_coordinator()
    up_id = up.call("c._member_id")
    group = new_id("g")
    up.call("c.create_group(%r).get()" % group)
    up.call("c.join_group(%r, {'role': 'upstream'}).get()" % group)
    ours.join_group(group, {"role": "ours", "n": [1, 2.5, None]}).get()
    assert ours.get_members_with_capabilities(group).get() == {
        up_id: {"role": "upstream"}, ours._member_id: {"role": "ours", "n": [1, 2.5, None]}}
    info = ours.get_member_info(group, up_id).get()
    assert info["capabilities"] == {"role": "upstream"}
    up.call("import datetime")
    theirs = up.call("c.get_member_info(%r, %r).get()['created_at'].isoformat()" % (group, ours._member_id))
    assert theirs == ours.get_member_info(group, ours._member_id).get()["created_at"].isoformat()
    ours.update_capabilities(group, {"role": "updated"}).get()
    assert up.call("c.get_member_capabilities(%r, %r).get()" % (group, ours._member_id)) == {"role": "updated"}
    up.call("c.update_capabilities(%r, {'role': 'up2'}).get()" % group)
    assert ours.get_member_capabilities(group, up_id).get() == {"role": "up2"}
    up.call("c.stop()")
    assert ours.get_members(group).get() == {ours._member_id}, "upstream's ephemeral member left with its session"


@pytest.mark.interop
def test_leaders_seen_both_ways(upstream, make_coordinator):
    up = upstream()
    up_id = up.call("c._member_id")
    ours = make_coordinator()
    group = new_id("g")
    ours.create_group(group).get()
    up.call("elected = []")
    up.call("c.watch_elected_as_leader(%r, elected.append)" % group)
    up.call("c.run_watchers()")
    assert up.call("len(elected)") == 1
    assert ours.get_leader(group).get() == up_id
    mine = []
    ours.watch_elected_as_leader(group, mine.append)
    ours.run_watchers()
    assert mine == [], "upstream leads"
    assert b"leader" in ours.get_members(group).get(), "the leader lock sits in the group, as upstream's"
    assert up.call("c.stand_down_group_leader(%r)" % group) is True
    ours.run_watchers()
    assert [e.member_id for e in mine] == [ours._member_id]
    assert up.call("c.get_leader(%r).get()" % group) == ours._member_id
    up.call("c.run_watchers()")
    assert up.call("len(elected)") == 1, "we lead now"
    ours.stop()
    assert wait_for(lambda: (up.call("c.run_watchers()"), up.call("len(elected)"))[1] == 2, timeout=10)
    assert up.call("c.get_leader(%r).get()" % group) == up_id


# ------------------------------------------------------------------ sessions


def test_session_expiry_releases_locks_and_members(ns_url, peers, make_coordinator):
    """A frozen process loses its session: its member node and lock go; once it thaws it is
    told the lock is gone and works again on a new session."""
    group = new_id("g")
    observer = make_coordinator()
    observer.create_group(group).get()
    frozen = peers(with_options(ns_url, timeout=2))
    frozen.call("c.join_group(%r).get()" % group)
    frozen.call("lock = c.get_lock(b'res')")
    assert frozen.call("lock.acquire()") is True
    frozen_id = frozen.call("c._member_id")
    assert observer.get_members(group).get() == {frozen_id}
    mine = observer.get_lock(b"res")
    assert not mine.acquire(blocking=False)
    os.kill(frozen.proc.pid, signal.SIGSTOP)
    began = time.monotonic()
    assert mine.acquire(blocking=15), "the server expired the frozen session"
    assert time.monotonic() - began < 8
    assert observer.get_members(group).get() == set()
    os.kill(frozen.proc.pid, signal.SIGCONT)
    assert frozen.call("lock.is_still_owner()") is False
    assert frozen.call("lock.release()") is False, "a lock lost with the session is not reported released"
    # The thawed coordinator carries on with a new session.
    assert wait_for(lambda: _quiet(frozen, "c.join_group(%r).get()" % group), timeout=10)
    assert observer.get_members(group).get() == {frozen_id}
    mine.release()
    assert frozen.call("lock.acquire(blocking=5)") is True


def _quiet(peer, statement):
    try:
        peer.call(statement)
        return True
    except PeerError:
        return False


def test_killed_upstream_holder_releases_after_its_session(ns_url, upstream, make_coordinator):
    up = upstream(with_options(ns_url, timeout=2))
    up.call("lock = c.get_lock(b'res')")
    assert up.call("lock.acquire()") is True
    ours = make_coordinator().get_lock(b"res")
    assert not ours.acquire(blocking=False)
    up.kill()
    assert ours.acquire(blocking=10)
    ours.release()


def test_heartbeat_returns_the_timeout(make_coordinator):
    assert make_coordinator().heartbeat() == 10
    assert make_coordinator(url=with_options(make_coordinator.url, timeout=4)).heartbeat() == 4


def test_stop_ends_the_session_at_once(make_coordinator):
    a, b = make_coordinator(), make_coordinator()
    group = new_id("g")
    a.create_group(group).get()
    a.join_group(group).get()
    lock = a.get_lock(b"res")
    assert lock.acquire()
    a._stop()  # without leaving: the session's end removes the member
    assert b.get_members(group).get() == set()
    assert b.get_lock(b"res").acquire(blocking=False)


# ------------------------------------------------------------------ server outages


@pytest.fixture
def own_server():
    server = zookeeper().start()
    yield server
    server.close()


def test_server_down_at_start():
    began = time.monotonic()
    c = coordination.get_coordinator("zookeeper://127.0.0.1:%d?timeout=2" % free_port(), b"me")
    with pytest.raises(coordination.ToozConnectionError):
        c.start()
    assert time.monotonic() - began < 10
    c = coordination.get_coordinator("zookeeper://localhost:1/f00", b"me", timeout=1)
    with pytest.raises(coordination.ToozConnectionError):
        c.start()


def test_server_restart_then_recover(own_server, make_coordinator):
    url = "zookeeper://127.0.0.1:%d?timeout=3" % own_server.port
    c = make_coordinator(url=url)
    group = new_id("g")
    c.create_group(group).get()
    c.join_group(group).get()
    lock = c.get_lock(new_id("l"))
    assert lock.acquire()
    own_server.stop()
    began = time.monotonic()
    with pytest.raises(coordination.ToozConnectionError):
        c.get_groups().get()
    with pytest.raises(coordination.ToozConnectionError):
        c.get_lock(new_id("l")).acquire(blocking=False)
    with pytest.raises(coordination.ToozConnectionError):
        c.heartbeat()
    assert time.monotonic() - began < 20, "failures are prompt, not hangs"
    time.sleep(3)  # longer than the session timeout: the session is over
    own_server.start()  # same port, same data directory
    assert group in c.get_groups().get(), "persistent nodes survived the restart"
    assert lock.is_still_owner() is False, "a lock of the lost session is not claimed"
    assert lock.acquire(blocking=10), "the old session's node goes when the server expires it"
    # The member of the ended session was re-joined by the new one (healing), and stays.
    assert wait_for(lambda: c.get_members(group).get() == {c._member_id}, timeout=10)
    time.sleep(2.5)
    assert c.get_members(group).get() == {c._member_id}
    assert c.heartbeat() == 3
    lock.release()


def test_short_outage_keeps_the_session(own_server, make_coordinator):
    """A connection that comes back before the session timeout keeps members and locks."""
    url = "zookeeper://127.0.0.1:%d?timeout=10" % own_server.port
    c = make_coordinator(url=url)
    other = make_coordinator(url=url)
    group = new_id("g")
    c.create_group(group).get()
    c.join_group(group).get()
    lock = c.get_lock(b"res")
    assert lock.acquire()
    own_server.stop()
    time.sleep(1)
    own_server.start()
    assert wait_for(lambda: _ok(lambda: c.heartbeat()), timeout=15)
    assert lock.is_still_owner() is True
    assert other.get_members(group).get() == {c._member_id}
    assert not other.get_lock(b"res").acquire(blocking=False)
    assert lock.release() is True


def test_waiter_is_woken_through_a_watch_set_again_after_reconnecting(own_server, make_coordinator):
    """A lock waiter's watch on its predecessor outlives a dropped connection: the client sets
    it again on the new connection (SetWatches), so a release after the outage wakes it."""
    url = "zookeeper://127.0.0.1:%d?timeout=30" % own_server.port  # a slow JVM restart keeps it
    holder = make_coordinator(url=url)
    name = new_id("l")
    held = holder.get_lock(name)
    assert held.acquire()
    waiter = make_coordinator(url=url).get_lock(name)
    outcome = []
    t = threading.Thread(target=lambda: outcome.append(waiter.acquire(blocking=20)))
    t.start()
    time.sleep(0.5)
    own_server.stop()
    time.sleep(1)
    own_server.start()
    assert wait_for(lambda: _ok(lambda: holder.heartbeat()), timeout=15)
    assert outcome == [], "still waiting: the holder's session survived"
    assert held.release() is True
    t.join(25)
    assert outcome == [True]
    assert waiter.release() is True


def _ok(call):
    try:
        call()
        return True
    except tooz.ToozError:
        return False


def test_blocking_acquire_during_outage_fails_cleanly(own_server, make_coordinator):
    url = "zookeeper://127.0.0.1:%d?timeout=2" % own_server.port
    holder = make_coordinator(url=url)
    c = make_coordinator(url=url)
    name = new_id("l")
    assert holder.get_lock(name).acquire()
    waiter = c.get_lock(name)
    outcome = []

    def wait():
        try:
            outcome.append(waiter.acquire(blocking=True))
        except Exception as e:  # noqa: BLE001 - recorded for the assertions
            outcome.append(e)

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.5)
    assert outcome == []
    began = time.monotonic()
    own_server.stop()
    t.join(20)
    assert not t.is_alive(), "a blocking acquire does not hang when the server goes"
    assert time.monotonic() - began < 15
    assert len(outcome) == 1 and isinstance(outcome[0], coordination.ToozConnectionError), outcome
    assert waiter.release() is False, "never reported as held"
    own_server.start()
    # The holder's session is gone too (more than its timeout without a server).
    assert waiter.acquire(blocking=10)
    assert waiter.is_still_owner()
    waiter.release()


# ------------------------------------------------------------------ options, ids, data


@pytest.mark.parametrize("query", ["timeout=x", "timeout=0", "timeout=1e300", "handler=gevent", "hosts=a:0", "hosts=[::1",
                                   "use_ssl=true&keyfile_password=p", "use_ssl=true&certfile=/x",
                                   "use_ssl=true&ca=/no/such/file", "namespace=a/../b"])
def test_bad_options(query):
    with pytest.raises(coordination.ToozInvalidArgument):
        coordination.get_coordinator("zookeeper://127.0.0.1?%s" % query, b"me")


def test_hosts_option_and_namespace(zookeeper_server, make_coordinator, ns):
    """The URL host may be left out when `hosts` names the servers (an unreachable first one
    is skipped)."""
    url = "zookeeper://?hosts=127.0.0.1:%d&hosts=127.0.0.1:%d&namespace=%s/deep&randomize_hosts=false" % (
        free_port(), zookeeper_server.port, ns)
    c = make_coordinator(url=url)
    c.create_group(b"g").get()
    assert c.get_groups().get() == [b"g"]


def test_str_and_non_utf8_ids(make_coordinator):
    c = make_coordinator(member_id="mémbre")
    c.create_group("grøup").get()
    c.join_group("grøup").get()
    assert c.get_members("grøup").get() == {"mémbre".encode()}
    assert "grøup".encode() in c.get_groups().get()
    with pytest.raises(coordination.ToozInvalidArgument):
        c.create_group(b"\xff\xfe").get()
    with pytest.raises(coordination.ToozInvalidArgument):
        c.get_lock(b"\xff")
    with pytest.raises(coordination.ToozInvalidArgument):
        c.get_lock(b"../up")


@pytest.mark.interop
def test_garbage_znode_data_is_a_tooz_error(upstream, make_coordinator, ns):
    c = make_coordinator()
    group = new_id("g")
    c.create_group(group).get()
    up = upstream()
    up.call("c._coord.create('/%s/%s/intruder', b'\\xc1garbage')" % (ns, group.decode()))
    with pytest.raises(tooz.ToozError):
        c.get_members_with_capabilities(group).get()
    with pytest.raises(tooz.ToozError):
        c.get_member_capabilities(group, b"intruder").get()
    with pytest.raises(tooz.ToozError):
        c.get_member_info(group, b"intruder").get()
    assert b"intruder" in c.get_members(group).get()
    up.call("c._coord.create('/%s/%s/leader/x__lock__0000000001', b'', makepath=True)" % (ns, group.decode()))
    assert c.get_leader(group).get() is None, "a contender without an id names no leader"


def test_missing_group_or_member(make_coordinator):
    c = make_coordinator()
    group = new_id("g")
    for call in (lambda: c.update_capabilities(group, {}), lambda: c.get_member_info(group, b"m"),
                 lambda: c.get_member_capabilities(group, b"m")):
        with pytest.raises(coordination.GroupNotCreated):
            call().get()
    # Leaving a group that does not exist: upstream's kazoo driver says MemberNotJoined.
    with pytest.raises(coordination.MemberNotJoined):
        c.leave_group(group).get()
    c.create_group(group).get()
    with pytest.raises(coordination.MemberNotJoined):
        c.leave_group(group).get()
    assert c.get_leader(group).get() is None
    assert c.get_members(group).get() == set(), "get_leader does not create the leader node"


# ------------------------------------------------------------------ digest authentication


def test_digest_auth_and_acl(zookeeper_server, upstream, make_coordinator, ns):
    secret = "s3cr3t-" + new_id().decode()
    url = "zookeeper://tooz:%s@127.0.0.1:%d?namespace=%s" % (secret, zookeeper_server.port, ns)
    c = make_coordinator(url=url)
    assert secret not in repr(c)
    c.create_group(b"g").get()
    c.join_group(b"g", {"x": 1}).get()
    up = upstream(url)
    acl = up.call("[(a.perms, a.id.scheme, a.id.id) for a in c._coord.get_acls('/%s/g')[0]]" % ns)
    assert acl == [(31, "digest", "tooz:%s" % up.call(
        "__import__('kazoo.security').security.make_digest_acl_credential('tooz', %r).split(':', 1)[1]" % secret))]
    assert up.call("c.get_member_capabilities(b'g', %r).get()" % c._member_id) == {"x": 1}
    anonymous = make_coordinator(url="zookeeper://127.0.0.1:%d?namespace=%s" % (zookeeper_server.port, ns))
    with pytest.raises(tooz.ToozError):
        anonymous.get_members(b"g").get()  # the digest ACL keeps others out
    wrong = make_coordinator(url=url.replace(secret, "wrong"))
    with pytest.raises(tooz.ToozError) as e:
        wrong.get_groups().get()
    assert secret not in str(e.value) and secret not in repr(wrong)


def test_parents_coordinator_in_a_forked_child(make_coordinator):
    """A child may go on using a coordinator made before fork(): it gets a session of its own
    (the parent's stays the parent's)."""
    c = make_coordinator()
    group = new_id("g")
    c.create_group(group).get()
    c.join_group(group).get()
    held = c.get_lock(new_id("held"))
    assert held.acquire()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            ok = group in c.get_groups().get()
            ok = ok and held.is_still_owner() is False  # the parent's session holds it
            ok = ok and c.get_lock(b"child-lock").acquire(blocking=5)
            code = 0 if ok else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert held.is_still_owner() is True
    assert c.get_members(group).get() == {c._member_id}
    assert held.release() is True


# ------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A test CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    return str(make_pki(tmp_path_factory.mktemp("zk-tls")))


@pytest.fixture(scope="module")
def tls_server(tls_files):
    server = zookeeper(tls={"key_pem": os.path.join(tls_files, "server-bundle.pem"),
                            "ca_pem": os.path.join(tls_files, "ca.pem"), "client_auth": "want"}).start()
    yield server
    server.close()


def test_tls(tls_server, tls_files, make_coordinator, upstream_python, peers, ns):
    ca = os.path.join(tls_files, "ca.pem")
    url = "zookeeper://localhost:%d?use_ssl=true&ca=%s&namespace=%s" % (tls_server.secure_port, ca, ns)
    c = make_coordinator(url=url)
    c.create_group(b"g").get()
    c.join_group(b"g", {"over": "tls"}).get()
    # With a client certificate too, and without checking the server's.
    with_cert = make_coordinator(url=url + "&certfile=%s&keyfile=%s" % (
        os.path.join(tls_files, "client.crt"), os.path.join(tls_files, "client.key")))
    assert with_cert.get_members(b"g").get() == {c._member_id}
    unchecked = make_coordinator(url="zookeeper://127.0.0.1:%d?use_ssl=true&verify_certs=false&namespace=%s" % (
        tls_server.secure_port, ns))
    assert unchecked.get_groups().get() == [b"g"]
    # Upstream (kazoo over TLS) sees the same data.
    up = peers(url, python=upstream_python)
    assert up.call("c.get_member_capabilities(b'g', %r).get()" % c._member_id) == {"over": "tls"}
    # An unknown CA, or TLS against the plain port, is a connection error.
    for bad in ("zookeeper://127.0.0.1:%d?use_ssl=true&timeout=2" % tls_server.secure_port,
                "zookeeper://127.0.0.1:%d?use_ssl=true&ca=%s&timeout=2" % (tls_server.port, ca)):
        with pytest.raises(coordination.ToozConnectionError):
            make_coordinator(url=bad)


def test_garbage_from_the_server_is_a_connection_error():
    """Something on the port that does not speak ZooKeeper: a prompt ToozConnectionError."""
    import itertools
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    replies = itertools.cycle([b"\xff\xff\xff\xff", b"\x00\x00\x00\x02ab", b"\x00\x00\x00\x30" + os.urandom(48),
                               os.urandom(200), b""])

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.recv(100)
                    conn.sendall(next(replies))
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    try:
        for _ in range(3):
            began = time.monotonic()
            c = coordination.get_coordinator("zookeeper://127.0.0.1:%d?timeout=1" % port, b"me")
            with pytest.raises(coordination.ToozConnectionError):
                c.start()
            assert time.monotonic() - began < 5
    finally:
        srv.close()


# Acquires the lock "res" (blocking) once told to on stdin; says whether it got it or was
# interrupted (SIGINT), then keeps its session until told to stop.
INTERRUPTED_WAITER = r"""
import sys
from tooz import coordination
c = coordination.get_coordinator(sys.argv[1], b"waiter")
c.start()
lock = c.get_lock(b"res")
print("ready", flush=True)
sys.stdin.readline()
print("waiting", flush=True)
try:
    lock.acquire(blocking=True)
    print("acquired", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
sys.stdin.readline()
c.stop()
"""


@pytest.mark.interop
def test_interrupted_wait_withdraws_its_node(ns_url, ns, upstream, make_coordinator):
    """Ctrl-C during a blocking acquire: the waiter's contender node is removed (it would
    otherwise queue ahead of later waiters for as long as the session lives)."""
    holder = make_coordinator().get_lock(b"res")
    assert holder.acquire()
    up = upstream()
    children = "c._coord.get_children('/%s/locks/res')" % ns
    waiter = subprocess.Popen([sys.executable, "-c", INTERRUPTED_WAITER, ns_url], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert waiter.stdout.readline().strip() == "ready"
        waiter.stdin.write("\n")
        waiter.stdin.flush()
        assert waiter.stdout.readline().strip() == "waiting"
        assert wait_for(lambda: len(up.call(children)) == 2, timeout=10)
        waiter.send_signal(signal.SIGINT)
        assert waiter.stdout.readline().strip() == "interrupted"
        assert wait_for(lambda: len(up.call(children)) == 1, timeout=10), up.call(children)
        assert holder.release()
        other = make_coordinator().get_lock(b"res")
        assert other.acquire(blocking=5)
        other.release()
    finally:
        waiter.stdin.write("\n")
        waiter.stdin.flush()
        waiter.wait(10)


@pytest.mark.interop
def test_an_acquire_interrupted_before_its_node_is_named_removes_it(own_server, upstream, make_coordinator):
    """Ctrl-C while the contender node's create has been sent but not answered (the server is
    stalled): once the server goes on and makes the node, it is found by its unique prefix
    and deleted, while the waiter's session lives on."""
    ns = new_id("ns").decode()
    url = "zookeeper://127.0.0.1:%d?namespace=%s&timeout=10" % (own_server.port, ns)
    first = make_coordinator(url=url).get_lock(b"res")
    assert first.acquire() and first.release()  # the lock's directory exists
    up = upstream(url)
    children = "c._coord.get_children('/%s/locks/res')" % ns
    assert up.call(children) == []
    waiter = subprocess.Popen([sys.executable, "-c", INTERRUPTED_WAITER, url], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert waiter.stdout.readline().strip() == "ready"
        os.kill(own_server.proc.pid, signal.SIGSTOP)
        try:
            waiter.stdin.write("\n")
            waiter.stdin.flush()
            assert waiter.stdout.readline().strip() == "waiting"
            time.sleep(0.5)  # the create is on its way to a server that does not answer
            waiter.send_signal(signal.SIGINT)
            assert waiter.stdout.readline().strip() == "interrupted"
        finally:
            os.kill(own_server.proc.pid, signal.SIGCONT)
        assert wait_for(lambda: up.call(children) == [], timeout=10), up.call(children)
        time.sleep(1)
        assert up.call(children) == [], "the node, made after the interrupt, stays deleted"
        assert waiter.poll() is None, "the waiter's session lives on"
    finally:
        waiter.stdin.write("\n")
        waiter.stdin.flush()
        waiter.wait(10)


@pytest.mark.interop
@pytest.mark.parametrize("how", ["kill", "timeout"])
def test_a_withdrawn_green_wait_removes_its_node(ns_url, ns, upstream, make_coordinator, how):
    """eventlet.Timeout or kill() in a greenthread waiting for a lock removes its contender
    node while its session lives on."""
    pytest.importorskip("eventlet")
    holder = make_coordinator().get_lock(b"res")
    assert holder.acquire()
    up = upstream()
    children = "c._coord.get_children('/%s/locks/res')" % ns
    assert_green_wait_withdrawn(ns_url, b"res", holder, lambda: make_coordinator().get_lock(b"res"),
                                lambda: len(up.call(children)) - 1, how)
