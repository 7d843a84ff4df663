//! A small asynchronous memcached client (text protocol) for the memcached driver.
//!
//! Only what the driver needs: `get`/`gets` (several keys per request), `set`, `add`, `cas`,
//! `delete`, `touch`, with flags and expiry; and, on servers that have them (1.6.10 and
//! later), the meta commands of `meta.rs`, several of which can go out in one write. Requests go out on a pooled connection (plain TCP
//! or TLS), one request at a time per connection; a connection that fails, times out or
//! hears something unexpected is dropped, never reused, so the pool heals by itself once the
//! server is back. An idle connection the server has closed (a restart) is noticed before it
//! is reused and replaced, so the first request after a restart does not fail.
//!
//! Replies are parsed by [`parse_reply`], a pure function over the bytes received so far, so
//! the parser is unit-tested without a server and cannot panic on whatever arrives.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::error::{Error, Result};
use crate::pool::{Idle, Shelf};
use crate::runtime;

mod later;
pub use later::Check;
pub mod meta;
pub mod tls;
mod wire;
pub use wire::*;

// ------------------------------------------------------------------------ connections

/// How to reach the server.
#[derive(Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    /// Budget of one request, connecting included; `None`: no limit.
    pub timeout: Option<Duration>,
    pub max_pool_size: Option<usize>,
    pub tls: Option<Arc<tls::TlsSettings>>,
    /// Logger name and description of this client for connection-loss records (`crate::log`).
    pub log_as: (String, String),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Room made in a connection's buffer before each read. Reads go straight into the buffer's
/// spare capacity: no bounce buffer on the stack, where it would also sit in every request's
/// future (zeroed, and copied whenever the future moves).
const READ_SIZE: usize = 16 << 10;

/// How a connection's bytes move.
enum Transport {
    /// Registered with the runtime's I/O driver: TLS, and plain sockets used from runtime
    /// threads.
    Async(Box<dyn Io>),
    /// A plain socket the runtime's epoll does not watch: a caller's thread
    /// (`runtime::on_caller_thread`) writes and reads it itself, blocking. A socket
    /// registered with the runtime's epoll would wake a runtime thread at every reply, even
    /// though the caller reads it: one needless thread switch per round trip. A runtime
    /// worker may use one too (the checked-later line, shared by a caller's `heartbeat()`
    /// and the heart's task): it registers it only while it waits for bytes.
    Blocking(std::net::TcpStream),
}

struct Conn {
    /// Requests go out in one write and replies are read into `buf`: no buffering layers.
    io: Transport,
    buf: Vec<u8>,
    /// The socket of a plain (not TLS) async connection, read directly while spinning.
    fd: Option<std::os::fd::RawFd>,
    /// Requests in a row whose reply did not come within the spin (a distant server): past
    /// a few, the spin is only tried now and then, so it costs next to nothing there.
    spin_misses: u32,
}

fn conn_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Connection(format!("{what}: {e}"))
}

impl Conn {
    /// A TCP connection to the server through the runtime, without delay.
    async fn connect(cfg: &Config) -> Result<TcpStream> {
        let tcp = TcpStream::connect((cfg.host.as_str(), cfg.port))
            .await
            .map_err(|e| conn_err(&format!("cannot connect to memcached at {}:{}", cfg.host, cfg.port), e))?;
        tcp.set_nodelay(true).ok();
        Ok(tcp)
    }

    async fn open(cfg: &Config) -> Result<Conn> {
        let tcp = Conn::connect(cfg).await?;
        let fd = cfg.tls.is_none().then(|| tcp.as_raw_fd());
        let io: Box<dyn Io> = match &cfg.tls {
            None => Box::new(tcp),
            Some(settings) => Box::new(settings.connect(&cfg.host, tcp).await?),
        };
        Ok(Conn { io: Transport::Async(io), buf: Vec::new(), fd, spin_misses: 0 })
    }

    /// A plain connection for a caller's thread ([`Transport::Blocking`]); connecting, each
    /// write and each wait for reply bytes are bounded by the request budget.
    fn open_blocking(cfg: &Config) -> Result<Conn> {
        use std::net::ToSocketAddrs;
        let addr = format!("{}:{}", cfg.host, cfg.port);
        let cannot = |e: std::io::Error| conn_err(&format!("cannot connect to memcached at {addr}"), e);
        let mut last = None;
        for sa in (cfg.host.as_str(), cfg.port).to_socket_addrs().map_err(cannot)? {
            let tried = match cfg.timeout {
                Some(limit) => std::net::TcpStream::connect_timeout(&sa, limit.max(Duration::from_millis(1))),
                None => std::net::TcpStream::connect(sa),
            };
            match tried {
                Ok(tcp) => {
                    tcp.set_nodelay(true).ok();
                    return Conn::blocking(tcp, cfg).map_err(cannot);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(cannot(last.unwrap_or_else(|| std::io::Error::other("the name resolved to no address"))))
    }

    /// On a runtime worker: watches the socket for up to [`runtime::SPIN`] until `wanted`
    /// whole replies are in, before the request goes to sleep on the runtime: a local or
    /// same-rack server answers within that, and waking a parked thread through the runtime's
    /// I/O driver costs more than the wait itself. (A caller's thread blocks in `poll(2)`
    /// instead: `Conn::block_for_replies`.) Bytes go to `self.buf` as the async path would put
    /// them; anything unusual (EOF, an error) is left for that path to find and report.
    fn spin_for_replies(&mut self, fd: std::os::fd::RawFd, wanted: usize) {
        runtime::spin_until(runtime::SPIN, || match recv_now(fd, &mut self.buf) {
            Ok(0) => true,
            Ok(_) => replies_in(&self.buf, wanted),
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        });
    }

    /// Waits for more bytes on a blocking socket (its receive timeout bounds the wait) and
    /// appends them to `buf`.
    fn read_more_blocking(fd: std::os::fd::RawFd, buf: &mut Vec<u8>) -> Result<()> {
        loop {
            match recv_into(fd, buf, 0) {
                Ok(0) => return Err(closed()),
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Err(Error::Connection("memcached did not answer in time".into()));
                }
                Err(e) => return Err(conn_err("memcached read failed", e)),
            }
        }
    }

    /// [`Conn::read_more_blocking`] on a runtime worker, which must not block: the socket is
    /// registered with the runtime for this wait only.
    async fn read_more_watched(fd: std::os::fd::RawFd, buf: &mut Vec<u8>) -> Result<()> {
        loop {
            // SAFETY: `fd` is the socket of the connection this wait borrows mutably.
            unsafe { runtime::fd_ready(fd, tokio::io::Interest::READABLE) }.await.map_err(|e| conn_err("memcached read failed", e))?;
            match recv_now(fd, buf) {
                Ok(0) => return Err(closed()),
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(conn_err("memcached read failed", e)),
            }
        }
    }

    /// Whether the server has closed this idle connection (or sent something unasked).
    fn is_stale(&mut self) -> bool {
        self.read_ready().is_err() || !self.buf.is_empty()
    }

    async fn send(&mut self, request: &[u8]) -> Result<()> {
        let failed = |e| conn_err("memcached write failed", e);
        match &mut self.io {
            Transport::Async(io) => {
                io.write_all(request).await.map_err(failed)?;
                io.flush().await.map_err(failed)
            }
            Transport::Blocking(tcp) => std::io::Write::write_all(tcp, request).map_err(failed),
        }
    }

    /// Sends `request` (`n` requests in one write) and reads their `n` replies, in order.
    async fn roundtrip(&mut self, request: &[u8], n: usize) -> Result<Vec<Reply>> {
        self.send(request).await?;
        self.buf.clear();
        if let Some(fd) = self.fd {
            self.spin_misses = self.spin_misses.saturating_add(1);
            if self.spin_misses <= 16 || self.spin_misses % 32 == 0 {
                self.spin_for_replies(fd, n);
                if replies_in(&self.buf, n) {
                    self.spin_misses = 0;
                }
            }
        }
        let mut replies = Vec::with_capacity(n);
        // Replies are parsed where they lie, and the parsed ones dropped from the buffer only
        // before it grows: many pipelined replies cost no quadratic moving of the rest.
        let mut at = 0;
        while replies.len() < n {
            match self.reply_at(at)? {
                Some((reply, used)) => {
                    replies.push(reply);
                    at += used;
                }
                None => {
                    self.buf.drain(..at);
                    at = 0;
                    self.read_more().await?;
                }
            }
        }
        self.buf.drain(..at);
        if !self.buf.is_empty() {
            return Err(Error::Tooz("memcached sent more replies than requests".into()));
        }
        Ok(replies)
    }

    /// The first whole reply in `buf`, taken out of it (`None`: more bytes are needed).
    fn take_reply(&mut self) -> Result<Option<Reply>> {
        let found = self.reply_at(0)?;
        Ok(found.map(|(reply, used)| {
            self.buf.drain(..used);
            reply
        }))
    }

    /// The whole reply at `at` in `buf`, and its length (`None`: more bytes are needed).
    fn reply_at(&self, at: usize) -> Result<Option<(Reply, usize)>> {
        match parse_reply(&self.buf[at..]) {
            Ok(Some(found)) => Ok(Some(found)),
            Ok(None) => Ok(None),
            Err(ReplyError::Server(m)) => Err(Error::Tooz(m)),
            Err(ReplyError::Garbage(m)) => Err(Error::Tooz(format!("memcached protocol error: {m}"))),
        }
    }

    /// A connection whose socket the runtime watches only while a worker waits on it
    /// ([`Transport::Blocking`]): plain TCP, connected blocking from a caller's thread, else
    /// through the runtime (a worker must not block on a connect); TLS stays async.
    async fn open_unwatched(cfg: &Config) -> Result<Conn> {
        if cfg.tls.is_some() {
            return Conn::open(cfg).await;
        }
        if runtime::on_caller_thread() {
            return Conn::open_blocking(cfg);
        }
        // Deregistered from the runtime's epoll; blocking again, as a caller's would be.
        let keep = |e| conn_err("cannot keep the memcached connection", e);
        let tcp = Conn::connect(cfg).await?.into_std().map_err(keep)?;
        tcp.set_nonblocking(false).map_err(keep)?;
        Conn::blocking(tcp, cfg).map_err(keep)
    }

    /// A [`Transport::Blocking`] connection over `tcp`: each write and each wait for reply
    /// bytes bounded by the request budget.
    fn blocking(tcp: std::net::TcpStream, cfg: &Config) -> std::io::Result<Conn> {
        let limit = cfg.timeout.map(|t| t.max(Duration::from_millis(1)));
        tcp.set_write_timeout(limit)?;
        tcp.set_read_timeout(limit)?;
        Ok(Conn { io: Transport::Blocking(tcp), buf: Vec::new(), fd: None, spin_misses: 0 })
    }

    /// Waits for more bytes and appends them to `buf`.
    async fn read_more(&mut self) -> Result<()> {
        let io = match &mut self.io {
            Transport::Async(io) => io,
            // Off the runtime's context (nothing to register with), a blocking wait too.
            Transport::Blocking(tcp) if runtime::on_caller_thread() || tokio::runtime::Handle::try_current().is_err() => {
                return Self::read_more_blocking(tcp.as_raw_fd(), &mut self.buf);
            }
            Transport::Blocking(tcp) => return Self::read_more_watched(tcp.as_raw_fd(), &mut self.buf).await,
        };
        self.buf.reserve(READ_SIZE);
        let n = io.read_buf(&mut self.buf).await.map_err(|e| conn_err("memcached read failed", e))?;
        if n == 0 {
            return Err(closed());
        }
        Ok(())
    }

    /// Appends to `buf` what has already arrived, without waiting; the end of the stream or a
    /// failure is an error.
    fn read_ready(&mut self) -> Result<()> {
        let io = match &mut self.io {
            Transport::Async(io) => io,
            Transport::Blocking(tcp) => return read_ready_blocking(tcp.as_raw_fd(), &mut self.buf),
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            self.buf.reserve(READ_SIZE);
            let len = self.buf.len();
            let mut got = tokio::io::ReadBuf::uninit(self.buf.spare_capacity_mut());
            let n = match Pin::new(&mut *io).poll_read(&mut cx, &mut got) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Err(e)) => return Err(conn_err("memcached read failed", e)),
                Poll::Ready(Ok(())) => got.filled().len(),
            };
            if n == 0 {
                return Err(closed());
            }
            // SAFETY: poll_read initialised and filled the first `n` bytes of the spare capacity.
            unsafe { self.buf.set_len(len + n) };
        }
    }
}

fn closed() -> Error {
    Error::Connection("memcached closed the connection unexpectedly".into())
}

/// One `recv(2)` into `buf`'s spare room: the bytes read (0 at the end of the stream).
fn recv_into(fd: std::os::fd::RawFd, buf: &mut Vec<u8>, flags: libc::c_int) -> std::io::Result<usize> {
    buf.reserve(READ_SIZE);
    let spare = buf.spare_capacity_mut();
    // SAFETY: `fd` is a socket its connection owns, alive for this call; `spare` is the
    // vector's unused capacity, `spare.len()` bytes that recv may write.
    let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), flags) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: recv wrote the first `n` bytes of the spare capacity (n <= its length).
    unsafe { buf.set_len(buf.len() + n as usize) };
    Ok(n as usize)
}

/// [`recv_into`] that does not wait: `WouldBlock` when nothing is there (or a signal came).
fn recv_now(fd: std::os::fd::RawFd, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    recv_into(fd, buf, libc::MSG_DONTWAIT).map_err(|e| if e.kind() == std::io::ErrorKind::Interrupted { std::io::ErrorKind::WouldBlock.into() } else { e })
}

/// `read_ready` of a blocking socket.
fn read_ready_blocking(fd: std::os::fd::RawFd, buf: &mut Vec<u8>) -> Result<()> {
    loop {
        match recv_now(fd, buf) {
            Ok(0) => return Err(closed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(conn_err("memcached read failed", e)),
        }
    }
}

/// Plain connections of callers' threads that stopped clients left for the next client of the
/// same server and request budget (see `Shelf`).
static SHELF: Shelf<(String, u16, Option<Duration>), Conn> = Shelf::new();

/// A pool of connections to one memcached server.
pub struct Client {
    cfg: Config,
    idle: Idle<Conn>,
    /// Plain connections of callers' threads (`Transport::Blocking`).
    idle_blocking: Idle<Conn>,
    slots: Option<Arc<Semaphore>>,
    /// Connections found closed by the server or dropped on a failure (the server may have
    /// restarted and forgotten everything).
    lost: std::sync::atomic::AtomicU64,
    health: crate::log::Health,
    /// The connection of requests whose replies are checked later (`later.rs`).
    later: later::Later,
    /// Whether the server takes meta commands (`meta.rs`), once asked.
    meta: meta::Support,
}

impl Client {
    pub fn new(cfg: Config) -> Client {
        let slots = cfg.max_pool_size.map(|n| Arc::new(Semaphore::new(n.max(1))));
        Client {
            health: crate::log::Health::new(cfg.log_as.0.clone(), cfg.log_as.1.clone()),
            cfg,
            idle: Idle::default(),
            idle_blocking: Idle::default(),
            slots,
            lost: std::sync::atomic::AtomicU64::new(0),
            later: later::Later::new(),
            meta: meta::Support::default(),
        }
    }

    /// How many connections were lost so far (see `lost`).
    pub fn connections_lost(&self) -> u64 {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn note_lost(&self) {
        self.lost.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Drops every idle connection (busy ones are dropped when their request ends).
    pub fn close(&self) {
        self.later.close();
        self.meta.forget();
        drop(self.idle.drain());
        drop(self.idle_blocking.drain());
    }

    /// A client's last request: `delete <key> noreply`, written on a connection already open
    /// (a new one only if none is), then every connection dropped. Nothing waits for the
    /// server: what `stop` sends, as upstream does.
    pub async fn delete_then_close(&self, key: &[u8]) -> Result<()> {
        check_key(key)?;
        let request = [b"delete ", key, b" noreply\r\n"].concat();
        let open = [&self.idle_blocking, &self.idle].into_iter().find_map(|pool| pool.take().and_then(|mut c| (!c.is_stale()).then_some(c)));
        let sent = match open {
            // A few bytes into an idle socket's empty send buffer: a blocking one does not
            // block here either.
            Some(mut conn) => {
                let sent = self.with_timeout("delete", conn.send(&request)).await;
                if sent.is_ok() && matches!(conn.io, Transport::Blocking(_)) {
                    SHELF.put(self.shelf_key(), conn);
                }
                sent
            }
            None => self.delete(key).await.map(drop),
        };
        self.close();
        sent
    }

    fn shelf_key(&self) -> (String, u16, Option<Duration>) {
        (self.cfg.host.clone(), self.cfg.port, self.cfg.timeout)
    }

    /// The error of a request that used up its budget.
    fn too_late(&self, what: &str, limit: Duration) -> Error {
        Error::Connection(format!(
            "memcached at {}:{} did not answer {what} within {:.3}s",
            self.cfg.host,
            self.cfg.port,
            limit.as_secs_f64()
        ))
    }

    async fn with_timeout<T>(&self, what: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
        match self.cfg.timeout {
            None => fut.await,
            Some(limit) => tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| Err(self.too_late(what, limit))),
        }
    }

    /// Sends one request and reads its reply.
    pub async fn request(&self, what: &str, request: &[u8]) -> Result<Reply> {
        let mut replies = self.pipeline(what, request, 1).await?;
        replies.pop().ok_or_else(|| Error::Tooz(format!("memcached sent no reply to {what}")))
    }

    /// Sends `n` requests in one write (`request` holds them back to back) and reads their
    /// replies, in request order: one round trip. From a caller's thread over plain TCP, on
    /// a blocking connection (its socket bounds the wait); otherwise on an async one.
    pub async fn pipeline(&self, what: &str, request: &[u8], n: usize) -> Result<Vec<Reply>> {
        let deadline = self.cfg.timeout.map(|t| std::time::Instant::now() + t);
        let blocking = self.cfg.tls.is_none() && runtime::on_caller_thread();
        let exchange = async {
            let _slot = match &self.slots {
                Some(s) => Some(s.clone().acquire_owned().await.map_err(|e| Error::Tooz(e.to_string()))?),
                None => None,
            };
            let pool = if blocking { &self.idle_blocking } else { &self.idle };
            let mut conn = loop {
                let shelved = || blocking.then(|| SHELF.take(&self.shelf_key(), |c| !c.is_stale())).flatten();
                match pool.take().or_else(shelved) {
                    Some(mut c) => {
                        if !c.is_stale() {
                            break c;
                        }
                        self.note_lost();
                    }
                    None if blocking => break Conn::open_blocking(&self.cfg)?,
                    // Boxed: the connect (and TLS handshake) state stays out of every request's future.
                    None => break Box::pin(Conn::open(&self.cfg)).await?,
                }
            };
            let replies = conn.roundtrip(request, n).await?;
            drop(pool.put(conn, usize::MAX));
            Ok(replies)
        };
        let out = match (blocking, self.cfg.timeout) {
            (true, Some(limit)) => exchange.await.map_err(|e| match e {
                Error::Connection(_) if deadline.is_some_and(|d| std::time::Instant::now() >= d) => self.too_late(what, limit),
                other => other,
            }),
            (true, None) => exchange.await,
            (false, _) => self.with_timeout(what, exchange).await,
        };
        self.record(&out);
        out
    }

    /// Notes how a request went: a connection failure counts as a lost connection.
    fn record<T>(&self, out: &Result<T>) {
        match out {
            Err(e @ Error::Connection(_)) => {
                self.note_lost();
                self.health.lost(e);
            }
            _ => self.health.up(),
        }
    }

    fn unexpected(what: &str, reply: Reply) -> Error {
        Error::Tooz(format!("unexpected memcached reply to {what}: {reply:?}"))
    }

    /// `get` (or `gets`) of several keys; the items found, in no particular order.
    pub async fn get_many(&self, keys: &[&[u8]], with_cas: bool) -> Result<Vec<Item>> {
        let mut out = Vec::new();
        for chunk in keys.chunks(MAX_KEYS_PER_GET) {
            let mut req = Vec::with_capacity(8 + chunk.iter().map(|k| k.len() + 1).sum::<usize>());
            req.extend_from_slice(if with_cas { b"gets" } else { b"get" });
            for key in chunk {
                check_key(key)?;
                req.push(b' ');
                req.extend_from_slice(key);
            }
            req.extend_from_slice(b"\r\n");
            match self.request("get", &req).await? {
                Reply::Values(items) => out.extend(items),
                other => return Err(Self::unexpected("get", other)),
            }
        }
        Ok(out)
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<Item>> {
        Ok(self.get_many(&[key], false).await?.into_iter().find(|i| i.key == key))
    }

    pub async fn gets(&self, key: &[u8]) -> Result<Option<Item>> {
        Ok(self.get_many(&[key], true).await?.into_iter().find(|i| i.key == key))
    }

    /// `set` (always stores) or `add` (stores only if absent); true when stored.
    pub async fn store(&self, kind: Store, key: &[u8], flags: u32, exptime: u32, data: &[u8]) -> Result<bool> {
        check_key(key)?;
        let what = if kind == Store::Set { "set" } else { "add" };
        match self.request(what, &storage_request(kind, key, flags, exptime, data, None)).await? {
            Reply::Stored => Ok(true),
            Reply::NotStored => Ok(false),
            other => Err(Self::unexpected(what, other)),
        }
    }

    /// `cas`: true when stored; false when the item changed or vanished since `gets`.
    pub async fn cas(&self, key: &[u8], flags: u32, exptime: u32, data: &[u8], cas: u64) -> Result<bool> {
        check_key(key)?;
        match self.request("cas", &storage_request(Store::Set, key, flags, exptime, data, Some(cas))).await? {
            Reply::Stored => Ok(true),
            Reply::Exists | Reply::NotFound => Ok(false),
            other => Err(Self::unexpected("cas", other)),
        }
    }

    /// True when the key existed.
    pub async fn delete(&self, key: &[u8]) -> Result<bool> {
        check_key(key)?;
        match self.request("delete", &delete_request(key)).await? {
            Reply::Deleted => Ok(true),
            Reply::NotFound => Ok(false),
            other => Err(Self::unexpected("delete", other)),
        }
    }

    /// `incr`: the new value, or `None` when the key does not exist.
    pub async fn incr(&self, key: &[u8], by: u64) -> Result<Option<u64>> {
        check_key(key)?;
        let mut req = b"incr ".to_vec();
        req.extend_from_slice(key);
        req.extend_from_slice(format!(" {by}\r\n").as_bytes());
        match self.request("incr", &req).await? {
            Reply::Number(n) => Ok(Some(n)),
            Reply::NotFound => Ok(None),
            other => Err(Self::unexpected("incr", other)),
        }
    }

    /// Resets the key's expiry; true when the key existed.
    pub async fn touch(&self, key: &[u8], exptime: u32) -> Result<bool> {
        check_key(key)?;
        let mut req = b"touch ".to_vec();
        req.extend_from_slice(key);
        req.extend_from_slice(format!(" {exptime}\r\n").as_bytes());
        match self.request("touch", &req).await? {
            Reply::Touched => Ok(true),
            Reply::NotFound => Ok(false),
            other => Err(Self::unexpected("touch", other)),
        }
    }
}
