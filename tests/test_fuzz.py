"""Property-based fuzzing (hypothesis) of everything a caller or a peer can feed us: URLs,
options, ids, lock names, capabilities, and corrupt data planted in the backends. Every case
must end in a result or a tooz exception (or the ValueError/TypeError upstream raises) —
never a Rust panic, a crash or a hang. The ``@example`` cases are the kept corpus."""

import pathlib
import uuid

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import tooz
from tooz import coordination
from tooz import utils

pytestmark = pytest.mark.reliability

ALLOWED = (tooz.ToozError, ValueError, TypeError, RuntimeError)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

ids = st.one_of(st.binary(max_size=300), st.text(max_size=300), st.sampled_from([b"", "", b"\x00", "\x00", b"\xff" * 10,
                                                                                  "\ud800", b"/", b"..", "a" * 5000]))


def _expect_ok_or_tooz(fn):
    try:
        return fn()
    except ALLOWED:
        return None


@FUZZ
@given(st.text(max_size=200))
@example("file://")
@example("redis://:@[::1:bad")
@example("ipc://?executor=nope")
@example("file:///tmp/x?timeout=1e309")
@example("\x00://\x00")
def test_urls(url):
    _expect_ok_or_tooz(lambda: coordination.get_coordinator(url, b"fuzz"))


option_values = st.one_of(st.text(max_size=30), st.integers(), st.floats(allow_nan=True), st.booleans(),
                          st.none(), st.binary(max_size=10))


@FUZZ
@given(st.sampled_from(["file:///tmp/tooz-fuzz-opts", "ipc://", "redis://127.0.0.1:1", "memcached://127.0.0.1:1",
                        "zookeeper://127.0.0.1:1", "kazoo://127.0.0.1:1"]),
       st.dictionaries(st.sampled_from(["timeout", "lock_timeout", "membership_timeout", "namespace", "db",
                                        "encoding", "sentinel", "sentinel_fallback", "ssl", "ssl_certfile",
                                        "executor", "socket_timeout", "hosts", "bogus", "leader_timeout",
                                        "max_pool_size", "use_ssl", "ca", "randomize_hosts"]), option_values, max_size=5))
def test_options(url, options):
    _expect_ok_or_tooz(lambda: coordination.get_coordinator(url, b"fuzz", **options))


@pytest.fixture(scope="module")
def started(tmp_path_factory, request):
    coords = {}
    coords["file"] = coordination.get_coordinator("file://%s" % tmp_path_factory.mktemp("fuzz"), b"fuzzer")
    coords["ipc"] = coordination.get_coordinator("ipc://", b"fuzzer")
    server = request.getfixturevalue("redis_server")
    namespace = "fuzz-%s" % uuid.uuid4().hex
    coords["redis"] = coordination.get_coordinator("redis://127.0.0.1:%d?namespace=%s" % (server.port, namespace),
                                                   b"fuzzer")
    coords["memcached"] = coordination.get_coordinator(request.getfixturevalue("memcached_server").url, b"fuzzer")
    coords["zookeeper"] = coordination.get_coordinator(
        "zookeeper://127.0.0.1:%d?namespace=%s" % (request.getfixturevalue("zookeeper_server").port, namespace),
        b"fuzzer")
    for c in coords.values():
        c.start()
    yield dict(coords, redis_namespace=namespace)
    for c in coords.values():
        c.stop()


BACKENDS = ["file", "ipc", "redis", "memcached", "zookeeper"]


@FUZZ
@given(st.sampled_from(BACKENDS), ids, ids)
@example("file", b"../../etc", "\x00")
@example("redis", b"__created__", b"__created__")
def test_group_and_member_ids(started, backend, group, member):
    c = started[backend]

    def scenario():
        try:
            c.create_group(group).get()
        except coordination.GroupAlreadyExist:
            pass
        try:
            c.join_group(group, {"k": member}).get()
            assert c.get_member_capabilities(group, c._member_id).get() == {"k": member}
            c.leave_group(group).get()
        except tooz.NotImplemented:
            pass
        _expect_ok_or_tooz(lambda: c.get_member_capabilities(group, member).get())
        c.delete_group(group).get()

    _expect_ok_or_tooz(scenario)


@FUZZ
@given(st.sampled_from(BACKENDS), ids)
@example("file", b"a" * 300)
@example("file", b"groups")
@example("ipc", b"\x00")
def test_lock_names(started, backend, name):
    def scenario():
        lock = started[backend].get_lock(name)
        if lock.acquire(blocking=False):
            assert lock.release() is True

    _expect_ok_or_tooz(scenario)


caps = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1),
              st.floats(allow_nan=False), st.text(max_size=20), st.binary(max_size=20), st.uuids(),
              st.datetimes(), st.dates()),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=8),
                                                                                    st.binary(max_size=8)),
                                                                          inner, max_size=4)),
    max_leaves=20)


@FUZZ
@given(caps)
def test_capabilities_round_trip(value):
    assert utils.loads(utils.dumps(value)) == value


@FUZZ
@given(st.one_of(st.integers(min_value=2 ** 64), st.integers(max_value=-(2 ** 63) - 1), st.builds(object),
                 st.complex_numbers(), st.lists(st.builds(object), min_size=1)))
def test_unserialisable_capabilities(value):
    with pytest.raises(utils.SerializationError):
        utils.dumps(value)


@FUZZ
@given(st.binary(max_size=200))
@example(b"\xc7\xff\x01" + b"x" * 10)
@example(b"\xdd\xff\xff\xff\xff")
@example(b"\xd6\x01\x92\x01\x02\x03\x04")
def test_decoding_garbage(blob):
    _expect_ok_or_tooz(lambda: utils.loads(blob))


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["member", "metadata"]))
@example(b"", "metadata")
@example(b"\x81\xa9member_id\x05", "member")
def test_corrupt_file_records(tmp_path_factory, blob, which):
    root = tmp_path_factory.mktemp("corrupt")
    c = coordination.get_coordinator("file://%s" % root, b"reader")
    c.start()
    try:
        c.create_group(b"g").get()
        c.join_group(b"g").get()
        gdir = next((pathlib.Path(root) / "groups").iterdir())
        target = gdir / ".metadata" if which == "metadata" else next(gdir.glob("*.raw"))
        target.write_bytes(blob)
        for call in (lambda: c.get_members(b"g").get(), lambda: c.get_groups().get(),
                     lambda: c.get_members_with_capabilities(b"g").get(),
                     lambda: c.get_member_capabilities(b"g", b"reader").get(),
                     lambda: c.get_member_info(b"g", b"reader").get(), lambda: c.heartbeat()):
            _expect_ok_or_tooz(call)
    finally:
        _expect_ok_or_tooz(c.stop)


@FUZZ
@given(st.binary(max_size=300))
@example(b"\xc1")
@example(b"\x81\x01\x02")
def test_corrupt_redis_values(started, redis_server, blob):
    import subprocess

    c = started["redis"]
    group = b"corrupt-" + uuid.uuid4().hex.encode()
    c.create_group(group).get()
    key = "%s_group:%s" % (started["redis_namespace"], group.decode())
    # Planted with redis-cli, as a broken peer would write it.
    proc = subprocess.run(["redis-cli", "-p", str(redis_server.port), "-x", "HSET", key, "intruder"], input=blob,
                          capture_output=True, timeout=30)
    assert proc.returncode == 0
    for call in (lambda: c.get_members_with_capabilities(group).get(),
                 lambda: c.get_member_capabilities(group, b"intruder").get()):
        _expect_ok_or_tooz(call)
