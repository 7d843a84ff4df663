"""Real network partitions for the tests: a network namespace of the test's own, joined to the
machine by a veth pair, whose link is taken down (``cut``) and up again (``heal``).

    with Netns() as ns:                       # host end 10.213.X.Y+1 <-> 10.213.X.Y+2 inside (a /30)
        server = redis(ns).start()            # listens on 127.0.0.1 and ns.host_addr
        holder = Agent(ns)                    # a Python interpreter inside the namespace
        holder.call("c = coordination.get_coordinator(%r, b'h')" % server.url_for(ns.host_addr))
        ns.cut()                              # its packets vanish (no RST, no FIN)
        ns.heal()                             # and flow again

How a cut looks from each side:

* the host end of the veth goes down. The root namespace's route to the /30 goes with it; a
  ``blackhole`` route of ours (metric 65535, ``proto 213``) takes its place, so the servers'
  packets to the namespace are dropped silently here instead of following the default route
  off the machine. Their TCP sees plain loss and retransmits with its usual back-off.
* inside the namespace the veth end loses its carrier (its address and routes stay) and what
  the holder sends is dropped at the veth. TCP on both sides sees plain loss and backs off
  as usual (0.2, 0.4, 0.8 s, ...: after a long cut, bytes sent during it may take seconds
  more to go through once healed). Static (``permanent``) neighbour entries on both ends mean
  no ARP is involved before, during or after a cut: nothing but silence tells either side
  that something is wrong.
* the root namespace can still reach ``host_addr`` (it is a local address: delivered on
  ``lo``), so a process there may use ``127.0.0.1`` or ``host_addr`` alike.

Servers must listen on ``host_addr``, which exists only once the namespace does: make the
``Netns`` first, then start the servers (:func:`redis`, :func:`memcached`, :func:`etcd`,
:func:`zookeeper`, :func:`postgresql`, :func:`mysql`). Each names the host a process in the root namespace should use
(``.local_host``) and builds URLs (``.url_for(host, **options)``).

Names are ``tz<pid>-<n>`` (namespace), ``tz<pid>h<n>`` / ``tz<pid>n<n>`` (veth ends); subnets
are /30 blocks of 10.213.0.0/16 picked under a file lock, skipping blocks in use.
``close()`` (also run at exit) deletes the veth pair, the route and the namespace, after
killing the processes started in it; what a killed test run left behind (its pid is gone) is
removed by the next ``Netns()``.

:class:`Agent` runs a Python interpreter (ours, or upstream's: any ``python``) inside a
namespace or in the root one, driven one statement at a time over stdin/stdout like
conftest's ``Peer``, which also streams events (``EV {json}`` lines: on_lost, samples of
``lock.acquired`` and of the heartbeat count every 20 ms, log records, elections, ...) with
``time.monotonic()`` times. CLOCK_MONOTONIC is one clock for every process of the machine,
whatever its network namespace, so those times compare directly with ``Netns.cut_at``.
"""

import ast
import atexit
import contextlib
import fcntl
import itertools
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import servers

ROUTE_PROTO = "213"  # marks the blackhole routes this module adds (any proto number will do)
ROUTE_METRIC = "65535"
BLOCKS = 16384  # /30 blocks in 10.213.0.0/16
LOCK_PATH = os.path.join(tempfile.gettempdir(), "tooz-netns.lock")

_counter = itertools.count()


class NetnsError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------- availability


def unavailable():
    """Why network namespaces cannot be made here; None when they can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are a Linux feature"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    if not shutil.which("ip"):
        return "no ip command (Debian package iproute2)"
    return None


def skip_or_fail(reason):
    """Skips the test with ``reason``; fails it instead when ``CI=true`` (in CI a partition test
    that cannot run is a broken runner, not a test to leave out quietly)."""
    import pytest

    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("CI=true and the partition tests cannot run: %s" % reason, pytrace=False)
    pytest.skip(reason)


def requires_root():
    """Skips (fails under CI=true) unless namespaces can be made: root and ``ip``."""
    reason = unavailable()
    if reason:
        skip_or_fail(reason)


@contextlib.contextmanager
def netns_or_skip():
    """A :class:`Netns` for a fixture; skips (fails under CI=true) when none can be made."""
    requires_root()
    try:
        ns = Netns()
    except (NetnsError, OSError) as e:
        skip_or_fail("cannot make a network namespace: %s" % e)
    try:
        yield ns
    finally:
        ns.close()


# ------------------------------------------------------------------------------------ namespaces


def _ip(*args, check=True):
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise NetnsError("ip %s: %s" % (" ".join(args), done.stderr.strip() or done.returncode))
    return done


def _block_addresses(index):
    base = "10.213.%d.%d" % (index // 64, (index % 64) * 4)
    a, b, c, d = (int(x) for x in base.split("."))
    return base + "/30", "%d.%d.%d.%d" % (a, b, c, d + 1), "%d.%d.%d.%d" % (a, b, c, d + 2)


def _blocks_in_use():
    """/30 blocks of 10.213/16 that an address or one of our routes uses (root namespace)."""
    text = _ip("-o", "-4", "addr", "show").stdout + _ip("route", "show", "table", "all").stdout
    return {int(c) * 64 + int(d) // 4 for c, d in re.findall(r"\b10\.213\.(\d+)\.(\d+)\b", text)}


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_stale():
    """Removes the namespaces, veth pairs and routes of test runs whose process is gone."""
    for line in _ip("netns", "list").stdout.splitlines():
        m = re.match(r"^tz(\d+)-(\d+)\b", line.strip())
        if m and not _pid_alive(int(m.group(1))):
            _ip("netns", "del", line.split()[0], check=False)
    for m in re.finditer(r"^\d+: (tz(\d+)h\d+)@", _ip("-o", "link", "show").stdout, re.M):
        if not _pid_alive(int(m.group(2))):
            _ip("link", "del", m.group(1), check=False)
    addresses = _ip("-o", "-4", "addr", "show").stdout
    for line in _ip("route", "show", "proto", ROUTE_PROTO).stdout.splitlines():
        m = re.match(r"^blackhole (10\.213\.(\d+)\.(\d+)/30)", line)
        if m:
            host = "10.213.%s.%d" % (m.group(2), int(m.group(3)) + 1)
            if (" %s/" % host) not in addresses:
                _ip("route", "del", "blackhole", m.group(1), "proto", ROUTE_PROTO, "metric", ROUTE_METRIC,
                    check=False)


@contextlib.contextmanager
def _allocation_lock():
    with open(LOCK_PATH, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Netns:
    """A network namespace joined to the root namespace by a veth pair that can be cut.

    ``host_addr``: the host end's address (where the namespace reaches the machine's servers);
    ``ns_addr``: the namespace end's. ``cut_at`` / ``healed_at``: ``time.monotonic()`` of the
    last cut (once the link is down) and heal (once a packet made the round trip again)."""

    def __init__(self):
        n = next(_counter)
        pid = os.getpid()
        self.name = "tz%d-%d" % (pid, n)
        self.host_if = "tz%dh%d" % (pid, n)
        self.ns_if = "tz%dn%d" % (pid, n)
        self.cut_at = None
        self.healed_at = None
        self.is_cut = False
        self._procs = []
        self._closed = False
        self._made = False
        with _allocation_lock():
            _reap_stale()
            used = _blocks_in_use()
            start = (pid * 31 + n * 7) % BLOCKS
            index = next((i % BLOCKS for i in range(start, start + BLOCKS) if i % BLOCKS not in used), None)
            if index is None:
                raise NetnsError("no free /30 block left in 10.213.0.0/16")
            self.subnet, self.host_addr, self.ns_addr = _block_addresses(index)
            atexit.register(self.close)
            self._made = True
            try:
                self._create()
            except BaseException:
                self.close()
                raise
        if not self._wait_reachable(10.0):
            self.close()
            raise NetnsError("%s does not answer through the veth pair" % self.ns_addr)

    def _create(self):
        _ip("netns", "add", self.name)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if, "netns", self.name)
        _ip("addr", "add", self.host_addr + "/30", "dev", self.host_if)
        _ip("-n", self.name, "addr", "add", self.ns_addr + "/30", "dev", self.ns_if)
        _ip("-n", self.name, "link", "set", "lo", "up")
        _ip("-n", self.name, "link", "set", self.ns_if, "up")
        _ip("link", "set", self.host_if, "up")
        _ip("route", "add", "blackhole", self.subnet, "proto", ROUTE_PROTO, "metric", ROUTE_METRIC)
        with open("/sys/class/net/%s/address" % self.host_if) as f:
            self._host_mac = f.read().strip()
        self._ns_mac = json.loads(_ip("-n", self.name, "-j", "link", "show", self.ns_if).stdout)[0]["address"]
        _ip("-n", self.name, "neigh", "replace", self.host_addr, "lladdr", self._host_mac, "dev", self.ns_if,
            "nud", "permanent")
        self._pin_host_neighbour()

    def _pin_host_neighbour(self):
        # Taking the link down flushes the host end's neighbours, permanent ones included.
        _ip("neigh", "replace", self.ns_addr, "lladdr", self._ns_mac, "dev", self.host_if, "nud", "permanent")

    def probe(self, timeout=0.2):
        """Whether a packet makes the round trip now: a connect to a closed port of the
        namespace end is refused (RST) when the link works, and times out when it is cut."""
        with socket.socket() as s:
            s.settimeout(timeout)
            try:
                s.connect((self.ns_addr, 9))
            except ConnectionRefusedError:
                return True
            except OSError:
                return False
            return True

    def _wait_reachable(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.probe():
                return True
            time.sleep(0.01)
        return False

    def cut(self):
        """Takes the host end of the veth down: from here on packets between the namespace and
        the machine vanish. Returns (and keeps in ``cut_at``) the monotonic time at which the
        link is down."""
        if self.is_cut:
            raise NetnsError("%s is already cut" % self.name)
        _ip("link", "set", self.host_if, "down")
        self.cut_at = time.monotonic()
        self.is_cut = True
        return self.cut_at

    def heal(self, timeout=10.0):
        """Brings the link back up and waits until a packet makes the round trip; returns (and
        keeps in ``healed_at``) the monotonic time it did."""
        _ip("link", "set", self.host_if, "up")
        self._pin_host_neighbour()
        if not self._wait_reachable(timeout):
            raise NetnsError("%s still unreachable %.0f s after the heal" % (self.ns_addr, timeout))
        self.healed_at = time.monotonic()
        self.is_cut = False
        return self.healed_at

    def popen(self, argv, **kwargs):
        """``subprocess.Popen`` of ``argv`` inside the namespace (``ip netns exec`` execs it: the
        Popen's pid is the program's). Killed by ``close()`` if still running."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kwargs)
        self._procs.append(proc)
        return proc

    def pids(self):
        """Processes inside the namespace now."""
        return [int(p) for p in _ip("netns", "pids", self.name, check=False).stdout.split()]

    def close(self):
        """Kills what was started inside, deletes the veth pair, the route and the namespace.
        Idempotent; also registered to run at exit."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        if not self._made:
            return
        _ip("link", "del", self.host_if, check=False)
        _ip("route", "del", "blackhole", self.subnet, "proto", ROUTE_PROTO, "metric", ROUTE_METRIC, check=False)
        _ip("netns", "del", self.name, check=False)

    def leftovers(self):
        """What of this namespace still exists (after ``close()``: nothing)."""
        left = []
        if any(line.split()[0] == self.name for line in _ip("netns", "list").stdout.splitlines() if line.strip()):
            left.append("netns " + self.name)
        if _ip("link", "show", self.host_if, check=False).returncode == 0:
            left.append("link " + self.host_if)
        if self.subnet in _ip("route", "show", "proto", ROUTE_PROTO).stdout:
            left.append("route blackhole " + self.subnet)
        return left

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "<Netns %s %s<->%s%s>" % (self.name, self.host_addr, self.ns_addr, " cut" if self.is_cut else "")


# --------------------------------------------------------------------------------------- servers
#
# tests/servers.py binds every server to 127.0.0.1 only. These are the same servers (same
# binaries and settings, same Server class) listening on the namespace's host address too.


class _Served(servers.Server):
    """A ``servers.Server`` that also knows which host a client in the root namespace uses
    (``local_host``) and how to make a URL."""

    scheme = None
    local_host = "127.0.0.1"

    def url_for(self, host, **options):
        url = "%s://%s:%d" % (self.scheme, host, self.port)
        if options:
            url += "?" + "&".join("%s=%s" % kv for kv in options.items())
        return url


def redis(netns):
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"

    def argv(port, workdir):
        # protected-mode would refuse clients of the veth address (no password is set).
        return [binary, "--port", str(port), "--bind", "127.0.0.1", netns.host_addr, "--protected-mode", "no",
                "--save", "", "--appendonly", "no", "--dir", workdir]

    server = _Served("redis", argv)
    server.scheme = "redis"
    return server


def memcached(netns):
    binary = shutil.which("memcached") or "/usr/bin/memcached"

    def argv(port, workdir):
        return [binary, "-l", "127.0.0.1,%s" % netns.host_addr, "-p", str(port), "-U", "0", "-u", "root", "-m", "64",
                "-c", "4096"]

    server = _Served("memcached", argv)
    server.scheme = "memcached"
    return server


def etcd(netns):
    binary = shutil.which("etcd") or "/usr/bin/etcd"
    peer_port = servers.free_port()
    workdir = tempfile.mkdtemp(prefix="tooz-etcd-", dir=servers.ETCD_SHM)

    def argv(port, workdir):
        local = "http://127.0.0.1:%d" % port
        outer = "http://%s:%d" % (netns.host_addr, port)
        peer = "http://127.0.0.1:%d" % peer_port
        return [binary, "--name", "tooz", "--data-dir", os.path.join(workdir, "data"),
                "--listen-client-urls", "%s,%s" % (local, outer), "--advertise-client-urls", outer,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", "tooz=%s" % peer, "--initial-cluster-state", "new",
                "--initial-cluster-token", "tooz-tests", "--heartbeat-interval", "50", "--election-timeout", "500",
                "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"]

    server = _Served("etcd", argv, workdir=workdir, ready=servers._etcd_healthy)
    server.scheme = "etcd3+http"
    return server


class _ZooKeeper(_Served):
    """ZooKeeper serves clients on one address only (``clientPortAddress``): the namespace's
    host address, which the root namespace reaches too. Readiness is asked there."""

    scheme = "zookeeper"

    def __init__(self, netns, argv):
        super().__init__("zookeeper", argv, ready_timeout=60.0)
        self.local_host = netns.host_addr

    def _serving(self):
        return servers._zookeeper_serving(self.port, self.local_host)

    def start(self):
        argv = self._argv_for_port(self.port, self.workdir)
        self.log = open(os.path.join(self.workdir, "server.log"), "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                     start_new_session=True)
        deadline = time.monotonic() + self._ready_timeout
        while not self._serving():
            if self.proc.poll() is not None:
                raise RuntimeError("zookeeper exited with %s" % self.proc.returncode)
            if time.monotonic() > deadline:
                raise RuntimeError("zookeeper on %s:%d never served" % (self.local_host, self.port))
            time.sleep(0.05)
        return self


def zookeeper(netns):
    """servers.zookeeper()'s settings, serving on ``netns.host_addr`` (it cannot listen on two
    addresses; processes in the root namespace use ``.local_host``, that same address)."""
    argv = servers.zookeeper_argv(netns.host_addr)
    return _ZooKeeper(netns, argv)


def _sql_served(server, scheme):
    """A ``servers.py`` database server given the interface of the others here: ``scheme``,
    ``local_host`` and ``url_for(host, **options)`` (its user, password and database in the
    URL, as tests/test_sql.py's URLs)."""
    server.scheme = scheme
    server.local_host = "127.0.0.1"

    def url_for(host, **options):
        url = "%s://%s:%s@%s:%d/%s" % (scheme, servers.SQL_USER, servers.SQL_PASSWORD, host, server.port,
                                       servers.SQL_DATABASE)
        if options:
            url += "?" + "&".join("%s=%s" % kv for kv in options.items())
        return url

    server.url_for = url_for
    return server


def postgresql(netns):
    """servers.postgres(), listening on ``netns.host_addr`` too, its pg_hba letting the
    namespace's /30 log in with the password (SCRAM), as loopback does."""
    server = servers.postgres(listen_addresses="127.0.0.1,%s" % netns.host_addr, allow=(netns.subnet,))
    return _sql_served(server, "postgresql")


def mysql(netns):
    """servers.mariadb(), listening on ``netns.host_addr`` too (MariaDB 10.11 binds to each
    address of a comma-separated ``bind-address``); its user is ``'tooz'@'%'`` already."""
    server = servers.mariadb(bind_address="127.0.0.1,%s" % netns.host_addr)
    return _sql_served(server, "mysql")


# backend name -> function(netns) giving its (unstarted) server
SERVERS = {"redis": redis, "memcached": memcached, "etcd3": etcd, "zookeeper": zookeeper,
           "postgresql": postgresql, "mysql": mysql}


# ----------------------------------------------------------------------------------------- agents

AGENT = r'''
import sys
MODE = sys.argv[1]
if MODE == "green":
    import eventlet
    eventlet.monkey_patch()
import inspect, json, logging, os, threading, time

from tooz import coordination

_out = threading.Lock()
_stop = threading.Event()


def event(kind, **fields):
    """One EV line: kind, the monotonic time and fields."""
    fields["ev"] = kind
    fields.setdefault("t", time.monotonic())
    line = "EV " + json.dumps(fields, default=repr) + "\n"
    with _out:
        sys.stdout.write(line)
        sys.stdout.flush()


def _answer(tag, n, text):
    with _out:
        sys.stdout.write("%s %d %s\n" % (tag, n, text.replace("\n", " ")))
        sys.stdout.flush()


class _Records(logging.Handler):
    def emit(self, record):
        try:
            message = record.getMessage()
        except Exception:
            message = repr(record.msg)
        event("log", level=record.levelname, logger=record.name, message=message)


_handler = _Records(logging.INFO)
logging.getLogger("tooz").addHandler(_handler)
logging.getLogger("tooz").setLevel(logging.INFO)

if MODE == "aio":
    import asyncio
    from tooz import aio

    _loop = asyncio.new_event_loop()
    threading.Thread(target=_loop.run_forever, name="agent-loop", daemon=True).start()

    async def _await(x):
        return await x

    def value(x, timeout=None):
        """``x``, awaited on the agent's loop if it is awaitable."""
        if inspect.isawaitable(x):
            return asyncio.run_coroutine_threadsafe(_await(x), _loop).result(timeout)
        return x
else:
    def value(x, timeout=None):
        return x


def spawn(fn, *args):
    t = threading.Thread(target=fn, args=args, daemon=True)  # a greenthread when patched
    t.start()
    return t


def heart_of(c):
    return getattr(c, "heart", None) or getattr(getattr(c, "_driver", None), "heart", None)


def beats(c):
    heart = heart_of(c)
    return heart.beats if heart is not None else None


def sample(lock, c, every=0.02):
    """Samples ``lock.acquired`` and the heartbeat count every ``every`` s ("s" events); on
    the agent's loop in aio mode, so a stalled loop shows as a gap."""
    def one():
        event("s", a=getattr(lock, "acquired", None), b=beats(c))

    if MODE == "aio":
        async def run():
            while not _stop.is_set():
                one()
                await asyncio.sleep(every)
        asyncio.run_coroutine_threadsafe(run(), _loop)
    else:
        def run():
            while not _stop.is_set():
                one()
                time.sleep(every)
        spawn(run)


def watch(lock, c, every=0.02):
    """on_lost (where the lock has it) reported as a "lost" event, and sampling."""
    on_lost = getattr(lock, "on_lost", None)
    if on_lost is None:
        event("no_on_lost")
    else:
        on_lost(lambda l: event("lost", same=l is lock, acquired=getattr(lock, "acquired", None)))
    sample(lock, c, every)


def wait_beat(c, timeout=15.0):
    """Waits for the next completed heartbeat; its monotonic time (within 2 ms)."""
    b0 = beats(c)
    deadline = time.monotonic() + timeout
    while beats(c) == b0:
        if time.monotonic() > deadline:
            raise RuntimeError("no heartbeat in %.0f s (beats stay %r)" % (timeout, b0))
        time.sleep(0.002)
    return time.monotonic()


def acquire_after_beat(c, lock):
    """Right after a heartbeat completed, one acquire(blocking=False): the phase of the
    heartbeat cycle is then known. An "acquire" event and the same dict returned."""
    beat = wait_beat(c) if getattr(c, "requires_beating", False) else None
    t0 = time.monotonic()
    ok = value(lock.acquire(blocking=False))
    t1 = time.monotonic()
    event("acquire", ok=ok, beat=beat, t0=t0, t1=t1)
    return {"ok": ok, "beat": beat, "t0": t0, "t1": t1}


def timed(expr_fn):
    """(result or "ERR <exception>", seconds it took)."""
    t0 = time.monotonic()
    try:
        out = value(expr_fn())
    except Exception as e:
        out = "ERR %s %s" % (type(e).__name__, e)
    return out, time.monotonic() - t0


def poll(lock, until, every=0.05, stop_when_got=True):
    """acquire(blocking=False) every ``every`` s until monotonic ``until``; the first success is
    a "got" event (t0: the attempt's start, t1: its end); errors are "poll_error" events."""
    attempts, errors, got = 0, 0, None
    tick = time.monotonic()
    while time.monotonic() < until:
        t0 = time.monotonic()
        try:
            ok = value(lock.acquire(blocking=False))
        except Exception as e:
            errors += 1
            if errors <= 5:
                event("poll_error", error="%s %s" % (type(e).__name__, e), t0=t0)
        else:
            attempts += 1
            if ok and got is None:
                got = [t0, time.monotonic()]
                event("got", t0=t0, t1=got[1])
                if stop_when_got:
                    break
        tick += every
        time.sleep(max(0.0, tick - time.monotonic()))
    return {"got": got, "attempts": attempts, "errors": errors}


def elect(c, group, every=0.05):
    """Stands for election in ``group``: run_watchers() every ``every`` s on a thread of its
    own; each win is an "elected" event."""
    c.watch_elected_as_leader(group, lambda e: event("elected", member=e.member_id))

    def run():
        while not _stop.is_set():
            t0 = time.monotonic()
            try:
                c.run_watchers()
            except Exception as e:
                event("watchers_error", error="%s %s" % (type(e).__name__, e), t0=t0)
            time.sleep(every)
    spawn(run)


def _lines():
    buf = b""
    while True:
        if MODE == "green":
            eventlet.hubs.trampoline(0, read=True)
        chunk = os.read(0, 65536)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode()


_answer("READY", 0, "")
for _n, _line in enumerate(_lines(), 1):
    try:
        try:
            _code = compile(_line, "<agent>", "eval")
        except SyntaxError:
            exec(compile(_line, "<agent>", "exec"), globals())
            _result = None
        else:
            _result = value(eval(_code, globals()))
        _answer("OK", _n, repr(_result))
    except BaseException as e:
        _answer("ERR", _n, "%s %s" % (type(e).__name__, e))
_stop.set()
sys.stdout.flush()
os._exit(0)
'''


class AgentError(Exception):
    """The statement raised in the agent: ``'<ExceptionName> <message>'``."""


class AgentTimeout(AgentError):
    """The agent did not answer in time (it is still busy with the statement)."""


class Agent:
    """A Python interpreter (``python``: ours by default, or upstream's) inside ``netns`` (or in
    the root namespace when None), in ``mode`` "sync", "aio" (awaitable results are awaited on
    a loop of its own) or "green" (``eventlet.monkey_patch()`` first).

    ``call(statement)`` runs one line there and returns its value (``ast.literal_eval`` of the
    repr, else the repr text); an exception there raises :class:`AgentError`. Helpers defined
    there: ``event``, ``watch(lock, c)``, ``acquire_after_beat(c, lock)``, ``poll(lock, until)``,
    ``elect(c, group)``, ``timed(fn)``, ``value(x)``. ``events(kind)`` lists what it reported
    (dicts with ``ev`` and ``t``), as it happens, also while a statement is still running."""

    def __init__(self, netns=None, mode="sync", python=sys.executable, env=None, label="agent"):
        self.label = label
        self.mode = mode
        argv = [python, "-W", "ignore", "-c", AGENT, mode]
        self._stderr = tempfile.TemporaryFile(mode="w+")
        full_env = dict(os.environ)
        full_env.update(env or {})
        kwargs = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=full_env)
        self.proc = netns.popen(argv, **kwargs) if netns is not None else subprocess.Popen(argv, **kwargs)
        self._events = []
        self._events_lock = threading.Lock()
        self._replies = queue.Queue()
        self._sent = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        tag, n, text = self._next_reply(60.0, "start")
        if tag != "READY":
            raise AgentError("%s did not start: %s %s" % (label, text, self.stderr()))

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("EV "):
                try:
                    ev = json.loads(line[3:])
                except ValueError:
                    ev = {"ev": "garbled", "t": time.monotonic(), "line": line}
                with self._events_lock:
                    self._events.append(ev)
            else:
                tag, _, rest = line.partition(" ")
                n, _, text = rest.partition(" ")
                try:
                    self._replies.put((tag, int(n), text))
                except ValueError:
                    self._replies.put(("JUNK", -1, line))
        self._replies.put(("EOF", -1, ""))

    def _next_reply(self, timeout, what):
        try:
            return self._replies.get(timeout=timeout)
        except queue.Empty:
            raise AgentTimeout("%s: no answer to %s within %.1f s" % (self.label, what, timeout)) from None

    def send(self, statement):
        """Starts ``statement`` without waiting; :meth:`receive` gets its outcome."""
        if "\n" in statement:
            raise ValueError("one line per statement")
        self.proc.stdin.write(statement + "\n")
        self.proc.stdin.flush()
        self._sent += 1
        return self._sent

    def receive(self, timeout=60.0, what="the last statement"):
        """The outcome of the last statement sent (answers to earlier ones that timed out are
        skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            tag, n, text = self._next_reply(max(0.0, deadline - time.monotonic()), what)
            if tag == "EOF":
                raise AgentError("%s died: %s" % (self.label, self.stderr()[-3000:]))
            if n != self._sent:
                continue
            if tag == "OK":
                try:
                    return ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    return text
            raise AgentError(text)

    def call(self, statement, timeout=60.0):
        self.send(statement)
        return self.receive(timeout, repr(statement))

    def events(self, kind=None, since=None):
        with self._events_lock:
            evs = list(self._events)
        return [e for e in evs if (kind is None or e["ev"] == kind) and (since is None or e["t"] >= since)]

    def first(self, kind, since=None, where=None):
        """The first event of ``kind`` (after ``since``, matching ``where(ev)``), or None."""
        return next((e for e in self.events(kind, since) if where is None or where(e)), None)

    def wait_event(self, kind, timeout, since=None, where=None):
        deadline = time.monotonic() + timeout
        while True:
            ev = self.first(kind, since, where)
            if ev is not None or time.monotonic() > deadline:
                return ev
            time.sleep(0.01)

    def stderr(self):
        self._stderr.seek(0)
        return self._stderr.read()

    def close(self, timeout=15.0):
        """Closes its stdin (it exits at once, whatever it holds) and reaps it; killed if it
        does not go."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._stderr.close()


# ---------------------------------------------------------------------------------- reading events


def timeline(agent, origin, label=None, limit=60):
    """What ``agent`` reported, one line per event, times in seconds relative to ``origin``
    (the cut): samples shown as changes of ``acquired`` and each heartbeat, plus the longest
    gap between two samples."""
    label = label or agent.label
    lines = []
    last = None
    gap, gap_at = 0.0, None
    prev_t = None
    for e in agent.events():
        rel = e["t"] - origin
        if e["ev"] == "s":
            if prev_t is not None and e["t"] - prev_t > gap:
                gap, gap_at = e["t"] - prev_t, prev_t - origin
            prev_t = e["t"]
            state = (e.get("a"), e.get("b"))
            if last is None or state[0] != last[0]:
                lines.append("%+8.3f  %s acquired=%s" % (rel, label, state[0]))
            elif state[1] != last[1]:
                lines.append("%+8.3f  %s beat #%s" % (rel, label, state[1]))
            last = state
            continue
        fields = {k: v for k, v in e.items() if k not in ("ev", "t")}
        for k in ("t0", "t1", "beat"):
            if isinstance(fields.get(k), float):
                fields[k] = "%+.3f" % (fields[k] - origin)
        lines.append("%+8.3f  %s %s %s" % (rel, label, e["ev"], fields if fields else ""))
    if len(lines) > limit:
        lines = lines[:limit // 2] + ["... %d more ..." % (len(lines) - limit)] + lines[-limit // 2:]
    if gap_at is not None:
        lines.append("          %s: longest gap between samples %.3f s (from %+.3f)" % (label, gap, gap_at))
    return "\n".join(lines)


def first_sample(agent, since, acquired):
    """The first sample after ``since`` whose ``acquired`` is ``acquired``, or None."""
    return agent.first("s", since, lambda e: e.get("a") is acquired)


def sleep_until(t):
    left = t - time.monotonic()
    if left > 0:
        time.sleep(left)


def cut_and_poll(netns, other, at, duration, after, every=0.05):
    """Cuts ``netns`` at monotonic ``at`` for ``duration`` s. From the cut until ``after`` s past
    the heal, ``other`` (an :class:`Agent` with ``lock``) tries ``lock.acquire(blocking=False)``
    every ``every`` s, stopping once it has it. Returns (cut, healed, the poll's summary:
    ``{"got": [t0, t1] or None, "attempts", "errors"}``)."""
    sleep_until(at)
    cut = netns.cut()
    other.send("poll(lock, %r, %r)" % (cut + duration + after, every))
    sleep_until(cut + duration)
    healed = netns.heal()
    polled = other.receive(timeout=after + 60, what="the other's polling")
    return cut, healed, polled
