"""The msgpack codec (Rust) must produce upstream's bytes and read upstream's records."""

import datetime
import itertools
import uuid

import pytest

from tooz import utils


def test_vectors():
    assert utils.dumps(None).hex() == "c0"
    assert utils.dumps({"weight": 1}).hex() == "81a677656967687401"
    assert utils.dumps(datetime.datetime(2024, 1, 2, 3, 4, 5, 6)).hex() == (
        "c73801" "87a364617902a56d6f6e746801a479656172cd07e8a4686f757203a66d696e75746504"
        "a67365636f6e6405ab6d6963726f7365636f6e6406")


@pytest.mark.parametrize("value", [
    None, True, False, 0, -1, 2 ** 63 - 1, -(2 ** 63), 2 ** 64 - 1, 1.5, "", "text", b"", b"\x00\xff",
    [1, [2, [3]]], {"a": {"b": b"c"}}, {b"k": 1}, uuid.uuid4(), datetime.datetime(2020, 5, 6, 7, 8, 9, 10),
    datetime.date(2021, 2, 3), {1, 2, 3}, frozenset({"x"}), "é" * 1000, b"x" * 70000,
])
def test_round_trip(value):
    assert utils.loads(utils.dumps(value)) == value


def test_tuples_become_lists_and_count_survives():
    assert utils.loads(utils.dumps((1, 2))) == [1, 2]
    c = utils.loads(utils.dumps(itertools.count(5, 2)))
    assert next(c) == 5 and next(c) == 7


def test_aware_datetime():
    import zoneinfo

    dt = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))
    assert utils.loads(utils.dumps(dt)) == dt


@pytest.mark.parametrize("bad", [object(), 2 ** 64, {"x": lambda: 1}])
def test_unserialisable(bad):
    with pytest.raises(utils.SerializationError):
        utils.dumps(bad)


def test_cycles_are_refused():
    a = []
    a.append(a)
    with pytest.raises(utils.SerializationError):
        utils.dumps(a)


@pytest.mark.parametrize("blob", [b"", b"\xc1", b"\x92\x01", b"\xa3ab", b"\x81\x01\x02", b"\xd4\x01\xff",
                                  b"\xc7\x03\x00abc", b"\x91" * 2000])
def test_corrupt_input(blob):
    with pytest.raises(utils.SerializationError):
        utils.loads(blob)


def test_custom_exception_class():
    from tooz import coordination

    with pytest.raises(coordination.ToozError):
        utils.loads(b"\xc1", excp_cls=coordination.ToozError)


def test_helpers():
    assert utils.to_binary("abc") == b"abc"
    assert utils.to_binary(b"abc") == b"abc"
    assert utils.collapse({"a": [1, 2], "b": [], "c": 3, "d": [4]}, exclude=["d"]) == {"a": 2, "c": 3, "d": [4]}
    with pytest.raises(TypeError):
        utils.collapse([])
    assert utils.convert_blocking(True, 3) == (True, 3)
    assert utils.convert_blocking(2) == (True, 2.0)
    with pytest.raises(ValueError):
        utils.safe_abs_path("/a/b", "../c")
    assert utils.safe_abs_path("/a/b", "c") == "/a/b/c"
    assert utils.millis_to_datetime(0) == datetime.datetime.fromtimestamp(0)
