"""os.fork() after start(): the child builds its own runtime; parent and child both work."""

import multiprocessing
import os

import pytest

from tooz import coordination

from conftest import has_groups, need, new_id


def _child_work(url, name, group, conn=None):
    c = coordination.get_coordinator(url, new_id("child"))
    c.start(start_heart=True)
    lock = c.get_lock(name)
    ok = lock.acquire(blocking=5)
    lock.release()
    if group is None:  # a backend without groups
        c.stop()
        return ok
    groups = c.get_groups().get()
    c.stop()
    return ok and group in groups


def test_os_fork_with_running_heart(backend, make_coordinator, group):
    parent = make_coordinator(start=False)
    parent.start(start_heart=True)
    make_coordinator.started.append(parent)
    if has_groups(backend):
        parent.create_group(group).get()
    else:
        group = None
    name = new_id("l")
    held = parent.get_lock(new_id("held"))
    assert held.acquire()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            code = 0 if _child_work(backend[1], name, group) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    # The parent is unaffected: its lock, heart and calls still work.
    assert parent.heart.is_alive() == parent.requires_beating
    assert held.release()
    lock = parent.get_lock(name)
    assert lock.acquire(blocking=5)
    lock.release()
    if group is not None:
        assert group in parent.get_groups().get()


@pytest.mark.parametrize("method", ["fork"])
def test_multiprocessing_fork_pool(backend, make_coordinator, group, method):
    parent = make_coordinator(start=False)
    parent.start(start_heart=True)
    make_coordinator.started.append(parent)
    if has_groups(backend):
        parent.create_group(group).get()
    else:
        group = None
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(3) as pool:
        results = pool.starmap(_child_work, [(backend[1], new_id("l"), group)] * 6, chunksize=1)
    assert results == [True] * 6
    if group is not None:
        assert group in parent.get_groups().get()


def test_a_forked_child_leaves_its_parents_memberships_alone(backend, make_coordinator, group):
    """A child that goes on using its parent's coordinator does not take over (or heal onto a
    session of its own) the groups its parent joined: when it exits, the parent is still a
    member."""
    need(backend, "members")
    parent = make_coordinator()
    watcher = make_coordinator()
    parent.create_group(group).get()
    parent.join_group(group, capabilities=b"parent").get()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            ok = parent._member_id in parent.get_members(group).get()
            parent.heartbeat()
            ok = ok and parent._member_id in parent.get_members(group).get()
            ok = ok and group not in parent._joined_groups  # the parent's, not the child's
            code = 0 if ok else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert group in parent._joined_groups
    parent.heartbeat()
    assert watcher.get_members(group).get() == {parent._member_id}
    assert parent.get_member_capabilities(group, parent._member_id).get() == b"parent"
