"""Leader election through run_watchers, on every backend that offers it."""

import pytest

from tooz import coordination

from conftest import has, need, new_id


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
