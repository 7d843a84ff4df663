"""Groups and members: create, join, leave, delete, capabilities, and their error paths."""

import datetime

import pytest

import tooz
from tooz import coordination

from conftest import has, has_groups, need, need_groups, new_id, not_green

def test_create_list_delete(backend, coord, group):
    need_groups(backend)
    assert group not in coord.get_groups().get()
    assert coord.create_group(group).get() is None
    assert group in coord.get_groups().get()
    with pytest.raises(coordination.GroupAlreadyExist) as e:
        coord.create_group(group).get()
    assert e.value.group_id == group.decode()
    coord.delete_group(group).get()
    assert group not in coord.get_groups().get()
    with pytest.raises(coordination.GroupNotCreated):
        coord.delete_group(group).get()


def test_results_are_async_results(backend, coord, group):
    need_groups(backend)
    result = coord.create_group(group)
    assert isinstance(result, coordination.CoordAsyncResult)
    result.get(timeout=10)
    assert result.done()
    assert result.get() is None, "a result can be read twice"


def test_calls_run_in_order(backend, coord, group):
    """Upstream runs a driver's calls one at a time in call order; callers rely on it."""
    need_groups(backend)
    coord.create_group(group)
    groups = coord.get_groups()
    coord.delete_group(group)
    after = coord.get_groups()
    assert group in groups.get()
    assert group not in after.get()


def test_group_ids_keep_their_type(backend, coord):
    need_groups(backend)
    gid = "g-str-%s" % new_id().decode()
    coord.create_group(gid).get()
    try:
        groups = coord.get_groups().get()
        # file/ipc/memcached give ids back as given; redis and zookeeper give bytes.
        assert (gid if has(backend, "text_ids") else gid.encode()) in groups
        assert all(type(g) in (bytes, str) for g in groups)
    finally:
        coord.delete_group(gid).get()


def test_join_leave(backend, coord, group):
    need(backend, "members")
    coord.create_group(group).get()
    coord.join_group(group).get()
    assert group in coord._joined_groups
    assert coord.get_members(group).get() == {coord._member_id}
    with pytest.raises(coordination.MemberAlreadyExist) as e:
        coord.join_group(group).get()
    assert e.value.member_id == coord._member_id.decode()
    coord.leave_group(group).get()
    assert group not in coord._joined_groups
    assert coord.get_members(group).get() == set()
    with pytest.raises(coordination.MemberNotJoined):
        coord.leave_group(group).get()


def test_join_missing_group(backend, coord):
    need(backend, "members")
    with pytest.raises(coordination.GroupNotCreated):
        coord.join_group(new_id("g")).get()
    with pytest.raises(coordination.GroupNotCreated):
        coord.get_members(new_id("g")).get()


def test_join_group_create(backend, coord, group):
    need(backend, "members")
    coord.join_group_create(group, capabilities={"x": 1})
    assert coord.get_member_capabilities(group, coord._member_id).get() == {"x": 1}


def test_delete_non_empty_group(backend, make_coordinator, group):
    need(backend, "members")
    a = make_coordinator()
    a.create_group(group).get()
    a.join_group(group).get()
    with pytest.raises(coordination.GroupNotEmpty):
        a.delete_group(group).get()
    a.leave_group(group).get()
    a.delete_group(group).get()


def test_many_members_and_capabilities(backend, make_coordinator, group):
    need(backend, "members")
    coords = [make_coordinator() for _ in range(5)]
    coords[0].create_group(group).get()
    for i, c in enumerate(coords):
        c.join_group(group, capabilities={"i": i, "tags": ["a", "b"], "raw": b"\x00\xff"}).get()
    expected = {c._member_id for c in coords}
    assert coords[0].get_members(group).get() == expected
    with_caps = coords[1].get_members_with_capabilities(group).get()
    assert set(with_caps) == expected
    for i, c in enumerate(coords):
        assert with_caps[c._member_id] == {"i": i, "tags": ["a", "b"], "raw": b"\x00\xff"}
        assert coords[2].get_member_capabilities(group, c._member_id).get()["i"] == i


def test_capabilities_default_to_none(backend, coord, group):
    need(backend, "members")
    coord.create_group(group).get()
    coord.join_group(group).get()
    assert coord.get_member_capabilities(group, coord._member_id).get() is None


def test_capabilities_of_unknown_member(backend, coord, group):
    need(backend, "members")
    coord.create_group(group).get()
    with pytest.raises(coordination.MemberNotJoined):
        coord.get_member_capabilities(group, b"nobody").get()
    with pytest.raises(coordination.GroupNotCreated):
        coord.get_member_capabilities(new_id("g"), b"nobody").get()


def test_update_capabilities(backend, coord, group):
    need(backend, "members", "update_capabilities")
    coord.create_group(group).get()
    with pytest.raises(coordination.MemberNotJoined):
        coord.update_capabilities(group, {"a": 1}).get()
    coord.join_group(group, {"a": 1}).get()
    coord.update_capabilities(group, {"a": 2}).get()
    assert coord.get_member_capabilities(group, coord._member_id).get() == {"a": 2}
    with pytest.raises(coordination.GroupNotCreated):
        coord.update_capabilities(new_id("g"), {"a": 1}).get()


def test_member_info(backend, coord, group):
    need(backend, "members", "member_info")
    coord.create_group(group).get()
    coord.join_group(group, {"a": 1}).get()
    info = coord.get_member_info(group, coord._member_id).get()
    assert info["capabilities"] == {"a": 1}
    assert isinstance(info["created_at"], datetime.datetime)
    assert abs((datetime.datetime.now() - info["created_at"]).total_seconds()) < 60
    assert info["updated_at"] >= info["created_at"] - datetime.timedelta(seconds=1)
    with pytest.raises(coordination.MemberNotJoined):
        coord.get_member_info(group, b"nobody").get()


def test_str_member_ids_echo_as_str(backend, make_coordinator, group):
    need(backend, "members")
    c = make_coordinator(member_id="member-as-text")
    c.create_group(group).get()
    c.join_group(group).get()
    expected = "member-as-text" if has(backend, "text_ids") else b"member-as-text"
    assert c.get_members(group).get() == {expected}


def test_stop_leaves_joined_groups(backend, make_coordinator, group):
    need(backend, "members")
    a, b = make_coordinator(), make_coordinator()
    a.create_group(group).get()
    a.join_group(group)  # never waited on: stop() must still leave
    b.join_group(group).get()
    a.stop()
    assert b.get_members(group).get() == {b._member_id}


def test_unsupported_operations_raise_at_call_time(backend, coord, group):
    if not has_groups(backend):
        for call in (lambda: coord.create_group(group), lambda: coord.get_groups(),
                     lambda: coord.delete_group(group)):
            with pytest.raises(tooz.NotImplemented):
                call()
    if not has(backend, "members"):
        for call in (lambda: coord.join_group(group), lambda: coord.get_members(group),
                     lambda: coord.leave_group(group), lambda: coord.run_watchers()):
            with pytest.raises(tooz.NotImplemented):
                call()
    if not has(backend, "get_leader"):
        with pytest.raises(tooz.NotImplemented):
            coord.get_leader(group)
    if not has(backend, "stand_down"):
        with pytest.raises(tooz.NotImplemented):
            coord.stand_down_group_leader(group)


def test_bad_ids(coord):
    for bad in (None, 3, 1.5, ["x"]):
        with pytest.raises(coordination.ToozInvalidArgument):
            coord.create_group(bad)
    with pytest.raises(coordination.ToozInvalidArgument):
        coordination.get_coordinator("file:///tmp", 12345)


def test_capabilities_that_cannot_be_serialised(backend, coord, group):
    need(backend, "members")
    coord.create_group(group).get()
    with pytest.raises(coordination.SerializationError):
        coord.join_group(group, {"x": object()}).get()
    with pytest.raises(coordination.SerializationError):
        coord.join_group(group, {"x": 2 ** 70}).get()
    assert coord.get_members(group).get() == set(), "nothing was written"


@not_green("needs a thread that beats in parallel with the listing; a greenthread in a busy "
           "loop never yields")
def test_file_members_beating_during_a_listing_stay_listed(tmp_path):
    # A member's file is its heartbeat (mtime). A beat landing while a long listing runs must
    # not make the member look dead (dated after a clock read taken before the listing).
    import os
    import threading

    url = "file://" + str(tmp_path)
    coords = [coordination.get_coordinator(url, new_id("m")) for _ in range(300)]
    for c in coords:
        c.start()
    coords[0].create_group(b"beaten").get()
    for c in coords:
        c.join_group(b"beaten").get()
    group_dir = next((tmp_path / "groups").iterdir())
    files = [str(p) for p in group_dir.iterdir() if p.suffix == ".raw"]
    stop = threading.Event()

    def beat():
        while not stop.is_set():
            for f in files:
                os.utime(f)

    beater = threading.Thread(target=beat)
    beater.start()
    try:
        for _ in range(30):
            assert len(coords[0].get_members(b"beaten").get()) == 300
            assert len(coords[1].get_members_with_capabilities(b"beaten").get()) == 300
    finally:
        stop.set()
        beater.join()
        for c in coords:
            c.stop()
