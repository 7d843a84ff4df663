"""eventlet-patched processes: a waiting call lets the other greenthreads run, an
``eventlet.Timeout`` withdraws a wait, and the rest of the API works there.

Each test runs a fresh interpreter that calls ``eventlet.monkey_patch()`` before importing
tooz, as cinder-volume and other services do.
"""

import json
import socket
import subprocess
import sys
import time

import pytest

from conftest import OtherProcessHolder, has, new_id, run_python, with_options

pytest.importorskip("eventlet")

# The start of every script: patch, then a greenthread that ticks every 10 ms. share(a, b) is
# how many ticks it made between two instants, as a share of what it makes running alone.
# (Counted by time: a ticker that only started once a blocking call returned would otherwise
# still make all its ticks.)
PRELUDE = r"""
import eventlet
eventlet.monkey_patch()
import json, os, sys, time
from tooz import coordination


class Ticker:
    def __init__(self):
        n, end = 0, time.monotonic() + 1.0
        while time.monotonic() < end:
            n += 1
            eventlet.sleep(0.01)
        self.rate = n  # ticks per second, alone
        self.ticks = []
        self.thread = eventlet.spawn(self._run)
        eventlet.sleep(0)  # ticking from here on

    def _run(self):
        while True:
            self.ticks.append(time.monotonic())
            eventlet.sleep(0.01)

    def share(self, start, end):
        during = sum(1 for t in self.ticks if start <= t <= end)
        return during / max(self.rate * (end - start), 1.0)

    def stop(self):
        self.thread.kill()
"""

# While the main greenthread waits 2 s for a lock another process holds, the ticker keeps
# ticking; then an eventlet.Timeout of 0.5 s ends a wait without a limit, and kill() another
# greenthread's. The process then stays, holding nothing, until told to stop.
WAITER = PRELUDE + r"""

url, name = sys.argv[1], sys.argv[2].encode()
c = coordination.get_coordinator(url, b"green-waiter")
c.start(start_heart=True)

ticker = Ticker()
start = time.monotonic()
got = c.get_lock(name).acquire(blocking=2)
waited = time.monotonic() - start
share = ticker.share(start, start + waited)
ticker.stop()
timed_out = False
start = time.monotonic()
try:
    with eventlet.Timeout(0.5):
        c.get_lock(name).acquire(blocking=True)
except eventlet.Timeout:
    timed_out = True
timeout_after = time.monotonic() - start
# GreenThread.kill() of a greenthread that waits withdraws its wait too.
waiting = eventlet.spawn(c.get_lock(name).acquire, blocking=True)
eventlet.sleep(0.3)
waiting.kill()
print(json.dumps({"share": share, "got": got, "waited": waited, "timed_out": timed_out,
                  "timeout_after": timeout_after, "killed": waiting.dead}), flush=True)
sys.stdin.readline()
c.stop()
print("stopped", flush=True)
"""


def test_a_lock_wait_lets_other_greenthreads_run_and_a_timeout_withdraws_it(backend, make_coordinator):
    name = new_id("l")
    holder = OtherProcessHolder(backend[1], name)
    proc = subprocess.Popen([sys.executable, "-W", "ignore", "-c", WAITER, backend[1], name.decode()],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        out = json.loads(line)
        print("%s: %.0f%% of the ticks during the wait" % (backend[0], 100 * out["share"]))
        assert out["got"] is False
        assert 1.9 <= out["waited"] < 4.0, out
        assert out["share"] >= 0.8, out
        assert out["timed_out"] and out["timeout_after"] < 1.5, out
        assert out["killed"], out
        # The withdrawn wait left nothing queued or held: once the holder lets go, another
        # process takes the lock at once while the green process is still alive.
        holder.release()
        other = make_coordinator()
        lock = other.get_lock(name)
        assert lock.acquire(blocking=5)
        assert lock.release()
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "stopped", proc.stderr.read()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if holder.proc.poll() is None:
            holder.kill()


GROUPS = r"""
import eventlet
eventlet.monkey_patch()
import sys, time
from tooz import coordination

url = sys.argv[1]
a = coordination.get_coordinator(url, b"green-a")
b = coordination.get_coordinator(url, b"green-b")
a.start(start_heart=True)
b.start(start_heart=True)
group = ("green-" + sys.argv[2]).encode()
a.create_group(group).get()
seen = []
b.watch_join_group(group, lambda event: seen.append(event.member_id))
b.run_watchers()
a.join_group(group, capabilities={"cores": 8}).get()
deadline = time.monotonic() + 10
while b"green-a" not in seen and time.monotonic() < deadline:
    b.run_watchers()
    eventlet.sleep(0.05)
assert b"green-a" in seen, seen
b.join_group(group).get(timeout=10)
assert set(b.get_members(group).get()) == {b"green-a", b"green-b"}
assert a.get_member_capabilities(group, b"green-a").get() == {"cores": 8}
if ELECTION:
    elected = []
    a.watch_elected_as_leader(group, lambda event: elected.append(event.member_id))
    deadline = time.monotonic() + 10
    while not elected and time.monotonic() < deadline:
        a.run_watchers()
        eventlet.sleep(0.05)
    assert elected == [b"green-a"], elected
a.leave_group(group).get()
b.leave_group(group).get()
a.stop()
b.stop()
print("ok")
"""


def test_groups_watchers_and_leaders_work_green(backend):
    if not has(backend, "members"):
        pytest.skip("no members on %s" % backend[0])
    code = (GROUPS.replace("sys.argv[1]", repr(backend[1])).replace("sys.argv[2]", repr(new_id("g").decode()))
            .replace("ELECTION", repr(has(backend, "watch_elected_as_leader"))))
    out = run_python(code, timeout=90)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


# Every record, as (logger name, message), through a root handler that yields to the hub.
SLOWLY_LOGGED = PRELUDE + r"""
import logging
records = []


class Slow(logging.Handler):
    def emit(self, record):
        eventlet.sleep(0.005)
        records.append((record.name, record.getMessage()))


logging.getLogger().addHandler(Slow())
logging.getLogger().setLevel(logging.DEBUG)
"""

# A lock broken by another coordinator: is_still_owner() finds it lost. The core's warning and
# the on_lost callback (which yields to the hub and logs) reach Python in a greenthread,
# through a handler that yields too; nothing runs Python on a thread of the core.
LOST = SLOWLY_LOGGED + r"""
url, name = sys.argv[1], sys.argv[2].encode()
c = coordination.get_coordinator(url, b"green-holder")
c.start(start_heart=True)
lock = c.get_lock(name)
assert lock.acquire()
called = []

def lost(_lock):
    eventlet.sleep(0.01)
    logging.getLogger("app").warning("on_lost ran")
    called.append(True)

lock.on_lost(lost)
other = coordination.get_coordinator(url, b"green-breaker")
other.start()
assert other.get_lock(name).break_()
owner = lock.is_still_owner()
released = lock.release()
deadline = time.monotonic() + 10
while not (called and any(m == "on_lost ran" for _, m in records)) and time.monotonic() < deadline:
    eventlet.sleep(0.05)
other.stop()
c.stop()
print(json.dumps({"owner": owner, "released": released, "called": bool(called), "records": [m for _, m in records]}))
"""


def test_on_lost_and_the_cores_records_are_delivered_in_a_greenthread(backend):
    if not (has(backend, "break") and has(backend, "ttl_locks")):
        pytest.skip("no broken-lock notice on %s" % backend[0])
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", LOST, backend[1], new_id("l").decode()],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "greenlet" not in out.stderr, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["owner"] is False and result["released"] is False, result
    assert result["called"], result
    assert any("was lost" in r for r in result["records"]), result
    assert "on_lost ran" in result["records"], result


# The heart is a task of the core: it beats while a greenthread keeps the hub (and the GIL)
# busy in pure Python for twice the membership timeout.
BUSY = r"""
import eventlet
eventlet.monkey_patch()
import sys, time
from tooz import coordination

url, group = sys.argv[1], sys.argv[2].encode()
c = coordination.get_coordinator(url, b"green-busy")
c.start(start_heart=True)
c.create_group(group).get()
c.join_group(group).get()
print("joined", flush=True)
end = time.monotonic() + 2.5
n = 0
while time.monotonic() < end:
    n += 1
print("done", flush=True)
sys.stdin.readline()
c.stop()
"""


def test_a_busy_hub_does_not_let_the_member_expire(backend, make_coordinator):
    if not (has(backend, "members") and has(backend, "beat_liveness")):
        pytest.skip("membership on %s does not lapse without beats" % backend[0])
    url = with_options(backend[1], timeout=1)
    group = new_id("g")
    proc = subprocess.Popen([sys.executable, "-W", "ignore", "-c", BUSY, url, group.decode()],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "joined", proc.stderr.read()
        observer = make_coordinator(url=url)
        time.sleep(2.0)  # twice the timeout, the hub busy all along
        assert b"green-busy" in observer.get_members(group).get()
        assert proc.stdout.readline().strip() == "done"
        assert b"green-busy" in observer.get_members(group).get()
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# A server that takes connections (the kernel's backlog) and never answers: start() fails
# after its timeout while another greenthread goes on ticking.
SILENT = PRELUDE + r"""
ticker = Ticker()
start = time.monotonic()
c = coordination.get_coordinator(sys.argv[1], b"green-silent")
try:
    c.start()
    c.get_lock(b"silent").acquire(blocking=False)
    error = None
except Exception as e:
    error = type(e).__name__
failed_after = time.monotonic() - start
share = ticker.share(start, start + failed_after)
ticker.stop()
print(json.dumps({"share": share, "error": error, "failed_after": failed_after}))
"""


@pytest.mark.parametrize("scheme", ["redis", "memcached", "zookeeper", "etcd3+http"])
def test_a_silent_server_does_not_stall_the_hub(scheme):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        url = "%s://127.0.0.1:%d?timeout=2" % (scheme, listener.getsockname()[1])
        out = subprocess.run([sys.executable, "-W", "ignore", "-c", SILENT, url], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr[-3000:]
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["error"] is not None, result
        assert result["share"] >= 0.8, result
        print(scheme, result)
    finally:
        listener.close()


# oslo.service's ProcessLauncher: a green parent forks workers, each opens a fresh hub and
# starts its own coordinator there; a wait in the worker lets its greenthreads run.
FORKED = PRELUDE + r"""

url, name = sys.argv[1], sys.argv[2].encode()
parent = coordination.get_coordinator(url, b"green-parent")
parent.start()
parent.get_lock(b"warm-up").acquire(blocking=False)
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    eventlet.hubs.use_hub()
    c = coordination.get_coordinator(url, b"green-worker")
    c.start(start_heart=True)
    ticker = Ticker()
    start = time.monotonic()
    got = c.get_lock(name).acquire(blocking=1)
    share = ticker.share(start, time.monotonic())
    ticker.stop()
    c.stop()
    os.write(write, json.dumps({"got": got, "share": share}).encode())
    os._exit(0)
os.close(write)
_, status = os.waitpid(pid, 0)
print(os.read(read, 1000).decode())
parent.stop()
assert status == 0, status
"""


def test_a_forked_worker_of_a_green_process_waits_green(backend):
    name = new_id("l")
    holder = OtherProcessHolder(backend[1], name)
    try:
        out = subprocess.run([sys.executable, "-W", "ignore", "-c", FORKED, backend[1], name.decode()],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-3000:]
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["got"] is False, result
        assert result["share"] >= 0.8, result
    finally:
        holder.release()


# The server stops under a joined, heartbeating coordinator while four greenthreads log
# through a handler that yields, then comes back: the core's records about the outage reach
# that handler, the membership heals, and the process stops cleanly.
OUTAGE = SLOWLY_LOGGED + r"""
from eventlet.hubs import trampoline

url, group = sys.argv[1], sys.argv[2].encode()
c = coordination.get_coordinator(url, b"green-outage", membership_timeout=3)
c.start(start_heart=True)
c.create_group(group).get()
c.join_group(group).get()
done = []

def chatter(i):
    while not done:
        logging.getLogger("app").info("chatter %d", i)
        eventlet.sleep(0.02)

for i in range(4):
    eventlet.spawn_n(chatter, i)
print("joined", flush=True)
for _ in range(2):  # "stopped", then "started"
    trampoline(sys.stdin.fileno(), read=True)
    sys.stdin.readline()
healed = False
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        if b"green-outage" in c.get_members(group).get():
            healed = True
            break
    except coordination.ToozError:
        pass
    eventlet.sleep(0.2)
done.append(True)
c.stop()
core = [m for name, m in records if name.startswith("tooz")]
print(json.dumps({"healed": healed, "core": core, "chatter": sum(1 for n, _ in records if n == "app")}))
"""


@pytest.mark.parametrize("kind", ["redis", "memcached"])
def test_an_outage_under_logging_greenthreads_heals_and_delivers_the_cores_records(kind):
    import servers

    server = getattr(servers, kind)().start()
    proc = None
    try:
        url = "%s://127.0.0.1:%d" % (kind, server.port)
        proc = subprocess.Popen([sys.executable, "-W", "ignore", "-c", OUTAGE, url, new_id("g").decode()],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "joined", proc.stderr.read()
        time.sleep(0.5)
        server.stop()
        proc.stdin.write("stopped\n")
        proc.stdin.flush()
        time.sleep(2.5)  # beats fail meanwhile
        server.start()
        proc.stdin.write("started\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-3000:]
        assert "greenlet" not in err, err[-3000:]
        result = json.loads(out.strip().splitlines()[-1])
        assert result["healed"], result
        assert result["chatter"] > 100, result
        assert any("heartbeat" in m and "failed" in m for m in result["core"]), result
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        server.close()


# cinder-volume's shape: patched first, one coordinator, a decorator that formats a lock name
# from the call's arguments and holds that lock around the call (`with lock(blocking)`), and
# several greenthreads working on volumes, two to a volume, 0.2 s inside each volume's lock.
# A greenthread of the same process holds the lock the others wait for (where a wait that
# blocked the OS thread would deadlock), and a ticker records the longest stall of the hub.
SYNCHRONIZED = PRELUDE + r"""
import functools, inspect

url = sys.argv[1]
c = coordination.get_coordinator(url, b"green-volume")
c.start(start_heart=True)


def synchronized(template, blocking=True):
    def wrap(f):
        @functools.wraps(f)
        def inner(*args, **kwargs):
            named = inspect.getcallargs(f, *args, **kwargs)
            with c.get_lock(("volume-" + template.format(**named)).encode())(blocking):
                return f(*args, **kwargs)
        return inner
    return wrap


inside = {}
overlaps = []


@synchronized("{volume_id}-delete_volume")
def delete_volume(volume_id, worker):
    if inside.get(volume_id) is not None:
        overlaps.append((volume_id, inside[volume_id], worker))
    inside[volume_id] = worker
    eventlet.sleep(0.2)
    inside[volume_id] = None


ticker = Ticker()
start = time.monotonic()
volumes = [sys.argv[2] + "-a", sys.argv[2] + "-b"]
pool = eventlet.GreenPool(4)
for worker in range(4):
    pool.spawn(delete_volume, volumes[worker % 2], worker)
pool.waitall()
took = time.monotonic() - start
ticks = [t for t in ticker.ticks if t >= start]
stall = max(b - a for a, b in zip([start] + ticks, ticks + [time.monotonic()]))
ticker.stop()
c.stop()
print(json.dumps({"took": took, "stall": stall, "overlaps": overlaps}))
"""


def test_cinder_style_synchronized_volume_locks_keep_the_hub_running(backend):
    code = SYNCHRONIZED.replace("sys.argv[1]", repr(backend[1])).replace("sys.argv[2]", repr(new_id("v").decode()))
    done = run_python("import warnings; warnings.simplefilter('ignore')\n" + code, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    print("%s: longest stall %.3f s, %.2f s in all" % (backend[0], out["stall"], out["took"]))
    assert out["overlaps"] == [], out  # one holder per volume at a time
    assert 0.39 <= out["took"] < 5.0, out  # two holds in a row per volume, the volumes at once
    # Each hold sleeps 0.2 s in the hub; a wait that blocked the OS thread stalls it that long.
    assert out["stall"] < 0.15, out
