"""The ``tooz`` command line, run as a user would (``python -m tooz``), on file and redis."""

import json
import signal
import subprocess
import sys
import time

import pytest

from tooz import coordination

from conftest import new_id

TOOZ = [sys.executable, "-m", "tooz"]


@pytest.fixture(params=["file", "redis"])
def cli_url(request, tmp_path):
    if request.param == "file":
        return "file://%s" % tmp_path
    server = request.getfixturevalue("redis_server")
    return "redis://127.0.0.1:%d?namespace=%s" % (server.port, new_id("ns").decode())


def tooz(*args, timeout=60, **kwargs):
    return subprocess.run(TOOZ + list(args), capture_output=True, text=True, timeout=timeout, **kwargs)


def test_help_for_every_command():
    assert tooz("--help").returncode == 0
    for command in ("lock", "groups", "members", "leader", "watch"):
        out = tooz(command, "--help")
        assert out.returncode == 0 and "usage: tooz %s" % command in out.stdout


@pytest.mark.parametrize("args, code", [
    (("groups", "nope://x"), 2),
    (("groups", "redis://127.0.0.1:1"), 3),
    (("groups", "zookeeper://127.0.0.1:1?timeout=1"), 3),
    (("members", "redis://127.0.0.1:1", "g"), 3),
    (("lock", "file:///tmp", "x"), 2),
    (("groups",), 2),
    (("-v", "groups", "redis://127.0.0.1:1"), 3),
])
def test_errors_are_one_line_never_a_traceback(args, code):
    out = tooz(*args)
    assert out.returncode == code, out
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) >= 1
    if "-v" in args:  # the core's own records may follow
        assert out.stderr.startswith("tooz: cannot reach the backend"), out.stderr
    elif code != 2 or args[0] != "groups" or len(args) > 1:
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_lock_runs_the_command_and_passes_its_status(cli_url):
    out = tooz("lock", cli_url, "job", "--", sys.executable, "-c", "import sys; print('inside'); sys.exit(7)")
    assert out.returncode == 7 and out.stdout.strip() == "inside"
    # Released afterwards: another holder gets it at once.
    c = coordination.get_coordinator(cli_url, new_id())
    c.start()
    try:
        lock = c.get_lock(b"job")
        assert lock.acquire(blocking=False)
        out = tooz("lock", cli_url, "job", "--timeout", "0.5", "--", "true")
        assert out.returncode == 1 and "not acquired" in out.stderr and out.stderr.count("\n") == 1
        lock.release()
    finally:
        c.stop()


def test_two_lock_runs_never_overlap(cli_url, tmp_path):
    log = tmp_path / "log"
    script = ("import sys, time; f = open(%r, 'a'); f.write('start %%s\\n' %% sys.argv[1]); f.flush(); "
              "time.sleep(0.3); f.write('end %%s\\n' %% sys.argv[1]); f.close()" % str(log))
    runs = [subprocess.Popen(TOOZ + ["lock", cli_url, "shared", "--", sys.executable, "-c", script, str(i)])
            for i in range(4)]
    for r in runs:
        assert r.wait(60) == 0
    lines = log.read_text().split("\n")[:-1]
    assert len(lines) == 8
    for start, end in zip(lines[::2], lines[1::2]):
        assert start.startswith("start ") and end == "end " + start.split()[1], lines


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_releases_the_lock(cli_url, sig):
    holder = subprocess.Popen(TOOZ + ["lock", cli_url, "sig", "--", sys.executable, "-c",
                                      "import time; print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    c = coordination.get_coordinator(cli_url, new_id())
    c.start()
    try:
        lock = c.get_lock(b"sig")
        assert lock.acquire(blocking=False) is False
        holder.send_signal(sig)
        assert holder.wait(20) == 128 + sig
        assert lock.acquire(blocking=5), "released when the tool was interrupted"
        lock.release()
    finally:
        c.stop()


def test_groups_members_leader_and_watch(cli_url):
    c = coordination.get_coordinator(cli_url, b"member-1")
    c.start()
    try:
        c.create_group(b"workers").get()
        c.join_group(b"workers", capabilities={"cores": 8}).get()
        out = tooz("groups", cli_url)
        assert out.returncode == 0 and "workers" in out.stdout.split()
        out = tooz("members", cli_url, "workers", "--json")
        assert out.returncode == 0 and json.loads(out.stdout) == {"member-1": {"cores": 8}}
        out = tooz("members", cli_url, "workers")
        assert out.stdout.startswith("member-1 ")
        assert tooz("members", cli_url, "nope").returncode == 1
        out = tooz("leader", cli_url, "workers")
        if cli_url.startswith("redis"):
            assert out.returncode == 2 and "cannot tell" in out.stderr  # redis has no get_leader
        else:
            assert out.returncode == 1 and "no leader" in out.stderr

        watcher = subprocess.Popen(TOOZ + ["watch", cli_url, "workers", "--interval", "0.1"],
                                   stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        other = coordination.get_coordinator(cli_url, b"member-2")
        other.start()
        other.join_group(b"workers").get()
        time.sleep(1)
        other.leave_group(b"workers").get()
        other.stop()
        time.sleep(1)
        watcher.send_signal(signal.SIGINT)
        output, _ = watcher.communicate(timeout=20)
        assert watcher.returncode == 0
        events = [line.split()[1:] for line in output.splitlines()]
        assert ["joined", "member-2"] in events and ["left", "member-2"] in events
    finally:
        c.stop()
