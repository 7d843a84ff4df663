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


def memcached(port=None, extra=()):
    binary = shutil.which("memcached") or "/usr/bin/memcached"

    def argv(port, workdir):
        return [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-u", "root", "-m", "64", "-c", "4096", *extra]

    return Server("memcached", argv, port=port)


ZOOKEEPER_CLASSPATH = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar"


def zookeeper_argv(client_address, extra_config="", classpath=ZOOKEEPER_CLASSPATH):
    """How ``zookeeper()`` starts a server that serves clients on ``client_address``: a
    function of (port, work dir) that writes its zoo.cfg there and gives the command line."""
    java = shutil.which("java") or "/usr/bin/java"

    def argv(port, workdir):
        data = os.path.join(workdir, "data")
        os.makedirs(data, exist_ok=True)
        conf = os.path.join(workdir, "zoo.cfg")
        with open(conf, "w") as f:
            f.write("tickTime=500\ndataDir=%s\nclientPort=%d\nclientPortAddress=%s\n"
                    "minSessionTimeout=1000\nmaxSessionTimeout=60000\nadmin.enableServer=false\n"
                    "4lw.commands.whitelist=*\nmaxClientCnxns=0\nforceSync=no\n%s"
                    % (data, port, client_address, extra_config))
        return [java, "-Xmx256m", "-XX:+UseSerialGC", "-Dzookeeper.admin.enableServer=false",
                "-cp", classpath, "org.apache.zookeeper.server.ZooKeeperServerMain", conf]

    return argv


def zookeeper(port=None, tls=None):
    """A standalone ZooKeeper from the Debian package, on loopback, data in its work dir.

    tickTime 500 ms lets sessions be as short as 1 s (ZooKeeper's floor is two ticks), so
    session-expiry tests run quickly; the admin HTTP server is off; any number of sessions
    from one address (the benchmarks' groups of 1,000 members are 1,000 sessions); no fsync of
    its transaction log (``forceSync=no``), as the other servers here (PostgreSQL's fsync=off,
    etcd on tmpfs): a test server is there to exercise, and a benchmark to time, the client,
    not this machine's disk. ``tls`` =
    ``{"key_pem": <key+cert PEM>, "ca_pem": <CA PEM>, "client_auth": "none"|"need"}`` adds a
    TLS port (``server.secure_port``) served by Netty."""
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

    argv = zookeeper_argv("127.0.0.1", extra_config, classpath)
    server = Server("zookeeper", argv, port=port, ready_timeout=60.0, ready=_zookeeper_serving)
    server.secure_port = secure_port
    return server


def _zookeeper_serving(port, host="127.0.0.1"):
    """Whether the server answers the `srvr` four-letter command as a serving server (it
    accepts connections before it has loaded its data)."""
    try:
        with socket.create_connection((host, port), timeout=2) as s:
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


# Credentials of the database servers the tests start (password auth on loopback).
SQL_USER = "tooz"
SQL_PASSWORD = "tooz-secret-pw"
SQL_DATABASE = "tooz"
POSTGRES_BIN = "/usr/lib/postgresql/15/bin"


def _as_postgres():
    """``setpriv`` prefix running a command as the ``postgres`` user (initdb and postgres
    refuse to run as root); empty when not root."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]


def postgres(port=None, tls=None, listen_addresses="127.0.0.1", allow=()):
    """A PostgreSQL 15 cluster from the Debian package, initialised in a temporary directory,
    listening on 127.0.0.1 only (by default), with SCRAM password auth for ``SQL_USER`` (a superuser)
    and database ``SQL_DATABASE``. ``.url`` is its ``postgresql://`` URL. ``tls``: a directory
    made by ``certs.make_pki`` whose server certificate it serves (plain connections stay
    allowed). ``listen_addresses``: PostgreSQL's setting (comma-separated; 127.0.0.1 must be
    among them); ``allow``: address blocks (CIDR) whose clients may log in too (SCRAM, as on
    loopback): tests/partition.py's network namespaces."""
    workdir = tempfile.mkdtemp(prefix="tooz-postgres-")
    tls_args = []
    if tls:
        for name in ("server.crt", "server.key", "ca.pem"):
            shutil.copy(os.path.join(str(tls), name), os.path.join(workdir, name))
        os.chmod(os.path.join(workdir, "server.key"), 0o600)
        tls_args = ["-c", "ssl=on", "-c", "ssl_cert_file=" + os.path.join(workdir, "server.crt"),
                    "-c", "ssl_key_file=" + os.path.join(workdir, "server.key"),
                    "-c", "ssl_ca_file=" + os.path.join(workdir, "ca.pem")]
    data = os.path.join(workdir, "data")
    pwfile = os.path.join(workdir, "pw")
    with open(pwfile, "w") as f:
        f.write(SQL_PASSWORD + "\n")
    if os.geteuid() == 0:
        import pwd

        pg = pwd.getpwnam("postgres")
        for name in os.listdir(workdir):
            os.chown(os.path.join(workdir, name), pg.pw_uid, pg.pw_gid)
        os.chown(workdir, pg.pw_uid, pg.pw_gid)
    subprocess.run(_as_postgres() + [os.path.join(POSTGRES_BIN, "initdb"), "-D", data, "-U", SQL_USER,
                                      "--pwfile", pwfile, "--auth-host=scram-sha-256", "--auth-local=scram-sha-256",
                                      "-E", "UTF8", "--no-sync", "--no-instructions"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if allow:
        with open(os.path.join(data, "pg_hba.conf"), "a") as f:
            for block in allow:
                f.write("host all all %s scram-sha-256\n" % block)

    def argv(port, workdir):
        return _as_postgres() + [os.path.join(POSTGRES_BIN, "postgres"), "-D", data, "-p", str(port),
                                 "-k", workdir, "-c", "listen_addresses=" + listen_addresses, "-c", "fsync=off",
                                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                                 "-c", "max_connections=300", "-c", "shared_buffers=16MB", *tls_args]

    def ready(port):
        # Accepting connections is not enough: the first start also creates the database.
        done = subprocess.run([os.path.join(POSTGRES_BIN, "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)])
        return done.returncode == 0

    server = Server("postgres", argv, port=port, workdir=workdir, ready=ready, ready_timeout=60.0)
    server.url = "postgresql://%s:%s@127.0.0.1:%d/%s" % (SQL_USER, SQL_PASSWORD, server.port, SQL_DATABASE)
    _start = server.start

    def start():
        _start()
        if not getattr(server, "_created", False):
            env = dict(os.environ, PGPASSWORD=SQL_PASSWORD)
            made = subprocess.run([os.path.join(POSTGRES_BIN, "createdb"), "-h", "127.0.0.1", "-p", str(server.port),
                                   "-U", SQL_USER, SQL_DATABASE], env=env, stderr=subprocess.PIPE, text=True)
            if made.returncode != 0 and "already exists" not in made.stderr:
                raise RuntimeError("createdb failed: %s" % made.stderr)
            server._created = True
        return server

    server.start = start
    _stop = server.stop

    def stop(sig=signal.SIGINT):
        # SIGINT is PostgreSQL's "fast" shutdown (sessions are ended); SIGTERM ("smart")
        # would wait for every client to disconnect first.
        _stop(sig)

    server.stop = stop
    return server


def mariadb(port=None, tls=None, bind_address="127.0.0.1"):
    """A MariaDB server from the Debian package, data in a temporary directory, listening on
    127.0.0.1 (by default; and a socket in that directory), with ``SQL_USER``/``SQL_PASSWORD`` allowed
    everything and database ``SQL_DATABASE``. ``.url`` is its ``mysql://`` URL, ``.socket``
    the socket path. ``tls``: a ``certs.make_pki`` directory whose server certificate it
    serves (plain connections stay allowed). ``bind_address``: where it listens (MariaDB
    10.11 takes a comma-separated list; 127.0.0.1 must be in it); ``SQL_USER`` may log in
    from any address (``'tooz'@'%'``)."""
    workdir = tempfile.mkdtemp(prefix="tooz-mariadb-")
    data = os.path.join(workdir, "data")
    socket_path = os.path.join(workdir, "mysqld.sock")
    for attempt in (1, 2):
        # Once seen failing (its stderr was not kept) while other suites started servers in
        # parallel: a second try into a clean directory, and the reason if that fails too.
        shutil.rmtree(data, ignore_errors=True)
        made = subprocess.run(["mariadb-install-db", "--no-defaults", "--datadir=" + data, "--user=root",
                               "--auth-root-authentication-method=socket", "--skip-test-db"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if made.returncode == 0:
            break
        if attempt == 2:
            raise RuntimeError("mariadb-install-db failed (%d): %s" % (made.returncode, made.stderr[-2000:]))
    init = os.path.join(workdir, "init.sql")
    with open(init, "w") as f:
        for host in ("%", "localhost"):
            f.write("CREATE USER IF NOT EXISTS '%s'@'%s' IDENTIFIED BY '%s';\n" % (SQL_USER, host, SQL_PASSWORD))
            f.write("GRANT ALL ON *.* TO '%s'@'%s';\n" % (SQL_USER, host))
        f.write("CREATE DATABASE IF NOT EXISTS %s;\n" % SQL_DATABASE)
    binary = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    tls_args = []
    if tls:
        tls_args = ["--ssl-cert=" + os.path.join(str(tls), "server.crt"),
                    "--ssl-key=" + os.path.join(str(tls), "server.key"),
                    "--ssl-ca=" + os.path.join(str(tls), "ca.pem")]

    def argv(port, workdir):
        return [binary, "--no-defaults", "--datadir=" + data, "--port=%d" % port, "--socket=" + socket_path,
                "--bind-address=" + bind_address, "--user=root", "--init-file=" + init, "--skip-name-resolve",
                "--skip-log-bin", "--innodb-buffer-pool-size=16M", "--max-connections=300",
                "--pid-file=" + os.path.join(workdir, "mariadbd.pid"),
                "--log-error=" + os.path.join(workdir, "error.log")] + tls_args

    server = Server("mariadb", argv, port=port, workdir=workdir, ready_timeout=60.0)
    server.url = "mysql://%s:%s@127.0.0.1:%d/%s" % (SQL_USER, SQL_PASSWORD, server.port, SQL_DATABASE)
    server.socket = socket_path
    return server
