"""Fixtures: one coordinator factory parametrised over every backend available.

Adding a backend means adding one entry to ``BACKENDS`` (and, for a networked one, a
fixture that starts its server on a free loopback port).
"""

import os
import subprocess
import sys
import uuid

import pytest

from tooz import coordination

EVENTLET = os.environ.get("TOOZ_TEST_EVENTLET") == "1"


def not_green(reason):
    """Marks a test that does not apply in an eventlet-patched session, with why."""
    return pytest.mark.skipif(EVENTLET, reason="eventlet session: " + reason)


if EVENTLET:
    # Started by tests/eventlet_pytest.py: the session is meant to be green; make sure it is.
    import eventlet.patcher

    assert eventlet.patcher.is_monkey_patched("thread"), "the eventlet session is not patched"


def pytest_report_header(config):
    if EVENTLET:
        return "tooz: eventlet.monkey_patch() applied (green session)"
    return None


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPSTREAM_PYTHON = os.environ.get(
    "TOOZ_UPSTREAM_PYTHON", os.path.join(ROOT, ".venv-upstream", "bin", "python"))


def new_id(prefix="m"):
    return ("%s-%s" % (prefix, uuid.uuid4().hex)).encode("ascii")


def _file_url(request, tmp_path_factory):
    return "file://%s" % tmp_path_factory.mktemp("tooz-file")


def _ipc_url(request, tmp_path_factory):
    return "ipc://"


def _redis_url(request, tmp_path_factory):
    server = request.getfixturevalue("redis_server")
    return "redis://127.0.0.1:%d?namespace=%s" % (server.port, new_id("ns").decode())


def _memcached_url(request, tmp_path_factory):
    # memcached has no namespaces: tests keep apart through their random group/lock ids.
    return request.getfixturevalue("memcached_server").url


def _etcd3_url(request, tmp_path_factory):
    # etcd keys are fixed by upstream (no namespace option): tests keep apart through their
    # random group/lock ids.
    return request.getfixturevalue("etcd_server").url


def _zookeeper_url(request, tmp_path_factory):
    server = request.getfixturevalue("zookeeper_server")
    return "zookeeper://127.0.0.1:%d?namespace=%s" % (server.port, new_id("ns").decode())


def _postgresql_url(request, tmp_path_factory):
    # Advisory locks have no namespaces: tests keep apart through their random lock names.
    return request.getfixturevalue("postgres_server").url


def _mysql_url(request, tmp_path_factory):
    return request.getfixturevalue("mariadb_server").url


# name -> function(request, tmp_path_factory) giving a URL private to the test. Networked
# backends take a session server fixture and, where the backend has namespaces, a fresh one per
# test; tests add their own options with with_options().
BACKENDS = {
    "file": _file_url,
    "ipc": _ipc_url,
    "redis": _redis_url,
    "etcd3": _etcd3_url,
    "memcached": _memcached_url,
    "zookeeper": _zookeeper_url,
    "postgresql": _postgresql_url,
    "mysql": _mysql_url,
}


# What each backend offers beyond locks and groups (the tests of a feature skip the others).
# "beat_liveness": a membership lapses when its coordinator stops calling heartbeat().
# "locks_only": no groups at all (group calls raise NotImplemented); see has_groups().
# "fair_locks": a process that releases a lock others wait for steps aside (src/lock/handoff.rs), or
# (ipc) hands it to a waiter once it has won it back over them for a moment.
FEATURES = {
    "file": {"members", "member_info", "update_capabilities", "shared_locks", "heartbeat", "is_still_owner",
             "text_ids", "stale_members_revive", "self_expiry", "kernel_release", "election",
             "watch_elected_as_leader", "get_leader", "stand_down", "beat_liveness", "fair_locks"},
    "ipc": {"break", "watch_elected_as_leader", "text_ids", "kernel_release", "is_still_owner", "fair_locks"},
    # ttl_locks: a dead holder's lock lapses after lock_timeout, not at once.
    # lazy_pruning: dead members are deleted from a group by whoever lists it next, and a
    # coordinator always counts itself among the living.
    "redis": {"members", "update_capabilities", "heartbeat", "break", "is_still_owner", "election",
              "watch_elected_as_leader", "lock_heartbeat", "ttl_locks", "lazy_pruning", "beat_liveness",
              "fair_locks"},
    "memcached": {"members", "update_capabilities", "heartbeat", "break", "is_still_owner", "get_leader",
                  "election", "watch_elected_as_leader", "lock_heartbeat", "ttl_locks", "lazy_pruning",
                  "text_ids", "beat_liveness", "fair_locks"},
    # Liveness is the ZooKeeper session, which the client keeps up by itself: members and
    # locks of a coordinator go when its session ends (stop, or expiry after `timeout`
    # without contact), not when heartbeat() stops being called ("session_release").
    # Liveness is a lease refreshed by heartbeat(); a lock has a lease of its own, so a dead
    # holder's lock lapses after lock_timeout. Waiters are woken by etcd watches.
    # "pushed_watch": membership changes reach tooz.aio's watch_group as the backend pushes
    # them (etcd watch stream, ZooKeeper child watch), not at the next poll.
    "etcd3": {"members", "update_capabilities", "member_info", "heartbeat", "break", "is_still_owner", "election",
              "watch_elected_as_leader", "get_leader", "stand_down", "lock_heartbeat", "ttl_locks",
              "beat_liveness", "pushed_watch", "fair_locks"},
    "zookeeper": {"members", "update_capabilities", "member_info", "heartbeat", "is_still_owner", "election",
                  "watch_elected_as_leader", "get_leader", "stand_down", "session_release", "pushed_watch"},
    # Locks only, each held by the server for one connection of ours: the server frees it
    # the moment that connection closes ("connection_release"), e.g. when its process dies.
    "postgresql": {"locks_only", "is_still_owner", "connection_release"},
    "mysql": {"locks_only", "is_still_owner", "connection_release"},
}


def wait_for(predicate, timeout=30.0, every=0.1):
    """Polls ``predicate`` until it is true or ``timeout`` seconds passed; its last answer."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return bool(predicate())


def has(backend, feature):
    return feature in FEATURES[backend[0]]


def has_groups(backend):
    """Whether the backend offers groups (every one does except the locks-only ones)."""
    return not has(backend, "locks_only")


def need_groups(backend):
    if not has_groups(backend):
        pytest.skip("%s offers locks only" % backend[0])


def distinct_lock_names(backend, n):
    """``n`` lock names that are ``n`` different locks on ``backend``: postgresql:// keys a
    lock by two bytes of md5(name), as upstream (65,536 keys), so random names can share one."""
    import hashlib

    names, keys = [], set()
    while len(names) < n:
        name = new_id("l")
        key = hashlib.md5(name).digest()[:2] if backend[0] == "postgresql" else name
        if key not in keys:
            keys.add(key)
            names.append(name)
    return names


def need(backend, *features):
    """Skip unless ``backend`` (the fixture's (name, url)) offers every one of ``features``."""
    missing = [f for f in features if f not in FEATURES[backend[0]]]
    if missing:
        pytest.skip("%s does not offer %s" % (backend[0], ", ".join(missing)))


@pytest.fixture(scope="session")
def memcached_server():
    """A memcached on a free loopback port for the whole session (``.url``, ``.server``)."""
    import servers

    server = servers.memcached().start()
    server.url = "memcached://127.0.0.1:%d" % server.port
    yield server
    server.close()


@pytest.fixture(params=sorted(BACKENDS))
def backend(request, tmp_path_factory):
    """(name, url) of each backend; one directory/namespace per test."""
    return request.param, BACKENDS[request.param](request, tmp_path_factory)


def with_options(url, **options):
    """``url`` with ``options`` added to its query string."""
    sep = "&" if "?" in url else "?"
    return url + sep + "&".join("%s=%s" % kv for kv in options.items())


@pytest.fixture(scope="session")
def redis_server():
    from servers import redis

    server = redis().start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def etcd_server():
    from servers import etcd

    server = etcd().start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def postgres_server():
    from servers import postgres

    server = postgres().start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def mariadb_server():
    from servers import mariadb

    server = mariadb().start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def zookeeper_server():
    from servers import zookeeper

    server = zookeeper().start()
    yield server
    server.close()


@pytest.fixture
def url(backend):
    return backend[1]


class Factory:
    def __init__(self, url):
        self.url = url
        self.started = []

    def __call__(self, member_id=None, start=True, url=None, **kwargs):
        c = coordination.get_coordinator(url or self.url, member_id or new_id(), **kwargs)
        if start:
            c.start()
            self.started.append(c)
        return c

    def close(self):
        for c in self.started:
            if c.is_started:
                c.stop()


@pytest.fixture
def make_coordinator(url):
    factory = Factory(url)
    yield factory
    factory.close()


@pytest.fixture
def coord(make_coordinator):
    return make_coordinator()


@pytest.fixture
def group(coord):
    """A fresh group id, deleted afterwards if it still exists (ipc groups are system-wide)."""
    gid = new_id("g")
    yield gid
    if coord.is_started:
        try:
            for m in list(coord._joined_groups):
                coord.leave_group(m).get()
            coord.delete_group(gid).get()
        except Exception:  # noqa: BLE001 - best-effort cleanup
            pass


def count_under_lock(coordinator, name, threads, rounds):
    """``threads`` threads each do ``rounds`` non-atomic increments under one lock of
    ``coordinator``; returns the final count (threads * rounds when nothing was lost)."""
    import threading
    import time

    counter = {"n": 0}

    def work():
        lock = coordinator.get_lock(name)
        for _ in range(rounds):
            with lock:
                n = counter["n"]
                time.sleep(0)
                counter["n"] = n + 1

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(120)
    assert not any(t.is_alive() for t in workers), "deadlock"
    return counter["n"]


def run_python(code, python=sys.executable, timeout=60, env=None):
    """Run ``code`` in a fresh interpreter; returns the CompletedProcess (text)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=timeout, env=full_env)


def spawn_python(code, python=sys.executable, env=None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.Popen([python, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env)


@pytest.fixture(scope="session")
def upstream_python():
    """The interpreter of the test-only virtualenv holding upstream tooz from PyPI."""
    if not os.path.exists(UPSTREAM_PYTHON):
        pytest.fail("upstream tooz virtualenv missing at %s: run the README's set-up command" % UPSTREAM_PYTHON)
    check = run_python("import tooz.coordination, sysv_ipc; print('ok')", python=UPSTREAM_PYTHON)
    assert check.returncode == 0, check.stderr
    return UPSTREAM_PYTHON


PEER = r"""
import sys
from tooz import coordination
c = coordination.get_coordinator(sys.argv[1], sys.argv[2].encode())
c.start()
ns = {"c": c, "coordination": coordination}
print("READY", flush=True)
for line in sys.stdin:
    try:
        try:
            code = compile(line, "<peer>", "eval")
        except SyntaxError:
            exec(line, ns)
            out = None
        else:
            out = eval(code, ns)
        print("OK " + repr(out), flush=True)
    except Exception as e:
        print("ERR " + type(e).__name__ + " " + str(e).replace("\n", " "), flush=True)
"""


class PeerError(Exception):
    pass


class Peer:
    """A coordinator in another interpreter (ours or upstream's), driven one statement at a time.

    ``peer.call("c.get_members(b'g').get()")`` returns the value (via ``ast.literal_eval`` of
    its repr); an exception there raises ``PeerError('<ExceptionName> <message>')`` here.
    """

    def __init__(self, url, member_id, python=sys.executable):
        self.proc = subprocess.Popen([python, "-c", PEER, url, member_id.decode()], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if line != "READY":
            raise PeerError("peer failed to start: %s" % self.proc.stderr.read())

    def send(self, statement):
        """Start a statement without waiting for its outcome (see :meth:`receive`)."""
        self.proc.stdin.write(statement.replace("\n", " ") + "\n")
        self.proc.stdin.flush()

    def ready(self, timeout):
        """Whether the outcome of the last statement sent arrives within ``timeout`` seconds."""
        import select

        return bool(select.select([self.proc.stdout], [], [], timeout)[0])

    def call(self, statement):
        self.send(statement)
        return self.receive()

    def receive(self):
        import ast

        line = self.proc.stdout.readline().rstrip("\n")
        if line.startswith("OK "):
            try:
                return ast.literal_eval(line[3:])
            except (ValueError, SyntaxError):
                return line[3:]
        if line.startswith("ERR "):
            raise PeerError(line[4:])
        raise PeerError("peer died: %s" % self.proc.stderr.read())

    def close(self):
        if self.proc.poll() is None:
            try:
                self.call("c.stop()")
            except PeerError:
                pass
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def kill(self):
        self.proc.kill()
        self.proc.wait(10)


HOLDER = r"""
import sys
from tooz import coordination
c = coordination.get_coordinator(sys.argv[1], b'holder')
c.start()
lock = c.get_lock(sys.argv[2].encode())
assert lock.acquire(blocking=False), 'could not take the lock'
print('held', flush=True)
sys.stdin.readline()
lock.release()
c.stop()
print('released', flush=True)
"""


class OtherProcessHolder:
    """A separate interpreter holding ``name`` until told to let go."""

    def __init__(self, url, name, python=sys.executable):
        self.proc = subprocess.Popen([python, "-c", HOLDER, url, name.decode()], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        assert line == "held", self.proc.stderr.read()

    def release(self):
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "released"
        self.proc.wait(10)

    def kill(self):
        self.proc.kill()
        self.proc.wait(10)


# An eventlet-patched interpreter whose greenthread waits for a lock without a limit, until
# told (a line on stdin) to kill() that greenthread or to throw eventlet.Timeout into it; then,
# on the next line, it stops. Tells "waiting", "withdrawn <dead?>" and "stopped" on stdout.
GREEN_WAITER = r"""
import eventlet
eventlet.monkey_patch()
import sys
from tooz import coordination

c = coordination.get_coordinator(sys.argv[1], b"green-waiter")
c.start()
how = sys.argv[3]
if how == "timeout":
    def wait():
        try:
            with eventlet.Timeout(3600):
                c.get_lock(sys.argv[2].encode()).acquire(blocking=True)
        except eventlet.Timeout:
            pass
    waiting = eventlet.spawn(wait)
else:
    waiting = eventlet.spawn(c.get_lock(sys.argv[2].encode()).acquire, blocking=True)
eventlet.sleep(0.3)
print("waiting", flush=True)
sys.stdin.readline()
if how == "timeout":
    waiting.kill(eventlet.Timeout())
else:
    waiting.kill()
eventlet.sleep(0)
print("withdrawn", waiting.dead, flush=True)
sys.stdin.readline()
c.stop()
print("stopped", flush=True)
"""


class GreenWaiter:
    """A separate, eventlet-patched interpreter with a greenthread waiting for ``name``;
    ``withdraw()`` ends that wait (``kill()`` or ``eventlet.Timeout``, as ``how`` says) and
    leaves the process running until ``close()``."""

    def __init__(self, url, name, how="kill"):
        self.proc = subprocess.Popen([sys.executable, "-W", "ignore", "-c", GREEN_WAITER, url, name.decode(), how],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        line = self.proc.stdout.readline().strip()
        assert line == "waiting", self.proc.stderr.read()

    def _say(self, expected):
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().strip()
        assert line == expected, (line, self.proc.stderr.read() if not line else "")

    def withdraw(self):
        self._say("withdrawn True")

    def close(self):
        try:
            if self.proc.poll() is None:
                self._say("stopped")
                assert self.proc.wait(30) == 0
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)


def assert_green_wait_withdrawn(url, name, holder, fresh_lock, waiting, how):
    """While ``holder`` (a held lock) keeps ``name``, a greenthread of a green process waits
    for it; ``waiting()`` is how many waits the server shows for the lock. Once the wait is
    withdrawn (``how``) it must be gone on the server while that process lives on, and after
    the holder lets go a fresh lock (``fresh_lock()``) takes the lock at once."""
    waiter = GreenWaiter(url, name, how)
    try:
        assert wait_for(lambda: waiting() == 1, timeout=10)
        waiter.withdraw()
        assert wait_for(lambda: waiting() == 0, timeout=5), "the withdrawn wait goes on on the server"
        assert holder.release()
        lock = fresh_lock()
        assert lock.acquire(blocking=False), "nobody else got it"
        lock.release()
    finally:
        waiter.close()
