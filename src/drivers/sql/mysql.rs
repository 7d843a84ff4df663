//! `mysql://`: locks as MySQL / MariaDB user-level locks, `GET_LOCK(name, timeout)` and
//! `RELEASE_LOCK(name)`, with the lock name sent as the same binary string upstream tooz
//! sends (PyMySQL quotes a bytes name as `_binary'…'`; we send the bytes as a hex literal,
//! which is the same binary string), so processes on upstream and on ours exclude each other.
//!
//! URL `mysql://user:password@host[:port]/dbname` (port 3306); options as upstream:
//! `unix_socket` (then the host is not used), and TLS: `ssl_ca`, `ssl_capath` (a directory
//! of PEM files), `ssl_cert`, `ssl_key`, `ssl_verify_mode` (`none`/`optional`/`required`, or
//! a boolean word), `ssl_check_hostname`; any of them turns TLS on and makes it required.
//! `ssl_cipher` names OpenSSL cipher lists, which rustls has no use for: it is accepted and
//! ignored (the Python driver logs a warning). `ssl_check_hostname=false` is handed to
//! mysql_async, whose rustls verifier does not honour it yet (blackbeam/mysql_async#404).
//!
//! Waits happen on the server, in `GET_LOCK` calls of at most [`WAIT_SLICE`] each (MySQL
//! and MariaDB do not notice that a client has gone while it waits in `GET_LOCK`, so an
//! abandoned wait must end by itself soon).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{ClientIdentity, Conn, OptsBuilder, SslOpts};
use tokio::time::Instant;

use crate::drivers::Options;
use super::session_lock::{Backend, SessionDriver};
use crate::drivers::Url;
use crate::error::{Error, Result};

const DEFAULT_PORT: u16 = 3306;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a statement that does not wait for a lock may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The session's `wait_timeout`: the server ends a session that sends no command for this
/// long (see `session_lock.rs`; a held lock's connection is pinged every third of it).
const SESSION_BOUND: Duration = Duration::from_secs(30);
/// The longest single `GET_LOCK` wait.
pub const WAIT_SLICE: Duration = Duration::from_secs(2);

pub struct My {
    opts: OptsBuilder,
    /// `host:port` or the socket path, for messages (never the password).
    target: String,
}

/// Server error codes that mean the connection (or the server) is gone.
const LOST: &[u16] = &[
    1053, // ER_SERVER_SHUTDOWN
    1152, // ER_ABORTING_CONNECTION
    1158, 1159, 1160, 1161, // network read/write errors and timeouts
    1927, // ER_CONNECTION_KILLED
    2006, 2013, // server has gone away, lost connection
];

fn my_err(context: &str, e: mysql_async::Error) -> Error {
    match &e {
        mysql_async::Error::Server(s) if !LOST.contains(&s.code) => {
            Error::Tooz(format!("{context}: {} (MySQL error {})", s.message, s.code))
        }
        mysql_async::Error::Server(s) => Error::Connection(format!("{context}: {} (MySQL error {})", s.message, s.code)),
        _ => Error::Connection(format!("{context}: {e}")),
    }
}

/// `X'…'`: the name as a binary string literal.
fn hex_literal(name: &[u8]) -> String {
    let mut s = String::with_capacity(name.len() * 2 + 3);
    s.push_str("X'");
    for b in name {
        s.push_str(&format!("{b:02x}"));
    }
    s.push('\'');
    s
}

/// PyMySQL's reading of `ssl_verify_mode`: whether the certificate chain is verified.
fn verify_chain(raw: Option<&str>, has_ca: bool) -> bool {
    match raw.map(|v| v.trim().to_ascii_lowercase()) {
        None => has_ca,
        Some(v) => match v.as_str() {
            "none" | "0" | "false" | "no" => false,
            "optional" | "required" | "1" | "true" | "yes" => true,
            _ => has_ca,
        },
    }
}

/// The PEM files of a CA directory (`ssl_capath`).
fn capath_files(dir: &str) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::InvalidArgument(format!("ssl_capath: cannot read {dir}: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && std::fs::read(p).map(|b| b.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----")).unwrap_or(false))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::InvalidArgument(format!("ssl_capath: no PEM certificate in {dir}")));
    }
    Ok(files)
}

fn readable(option: &str, path: &str) -> Result<PathBuf> {
    std::fs::metadata(path).map_err(|e| Error::InvalidArgument(format!("{option}: cannot read {path}: {e}")))?;
    Ok(PathBuf::from(path))
}

impl My {
    fn new(url: &Url, options: &Options) -> Result<My> {
        let host = url.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| "localhost".to_owned());
        let port = url.port.unwrap_or(DEFAULT_PORT);
        let db = url.path.trim_start_matches('/').to_owned();
        let socket = options.str("unix_socket").filter(|s| !s.is_empty()).map(str::to_owned);
        let mut opts = OptsBuilder::default()
            .ip_or_hostname(host.clone())
            .tcp_port(port)
            .user(url.username.clone())
            .pass(url.password.clone())
            .db_name(Some(db).filter(|d| !d.is_empty()))
            .prefer_socket(false)
            .stmt_cache_size(0)
            // Sent to the server on connecting (the `wait_timeout` option of the builder only
            // tells the client what the server's is).
            .init(vec![format!("SET SESSION wait_timeout = {}", SESSION_BOUND.as_secs())])
            .wait_timeout(Some(SESSION_BOUND.as_secs() as usize))
            .socket(socket.clone());

        let given = |k: &str| options.str(k).filter(|v| !v.is_empty());
        let tls_wanted = ["ssl_ca", "ssl_capath", "ssl_cert", "ssl_key", "ssl_cipher", "ssl_verify_mode", "ssl_check_hostname"]
            .iter()
            .any(|k| given(k).is_some());
        if tls_wanted {
            let mut roots = Vec::new();
            if let Some(ca) = given("ssl_ca") {
                roots.push(readable("ssl_ca", ca)?.into());
            }
            if let Some(dir) = given("ssl_capath") {
                roots.extend(capath_files(dir)?.into_iter().map(Into::into));
            }
            let has_ca = !roots.is_empty();
            let verify = verify_chain(given("ssl_verify_mode"), has_ca);
            // PyMySQL checks the host name only with a CA given and ssl_check_hostname not false.
            let check_hostname = has_ca && verify && options.bool("ssl_check_hostname", true);
            let mut ssl = SslOpts::default()
                .with_root_certs(roots)
                .with_danger_accept_invalid_certs(!verify)
                .with_danger_skip_domain_validation(!check_hostname);
            match (given("ssl_cert"), given("ssl_key")) {
                (Some(cert), key) => {
                    let cert_path = readable("ssl_cert", cert)?;
                    let key_path = match key {
                        Some(k) => readable("ssl_key", k)?,
                        None => cert_path.clone(),
                    };
                    ssl = ssl.with_client_identity(Some(ClientIdentity::new(cert_path.into(), key_path.into())));
                }
                (None, Some(_)) => return Err(Error::InvalidArgument("ssl_key needs ssl_cert".into())),
                (None, None) => {}
            }
            opts = opts.ssl_opts(Some(ssl));
        }
        let target = match &socket {
            Some(path) => path.clone(),
            None => format!("{host}:{port}"),
        };
        Ok(My { opts, target })
    }

    /// One statement returning one integer or NULL.
    async fn scalar(&self, conn: &mut Conn, what: &str, sql: &str, budget: Duration) -> Result<Option<i64>> {
        let row: Option<Option<i64>> = tokio::time::timeout(budget, conn.query_first(sql))
            .await
            .map_err(|_| Error::Connection(format!("{what}: no answer from MySQL at {} within {budget:?}", self.target)))?
            .map_err(|e| my_err(what, e))?;
        Ok(row.flatten())
    }

    async fn get_lock(&self, conn: &mut Conn, name: &str, seconds: f64) -> Result<bool> {
        let sql = format!("SELECT GET_LOCK({name}, {seconds:.3})");
        match self.scalar(conn, "GET_LOCK", &sql, CALL_TIMEOUT + Duration::from_secs_f64(seconds)).await? {
            Some(1) => Ok(true),
            Some(_) => Ok(false),
            None => Err(Error::Tooz("GET_LOCK: got a NULL answer from the database".into())),
        }
    }
}

#[async_trait]
impl Backend for My {
    type Conn = Conn;
    /// The name as an SQL binary string literal.
    type Key = String;

    fn product(&self) -> &'static str {
        "MySQL"
    }

    fn logger(&self) -> &'static str {
        "tooz.drivers.mysql"
    }

    fn key(&self, name: &[u8]) -> Result<String> {
        Ok(hex_literal(name))
    }

    async fn connect(&self) -> Result<Conn> {
        tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(self.opts.clone()))
            .await
            .map_err(|_| Error::Connection(format!("timed out connecting to MySQL at {}", self.target)))?
            .map_err(|e| Error::Connection(my_err(&format!("cannot connect to MySQL at {}", self.target), e).to_string()))
    }

    fn is_closed(&self, _conn: &Conn) -> bool {
        // mysql_async cannot tell without a round trip; a dead pooled connection is
        // replaced after its first failure.
        false
    }

    async fn try_lock(&self, conn: &mut Conn, key: &String) -> Result<bool> {
        self.get_lock(conn, key, 0.0).await
    }

    async fn lock(&self, conn: &mut Conn, key: &String, limit: Option<Duration>) -> Result<bool> {
        let deadline = limit.map(|d| Instant::now() + d);
        loop {
            let slice = match deadline {
                None => WAIT_SLICE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    left.min(WAIT_SLICE)
                }
            };
            let began = Instant::now();
            if self.get_lock(conn, key, slice.as_secs_f64()).await? {
                return Ok(true);
            }
            // A server that rounds fractional timeouts down would answer at once: do not
            // turn that into a busy loop.
            if began.elapsed() < slice / 2 {
                tokio::time::sleep((slice / 2).min(Duration::from_millis(50))).await;
            }
        }
    }

    async fn unlock(&self, conn: &mut Conn, key: &String) -> Result<bool> {
        let sql = format!("SELECT RELEASE_LOCK({key})");
        Ok(self.scalar(conn, "RELEASE_LOCK", &sql, CALL_TIMEOUT).await? == Some(1))
    }

    fn session_bound(&self) -> Duration {
        SESSION_BOUND
    }

    async fn ping(&self, conn: &mut Conn) -> Result<()> {
        tokio::time::timeout(CALL_TIMEOUT, conn.ping())
            .await
            .map_err(|_| Error::Connection("ping: no answer from MySQL".into()))?
            .map_err(|e| my_err("ping", e))
    }
}

/// Locks only, on dedicated connections (`session_lock.rs`).
pub type MySqlDriver = SessionDriver<My>;

impl MySqlDriver {
    pub fn new(url: &Url, options: &Options) -> Result<MySqlDriver> {
        Ok(SessionDriver::over(My::new(url, options)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_binary_literals() {
        assert_eq!(hex_literal(b"ab\x00'\xff"), "X'61620027ff'");
        assert_eq!(hex_literal(b"lock"), "X'6c6f636b'");
    }

    #[test]
    fn verify_mode_as_pymysql_reads_it() {
        assert!(!verify_chain(None, false));
        assert!(verify_chain(None, true));
        assert!(!verify_chain(Some("none"), true));
        assert!(verify_chain(Some("Required"), false));
        assert!(verify_chain(Some("optional"), false));
        assert!(verify_chain(Some("bogus"), true));
        assert!(!verify_chain(Some("bogus"), false));
    }

    #[test]
    fn bad_tls_files_are_invalid_arguments() {
        let url = Url { scheme: "mysql".into(), host: Some("localhost".into()), ..Default::default() };
        let opts = |k: &str, v: &str| Options::new([(k.to_owned(), v.to_owned())].into_iter().collect());
        for (k, v) in [("ssl_ca", "/no/such/ca.pem"), ("ssl_capath", "/no/such/dir"), ("ssl_cert", "/no/such/c.pem"), ("ssl_key", "/k")] {
            assert!(matches!(My::new(&url, &opts(k, v)), Err(Error::InvalidArgument(_))), "{k}");
        }
        assert!(My::new(&url, &opts("ssl_cipher", "AES256")).is_ok());
    }
}
