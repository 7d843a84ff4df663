//! A ZooKeeper session on the shared tokio runtime.
//!
//! One task owns the connection: it writes requests, matches replies to them by xid, sends
//! pings, delivers watch notifications, and, when the connection drops, reconnects to the
//! same session (any server of the list) until the session timeout has passed since the
//! server was last heard from. Nothing here runs outside tokio, so a forked child that
//! builds a fresh runtime (see `runtime.rs`) also gets working sessions.
//!
//! A request is only ever written on the connection that was up when it was made: requests
//! made while disconnected fail at once with [`ZkError::ConnectionLoss`] instead of waiting
//! to be replayed later on, so a caller that gave up on a request never has it applied
//! behind its back after a reconnect. (One in flight when the connection drops may or may
//! not have been applied, as with any ZooKeeper client.)

mod connection;
pub mod proto;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, timeout_at, Instant};

use connection::{establish, run};
use crate::log;
use proto::{code, op, xid, Acl, ConnectRequest, ConnectResponse, Reader, ReplyHeader, Stat, WatcherEvent};

/// Largest frame accepted from a server (ZooKeeper's own default limit is about 1 MiB).
const MAX_FRAME: usize = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Expired,
    AuthFailed,
    Closed,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ZkError {
    /// The server answered with this error code.
    Server(i32),
    /// Not connected, or the connection dropped before the reply came.
    ConnectionLoss,
    /// The session is over.
    SessionEnded(Ended),
    /// No server could be reached (with the last reason).
    Unreachable(String),
    /// The server sent something this client cannot read.
    Protocol(String),
}

impl std::fmt::Display for ZkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ZkError::Server(c) => write!(f, "{} ({c})", proto::code_name(*c)),
            ZkError::ConnectionLoss => f.write_str("connection to ZooKeeper lost"),
            ZkError::SessionEnded(Ended::Expired) => f.write_str("ZooKeeper session expired"),
            ZkError::SessionEnded(Ended::AuthFailed) => f.write_str("ZooKeeper authentication failed"),
            ZkError::SessionEnded(Ended::Closed) => f.write_str("ZooKeeper session closed"),
            ZkError::Unreachable(why) => write!(f, "cannot reach ZooKeeper: {why}"),
            ZkError::Protocol(why) => write!(f, "unexpected data from ZooKeeper: {why}"),
        }
    }
}

pub type ZkResult<T> = std::result::Result<T, ZkError>;

#[derive(Clone, Debug, PartialEq)]
pub enum State {
    Connecting,
    /// Connected; the number tells connections of one session apart.
    Connected(u64),
    Ended(Ended),
}

#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub port: u16,
}

pub struct Config {
    /// Tried in this order on every (re)connection, or in a fresh random order each time
    /// when `randomize_hosts` (kazoo's behaviour for both).
    pub hosts: Vec<Host>,
    pub randomize_hosts: bool,
    /// Logger name and description of this client for session records (`crate::log`).
    pub log_as: (String, String),
    /// Server-side prefix of every path ("" for none).
    pub chroot: String,
    pub session_timeout: Duration,
    pub auth: Vec<(String, Vec<u8>)>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}
type Stream = Box<dyn Duplex>;

struct Session {
    id: i64,
    password: Vec<u8>,
    timeout: Duration,
    last_zxid: i64,
    /// When the latest request the server is known to have received (it answered) was
    /// sent: the server keeps the session for its timeout after that request arrived, which
    /// is no sooner, so the client's own clock of the session starts here (`lock/lease.rs`).
    heard_sent: tokio::time::Instant,
}

type Reply = oneshot::Sender<ZkResult<Vec<u8>>>;

enum Command {
    Request { epoch: u64, op: i32, payload: Vec<u8>, watch: Option<Watcher>, reply: Reply },
    Close(oneshot::Sender<()>),
}

/// A watch being set: the node's server path and where to signal it.
struct Watcher {
    path: String,
    fire: oneshot::Sender<()>,
    /// `exists` (which also sets a watch when the node is absent) or `getChildren`.
    on_children: bool,
}

/// Resolves when the watched node changes, or with an error when the session ended (after
/// which the watch is gone). A watch outlives dropped connections: it is set again on the
/// next connection of the session (`SetWatches`), as ZooKeeper's own clients do.
pub type Watch = oneshot::Receiver<()>;
/// Where the reply to a request sent ahead lands.
pub type Answer = oneshot::Receiver<ZkResult<Vec<u8>>>;

/// The watches a session has set, by server path: on nodes that existed when the watch was
/// set ("data" watches: fire on change or deletion) and on nodes that did not ("exist"
/// watches: fire on creation).
/// "child" watches (set by `getChildren`: fire when a child is added or removed, or the node
/// is deleted).
#[derive(Default)]
struct Watches {
    data: HashMap<String, Vec<oneshot::Sender<()>>>,
    exist: HashMap<String, Vec<oneshot::Sender<()>>>,
    child: HashMap<String, Vec<oneshot::Sender<()>>>,
}

/// Which of a session's watch tables a watch is kept in.
#[derive(Clone, Copy)]
enum Slot {
    Data,
    Exist,
    Child,
}

/// The type of a `WatcherEvent` that reports a child added or removed.
const NODE_CHILDREN_CHANGED: i32 = 4;
/// The type of a `WatcherEvent` that reports a deleted node.
const NODE_DELETED: i32 = 2;

impl Watches {
    fn table(&mut self, slot: Slot) -> &mut HashMap<String, Vec<oneshot::Sender<()>>> {
        match slot {
            Slot::Data => &mut self.data,
            Slot::Exist => &mut self.exist,
            Slot::Child => &mut self.child,
        }
    }

    fn add(&mut self, path: String, slot: Slot, fire: oneshot::Sender<()>) {
        let list = self.table(slot).entry(path).or_default();
        list.retain(|f| !f.is_closed());
        list.push(fire);
    }

    /// Fires the watches an event of type `kind` on `path` triggers (every kind of watch on
    /// the path when `kind` is `None`).
    fn fire(&mut self, path: &str, kind: Option<i32>) {
        let slots: &[Slot] = match kind {
            Some(NODE_CHILDREN_CHANGED) => &[Slot::Child],
            Some(NODE_DELETED) | None => &[Slot::Data, Slot::Exist, Slot::Child],
            Some(_) => &[Slot::Data, Slot::Exist],
        };
        for slot in slots {
            for fire in self.table(*slot).remove(path).unwrap_or_default() {
                let _ = fire.send(());
            }
        }
    }

    fn paths(&self) -> Vec<String> {
        self.data.keys().chain(self.exist.keys()).chain(self.child.keys()).cloned().collect()
    }

    /// The `SetWatches` payload for the watches someone still waits on, if any.
    fn rearm(&mut self, relative_zxid: i64) -> Option<Vec<u8>> {
        for map in [&mut self.data, &mut self.exist, &mut self.child] {
            map.retain(|_, list| {
                list.retain(|f| !f.is_closed());
                !list.is_empty()
            });
        }
        if self.data.is_empty() && self.exist.is_empty() && self.child.is_empty() {
            return None;
        }
        fn keys(m: &HashMap<String, Vec<oneshot::Sender<()>>>) -> Vec<&str> {
            m.keys().map(String::as_str).collect()
        }
        Some(proto::set_watches(relative_zxid, &keys(&self.data), &keys(&self.exist), &keys(&self.child)))
    }
}

struct Inner {
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<State>,
    session_id: i64,
    chroot: String,
}

/// A handle on one session; clones share it. The session is closed by [`Client::close`], or
/// when the last handle is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Opens a new session, trying the servers in turn until `deadline`.
    pub async fn connect(config: Arc<Config>, deadline: Instant) -> ZkResult<Client> {
        let mut session = Session {
            id: 0,
            password: vec![0; 16],
            timeout: config.session_timeout,
            last_zxid: 0,
            heard_sent: tokio::time::Instant::now(),
        };
        let stream = establish(&config, &mut session, deadline).await?;
        let (commands, receiver) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(State::Connected(1));
        let session_id = session.id;
        let chroot = config.chroot.clone();
        tokio::spawn(run(config, session, stream, receiver, state_tx));
        Ok(Client { inner: Arc::new(Inner { commands, state, session_id, chroot }) })
    }

    pub fn session_id(&self) -> i64 {
        self.inner.session_id
    }

    pub fn state(&self) -> State {
        self.inner.state.borrow().clone()
    }

    pub fn is_ended(&self) -> bool {
        matches!(self.state(), State::Ended(_))
    }

    /// Waits until connected; `ConnectionLoss` if not by `deadline`.
    pub async fn wait_connected(&self, deadline: Instant) -> ZkResult<()> {
        let mut state = self.inner.state.clone();
        loop {
            let now = state.borrow_and_update().clone();
            match now {
                State::Connected(_) => return Ok(()),
                State::Ended(e) => return Err(ZkError::SessionEnded(e)),
                State::Connecting => {}
            }
            match timeout_at(deadline, state.changed()).await {
                Err(_) => return Err(ZkError::ConnectionLoss),
                Ok(Err(_)) => return Err(ZkError::SessionEnded(Ended::Closed)),
                Ok(Ok(())) => {}
            }
        }
    }

    fn server_path(&self, path: &str) -> String {
        if self.inner.chroot.is_empty() {
            path.to_owned()
        } else if path == "/" {
            self.inner.chroot.clone()
        } else {
            format!("{}{}", self.inner.chroot, path)
        }
    }

    /// Sends a request now (so several can be in flight) and returns where its reply lands.
    fn send(&self, op: i32, payload: Vec<u8>, watch: Option<Watcher>) -> ZkResult<Answer> {
        let epoch = match self.state() {
            State::Connected(e) => e,
            State::Connecting => return Err(ZkError::ConnectionLoss),
            State::Ended(e) => return Err(ZkError::SessionEnded(e)),
        };
        let (reply, receiver) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Request { epoch, op, payload, watch, reply })
            .map_err(|_| ZkError::SessionEnded(Ended::Closed))?;
        Ok(receiver)
    }

    async fn reply(receiver: Answer) -> ZkResult<Vec<u8>> {
        receiver.await.unwrap_or(Err(ZkError::ConnectionLoss))
    }

    async fn call(&self, op: i32, payload: Vec<u8>) -> ZkResult<Vec<u8>> {
        Self::reply(self.send(op, payload, None)?).await
    }

    /// Creates a node; returns its path (with the sequence number, for sequential nodes).
    pub async fn create(&self, path: &str, data: &[u8], acls: &[Acl], flags: i32) -> ZkResult<String> {
        self.finish_create(self.start_create(path, data, acls, flags)?).await
    }

    /// Starts a create (see [`Client::finish_create`]). The server answers a session's
    /// requests in the order they came, so a read started right after it sees the new node.
    pub fn start_create(&self, path: &str, data: &[u8], acls: &[Acl], flags: i32) -> ZkResult<Answer> {
        self.send(op::CREATE, proto::create(&self.server_path(path), data, acls, flags), None)
    }

    pub async fn finish_create(&self, answer: Answer) -> ZkResult<String> {
        let body = Self::reply(answer).await?;
        let created = Reader::new(&body).string().map_err(|e| ZkError::Protocol(e.0.into()))?;
        Ok(match created.strip_prefix(self.inner.chroot.as_str()) {
            Some(rest) if !self.inner.chroot.is_empty() => if rest.is_empty() { "/".to_owned() } else { rest.to_owned() },
            _ => created,
        })
    }

    pub async fn delete(&self, path: &str) -> ZkResult<()> {
        self.call(op::DELETE, proto::delete(&self.server_path(path), -1)).await.map(|_| ())
    }

    /// Starts a read of a node's data (see [`Client::finish_get_data`]); requests started
    /// one after the other travel together.
    pub fn start_get_data(&self, path: &str) -> ZkResult<Answer> {
        self.send(op::GET_DATA, proto::path_and_watch(&self.server_path(path), false), None)
    }

    pub async fn finish_get_data(answer: Answer) -> ZkResult<(Vec<u8>, Stat)> {
        let body = Self::reply(answer).await?;
        let mut r = Reader::new(&body);
        let data = r.buffer().map_err(|e| ZkError::Protocol(e.0.into()))?;
        let stat = r.stat().map_err(|e| ZkError::Protocol(e.0.into()))?;
        Ok((data, stat))
    }

    pub async fn get_data(&self, path: &str) -> ZkResult<(Vec<u8>, Stat)> {
        Self::finish_get_data(self.start_get_data(path)?).await
    }

    pub async fn set_data(&self, path: &str, data: &[u8]) -> ZkResult<Stat> {
        let body = self.call(op::SET_DATA, proto::set_data(&self.server_path(path), data, -1)).await?;
        Reader::new(&body).stat().map_err(|e| ZkError::Protocol(e.0.into()))
    }

    pub async fn get_children(&self, path: &str) -> ZkResult<Vec<String>> {
        Self::finish_get_children(self.start_get_children(path)?).await
    }

    /// Starts a listing of a node's children (see [`Client::finish_get_children`]).
    pub fn start_get_children(&self, path: &str) -> ZkResult<Answer> {
        self.send(op::GET_CHILDREN, proto::path_and_watch(&self.server_path(path), false), None)
    }

    pub async fn finish_get_children(answer: Answer) -> ZkResult<Vec<String>> {
        let body = Self::reply(answer).await?;
        Reader::new(&body).strings().map_err(|e| ZkError::Protocol(e.0.into()))
    }

    /// The node's children, with a watch that fires when one is added or removed (or the
    /// node is deleted).
    pub async fn get_children_and_watch(&self, path: &str) -> ZkResult<(Vec<String>, Watch)> {
        let server_path = self.server_path(path);
        let (fire, watch) = oneshot::channel();
        let watcher = Watcher { path: server_path.clone(), fire, on_children: true };
        let pending = self.send(op::GET_CHILDREN, proto::path_and_watch(&server_path, true), Some(watcher))?;
        let body = Self::reply(pending).await?;
        let children = Reader::new(&body).strings().map_err(|e| ZkError::Protocol(e.0.into()))?;
        Ok((children, watch))
    }

    /// Whether the node exists, with a watch on its next change (creation, data change or
    /// deletion).
    pub async fn exists_and_watch(&self, path: &str) -> ZkResult<(bool, Watch)> {
        let server_path = self.server_path(path);
        let (fire, watch) = oneshot::channel();
        let watcher = Watcher { path: server_path.clone(), fire, on_children: false };
        let pending = self.send(op::EXISTS, proto::path_and_watch(&server_path, true), Some(watcher))?;
        match Self::reply(pending).await {
            Ok(_) => Ok((true, watch)),
            Err(ZkError::Server(code::NO_NODE)) => Ok((false, watch)),
            Err(e) => Err(e),
        }
    }

    /// Ends the session (its ephemeral nodes go at once), waiting at most until `deadline`.
    pub async fn close(&self, deadline: Instant) {
        let (done, wait) = oneshot::channel();
        if self.inner.commands.send(Command::Close(done)).is_ok() {
            let _ = timeout_at(deadline, wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_are_kept_for_rearming_and_fired_once() {
        let mut w = Watches::default();
        assert!(w.rearm(5).is_none(), "nothing to set again");
        let (fire_a, mut got_a) = oneshot::channel();
        let (fire_b, mut got_b) = oneshot::channel();
        let (fire_c, got_c) = oneshot::channel();
        w.add("/a".into(), Slot::Data, fire_a);
        w.add("/b".into(), Slot::Exist, fire_b);
        w.add("/c".into(), Slot::Data, fire_c);
        drop(got_c); // nobody waits on /c any more: not set again
        let payload = w.rearm(42).expect("watches to set again");
        let mut r = Reader::new(&payload);
        assert_eq!(r.long().unwrap(), 42);
        assert_eq!(r.int().unwrap(), 1);
        assert_eq!(r.string().unwrap(), "/a");
        assert_eq!(r.int().unwrap(), 1);
        assert_eq!(r.string().unwrap(), "/b");
        assert_eq!(r.int().unwrap(), 0);
        w.fire("/b", Some(1));
        assert!(got_b.try_recv().is_ok());
        assert!(got_a.try_recv().is_err(), "/a still armed");
        w.fire("/a", Some(3));
        assert!(got_a.try_recv().is_ok());
        assert!(w.rearm(42).is_none());
    }

    #[test]
    fn child_watches_fire_on_child_changes_and_deletion_only() {
        let mut w = Watches::default();
        let (fire_c, mut got_c) = oneshot::channel();
        let (fire_d, mut got_d) = oneshot::channel();
        w.add("/g".into(), Slot::Child, fire_c);
        w.add("/g".into(), Slot::Data, fire_d);
        let payload = w.rearm(7).expect("watches to set again");
        let mut r = Reader::new(&payload);
        assert_eq!(r.long().unwrap(), 7);
        assert_eq!((r.int().unwrap(), r.string().unwrap()), (1, "/g".to_owned()), "data");
        assert_eq!(r.int().unwrap(), 0, "exist");
        assert_eq!((r.int().unwrap(), r.string().unwrap()), (1, "/g".to_owned()), "child");
        w.fire("/g", Some(3)); // data changed: not a child change
        assert!(got_d.try_recv().is_ok());
        assert!(got_c.try_recv().is_err(), "child watch still armed");
        w.fire("/g", Some(NODE_CHILDREN_CHANGED));
        assert!(got_c.try_recv().is_ok());
        let (fire_e, mut got_e) = oneshot::channel();
        w.add("/g".into(), Slot::Child, fire_e);
        w.fire("/g", Some(NODE_DELETED));
        assert!(got_e.try_recv().is_ok(), "deletion fires child watches");
    }
}
