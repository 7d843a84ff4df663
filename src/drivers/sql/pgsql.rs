//! `postgresql://`: locks as PostgreSQL session-level advisory locks, on the key upstream
//! tooz derives from a lock name, so processes on upstream and on ours exclude each other:
//! the first two bytes of `md5(name)`, as two integers 0..=255, given to the two-`int4`
//! forms `pg_try_advisory_lock(a, b)` / `pg_advisory_lock(a, b)` / `pg_advisory_unlock(a, b)`.
//! (So there are only 65 536 distinct locks: two names can share one, as upstream.)
//!
//! URL `postgresql://[user[:password]@]host[:port][/dbname]`; options `host`, `port`, `dbname`
//! override the URL (upstream's), and, as libpq reads them, the `PGHOST`, `PGPORT`, `PGUSER`,
//! `PGPASSWORD`, `PGDATABASE` variables fill in what neither gives. TLS as libpq: `sslmode`
//! (`disable`, `allow`/`prefer` (default), `require`, `verify-ca`, `verify-full`; else
//! `PGSSLMODE`), `sslrootcert`, `sslcert`, `sslkey`.
//!
//! A session's protocol I/O runs on the task of whoever uses it (no task of its own).
//! Waits happen on the server: `pg_advisory_lock` for a blocking acquire, and for a timed one
//! the same under a transaction-local `lock_timeout`; a wait that is abandoned (the caller
//! interrupted) is cancelled on the server through PostgreSQL's cancel request, since a
//! backend waiting for a lock does not notice that its client went away.

use std::time::Duration;

use async_trait::async_trait;
use md5::{Digest, Md5};
use tokio_postgres::config::SslMode;
use tokio_postgres::config::Host;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{CancelToken, Client, Config, SimpleQueryMessage};

use crate::drivers::Options;
use super::session_lock::{Backend, SessionDriver};
use crate::drivers::Url;
use crate::clients::pg_guard::Guarded;
use crate::clients::pg_tls::{MakeRustls, RustlsStream};
use crate::clients::tls::{self, ClientCert, Named, TlsOptions, Verify};
use crate::error::{Error, Result};
use std::pin::Pin;
use std::task::{Context, Poll};

const DEFAULT_PORT: u16 = 5432;
/// libpq's compiled-in socket directory on Debian, used when no host is given anywhere.
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a statement that does not wait for a lock may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server keeps a session it hears nothing from: 10 + 4 × 5 s of keep-alive.
const SESSION_BOUND: Duration = Duration::from_secs(30);
/// SQLSTATE lock_not_available: a timed wait ran out of `lock_timeout`.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// The two integers upstream derives from a lock name.
pub fn advisory_key(name: &[u8]) -> (i32, i32) {
    let digest = Md5::digest(name);
    (i32::from(digest[0]), i32::from(digest[1]))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The name of the user this process runs as (libpq's default user name).
fn os_user() -> Option<String> {
    // SAFETY: getpwuid returns a pointer into static storage or null; copied at once.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() || (*pw).pw_name.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr((*pw).pw_name).to_str().ok().map(str::to_owned)
    }
}

pub struct Pg {
    config: Config,
    tls: MakeRustls,
    /// `host:port`, for messages (never the password).
    target: String,
}

type PgConnection = tokio_postgres::Connection<Guarded<Sock>, RustlsStream<Guarded<Sock>>>;

/// The socket of a session, opened by us (not by `tokio-postgres`) so that what the server
/// sends is bounded from the first byte (`clients/pg_guard.rs`).
enum Sock {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl tokio::io::AsyncRead for Sock {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Sock::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Sock::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Sock {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Sock::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Sock::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Sock::Tcp(s) => Pin::new(s).poll_flush(cx),
            Sock::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Sock::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Sock::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Opens the session's socket to the configured host (TCP, or a Unix socket directory).
async fn open_socket(config: &Config) -> std::io::Result<(Sock, String)> {
    let port = config.get_ports().first().copied().unwrap_or(DEFAULT_PORT);
    match config.get_hosts().first() {
        Some(Host::Unix(dir)) => {
            let sock = tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await?;
            Ok((Sock::Unix(sock), String::new()))
        }
        Some(Host::Tcp(host)) => {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            keep_alive(&tcp, Duration::from_secs(30));
            Ok((Sock::Tcp(tcp), host.clone()))
        }
        None => Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "no PostgreSQL host")),
    }
}

/// Turns on TCP keep-alive probes after `idle` without traffic (what `tokio-postgres` did
/// with `keepalives_idle` when it opened the socket).
fn keep_alive(tcp: &tokio::net::TcpStream, idle: Duration) {
    use std::os::fd::AsRawFd;
    let fd = tcp.as_raw_fd();
    let on: libc::c_int = 1;
    let secs = idle.as_secs().clamp(1, i32::MAX as u64) as libc::c_int;
    let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: setsockopt on a socket we own, with a c_int option value of the given size.
    unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, &on as *const _ as *const libc::c_void, size);
        libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, &secs as *const _ as *const libc::c_void, size);
    }
}

/// One session. Its protocol I/O (`connection`) is driven by whoever runs a statement on it,
/// on that caller's task, rather than by a task of its own: a statement then costs no hand-off
/// between threads (which halves the latency of a lock round trip when Python calls in).
pub struct PgConn {
    client: Client,
    connection: Pin<Box<PgConnection>>,
    /// The connection's I/O has ended (closed or failed): the session is gone.
    ended: bool,
}

impl PgConn {
    /// Runs a statement of `client` while driving the connection's I/O.
    async fn run(&mut self, sql: &str) -> std::result::Result<Vec<SimpleQueryMessage>, Option<tokio_postgres::Error>> {
        if self.ended {
            return Err(None);
        }
        let PgConn { client, connection, ended } = self;
        let query = client.simple_query(sql);
        tokio::pin!(query);
        tokio::select! {
            biased;
            out = &mut query => out.map_err(Some),
            end = connection.as_mut() => {
                *ended = true;
                Err(end.err())
            }
        }
    }
}

/// The error of a statement that failed, or whose connection ended under it (`None`).
fn run_err(context: &str, e: Option<tokio_postgres::Error>) -> Error {
    match e {
        Some(e) => pg_err(context, e),
        None => Error::Connection(format!("{context}: the connection to PostgreSQL is closed")),
    }
}

fn pg_err(context: &str, e: tokio_postgres::Error) -> Error {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            let msg = format!("{context}: {} (SQLSTATE {code})", db.message());
            // 08: connection exceptions; 57P0x: the server is shutting down / restarting.
            if code.starts_with("08") || code.starts_with("57P0") || code == "28P01" || code == "28000" {
                Error::Connection(msg)
            } else {
                Error::Tooz(msg)
            }
        }
        None => Error::Connection(format!("{context}: {e}")),
    }
}

/// Whatever stops a connection from being made is a connection error (as upstream).
fn as_connection(e: Error) -> Error {
    match e {
        Error::Tooz(m) => Error::Connection(m),
        other => other,
    }
}

/// Cancels the query in flight on the server if dropped before [`CancelOnDrop::disarm`].
struct CancelOnDrop {
    token: Option<CancelToken>,
    tls: MakeRustls,
    /// Where the cancel request goes: a socket of its own to the session's server.
    config: Config,
}

impl CancelOnDrop {
    fn disarm(mut self) {
        self.token = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            let (mut tls, config) = (self.tls.clone(), self.config.clone());
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    // The session's socket was opened by us (`connect_raw`), so the token knows
                    // no address: the cancel request goes over a socket opened the same way.
                    let Ok(Ok((sock, host))) = tokio::time::timeout(CONNECT_TIMEOUT, open_socket(&config)).await else { return };
                    if let Ok(tls) = MakeTlsConnect::<Sock>::make_tls_connect(&mut tls, &host) {
                        let _ = tokio::time::timeout(CONNECT_TIMEOUT, token.cancel_query_raw(sock, tls)).await;
                    }
                });
            }
        }
    }
}

impl Pg {
    fn new(url: &Url, options: &Options) -> Result<Pg> {
        let mut config = Config::new();
        let host = options
            .str("host")
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .or_else(|| url.host.clone().filter(|h| !h.is_empty()))
            .or_else(|| env("PGHOST"))
            .unwrap_or_else(|| DEFAULT_SOCKET_DIR.to_owned());
        let port = match options.str("port").filter(|p| !p.is_empty()).map(str::to_owned).or_else(|| {
            if url.port.is_some() {
                None
            } else {
                env("PGPORT")
            }
        }) {
            Some(raw) => raw
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| Error::InvalidArgument(format!("port {raw:?} is not a valid port number")))?,
            None => url.port.unwrap_or(DEFAULT_PORT),
        };
        let dbname = options
            .str("dbname")
            .filter(|d| !d.is_empty())
            .map(str::to_owned)
            .or_else(|| Some(url.path.trim_start_matches('/').to_owned()).filter(|d| !d.is_empty()))
            .or_else(|| env("PGDATABASE"));
        let user = url.username.clone().filter(|u| !u.is_empty()).or_else(|| env("PGUSER")).or_else(os_user);
        let password = url.password.clone().or_else(|| env("PGPASSWORD"));
        let Some(user) = user else {
            return Err(Error::InvalidArgument("no PostgreSQL user name: give one in the URL".into()));
        };
        config.host(&host).port(port).user(&user).application_name("tooz");
        if let Some(db) = &dbname {
            config.dbname(db);
        }
        if let Some(pw) = &password {
            config.password(pw);
        }
        config.connect_timeout(CONNECT_TIMEOUT);
        // The server ends a session whose client's kernel stops answering after SESSION_BOUND
        // (see `session_lock.rs`): its TCP keep-alive probes start after 10 s without a word
        // from us, go every 5 s, and 4 unanswered end it. A live client's kernel answers them,
        // whatever its process does. Settings any user may set, sent with the startup message.
        config.options("-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=4");

        let sslmode = options.str("sslmode").map(str::to_owned).or_else(|| env("PGSSLMODE"));
        let has_root = options.str("sslrootcert").is_some();
        let (mode, verify) = match sslmode.as_deref().unwrap_or("prefer") {
            "disable" => (SslMode::Disable, Verify::Nothing),
            // libpq: without verify-*, the certificate is checked only if a root is given.
            "allow" | "prefer" => (SslMode::Prefer, if has_root { Verify::ChainOnly } else { Verify::Nothing }),
            "require" => (SslMode::Require, if has_root { Verify::ChainOnly } else { Verify::Nothing }),
            "verify-ca" => (SslMode::Require, Verify::ChainOnly),
            "verify-full" => (SslMode::Require, Verify::Full),
            other => {
                return Err(Error::InvalidArgument(format!(
                    "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                )))
            }
        };
        config.ssl_mode(mode);
        let cert = Named::lookup(options, "sslcert");
        let key = Named::lookup(options, "sslkey");
        let client_cert = match (cert, key) {
            (Some(cert), Some(key)) => Some(ClientCert { cert, key }),
            (Some(cert), None) => Some(ClientCert { cert, key: cert }),
            (None, Some(_)) => return Err(Error::InvalidArgument("sslkey needs sslcert".into())),
            (None, None) => None,
        };
        let tls_config = tls::client_config(&TlsOptions {
            ca_file: Named::lookup(options, "sslrootcert"),
            client_cert,
            key_password: None,
            verify,
        })?;
        let target = if host.starts_with('/') { format!("{host}/.s.PGSQL.{port}") } else { format!("{host}:{port}") };
        Ok(Pg { config, tls: MakeRustls::new(tls_config), target })
    }

    async fn bool_query(&self, conn: &mut PgConn, what: &str, sql: &str) -> Result<bool> {
        let rows = tokio::time::timeout(CALL_TIMEOUT, conn.run(sql))
            .await
            .map_err(|_| Error::Connection(format!("{what}: no answer from PostgreSQL at {} within {CALL_TIMEOUT:?}", self.target)))?
            .map_err(|e| run_err(what, e))?;
        for msg in rows {
            if let SimpleQueryMessage::Row(row) = msg {
                return match row.try_get(0).map_err(|e| pg_err(what, e))? {
                    Some("t") => Ok(true),
                    Some("f") => Ok(false),
                    other => Err(Error::Tooz(format!("{what}: unexpected answer {other:?} from PostgreSQL"))),
                };
            }
        }
        Err(Error::Tooz(format!("{what}: PostgreSQL returned no row")))
    }
}

#[async_trait]
impl Backend for Pg {
    type Conn = PgConn;
    type Key = (i32, i32);

    fn product(&self) -> &'static str {
        "PostgreSQL"
    }

    fn logger(&self) -> &'static str {
        "tooz.drivers.pgsql"
    }

    fn key(&self, name: &[u8]) -> Result<(i32, i32)> {
        Ok(advisory_key(name))
    }

    async fn connect(&self) -> Result<PgConn> {
        let connecting = async {
            let (sock, host) = open_socket(&self.config)
                .await
                .map_err(|e| Error::Connection(format!("cannot connect to PostgreSQL at {}: {e}", self.target)))?;
            let tls = MakeTlsConnect::<Guarded<Sock>>::make_tls_connect(&mut self.tls.clone(), &host)
                .map_err(|e| Error::Connection(format!("cannot connect to PostgreSQL at {}: {e}", self.target)))?;
            self.config
                .connect_raw(Guarded::new(sock), tls)
                .await
                .map_err(|e| as_connection(pg_err(&format!("cannot connect to PostgreSQL at {}", self.target), e)))
        };
        let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), connecting)
            .await
            .map_err(|_| Error::Connection(format!("timed out connecting to PostgreSQL at {}", self.target)))??;
        Ok(PgConn { client, connection: Box::pin(connection), ended: false })
    }

    fn is_closed(&self, conn: &PgConn) -> bool {
        conn.ended
    }

    /// Closes the session politely (a Terminate message) on the runtime, when there is one.
    fn discard(&self, conn: PgConn) {
        let PgConn { client, connection, ended } = conn;
        drop(client);
        if ended {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
            });
        }
    }

    async fn try_lock(&self, conn: &mut PgConn, key: &(i32, i32)) -> Result<bool> {
        let sql = format!("SELECT pg_try_advisory_lock({}, {})", key.0, key.1);
        self.bool_query(conn, "pg_try_advisory_lock", &sql).await
    }

    async fn lock(&self, conn: &mut PgConn, key: &(i32, i32), limit: Option<Duration>) -> Result<bool> {
        // One implicit transaction: the local lock_timeout ends with it, the session-level
        // advisory lock does not.
        let sql = match limit {
            None => format!("SELECT pg_advisory_lock({}, {})", key.0, key.1),
            Some(d) => format!(
                "SELECT set_config('lock_timeout', '{}ms', true); SELECT pg_advisory_lock({}, {})",
                d.as_millis().max(1),
                key.0,
                key.1
            ),
        };
        let guard = CancelOnDrop { token: Some(conn.client.cancel_token()), tls: self.tls.clone(), config: self.config.clone() };
        let result = conn.run(&sql).await;
        guard.disarm();
        match result {
            Ok(_) => Ok(true),
            Err(Some(e)) if e.as_db_error().is_some_and(|db| db.code().code() == LOCK_NOT_AVAILABLE) => Ok(false),
            Err(e) => Err(run_err("pg_advisory_lock", e)),
        }
    }

    async fn unlock(&self, conn: &mut PgConn, key: &(i32, i32)) -> Result<bool> {
        let sql = format!("SELECT pg_advisory_unlock({}, {})", key.0, key.1);
        self.bool_query(conn, "pg_advisory_unlock", &sql).await
    }

    fn session_bound(&self) -> Duration {
        SESSION_BOUND
    }

    async fn ping(&self, conn: &mut PgConn) -> Result<()> {
        tokio::time::timeout(CALL_TIMEOUT, conn.run(""))
            .await
            .map_err(|_| Error::Connection("ping: no answer from PostgreSQL".into()))?
            .map_err(|e| run_err("ping", e))?;
        Ok(())
    }
}

/// Locks only, on dedicated connections (`session_lock.rs`).
pub type PostgresDriver = SessionDriver<Pg>;

impl PostgresDriver {
    pub fn new(url: &Url, options: &Options) -> Result<PostgresDriver> {
        Ok(SessionDriver::over(Pg::new(url, options)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_the_first_two_bytes_of_md5() {
        let d = Md5::digest(b"test-lock");
        assert_eq!(advisory_key(b"test-lock"), (i32::from(d[0]), i32::from(d[1])));
        // md5("") = d41d8cd9...
        assert_eq!(advisory_key(b""), (0xd4, 0x1d));
    }

    #[test]
    fn bad_options_are_invalid_arguments() {
        let url = Url { scheme: "postgresql".into(), host: Some("localhost".into()), ..Default::default() };
        let opts = |k: &str, v: &str| Options::new([(k.to_owned(), v.to_owned())].into_iter().collect());
        assert!(matches!(Pg::new(&url, &opts("port", "x")), Err(Error::InvalidArgument(_))));
        assert!(matches!(Pg::new(&url, &opts("sslmode", "sometimes")), Err(Error::InvalidArgument(_))));
        assert!(matches!(Pg::new(&url, &opts("sslrootcert", "/no/such/file")), Err(Error::InvalidArgument(_))));
        assert!(Pg::new(&url, &opts("port", "5433")).is_ok());
    }
}
