"""PostgreSQL and MySQL/MariaDB backends: what the capability suite does not cover.

Both run against real servers the session starts (tests/servers.py). Interop with upstream
tooz (psycopg2 / PyMySQL in .venv-upstream) is in tests/test_interop.py and here (the key
derivation, the binary lock names); faults (killed holders, server restarts) are here.
"""

import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import pytest

import tooz
from tooz import coordination

from conftest import Peer, assert_green_wait_withdrawn, new_id, with_options

SQL = ["postgresql", "mysql"]


@pytest.fixture(params=SQL)
def sql(request):
    """(name, url) of a SQL backend."""
    server = request.getfixturevalue("postgres_server" if request.param == "postgresql" else "mariadb_server")
    return request.param, server.url


@pytest.fixture
def coordinators():
    made = []

    def make(url, member=None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            c = coordination.get_coordinator(url, member or new_id())
        c.start()
        made.append(c)
        return c

    yield make
    for c in made:
        if c.is_started:
            c.stop()


def _pg_query(server, sql):
    """Runs ``sql`` with psql as the test user; returns its unaligned output."""
    from servers import POSTGRES_BIN, SQL_DATABASE, SQL_PASSWORD, SQL_USER

    out = subprocess.run([os.path.join(POSTGRES_BIN, "psql"), "-h", "127.0.0.1", "-p", str(server.port), "-U", SQL_USER,
                          "-d", SQL_DATABASE, "-At", "-c", sql], env=dict(os.environ, PGPASSWORD=SQL_PASSWORD),
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _my_query(server, sql):
    from servers import SQL_DATABASE, SQL_PASSWORD, SQL_USER

    out = subprocess.run(["mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", str(server.port), "-u", SQL_USER,
                          "-p" + SQL_PASSWORD, "-D", SQL_DATABASE, "-N", "-B", "-e", sql],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


# ------------------------------------------------------------------ the server-side identity

def test_pg_lock_is_the_advisory_lock_upstream_derives(postgres_server, coordinators):
    """md5(name)[0], md5(name)[1] as the two int4 keys: what pg_locks shows while we hold it."""
    c = coordinators(postgres_server.url)
    name = new_id("l")
    lock = c.get_lock(name)
    assert lock.acquire()
    d = hashlib.md5(name).digest()
    rows = _pg_query(postgres_server, "SELECT classid, objid, objsubid FROM pg_locks WHERE locktype = 'advisory' "
                                      "AND granted AND classid = %d AND objid = %d" % (d[0], d[1]))
    # objsubid 2 = the two-int4 form of the advisory lock functions.
    assert rows == "%d|%d|2" % (d[0], d[1])
    assert _pg_query(postgres_server, "SELECT pg_try_advisory_lock(%d, %d)" % (d[0], d[1])) == "f"
    assert lock.release()
    assert _pg_query(postgres_server, "SELECT pg_try_advisory_lock(%d, %d)" % (d[0], d[1])) == "t"


def test_mysql_lock_is_get_lock_on_the_binary_name(mariadb_server, coordinators):
    c = coordinators(mariadb_server.url)
    name = new_id("l") + b"\xff\x00'"
    lock = c.get_lock(name)
    assert lock.acquire()
    hex_name = name.hex()
    assert _my_query(mariadb_server, "SELECT IS_FREE_LOCK(X'%s')" % hex_name) == "0"
    assert lock.release()
    assert _my_query(mariadb_server, "SELECT IS_FREE_LOCK(X'%s')" % hex_name) == "1"


# ------------------------------------------------------------------ API surface

def test_groups_and_watchers_are_not_implemented(sql, coordinators):
    c = coordinators(sql[1])
    g = new_id("g")
    for call in (lambda: c.create_group(g), lambda: c.get_groups(), lambda: c.join_group(g),
                 lambda: c.get_members(g), lambda: c.leave_group(g), lambda: c.delete_group(g),
                 lambda: c.watch_join_group(g, print), lambda: c.watch_leave_group(g, print),
                 lambda: c.watch_elected_as_leader(g, print), lambda: c.run_watchers(),
                 lambda: c.get_lock(new_id("l")).break_()):
        with pytest.raises(tooz.NotImplemented):
            call()
    assert c.requires_beating is False
    assert c.heartbeat() is None


def test_postgresql_keeps_the_deprecation_warning(postgres_server):
    with pytest.warns(DeprecationWarning, match="deprecated"):
        c = coordination.get_coordinator(postgres_server.url, b"m")
    assert type(c).__name__ == "PostgresDriver"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        coordination.get_coordinator(postgres_server.url.replace("postgresql", "mysql"), b"m")


def test_kubernetes_is_refused_clearly():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(tooz.ToozError, match="kubernetes backend is not supported"):
            coordination.get_coordinator("kubernetes://?namespace=x", b"m")


def test_locks_work_without_start(sql):
    """As upstream, a lock object opens its own connection: start() is not needed for it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        c = coordination.get_coordinator(sql[1], new_id())
    lock = c.get_lock(new_id("l"))
    assert lock.acquire(blocking=False)
    assert lock.release()


def test_lock_name_round_trips(sql, coordinators):
    c = coordinators(sql[1])
    name = new_id("l")
    assert c.get_lock(name).name == name


def test_pg_options_override_the_url(postgres_server, coordinators):
    from servers import SQL_DATABASE, SQL_PASSWORD, SQL_USER

    url = "postgresql://%s:%s@nowhere.invalid:1/nodb?host=127.0.0.1&port=%d&dbname=%s" % (
        SQL_USER, SQL_PASSWORD, postgres_server.port, SQL_DATABASE)
    c = coordinators(url)
    lock = c.get_lock(new_id("l"))
    assert lock.acquire(blocking=False)
    lock.release()


def test_pg_unix_socket_host(postgres_server, coordinators):
    from servers import SQL_DATABASE, SQL_PASSWORD, SQL_USER

    url = "postgresql://%s:%s@/%s?host=%s&port=%d" % (SQL_USER, SQL_PASSWORD, SQL_DATABASE, postgres_server.workdir,
                                                     postgres_server.port)
    lock = coordinators(url).get_lock(new_id("l"))
    assert lock.acquire(blocking=False)
    lock.release()


def test_mysql_unix_socket_option(mariadb_server, coordinators):
    url = with_options(mariadb_server.url.replace("127.0.0.1", "nowhere.invalid"), unix_socket=mariadb_server.socket)
    lock = coordinators(url).get_lock(new_id("l"))
    assert lock.acquire(blocking=False)
    lock.release()


def test_mysql_tls_required_but_not_offered(mariadb_server):
    """Any ssl_* option makes TLS required; this test server has none: a clear error."""
    c = coordination.get_coordinator(with_options(mariadb_server.url, ssl_verify_mode="none"), b"m")
    with pytest.raises(coordination.ToozConnectionError):
        c.start()


def test_pg_tls_required_but_not_offered(postgres_server):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        c = coordination.get_coordinator(with_options(postgres_server.url, sslmode="require"), b"m")
    with pytest.raises(coordination.ToozConnectionError):
        c.start()


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("which", ["password", "user", "database", "port", "host"])
def test_bad_urls_and_credentials(sql, which):
    from servers import free_port

    scheme, url = sql
    secret = "pw-" + new_id().decode()
    if which == "password":
        url = url.replace("tooz-secret-pw", secret)
    elif which == "user":
        url = url.replace("tooz:", "nobody:")
    elif which == "database":
        url = url.rsplit("/", 1)[0] + "/no_such_db"
    elif which == "port":
        url = "%s://tooz:%s@127.0.0.1:%d/tooz" % (scheme, secret, free_port())
    else:
        url = "%s://tooz:%s@nowhere.invalid/tooz" % (scheme, secret)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        c = coordination.get_coordinator(url, b"m")
    began = time.monotonic()
    with pytest.raises(coordination.ToozConnectionError) as e:
        c.start()
    assert time.monotonic() - began < 15
    assert secret not in str(e.value) and secret not in repr(c)
    with pytest.raises(coordination.ToozConnectionError):
        c.get_lock(new_id("l")).acquire(blocking=False)


@pytest.mark.parametrize("options", [{"port": "x"}, {"sslmode": "sometimes"}, {"sslrootcert": "/no/such.pem"}])
def test_bad_pg_options(postgres_server, options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(coordination.ToozInvalidArgument):
            coordination.get_coordinator(postgres_server.url, b"m", **options)


@pytest.mark.parametrize("options", [{"ssl_ca": "/no/such.pem"}, {"ssl_capath": "/no/such/dir"},
                                     {"ssl_cert": "/no/such.pem"}, {"ssl_key": "/k.pem"}])
def test_bad_mysql_options(mariadb_server, options):
    with pytest.raises(coordination.ToozInvalidArgument):
        coordination.get_coordinator(mariadb_server.url, b"m", **options)


def test_mysql_ssl_cipher_is_ignored_with_a_warning(mariadb_server, caplog):
    caplog.set_level(logging.WARNING, logger="tooz.drivers.mysql")
    coordination.get_coordinator(with_options(mariadb_server.url, ssl_cipher="AES256-SHA"), b"m")
    assert "ssl_cipher is ignored" in caplog.text


def test_too_long_mysql_name_is_a_tooz_error(mariadb_server, coordinators):
    """MariaDB refuses user lock names over 64 characters: a ToozError, as upstream."""
    lock = coordinators(mariadb_server.url).get_lock(b"x" * 200)
    with pytest.raises(tooz.ToozError):
        lock.acquire(blocking=False)
    assert lock.acquired is False


# ------------------------------------------------------------------ waits

def test_timed_wait_gives_up_on_time(sql, coordinators):
    c = coordinators(sql[1])
    name = new_id("l")
    holder = c.get_lock(name)
    assert holder.acquire()
    for blocking, timeout in ((0.4, None), (True, 0.4)):
        began = time.monotonic()
        assert c.get_lock(name).acquire(blocking=blocking, timeout=timeout) is False
        assert 0.35 <= time.monotonic() - began < 3
    holder.release()


def test_blocking_wait_is_woken_by_a_release_in_another_process(sql, coordinators):
    c = coordinators(sql[1])
    name = new_id("l")
    holder = Peer(sql[1], new_id("peer"))
    try:
        holder.call("lock = c.get_lock(%r)" % name)
        assert holder.call("lock.acquire()") is True
        got = []
        waiter = threading.Thread(target=lambda: got.append(c.get_lock(name).acquire()))
        waiter.start()
        time.sleep(0.3)
        assert got == []
        began = time.monotonic()
        holder.call("lock.release()")
        waiter.join(10)
        assert got == [True]
        assert time.monotonic() - began < 1, "the server hands the lock over at once, no polling"
    finally:
        holder.close()


def test_same_object_is_not_reentrant(sql, coordinators):
    lock = coordinators(sql[1]).get_lock(new_id("l"))
    assert lock.acquire()
    assert lock.acquire(blocking=False) is False
    assert lock.acquire(blocking=0.2) is False
    released = threading.Timer(0.3, lock.release)
    released.start()
    assert lock.acquire(blocking=5) is True, "a blocking acquire waits for the object's own release"
    assert lock.release()


def test_killed_waiter_does_not_keep_the_lock(sql, coordinators):
    """A process waiting for a lock is killed; once the holder lets go, a third party gets
    the lock (the dead waiter's session does not end up holding it)."""
    c = coordinators(sql[1])
    name = new_id("l")
    holder = c.get_lock(name)
    assert holder.acquire()
    code = ("import sys\nfrom tooz import coordination\n"
            "c = coordination.get_coordinator(%r, b'w'); c.start()\n"
            "print('waiting', flush=True)\nc.get_lock(%r).acquire()\n" % (sql[1], name))
    waiter = subprocess.Popen([sys.executable, "-W", "ignore", "-c", code], stdout=subprocess.PIPE, text=True)
    assert waiter.stdout.readline().strip() == "waiting"
    time.sleep(0.5)
    os.kill(waiter.pid, signal.SIGKILL)
    waiter.wait()
    holder.release()
    other = coordinators(sql[1]).get_lock(name)
    assert other.acquire(blocking=5)
    other.release()


def _waiting_sessions(scheme, server):
    """How many server sessions are waiting for a lock right now."""
    if scheme == "postgresql":
        return int(_pg_query(server, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"))
    return int(_my_query(server, "SELECT count(*) FROM information_schema.processlist "
                                 "WHERE info LIKE 'SELECT GET_LOCK%' AND id <> CONNECTION_ID()"))


def test_interrupted_wait_is_cancelled_on_the_server(sql, coordinators, request):
    """Ctrl-C during a blocking acquire raises KeyboardInterrupt, and the wait does not go on
    on the server (PostgreSQL: cancelled at once; MySQL: the current GET_LOCK slice ends)."""
    scheme, url = sql
    server = _server_of(request, scheme)
    c = coordinators(url)
    name = new_id("l")
    holder = coordinators(url).get_lock(name)
    assert holder.acquire()
    waiter = c.get_lock(name)
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        waiter.acquire()
    assert waiter.acquired is False
    deadline = time.monotonic() + 5
    while _waiting_sessions(scheme, server):
        assert time.monotonic() < deadline, "the abandoned wait goes on on the server"
        time.sleep(0.1)
    holder.release()
    assert waiter.acquire(blocking=False), "nobody else got it"
    waiter.release()


@pytest.mark.parametrize("how", ["kill", "timeout"])
def test_a_withdrawn_green_wait_is_cancelled_on_the_server(sql, coordinators, request, how):
    """eventlet.Timeout or kill() in a greenthread waiting for a lock: the wait does not go on
    on the server while its process lives on."""
    pytest.importorskip("eventlet")
    scheme, url = sql
    server = _server_of(request, scheme)
    name = new_id("l")
    holder = coordinators(url).get_lock(name)
    assert holder.acquire()
    assert_green_wait_withdrawn(url, name, holder, lambda: coordinators(url).get_lock(name),
                                lambda: _waiting_sessions(scheme, server), how)

# ------------------------------------------------------------------ lost connections

def _kill_sessions_of(scheme, server):
    """Terminates every server session of the test user except the one doing it."""
    if scheme == "postgresql":
        _pg_query(server, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE usename = 'tooz' AND pid <> pg_backend_pid()")
    else:
        ids = _my_query(server, "SELECT id FROM information_schema.processlist WHERE user = 'tooz' "
                                "AND id <> CONNECTION_ID()").split()
        for i in ids:
            try:
                _my_query(server, "KILL %s" % i)
            except subprocess.CalledProcessError:
                pass


def _server_of(request, scheme):
    return request.getfixturevalue("postgres_server" if scheme == "postgresql" else "mariadb_server")


def test_killed_session_loses_the_lock_visibly(sql, coordinators, caplog, request):
    """The server ends our session (an admin, a failover): the lock is gone and we say so:
    is_still_owner() False, a warning in the driver's log and the on_lost callbacks (once),
    release() False, and the lock can be taken again."""
    scheme, url = sql
    server = _server_of(request, scheme)
    logger = "tooz.drivers.pgsql" if scheme == "postgresql" else "tooz.drivers.mysql"
    caplog.set_level(logging.WARNING, logger=logger)
    c = coordinators(url)
    name = new_id("l")
    lock = c.get_lock(name)
    lost = []
    lock.on_lost(lost.append)
    assert lock.acquire()
    assert lock.is_still_owner() is True
    _kill_sessions_of(scheme, server)
    other = coordinators(url).get_lock(name)
    assert other.acquire(blocking=5), "the server freed the lock with the session"
    assert lock.is_still_owner() is False
    # The record and the callback come through the core's Python-calling thread.
    deadline = time.monotonic() + 5
    while not (lost and "was lost" in caplog.text) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lost == [lock]
    assert "was lost" in caplog.text and name.decode() in caplog.text
    assert lock.acquired is False
    assert lock.release() is False
    other.release()
    assert lock.acquire(blocking=False), "the lock object works again on a new connection"
    lock.release()


def test_server_restart_during_a_wait_then_recovery(request, tmp_path):
    """Each SQL server is restarted while one of our processes waits for a lock: the wait
    ends with a tooz error (no hang), then the same coordinator takes locks again."""
    import servers

    for make in (servers.postgres, servers.mariadb):
        server = make().start()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                c = coordination.get_coordinator(server.url, new_id())
            c.start()
            name = new_id("l")
            holder = coordination.get_coordinator(server.url, new_id())
            hold = holder.get_lock(name)
            assert hold.acquire()
            outcome = []
            waiting = c.get_lock(name)

            def wait():
                try:
                    outcome.append(waiting.acquire(blocking=True))
                except Exception as e:  # noqa: BLE001 - checked below
                    outcome.append(e)

            waiter = threading.Thread(target=wait)
            waiter.start()
            time.sleep(0.5)
            server.stop()
            waiter.join(20)
            assert not waiter.is_alive(), "the wait hung through the server's stop"
            [result] = outcome
            if result is True:
                # A race of the shutdown, seen once in CI on PostgreSQL: the server ended the
                # holder's session first and granted the waiter's lock before ending its
                # session too. The grant was real; the lock went with the session, so letting
                # it go may fail, but only with a tooz error.
                try:
                    waiting.release()
                except tooz.ToozError:
                    pass
            else:
                assert isinstance(result, tooz.ToozError), result
                assert isinstance(result, coordination.ToozConnectionError), result
            assert hold.is_still_owner() is False, "the holder's session died with the server"
            with pytest.raises(coordination.ToozConnectionError):
                c.get_lock(new_id("l")).acquire(blocking=False)
            server.start()
            lock = c.get_lock(name)
            assert lock.acquire(blocking=5), "a new connection after the restart"
            assert lock.is_still_owner()
            assert lock.release()
            c.stop()
        finally:
            server.close()


def test_forked_child_does_not_share_the_parents_locks(sql, coordinators):
    c = coordinators(sql[1])
    name = new_id("l")
    lock = c.get_lock(name)
    assert lock.acquire()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            ok = lock.acquired is False and lock.release() is False
            other = c.get_lock(name)
            ok = ok and other.acquire(blocking=False) is False
            fresh = c.get_lock(new_id("l"))
            ok = ok and fresh.acquire(blocking=False) and fresh.release()
            os.write(w, b"ok" if ok else b"bad")
        finally:
            os._exit(0)
    os.close(w)
    reply = os.read(r, 10)
    os.waitpid(pid, 0)
    assert reply == b"ok"
    assert lock.is_still_owner(), "the parent's connection survived the child"
    assert lock.release()


def test_passwords_stay_out_of_logs(sql, caplog):
    caplog.set_level(logging.DEBUG)
    scheme, url = sql
    bad = url.replace("tooz-secret-pw", "wrong-" + new_id().decode())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        c = coordination.get_coordinator(bad, b"m")
    with pytest.raises(coordination.ToozConnectionError):
        c.start()
    assert "wrong-" not in caplog.text and "tooz-secret-pw" not in caplog.text


def test_upstream_and_ours_agree_on_the_pg_key(postgres_server, upstream_python):
    """Upstream (psycopg2) holds a lock; pg_locks shows the same two keys ours derives."""
    name = new_id("l")
    code = ("import sys, warnings\nwarnings.simplefilter('ignore')\nfrom tooz import coordination\n"
            "c = coordination.get_coordinator(%r, b'u'); c.start()\nl = c.get_lock(%r)\n"
            "assert l.acquire()\nprint('held', flush=True)\nsys.stdin.readline()\n" % (postgres_server.url, name))
    proc = subprocess.Popen([upstream_python, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        d = hashlib.md5(name).digest()
        assert _pg_query(postgres_server, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                                          "AND classid = %d AND objid = %d AND objsubid = 2" % (d[0], d[1])) == "1"
    finally:
        proc.kill()
        proc.wait()



def test_killed_upstream_holder_frees_the_lock_for_ours(sql, coordinators, upstream_python):
    """Upstream tooz (psycopg2 / PyMySQL) holds a lock and is SIGKILLed: the server frees it
    and ours gets it at once; while it lived, ours could not."""
    scheme, url = sql
    name = new_id("l")
    code = ("import sys, time, warnings\nwarnings.simplefilter('ignore')\nfrom tooz import coordination\n"
            "c = coordination.get_coordinator(%r, b'u'); c.start()\nl = c.get_lock(%r)\n"
            "assert l.acquire()\nprint('held', flush=True)\ntime.sleep(600)\n" % (url, name))
    proc = subprocess.Popen([upstream_python, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        lock = coordinators(url).get_lock(name)
        assert lock.acquire(blocking=0.3) is False
        proc.kill()
        proc.wait()
        began = time.monotonic()
        assert lock.acquire(blocking=5)
        assert time.monotonic() - began < 1
        lock.release()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------ TLS

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA and a server certificate for ``localhost`` only: reached as 127.0.0.1 the name
    does not match, reached as localhost it does, so the chain and the name checks can be
    told apart; and a second, unrelated CA."""
    import certs

    served = certs.make_pki(tmp_path_factory.mktemp("pki"), san="DNS:localhost")
    other = certs.make_pki(tmp_path_factory.mktemp("pki-other"))
    return served, other


@pytest.fixture(scope="module")
def tls_servers(pki):
    import servers

    pg = servers.postgres(tls=pki[0]).start()
    my = servers.mariadb(tls=pki[0]).start()
    yield pg, my
    pg.close()
    my.close()


def _pg_tls_sessions(server):
    return int(_pg_query(server, "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) "
                                 "WHERE application_name = 'tooz' AND ssl"))


def _start_fails(url):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        c = coordination.get_coordinator(url, b"m")
    with pytest.raises(coordination.ToozConnectionError):
        c.start()


def _lock_works(coordinators, url):
    lock = coordinators(url).get_lock(new_id("l"))
    assert lock.acquire(blocking=False)
    assert lock.release()


def test_pg_tls(tls_servers, pki, coordinators):
    pg, _ = tls_servers
    served, other = pki
    ca = served / "ca.pem"
    before = _pg_tls_sessions(pg)
    # verify-ca checks the chain only; with a client certificate too.
    url = with_options(pg.url, sslmode="verify-ca", sslrootcert=ca, sslcert=served / "client.crt",
                       sslkey=served / "client.key")
    lock = coordinators(url).get_lock(new_id("l"))
    assert lock.acquire()
    assert _pg_tls_sessions(pg) > before, "the session is encrypted"
    lock.release()
    _start_fails(with_options(pg.url, sslmode="verify-full", sslrootcert=ca))  # not 127.0.0.1's certificate
    _lock_works(coordinators, with_options(pg.url.replace("127.0.0.1", "localhost"), sslmode="verify-full",
                                           sslrootcert=ca))
    _start_fails(with_options(pg.url, sslmode="verify-ca", sslrootcert=other / "ca.pem"))
    _lock_works(coordinators, with_options(pg.url, sslmode="require"))  # encrypted, unchecked (libpq)


def test_pg_tls_preferred_by_default(tls_servers, coordinators):
    """Like libpq, sslmode defaults to prefer: a server that offers TLS gets it."""
    pg, _ = tls_servers
    before = _pg_tls_sessions(pg)
    lock = coordinators(pg.url).get_lock(new_id("l"))
    assert lock.acquire()
    assert _pg_tls_sessions(pg) > before
    lock.release()


def _my_ssl_accepts(server):
    return int(_my_query(server, "SHOW GLOBAL STATUS LIKE 'Ssl_accepts'").split()[1])


def test_mysql_tls(tls_servers, pki, coordinators):
    _, my = tls_servers
    served, other = pki
    ca = served / "ca.pem"
    by_name = my.url.replace("127.0.0.1", "localhost")
    before = _my_ssl_accepts(my)
    _lock_works(coordinators, with_options(by_name, ssl_ca=ca, ssl_cert=served / "client.crt",
                                           ssl_key=served / "client.key"))
    assert _my_ssl_accepts(my) > before, "the connection used TLS"
    capath = served / "capath"
    capath.mkdir(exist_ok=True)
    (capath / "ca.pem").write_bytes(ca.read_bytes())
    _lock_works(coordinators, with_options(by_name, ssl_capath=capath))
    _start_fails(with_options(my.url, ssl_ca=ca))  # the certificate does not name 127.0.0.1
    _start_fails(with_options(by_name, ssl_ca=other / "ca.pem"))
    _lock_works(coordinators, with_options(my.url, ssl_ca=other / "ca.pem", ssl_verify_mode="none"))


@pytest.mark.xfail(strict=True, reason="mysql_async 0.37.1 ignores skip_domain_validation with rustls 0.23 "
                                       "(blackbeam/mysql_async#404, fixed by #408, not yet released)")
def test_mysql_tls_without_host_name_check(tls_servers, pki, coordinators):
    _, my = tls_servers
    _lock_works(coordinators, with_options(my.url, ssl_ca=pki[0] / "ca.pem", ssl_check_hostname="false"))
