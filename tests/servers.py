"""Real backend servers for the tests, started on free loopback ports and stopped afterwards.

The binaries come from Debian packages (scripts/setup.sh installs them); nothing is mocked.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, timeout=30.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("server exited with %s" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listens on port %d after %.0fs" % (port, timeout))


class Server:
    """One server process; ``stop()``/``start()`` again simulate an outage on the same port."""

    def __init__(self, name, argv_for_port, port=None, workdir=None, ready_timeout=30.0, ready=None):
        self.name = name
        self._ready = ready
        self.port = port or free_port()
        self.workdir = workdir or tempfile.mkdtemp(prefix="tooz-%s-" % name)
        self._argv_for_port = argv_for_port
        self._ready_timeout = ready_timeout
        self.proc = None

    def start(self):
        argv = self._argv_for_port(self.port, self.workdir)
        self.log = open(os.path.join(self.workdir, "server.log"), "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                     start_new_session=True)
        wait_for_port(self.port, self._ready_timeout, self.proc)
        if self._ready is not None:
            deadline = time.monotonic() + self._ready_timeout
            while not self._ready(self.port):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("%s on port %d never became ready" % (self.name, self.port))
                time.sleep(0.05)
        return self

    def stop(self, sig=signal.SIGTERM):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(15)
        self.proc = None

    def close(self):
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def redis(port=None, extra=()):
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"

    def argv(port, workdir):
        return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", workdir, *extra]

    return Server("redis", argv, port=port)


def memcached(port=None):
    binary = shutil.which("memcached") or "/usr/bin/memcached"

    def argv(port, workdir):
        return [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-u", "root", "-m", "64"]

    return Server("memcached", argv, port=port)


ZOOKEEPER_CLASSPATH = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar"


def zookeeper(port=None, tls=None):
    """A standalone ZooKeeper from the Debian package, on loopback, data in its work dir.

    tickTime 500 ms lets sessions be as short as 1 s (ZooKeeper's floor is two ticks), so
    session-expiry tests run quickly; the admin HTTP server is off. ``tls`` =
    ``{"key_pem": <key+cert PEM>, "ca_pem": <CA PEM>, "client_auth": "none"|"need"}`` adds a
    TLS port (``server.secure_port``) served by Netty."""
    java = shutil.which("java") or "/usr/bin/java"
    secure_port = free_port() if tls else None
    extra_config = ""
    classpath = ZOOKEEPER_CLASSPATH
    if tls:
        # Debian's zookeeper.jar manifest leaves netty-codec out of its class path.
        classpath += ":/usr/share/java/netty-codec.jar"
        extra_config = ("secureClientPort=%d\nsecureClientPortAddress=127.0.0.1\n"
                        "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n"
                        "ssl.keyStore.location=%s\nssl.keyStore.type=PEM\n"
                        "ssl.trustStore.location=%s\nssl.trustStore.type=PEM\nssl.clientAuth=%s\n"
                        % (secure_port, tls["key_pem"], tls["ca_pem"], tls.get("client_auth", "none")))

    def argv(port, workdir):
        data = os.path.join(workdir, "data")
        os.makedirs(data, exist_ok=True)
        conf = os.path.join(workdir, "zoo.cfg")
        with open(conf, "w") as f:
            f.write("tickTime=500\ndataDir=%s\nclientPort=%d\nclientPortAddress=127.0.0.1\n"
                    "minSessionTimeout=1000\nmaxSessionTimeout=60000\nadmin.enableServer=false\n"
                    "4lw.commands.whitelist=*\n%s" % (data, port, extra_config))
        return [java, "-Xmx256m", "-XX:+UseSerialGC", "-Dzookeeper.admin.enableServer=false",
                "-cp", classpath, "org.apache.zookeeper.server.ZooKeeperServerMain", conf]

    server = Server("zookeeper", argv, port=port, ready_timeout=60.0, ready=_zookeeper_serving)
    server.secure_port = secure_port
    return server


def _zookeeper_serving(port):
    """Whether the server answers the `srvr` four-letter command as a serving server (it
    accepts connections before it has loaded its data)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"srvr")
            reply = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return b"Mode:" in reply
    except OSError:
        return False


def zookeeper_ensemble(size=3):
    """``size`` ZooKeeper servers on loopback forming one ensemble (quorum ``size // 2 + 1``):
    a list of Servers (start them all; each ``.port`` is its client port). Each can be
    stopped and started again on its own, keeping its data directory and id."""
    java = shutil.which("java") or "/usr/bin/java"
    peers = [(free_port(), free_port()) for _ in range(size)]
    members = "".join("server.%d=127.0.0.1:%d:%d\n" % (i + 1, p, e) for i, (p, e) in enumerate(peers))
    ensemble = []
    for i in range(size):
        def argv(port, workdir, myid=i + 1):
            data = os.path.join(workdir, "data")
            os.makedirs(data, exist_ok=True)
            with open(os.path.join(data, "myid"), "w") as f:
                f.write("%d\n" % myid)
            conf = os.path.join(workdir, "zoo.cfg")
            with open(conf, "w") as f:
                f.write("tickTime=500\ninitLimit=20\nsyncLimit=10\ndataDir=%s\nclientPort=%d\n"
                        "clientPortAddress=127.0.0.1\nminSessionTimeout=1000\nmaxSessionTimeout=60000\n"
                        "admin.enableServer=false\n4lw.commands.whitelist=*\n%s" % (data, port, members))
            return [java, "-Xmx192m", "-XX:+UseSerialGC", "-Dzookeeper.admin.enableServer=false",
                    "-cp", ZOOKEEPER_CLASSPATH, "org.apache.zookeeper.server.quorum.QuorumPeerMain", conf]

        # Readiness is checked by wait_serving(): a member serves only once a quorum is up.
        ensemble.append(Server("zookeeper-%d" % (i + 1), argv, ready_timeout=90.0))
    return ensemble


def wait_serving(servers, timeout=90.0):
    """Waits until each of ``servers`` (ZooKeeper) serves clients."""
    deadline = time.monotonic() + timeout
    for server in servers:
        while not _zookeeper_serving(server.port):
            if time.monotonic() > deadline:
                raise RuntimeError("%s on port %d never served" % (server.name, server.port))
            time.sleep(0.1)


ETCD_SHM = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _etcd_healthy(port):
    """Whether the member on ``port`` serves reads (it has a leader)."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=2) as r:
            return json.loads(r.read().decode()).get("health") in ("true", True)
    except (OSError, ValueError):
        return False


def etcd(port=None, name="tooz", peer_port=None, cluster=None, state="new", tls=None, extra=()):
    """One etcd member (Debian's ``etcd-server``) on loopback; data in a directory on tmpfs
    when there is one, so fsyncs cost nothing. A single member unless ``cluster`` (the
    ``--initial-cluster`` value) names others; the gRPC API and the JSON gateway share the
    client port, as in production. ``tls`` = ``{"cert": path, "key": path, "ca": path or
    None}`` serves the client port over TLS (``ca``: client certificates required)."""
    binary = shutil.which("etcd") or "/usr/bin/etcd"
    peer_port = peer_port or free_port()
    workdir = tempfile.mkdtemp(prefix="tooz-etcd-", dir=ETCD_SHM)

    scheme = "https" if tls else "http"

    def argv(port, workdir):
        client = "%s://127.0.0.1:%d" % (scheme, port)
        peer = "http://127.0.0.1:%d" % peer_port
        secure = []
        if tls:
            secure = ["--cert-file", tls["cert"], "--key-file", tls["key"]]
            if tls.get("ca"):
                secure += ["--client-cert-auth", "--trusted-ca-file", tls["ca"]]
        return [binary, "--name", name, "--data-dir", os.path.join(workdir, "data"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", cluster or "%s=%s" % (name, peer),
                "--initial-cluster-state", state, "--initial-cluster-token", "tooz-tests",
                "--heartbeat-interval", "50", "--election-timeout", "500",
                "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn", *secure, *extra]

    ready = None if (cluster or tls) else _etcd_healthy
    server = Server("etcd", argv, port=port, workdir=workdir, ready=ready)
    server.peer_port = peer_port
    server.url = "etcd3+%s://127.0.0.1:%d" % (scheme, server.port)
    return server


class EtcdCluster:
    """Three etcd members on loopback forming one cluster (``.members``, ``.hosts``)."""

    def __init__(self, size=3):
        ports = [(free_port(), free_port()) for _ in range(size)]
        initial = ",".join("m%d=http://127.0.0.1:%d" % (i, peer) for i, (_, peer) in enumerate(ports))
        self.members = [etcd(port=client, name="m%d" % i, peer_port=peer, cluster=initial)
                        for i, (client, peer) in enumerate(ports)]

    @property
    def hosts(self):
        return ["127.0.0.1:%d" % m.port for m in self.members]

    def start(self, timeout=60.0):
        for m in self.members:
            m.start()
        deadline = time.monotonic() + timeout
        while not all(_etcd_healthy(m.port) for m in self.members):
            if time.monotonic() > deadline:
                raise RuntimeError("the etcd cluster never became healthy")
            time.sleep(0.1)
        return self

    def close(self):
        for m in self.members:
            m.close()
