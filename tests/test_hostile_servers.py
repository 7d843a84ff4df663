"""Something on a backend's port that is not a well-behaved server: every protocol the core
reads ends in a tooz exception, promptly, without the client's memory growing with what the
server sends. Each case serves one hostile reply (a length prefix announcing ~2 GiB followed
by an endless stream of bytes, an endless line, garbage) and the client runs in a process of
its own, whose peak resident memory (VmHWM) is read before and after.
"""

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import not_green

pytestmark = not_green("the hostile servers are threads of the test process")

# What a client may take for one reply before failing, at most.
GROWTH_LIMIT = 30 * 1024 * 1024
STREAM_CHUNK = b"\x00" * 65536


def huge_then_stream(head):
    """A reply that announces a huge length (in ``head``), then streams bytes for ever."""
    return ("stream", head)


def once(data):
    return ("once", data)


# redis: calls a Python thread waits on go over the core's own RESP connection
# (clients/resp.rs), which bounds a reply; the redis crate's would buffer what it is told.
# For each protocol: (URL template with {port}, what the client does, the hostile replies).
CASES = {
    "redis": ("redis://127.0.0.1:{port}?socket_timeout=5", "start", [
        huge_then_stream(b"$2147483647\r\n"),
        huge_then_stream(b"*2147483647\r\n"),
        huge_then_stream(b"+"),  # a status line that never ends
        once(os.urandom(4096)),
    ]),
    # The runtime's multiplexed connection (tooz.aio's calls, the heart's).
    "redis-aio": ("redis://127.0.0.1:{port}?socket_timeout=5", "aio-start", [
        huge_then_stream(b"$2147483647\r\n"),
        huge_then_stream(b"+"),
    ]),
    "memcached": ("memcached://127.0.0.1:{port}?timeout=5", "start", [
        huge_then_stream(b"VALUE _ 0 2147483647\r\n"),
        huge_then_stream(b"STORED"),  # a line that never ends
        once(os.urandom(4096)),
    ]),
    "zookeeper": ("zookeeper://127.0.0.1:{port}?timeout=3", "start", [
        huge_then_stream(b"\x7f\xff\xff\xff"),
        once(os.urandom(4096)),
    ]),
    "etcd3": ("etcd3+http://127.0.0.1:{port}?timeout=5", "start", [
        huge_then_stream(b"\x7f\xff\xff\x00\x00\x00\x00\x00\x00"),  # an HTTP/2 frame header of ~2 GiB
        once(os.urandom(4096)),
    ]),
    "postgresql": ("postgresql://u:p@127.0.0.1:{port}/d?sslmode=disable", "lock", [
        huge_then_stream(b"R\x7f\xff\xff\xff"),
        huge_then_stream(b"E\x7f\xff\xff\xff"),
        once(os.urandom(4096)),
    ]),
    "postgresql-prefer": ("postgresql://u:p@127.0.0.1:{port}/d", "lock", [
        huge_then_stream(b"ND\x7f\xff\xff\xff"),  # 'N' to the SSLRequest, then a huge DataRow
    ]),
    "mysql": ("mysql://u:p@127.0.0.1:{port}/d", "lock", [
        # Packets of the largest size (0xffffff) chained for ever: a message without end.
        huge_then_stream(b"\xff\xff\xff\x00"),
        once(os.urandom(4096)),
    ]),
}

CLIENT = r"""
import sys, time
from tooz import coordination

def hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

url, what = sys.argv[1], sys.argv[2]
before = hwm()
began = time.monotonic()
outcome = "no error"
try:
    if what == "aio-start":
        import asyncio
        from tooz import aio
        asyncio.run(aio.get_coordinator(url, b"hostile-test").start())
    else:
        c = coordination.get_coordinator(url, b"hostile-test")
        c.start()
    if what == "lock":
        c.get_lock(b"l").acquire(blocking=False)
except coordination.ToozError as e:
    outcome = "tooz:" + type(e).__name__
except Exception as e:
    outcome = "other:%s: %s" % (type(e).__name__, e)
print("%s %d %.3f" % (outcome, hwm() - before, time.monotonic() - began), flush=True)
"""


class Hostile:
    """A listener that answers every connection with one hostile reply."""

    def __init__(self, reply):
        self.kind, self.data = reply
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.sent = 0
        self.stopped = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def answer(self, conn):
        with conn:
            conn.settimeout(10)
            try:
                # Whatever the client says first (a greeting-first protocol gets ours now).
                conn.setblocking(False)
                time.sleep(0.05)
                try:
                    conn.recv(65536)
                except BlockingIOError:
                    pass
                conn.setblocking(True)
                conn.settimeout(10)
                conn.sendall(self.data)
                if self.kind == "stream":
                    while not self.stopped.is_set():
                        conn.sendall(STREAM_CHUNK)
                        self.sent += len(STREAM_CHUNK)
            except OSError:
                pass

    def close(self):
        self.stopped.set()
        self.sock.close()


def _cases():
    for protocol, (_, _, replies) in sorted(CASES.items()):
        for i in range(len(replies)):
            yield pytest.param(protocol, i, id="%s-%d" % (protocol, i))


@pytest.mark.parametrize("protocol,index", list(_cases()))
def test_a_hostile_server_is_a_tooz_error_with_bounded_memory(protocol, index):
    template, what, replies = CASES[protocol]
    server = Hostile(replies[index])
    try:
        out = subprocess.run([sys.executable, "-c", CLIENT, template.format(port=server.port), what],
                             capture_output=True, text=True, timeout=20)
    finally:
        server.close()
    assert out.returncode == 0, out.stderr[-2000:]
    outcome, growth, took = out.stdout.split()
    growth, took = int(growth), float(took)
    assert outcome.startswith("tooz:"), (outcome, out.stderr[-2000:])
    assert growth < GROWTH_LIMIT, "the client grew by %.1f MiB (the server sent %.1f MiB)" % (
        growth / 2 ** 20, server.sent / 2 ** 20)
    assert took < 30, "took %.1f s" % took
