"""The exception tree and its messages, as upstream defines them."""

import uuid

import pytest

import tooz
from tooz import coordination
from tooz import utils


def test_tree():
    assert issubclass(tooz.NotImplemented, NotImplementedError)
    assert issubclass(tooz.NotImplemented, tooz.ToozError)
    assert coordination.ToozError is tooz.ToozError
    assert coordination.SerializationError is utils.SerializationError
    for cls in (coordination.ToozConnectionError, coordination.OperationTimedOut, coordination.LockAcquireFailed,
                coordination.ToozDriverChosenPoorly, coordination.GroupNotCreated, coordination.GroupAlreadyExist,
                coordination.MemberAlreadyExist, coordination.MemberNotJoined, coordination.GroupNotEmpty,
                coordination.WatchCallbackNotFound, utils.SerializationError):
        assert issubclass(cls, tooz.ToozError)


def test_messages():
    assert str(coordination.GroupNotCreated(b"g")) == "Group g does not exist"
    assert str(coordination.GroupAlreadyExist("g")) == "Group g already exists"
    assert str(coordination.MemberAlreadyExist(b"g", b"m")) == "Member m has already joined g"
    assert str(coordination.MemberNotJoined(b"g", b"m")) == "Member m has not joined g"
    assert str(coordination.GroupNotEmpty(b"g")) == "Group g is not empty"

    def my_callback(event):
        pass

    e = coordination.WatchCallbackNotFound(b"g", my_callback)
    assert str(e) == "Callback my_callback is not registered on group g"
    assert e.callback is my_callback
    assert coordination.MemberNotJoined(b"g", b"m").member_id == "m"


def test_non_utf8_ids_do_not_crash():
    e = coordination.GroupNotCreated(b"\xff")
    assert "does not exist" in str(e)


def test_cause():
    cause = OSError("disk")
    e = tooz.ToozError("boom", cause=cause)
    assert e.cause is cause
    with pytest.raises(coordination.ToozConnectionError) as info:
        try:
            raise cause
        except OSError:
            utils.raise_with_cause(coordination.ToozConnectionError, "lost")
    assert info.value.cause is cause and info.value.__cause__ is cause
    with pytest.raises(ValueError):
        utils.raise_with_cause(KeyError, "not a tooz error")


def test_lock_acquire_failed_message(coord):
    name = b"held-" + uuid.uuid4().hex.encode()
    lock = coord.get_lock(name)
    assert lock.acquire()
    other = coord.get_lock(name)
    with pytest.raises(coordination.LockAcquireFailed, match="Acquiring lock .*held-.* failed"):
        with other(False):
            pass
    lock.release()
