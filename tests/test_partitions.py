"""Network partitions (issue 37): a lock holder cut off from its backend by a real partition
(tests/partition.py: a network namespace whose veth link is taken down, so its packets
vanish without RST or FIN) while another process, in the root namespace, tries the same lock
every 50 ms.

* short cuts (1.2 s) at three phases of the heartbeat cycle: the holder keeps its lock, the
  other never gets it, nobody is told of a loss, ``release()`` is True after the heal;
* a 12 s cut: the holder is told (``on_lost`` fires, ``acquired`` turns False) strictly
  before the other gets the lock, on the machine's monotonic clock; after the heal
  ``release()`` is False and the coordinator works again (its membership is visible, another
  lock is taken, ``stop()`` is clean). Once with ``tooz.aio`` and once under eventlet too;
* a leader cut off 12 s stands down before another member is elected;
* PostgreSQL and MySQL, whose locks are held on a server session (no heartbeat: the core
  pings a held lock's connection every 10 s and tells the holder 29.3 s after the send time
  of its last answered request, before the server can end the session at 30 s): a 1.2 s cut
  keeps the lock; a 40 s cut tells the holder before the other (polling every 0.2 s) gets
  the lock, and the coordinator works after the heal.

The holder samples ``lock.acquired`` and its heartbeat count every 20 ms and reports every
event with its monotonic time; a failure prints that timeline relative to the cut.

    .venv/bin/python -m pytest -q tests/test_partitions.py -s    # root; CI=true: fail, not skip
"""

import os
import sys
import time

import pytest

import partition
from conftest import new_id, not_green

# The test process times cuts and reads its agents on threads of its own; the eventlet case
# is a green holder process (test_a_long_cut_in_aio_and_under_eventlet), not a green session.
pytestmark = not_green("partitions are timed by the test process's threads; the eventlet case has a green holder")

SHORT_CUT = 1.2
LONG_CUT = 12.0
# When short cuts start: seconds after an acquire made right after a heartbeat completed (the
# heartbeat comes every 1.5 s with lock_timeout=3, every 2 s with ZooKeeper's timeout=4).
SHORT_CUT_AT = (0.3, 1.0, 1.7)
# After a short cut's heal the other goes on trying this long: past the end of the lease the
# holder had before the cut (lock_timeout 3 s, 4 s on memcached, which adds a second; the
# ZooKeeper session's 4 s), so a lease the cut made lapse is seen.
AFTER_SHORT_CUT = 3.5
POLL_EVERY = 0.05
# TOOZ_PARTITION_VERBOSE=1: print each test's timeline (with -s), not only a failing one's.
VERBOSE = os.environ.get("TOOZ_PARTITION_VERBOSE") == "1"

# The URL options of each lease backend (the lease: 3 s; ZooKeeper: a 4 s session).
OPTIONS = {
    "redis": {"lock_timeout": 3},
    "memcached": {"lock_timeout": 3},
    "etcd3": {"lock_timeout": 3},
    "zookeeper": {"timeout": 4},
}
# Leaders are TTL keys/leases refreshed by the heartbeat; on memcached with a timeout of their own.
LEADER_OPTIONS = {"memcached": {"leader_timeout": 3}}
LEADER_BACKENDS = ("redis", "memcached", "etcd3")

# Backends whose locks are held on a server session (PostgreSQL advisory locks, MySQL
# GET_LOCK), which the server ends once it has heard nothing from the client for
# SESSION_BOUND s (PostgreSQL: TCP keep-alive, 10 s idle + 4 probes 5 s apart; MySQL:
# wait_timeout), freeing the lock. The core pings a held lock's connection every
# SESSION_PING_EVERY s and tells the holder SESSION_BOUND - SESSION_MARGIN s after the send
# time of its last answered request (the acquire or a ping). Their own test ids (-k
# postgresql, -k mysql): no lease options, no heartbeat, no groups.
SESSION_BACKENDS = ("mysql", "postgresql")
SESSION_BOUND = 30.0
SESSION_MARGIN = 0.7
SESSION_PING_EVERY = 10.0
SESSION_LONG_CUT = 40.0
SESSION_POLL_EVERY = 0.2
# Short cuts: 0.3 s after the acquire (nothing sent during the cut), and 9.5 s after (the
# first ping, 10 s after the acquire, is sent during the cut and answered after the heal).
SESSION_SHORT_CUT_AT = (0.3, 9.5)
# Long cuts: 0.3 s after the acquire (the holder last heard of its session at the acquire),
# and 10.5 s after (the first ping was answered just before the cut: told 10 s later).
SESSION_LONG_CUT_AT = (0.3, 10.5)


@pytest.fixture(scope="module")
def netns():
    """One namespace for the module; the servers start after it (they listen on its host
    address, which exists only once the veth pair does)."""
    with partition.netns_or_skip() as ns:
        yield ns
    assert ns.leftovers() == [], "the namespace was not cleaned up"


class Target:
    def __init__(self, name, server, netns):
        self.name = name
        self.server = server
        self.netns = netns

    def urls(self, **extra):
        """(URL for the holder inside the namespace, URL for the other in the root one)."""
        options = dict(OPTIONS.get(self.name, {}), **extra)
        return (self.server.url_for(self.netns.host_addr, **options),
                self.server.url_for(self.server.local_host, **options))


@pytest.fixture(scope="module", params=sorted(OPTIONS))
def target(request, netns):
    server = partition.SERVERS[request.param](netns).start()
    yield Target(request.param, server, netns)
    server.close()


@pytest.fixture(scope="module", params=SESSION_BACKENDS)
def session_target(request, netns):
    """PostgreSQL or MySQL (MariaDB), listening on the namespace's host address too."""
    server = partition.SERVERS[request.param](netns).start()
    yield Target(request.param, server, netns)
    server.close()


@pytest.fixture
def cleanup(netns):
    """Agents to close after the test; a namespace left cut by a failure is healed first."""
    agents = []
    yield agents
    if netns.is_cut:
        netns.heal()
    for a in agents:
        a.close()
    assert not [p for p in netns.pids()], "processes left in the namespace: %s" % netns.pids()


def start_coordinator(agent, url, mode):
    member = new_id(agent.label)
    make = "aio.get_coordinator" if mode == "aio" else "coordination.get_coordinator"
    agent.call("c = %s(%r, %r)" % (make, url, member))
    agent.call("c.start(start_heart=True)", timeout=30)
    return member


def result(expr, mode):
    """``expr`` as the agent must write it to get a value: ``.get()`` of the blocking API's
    async results; the asyncio API's coroutines are awaited by the agent."""
    return expr if mode == "aio" else expr + ".get()"


def holder_with_lock(netns, url, name, mode="sync", python=sys.executable):
    """A holder inside the namespace: coordinator started with its heart, lock watched."""
    holder = partition.Agent(netns, mode=mode, python=python, label="holder")
    member = start_coordinator(holder, url, mode)
    holder.call("lock = c.get_lock(%r)" % name)
    holder.call("watch(lock, c)")
    return holder, member


def other_for(url, name, python=sys.executable):
    """The other process, in the root namespace, with a lock object for ``name``."""
    other = partition.Agent(None, python=python, label="other")
    start_coordinator(other, url, "sync")
    other.call("lock = c.get_lock(%r)" % name)
    return other


def holder_and_other(netns, cleanup, target, name, mode="sync"):
    """The holder (inside the namespace, its lock watched) and the other (outside), both for
    lock ``name`` on ``target``: (holder, holder's member id, other)."""
    holder_url, other_url = target.urls()
    holder, member = holder_with_lock(netns, holder_url, name, mode=mode)
    cleanup.append(holder)
    other = other_for(other_url, name)
    cleanup.append(other)
    return holder, member, other


def report(title, netns, agents, lines=()):
    cut = netns.cut_at
    head = ["%s (times in s relative to the cut; the heal: %+.3f)" % (title, (netns.healed_at or cut) - cut)]
    text = "\n".join(head + list(lines) + [partition.timeline(a, cut) for a in agents])
    if VERBOSE:
        print(text)
    return text


def rel(t, origin):
    return "never" if t is None else "%+.3f s" % (t - origin)


# ------------------------------------------------------------------------------------ the harness


def test_the_harness_cuts_without_rst_or_fin_and_heals(cleanup):
    """The partition itself: a connection open across the veth stays open through a cut
    (nothing arrives, neither data nor FIN nor RST), new connections time out, and after the
    heal the same connection carries data both ways; close() leaves nothing behind."""
    import socket

    with partition.netns_or_skip() as ns:
        listener = socket.socket()
        listener.bind((ns.host_addr, 0))
        listener.listen()
        port = listener.getsockname()[1]
        agent = partition.Agent(ns, label="inside")
        cleanup.append(agent)
        agent.call("import socket; s = socket.create_connection((%r, %d), timeout=5)" % (ns.host_addr, port))
        conn, peer = listener.accept()
        assert peer[0] == ns.ns_addr
        cut = ns.cut()
        conn.sendall(b"x")
        assert ns.probe() is False
        agent.call("s.settimeout(1.5)")
        with pytest.raises(partition.AgentError, match="TimeoutError"):
            agent.call("s.recv(1)")  # b'' would be a FIN, ConnectionResetError an RST
        with pytest.raises(partition.AgentError, match="TimeoutError|timed out"):
            agent.call("socket.create_connection((%r, %d), timeout=1)" % (ns.host_addr, port))
        healed = ns.heal()
        assert healed - cut < 5.0
        agent.call("s.settimeout(10)")
        assert agent.call("s.recv(1)") == b"x", "the data sent during the cut arrives after the heal"
        agent.call("s.sendall(b'y')")
        conn.settimeout(10)
        assert conn.recv(1) == b"y"
        conn.close()
        listener.close()
        agent.close()
        assert ns.pids() == []
    assert ns.leftovers() == []


# --------------------------------------------------------------------------------------- short cuts


def short_cut(target, netns, cleanup, at, after):
    """A SHORT_CUT s cut ``at`` s after the holder's acquire (made right after a heartbeat,
    where there is one), the other trying the lock until ``after`` s past the heal: nothing
    may change."""
    name = new_id("l")
    holder, _, other = holder_and_other(netns, cleanup, target, name)
    acq = holder.call("acquire_after_beat(c, lock)")
    assert acq["ok"], "the holder could not take a fresh lock"
    cut, healed, polled = partition.cut_and_poll(netns, other, acq["t1"] + at, SHORT_CUT, after, POLL_EVERY)
    asked = time.monotonic()
    released, took = holder.call("timed(lambda: lock.release())", timeout=90)

    problems = []
    if polled["got"]:
        problems.append("the other got the lock at %s" % rel(polled["got"][0], cut))
    lost = holder.first("lost")
    if lost:
        problems.append("on_lost fired at %s" % rel(lost["t"], cut))
    dropped = holder.first("s", acq["t1"], lambda e: e["a"] is not True and e["t"] < asked)
    if dropped:
        problems.append("lock.acquired was %r at %s" % (dropped["a"], rel(dropped["t"], cut)))
    if released is not True:
        problems.append("release() after the heal gave %r (in %.3f s)" % (released, took))
    print("\n%s short cut at %.1f s: other's attempts %d (errors %d), release() %r in %.3f s"
          % (target.name, at, polled["attempts"], polled["errors"], released, took))
    text = report("%s: a %.1f s cut %.1f s after the acquire (%s)"
                  % (target.name, SHORT_CUT, at,
                     "no heartbeat" if acq["beat"] is None else rel(acq["t1"], acq["beat"]) + " after a beat"),
                  netns, [holder, other], ["problems: " + "; ".join(problems)])
    assert not problems, text


@pytest.mark.parametrize("at", SHORT_CUT_AT, ids=lambda at: "cut-at-%.1fs" % at)
def test_a_short_cut_keeps_the_lock(target, netns, cleanup, at):
    short_cut(target, netns, cleanup, at, AFTER_SHORT_CUT)


# ---------------------------------------------------------------------------------------- long cuts


def told_first(lost, unset, got, problems):
    """The holder was told (``on_lost``) and ``acquired`` turned False strictly before the
    other got the lock (times on the monotonic clock)."""
    if got is None:
        return
    if lost is not None and not lost["t"] < got:
        problems.append("told %.3f s after the other got the lock" % (lost["t"] - got))
    if unset is None or not unset["t"] < got:
        problems.append("lock.acquired still True when the other got the lock")


def release_is_false(holder, facts, problems):
    """After the heal, the release of the lost lock says False."""
    released, took = holder.call("timed(lambda: lock.release())", timeout=120)
    facts.append("after the heal: release() %r in %.3f s" % (released, took))
    if released is not False:
        problems.append("release() after the heal gave %r" % (released,))


def goes_on(holder, name2, facts, problems):
    """After the heal the holder's coordinator works: another lock is taken and released, and
    ``stop()`` is clean."""
    holder.call("lock2 = c.get_lock(%r)" % name2)
    taken, took = holder.call("timed(lambda: lock2.acquire(blocking=False))", timeout=120)
    facts.append("another lock: acquire %r in %.3f s" % (taken, took))
    if taken is not True:
        problems.append("a new lock could not be taken after the heal: %r" % (taken,))
    else:
        let_go, _ = holder.call("timed(lambda: lock2.release())", timeout=120)
        if let_go is not True:
            problems.append("the new lock's release gave %r" % (let_go,))
    stopped, took = holder.call("timed(lambda: c.stop())", timeout=120)
    facts.append("stop(): %r in %.3f s" % (stopped, took))
    if stopped is not None:
        problems.append("stop() after the heal: %r" % (stopped,))


def long_cut(target, netns, cleanup, mode):
    name, name2, group = new_id("l"), new_id("l"), new_id("g")
    holder, member, other = holder_and_other(netns, cleanup, target, name, mode=mode)
    if mode == "aio":
        holder.call("c.join_group_create(%r)" % group)
    else:
        holder.call("c.create_group(%r).get(); c.join_group(%r).get()" % (group, group))
    acq = holder.call("acquire_after_beat(c, lock)")
    assert acq["ok"], "the holder could not take a fresh lock"
    cut, healed, polled = partition.cut_and_poll(netns, other, acq["t1"] + 0.3, LONG_CUT, 0.0, POLL_EVERY)
    # A holder told only after the heal is still reported, late.
    holder.wait_event("lost", timeout=10.0)
    holder.wait_event("s", timeout=1.0, since=acq["t1"], where=lambda e: e.get("a") is False)

    problems, facts = [], []
    got = polled["got"][0] if polled["got"] else None
    lost = holder.first("lost")
    unset = partition.first_sample(holder, acq["t1"], False)
    facts.append("told (on_lost): %s; acquired False from: %s; the other got the lock: %s (attempts %d, "
                 "errors %d)" % (rel(lost and lost["t"], cut), rel(unset and unset["t"], cut), rel(got, cut),
                                 polled["attempts"], polled["errors"]))
    if got is None:
        problems.append("the other never got the lock during the %.0f s cut" % LONG_CUT)
    if lost is None:
        problems.append("on_lost never fired")
    elif lost["acquired"] is not False or lost["same"] is not True:
        problems.append("on_lost called with acquired=%r, with the lock: %r" % (lost["acquired"], lost["same"]))
    told_first(lost, unset, got, problems)
    # After the heal: the lost lock is not released, the coordinator works.
    release_is_false(holder, facts, problems)
    seen_at = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            members = other.call("c.get_members(%r).get()" % group, timeout=30)
        except partition.AgentError as e:
            members = str(e)
        if isinstance(members, (set, frozenset)) and member in members:
            seen_at = time.monotonic()
            break
        time.sleep(0.2)
    facts.append("membership visible to the other: %s" % rel(seen_at, cut))
    if seen_at is None:
        problems.append("the holder's membership is not visible 30 s after the heal (%r)" % (members,))
    goes_on(holder, name2, facts, problems)
    if got is not None:
        freed = other.call("lock.release()")
        if freed is not True:
            problems.append("the other's release of the lock it got gave %r" % (freed,))
    print("\n%s (%s) 12 s cut: %s" % (target.name, mode, "; ".join(facts)))
    text = report("%s (%s): a %.0f s cut" % (target.name, mode, LONG_CUT), netns, [holder, other],
                  facts + ["problems: " + "; ".join(problems)])
    assert not problems, text


def test_a_long_cut_tells_the_holder_before_another_gets_the_lock(target, netns, cleanup):
    long_cut(target, netns, cleanup, "sync")


@pytest.mark.parametrize("target", ["redis"], indirect=True)
@pytest.mark.parametrize("mode", ["aio", "green"])
def test_a_long_cut_in_aio_and_under_eventlet(target, netns, cleanup, mode):
    if mode == "green":
        pytest.importorskip("eventlet")
    long_cut(target, netns, cleanup, mode)


# ------------------------------------------------------------------------------------------ leaders


def test_a_cut_off_leader_stands_down_before_another_is_elected(target, netns, cleanup):
    """The leader (inside the namespace) runs run_watchers() every 50 ms, as the other does.
    Standing down is the first WARNING (or worse) record of a tooz logger in the leader's
    process that names the group after the cut (the API has no other way to tell a leader it
    lost the leadership)."""
    if target.name not in LEADER_BACKENDS:
        pytest.skip("leader stand-down is checked on %s" % ", ".join(LEADER_BACKENDS))
    group = new_id("g")
    holder_url, other_url = target.urls(**LEADER_OPTIONS.get(target.name, {}))
    leader = partition.Agent(netns, label="leader")
    cleanup.append(leader)
    start_coordinator(leader, holder_url, "sync")
    other = partition.Agent(None, label="other")
    cleanup.append(other)
    start_coordinator(other, other_url, "sync")
    other.call("c.create_group(%r).get()" % group)
    leader.call("elect(c, %r)" % group)
    assert leader.wait_event("elected", timeout=15), partition.timeline(leader, time.monotonic())
    other.call("elect(c, %r)" % group)
    time.sleep(0.5)
    assert other.first("elected") is None, "two leaders before any cut"
    beat = leader.call("wait_beat(c)")
    partition.sleep_until(beat + 0.3)
    cut = netns.cut()
    elected = other.wait_event("elected", timeout=LONG_CUT, since=cut)
    partition.sleep_until(cut + LONG_CUT)
    netns.heal()
    name = group.decode()

    def standing_down(e):
        return e["level"] in ("WARNING", "ERROR", "CRITICAL") and name in e["message"]

    # A leader told only after the heal is still reported, late.
    stood = leader.wait_event("log", timeout=10.0, since=cut, where=standing_down)
    facts = ["stood down: %s; the other elected: %s" % (rel(stood and stood["t"], cut),
                                                          rel(elected and elected["t"], cut))]
    problems = []
    if elected is None:
        problems.append("nobody else was elected during the %.0f s cut" % LONG_CUT)
    if stood is None:
        problems.append("the leader never stood down")
    elif elected is not None and not stood["t"] < elected["t"]:
        problems.append("stood down %.3f s after the other was elected" % (stood["t"] - elected["t"]))
    print("\n%s leader cut 12 s: %s" % (target.name, facts[0]))
    text = report("%s: the leader cut off %.0f s" % (target.name, LONG_CUT), netns, [leader, other],
                  facts + ["problems: " + "; ".join(problems)])
    assert not problems, text


# ------------------------------------------------------------------------ locks held on a session


@pytest.mark.parametrize("at", SESSION_SHORT_CUT_AT, ids=lambda at: "cut-at-%.1fs" % at)
def test_a_short_cut_keeps_a_session_lock(session_target, netns, cleanup, at):
    """PostgreSQL, MySQL: a 1.2 s cut, with or without the 10 s ping in it, loses nothing (the
    server keeps a session 30 s; the holder's clock runs from the ping's send time)."""
    short_cut(session_target, netns, cleanup, at, AFTER_SHORT_CUT)


@pytest.mark.parametrize("at", SESSION_LONG_CUT_AT, ids=lambda at: "cut-at-%.1fs" % at)
def test_a_long_cut_tells_the_session_lock_holder_first(session_target, netns, cleanup, at):
    """PostgreSQL, MySQL: cut off 40 s, the holder is told (on_lost, ``acquired`` False) at
    29.3 s after the send time of its last answered request (the acquire, or the ping 10 s
    after it), strictly before the other (root namespace, every 0.2 s) gets the lock, which
    the server frees once the session is ended (no sooner than 30 s after it last heard from
    the holder). After the heal: release() is False, another lock is taken and released,
    stop() is clean."""
    target = session_target
    name, name2 = new_id("l"), new_id("l")
    holder, _, other = holder_and_other(netns, cleanup, target, name)
    acq = holder.call("acquire_after_beat(c, lock)")
    assert acq["ok"], "the holder could not take a fresh lock"
    cut, healed, polled = partition.cut_and_poll(netns, other, acq["t1"] + at, SESSION_LONG_CUT, 0.0,
                                                 SESSION_POLL_EVERY)
    # A holder told only after the heal is still reported, late.
    holder.wait_event("lost", timeout=10.0)
    holder.wait_event("s", timeout=1.0, since=acq["t1"], where=lambda e: e.get("a") is False)

    # The holder last heard of its session when it sent the acquire (no sooner than t0), or
    # the last ping answered before the cut (pings go every 10 s from the acquire's answer).
    pings = int((cut - acq["t1"]) // SESSION_PING_EVERY)
    heard = acq["t0"] + pings * SESSION_PING_EVERY
    due = heard + SESSION_BOUND - SESSION_MARGIN
    problems, facts = [], []
    got = polled["got"][0] if polled["got"] else None
    lost = holder.first("lost")
    unset = partition.first_sample(holder, acq["t1"], False)
    facts.append("last answered request: %s (%s); told (on_lost): %s (%s after it, due %.1f); acquired False "
                 "from: %s; the other got the lock: %s (%s after it; attempts %d, errors %d)"
                 % (rel(heard, cut), "the acquire" if pings == 0 else "ping %d" % pings,
                    rel(lost and lost["t"], cut), rel(lost and lost["t"], heard), SESSION_BOUND - SESSION_MARGIN,
                    rel(unset and unset["t"], cut), rel(got, cut), rel(got, heard), polled["attempts"],
                    polled["errors"]))
    if got is None:
        problems.append("the other never got the lock during the %.0f s cut" % SESSION_LONG_CUT)
    if lost is None:
        problems.append("on_lost never fired")
    else:
        if lost["acquired"] is not False or lost["same"] is not True:
            problems.append("on_lost called with acquired=%r, with the lock: %r" % (lost["acquired"], lost["same"]))
        if lost["t"] < due - 0.05:
            problems.append("told %.3f s before its clock ran out (%.1f s after %s): a ping before the cut did "
                            "not count" % (due - lost["t"], SESSION_BOUND - SESSION_MARGIN,
                                           "the acquire" if pings == 0 else "ping %d" % pings))
        elif lost["t"] > due + SESSION_MARGIN:
            # Past the margin the server may have ended the session: told too late, whether or
            # not the other happened to get the lock first.
            problems.append("told %.3f s after its clock ran out (%.1f s after %s)"
                            % (lost["t"] - due, SESSION_BOUND - SESSION_MARGIN,
                               "the acquire" if pings == 0 else "ping %d" % pings))
    told_first(lost, unset, got, problems)
    # After the heal: the lost lock is not released, the coordinator works.
    release_is_false(holder, facts, problems)
    goes_on(holder, name2, facts, problems)
    if got is not None:
        freed = other.call("lock.release()")
        if freed is not True:
            problems.append("the other's release of the lock it got gave %r" % (freed,))
    print("\n%s %.0f s cut %.1f s after the acquire: %s" % (target.name, SESSION_LONG_CUT, at, "; ".join(facts)))
    text = report("%s: a %.0f s cut %.1f s after the acquire" % (target.name, SESSION_LONG_CUT, at), netns,
                  [holder, other], facts + ["problems: " + "; ".join(problems)])
    assert not problems, text
