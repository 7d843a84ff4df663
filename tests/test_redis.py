"""Redis specifics: interop with upstream tooz, faults, options, secrets, Sentinel."""

import os
import subprocess
import sys
import time

import pytest

import tooz
from tooz import coordination

from conftest import Peer, PeerError, assert_green_wait_withdrawn, new_id, with_options
from servers import Server, free_port, redis


@pytest.fixture
def ns_url(redis_server):
    return "redis://127.0.0.1:%d?namespace=%s" % (redis_server.port, new_id("ns").decode())


@pytest.fixture
def url(ns_url):
    """These tests are about redis only: not parametrised over the other backends."""
    return ns_url


def redis_cli(port, *args, password=None):
    argv = ["redis-cli", "-p", str(port)]
    if password:
        argv += ["--no-auth-warning", "-a", password]
    out = subprocess.run(argv + list(args), capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


# ------------------------------------------------------------------ interop with upstream tooz


@pytest.fixture
def upstream(ns_url, upstream_python):
    peers = []

    def make():
        p = Peer(ns_url, new_id("up"), python=upstream_python)
        peers.append(p)
        return p

    yield make
    for p in peers:
        p.close()


@pytest.mark.interop
def test_lock_keys_are_upstreams(redis_server, ns_url, make_coordinator):
    c = make_coordinator(url=ns_url)
    ns = ns_url.split("namespace=")[1]
    lock = c.get_lock(b"res")
    assert lock.name == ("%s_res_lock" % ns).encode()
    assert lock.acquire()
    assert redis_cli(redis_server.port, "EXISTS", "%s_res_lock" % ns) == "1"
    lock.release()
    assert redis_cli(redis_server.port, "EXISTS", "%s_res_lock" % ns) == "0"


@pytest.mark.interop
def test_upstream_holds_ours_waits(upstream, ns_url, make_coordinator):
    name = new_id("l")
    up = upstream()
    up.call("lock = c.get_lock(%r)" % name)
    assert up.call("lock.acquire(blocking=False)") is True
    ours = make_coordinator(url=ns_url).get_lock(name)
    assert ours.acquire(blocking=False) is False
    assert ours.acquire(blocking=0.3) is False
    assert up.call("lock.release()") is True
    assert ours.acquire(blocking=5) is True
    up.send("lock.acquire(blocking=True)")
    assert not up.ready(0.5), "upstream got a lock we hold"
    assert ours.release()
    assert up.ready(10) and up.receive() is True
    assert up.call("lock.release()") is True


@pytest.mark.interop
def test_groups_and_members_seen_both_ways(upstream, ns_url, make_coordinator):
    up = upstream()
    ours = make_coordinator(url=ns_url)
    up_id = up.call("c._member_id")
    group = new_id("g")
    up.call("c.create_group(%r).get()" % group)
    assert group in ours.get_groups().get()
    with pytest.raises(coordination.GroupAlreadyExist):
        ours.create_group(group).get()
    up.call("c.join_group(%r, {'role': 'upstream'}).get()" % group)
    ours.join_group(group, {"role": "ours", "n": [1, 2.5, None]}).get()
    assert ours.get_members(group).get() == {up_id, ours._member_id}
    assert up.call("c.get_members(%r).get()" % group) == {up_id, ours._member_id}
    assert ours.get_member_capabilities(group, up_id).get() == {"role": "upstream"}
    assert up.call("c.get_member_capabilities(%r, %r).get()" % (group, ours._member_id)) == {
        "role": "ours", "n": [1, 2.5, None]}
    with pytest.raises(PeerError, match="GroupNotEmpty"):
        up.call("c.delete_group(%r).get()" % group)
    ours.leave_group(group).get()
    up.call("c.leave_group(%r).get()" % group)
    ours.delete_group(group).get()
    assert group not in up.call("c.get_groups().get()")


@pytest.mark.interop
def test_upstream_sees_our_death(upstream, ns_url, make_coordinator):
    """Our beat key is the one upstream checks: when ours stops beating, upstream prunes us."""
    up = upstream()
    group = new_id("g")
    short = with_options(ns_url, membership_timeout=1)
    ours = make_coordinator(url=short)
    ours.create_group(group).get()
    ours.join_group(group).get()
    assert ours._member_id in up.call("c.get_members(%r).get()" % group)
    time.sleep(1.5)
    assert ours._member_id not in up.call("c.get_members(%r).get()" % group)


@pytest.mark.interop
def test_leader_election_across_implementations(upstream, ns_url, make_coordinator):
    up = upstream()
    ours = make_coordinator(url=ns_url)
    group = new_id("g")
    up.call("elected = []")
    up.call("c.watch_elected_as_leader(%r, elected.append)" % group)
    up.call("c.run_watchers()")
    assert up.call("len(elected)") == 1
    mine = []
    ours.watch_elected_as_leader(group, mine.append)
    ours.run_watchers()
    assert mine == [], "upstream is the leader"
    up.call("c.stop()")
    ours.run_watchers()
    assert len(mine) == 1


# ------------------------------------------------------------------ faults


def test_server_down_at_start():
    c = coordination.get_coordinator("redis://127.0.0.1:%d?timeout=2" % free_port(), b"me")
    with pytest.raises(coordination.ToozConnectionError):
        c.start()
    c = coordination.get_coordinator("redis://localhost:1/f00", b"me")
    with pytest.raises(coordination.ToozConnectionError):
        c.start()


def test_server_restart_then_recover(make_coordinator):
    server = redis().start()
    try:
        c = make_coordinator(url="redis://127.0.0.1:%d?timeout=3" % server.port)
        group = new_id("g")
        c.create_group(group).get()
        lock = c.get_lock(new_id("l"))
        assert lock.acquire()
        server.stop()
        began = time.monotonic()
        with pytest.raises(coordination.ToozConnectionError):
            c.get_groups().get()
        with pytest.raises(coordination.ToozConnectionError):
            c.get_lock(new_id("l")).acquire(blocking=False)
        with pytest.raises(coordination.ToozConnectionError):
            c.heartbeat()
        assert time.monotonic() - began < 20, "failures are prompt, not hangs"
        server.start()  # same port, empty data set
        assert c.get_groups().get() == []
        c.create_group(group).get()
        assert lock.is_still_owner() is False, "the restarted server lost the lock: we do not claim it"
        assert lock.acquire(blocking=False)
        c.heartbeat()
        lock.release()
    finally:
        server.close()


def test_blocking_acquire_during_outage_fails_cleanly(make_coordinator):
    server = redis().start()
    try:
        c = make_coordinator(url="redis://127.0.0.1:%d?timeout=2" % server.port)
        holder = make_coordinator(url="redis://127.0.0.1:%d?timeout=2" % server.port)
        name = new_id("l")
        assert holder.get_lock(name).acquire()
        waiter = c.get_lock(name)
        server.stop()
        began = time.monotonic()
        with pytest.raises(coordination.ToozConnectionError):
            waiter.acquire(blocking=5)
        assert time.monotonic() - began < 15
        assert waiter.release() is False, "never reported as held"
        server.start()
        assert waiter.acquire(blocking=False), "new server, no holder"
        waiter.release()
    finally:
        server.close()


# ------------------------------------------------------------------ options and ids


@pytest.mark.parametrize("query", ["db=abc", "timeout=x", "lock_timeout=-1", "encoding=ebcdic",
                                   "sentinel=m", "sentinel=m&sentinel_fallback=nohostport",
                                   "ssl_certfile=/no/such/file&ssl_keyfile=/no/such/key"])
def test_bad_options(query):
    with pytest.raises(coordination.ToozInvalidArgument):
        coordination.get_coordinator("redis://127.0.0.1?%s" % query, b"me")


def test_namespace_and_running(ns_url):
    c = coordination.get_coordinator(ns_url, b"me")
    assert c.namespace == ns_url.split("namespace=")[1].encode()
    assert coordination.get_coordinator("redis://127.0.0.1", b"me").namespace == b"_tooz"
    assert c.running is False
    c.start()
    assert c.running is True
    c.stop()


def test_reserved_member_id(ns_url):
    c = coordination.get_coordinator(ns_url, b"__created__")
    c.start()
    try:
        c.create_group(b"g").get()
        with pytest.raises(ValueError):
            c.join_group(b"g").get()
        c.delete_group(b"g").get()
    finally:
        c.stop()


def test_str_ids_are_encoded(ns_url, make_coordinator):
    c = make_coordinator(url=ns_url, member_id="mémbre")
    c.create_group("grøup").get()
    c.join_group("grøup").get()
    assert c.get_members("grøup").get() == {"mémbre".encode()}
    assert "grøup".encode() in c.get_groups().get()


def test_garbage_capabilities_are_a_tooz_error(redis_server, ns_url, make_coordinator):
    c = make_coordinator(url=ns_url)
    group = new_id("g")
    c.create_group(group).get()
    ns = ns_url.split("namespace=")[1]
    redis_cli(redis_server.port, "HSET", "%s_group:%s" % (ns, group.decode()), "intruder", "\xc1garbage")
    redis_cli(redis_server.port, "SET", "%s_beats:intruder" % ns, "Not dead!")
    with pytest.raises(tooz.ToozError):
        c.get_members_with_capabilities(group).get()
    with pytest.raises(tooz.ToozError):
        c.get_member_capabilities(group, b"intruder").get()
    assert b"intruder" in c.get_members(group).get()


# ------------------------------------------------------------------ secrets


def test_password_never_leaks(make_coordinator):
    secret = "s3cr3t-" + new_id().decode()
    server = redis(extra=("--requirepass", secret)).start()
    try:
        good = "redis://:%s@127.0.0.1:%d" % (secret, server.port)
        c = make_coordinator(url=good)
        assert secret not in repr(c)
        assert c.get_lock(b"x").acquire()
        bad = coordination.get_coordinator("redis://:wrong-%s@127.0.0.1:%d" % (secret, server.port), b"me")
        with pytest.raises(tooz.ToozError) as e:
            bad.start()
        assert secret not in str(e.value) and secret not in repr(e.value)
        server.stop()
        with pytest.raises(coordination.ToozConnectionError) as e:
            c.get_groups().get()
        assert secret not in str(e.value)
    finally:
        server.close()


# Under eventlet, a call polled on the greenthread's own thread goes on a connection of the
# core's own (clients::resp), which authenticates and selects the database itself and sends
# a script with EVAL when the server has dropped it from its cache.
GREEN_OWN = r"""
import eventlet
eventlet.monkey_patch()
import sys
from tooz import coordination
c = coordination.get_coordinator(sys.argv[1], b"green-own")
c.start()
lock = c.get_lock(b"own-lock")
for _ in range(50):
    assert lock.acquire() and lock.release()
assert lock.acquire()
print("held", flush=True)
sys.stdin.readline()  # the server's script cache is flushed meanwhile
print(c.get_lock(b"own-lock").acquire(blocking=False), lock.release(), lock.acquire(blocking=False), flush=True)
c.stop()
"""


def test_green_calls_on_the_cores_own_connections_authenticate_select_and_reload_scripts():
    pytest.importorskip("eventlet")
    secret = "s3cr3t-" + new_id().decode()
    server = redis(extra=("--requirepass", secret)).start()
    try:
        url = "redis://:%s@127.0.0.1:%d?db=3" % (secret, server.port)
        proc = subprocess.Popen([sys.executable, "-W", "ignore", "-c", GREEN_OWN, url], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "held", proc.stderr.read()
            assert int(redis_cli(server.port, "-n", "3", "DBSIZE", password=secret)) > 0
            assert int(redis_cli(server.port, "-n", "0", "DBSIZE", password=secret)) == 0
            assert redis_cli(server.port, "SCRIPT", "FLUSH", password=secret) == "OK"
            out, err = proc.communicate("go\n", timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err
        assert out.split() == ["False", "True", "True"], (out, err)
        # The script went again as EVAL, which only a connection of our own sends (the
        # multiplexed one loads it with SCRIPT LOAD and sends EVALSHA again).
        assert "cmdstat_eval:" in redis_cli(server.port, "INFO", "commandstats", password=secret)
    finally:
        server.close()


# ------------------------------------------------------------------ sentinel


def _sentinel(master_port, quorum=1):
    def argv(port, workdir):
        conf = os.path.join(workdir, "sentinel.conf")
        with open(conf, "w") as f:
            f.write("port %d\nbind 127.0.0.1\nsentinel monitor tooz 127.0.0.1 %d %d\n"
                    "sentinel down-after-milliseconds tooz 1000\nsentinel failover-timeout tooz 5000\n"
                    % (port, master_port, quorum))
        return ["redis-server", conf, "--sentinel"]

    return Server("sentinel", argv)


@pytest.fixture
def sentinel_setup():
    master = redis().start()
    replica = redis(extra=("--replicaof", "127.0.0.1", "0")).start()
    redis_cli(replica.port, "REPLICAOF", "127.0.0.1", str(master.port))
    sentinel = _sentinel(master.port).start()
    # Wait until the sentinel sees a connected, in-sync replica (it needs one to fail over).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        fields = redis_cli(sentinel.port, "SENTINEL", "replicas", "tooz").split("\n")
        info = dict(zip(fields[::2], fields[1::2]))
        if info.get("flags") == "slave" and info.get("master-link-status") == "ok":
            break
        time.sleep(0.2)
    yield master, replica, sentinel
    for s in (sentinel, replica, master):
        s.close()


def test_sentinel_and_failover(sentinel_setup, make_coordinator):
    master, replica, sentinel = sentinel_setup
    url = "redis://127.0.0.1:%d?sentinel=tooz&sentinel_fallback=127.0.0.1:%d&timeout=5" % (
        sentinel.port, free_port())
    c = make_coordinator(url=url)
    group = new_id("g")
    c.create_group(group).get()
    c.join_group(group).get()
    assert redis_cli(master.port, "SISMEMBER", "_tooz_groups", group.decode()) == "1"
    deadline = time.monotonic() + 30
    while redis_cli(sentinel.port, "SENTINEL", "FAILOVER", "tooz") != "OK":
        assert time.monotonic() < deadline, "sentinel refused to fail over"
        time.sleep(0.5)
    # Wait until the sentinel names the replica as master.
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        if redis_cli(sentinel.port, "SENTINEL", "get-master-addr-by-name", "tooz").split()[-1:] == [str(replica.port)]:
            break
        time.sleep(0.2)
    else:
        pytest.fail("sentinel did not fail over")
    # The coordinator follows the new master (after at most one failed call).
    deadline = time.monotonic() + 30
    while True:
        try:
            c.create_group(new_id("after")).get()
            break
        except coordination.ToozConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert group in c.get_groups().get(), "the data followed (it was replicated)"
    assert redis_cli(replica.port, "ROLE").startswith("master")


# ------------------------------------------------------------------ TLS


def test_tls(tmp_path, make_coordinator, upstream_python):
    """redis over TLS (rustls): verified against our CA, with a client certificate; upstream
    (redis-py) talks to the same TLS server and sees our lock."""
    from certs import make_pki

    pki = make_pki(tmp_path)
    server = redis(extra=("--port", "0", "--tls-port", "PORT", "--tls-cert-file", str(pki / "server.crt"),
                          "--tls-key-file", str(pki / "server.key"), "--tls-ca-cert-file", str(pki / "ca.pem"),
                          "--tls-auth-clients", "optional"))
    server._argv_for_port = _tls_port(server._argv_for_port)
    server.start()
    try:
        base = "redis://127.0.0.1:%d?ssl=true&timeout=5&ssl_ca_certs=%s" % (server.port, pki / "ca.pem")
        c = make_coordinator(url=base + "&ssl_certfile=%s&ssl_keyfile=%s" % (pki / "client.crt", pki / "client.key"))
        lock = c.get_lock(b"tls-lock")
        assert lock.acquire(blocking=False)
        up = Peer(base, new_id("up"), python=upstream_python)
        try:
            up.call("l = c.get_lock(b'tls-lock')")
            assert up.call("l.acquire(blocking=False)") is False
            lock.release()
            assert up.call("l.acquire(blocking=False)") is True
            up.call("l.release()")
        finally:
            up.close()
        # Without our CA the server's certificate is not trusted.
        untrusted = coordination.get_coordinator("redis://127.0.0.1:%d?ssl=true&timeout=2" % server.port, b"x")
        with pytest.raises(coordination.ToozConnectionError):
            untrusted.start()
    finally:
        server.close()


def _tls_port(argv_for_port):
    """Serve TLS on the launcher's port (plain port off)."""
    def argv(port, workdir):
        out = argv_for_port(port, workdir)
        out[out.index("--port") + 1] = "0"
        out[out.index("PORT")] = str(port)
        return out

    return argv


@pytest.mark.parametrize("how", ["kill", "timeout"])
def test_a_withdrawn_green_wait_removes_its_waiter_entry(redis_server, ns_url, make_coordinator, how):
    """eventlet.Timeout or kill() in a greenthread waiting for a lock ends its wait on the
    server: its entry in the lock's waiters set, refreshed while it waits, is gone while its
    process lives on, and the lock goes to nobody but the next caller."""
    pytest.importorskip("eventlet")
    ns = ns_url.split("namespace=")[1]
    holder = make_coordinator().get_lock(b"res")
    assert holder.acquire()
    waiters = "%s_res_lock:waiters" % ns
    assert_green_wait_withdrawn(ns_url, b"res", holder, lambda: make_coordinator().get_lock(b"res"),
                                lambda: int(redis_cli(redis_server.port, "ZCARD", waiters)), how)
