"""Heartbeats: the Rust-side heart keeps memberships alive; without it they expire."""

import time

import pytest

from conftest import has, need, new_id, wait_for, with_options


def test_heart_lifecycle(backend, make_coordinator):
    c = make_coordinator(start=False)
    if not has(backend, "heartbeat"):
        assert c.requires_beating is False
        c.start(start_heart=True)
        assert not c.heart.is_alive()
        return
    assert c.requires_beating is True
    with pytest.raises(RuntimeError):
        c.heart.wait(0)
    c.start(start_heart=True)
    make_coordinator.started.append(c)
    assert c.heart.is_alive()
    deadline = time.monotonic() + 5
    while c.heart.beats < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert c.heart.beats >= 1
    c.heart.stop()
    assert c.heart.wait(5) is False
    assert not c.heart.is_alive()
    c.heart.start()
    assert c.heart.is_alive()
    c.stop()
    assert not c.heart.is_alive()


def test_heartbeat_returns_interval(backend, coord):
    if has(backend, "heartbeat"):
        assert coord.heartbeat() > 0
    else:
        assert coord.heartbeat() is None


def test_heart_keeps_membership_alive(backend, make_coordinator):
    need(backend, "members", "heartbeat", "beat_liveness")
    url = with_options(backend[1], timeout=1)
    group = new_id("g")
    beating = make_coordinator(url=url, start=False)
    beating.start(start_heart=True)
    make_coordinator.started.append(beating)
    silent = make_coordinator(url=url)
    observer = make_coordinator(url=url)  # not a member: sees the group as others do
    beating.create_group(group).get()
    beating.join_group(group).get()
    silent.join_group(group).get()
    time.sleep(2.2)
    # The silent member lapses about now; a server checks expiry on its own clock (etcd's
    # lessor every ~0.5 s), so allow it a few seconds more. The beating one stays throughout.
    def only_the_beating_one():
        members = observer.get_members(group).get()
        assert beating._member_id in members, "the beating member lapsed"
        return members == {beating._member_id}

    assert wait_for(only_the_beating_one, timeout=5), observer.get_members(group).get()
    if has(backend, "lazy_pruning"):
        # Listing the group deleted the dead member for good; it must join again.
        silent.heartbeat()
        assert observer.get_members(group).get() == {beating._member_id}
        assert silent.get_members(group).get() == {beating._member_id}
        return
    silent.heartbeat()  # rejoins the living (its file is touched again)
    assert observer.get_members(group).get() == {beating._member_id, silent._member_id}
