"""Details beyond the calls that services, their annotations and their unit tests meet: the
same as upstream tooz 9.1.0 (the rest of the public surface is compared name by name by
scripts/api_diff.py, in the test command)."""

import importlib.metadata
import logging

import pytest

import tooz
from tooz import coordination, hashring

from conftest import has_groups, new_id


def test_result_classes_are_generic():
    assert coordination.CoordAsyncResult[int] is not None
    assert coordination.CoordinatorResult[int] is not None

    def annotated() -> coordination.CoordAsyncResult[bytes]: ...

    assert annotated.__annotations__["return"] == coordination.CoordAsyncResult[bytes]


def test_hash_ring_subclass_with_its_own_init():
    class TaggedRing(hashring.HashRing):
        def __init__(self, nodes, tag):
            super().__init__(nodes, partitions=8)
            self.tag = tag

    ring = TaggedRing({"a", "b", "c"}, "t")
    plain = hashring.HashRing({"a", "b", "c"}, partitions=8)
    assert ring.tag == "t"
    assert len(ring) == len(plain) == 24
    for key in (b"x", b"y", b"volume-1"):
        assert ring.get_nodes(key) == plain.get_nodes(key)
    assert hashring.HashRing.DEFAULT_PARTITION_NUMBER == 32
    assert hashring.HashRing.DEFAULT_HASH_FUNCTION == "md5"
    with pytest.raises(ValueError):
        hashring.HashRing(["a"], hash_function="no-such-hash")


def test_driver_class_constants():
    from tooz.drivers import etcd3gw, redis

    assert "sentinel_fallback" in redis.RedisDriver.CLIENT_ARGS
    assert redis.RedisDriver.EXCLUDE_OPTIONS == frozenset({"sentinel_fallback"})
    assert etcd3gw.Etcd3Lock.LOCK_PREFIX == b"/tooz/locks"


@pytest.mark.parametrize("module", ["redis", "file", "etcd3gw", "memcached"])
def test_driver_modules_have_the_logger_the_cores_records_go_to(module):
    mod = __import__("tooz.drivers." + module, fromlist=["LOG"])
    assert isinstance(mod.LOG, logging.Logger)
    assert mod.LOG is logging.getLogger("tooz.drivers." + module)


def test_upstreams_extras_are_declared():
    extras = set(importlib.metadata.metadata("tooz").get_all("Provides-Extra") or [])
    assert {"redis", "zookeeper", "memcached", "ipc", "etcd3gw", "mysql", "postgresql"} <= extras
    # Empty: the core needs no client library.
    requires = importlib.metadata.requires("tooz") or []
    assert not [r for r in requires if "extra ==" in r and "redis" in r.split(";")[1]]


def test_unknown_scheme_raises_stevedores_no_matches():
    stevedore = pytest.importorskip("stevedore.exception")
    with pytest.raises(stevedore.NoMatches):
        coordination.get_coordinator("no-such-scheme://", b"m")


def test_group_calls_after_stop_are_a_tooz_error(backend, make_coordinator):
    c = make_coordinator()
    if not has_groups(backend):
        pytest.skip("no groups on %s" % backend[0])
    c.stop()
    make_coordinator.started.remove(c)
    with pytest.raises(tooz.ToozError):
        c.create_group(new_id("g")).get()
    with pytest.raises(tooz.ToozError):
        c.get_groups().get()


# What upstream 9.1.0 raises for leave_group of a group that does not exist.
LEAVE_MISSING = {"file": coordination.GroupNotCreated, "redis": coordination.GroupNotCreated,
                 "memcached": coordination.GroupNotCreated, "zookeeper": coordination.MemberNotJoined,
                 "etcd3": coordination.MemberNotJoined}


def test_leaving_a_group_that_does_not_exist(backend, coord):
    if backend[0] not in LEAVE_MISSING:
        pytest.skip("no members on %s" % backend[0])
    with pytest.raises(LEAVE_MISSING[backend[0]]):
        coord.leave_group(new_id("g")).get()
