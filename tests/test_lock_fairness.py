"""Fairness under contention: a process hammering a lock lets a waiting process in within a
few hand-overs, instead of taking the lock straight back after each release (and the waiter,
once in, holds it alone)."""

import subprocess
import sys
import time

import pytest

from conftest import need, new_id

# Takes and releases the lock as fast as it can; under the lock, writes how many times it has
# taken it to a file, so whoever gets the lock next reads the count at that moment.
HAMMER = r"""
import sys, time
from tooz import coordination
c = coordination.get_coordinator(sys.argv[1], b'hammer')
c.start()
fresh = sys.argv[5] == "fresh"  # a new lock object for each hold, as many programs do
lock = c.get_lock(sys.argv[2].encode())
n = 0
end = time.monotonic() + 60
while time.monotonic() < end:
    if fresh:
        lock = c.get_lock(sys.argv[2].encode())
    with lock:
        n += 1
        with open(sys.argv[3], "w") as f:
            f.write(str(n))
        if n == 1:
            print("hammering", flush=True)
    if n > 1 and n % 100 == 0:
        try:
            open(sys.argv[4]).close()
            break
        except FileNotFoundError:
            pass
c.stop()
"""

# Hand-overs a waiter may miss on a loaded machine (the hammer takes ~30,000 a second).
BOUND = 200
# etcd hands over in about a millisecond (a watch push, then a transaction), so the hammer
# takes ~1,000 a second there: with fair hand-over 0 to 15 misses were measured, without it up
# to 283.
BOUND_FOR = {"etcd3": 60}


def _missed_handoffs(backend, coord, tmp_path, tries, fresh=False):
    """How many times a hammering process took the lock while we waited, for each of
    ``tries`` acquires (checking that it never took it while we held it)."""
    name = new_id("l")
    count, stop = str(tmp_path / "count"), str(tmp_path / "stop")
    hammer = subprocess.Popen([sys.executable, "-c", HAMMER, backend[1], name.decode(), count, stop,
                               "fresh" if fresh else "same"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    misses = []
    try:
        assert hammer.stdout.readline().strip() == "hammering", hammer.stderr.read()
        lock = coord.get_lock(name)
        for _ in range(tries):
            with open(count) as f:
                before = int(f.read() or 0)
            assert lock.acquire(blocking=30)
            with open(count) as f:
                missed = int(f.read()) - before
            time.sleep(0.05)
            with open(count) as f:
                assert int(f.read()) - before == missed, "the hammer took the lock while we held it"
            lock.release()
            misses.append(missed)
    finally:
        open(stop, "w").close()
        try:
            hammer.wait(30)
        finally:
            if hammer.poll() is None:
                hammer.kill()
    assert hammer.returncode == 0, hammer.stderr.read()
    return misses


def test_waiting_process_gets_the_lock_within_a_few_handoffs(backend, coord, tmp_path):
    need(backend, "fair_locks")
    misses = _missed_handoffs(backend, coord, tmp_path, 5)
    bound = BOUND_FOR.get(backend[0], BOUND)
    assert max(misses) <= bound, "the hammer took the lock %s times while we waited" % misses


def test_fair_when_the_hammer_makes_a_lock_object_per_hold(backend, coord, tmp_path):
    """``with coord.get_lock(name):`` in a loop: the hand-over does not depend on one lock
    object living across holds (a coordinator keeps its promise to step aside by lock name,
    ``handoff::Courtesies``). On etcd3, when it was kept per object: up to 210 misses (CI,
    2026-12-05); by name: 0-17 in 30 waits, as with one object (0-46)."""
    need(backend, "fair_locks")
    misses = _missed_handoffs(backend, coord, tmp_path, 5, fresh=True)
    bound = BOUND_FOR.get(backend[0], BOUND)
    assert max(misses) <= bound, "the hammer took the lock %s times while we waited" % misses


def test_file_waiter_is_woken_by_the_release_and_the_releaser_steps_aside(backend, coord, tmp_path):
    """On file://, a release wakes the other processes' waiters (a futex in the lock's side
    file), and a releaser that has won the lock back over them for a burst (handoff.BURST,
    2 ms) stays away until one of them has it: a waiter gets in within a burst's worth of the
    hammer's holds (measured: median 0-8, at most 20)."""
    if backend[0] != "file":
        pytest.skip("the file lock's wake-up")
    misses = sorted(_missed_handoffs(backend, coord, tmp_path, 9))
    assert misses[len(misses) // 2] <= 50, "the hammer took the lock %s times while we waited" % misses
