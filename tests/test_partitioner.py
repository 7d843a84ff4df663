"""Partitioned groups: members spread objects by weight; the ring follows membership."""

import pytest

from tooz import hashring
from tooz import partitioner

from conftest import need, new_id

@pytest.fixture
def members(backend, make_coordinator):
    need(backend, "members")
    return [make_coordinator() for _ in range(3)]


def test_join_partitioned_group(members):
    group = new_id("g")
    a, b, c = members
    pa = a.join_partitioned_group(group)
    assert isinstance(pa, partitioner.Partitioner)
    assert pa.ring.nodes == {a._member_id: 1}
    pb = b.join_partitioned_group(group, weight=3)
    a.run_watchers()
    assert pa.ring.nodes == {a._member_id: 1, b._member_id: 3}
    assert pb.ring.nodes == pa.ring.nodes
    owners = {}
    for i in range(300):
        obj = "object-%d" % i
        [owner] = pa.members_for_object(obj)
        assert pb.members_for_object(obj) == {owner}
        assert pa.belongs_to_member(obj, owner)
        assert pa.belongs_to_self(obj) == (owner == a._member_id)
        owners[owner] = owners.get(owner, 0) + 1
    assert owners[b._member_id] > owners[a._member_id], "weight 3 takes the larger share"

    b.leave_partitioned_group(pb)
    a.run_watchers()
    assert pa.ring.nodes == {a._member_id: 1}
    assert all(pa.members_for_object("object-%d" % i) == {a._member_id} for i in range(20))
    a.leave_partitioned_group(pa)


def test_objects_hash_like_upstream(members):
    class Custom:
        def __tooz_hash__(self):
            return b"custom-key"

    group = new_id("g")
    p = members[0].join_partitioned_group(group, partitions=8)
    ring = hashring.HashRing({members[0]._member_id}, partitions=8)
    assert p.members_for_object(Custom()) == ring.get_nodes(b"custom-key")
    assert p.members_for_object(b"raw") == ring.get_nodes(str(b"raw").encode())
    p.stop()
    assert len(members[0]._hooks_join_group) == 0
