"""Records of the Rust core in Python's logging: connection loss and recovery per backend,
heartbeat trouble, never a password."""

import logging
import time

import pytest

from tooz import coordination

import servers
from conftest import new_id, wait_for




def _records(caplog, level, logger_prefix="tooz"):
    return [r for r in caplog.records if r.name.startswith(logger_prefix) and r.levelno == level]


LOSS = {
    "redis": ("tooz.drivers.redis", "?membership_timeout=2&lock_timeout=2"),
    "memcached": ("tooz.drivers.memcached", "?membership_timeout=2&lock_timeout=2&timeout=2"),
    "zookeeper": ("tooz.drivers.zookeeper", "?timeout=10"),
    "etcd3": ("tooz.drivers.etcd3gw", "?membership_timeout=2&lock_timeout=2&timeout=2"),
}
# backend -> (launcher in servers.py, URL scheme)
LAUNCH = {"etcd3": ("etcd", "etcd3+http")}


@pytest.mark.parametrize("backend", sorted(LOSS))
def test_connection_loss_and_recovery_are_logged(backend, caplog):
    caplog.set_level(logging.INFO, logger="tooz")
    logger, query = LOSS[backend]
    launcher, scheme = LAUNCH.get(backend, (backend, backend))
    server = getattr(servers, launcher)().start()
    try:
        c = coordination.get_coordinator("%s://127.0.0.1:%d%s" % (scheme, server.port, query), b"logged-member")
        c.start(start_heart=True)
        try:
            group = new_id("g")
            c.create_group(group).get()
            c.join_group(group).get()
            server.stop()
            assert wait_for(lambda: any(r.name == logger for r in _records(caplog, logging.WARNING)), 20), \
                [r.getMessage() for r in caplog.records]
            loss = [r for r in _records(caplog, logging.WARNING) if r.name == logger][0].getMessage()
            assert "logged-member" in loss and backend in loss and str(server.port) in loss
            server.start()
            assert wait_for(lambda: any(r.name == logger for r in _records(caplog, logging.INFO)), 30), \
                [r.getMessage() for r in caplog.records]
            if backend in ("redis", "memcached"):
                # The heart said so too: a failed beat, then beats that work again.
                assert wait_for(lambda: any("works again" in r.getMessage()
                                             for r in _records(caplog, logging.INFO, "tooz.coordination")), 30)
        finally:
            c.stop()
    finally:
        server.close()


def test_an_outage_is_one_warning_not_one_per_call(caplog):
    caplog.set_level(logging.INFO, logger="tooz")
    server = servers.redis().start()
    try:
        c = coordination.get_coordinator("redis://127.0.0.1:%d" % server.port, b"m")
        c.start()
        server.stop()
        for _ in range(5):
            with pytest.raises(coordination.ToozConnectionError):
                c.get_groups().get()
        time.sleep(0.5)  # let the log thread drain
        losses = [r for r in _records(caplog, logging.WARNING) if r.name == "tooz.drivers.redis"]
        assert len(losses) == 1
        server.start()
        c.get_groups().get()
        c.stop()
    finally:
        server.close()


def test_no_record_carries_a_password(caplog):
    caplog.set_level(logging.DEBUG)
    secret = "s3cr3t-" + new_id().decode()
    server = servers.redis(extra=("--requirepass", secret)).start()
    try:
        c = coordination.get_coordinator("redis://:%s@127.0.0.1:%d?membership_timeout=2" % (secret, server.port),
                                         b"pw-member")
        c.start(start_heart=True)
        group = new_id("g")
        c.create_group(group).get()
        c.join_group(group).get()
        server.stop()
        assert wait_for(lambda: _records(caplog, logging.WARNING), 20)
        server.start()
        assert wait_for(lambda: _records(caplog, logging.INFO), 30)
        c.stop()
        for r in caplog.records:
            assert secret not in r.getMessage()
            assert secret not in str(r.args)
    finally:
        server.close()
