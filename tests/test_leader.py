"""Leader election through watch_elected_as_leader + run_watchers."""

import time

import pytest

from tooz import coordination

from conftest import need, new_id


def _run_until(coords, predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in coords:
            c.run_watchers()
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_one_leader_among_many(backend, make_coordinator):
    need(backend, "election")
    group = new_id("g")
    coords = [make_coordinator() for _ in range(3)]
    coords[0].create_group(group).get()
    elected = []
    for c in coords:
        c.watch_elected_as_leader(group, elected.append)
    assert _run_until(coords, lambda: elected)
    for _ in range(5):
        for c in coords:
            c.run_watchers()
    assert len(elected) == 1, "one leader, elected once"
    event = elected[0]
    assert isinstance(event, coordination.LeaderElected)
    assert event.group_id == group
    leader = next(c for c in coords if c._member_id == event.member_id)
    # When the leader goes away, another member takes over.
    leader.stop()
    rest = [c for c in coords if c is not leader]
    assert _run_until(rest, lambda: len(elected) == 2)
    assert elected[1].member_id != event.member_id


def test_unwatch_elected_as_leader(backend, coord):
    need(backend, "watch_elected_as_leader")
    group = new_id("g")

    def cb(event):
        pass

    coord.watch_elected_as_leader(group, cb)
    coord.unwatch_elected_as_leader(group, cb)
    assert len(coord._hooks_elected_leader) == 0
    with pytest.raises(coordination.WatchCallbackNotFound):
        coord.unwatch_elected_as_leader(group, cb)


def test_get_leader_and_stand_down(backend, make_coordinator):
    need(backend, "election", "get_leader", "stand_down")
    group = new_id("g")
    a, b = make_coordinator(), make_coordinator()
    a.create_group(group).get()
    assert a.get_leader(group).get() is None, "no election yet"
    assert a.stand_down_group_leader(group) is False, "never stood for election"
    elected = []
    a.watch_elected_as_leader(group, elected.append)
    a.run_watchers()
    assert [e.member_id for e in elected] == [a._member_id]
    b.watch_elected_as_leader(group, elected.append)
    b.run_watchers()
    assert len(elected) == 1
    assert a.get_leader(group).get() == a._member_id
    assert b.get_leader(group).get() == a._member_id
    assert a.stand_down_group_leader(group) is True
    assert _run_until([b], lambda: len(elected) == 2)
    assert elected[1].member_id == b._member_id
    assert a.get_leader(group).get() == b._member_id
