//! The connections of a `redis://` coordinator and its locks: how requests reach the server.
//!
//! * One multiplexed connection (redis-rs) for calls polled by the runtime (the asyncio API,
//!   calls sent without waiting). After a connection error it is replaced (with Sentinel,
//!   re-resolved to the current master) and the call is retried once. Over plain TCP its
//!   socket is ours, and what the server sends on it is bounded (`resp::Bounded`).
//! * Connections of our own (`clients::resp`) for a call a Python thread waits on
//!   ([`runtime::on_caller_thread`]) or polls briefly on its thread (an eventlet
//!   greenthread's, `runtime::brief_budget`): the caller writes the request and reads the
//!   reply itself (in `ppoll(2)`, so the kernel wakes that thread when the reply arrives,
//!   where the multiplexed connection hands the request to its driver task on a runtime
//!   thread and the reply back: two thread switches a call); a green moment's wait goes on on
//!   the runtime, on the same connection, once the moment is over. A pool keeps one per
//!   concurrently calling thread; a connection is only ever used by one call at a time. Plain
//!   TCP with RESP2 only, one command or script at a time, and what a reply may hold is
//!   bounded there (the `redis` crate's connections buffer whatever length a server
//!   announces).
//! * Blocking connections (redis-rs) for what a Python thread waits on that ours cannot send:
//!   pipelines, and TLS or Unix-socket servers. Not used with Sentinel (the master is found
//!   through the async client).
//!
//! [`Link::epoch`] moves whenever a connection of either kind is lost: the server's memory
//! may have gone with it, and the coordinator re-joins its groups.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};

use crate::clients::resp;
use crate::error::{Error, Result};
use crate::pool::Idle;
use crate::runtime::{self, PerImage};

/// How many idle blocking connections a coordinator keeps.
const IDLE_BLOCKING: usize = 8;

/// How to find the server: one address, or the current master named by Sentinel.
pub(super) enum Target {
    Direct(Client),
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
}

pub(super) fn redis_err(context: &str, e: redis::RedisError) -> Error {
    let lost = e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || e.code() == Some("READONLY")
        || e.code() == Some("MASTERDOWN")
        || e.code() == Some("LOADING");
    if lost {
        Error::Connection(format!("{context}: {e}"))
    } else {
        Error::Tooz(format!("{context}: {e}"))
    }
}

/// The connections shared by a coordinator and its locks.
pub(super) struct Link {
    target: Target,
    config: AsyncConnectionConfig,
    call_timeout: Duration,
    connect_timeout: Duration,
    /// The multiplexed connection of this process image (a forked child's copy of its
    /// parent's has its driver task on the parent's runtime: it would never answer).
    current: Mutex<PerImage<Option<MultiplexedConnection>>>,
    /// Idle blocking connections.
    idle: Idle<redis::Connection>,
    /// Where and how connections of our own connect (plain TCP, RESP2), and the idle ones.
    own: Option<OwnTarget>,
    idle_own: Idle<resp::Conn>,
    /// Connections lost so far.
    losses: AtomicU64,
    health: crate::log::Health,
    /// The master Sentinel named last (a change is a failover, logged).
    master: Mutex<Option<String>>,
}

/// What a connection of our own needs to connect.
struct OwnTarget {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

impl OwnTarget {
    fn of(target: &Target) -> Option<OwnTarget> {
        let Target::Direct(client) = target else { return None };
        let info = client.get_connection_info();
        let redis::ConnectionAddr::Tcp(host, port) = info.addr() else { return None };
        let settings = info.redis_settings();
        if settings.protocol() != redis::ProtocolVersion::RESP2 {
            return None;
        }
        Some(OwnTarget {
            host: host.clone(),
            port: *port,
            username: settings.username().map(str::to_owned),
            password: settings.password().map(str::to_owned),
            db: settings.db(),
        })
    }
}

/// A call as a connection of our own sends it.
pub(super) enum Request<'a> {
    Cmd(&'a redis::Cmd),
    /// `EVALSHA`, and `EVAL` of the source when the server has not cached the script.
    Script { hash: &'a str, source: &'a str, keys: &'a [&'a [u8]], args: &'a [&'a [u8]] },
}

impl Request<'_> {
    async fn run(&self, conn: &mut resp::Conn) -> redis::RedisResult<redis::Value> {
        match self {
            Request::Cmd(cmd) => conn.exchange(&cmd.get_packed_command()).await,
            Request::Script { hash, source, keys, args } => {
                let packed = |verb: &str, body: &str| {
                    let mut cmd = redis::cmd(verb);
                    cmd.arg(body).arg(keys.len()).arg(*keys).arg(*args);
                    cmd.get_packed_command()
                };
                match conn.exchange(&packed("EVALSHA", hash)).await {
                    Err(e) if e.code() == Some("NOSCRIPT") => conn.exchange(&packed("EVAL", source)).await,
                    other => other,
                }
            }
        }
    }
}

impl Link {
    pub(super) fn new(target: Target, call_timeout: Duration, connect_timeout: Duration, health: crate::log::Health) -> Link {
        let own = OwnTarget::of(&target);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(call_timeout));
        Link {
            target,
            config,
            call_timeout,
            connect_timeout,
            current: Mutex::new(PerImage::new()),
            idle: Idle::default(),
            own,
            idle_own: Idle::default(),
            losses: AtomicU64::new(0),
            health,
            master: Mutex::new(None),
        }
    }

    /// Moves each time a connection is lost.
    pub(super) fn epoch(&self) -> u64 {
        self.losses.load(Ordering::SeqCst)
    }

    async fn connect(&self) -> Result<MultiplexedConnection> {
        let client = match &self.target {
            Target::Direct(c) => c.clone(),
            Target::Sentinel(s) => s
                .lock()
                .await
                .async_get_client()
                .await
                .map_err(|e| redis_err("cannot find the master through Sentinel", e))?,
        };
        if let Target::Sentinel(_) = &self.target {
            let now = client.get_connection_info().addr().to_string();
            let before = self.master.lock().unwrap_or_else(|p| p.into_inner()).replace(now.clone());
            if before.as_ref().is_some_and(|b| b != &now) {
                crate::log::emit(
                    crate::log::Level::Warning,
                    "tooz.drivers.redis",
                    format!("Sentinel failover: the master is now {now} (was {})", before.unwrap_or_default()),
                );
            }
        }
        let connecting = async {
            match &self.own {
                // Plain TCP: over a socket of ours whose replies are bounded (`resp::Bounded`).
                Some(own) => {
                    let tcp = tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect((own.host.as_str(), own.port)))
                        .await
                        .map_err(|_| Error::Connection("timed out connecting to Redis".into()))?
                        .map_err(|e| Error::Connection(format!("cannot connect to Redis: {e}")))?;
                    let _ = tcp.set_nodelay(true);
                    let settings = client.get_connection_info().redis_settings();
                    let (conn, driver) = MultiplexedConnection::new_with_config(settings, resp::Bounded::new(tcp), self.config.clone())
                        .await
                        .map_err(|e| redis_err("cannot connect to Redis", e))?;
                    runtime::runtime().spawn(driver);
                    Ok(conn)
                }
                None => client
                    .get_multiplexed_async_connection_with_config(&self.config)
                    .await
                    .map_err(|e| redis_err("cannot connect to Redis", e)),
            }
        };
        let conn = tokio::time::timeout(self.call_timeout, connecting)
            .await
            .map_err(|_| Error::Connection("timed out connecting to Redis".into()))??;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()).get() = Some(conn.clone());
        Ok(conn)
    }

    async fn conn(&self) -> Result<MultiplexedConnection> {
        let existing = self.current.lock().unwrap_or_else(|p| p.into_inner()).get().clone();
        match existing {
            Some(c) => Ok(c),
            None => self.connect().await,
        }
    }

    /// Closes every connection (start and stop); the next call connects afresh.
    pub(super) fn forget(&self) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()).get() = None;
        drop(self.idle.drain());
        drop(self.idle_own.drain());
    }

    /// A request on the multiplexed connection went unanswered too long (a lease renewal's
    /// budget, `lock/lease.rs`): the next call connects afresh rather than queueing behind it.
    pub(super) fn drop_stuck(&self) {
        self.lost();
    }

    /// A connection failed: the next call uses a new one, and the epoch moves.
    fn lost(&self) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()).get() = None;
        self.losses.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether this call may use a blocking connection.
    fn blocking(&self) -> bool {
        matches!(self.target, Target::Direct(_)) && runtime::on_caller_thread()
    }

    /// Runs a command on a connection and returns its reply: `sync` on a blocking connection
    /// from a caller's thread, `own` on a connection of our own when polled briefly on one,
    /// `op` on the multiplexed one otherwise. After a connection error, once more on a fresh
    /// connection.
    pub(super) async fn call<T, S, F, Fut>(&self, what: &str, sync: S, op: F, own: Option<Request<'_>>) -> Result<T>
    where
        T: redis::FromRedisValue,
        S: Fn(&mut redis::Connection) -> redis::RedisResult<T>,
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        // Our own connections serve the caller's thread (blocking, or a green moment); their
        // replies are bounded (`clients/resp.rs`). What they cannot send (pipelines, TLS,
        // Unix sockets, Sentinel) goes through the `redis` crate's.
        let own = own.zip(self.own.as_ref()).filter(|_| runtime::brief_budget().is_some() || runtime::on_caller_thread());
        let mut last = None;
        for _attempt in 0..2 {
            let outcome = match &own {
                Some((request, target)) => self.call_own(what, target, request).await,
                None if self.blocking() => self.call_blocking(what, &sync),
                None => self.call_async(what, &op).await,
            };
            match outcome {
                Ok(v) => {
                    self.health.up();
                    return Ok(v);
                }
                Err(e @ Error::Connection(_)) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        let err = last.unwrap_or_else(|| Error::Connection(format!("{what}: Redis is unreachable")));
        self.health.lost(&err);
        Err(err)
    }

    async fn call_async<T, F, Fut>(&self, what: &str, op: &F) -> Result<T>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.conn().await?;
        match tokio::time::timeout(self.call_timeout, op(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let err = redis_err(what, e);
                if matches!(err, Error::Connection(_)) {
                    self.lost();
                }
                Err(err)
            }
            Err(_) => {
                self.lost();
                Err(Error::Connection(format!("{what}: timed out after {:?}", self.call_timeout)))
            }
        }
    }

    /// [`Link::call`] on a connection of our own: one from the idle ones, or a new one.
    async fn call_own<T: redis::FromRedisValue>(&self, what: &str, own: &OwnTarget, request: &Request<'_>) -> Result<T> {
        let exchange = async {
            let mut conn = match self.idle_own.take() {
                Some(c) => c,
                None => {
                    let open = resp::Conn::open(
                        &own.host,
                        own.port,
                        own.username.as_deref(),
                        own.password.as_deref(),
                        own.db,
                        self.call_timeout,
                    );
                    tokio::time::timeout(self.connect_timeout, open)
                        .await
                        .map_err(|_| Error::Connection("timed out connecting to Redis".into()))?
                        .map_err(|e| redis_err("cannot connect to Redis", e))?
                }
            };
            let value = request.run(&mut conn).await;
            if conn.usable() {
                drop(self.idle_own.put(conn, IDLE_BLOCKING));
            }
            value.and_then(|v| T::from_redis_value(v).map_err(redis::RedisError::from)).map_err(|e| redis_err(what, e))
        };
        match tokio::time::timeout(self.call_timeout, exchange).await {
            Ok(Err(e @ Error::Connection(_))) => {
                self.losses.fetch_add(1, Ordering::SeqCst);
                Err(e)
            }
            Ok(out) => out,
            Err(_) => {
                self.losses.fetch_add(1, Ordering::SeqCst);
                Err(Error::Connection(format!("{what}: timed out after {:?}", self.call_timeout)))
            }
        }
    }

    fn call_blocking<T, S>(&self, what: &str, sync: &S) -> Result<T>
    where
        S: Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    {
        let mut conn = match self.idle.take() {
            Some(c) => c,
            None => self.open_blocking()?,
        };
        match sync(&mut conn) {
            Ok(v) => {
                // Past IDLE_BLOCKING idle ones, closed.
                drop(self.idle.put(conn, IDLE_BLOCKING));
                Ok(v)
            }
            Err(e) => {
                let err = redis_err(what, e);
                if matches!(err, Error::Connection(_)) {
                    // Dropped: after a timeout its next reply could be this one's.
                    self.losses.fetch_add(1, Ordering::SeqCst);
                } else {
                    drop(self.idle.put(conn, IDLE_BLOCKING));
                }
                Err(err)
            }
        }
    }

    fn open_blocking(&self) -> Result<redis::Connection> {
        let Target::Direct(client) = &self.target else {
            return Err(Error::Connection("no blocking connection through Sentinel".into()));
        };
        let conn = client
            .get_connection_with_timeout(self.connect_timeout)
            .map_err(|e| redis_err("cannot connect to Redis", e))?;
        conn.set_read_timeout(Some(self.call_timeout)).map_err(|e| redis_err("cannot set a socket timeout", e))?;
        conn.set_write_timeout(Some(self.call_timeout)).map_err(|e| redis_err("cannot set a socket timeout", e))?;
        Ok(conn)
    }
}
