"""get_coordinator: URL schemes, options, entry points, characteristics, unavailable backends."""

import pytest

import tooz
from tooz import coordination
from tooz.drivers import file as file_driver
from tooz.drivers import ipc as ipc_driver


def test_driver_classes(tmp_path):
    c = coordination.get_coordinator("file://%s" % tmp_path, b"me")
    assert isinstance(c, file_driver.FileDriver)
    assert isinstance(c, coordination.CoordinationDriverCachedRunWatchers)
    assert isinstance(c, coordination.CoordinationDriverWithExecutor)
    assert not c.is_started
    i = coordination.get_coordinator("ipc://", b"me")
    assert isinstance(i, ipc_driver.IPCDriver)
    assert isinstance(i, coordination.CoordinationDriverWithExecutor)
    assert not isinstance(i, coordination.CoordinationDriverCachedRunWatchers)


def test_unknown_scheme():
    with pytest.raises(RuntimeError) as e:
        coordination.get_coordinator("nope://x", b"me")
    assert not isinstance(e.value, tooz.ToozError)
    assert "No 'tooz.backends' driver found, looking for 'nope'" in str(e.value)
    with pytest.raises(RuntimeError):
        coordination.get_coordinator("no-scheme-at-all", b"me")


def test_options_from_url_and_kwargs(tmp_path, make_coordinator):
    c = coordination.get_coordinator("file://%s?timeout=3&timeout=4" % tmp_path, b"me")
    assert c.heartbeat() == 4, "the last repeated query value wins"
    c = coordination.get_coordinator("file://%s?timeout=3" % tmp_path, b"me", timeout=7)
    assert c.heartbeat() == 7, "keyword arguments win over the query"


@pytest.mark.parametrize("bad", ["abc", "-1", "nan"])
def test_bad_option_values(tmp_path, bad):
    with pytest.raises(coordination.ToozInvalidArgument) as e:
        coordination.get_coordinator("file://%s?timeout=%s" % (tmp_path, bad), b"me")
    assert isinstance(e.value, ValueError) and isinstance(e.value, tooz.ToozError)
    assert "timeout" in str(e.value)


def test_unknown_executor_option(tmp_path):
    with pytest.raises(tooz.ToozError):
        coordination.get_coordinator("file://%s?executor=bogus" % tmp_path, b"me")


def test_characteristics(tmp_path):
    wanted = [coordination.Characteristics.DISTRIBUTED_ACROSS_PROCESSES]
    assert coordination.get_coordinator("file://%s" % tmp_path, b"me", characteristics=wanted)
    with pytest.raises(coordination.ToozDriverChosenPoorly):
        coordination.get_coordinator("file://%s" % tmp_path, b"me",
                                     characteristics=[coordination.Characteristics.DISTRIBUTED_ACROSS_HOSTS])
    assert [c.value for c in coordination.Characteristics][:3] == [
        "DISTRIBUTED_ACROSS_THREADS", "DISTRIBUTED_ACROSS_PROCESSES", "DISTRIBUTED_ACROSS_HOSTS"]


def test_malformed_urls():
    with pytest.raises(ValueError):
        coordination.get_coordinator("file://host:notaport/tmp/x", b"me")
    with pytest.raises(coordination.ToozInvalidArgument):
        coordination.get_coordinator("file://", b"me")
    with pytest.raises(coordination.ToozInvalidArgument):
        coordination.get_coordinator(b"file:///tmp", b"me")


def test_start_and_stop_misuse(tmp_path):
    c = coordination.get_coordinator("file://%s" % tmp_path, b"me")
    with pytest.raises(tooz.ToozError, match="has not been started"):
        c.stop()
    c.start()
    with pytest.raises(tooz.ToozError, match="has not been stopped"):
        c.start()
    c.stop()
    c.start()
    c.stop()


def test_start_on_unusable_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    c = coordination.get_coordinator("file://%s/sub" % blocker, b"me")
    with pytest.raises(coordination.ToozConnectionError):
        c.start()


def test_third_party_backend_via_entry_point(tmp_path, monkeypatch):
    """A driver registered in the tooz.backends entry-point group loads, as with upstream."""
    dist = tmp_path / "fancy_backend-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fancy-backend\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[tooz.backends]\nfancy = tooz.drivers.file:FileDriver\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    coordination._backend_entry_points.cache_clear()
    try:
        c = coordination.get_coordinator("fancy://%s" % tmp_path, b"me")
        assert isinstance(c, file_driver.FileDriver)
    finally:
        coordination._backend_entry_points.cache_clear()


def test_registered_entry_points():
    table = coordination._backend_entry_points()
    for scheme in ("file", "ipc", "redis", "zookeeper", "kazoo", "memcached", "postgresql", "mysql",
                   "etcd3+http", "etcd3+https", "kubernetes"):
        assert scheme in table
