"""What a coordinator costs its server: the ``heartbeat`` and ``fleet`` rows of scale.py.

* heartbeat: one coordinator, started without its heart, holding N locks (``lock_timeout``
  long enough to outlast the run); the median wall time of one ``heartbeat()`` call, ms.
* fleet: N members in one process, all joined to one group, each watching the group's joins
  and leaves and calling ``run_watchers()`` once a second, hearts running; what the server
  process spends per member per second, from its own counters (redis ``INFO``: used_cpu_*,
  total_commands_processed, which counts the commands scripts run too; memcached ``stats``:
  rusage_*, and its cmd_*, incr, decr and delete counters; etcd ``/metrics``:
  process_cpu_seconds_total, grpc_server_handled_total), over a window after the fleet
  settled.

Each side runs in a process of its own (ours: this interpreter; upstream tooz: .venv-upstream),
the sides interleaved round by round on the same servers.
"""

import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import urllib.request

BEATER = r'''
import json, sys, time, uuid
from tooz import coordination
url, n = sys.argv[1], int(sys.argv[2])
c = coordination.get_coordinator(url + ("&" if "?" in url else "?") + "lock_timeout=900",
                                 uuid.uuid4().hex.encode())
c.start()
prefix = uuid.uuid4().hex
locks = [c.get_lock(("%s-%d" % (prefix, i)).encode()) for i in range(n)]
for lock in locks:
    assert lock.acquire(blocking=False)
c.heartbeat()  # warm
times = []
calls = max(3, min(50, 2000 // n))
for _ in range(calls):
    t0 = time.perf_counter()
    c.heartbeat()
    times.append((time.perf_counter() - t0) * 1000.0)
assert all(lock.acquired for lock in locks[:: max(1, n // 20)])
c.stop()
print(json.dumps(times))
'''

FLEET = r'''
import sys, time, uuid
from tooz import coordination
url, n, group = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
coords = []
for i in range(n):
    c = coordination.get_coordinator(url, uuid.uuid4().hex.encode())
    c.start(start_heart=True)
    coords.append(c)
try:
    coords[0].create_group(group).get()
except coordination.GroupAlreadyExist:
    pass
noop = lambda event: None
for c in coords:
    c.join_group(group).get()
    c.watch_join_group(group, noop)
    c.watch_leave_group(group, noop)
print("ready", flush=True)
# Once a second each member looks at its watchers, until stdin closes.
import select
tick = time.monotonic()
while True:
    for c in coords:
        c.run_watchers()
    tick += 1.0
    if select.select([sys.stdin], [], [], max(0.0, tick - time.monotonic()))[0]:
        break
for c in coords:
    try:
        c.leave_group(group).get()
    except Exception:
        pass
    c.stop()
'''


def beat_ms(python, url, n):
    out = subprocess.run([python, "-c", BEATER, url, str(n)], capture_output=True, text=True, timeout=3600,
                         cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise SystemExit("heartbeat of %d locks on %s failed under %s:\n%s" % (n, url, python, out.stderr[-3000:]))
    return statistics.median(json.loads(out.stdout.strip().splitlines()[-1]))


def _text_command(host, port, command, end):
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(command)
        data = b""
        while not data.endswith(end):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.decode()


def counters(backend, server):
    """(server CPU seconds, requests) from the server's own counters."""
    if backend == "redis":
        text = _text_command("127.0.0.1", server.port, b"INFO\r\nQUIT\r\n", b"+OK\r\n")
        stats = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        cpu = sum(float(stats[k]) for k in ("used_cpu_sys", "used_cpu_user"))
        return cpu, int(stats["total_commands_processed"])
    if backend == "memcached":
        text = _text_command("127.0.0.1", server.port, b"stats\r\n", b"END\r\n")
        stats = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "STAT":
                stats[parts[1]] = parts[2]
        cpu = float(stats["rusage_user"]) + float(stats["rusage_system"])
        counted = [k for k in stats if k.startswith("cmd_") or re.match(r"(incr|decr|delete)_(hits|misses)$", k)]
        return cpu, sum(int(stats[k]) for k in counted)
    if backend == "etcd3":
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % server.port, timeout=10) as r:
            text = r.read().decode()
        cpu = requests = 0.0
        for line in text.splitlines():
            if line.startswith("process_cpu_seconds_total "):
                cpu = float(line.split()[1])
            elif line.startswith("grpc_server_handled_total{"):
                requests += float(line.rsplit(" ", 1)[1])
        return cpu, int(requests)
    raise SystemExit("no server counters for " + backend)


def fleet_cost(python, backend, url, server, n, settle, window):
    """Server CPU µs/s and requests/s, per member, of an idle fleet of ``n``."""
    import time

    group = "fleet-%s" % __import__("uuid").uuid4().hex
    proc = subprocess.Popen([python, "-c", FLEET, url, str(n), group], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=tempfile.gettempdir())
    try:
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit("a fleet of %d on %s did not start under %s" % (n, url, python))
        time.sleep(settle)
        cpu0, req0, t0 = *counters(backend, server), time.monotonic()
        time.sleep(window)
        cpu1, req1, t1 = *counters(backend, server), time.monotonic()
    finally:
        proc.stdin.close()
        proc.wait(timeout=600)
    seconds = t1 - t0
    return (cpu1 - cpu0) * 1e6 / seconds / n, (req1 - req0) / seconds / n


def heartbeat_table(backend, url, sizes, rounds, upstream):
    print("heartbeat of one coordinator holding N locks, ms per call (median of each round; "
          "ours ÷ upstream as min-max over rounds)\n")
    print("| N | upstream ms | ours ms | ours ÷ upstream |")
    print("|---|---|---|---|")
    for n in sizes:
        ours, theirs = [], []
        for _ in range(rounds):
            ours.append(beat_ms(sys.executable, url, n))
            theirs.append(beat_ms(upstream, url, n))
        ratios = [o / t for o, t in zip(ours, theirs)]
        print("| %d | %s | %s | %.3f–%.3f |" % (n, ", ".join("%.2f" % t for t in theirs),
                                              ", ".join("%.2f" % o for o in ours), min(ratios), max(ratios)))
        sys.stdout.flush()
    print()


def fleet_table(backend, url, server, sizes, rounds, upstream, settle=5.0, window=10.0):
    print("idle fleet of N members (one group, watchers run once a second, hearts running): server "
          "CPU µs/s per member and requests/s per member, each round; ours ÷ upstream CPU as "
          "min-max over rounds\n")
    print("| N | upstream CPU µs/s/member | ours CPU µs/s/member | ours ÷ upstream CPU | "
          "upstream req/s/member | ours req/s/member |")
    print("|---|---|---|---|---|---|")
    for n in sizes:
        ours, theirs = [], []
        for _ in range(rounds):
            ours.append(fleet_cost(sys.executable, backend, url, server, n, settle, window))
            theirs.append(fleet_cost(upstream, backend, url, server, n, settle, window))
        ratios = [o[0] / t[0] for o, t in zip(ours, theirs)]
        print("| %d | %s | %s | %.2f–%.2f | %s | %s |" % (
            n, ", ".join("%.0f" % t[0] for t in theirs), ", ".join("%.0f" % o[0] for o in ours),
            min(ratios), max(ratios), ", ".join("%.1f" % t[1] for t in theirs),
            ", ".join("%.1f" % o[1] for o in ours)))
        sys.stdout.flush()
    print()
