//! A lock held on a dedicated connection to a database server (PostgreSQL advisory locks,
//! MySQL/MariaDB `GET_LOCK`): the server owns the lock for as long as the connection that
//! took it stays open, and frees it when that connection closes, whoever closes it.
//!
//! What the two backends share lives here; each supplies a [`Backend`] (how to connect,
//! how to try, wait for, and give back one lock on one connection, how to tell whether a
//! connection is still alive).
//!
//! * Every held lock has its own connection, as upstream: MySQL before 5.7 keeps one user
//!   lock per connection, and a PostgreSQL session re-enters its own advisory locks, so two
//!   lock objects sharing a session would not exclude each other.
//! * Connections are not opened and closed around every acquire as upstream does: a
//!   connection that holds nothing (after a release, or an attempt that failed cleanly) goes
//!   back to a small idle pool of the coordinator, and the next acquire takes it from there.
//!   A pooled connection that turns out to be dead is replaced once, transparently.
//! * A held lock whose connection has died is lost (the server has let it go): the lock
//!   object notices (`is_still_owner()` false, `release()` false) instead of pretending, and
//!   reports it through its [`Fate`] (a WARNING on the backend's logger, `on_lost` callbacks).
//! * Fork: a connection belongs to the process (runtime generation) that opened it; a forked
//!   child never touches its parent's connections (they are forgotten, not closed, as the
//!   parent still uses them) and does not consider its parent's locks its own.
//! * A session the server ends when it hears nothing from the client for
//!   [`Backend::session_bound`] (PostgreSQL: TCP keep-alive settings of the session, answered
//!   by a live client's kernel; MySQL: `wait_timeout`), so a dead or cut-off holder blocks the
//!   lock that long and no longer. A held lock's connection is pinged every third of it, and
//!   the holding runs on the holder's own clock as a lease does (`lock/lease.rs`): it started
//!   when the last answered request was sent, and a holder cut off is told (`on_lost`,
//!   `acquired` False) before the server can end its session and free the lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::driver::{Driver, DriverLock, Op, Wait};
use crate::error::{Error, Result};
use crate::lock::fate::{Fate, OnLost};
use crate::lock::lease::Lease;
use crate::id::Id;
use crate::pool::Idle;
use crate::runtime;

/// Idle connections kept per coordinator.
const MAX_IDLE: usize = 4;

/// One kind of database server and how a lock lives on one of its connections.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    type Conn: Send + 'static;
    /// The server-side identity of a lock, derived from its name.
    type Key: Send + Sync + 'static;

    /// "PostgreSQL" / "MySQL", for messages.
    fn product(&self) -> &'static str;
    /// The logger of the backend's records ("tooz.drivers.pgsql", ...).
    fn logger(&self) -> &'static str;
    fn key(&self, name: &[u8]) -> Result<Self::Key>;
    /// A new connection (bounded in time; a failure is an `Error::Connection`).
    async fn connect(&self) -> Result<Self::Conn>;
    /// Whether the connection is known to be dead without asking the server.
    fn is_closed(&self, conn: &Self::Conn) -> bool;
    /// One attempt that does not wait.
    async fn try_lock(&self, conn: &mut Self::Conn, key: &Self::Key) -> Result<bool>;
    /// Waits for the lock on the server, for ever (`None`) or at most `limit`.
    async fn lock(&self, conn: &mut Self::Conn, key: &Self::Key, limit: Option<Duration>) -> Result<bool>;
    /// Gives the lock back; false when this connection did not hold it.
    async fn unlock(&self, conn: &mut Self::Conn, key: &Self::Key) -> Result<bool>;
    /// A round trip proving the connection (and so its locks) is still there.
    async fn ping(&self, conn: &mut Self::Conn) -> Result<()>;
    /// How long the server keeps a session it hears nothing from (set on every connection
    /// by `connect`), at least.
    fn session_bound(&self) -> Duration;
    /// Closes a connection (the server frees whatever it held); the default drops it.
    fn discard(&self, conn: Self::Conn) {
        drop(conn);
    }
}

/// What a coordinator of one of these backends keeps: the backend and its idle connections.
pub struct Sessions<B: Backend> {
    backend: B,
    idle: Idle<B::Conn>,
}

impl<B: Backend> Sessions<B> {
    pub fn new(backend: B) -> Arc<Self> {
        Arc::new(Sessions { backend, idle: Idle::default() })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// A held lock's session as a lease, as its holder reckons it: the server ends a silent
    /// session no sooner than [`Backend::session_bound`] after it last heard from us.
    fn lease(&self) -> Lease {
        Lease::exact(self.backend.session_bound())
    }

    /// An idle connection of this process, if any.
    fn take_idle(&self) -> Option<B::Conn> {
        self.idle.take_where(|conn| !self.backend.is_closed(conn))
    }

    /// Keeps a connection that holds no lock for the next acquire.
    fn put_idle(&self, conn: B::Conn) {
        if self.backend.is_closed(&conn) {
            return self.backend.discard(conn);
        }
        if let Some(surplus) = self.idle.put(conn, MAX_IDLE) {
            self.backend.discard(surplus);
        }
    }

    /// Opens a connection and keeps it idle: proves the address and credentials work.
    pub async fn start(&self) -> Result<()> {
        let conn = match self.take_idle() {
            Some(conn) => conn,
            None => self.backend.connect().await?,
        };
        self.put_idle(conn);
        Ok(())
    }

    /// Closes the idle connections (held locks keep theirs until released, as upstream).
    pub fn stop(&self) {
        for conn in self.idle.drain() {
            self.backend.discard(conn);
        }
    }

    /// One attempt on `conn`.
    async fn attempt(&self, conn: &mut B::Conn, key: &B::Key, how: Attempt) -> Result<bool> {
        let b = &self.backend;
        match how {
            Attempt::Try => b.try_lock(conn, key).await,
            Attempt::Forever => b.lock(conn, key, None).await,
            Attempt::Until(deadline) => {
                // One quick try first: a free lock is taken even when no time is left.
                if b.try_lock(conn, key).await? {
                    return Ok(true);
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                b.lock(conn, key, Some(left)).await
            }
        }
    }

    /// Runs an attempt on an idle connection, or on a new one; a pooled connection that
    /// fails with a connection error is replaced by a new one once. The connection comes
    /// back with the result unless the attempt failed (it is closed then).
    async fn attempt_on_some_conn(&self, key: &B::Key, how: Attempt) -> Result<(bool, B::Conn)> {
        if let Some(mut conn) = self.take_idle() {
            match self.attempt(&mut conn, key, how).await {
                Ok(v) => return Ok((v, conn)),
                Err(Error::Connection(_)) => self.backend.discard(conn),
                Err(e) => {
                    self.backend.discard(conn);
                    return Err(e);
                }
            }
        }
        let mut conn = self.backend.connect().await?;
        match self.attempt(&mut conn, key, how).await {
            Ok(v) => Ok((v, conn)),
            Err(e) => {
                self.backend.discard(conn);
                Err(e)
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Attempt {
    Try,
    Forever,
    Until(Instant),
}

/// The connection of a held lock, the process it was opened in, and which holding it is.
struct Held<C> {
    conn: C,
    generation: u64,
    term: u64,
}

/// One lock object: holds its lock on its own connection while acquired.
pub struct SessionLock<B: Backend> {
    sessions: Arc<Sessions<B>>,
    name: Vec<u8>,
    key: B::Key,
    /// The connection holding the lock while this object holds it (its pinger shares it).
    held: Arc<tokio::sync::Mutex<Option<Held<B::Conn>>>>,
    /// Counts this object's holdings (a pinger serves one).
    terms: AtomicU64,
    /// Whether this object holds the lock (waiters of this same object watch it).
    state: watch::Sender<bool>,
    /// The generation `state` was last set in (a forked child holds nothing).
    state_generation: AtomicU64,
    /// One acquire at a time per object.
    gate: tokio::sync::Mutex<()>,
    /// Reports a holding lost behind our back (logged once, `on_lost` callbacks), and keeps
    /// the holder's clock of its session.
    fate: Arc<Fate>,
}

/// Why a holding is reported lost.
const LOST: &str = "its connection to the server is gone, and the server freed the lock with it";

impl<B: Backend> SessionLock<B> {
    pub fn new(sessions: Arc<Sessions<B>>, name: &[u8]) -> Result<Self> {
        if name.is_empty() {
            return Err(Error::InvalidArgument("Locks must be provided a name".into()));
        }
        let key = sessions.backend.key(name)?;
        let fate = Arc::new(Fate::new(
            sessions.backend.logger(),
            format!("{} ({})", String::from_utf8_lossy(name), sessions.backend.product()),
        ));
        Ok(SessionLock {
            fate,
            sessions,
            name: name.to_vec(),
            key,
            held: Arc::new(tokio::sync::Mutex::new(None)),
            terms: AtomicU64::new(0),
            state: watch::Sender::new(false),
            state_generation: AtomicU64::new(runtime::generation()),
            gate: tokio::sync::Mutex::new(()),
        })
    }

    /// Whether this object holds the lock in this process (and its session's clock has not
    /// run out, nor was it found gone).
    fn holds(&self) -> bool {
        *self.state.borrow() && self.state_generation.load(Ordering::SeqCst) == runtime::generation() && self.fate.holding()
    }

    /// Records the connection now holding the lock, whose last answered request was sent at
    /// `heard`: the holder's clock of the session starts there, and a pinger keeps it going.
    async fn set_held(&self, conn: B::Conn, heard: Instant) {
        let generation = runtime::generation();
        let term = self.terms.fetch_add(1, Ordering::SeqCst) + 1;
        let mut slot = self.held.lock().await;
        if let Some(old) = slot.take() {
            // Only a forked child gets here with something in the slot: the parent's.
            std::mem::forget(old);
        }
        *slot = Some(Held { conn, generation, term });
        drop(slot);
        let lease = self.sessions.lease();
        let (held, sessions, fate) = (self.held.clone(), self.sessions.clone(), self.fate.clone());
        let on_expiry = Box::new(move |why| {
            fate.lost(why);
            // Told; the connection is closed once a ping in flight lets go of it, so the
            // server frees the lock as soon as it hears from us again (if it still holds it).
            runtime::runtime().spawn(async move {
                let mut slot = held.lock().await;
                if slot.as_ref().is_some_and(|h| h.term == term && h.generation == runtime::generation()) {
                    if let Some(h) = slot.take() {
                        sessions.backend.discard(h.conn);
                    }
                }
            });
        });
        self.fate.acquired_on_lease(None, lease.deadline(heard), on_expiry);
        runtime::runtime().spawn(ping_while_held(self.sessions.clone(), self.held.clone(), self.fate.clone(), term));
        self.state_generation.store(generation, Ordering::SeqCst);
        self.state.send_replace(true);
    }

    /// Takes the held connection out of `slot`: this object no longer holds the lock.
    fn take_held(&self, slot: &mut Option<Held<B::Conn>>) -> Option<B::Conn> {
        let generation = runtime::generation();
        let conn = match slot.take() {
            Some(h) if h.generation == generation => Some(h.conn),
            Some(h) => {
                std::mem::forget(h);
                None
            }
            None => None,
        };
        self.state_generation.store(generation, Ordering::SeqCst);
        self.state.send_replace(false);
        conn
    }

    /// Waits until this object no longer holds the lock; false when `deadline` passed first.
    async fn until_not_held(&self, deadline: Option<Instant>) -> bool {
        let mut rx = self.state.subscribe();
        loop {
            if !self.holds() {
                return true;
            }
            let changed = rx.changed();
            match deadline {
                None => {
                    if changed.await.is_err() {
                        return false;
                    }
                }
                Some(d) => match tokio::time::timeout_at(d, changed).await {
                    Ok(Ok(())) => {}
                    _ => return !self.holds(),
                },
            }
        }
    }
}

#[async_trait]
impl<B: Backend> DriverLock for SessionLock<B> {
    fn name(&self) -> Id {
        Id::Bytes(self.name.clone())
    }

    fn acquired(&self) -> bool {
        self.holds()
    }

    async fn acquire(&self, wait: Wait, shared: bool) -> Result<bool> {
        if shared {
            return Err(Error::NotImplemented(format!(
                "shared {} locks are not supported",
                self.sessions.backend.product()
            )));
        }
        let deadline = wait.deadline();
        let _one_at_a_time = match (wait, deadline) {
            (Wait::No, _) => match self.gate.try_lock() {
                Ok(g) => g,
                Err(_) => return Ok(false),
            },
            (_, Some(d)) => match tokio::time::timeout_at(d, self.gate.lock()).await {
                Ok(g) => g,
                Err(_) => return Ok(false),
            },
            _ => self.gate.lock().await,
        };
        // Not re-entrant: a lock object that holds its lock waits for its own release.
        if self.holds() && (wait == Wait::No || !self.until_not_held(deadline).await) {
            return Ok(false);
        }
        let how = match (wait, deadline) {
            (Wait::No, _) => Attempt::Try,
            (_, Some(d)) => Attempt::Until(d),
            _ => Attempt::Forever,
        };
        let began = Instant::now();
        let (got, mut conn) = self.sessions.attempt_on_some_conn(&self.key, how).await?;
        if got {
            // The attempt's request was sent when it began; after a long wait, a ping sent now
            // starts the holder's clock instead (the server heard from us since, at least).
            let mut heard = began;
            if began.elapsed() > self.sessions.lease().renew_every() {
                let sent = Instant::now();
                if self.sessions.backend.ping(&mut conn).await.is_ok() {
                    heard = sent;
                }
            }
            self.set_held(conn, heard).await;
        } else {
            self.sessions.put_idle(conn);
        }
        Ok(got)
    }

    async fn release(&self) -> Result<bool> {
        let mut slot = self.held.lock().await;
        let holds = self.holds();
        // (In a forked child this forgets the parent's connection.)
        let conn = self.take_held(&mut slot);
        drop(slot);
        let Some(mut conn) = conn.filter(|_| holds) else {
            if *self.state.borrow() && !self.fate.holding() {
                // Its clock ran out (told by its watchdog, or now).
                self.fate.lost(crate::lock::fate::LEASE_RAN_OUT);
            }
            return Ok(false);
        };
        let backend = self.sessions.backend();
        if backend.is_closed(&conn) {
            // The server freed the lock when the connection went.
            backend.discard(conn);
            self.fate.lost(LOST);
            return Ok(false);
        }
        match backend.unlock(&mut conn, &self.key).await {
            Ok(true) => {
                self.fate.released();
                self.sessions.put_idle(conn);
                Ok(true)
            }
            Ok(false) => {
                // The connection no longer held it: do not reuse it.
                backend.discard(conn);
                self.fate.lost("the server says this connection does not hold it");
                Ok(false)
            }
            // The connection is gone, and the lock with it.
            Err(Error::Connection(_)) => {
                backend.discard(conn);
                self.fate.lost(LOST);
                Ok(false)
            }
            Err(e) => {
                // Closing the connection frees the lock on the server whatever went wrong.
                backend.discard(conn);
                self.fate.released();
                Err(e)
            }
        }
    }

    async fn is_still_owner(&self) -> Result<bool> {
        let mut slot = self.held.lock().await;
        if !self.holds() {
            return Ok(false);
        }
        let backend = self.sessions.backend();
        let alive = match slot.as_mut() {
            Some(h) if h.generation == runtime::generation() => {
                !backend.is_closed(&h.conn) && backend.ping(&mut h.conn).await.is_ok()
            }
            _ => false,
        };
        if !alive {
            if let Some(conn) = self.take_held(&mut slot) {
                backend.discard(conn);
            }
            self.fate.lost(LOST);
        }
        Ok(alive)
    }

    fn on_lost(&self, callback: OnLost) {
        self.fate.on_lost(callback);
    }
}

impl<B: Backend> Drop for SessionLock<B> {
    fn drop(&mut self) {
        // Its watchdog and pinger end with the holding.
        self.fate.released();
        let generation = runtime::generation();
        match self.held.try_lock() {
            Ok(mut slot) => {
                if let Some(h) = slot.take() {
                    if h.generation == generation {
                        // Closing the connection frees the lock on the server.
                        self.sessions.backend.discard(h.conn);
                    } else {
                        std::mem::forget(h);
                    }
                }
            }
            // A pinger of this process is in a ping: the connection goes with it, at once after.
            Err(_) if self.state_generation.load(Ordering::SeqCst) == generation => {}
            // Copied busy by a fork: the parent's, never to be touched here.
            Err(_) => std::mem::forget(self.held.clone()),
        }
    }
}

/// Pings the connection of holding `term` every third of its session bound while it lasts;
/// each answer moves the holder's clock on. A connection found dead is the lock lost (the
/// server freed it). A ping is not given up on: the holder's clock (`Fate`'s watchdog) tells
/// of a loss when answers stop, whatever the ping waits for.
async fn ping_while_held<B: Backend>(
    sessions: Arc<Sessions<B>>,
    held: Arc<tokio::sync::Mutex<Option<Held<B::Conn>>>>,
    fate: Arc<Fate>,
    term: u64,
) {
    let lease = sessions.lease();
    loop {
        tokio::time::sleep(lease.renew_every()).await;
        let mut slot = held.lock().await;
        let Some(h) = slot.as_mut().filter(|h| h.term == term && h.generation == runtime::generation()) else { return };
        if !fate.holding() {
            return;
        }
        let sent = Instant::now();
        let backend = &sessions.backend;
        let alive = !backend.is_closed(&h.conn) && backend.ping(&mut h.conn).await.is_ok();
        if alive {
            fate.renewed(lease.deadline(sent));
        } else {
            if let Some(h) = slot.take() {
                backend.discard(h.conn);
            }
            fate.lost(LOST);
            return;
        }
    }
}

/// A locks-only driver over a session backend (groups raise `NotImplemented`, as upstream's
/// SQL drivers do).
pub struct SessionDriver<B: Backend> {
    sessions: Arc<Sessions<B>>,
}

impl<B: Backend> SessionDriver<B> {
    pub fn over(backend: B) -> Self {
        SessionDriver { sessions: Sessions::new(backend) }
    }
}

#[async_trait]
impl<B: Backend> Driver for SessionDriver<B> {
    fn supports(&self, _op: Op) -> bool {
        false
    }

    async fn start(&self) -> Result<()> {
        self.sessions.start().await
    }

    async fn stop(&self) -> Result<()> {
        self.sessions.stop();
        Ok(())
    }

    fn lock(&self, name: &[u8]) -> Result<Arc<dyn DriverLock>> {
        Ok(Arc::new(SessionLock::new(self.sessions.clone(), name)?))
    }
}
