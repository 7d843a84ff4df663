"""Rolling upgrades: a process on upstream tooz (from PyPI, in its own virtualenv) and one on
ours share the same directory / IPC namespace and see each other's locks and groups."""

import time

import pytest

from tooz import coordination

from conftest import Peer, PeerError, has, need, need_groups, new_id, with_options

pytestmark = pytest.mark.interop


@pytest.fixture
def upstream(backend, upstream_python):
    peers = []

    def make(member_id=None):
        p = Peer(backend[1], member_id or new_id("up"), python=upstream_python)
        peers.append(p)
        return p

    yield make
    for p in peers:
        p.close()


def test_upstream_holds_ours_waits(upstream, coord):
    name = new_id("l")
    up = upstream()
    up.call("lock = c.get_lock(%r)" % name)
    assert up.call("lock.acquire()") is True
    ours = coord.get_lock(name)
    assert ours.acquire(blocking=False) is False
    assert ours.acquire(blocking=0.3) is False
    assert up.call("lock.release()") is True
    assert ours.acquire(blocking=5) is True
    ours.release()


def test_ours_holds_upstream_waits(upstream, coord):
    name = new_id("l")
    ours = coord.get_lock(name)
    assert ours.acquire()
    up = upstream()
    up.call("lock = c.get_lock(%r)" % name)
    # A blocking acquire (upstream's ipc driver offers no other on this system's sysv_ipc).
    up.send("lock.acquire()")
    assert not up.ready(0.5), "upstream got a lock we hold"
    ours.release()
    assert up.ready(10)
    assert up.receive() is True
    assert ours.acquire(blocking=False) is False
    assert up.call("lock.release()") is True
    assert ours.acquire(blocking=False) is True
    ours.release()


def test_groups_seen_both_ways(backend, upstream, coord):
    need_groups(backend)
    up = upstream()
    g_up, g_ours = new_id("gu"), new_id("go")
    try:
        up.call("c.create_group(%r).get()" % g_up)
        assert g_up in coord.get_groups().get()
        coord.create_group(g_ours).get()
        assert g_ours in up.call("c.get_groups().get()")
        with pytest.raises(coordination.GroupAlreadyExist):
            coord.create_group(g_up).get()
        with pytest.raises(PeerError, match="GroupAlreadyExist"):
            up.call("c.create_group(%r).get()" % g_ours)
    finally:
        for g in (g_up, g_ours):
            try:
                coord.delete_group(g).get()
            except coordination.GroupNotCreated:
                pass


def test_members_and_capabilities_seen_both_ways(backend, upstream, coord, group):
    need(backend, "members")
    up = upstream()
    up_id = up.call("c._member_id")
    up.call("c.create_group(%r).get()" % group)
    up.call("c.join_group(%r, {'role': 'upstream', 'n': [1, 2]}).get()" % group)
    coord.join_group(group, {"role": "ours", "when": "now"}).get()
    assert coord.get_members(group).get() == {up_id, coord._member_id}
    assert up.call("c.get_members(%r).get()" % group) == {up_id, coord._member_id}
    assert coord.get_member_capabilities(group, up_id).get() == {"role": "upstream", "n": [1, 2]}
    assert up.call("c.get_member_capabilities(%r, %r).get()" % (group, coord._member_id)) == {
        "role": "ours", "when": "now"}
    with pytest.raises(PeerError, match="GroupNotEmpty"):
        up.call("c.delete_group(%r).get()" % group)
    up.call("c.leave_group(%r).get()" % group)
    assert coord.get_members(group).get() == {coord._member_id}


def test_ours_reads_upstream_records_bit_for_bit(backend, upstream, coord, group):
    """The member record upstream writes decodes to the same Python value with our codec."""
    if backend[0] != "file":
        pytest.skip("file records only")
    import glob
    import os

    from tooz import utils

    up = upstream()
    up.call("c.create_group(%r).get()" % group)
    up.call("import datetime, uuid")
    up.call("c.join_group(%r, {'d': datetime.date(2020, 1, 2), 's': {1, 2}, 'u': "
            "uuid.UUID(int=5), 'b': b'x'}).get()" % group)
    root = backend[1][len("file://"):]
    [path] = glob.glob(os.path.join(root, "groups", "*", "*.raw"))
    with open(path, "rb") as f:
        raw = f.read()
    record = utils.loads(raw)
    assert utils.dumps(record) == raw, "re-encoding upstream's record gives the same bytes"


def test_many_locks_on_one_lease_interoperate(backend, upstream, make_coordinator):
    """Ours holds several locks at once (etcd3: all on the coordinator's one lock lease; redis
    and memcached: extended by one request per beat): upstream takes the one ours released
    while the others stay ours through a beat, and ours waits for upstream's."""
    if not has(backend, "ttl_locks"):
        pytest.skip("lease backends")
    coord = make_coordinator(url=with_options(backend[1], lock_timeout=3))
    names = [new_id("l") for _ in range(3)]
    ours = [coord.get_lock(n) for n in names]
    for lock in ours:
        assert lock.acquire(blocking=False)
    up = upstream()
    for i, name in enumerate(names):
        up.call("l%d = c.get_lock(%r)" % (i, name))
        assert up.call("l%d.acquire(blocking=False)" % i) is False
    assert ours[1].release()
    assert up.call("l1.acquire(blocking=False)") is True
    # Past the TTL the acquires set, beating: ours keeps its two.
    for _ in range(4):
        coord.heartbeat()
        up.call("c.heartbeat()")
        time.sleep(1)
    for i in (0, 2):
        assert up.call("l%d.acquire(blocking=False)" % i) is False
        assert ours[i].is_still_owner()
    again = coord.get_lock(names[1])
    assert again.acquire(blocking=False) is False
    assert up.call("l1.release()") is True
    assert again.acquire(blocking=5) is True
    for lock in (ours[0], ours[2], again):
        assert lock.release()


def test_watcher_sees_upstream_join_and_leave(backend, upstream, coord, group):
    need(backend, "members")
    coord.create_group(group).get()
    joined, left = [], []
    coord.watch_join_group(group, joined.append)
    coord.watch_leave_group(group, left.append)
    coord.run_watchers()
    up = upstream()
    up_id = up.call("c._member_id")
    up.call("c.join_group(%r).get()" % group)
    coord.run_watchers()
    assert [e.member_id for e in joined] == [up_id]
    up.call("c.leave_group(%r).get()" % group)
    coord.run_watchers()
    assert [e.member_id for e in left] == [up_id]
