//! Requests whose replies are checked later rather than awaited: what a caller sends only to
//! learn of failure (a heartbeat) goes out on a connection of its own, and its reply is read
//! by a later send, so the caller does not wait a round trip each time, yet never goes blind.
//!
//! Replies come back in request order. Each send first takes the replies that have already
//! arrived, checking each against what its request expects; then it waits for any reply sent
//! more than [`SETTLE`] ago, or for the oldest while [`MAX_IN_FLIGHT`] are unanswered, at most
//! until that request's own timeout (the client's `timeout`) runs out. So a dead server (the
//! connection closes or resets) is reported by the next send, and a hung one as soon as a
//! request's timeout has passed, as when every reply was awaited. Any failure drops the
//! connection and the requests in flight on it; the next send connects afresh.
//!
//! A request may come with a quiet form (`noreply`): sent instead while a request that asks
//! for a reply went out less than [`SETTLE`] ago. A caller sending in a tight loop then asks
//! for a reply about every [`SETTLE`] (the server and the kernel spared the others), which
//! still finds a hung server; a dead one fails the write or the next read of what arrived.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Client, Conn, Reply};
use crate::error::{Error, Result};
use crate::runtime;

/// A reply this much older than its request is waited for by the next send: with a beat every
/// few hundred milliseconds or more, each beat sees the previous one answered.
const SETTLE: Duration = Duration::from_millis(50);
/// At most this many requests awaiting their reply (a caller sending in a tight loop).
const MAX_IN_FLIGHT: usize = 32;

/// Whether a reply is the one the request hoped for.
pub type Check = fn(&Reply) -> bool;

struct Sent {
    what: &'static str,
    at: Instant,
    check: Check,
}

/// The connection of the checked-later requests and what is in flight on it.
pub(super) struct Later {
    line: tokio::sync::Mutex<Line>,
    /// Bumped by [`Client::close`]: a connection opened before is not used again.
    closes: AtomicU64,
}

#[derive(Default)]
struct Line {
    conn: Option<Conn>,
    /// Runtime generation and close count the connection was opened under.
    opened: (u64, u64),
    in_flight: VecDeque<Sent>,
    /// When the last request that asks for a reply went out, and the last of any kind.
    asked: Option<Instant>,
    sent: Option<Instant>,
}

impl Later {
    pub(super) fn new() -> Later {
        Later { line: tokio::sync::Mutex::new(Line::default()), closes: AtomicU64::new(0) }
    }

    /// Drops the connection now if no send is using it, else when the next send starts.
    pub(super) fn close(&self) {
        self.closes.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut line) = self.line.try_lock() {
            line.drop_conn();
        }
    }
}

impl Line {
    fn drop_conn(&mut self) {
        self.in_flight.clear();
        self.asked = None;
        self.sent = None;
        if let Some(conn) = self.conn.take() {
            if self.opened.0 != runtime::generation() {
                // A parent's socket, inherited across fork(): never touched here.
                std::mem::forget(conn);
            }
        }
    }

    /// Takes the replies that have arrived and waits for those due (see the module notes).
    async fn settle(&mut self, timeout: Option<Duration>) -> Result<()> {
        let Some(conn) = self.conn.as_mut().filter(|_| !self.in_flight.is_empty()) else {
            // Nothing to read: a connection the server closed fails the next write, or is
            // found by the next read of a reply asked for (see `later_line` for one idle).
            return Ok(());
        };
        conn.read_ready()?;
        while let Some(sent) = self.in_flight.front() {
            let due = self.in_flight.len() >= MAX_IN_FLIGHT || sent.at.elapsed() >= SETTLE;
            let reply = match conn.take_reply()? {
                Some(reply) => reply,
                None if !due => break,
                None => {
                    let read = conn.read_more();
                    match timeout {
                        None => read.await?,
                        Some(limit) => tokio::time::timeout_at((sent.at + limit).into(), read).await.unwrap_or_else(|_| {
                            Err(Error::Connection(format!(
                                "memcached did not answer {} within {:.3}s",
                                sent.what,
                                limit.as_secs_f64()
                            )))
                        })?,
                    }
                    continue;
                }
            };
            if !(sent.check)(&reply) {
                return Err(Error::Tooz(format!("unexpected memcached reply to {}: {reply:?}", sent.what)));
            }
            self.in_flight.pop_front();
        }
        if self.in_flight.is_empty() && !conn.buf.is_empty() {
            return Err(Error::Tooz("memcached sent a reply nobody asked for".into()));
        }
        Ok(())
    }
}

impl Client {
    /// Sends `request` and returns without its reply, which a later call checks with `check`
    /// (see the module notes); replies of earlier requests that are due are checked first, and
    /// a failure among them is this call's error.
    ///
    /// `quiet`, the same request with `noreply`, is sent instead while a request that asks for
    /// a reply went out less than [`SETTLE`] ago (see the module notes).
    pub async fn send_checked_later(&self, what: &'static str, request: &[u8], quiet: Option<&[u8]>, check: Check) -> Result<()> {
        let mut line = self.later_line().await;
        let out = async {
            line.settle(self.cfg.timeout).await?;
            if line.conn.is_none() {
                let opened = (runtime::generation(), self.later.closes.load(Ordering::SeqCst));
                line.conn = Some(self.with_timeout("connect", Conn::open_unwatched(&self.cfg)).await?);
                line.opened = opened;
            }
            let now = Instant::now();
            let quiet = quiet.filter(|_| line.asked.is_some_and(|at| now - at < SETTLE));
            if let Some(conn) = line.conn.as_mut() {
                self.with_timeout(what, conn.send(quiet.unwrap_or(request))).await?;
            }
            line.sent = Some(now);
            if quiet.is_none() {
                line.asked = Some(now);
                line.in_flight.push_back(Sent { what, at: now, check });
            }
            Ok(())
        }
        .await;
        self.after_later(&mut line, out)
    }

    /// The checked-later connection, made current: one from before a fork or a `close`, or
    /// one the server closed while nothing was asked of it (a restart), is dropped.
    async fn later_line(&self) -> tokio::sync::MutexGuard<'_, Line> {
        let mut line = self.later.line.lock().await;
        let current = (runtime::generation(), self.later.closes.load(Ordering::SeqCst));
        if line.conn.is_some() && line.opened != current {
            line.drop_conn();
        }
        // Looked at only after a pause: in a run of sends, a server gone is found by them.
        let idle = line.in_flight.is_empty() && line.sent.map_or(true, |at| at.elapsed() >= SETTLE);
        if idle && line.conn.as_mut().is_some_and(Conn::is_stale) {
            self.note_lost();
            line.drop_conn();
        }
        line
    }

    fn after_later(&self, line: &mut Line, out: Result<()>) -> Result<()> {
        self.record(&out);
        if out.is_err() {
            line.drop_conn();
        }
        out
    }
}
