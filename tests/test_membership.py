"""Membership bookkeeping that follows completed calls (services fire and forget joins and
leaves), a quiet stop, and memberships that heal after the backend loses them."""

import logging
import os
import signal
import time

import pytest

from tooz import coordination

import servers
from conftest import Factory, Peer, need, new_id, wait_for, with_options

LOGGERS = ("tooz",)


def _complaints(caplog):
    return [r for r in caplog.records if r.name.startswith(LOGGERS) and r.levelno >= logging.WARNING]




def _settle(result):
    assert wait_for(result.done, timeout=15), "the call completes without anyone reading it"


# ------------------------------------------------------------- bookkeeping and a quiet stop


def test_unawaited_leave_then_stop_is_quiet(backend, make_coordinator, caplog):
    need(backend, "members")
    caplog.set_level(logging.DEBUG)
    c = make_coordinator()
    other = make_coordinator()
    group = new_id("g")
    c.create_group(group).get()
    c.join_group(group).get()
    leaving = c.leave_group(group)  # aodh's partition coordinator never reads this result
    _settle(leaving)
    assert group not in c._joined_groups, "bookkeeping follows completion, not .get()"
    c.stop()
    assert _complaints(caplog) == []
    assert c._member_id not in other.get_members(group).get()


def test_unawaited_join_then_stop_leaves(backend, make_coordinator, caplog):
    need(backend, "members")
    caplog.set_level(logging.DEBUG)
    c = make_coordinator()
    other = make_coordinator()
    group = new_id("g")
    other.create_group(group).get()
    c.join_group(group, capabilities=b"caps")  # fired and forgotten, then stop at once
    c.stop()
    assert _complaints(caplog) == []
    assert other.get_members(group).get() == set(), "the member left at stop"


def test_joined_groups_and_capabilities_follow_completed_calls(backend, make_coordinator):
    need(backend, "members")
    c = make_coordinator()
    group = new_id("g")
    c.create_group(group).get()
    _settle(c.join_group(group, capabilities=b"one"))
    assert group in c._joined_groups and list(c._joined_groups) == [group] and len(c._joined_groups) == 1
    if has_update(backend):
        _settle(c.update_capabilities(group, b"two"))
        assert c.get_member_capabilities(group, c._member_id).get() == b"two"
    _settle(c.leave_group(group))
    assert group not in c._joined_groups
    with pytest.raises(coordination.MemberNotJoined):
        c.leave_group(group).get()


def has_update(backend):
    from conftest import has

    return has(backend, "update_capabilities")


def test_a_failed_clean_up_leave_at_stop_is_only_a_debug_record(backend, make_coordinator, caplog):
    """The group vanished behind the member's back (an operator deleted it): stop still
    stops, quietly."""
    need(backend, "members")
    caplog.set_level(logging.DEBUG)
    c = make_coordinator()
    group = new_id("g")
    c.create_group(group).get()
    c.join_group(group).get()
    c._joined_groups.add(new_id("never-joined"))  # upstream code may add to it directly
    c.stop()
    assert _complaints(caplog) == []


# ------------------------------------------------------------------------------- healing

# Short timeouts: the heartbeat runs every second or so.
FAST = {"redis": {"membership_timeout": 2, "lock_timeout": 2},
        "memcached": {"membership_timeout": 2, "lock_timeout": 2, "timeout": 2},
        "zookeeper": {"timeout": 2}}


@pytest.fixture(params=["redis", "memcached", "zookeeper", "zookeeper-restart"])
def outage(request):
    """(name, url, cause_outage(members)) on a private server. ``cause_outage(peers)`` makes the
    backend lose the memberships: redis and memcached restart without persistence; ZooKeeper
    expires the sessions of the given peers by stalling them (SIGSTOP) past their timeout, or
    (zookeeper-restart) is down for longer than the session timeout (its data persists, and
    it keeps the expired sessions' nodes a while after it is back)."""
    name, _, variant = request.param.partition("-")
    server = getattr(servers, name)().start()
    url = with_options("%s://127.0.0.1:%d" % (name, server.port), **FAST[name])

    def cause(peers=()):
        if variant == "restart":
            server.stop()
            time.sleep(3.5)  # > the 2 s session timeout
            server.start()
        elif name == "zookeeper":
            for p in peers:
                os.kill(p.proc.pid, signal.SIGSTOP)
            time.sleep(5)  # > the 2 s session timeout: the server expires the sessions
            for p in peers:
                os.kill(p.proc.pid, signal.SIGCONT)
        else:
            server.stop()
            time.sleep(0.5)
            server.start()  # same port; nothing was persisted
        return time.monotonic()

    yield request.param, url, cause
    server.close()


@pytest.fixture
def coordinators():
    """Coordinators on the outage's server (not parametrised over the backends)."""
    factory = Factory(None)
    yield factory
    factory.close()


@pytest.fixture
def peers():
    made = []

    def make(url, member_id=None):
        p = Peer(url, member_id or new_id("peer"))
        made.append(p)
        return p

    yield make
    for p in made:
        try:
            os.kill(p.proc.pid, signal.SIGCONT)
        except OSError:
            pass
        p.close()


def _members(coord, group):
    try:
        return coord.get_members_with_capabilities(group).get()
    except coordination.ToozError:
        return None


def test_membership_heals_after_the_backend_loses_it(outage, peers, coordinators, caplog):
    name, url, cause_outage = outage
    caplog.set_level(logging.WARNING)
    group = new_id("g")
    if name == "zookeeper":
        member = peers(url)  # stalled in its own process
        member_id = member.call("c._member_id")
        member.call("c.create_group(%r).get()" % group)
        member.call("c.join_group(%r, capabilities=b'cores=8').get()" % group)
        member.call("c.heart.start()")
        victims = [member]
    else:
        c = coordinators(url=url)
        member_id = c._member_id
        c.create_group(group).get()
        c.join_group(group, capabilities=b"cores=8").get()
        c.heart.start()
        victims = []
    observer = coordinators(url=url)
    assert _members(observer, group) == {member_id: b"cores=8"}
    back = cause_outage(victims)
    assert wait_for(lambda: _members(observer, group) == {member_id: b"cores=8"}, timeout=30), \
        "the member is back with its capabilities"
    healed_in = time.monotonic() - back
    print("%s: membership healed %.2f s after the backend was back" % (name, healed_in))
    time.sleep(3)  # past any leftover of an expired session the server still had to drop
    assert _members(observer, group) == {member_id: b"cores=8"}, "and it stays"
    if name != "zookeeper":
        assert wait_for(lambda: any("re-" in r.getMessage() and group.decode() in r.getMessage()
                                     for r in _complaints(caplog)), timeout=10), "a WARNING says so"
        warning = [r for r in _complaints(caplog) if group.decode() in r.getMessage()][0]
        assert warning.name == "tooz.coordination" and warning.levelno == logging.WARNING
        assert member_id.decode() in warning.getMessage()
        c.stop()
    else:
        member.call("c.stop()")
    assert wait_for(lambda: _members(observer, group) == {}, timeout=10), "a clean leave at stop"


def test_rejoin_false_keeps_upstreams_behaviour(outage, coordinators):
    name, url, cause_outage = outage
    if name == "zookeeper":
        pytest.skip("covered by redis and memcached: the option is generic")
    c = coordinators(url=with_options(url, rejoin="false"))
    group = new_id("g")
    c.create_group(group).get()
    c.join_group(group).get()
    c.heart.start()
    cause_outage()
    observer = coordinators(url=url)
    assert wait_for(lambda: _ok(c.heartbeat), timeout=15)
    time.sleep(3)  # a few beats
    assert not _members(observer, group), "the membership stays gone: nobody re-joins"


def _ok(call):
    try:
        call()
        return True
    except coordination.ToozError:
        return False


def test_partitioner_agrees_again_after_the_outage(outage, peers, coordinators):
    name, url, cause_outage = outage
    group = new_id("g")
    workers = [peers(url) for _ in range(3)]
    for w in workers:
        w.call("p = c.join_partitioned_group(%r)" % group)
        w.call("c.heart.start()")
    objects = list(range(60))

    def split():
        owned = []
        for w in workers:
            w.call("c.run_watchers()")
            owned.append(set(w.call("[o for o in %r if p.belongs_to_self(o)]" % objects)))
        return owned

    def agreed():
        try:
            owned = split()
        except Exception:  # noqa: BLE001 - the backend is coming back
            return False
        complete = set().union(*owned) == set(objects)
        disjoint = sum(len(o) for o in owned) == len(objects)
        return complete and disjoint and all(owned)

    assert wait_for(agreed, timeout=30, every=0.3)
    ids = {w.call("c._member_id") for w in workers}
    observer = coordinators(url=url)

    def healed():
        # A restarted ZooKeeper still lists the old sessions' members until it expires those
        # sessions: the split can agree before every worker has re-joined. Both must hold.
        return set(_members(observer, group) or ()) == ids and agreed()

    cause_outage(workers[:1] if name == "zookeeper" else ())
    assert wait_for(healed, timeout=45, every=0.3), "every member back, and a complete, disjoint split"
    time.sleep(3)  # past the expiry of any session the restarted server still had
    assert set(_members(observer, group) or ()) == ids, "and they stay"
    assert agreed(), "and so does the split"


def test_a_lock_lost_in_the_outage_is_reported_not_retaken(outage, peers, coordinators):
    name, url, cause_outage = outage
    lock_name = new_id("l")
    if name == "zookeeper":
        holder = peers(url)
        holder.call("lock = c.get_lock(%r)" % lock_name)
        assert holder.call("lock.acquire()") is True
        holder.call("c.heart.start()")
        cause_outage([holder])
        assert wait_for(lambda: holder.call("lock.is_still_owner()") is False, timeout=20)
        assert coordinators(url=url).get_lock(lock_name).acquire(blocking=10)
    else:
        c = coordinators(url=url)
        lock = c.get_lock(lock_name)
        assert lock.acquire()
        c.heart.start()
        cause_outage()
        assert wait_for(lambda: _ok(c.heartbeat), timeout=15)
        time.sleep(2)  # beats after the outage must not take the lock again
        assert lock.is_still_owner() is False
        # (A restarted ZooKeeper drops the old session's lock node when it expires it.)
        assert coordinators(url=url).get_lock(lock_name).acquire(blocking=10)
