"""etcd3 specifics: upstream's exact keys and leases (read back with upstream's own client),
lapsed leases, user/password authentication, TLS, and failover inside a 3-member cluster."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tooz import coordination
from tooz import utils

from conftest import new_id, run_python, with_options

RAW_DUMP = r"""
import sys, etcd3gw
c = etcd3gw.client(host="127.0.0.1", port=int(sys.argv[1]))
rows = []
for value, meta in c.get_prefix(sys.argv[2]):
    rows.append((meta["key"], value, int(meta.get("lease", 0))))
print(repr(sorted(rows)))
"""


def raw_dump(upstream_python, server, prefix):
    """Every key under ``prefix`` as (key, value, lease), read with upstream's etcd3gw client
    through etcd's JSON gateway (a client independent of ours)."""
    import ast

    out = run_python(RAW_DUMP.replace("sys.argv[1]", str(server.port)).replace("sys.argv[2]", repr(prefix)),
                     python=upstream_python)
    assert out.returncode == 0, out.stderr
    return ast.literal_eval(out.stdout.strip())


@pytest.fixture
def etcd_url(etcd_server):
    return etcd_server.url


@pytest.fixture
def make(etcd_url):
    made = []

    def factory(url=None, heart=False, **options):
        c = coordination.get_coordinator(with_options(url or etcd_url, **options) if options else (url or etcd_url),
                                          new_id())
        c.start(start_heart=heart)
        made.append(c)
        return c

    yield factory
    for c in made:
        if c.is_started:
            c.stop()


def test_keys_values_and_leases_are_upstreams(make, etcd_server, upstream_python):
    c = make()
    group = new_id("g")
    c.create_group(group).get()
    c.join_group(group, {"a": 1}).get()
    rows = raw_dump(upstream_python, etcd_server, "tooz/groups/%s/" % group.decode())
    gkey = b"tooz/groups/" + group + b"/"
    assert rows == sorted([(gkey, gkey, 0), (gkey + c._member_id, utils.dumps({"a": 1}), rows[1][2])])
    assert rows[1][2] != 0, "a member hangs on the membership lease"

    name = new_id("l")
    lock = c.get_lock(name)
    assert lock.acquire()
    [(key, value, lease)] = raw_dump(upstream_python, etcd_server, "/tooz/locks" + name.decode())
    assert key == b"/tooz/locks" + name and len(value) == 16 and lease not in (0, rows[1][2])
    assert lock.release()
    assert raw_dump(upstream_python, etcd_server, "/tooz/locks" + name.decode()) == []
    # get_groups lists group keys only, never member keys (upstream's lists both).
    assert group in c.get_groups().get()
    assert not [g for g in c.get_groups().get() if g.startswith(group + b"/")]


def test_lapsed_lock_lease_is_not_held(make):
    """A holder that stops refreshing (no heartbeat) loses the lock when its lease ends."""
    name = new_id("l")
    stalled = make(lock_timeout=1)
    lock = stalled.get_lock(name)
    assert lock.acquire()
    assert lock.is_still_owner()
    deadline = time.monotonic() + 10
    while lock.is_still_owner():
        assert time.monotonic() < deadline, "the lease never lapsed"
        time.sleep(0.2)
    assert lock.heartbeat() is False
    other = make().get_lock(name)
    assert other.acquire(blocking=False)
    assert lock.release() is False
    other.release()


def test_heartbeat_keeps_a_lock(make):
    lock = make(heart=True, lock_timeout=1).get_lock(new_id("l"))
    assert lock.acquire()
    time.sleep(2.5)
    assert lock.is_still_owner()
    assert lock.release()


def test_members_return_after_a_lapsed_lease(make):
    """A coordinator whose membership lease lapsed is a member again after its next
    heartbeat (upstream grants a new lease but leaves its members lost)."""
    group = new_id("g")
    observer = make()
    silent = make(membership_timeout=1)
    observer.create_group(group).get()
    silent.join_group(group, {"x": 1}).get()
    deadline = time.monotonic() + 10
    while silent._member_id in observer.get_members(group).get():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    silent.heartbeat()
    assert observer.get_members_with_capabilities(group).get() == {silent._member_id: {"x": 1}}


def test_destroy_group_deletes_the_group_key(make):
    c = make()
    group = new_id("g")
    c.create_group(group).get()
    c.join_group(group).get()
    c._destroy_group(group)
    assert group not in c.get_groups().get()
    with pytest.raises(coordination.GroupNotCreated):
        c.get_members(group).get()


def test_bad_urls_and_options():
    for url in ("etcd3+http://127.0.0.1:2379?timeout=abc", "etcd3+http://127.0.0.1:2379?hosts=a:0",
                "etcd3+http://127.0.0.1:2379?cert_cert=/x", "etcd3+https://127.0.0.1:2379?ca_cert=/nonexistent"):
        with pytest.raises(coordination.ToozInvalidArgument):
            coordination.get_coordinator(url, b"me")


def test_unreachable_server_fails_promptly():
    from servers import free_port

    c = coordination.get_coordinator("etcd3+http://127.0.0.1:%d?timeout=5" % free_port(), b"me")
    began = time.monotonic()
    with pytest.raises(coordination.ToozConnectionError):
        c.start()
    assert time.monotonic() - began < 5


def test_unreachable_endpoints_are_skipped(etcd_server):
    """A dead endpoint listed first does not stop calls: they go to the next one."""
    from servers import free_port

    dead = free_port()
    url = "etcd3+http://127.0.0.1:%d?hosts=127.0.0.1:%d&hosts=127.0.0.1:%d&timeout=5" % (
        dead, free_port(), etcd_server.port)
    c = coordination.get_coordinator(url, new_id())
    c.start()
    try:
        group = new_id("g")
        c.create_group(group).get()
        c.join_group(group).get()
        assert c.get_members(group).get() == {c._member_id}
        lock = c.get_lock(new_id("l"))
        assert lock.acquire() and lock.release()
    finally:
        c.stop()


# ------------------------------------------------------------------ auth and TLS

def _etcdctl(port, *args, scheme="http"):
    env = dict(os.environ, ETCDCTL_API="3")
    return subprocess.run(["etcdctl", "--endpoints=%s://127.0.0.1:%d" % (scheme, port), *args], env=env,
                          capture_output=True, text=True, timeout=30)


def _etcd_with_auth(*extra):
    """A fresh etcd member with user root (a random password) and authentication enabled."""
    from servers import etcd

    server = etcd(extra=extra).start()
    secret = "pw-" + new_id().decode()
    for args in (("user", "add", "root:" + secret), ("auth", "enable")):
        out = _etcdctl(server.port, *args)
        if out.returncode != 0:
            server.close()
        assert out.returncode == 0, out.stderr
    return server, secret


def test_user_and_password():
    server, secret = _etcd_with_auth()
    try:
        good = coordination.get_coordinator("etcd3+http://root:%s@127.0.0.1:%d" % (secret, server.port), b"me")
        good.start()
        group = new_id("g")
        good.create_group(group).get()
        assert group in good.get_groups().get()
        good.stop()
        bad = coordination.get_coordinator("etcd3+http://root:wrong-%s@127.0.0.1:%d?timeout=3" % (secret, server.port),
                                           b"me")
        assert secret not in repr(bad)
        with pytest.raises(coordination.ToozConnectionError) as e:
            bad.start()
        assert secret not in str(e.value)
    finally:
        server.close()


def test_expired_auth_token_is_renewed():
    """etcd forgets a simple token unused for --auth-token-ttl seconds and refuses it ("invalid
    auth token"): the client authenticates again and the call goes through."""
    server, secret = _etcd_with_auth("--auth-token-ttl", "1")
    try:
        c = coordination.get_coordinator("etcd3+http://root:%s@127.0.0.1:%d?timeout=5" % (secret, server.port), b"me")
        c.start()
        try:
            group = new_id("g")
            c.create_group(group).get()
            for _ in range(2):
                time.sleep(2.5)  # the token lapses
                assert group in c.get_groups().get()
                lock = c.get_lock(new_id("l"))
                assert lock.acquire() and lock.release()
                c.heartbeat()
        finally:
            c.stop()
    finally:
        server.close()


def test_tls_with_client_certificates(tmp_path):
    from certs import make_pki
    from servers import etcd

    pki = make_pki(tmp_path)
    server = etcd(tls={"cert": str(pki / "server.crt"), "key": str(pki / "server.key"), "ca": str(pki / "ca.pem")})
    server.start()
    try:
        url = "etcd3+https://127.0.0.1:%d?ca_cert=%s&cert_cert=%s&cert_key=%s&timeout=10" % (
            server.port, pki / "ca.pem", pki / "client.crt", pki / "client.key")
        c = coordination.get_coordinator(url, b"me")
        deadline = time.monotonic() + 20
        while True:  # the TLS port opens before the member serves
            try:
                c.start()
                break
            except coordination.ToozConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        lock = c.get_lock(new_id("l"))
        assert lock.acquire() and lock.release()
        c.stop()
        # The server's certificate is checked: without our CA it is refused.
        untrusting = coordination.get_coordinator(
            "etcd3+https://127.0.0.1:%d?timeout=3&cert_cert=%s&cert_key=%s" % (
                server.port, pki / "client.crt", pki / "client.key"), b"me")
        with pytest.raises(coordination.ToozConnectionError):
            untrusting.start()
    finally:
        server.close()


# ------------------------------------------------------------------ cluster failover

WORKER = r"""
import os, sys, time
from tooz import coordination
url, name, group, workdir, index, rounds, n = sys.argv[1:8]
index, rounds, n = int(index), int(rounds), int(n)
me = ("w-%d" % index).encode()
c = coordination.get_coordinator(url, me)
c.start(start_heart=True)
c.join_group_create(group.encode(), {"i": index})
lock = c.get_lock(name.encode())
marker = os.path.join(workdir, "holder")
counter = os.path.join(workdir, "counter")
errors = 0
for _ in range(rounds):
    while True:
        try:
            assert lock.acquire(blocking=True)
            break
        except coordination.ToozError as e:
            errors += 1
            print("error %r" % e, file=sys.stderr, flush=True)
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)   # two holders -> fails
        os.close(fd)
    except FileExistsError:
        print("VIOLATION", flush=True)
        sys.exit(3)
    with open(counter, "r+") as f:
        n_ = int(f.read() or 0)
        time.sleep(0.002)
        f.seek(0); f.write(str(n_ + 1)); f.truncate()
    os.unlink(marker)
    lock.release()
open(os.path.join(workdir, "done-%d" % index), "w").close()
deadline = time.monotonic() + 60
while len([f for f in os.listdir(workdir) if f.startswith("done-")]) < n and time.monotonic() < deadline:
    time.sleep(0.05)
members = c.get_members(group.encode()).get()
print("members %d errors %d" % (len(members), errors), flush=True)
time.sleep(0.5)   # let the slowest worker read the group before anyone leaves
c.stop()
"""


def test_cluster_member_killed_under_contention(tmp_path):
    """Processes contend for one lock and are members of one group on a 3-member cluster;
    the member their clients prefer (the URL's host) is SIGKILLed midway. Calls go on through
    the other members, no two processes ever hold the lock, no update is lost, and every
    membership survives."""
    from servers import EtcdCluster

    cluster = EtcdCluster(3).start()
    try:
        hosts = cluster.hosts
        url = "etcd3+http://%s?%s&timeout=10" % (hosts[0], "&".join("hosts=%s" % h for h in hosts[1:]))
        (tmp_path / "counter").write_text("0")
        n, rounds = 4, 60
        name, group = new_id("l").decode(), new_id("g").decode()
        procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, name, group, str(tmp_path), str(i), str(rounds),
                                   str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(n)]
        deadline = time.monotonic() + 60
        while int((tmp_path / "counter").read_text() or 0) < n * rounds // 4:
            assert time.monotonic() < deadline, "no progress before the kill"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
            time.sleep(0.02)
        cluster.members[0].stop(sig=signal.SIGKILL)
        killed_at = int((tmp_path / "counter").read_text() or 0)
        outputs = [p.communicate(timeout=120) for p in procs]
        for p, (out, err) in zip(procs, outputs):
            assert "VIOLATION" not in out, "two holders at once"
            assert p.returncode == 0, err
            assert "members %d errors 0" % n in out, (out, err)
        assert int((tmp_path / "counter").read_text()) == n * rounds
        assert killed_at < n * rounds, "the kill came after the work"
    finally:
        cluster.close()


def test_cluster_member_stalled():
    """The member a client talks to stops answering (SIGSTOP, not dead): the call moves to
    another member within its time budget and later calls stay there."""
    from servers import EtcdCluster

    cluster = EtcdCluster(3).start()
    stalled = cluster.members[0]
    try:
        url = "etcd3+http://%s?hosts=%s&hosts=%s&timeout=10" % tuple(cluster.hosts)
        c = coordination.get_coordinator(url, new_id())
        c.start()
        group = new_id("g")
        c.create_group(group).get()
        os.killpg(stalled.proc.pid, signal.SIGSTOP)
        try:
            assert group in c.get_groups().get()
            c.join_group(group).get()
            lock = c.get_lock(new_id("l"))
            assert lock.acquire(blocking=False) and lock.release()
            assert c.get_members(group).get() == {c._member_id}
        finally:
            os.killpg(stalled.proc.pid, signal.SIGCONT)
        c.stop()
    finally:
        cluster.close()
