"""Locks: blocking, non-blocking, timeouts, release, context managers, break, other processes."""

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

from conftest import OtherProcessHolder, count_under_lock, has, new_id, not_green, with_options

def test_acquire_release(coord):
    lock = coord.get_lock(new_id("l"))
    assert isinstance(lock, locking.Lock)
    assert lock.acquire() is True
    assert lock.release() is True


def test_acquired_reflects_this_lock_object(coord):
    name = new_id("l")
    lock, other = coord.get_lock(name), coord.get_lock(name)
    assert lock.acquired is False
    assert lock.acquire()
    assert lock.acquired is True and other.acquired is False
    lock.release()
    assert lock.acquired is False


def test_release_unheld_lock_returns_false(coord):
    lock = coord.get_lock(new_id("l"))
    assert lock.release() is False
    assert lock.acquire()
    assert lock.release()
    assert lock.release() is False


def test_second_acquire_in_same_coordinator_fails_nonblocking(coord):
    name = new_id("l")
    first, second = coord.get_lock(name), coord.get_lock(name)
    assert first.acquire(blocking=False)
    assert second.acquire(blocking=False) is False
    assert first.acquire(blocking=False) is False, "locks are not re-entrant"
    first.release()
    assert second.acquire(blocking=False)
    second.release()


def test_two_coordinators_exclude_each_other(make_coordinator):
    name = new_id("l")
    a, b = make_coordinator().get_lock(name), make_coordinator().get_lock(name)
    assert a.acquire()
    assert not b.acquire(blocking=False)
    a.release()
    assert b.acquire(blocking=False)
    b.release()


@pytest.mark.parametrize("how", ["number", "timeout_kw"])
def test_timeout_gives_up(coord, how):
    name = new_id("l")
    holder = coord.get_lock(name)
    assert holder.acquire()
    waiter = coord.get_lock(name)
    began = time.monotonic()
    got = waiter.acquire(blocking=0.3) if how == "number" else waiter.acquire(blocking=True, timeout=0.3)
    elapsed = time.monotonic() - began
    assert got is False
    assert 0.25 <= elapsed < 5
    holder.release()


def test_blocking_acquire_waits_for_release(coord):
    name = new_id("l")
    holder = coord.get_lock(name)
    assert holder.acquire()
    got = []
    waiter = threading.Thread(target=lambda: got.append(coord.get_lock(name).acquire(blocking=True, timeout=10)))
    waiter.start()
    time.sleep(0.2)
    assert got == []
    holder.release()
    waiter.join(10)
    assert got == [True]


def test_context_manager(coord):
    name = new_id("l")
    lock = coord.get_lock(name)
    with lock:
        assert not coord.get_lock(name).acquire(blocking=False)
    other = coord.get_lock(name)
    assert other.acquire(blocking=False)
    with pytest.raises(coordination.LockAcquireFailed):
        with lock(False):
            pass
    with pytest.raises(coordination.LockAcquireFailed):
        with lock(blocking=True, timeout=0.1):
            pass
    other.release()
    with lock(blocking=True, timeout=1):
        pass
    assert lock.release() is False, "the with block released it"


def test_context_manager_releases_on_error(coord):
    name = new_id("l")
    with pytest.raises(RuntimeError):
        with coord.get_lock(name):
            raise RuntimeError("boom")
    lock = coord.get_lock(name)
    assert lock.acquire(blocking=False)
    lock.release()


def test_lock_without_name_is_refused(coord):
    with pytest.raises(ValueError):
        coord.get_lock(b"")


def test_lock_name_must_be_bytes_or_str(coord):
    with pytest.raises(coordination.ToozInvalidArgument):
        coord.get_lock(42)


def test_held_by_other_process(backend, coord):
    name = new_id("l")
    holder = OtherProcessHolder(backend[1], name)
    try:
        lock = coord.get_lock(name)
        assert lock.acquire(blocking=False) is False
        assert lock.acquire(blocking=0.2) is False
        holder.release()
        assert lock.acquire(blocking=5)
        lock.release()
    finally:
        if holder.proc.poll() is None:
            holder.kill()


@not_green("a signal is raised in whichever greenthread runs when it comes; a green wait is "
           "withdrawn by eventlet.Timeout or kill() instead (test_green)")
def test_interrupted_wait_for_other_process_leaves_nothing_held(backend, coord):
    """Ctrl-C during a blocking acquire of a lock another process holds raises
    KeyboardInterrupt within a moment, and the abandoned wait does not take the lock later
    behind the caller's back (once the holder lets go, a fresh attempt of this process wins;
    where the kernel or the server frees a dead holder's lock, the holder is killed instead)."""
    name = new_id("l")
    holder = OtherProcessHolder(backend[1], name)
    try:
        waiter = coord.get_lock(name)
        interrupt = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
        interrupt.start()
        began = time.monotonic()
        try:
            with pytest.raises(KeyboardInterrupt):
                # Bounded, so a wait deaf to the signal fails the test instead of hanging it.
                waiter.acquire(blocking=8)
        finally:
            interrupt.cancel()  # never a stray SIGINT into the rest of the run
            interrupt.join()
        assert time.monotonic() - began < 3, "the signal was heard late"
        assert waiter.acquired is False
        if has(backend, "kernel_release") or has(backend, "connection_release"):
            holder.kill()
        else:
            holder.release()
        time.sleep(0.3)  # room for an abandoned wait to (wrongly) take the lock
        fresh = coord.get_lock(name)
        assert fresh.acquire(blocking=5), "the interrupted wait took the lock behind the caller's back"
        fresh.release()
    finally:
        if holder.proc.poll() is None:
            holder.kill()


def test_killed_holder_frees_lock(backend, coord):
    name = new_id("l")
    if has(backend, "kernel_release") or has(backend, "connection_release"):
        holder_url = backend[1]
    elif has(backend, "session_release"):
        holder_url = with_options(backend[1], timeout=2)  # the holder's session expires
    else:
        holder_url = with_options(backend[1], lock_timeout=2)  # the holder's key expires
    holder = OtherProcessHolder(holder_url, name)
    lock = coord.get_lock(name)
    assert not lock.acquire(blocking=False)
    holder.kill()
    if has(backend, "kernel_release") or has(backend, "connection_release"):
        assert lock.acquire(blocking=5), "the kernel (or the server) frees a dead process's lock at once"
    else:
        began = time.monotonic()
        assert not lock.acquire(blocking=False), "the server keeps the dead holder's lock for a while"
        assert lock.acquire(blocking=10), "then expires it"
        assert time.monotonic() - began < 5
    lock.release()


def test_threads_exclude_each_other(coord):
    assert count_under_lock(coord, new_id("l"), threads=8, rounds=50) == 400


def test_shared_locks(backend, coord):
    name = new_id("l")
    a, b = coord.get_lock(name), coord.get_lock(name)
    if not has(backend, "shared_locks"):
        with pytest.raises(tooz.NotImplemented):
            a.acquire(shared=True)
        return
    assert a.acquire(shared=True)
    assert b.acquire(shared=True)
    exclusive = coord.get_lock(name)
    assert not exclusive.acquire(blocking=False)
    a.release()
    assert not exclusive.acquire(blocking=False)
    b.release()
    assert exclusive.acquire(blocking=False)
    exclusive.release()


def test_break(backend, make_coordinator):
    name = new_id("l")
    holder = make_coordinator().get_lock(name)
    other = make_coordinator().get_lock(name)
    if not has(backend, "break"):
        with pytest.raises(tooz.NotImplemented):
            other.break_()
        return
    assert other.break_() is False, "nothing to break"
    assert holder.acquire()
    assert other.break_() is True
    assert other.acquire(blocking=False)
    assert holder.release() is False, "break_ took it away"
    other.release()


def test_is_still_owner(backend, coord):
    lock = coord.get_lock(new_id("l"))
    if not has(backend, "is_still_owner"):
        with pytest.raises(tooz.NotImplemented):
            lock.is_still_owner()
        return
    assert lock.is_still_owner() is False
    lock.acquire()
    assert lock.is_still_owner() is True
    lock.release()
    assert lock.is_still_owner() is False


def test_lock_names(backend, coord):
    lock = coord.get_lock(b"a/b/c")
    assert lock.acquire()
    lock.release()
    if backend[0] == "file":
        assert isinstance(lock.name, str) and lock.name == backend[1][len("file://"):] + "/a/b/c"
        for reserved in (b"groups", b"tmp", b".driver_lock", b".", b".fences", b".fences/x", b".leaders/y"):
            with pytest.raises(ValueError):
                coord.get_lock(reserved)
        with pytest.raises(ValueError):
            coord.get_lock(b"../escape")
        with pytest.raises(ValueError):
            coord.get_lock(b"\xff\xfe")


def test_ipc_timeout_without_blocking_is_not_implemented(backend, coord):
    if backend[0] != "ipc":
        pytest.skip("ipc-specific rule")
    with pytest.raises(tooz.NotImplemented):
        coord.get_lock(new_id("l")).acquire(blocking=False, timeout=1)
