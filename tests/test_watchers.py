"""Watchers: join/leave events through run_watchers, unwatch errors, booted-out members."""

import time

import pytest

import tooz
from tooz import coordination

from conftest import has, need, new_id, with_options

@pytest.fixture
def watched(backend, make_coordinator, group):
    need(backend, "members")
    watcher = make_coordinator()
    watcher.create_group(group).get()
    return watcher, group


def test_join_and_leave_events(watched, make_coordinator):
    watcher, group = watched
    joined, left = [], []
    watcher.watch_join_group(group, joined.append)
    watcher.watch_leave_group(group, left.append)
    assert watcher.run_watchers() == []
    other = make_coordinator()
    other.join_group(group).get()
    watcher.run_watchers()
    assert [(e.group_id, e.member_id) for e in joined] == [(group, other._member_id)]
    assert isinstance(joined[0], coordination.MemberJoinedGroup)
    assert repr(joined[0]) == "<MemberJoinedGroup: group %s: +member %s>" % (
        group.decode(), other._member_id.decode())
    other.leave_group(group).get()
    watcher.run_watchers()
    assert [(e.group_id, e.member_id) for e in left] == [(group, other._member_id)]
    assert isinstance(left[0], coordination.MemberLeftGroup)
    assert len(joined) == 1


def test_callback_results_are_returned(watched, make_coordinator):
    watcher, group = watched
    watcher.watch_join_group(group, lambda event: ("seen", event.member_id))
    other = make_coordinator()
    other.join_group(group).get()
    assert watcher.run_watchers() == [("seen", other._member_id)]


def test_unwatch(watched):
    watcher, group = watched

    def cb(event):
        pass

    with pytest.raises(coordination.WatchCallbackNotFound):
        watcher.unwatch_join_group(group, cb)
    watcher.watch_join_group(group, cb)
    watcher.watch_leave_group(group, cb)
    watcher.unwatch_join_group(group, cb)
    assert len(watcher._hooks_join_group) == 0
    watcher.unwatch_leave_group(group, cb)
    assert len(watcher._hooks_leave_group) == 0
    with pytest.raises(coordination.WatchCallbackNotFound) as e:
        watcher.unwatch_leave_group(group, cb)
    assert "cb" in str(e.value)


def test_watch_missing_group(watched):
    watcher, _ = watched
    with pytest.raises(coordination.GroupNotCreated):
        watcher.watch_join_group(new_id("g"), print)
    assert len(watcher._hooks_join_group) == 0


def test_expired_member_leaves(backend, make_coordinator, group):
    """A member that stops beating is reported gone once its membership expires."""
    need(backend, "members", "heartbeat", "beat_liveness")
    url = with_options(backend[1], timeout=1)
    watcher = make_coordinator(url=url, start=False)
    watcher.start(start_heart=True)
    make_coordinator.started.append(watcher)
    silent = make_coordinator(url=url)
    watcher.create_group(group).get()
    silent.join_group(group).get()
    left = []
    watcher.watch_leave_group(group, left.append)
    deadline = time.monotonic() + 10
    while not left and time.monotonic() < deadline:
        time.sleep(0.2)
        watcher.run_watchers()
    assert [e.member_id for e in left] == [silent._member_id]


def test_booted_out_member(backend, make_coordinator, group):
    """A member whose own membership went stale notices it was booted out (file: the reader
    judges staleness, itself included)."""
    need(backend, "members", "self_expiry")
    url = with_options(backend[1], timeout=1)
    member = make_coordinator(url=url)
    member.create_group(group).get()
    member.join_group(group).get()
    member.watch_leave_group(group, lambda e: None)
    time.sleep(2.2)  # no heartbeat: the membership goes stale
    # Another member's view prunes the stale record (backends that prune lazily never
    # drop their own member when listing).
    assert make_coordinator(url=url).get_members(group).get() == set()
    member.run_watchers()
    assert group not in member._joined_groups


def test_election_unsupported(backend, coord, group):
    if has(backend, "watch_elected_as_leader"):
        pytest.skip("%s offers election (see test_leader.py)" % backend[0])
    with pytest.raises(tooz.NotImplemented):
        coord.watch_elected_as_leader(group, print)
