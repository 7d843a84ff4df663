"""Helpers shared by the drivers, and the oslo-compatible msgpack codec (in Rust)."""

import base64
import collections
import datetime
import itertools
import operator
import os
import uuid
import xmlrpc.client

import tooz
from tooz import _tooz


class SerializationError(tooz.ToozError):
    """A value could not be encoded to, or decoded from, the stored format."""


ExtType = collections.namedtuple("ExtType", "code data")
"""An msgpack extension value of a type tooz does not know (as ``msgpack.ExtType``)."""


def to_binary(text, encoding="ascii"):
    """Bytes as they are; anything else ``.encode(encoding)``-ed."""
    if isinstance(text, bytes):
        return text
    return text.encode(encoding)


def dumps(data, excp_cls=SerializationError):
    """Serialise ``data`` as oslo.serialization's msgpackutils does."""
    try:
        return _tooz.dumps(data)
    except SerializationError as e:
        if excp_cls is SerializationError:
            raise
        raise_with_cause(excp_cls, str(e), cause=e)


def loads(blob, excp_cls=SerializationError):
    """Deserialise what :func:`dumps` (or upstream tooz) wrote."""
    try:
        return _tooz.loads(blob)
    except (SerializationError, TypeError, ValueError, RecursionError) as e:
        if excp_cls is SerializationError and isinstance(e, SerializationError):
            raise
        raise_with_cause(excp_cls, "Failed to deserialize object: %s" % e, cause=e)


def collapse(config, exclude=None, item_selector=operator.itemgetter(-1)):
    """One value per option: the selected item of list/tuple values (empty ones dropped)."""
    if not isinstance(config, dict):
        raise TypeError("Unexpected config type, dict expected")
    if not config:
        return {}
    if exclude is None:
        exclude = set()
    collapsed = {}
    for key, value in config.items():
        if isinstance(value, (tuple, list)) and key not in exclude:
            if value:
                collapsed[key] = item_selector(value)
        else:
            collapsed[key] = value
    return collapsed


def convert_blocking(blocking, timeout=None):
    """A real bool is ``(blocking, timeout)``; any other value is a timeout in seconds."""
    if isinstance(blocking, bool):
        return blocking, timeout
    return True, float(blocking)


def safe_abs_path(rooted_at, *pieces):
    """``abspath(join(root, *paths))``, refusing anything that escapes ``root``."""
    rooted_at = os.path.abspath(rooted_at)
    joined = os.path.abspath(os.path.join(rooted_at, *pieces))
    if not joined.startswith(rooted_at):
        raise ValueError("Unable to create path that is outside of parent directory '%s' using segments %s"
                         % (rooted_at, list(pieces)))
    return joined


def millis_to_datetime(milliseconds):
    return datetime.datetime.fromtimestamp(float(milliseconds) / 1000)


def raise_with_cause(exc_cls, message, *args, **kwargs):
    """Raise ``exc_cls(message, ...)`` chained to ``cause`` (default: the exception being handled)."""
    if not issubclass(exc_cls, tooz.ToozError):
        raise ValueError("Subclass of tooz error is required")
    cause = kwargs.pop("cause", None)
    if cause is None:
        import sys

        cause = sys.exc_info()[1]
    raise exc_cls(message, *args, cause=cause, **kwargs) from cause


def _thread_pool():
    import futurist  # imported when an executor is built: most drivers never need one

    return futurist.ThreadPoolExecutor(max_workers=1)


def _synchronous():
    import futurist

    return futurist.SynchronousExecutor()


class ProxyExecutor:
    """The executor a driver runs its calls on, chosen by the ``executor`` option."""

    KIND_TO_FACTORY = {
        "threaded": _thread_pool,
        "thread": _thread_pool,
        "threading": _thread_pool,
        "synchronous": _synchronous,
        "sync": _synchronous,
    }
    DEFAULT_KIND = "threaded"

    def __init__(self, driver_name, default_executor_factory):
        self.default_executor_factory = default_executor_factory
        self.driver_name = driver_name
        self.started = False
        self.executor = None
        self.internally_owned = True

    @classmethod
    def build(cls, driver_name, options):
        kind = options.get("executor", cls.DEFAULT_KIND)
        try:
            factory = cls.KIND_TO_FACTORY[kind]
        except (KeyError, TypeError):
            raise tooz.ToozError(
                "Unknown executor '%s' provided for driver '%s'" % (kind, driver_name)
            )
        return cls(driver_name, factory)

    def start(self):
        if self.started:
            return
        self.executor = self.default_executor_factory()
        self.started = True

    def stop(self):
        executor, self.executor = self.executor, None
        if executor is not None:
            executor.shutdown()
        self.started = False

    def submit(self, cb, *args, **kwargs):
        if not self.started:
            raise tooz.ToozError("%s driver asynchronous executor has not been started" % self.driver_name)
        try:
            return self.executor.submit(cb, *args, **kwargs)
        except RuntimeError:
            raise tooz.ToozError("%s driver asynchronous executor has been shutdown" % self.driver_name)


class Base64LockEncoder:
    def __init__(self, keyspace_url, prefix=""):
        self.keyspace_url = keyspace_url
        if prefix:
            self.keyspace_url += prefix

    def check_and_encode(self, name):
        if not isinstance(name, (str, bytes)):
            raise TypeError("Expected str or bytes, not %s" % type(name))
        return self.encode(name)

    def encode(self, name):
        if isinstance(name, str):
            name = name.encode("ascii")
        enc = base64.urlsafe_b64encode(name).decode("ascii")
        return self.keyspace_url + "/" + enc


# --- oslo.serialization extension types (the codes are part of the stored format) ----------

_EXT_UUID, _EXT_DATETIME, _EXT_COUNT, _EXT_NETADDR = 0, 1, 2, 3
_EXT_SET, _EXT_FROZENSET, _EXT_XMLRPC_DATETIME, _EXT_DATE = 4, 5, 6, 7


def _datetime_map(dt):
    fields = {
        "day": dt.day,
        "month": dt.month,
        "year": dt.year,
        "hour": dt.hour,
        "minute": dt.minute,
        "second": dt.second,
        "microsecond": dt.microsecond,
    }
    if dt.tzinfo:
        fields["tz"] = str(dt.tzinfo)
    return fields


def _count_args(counter):
    inside = repr(counter)
    inside = inside[inside.find("(") + 1:inside.rfind(")")]
    parts = [int(p) for p in inside.split(",")]
    return [parts[0], parts[1] if len(parts) > 1 else 1]


def _ext_pack(obj):
    """(code, payload) of a value plain msgpack cannot hold; called by the Rust encoder."""
    if isinstance(obj, uuid.UUID):
        return _EXT_UUID, obj.hex.encode("ascii")
    if isinstance(obj, datetime.datetime):
        return _EXT_DATETIME, _tooz.dumps(_datetime_map(obj))
    if isinstance(obj, itertools.count):
        return _EXT_COUNT, _tooz.dumps(_count_args(obj))
    if type(obj).__module__.startswith("netaddr") and type(obj).__name__ == "IPAddress":
        return _EXT_NETADDR, _tooz.dumps(int(obj))
    if isinstance(obj, set):
        return _EXT_SET, _tooz.dumps(list(obj))
    if isinstance(obj, frozenset):
        return _EXT_FROZENSET, _tooz.dumps(list(obj))
    if isinstance(obj, xmlrpc.client.DateTime):
        as_dt = datetime.datetime(*obj.timetuple()[:6])
        return _EXT_XMLRPC_DATETIME, _tooz.dumps(_datetime_map(as_dt))
    if isinstance(obj, datetime.date):
        return _EXT_DATE, _tooz.dumps({"year": obj.year, "month": obj.month, "day": obj.day})
    if isinstance(obj, ExtType):
        return obj.code, bytes(obj.data)
    raise SerializationError("Failed to serialize object: cannot serialize %r (type %s)" % (obj, type(obj).__name__))


def _str_keys(fields):
    if not isinstance(fields, dict):
        raise SerializationError("Failed to deserialize object: malformed extension payload")
    return {(k.decode("ascii") if isinstance(k, bytes) else k): v for k, v in fields.items()}


def _make_datetime(fields):
    fields = _str_keys(fields)
    try:
        dt = datetime.datetime(
            fields["year"], fields["month"], fields["day"], fields["hour"],
            fields["minute"], fields["second"], fields["microsecond"],
        )
    except (KeyError, TypeError, ValueError) as e:
        raise SerializationError("Failed to deserialize object: bad datetime: %s" % e)
    tz = fields.get("tz")
    if isinstance(tz, bytes):
        tz = tz.decode("ascii")
    if tz:
        import zoneinfo

        try:
            dt = dt.replace(tzinfo=zoneinfo.ZoneInfo(tz))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as e:
            raise SerializationError("Failed to deserialize object: unknown time zone %r: %s" % (tz, e))
    return dt


def _ext_unpack(code, data):
    """The Python value of an extension payload; called by the Rust decoder."""
    try:
        if code == _EXT_UUID:
            return uuid.UUID(hex=data.decode("ascii"))
        if code == _EXT_DATETIME:
            return _make_datetime(_tooz.loads(data))
        if code == _EXT_COUNT:
            start, step = _tooz.loads(data)
            return itertools.count(start, step)
        if code == _EXT_SET:
            return set(_tooz.loads(data))
        if code == _EXT_FROZENSET:
            return frozenset(_tooz.loads(data))
        if code == _EXT_XMLRPC_DATETIME:
            return xmlrpc.client.DateTime(_make_datetime(_tooz.loads(data)).timetuple())
        if code == _EXT_DATE:
            fields = _str_keys(_tooz.loads(data))
            return datetime.date(fields["year"], fields["month"], fields["day"])
        if code == _EXT_NETADDR:
            try:
                import netaddr
            except ImportError:
                return ExtType(code, data)
            return netaddr.IPAddress(_tooz.loads(data))
    except SerializationError:
        raise
    except (TypeError, ValueError, KeyError, UnicodeDecodeError) as e:
        raise SerializationError("Failed to deserialize extension %d: %s" % (code, e))
    return ExtType(code, data)
