//! One Redis request at a time over a plain TCP socket that the caller's thread writes and
//! reads itself: for a call polled briefly on that thread ([`runtime::brief_budget`]: an
//! eventlet-patched process's greenthread, which may hold its OS thread about as long as a
//! green socket call would), and for a call a Python thread waits on with the GIL released
//! ([`runtime::on_caller_thread`]), which sleeps in `ppoll(2)` as a blocking socket's read
//! would. In the brief moment the reply is awaited first without sleeping ([`runtime::SPIN`]:
//! a near server's reply comes sooner than a sleeping CPU wakes), then in `ppoll(2)`; past it,
//! the wait goes on through the runtime's reactor, registered for that wait only, so the call
//! can move to a runtime thread without blocking anyone.
//!
//! What one reply may make it hold is bounded ([`MAX_LINE`], [`MAX_BULK`]): a server that
//! announces a 2 GiB string or sends an endless line is refused at once, where the `redis`
//! crate's own connections would buffer whatever they are told.
//!
//! Requests are packed and replies parsed by the `redis` crate; this only moves the bytes and
//! finds where a RESP2 reply ends ([`reply_len`], a pure function, unit-tested). The
//! multiplexed connection hands each request to a driver task on a runtime thread and the
//! reply back (two thread switches and an epoll wake-up a call); this costs neither when the
//! reply comes within the moment.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use redis::{ErrorKind, RedisError, RedisResult, Value};

use crate::runtime;

/// Bytes read at once.
const READ_SIZE: usize = 16 << 10;
/// Longest line of a reply (a status, an error, a length) before it counts as garbage.
pub const MAX_LINE: usize = 64 << 10;
/// Longest bulk string of a reply: far above anything tooz stores or reads (capabilities,
/// member ids), far below what would hurt the process.
pub const MAX_BULK: i64 = 16 << 20;

/// A plain connection to one Redis server.
pub struct Conn {
    tcp: std::net::TcpStream,
    buf: Vec<u8>,
    /// A request of it failed other than by the server's error reply: not to be used again.
    broken: bool,
    /// How long a caller's thread waits for the socket in one go before the call fails (the
    /// `socket_timeout`, as a blocking socket's).
    limit: Duration,
}

fn io_err(e: std::io::Error) -> RedisError {
    RedisError::from(e)
}

fn garbage(what: &'static str) -> RedisError {
    RedisError::from((ErrorKind::Parse, what))
}

impl Conn {
    /// Connects through the runtime (a connect does not block the caller), then authenticates
    /// and selects `db` as the `redis` crate's connections do (RESP2).
    pub async fn open(host: &str, port: u16, username: Option<&str>, password: Option<&str>, db: i64, limit: Duration) -> RedisResult<Conn> {
        let tcp = tokio::net::TcpStream::connect((host, port)).await.map_err(io_err)?;
        tcp.set_nodelay(true).map_err(io_err)?;
        // Deregistered from the reactor, and left non-blocking: every read and write here is.
        let mut conn = Conn { tcp: tcp.into_std().map_err(io_err)?, buf: Vec::new(), broken: false, limit };
        if let Some(password) = password {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = username {
                auth.arg(user);
            }
            auth.arg(password);
            conn.exchange(&auth.get_packed_command()).await?;
        }
        if db != 0 {
            conn.exchange(&redis::cmd("SELECT").arg(db).get_packed_command()).await?;
        }
        Ok(conn)
    }

    /// Whether it may take another request: every one so far got its whole reply (an error
    /// reply of the server's included).
    pub fn usable(&self) -> bool {
        !self.broken
    }

    /// Sends one packed request and returns its reply; an error reply is an `Err`, and so is a
    /// failure to exchange, after which the connection is not [`Conn::usable`]. A wait that
    /// is dropped leaves the connection unusable too.
    pub async fn exchange(&mut self, request: &[u8]) -> RedisResult<Value> {
        self.broken = true;
        self.send(request).await?;
        self.buf.clear();
        loop {
            if let Some(len) = reply_len(&self.buf)? {
                if len != self.buf.len() {
                    return Err(garbage("Redis sent more than one reply"));
                }
                let value = redis::parse_redis_value(&self.buf)?;
                self.broken = false;
                return value.extract_error();
            }
            self.read_more().await?;
        }
    }

    async fn send(&mut self, mut bytes: &[u8]) -> RedisResult<()> {
        let fd = self.tcp.as_raw_fd();
        while !bytes.is_empty() {
            // SAFETY: writes from a live slice to the socket this connection owns.
            let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
            if n >= 0 {
                bytes = &bytes[n as usize..];
                continue;
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::Interrupted => {}
                std::io::ErrorKind::WouldBlock => wait(fd, tokio::io::Interest::WRITABLE, libc::POLLOUT, self.limit).await?,
                _ => return Err(io_err(e)),
            }
        }
        Ok(())
    }

    async fn read_more(&mut self) -> RedisResult<()> {
        let fd = self.tcp.as_raw_fd();
        loop {
            self.buf.reserve(READ_SIZE);
            let spare = self.buf.spare_capacity_mut();
            // SAFETY: reads into the vector's unused capacity, `spare.len()` bytes.
            let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), libc::MSG_DONTWAIT) };
            if n > 0 {
                // SAFETY: recv wrote the first `n` bytes of the spare capacity.
                unsafe { self.buf.set_len(self.buf.len() + n as usize) };
                return Ok(());
            }
            if n == 0 {
                return Err(io_err(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::Interrupted => {}
                std::io::ErrorKind::WouldBlock => wait(fd, tokio::io::Interest::READABLE, libc::POLLIN, self.limit).await?,
                _ => return Err(io_err(e)),
            }
        }
    }
}

/// Waits until `fd` is ready for `interest`: on the caller's thread for what is left of its
/// brief moment (looking without sleeping for up to [`runtime::SPIN`], then in `ppoll(2)`),
/// then (or on a runtime thread) through the runtime's reactor; on a caller's thread that may
/// block, in `ppoll(2)` for at most `limit`.
async fn wait(fd: RawFd, interest: tokio::io::Interest, events: libc::c_short, limit: Duration) -> RedisResult<()> {
    if runtime::brief_budget().is_none() && runtime::on_caller_thread() {
        let deadline = std::time::Instant::now() + limit;
        // In slices: a signal's EINTR ends a slice early, not the wait.
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io_err(std::io::ErrorKind::TimedOut.into()));
            }
            if poll_for(fd, events, left.min(Duration::from_millis(100))) {
                return Ok(());
            }
        }
    }
    if let Some(left) = runtime::brief_budget() {
        if runtime::spin_until(left.min(runtime::SPIN), || poll_for(fd, events, Duration::ZERO)) {
            return Ok(());
        }
        if let Some(left) = runtime::brief_budget() {
            if poll_for(fd, events, left) {
                return Ok(());
            }
        }
    }
    // SAFETY: `fd` is the socket of the connection whose request waits here (borrowed
    // mutably by it for the whole wait).
    unsafe { runtime::fd_ready(fd, interest) }.await.map_err(io_err)
}

/// Whether `fd` became ready for `events` within `left` (`ppoll(2)`).
fn poll_for(fd: RawFd, events: libc::c_short, left: Duration) -> bool {
    let mut pfd = libc::pollfd { fd, events, revents: 0 };
    let ts = libc::timespec { tv_sec: left.as_secs() as libc::time_t, tv_nsec: left.subsec_nanos() as libc::c_long };
    // SAFETY: one valid pollfd and a valid timespec, both alive for the call.
    let n = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    n > 0
}

/// The length of the one complete RESP2 reply at the start of `buf`, `None` while more bytes
/// are needed; an `Err` for bytes that are not RESP2.
pub fn reply_len(buf: &[u8]) -> RedisResult<Option<usize>> {
    value_end(buf, 0, 0)
}

fn value_end(buf: &[u8], at: usize, depth: usize) -> RedisResult<Option<usize>> {
    if depth > 32 {
        return Err(garbage("Redis reply nested too deep"));
    }
    let Some(&kind) = buf.get(at) else { return Ok(None) };
    let Some(line_end) = find_crlf(buf, at + 1)? else { return Ok(None) };
    let after = line_end + 2;
    match kind {
        b'+' | b'-' | b':' => Ok(Some(after)),
        b'$' => match number(&buf[at + 1..line_end])? {
            n if n < 0 => Ok(Some(after)),
            n if n > MAX_BULK => Err(garbage("Redis bulk string longer than tooz ever reads")),
            n => {
                let end = after + n as usize + 2;
                if buf.len() < end {
                    return Ok(None);
                }
                if &buf[end - 2..end] != b"\r\n" {
                    return Err(garbage("Redis bulk string without its CRLF"));
                }
                Ok(Some(end))
            }
        },
        b'*' => {
            let n = number(&buf[at + 1..line_end])?;
            let mut pos = after;
            for _ in 0..n.max(0) {
                match value_end(buf, pos, depth + 1)? {
                    Some(end) => pos = end,
                    None => return Ok(None),
                }
            }
            Ok(Some(pos))
        }
        _ => Err(garbage("not a RESP2 reply")),
    }
}

fn find_crlf(buf: &[u8], from: usize) -> RedisResult<Option<usize>> {
    match buf.get(from..).and_then(|rest| rest.windows(2).position(|w| w == b"\r\n")) {
        Some(p) => Ok(Some(from + p)),
        None if buf.len().saturating_sub(from) > MAX_LINE => Err(garbage("Redis reply line too long")),
        None => Ok(None),
    }
}

fn number(digits: &[u8]) -> RedisResult<i64> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|n| *n >= -1 && *n <= (512 << 20))
        .ok_or_else(|| garbage("Redis reply with a bad length"))
}

/// The reply boundaries of a RESP stream as it is read, bounded as [`reply_len`] bounds one
/// reply: every element is a line (at most [`MAX_LINE`]), a bulk one followed by its body (at
/// most [`MAX_BULK`]). For a connection read by someone else (the `redis` crate's multiplexed
/// connection, over [`Bounded`]), which would buffer whatever length a server announces.
#[derive(Debug, Default)]
pub struct Framing {
    state: Frame,
}

#[derive(Debug, Default)]
enum Frame {
    /// At an element's first byte (its type).
    #[default]
    Start,
    /// In an element's line: its type, the first bytes of the line (a length's digits), and
    /// how long the line is so far.
    Line { kind: u8, head: Vec<u8>, len: usize },
    /// In a bulk body: bytes still to come, its CRLF included.
    Body(usize),
}

impl Framing {
    /// Follows `bytes`; an error as soon as they break a bound (or are not RESP).
    pub fn read(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("Redis sent {what}"));
        while !bytes.is_empty() {
            match &mut self.state {
                Frame::Body(left) => {
                    let take = (*left).min(bytes.len());
                    *left -= take;
                    bytes = &bytes[take..];
                    if *left == 0 {
                        self.state = Frame::Start;
                    }
                }
                Frame::Start => {
                    self.state = Frame::Line { kind: bytes[0], head: Vec::new(), len: 0 };
                    bytes = &bytes[1..];
                }
                Frame::Line { kind, head, len } => {
                    let end = bytes.iter().position(|b| *b == b'\n');
                    let part = &bytes[..end.unwrap_or(bytes.len())];
                    *len += part.len();
                    if *len > MAX_LINE {
                        return Err(bad("a reply line longer than tooz ever reads"));
                    }
                    // Only a length's digits matter: a long status line is counted, not kept.
                    let room = 24usize.saturating_sub(head.len());
                    head.extend_from_slice(&part[..part.len().min(room)]);
                    let Some(end) = end else { break };
                    bytes = &bytes[end + 1..];
                    // Bulk strings (RESP3's verbatim strings and blob errors too) have a body.
                    let body = if matches!(*kind, b'$' | b'=' | b'!') {
                        let n: i64 = std::str::from_utf8(head)
                            .ok()
                            .and_then(|d| d.trim_end_matches('\r').parse().ok())
                            .ok_or_else(|| bad("a bad bulk length"))?;
                        if n > MAX_BULK {
                            return Err(bad("a bulk string longer than tooz ever reads"));
                        }
                        if n >= 0 { n as usize + 2 } else { 0 }
                    } else {
                        0
                    };
                    self.state = if body > 0 { Frame::Body(body) } else { Frame::Start };
                }
            }
        }
        Ok(())
    }
}

/// A stream whose reads are followed by a [`Framing`]: the connection fails as soon as the
/// server breaks a bound.
pub struct Bounded<S> {
    inner: S,
    framing: Framing,
}

impl<S> Bounded<S> {
    pub fn new(inner: S) -> Bounded<S> {
        Bounded { inner, framing: Framing::default() }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Bounded<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let me = &mut *self;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut me.inner).poll_read(cx, buf) {
            std::task::Poll::Ready(Ok(())) => std::task::Poll::Ready(me.framing.read(&buf.filled()[before..])),
            other => other,
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Bounded<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_where_each_kind_of_reply_ends() {
        assert_eq!(reply_len(b"+OK\r\n").unwrap(), Some(5));
        assert_eq!(reply_len(b"-NOSCRIPT No matching script\r\n").unwrap(), Some(30));
        assert_eq!(reply_len(b":-12\r\n").unwrap(), Some(6));
        assert_eq!(reply_len(b"$-1\r\n").unwrap(), Some(5));
        assert_eq!(reply_len(b"$3\r\nabc\r\n").unwrap(), Some(9));
        assert_eq!(reply_len(b"*2\r\n:1\r\n$-1\r\n").unwrap(), Some(13));
        assert_eq!(reply_len(b"*-1\r\n").unwrap(), Some(5));
        assert_eq!(reply_len(b"*1\r\n*1\r\n+x\r\n").unwrap(), Some(12));
    }

    #[test]
    fn waits_for_the_rest_of_a_partial_reply() {
        for partial in [&b""[..], b"+OK", b"+OK\r", b"$3\r\nab", b"$3\r\nabc\r", b"*2\r\n:1\r\n", b"*2\r\n:1\r\n$2\r\nx"] {
            assert_eq!(reply_len(partial).unwrap(), None, "{partial:?}");
        }
    }

    #[test]
    fn a_stream_is_followed_across_reads_and_bounded() {
        let replies: &[u8] = b"+OK\r\n$3\r\nabc\r\n*2\r\n:1\r\n$-1\r\n-ERR x\r\n$0\r\n\r\n";
        for split in 0..replies.len() {
            let mut f = Framing::default();
            f.read(&replies[..split]).unwrap();
            f.read(&replies[split..]).unwrap();
            assert!(matches!(f.state, Frame::Start), "split at {split}: {f:?}");
        }
        // A bulk body may hold CRLF and anything else: it is skipped, not parsed.
        let mut f = Framing::default();
        f.read(b"$4\r\n\r\n\r\n+OK\r\n").unwrap();
        assert!(matches!(f.state, Frame::Start));
        assert!(Framing::default().read(b"$2147483647\r\n").is_err());
        let mut endless = Framing::default();
        endless.read(b"+").unwrap();
        let chunk = vec![b'x'; 16 << 10];
        let mut failed = false;
        for _ in 0..8 {
            if endless.read(&chunk).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "an endless line is refused past MAX_LINE");
    }

    #[test]
    fn refuses_what_is_not_resp2() {
        for bad in [&b"HTTP/1.1 400\r\n"[..], b"$x\r\n", b"$3\r\nabcd\r\n", b"*99999999999\r\n", b"$-5\r\n", b"$2147483647\r\n", b"$16777217\r\n"] {
            assert!(reply_len(bad).is_err(), "{bad:?}");
        }
        let deep: Vec<u8> = b"*1\r\n".repeat(40);
        assert!(reply_len(&deep).is_err());
    }
}
