"""Leader election through watch_elected_as_leader + run_watchers."""

import time

import pytest

from tooz import coordination

from conftest import has, need, new_id, with_options


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
    assert a.get_leader(group).get() is None
    assert a.stand_down_group_leader(group) is False
    elected = []
    a.watch_elected_as_leader(group, elected.append)
    a.run_watchers()
    assert [e.member_id for e in elected] == [a._member_id]
    assert a.get_leader(group).get() == a._member_id
    assert b.get_leader(group).get() == a._member_id
    b.watch_elected_as_leader(group, elected.append)
    b.run_watchers()
    assert len(elected) == 1
    assert a.stand_down_group_leader(group) is True
    b.run_watchers()
    assert [e.member_id for e in elected] == [a._member_id, b._member_id]
    assert a.get_leader(group).get() == b._member_id


def test_leader_in_another_process(backend, make_coordinator):
    """The leader is another interpreter; killing it hands leadership over."""
    need(backend, "election", "get_leader")
    import subprocess
    import sys

    group = new_id("g")
    # A TTL leader key outlives its killed holder by its timeout: keep that short.
    remote_url = with_options(backend[1], leader_timeout=2, lock_timeout=2) if has(backend, "ttl_locks") \
        else backend[1]
    code = ("import sys, time\nfrom tooz import coordination\n"
            "c = coordination.get_coordinator(%r, b'remote-leader'); c.start(start_heart=True)\n"
            "won = []\nc.watch_elected_as_leader(%r, won.append)\n"
            "while not won:\n    c.run_watchers(); time.sleep(0.05)\n"
            "print('leader', flush=True)\ntime.sleep(600)\n" % (remote_url, group))
    remote = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert remote.stdout.readline().strip() == "leader"
        local = make_coordinator()
        assert local.get_leader(group).get() == b"remote-leader"
        mine = []
        local.watch_elected_as_leader(group, mine.append)
        local.run_watchers()
        assert mine == []
        remote.kill()
        remote.wait()
        assert _run_until([local], lambda: mine, timeout=30)
        assert local.get_leader(group).get() == local._member_id
    finally:
        if remote.poll() is None:
            remote.kill()


def test_first_candidate_wins_and_stays_leader(backend, make_coordinator):
    need(backend, "election")
    group = new_id("g")
    a, b = make_coordinator(), make_coordinator()
    a.create_group(group).get()
    won_a, won_b = [], []
    a.watch_elected_as_leader(group, won_a.append)
    b.watch_elected_as_leader(group, won_b.append)
    a.run_watchers()
    b.run_watchers()
    assert [(e.group_id, e.member_id) for e in won_a] == [(group, a._member_id)]
    assert all(isinstance(e, coordination.LeaderElected) for e in won_a)
    assert won_b == []
    a.run_watchers()
    b.run_watchers()
    assert len(won_a) == 1 and won_b == [], "no second election while the leader lives"
    if has(backend, "get_leader"):
        assert b.get_leader(group).get() == a._member_id


def test_leadership_passes_on_when_the_leader_stops(backend, make_coordinator):
    need(backend, "election")
    group = new_id("g")
    a, b = make_coordinator(), make_coordinator()
    a.create_group(group).get()
    won_b = []
    a.watch_elected_as_leader(group, lambda e: None)
    a.run_watchers()
    b.watch_elected_as_leader(group, won_b.append)
    b.run_watchers()
    assert won_b == []
    a.stop()
    b.run_watchers()
    assert [e.member_id for e in won_b] == [b._member_id]
    if has(backend, "get_leader"):
        assert b.get_leader(group).get() == b._member_id


def test_no_election_without_a_watcher(backend, make_coordinator):
    need(backend, "election")
    group = new_id("g")
    a, b = make_coordinator(), make_coordinator()
    a.create_group(group).get()
    cb = []
    a.watch_elected_as_leader(group, cb.append)
    a.unwatch_elected_as_leader(group, cb.append)
    a.run_watchers()
    won = []
    b.watch_elected_as_leader(group, won.append)
    b.run_watchers()
    assert [e.member_id for e in won] == [b._member_id], "a stopped watching: it never ran"
    if has(backend, "get_leader"):
        assert a.get_leader(group).get() == b._member_id


def test_get_leader_of_a_group_without_leader(backend, coord):
    need(backend, "get_leader")
    assert coord.get_leader(new_id("g")).get() is None
