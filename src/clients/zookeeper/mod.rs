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

pub mod proto;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, timeout_at, Instant};

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

fn io_error(e: std::io::Error) -> String {
    e.to_string()
}

async fn write_frame(stream: &mut Stream, body: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as i32).to_be_bytes());
    frame.extend_from_slice(body);
    stream.write_all(&frame).await?;
    stream.flush().await
}

async fn read_frame(stream: &mut Stream, limit: usize) -> Result<Vec<u8>, String> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.map_err(io_error)?;
    let n = i32::from_be_bytes(len);
    if n < 0 || n as usize > limit {
        return Err(format!("bad frame length {n}"));
    }
    let mut body = vec![0u8; n as usize];
    stream.read_exact(&mut body).await.map_err(io_error)?;
    Ok(body)
}

/// Takes one complete frame off the front of `buf`, if there is one.
fn take_frame(buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>, String> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let n = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if n < 0 || n as usize > MAX_FRAME {
        return Err(format!("bad frame length {n}"));
    }
    let n = n as usize;
    if buf.len() < 4 + n {
        return Ok(None);
    }
    let frame = buf[4..4 + n].to_vec();
    buf.drain(..4 + n);
    Ok(Some(frame))
}

enum Attempt {
    /// Try another server (or the same one later).
    Retry(String),
    /// No point trying again.
    Fatal(ZkError),
}

/// One connection attempt to one server: TCP, TLS, the session handshake, authentication.
async fn attempt(config: &Config, host: &Host, session: &mut Session, deadline: Instant) -> Result<Stream, Attempt> {
    let unreachable = |what: &str, why: String| Attempt::Retry(format!("{}:{}: {what}: {why}", host.name, host.port));
    let tcp = match timeout_at(deadline, TcpStream::connect((host.name.as_str(), host.port))).await {
        Err(_) => return Err(unreachable("connect", "timed out".into())),
        Ok(Err(e)) => return Err(unreachable("connect", e.to_string())),
        Ok(Ok(s)) => s,
    };
    let _ = tcp.set_nodelay(true);
    let mut stream: Stream = match &config.tls {
        None => Box::new(tcp),
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from(host.name.clone())
                .map_err(|_| Attempt::Fatal(ZkError::Unreachable(format!("{} is not a valid TLS server name", host.name))))?;
            let connector = tokio_rustls::TlsConnector::from(tls.clone());
            match timeout_at(deadline, connector.connect(name, tcp)).await {
                Err(_) => return Err(unreachable("TLS handshake", "timed out".into())),
                Ok(Err(e)) => return Err(unreachable("TLS handshake", e.to_string())),
                Ok(Ok(s)) => Box::new(s),
            }
        }
    };
    let request = ConnectRequest {
        last_zxid_seen: session.last_zxid,
        timeout_ms: session.timeout.as_millis().min(i32::MAX as u128) as i32,
        session_id: session.id,
        password: &session.password,
    };
    let handshake = async {
        write_frame(&mut stream, &request.encode()).await.map_err(io_error)?;
        read_frame(&mut stream, 4096).await
    };
    let frame = match timeout_at(deadline, handshake).await {
        Err(_) => return Err(unreachable("session handshake", "timed out".into())),
        Ok(Err(e)) => return Err(unreachable("session handshake", e)),
        Ok(Ok(f)) => f,
    };
    let response = ConnectResponse::decode(&frame).map_err(|e| unreachable("session handshake", e.0.into()))?;
    if response.timeout_ms <= 0 {
        return Err(Attempt::Fatal(ZkError::SessionEnded(Ended::Expired)));
    }
    session.id = response.session_id;
    session.password = response.password;
    session.timeout = Duration::from_millis(response.timeout_ms as u64);
    // Authenticate before anything else is sent; the server answers each packet in order
    // (and closes the connection after a refusal).
    for (scheme, credentials) in &config.auth {
        let sent = write_frame(&mut stream, &proto::request(xid::AUTH, op::AUTH, &proto::auth(scheme, credentials))).await;
        sent.map_err(|e| unreachable("authentication", e.to_string()))?;
    }
    for _ in &config.auth {
        let frame = match timeout_at(deadline, read_frame(&mut stream, 4096)).await {
            Err(_) => return Err(unreachable("authentication", "timed out".into())),
            Ok(Err(_)) => return Err(Attempt::Fatal(ZkError::SessionEnded(Ended::AuthFailed))),
            Ok(Ok(f)) => f,
        };
        let header = ReplyHeader::decode(&mut Reader::new(&frame)).map_err(|e| unreachable("authentication", e.0.into()))?;
        if header.err != 0 {
            return Err(Attempt::Fatal(ZkError::SessionEnded(Ended::AuthFailed)));
        }
    }
    Ok(stream)
}

/// The order in which to try the hosts on one pass: as given, or shuffled.
fn host_order(config: &Config) -> Vec<usize> {
    let mut order: Vec<usize> = (0..config.hosts.len()).collect();
    if config.randomize_hosts {
        let mut seed = uuid::Uuid::new_v4().as_u128();
        for i in (1..order.len()).rev() {
            order.swap(i, (seed % (i as u128 + 1)) as usize);
            seed /= i as u128 + 1;
        }
    }
    order
}

/// Connects to one of the servers, passing over them until `deadline`.
async fn establish(config: &Config, session: &mut Session, deadline: Instant) -> ZkResult<Stream> {
    if config.hosts.is_empty() {
        return Err(ZkError::Unreachable("no hosts given".into()));
    }
    let mut last = String::from("no attempt made");
    let mut pause = Duration::from_millis(50);
    loop {
        for i in host_order(config) {
            if Instant::now() >= deadline {
                return Err(ZkError::Unreachable(last));
            }
            match attempt(config, &config.hosts[i], session, deadline).await {
                Ok(stream) => return Ok(stream),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(why)) => last = why,
            }
        }
        let wake = (Instant::now() + pause).min(deadline);
        sleep_until(wake).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

enum Outcome {
    /// The connection dropped; the session may still be alive.
    Lost,
    Ended(Ended),
}

struct Pending {
    op: i32,
    reply: Reply,
    watch: Option<Watcher>,
}

/// The session task.
async fn run(
    config: Arc<Config>,
    mut session: Session,
    first: Stream,
    mut commands: mpsc::UnboundedReceiver<Command>,
    state: watch::Sender<State>,
) {
    let mut epoch = 1u64;
    let mut stream = Some(first);
    let mut last_heard = Instant::now();
    let mut closer: Option<oneshot::Sender<()>> = None;
    let mut watches = Watches::default();
    let ended = loop {
        let conn = match stream.take() {
            Some(s) => s,
            None => {
                let _ = state.send(State::Connecting);
                let give_up = last_heard + session.timeout;
                let reconnect = establish(&config, &mut session, give_up);
                tokio::pin!(reconnect);
                let got = loop {
                    tokio::select! {
                        r = &mut reconnect => break Some(r),
                        cmd = commands.recv() => match cmd {
                            None => break None,
                            Some(Command::Close(done)) => { closer = Some(done); break None }
                            Some(Command::Request { reply, .. }) => { let _ = reply.send(Err(ZkError::ConnectionLoss)); }
                        },
                    }
                };
                match got {
                    None => break Ended::Closed,
                    Some(Ok(s)) => {
                        epoch += 1;
                        let _ = state.send(State::Connected(epoch));
                        log::emit(log::Level::Info, config.log_as.0.clone(), format!("{}: reconnected, session kept", config.log_as.1));
                        s
                    }
                    Some(Err(ZkError::SessionEnded(e))) => break e,
                    // Out of time: the server has expired the session by now.
                    Some(Err(_)) => break Ended::Expired,
                }
            }
        };
        match serve(conn, epoch, &mut session, &mut watches, &mut commands, &mut last_heard, &mut closer).await {
            Outcome::Lost => {
                log::emit(
                    log::Level::Warning,
                    config.log_as.0.clone(),
                    format!("{}: connection lost; reconnecting within the {:?} session timeout", config.log_as.1, session.timeout),
                );
                continue;
            }
            Outcome::Ended(e) => break e,
        }
    };
    if ended == Ended::Expired {
        log::emit(
            log::Level::Warning,
            config.log_as.0.clone(),
            format!("{}: session expired; its ephemeral nodes (members, locks, leaders) are gone", config.log_as.1),
        );
    }
    // The session is gone, and its watches with it (their receivers see the sender dropped).
    drop(watches);
    let _ = state.send(State::Ended(ended));
    commands.close();
    while let Some(cmd) = commands.recv().await {
        match cmd {
            Command::Request { reply, .. } => {
                let _ = reply.send(Err(ZkError::SessionEnded(ended)));
            }
            Command::Close(done) => {
                let _ = done.send(());
            }
        }
    }
    if let Some(done) = closer {
        let _ = done.send(());
    }
}

/// Serves one connection until it drops or the session ends.
async fn serve(
    mut stream: Stream,
    epoch: u64,
    session: &mut Session,
    watches: &mut Watches,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    last_heard: &mut Instant,
    closer: &mut Option<oneshot::Sender<()>>,
) -> Outcome {
    let read_timeout = (session.timeout * 2 / 3).max(Duration::from_millis(100));
    let ping_every = read_timeout / 2;
    let mut pending: HashMap<i32, Pending> = HashMap::new();
    let mut next_xid: i32 = 1;
    // Set the session's watches again before anything else is sent on this connection.
    if let Some(payload) = watches.rearm(session.last_zxid) {
        if write_frame(&mut stream, &proto::request(xid::SET_WATCHES, op::SET_WATCHES, &payload)).await.is_err() {
            return Outcome::Lost;
        }
    }
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut last_sent = Instant::now();
    *last_heard = Instant::now();
    let mut closing: Option<Instant> = None;

    let outcome = 'conn: loop {
        // Handle every complete frame received so far.
        loop {
            let frame = match take_frame(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => break 'conn Outcome::Lost,
            };
            let mut r = Reader::new(&frame);
            let Ok(header) = ReplyHeader::decode(&mut r) else { break 'conn Outcome::Lost };
            if header.zxid > session.last_zxid {
                session.last_zxid = header.zxid;
            }
            match header.xid {
                xid::PING => {}
                xid::AUTH => {
                    if header.err != 0 {
                        break 'conn Outcome::Ended(Ended::AuthFailed);
                    }
                }
                xid::NOTIFICATION => {
                    let Ok(event) = WatcherEvent::decode(&mut r) else { break 'conn Outcome::Lost };
                    if event.kind != -1 {
                        watches.fire(&event.path, Some(event.kind));
                    }
                }
                // The watches could not be set again: wake their waiters to look again.
                xid::SET_WATCHES if header.err != 0 => {
                    for p in watches.paths() {
                        watches.fire(&p, None);
                    }
                }
                xid::SET_WATCHES => {}
                n => {
                    let Some(p) = pending.remove(&n) else { continue };
                    if p.op == op::CLOSE_SESSION {
                        break 'conn Outcome::Ended(Ended::Closed);
                    }
                    if header.err == code::SESSION_EXPIRED || header.err == code::SESSION_MOVED {
                        let _ = p.reply.send(Err(ZkError::SessionEnded(Ended::Expired)));
                        break 'conn Outcome::Ended(Ended::Expired);
                    }
                    if let Some(w) = p.watch {
                        let slot = match (w.on_children, header.err) {
                            (true, 0) => Some(Slot::Child),
                            (false, 0) => Some(Slot::Data),
                            (false, code::NO_NODE) => Some(Slot::Exist),
                            _ => None,
                        };
                        if let Some(slot) = slot {
                            watches.add(w.path, slot, w.fire);
                        }
                    }
                    let rest = frame[frame.len() - r.remaining()..].to_vec();
                    let _ = p.reply.send(if header.err == 0 { Ok(rest) } else { Err(ZkError::Server(header.err)) });
                }
            }
        }

        let ping_at = last_sent + ping_every;
        let silent_at = *last_heard + read_timeout;
        let close_at = closing.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            r = stream.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => break 'conn if closing.is_some() { Outcome::Ended(Ended::Closed) } else { Outcome::Lost },
                Ok(_) => *last_heard = Instant::now(),
            },
            cmd = commands.recv(), if closing.is_none() => {
                let (op_code, payload, watch, reply) = match cmd {
                    None => (op::CLOSE_SESSION, Vec::new(), None, None),
                    Some(Command::Close(done)) => {
                        *closer = Some(done);
                        (op::CLOSE_SESSION, Vec::new(), None, None)
                    }
                    Some(Command::Request { epoch: e, reply, .. }) if e != epoch => {
                        let _ = reply.send(Err(ZkError::ConnectionLoss));
                        continue;
                    }
                    Some(Command::Request { op, payload, watch, reply, .. }) => (op, payload, watch, Some(reply)),
                };
                let x = next_xid;
                next_xid = if next_xid >= i32::MAX - 1 { 1 } else { next_xid + 1 };
                if write_frame(&mut stream, &proto::request(x, op_code, &payload)).await.is_err() {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(ZkError::ConnectionLoss));
                    }
                    break 'conn if op_code == op::CLOSE_SESSION { Outcome::Ended(Ended::Closed) } else { Outcome::Lost };
                }
                last_sent = Instant::now();
                if op_code == op::CLOSE_SESSION {
                    closing = Some(Instant::now() + session.timeout.min(Duration::from_secs(3)));
                    let (reply, _) = oneshot::channel();
                    pending.insert(x, Pending { op: op_code, reply, watch: None });
                } else if let Some(reply) = reply {
                    pending.insert(x, Pending { op: op_code, reply, watch });
                }
            },
            _ = sleep_until(ping_at) => {
                if write_frame(&mut stream, &proto::request(xid::PING, op::PING, &[])).await.is_err() {
                    break 'conn Outcome::Lost;
                }
                last_sent = Instant::now();
            },
            _ = sleep_until(silent_at) => break 'conn Outcome::Lost,
            _ = sleep_until(close_at), if closing.is_some() => break 'conn Outcome::Ended(Ended::Closed),
        }
    };
    // Whatever was in flight on this connection has an unknown outcome. Watches stay with the
    // session (set again on its next connection).
    for (_, p) in pending.drain() {
        let err = match outcome {
            Outcome::Lost => ZkError::ConnectionLoss,
            Outcome::Ended(e) => ZkError::SessionEnded(e),
        };
        let _ = p.reply.send(Err(err));
    }
    let _ = stream.shutdown().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_split_and_bounded() {
        let mut buf = vec![0, 0, 0, 2, b'a', b'b', 0, 0, 0];
        assert_eq!(take_frame(&mut buf).unwrap(), Some(b"ab".to_vec()));
        assert_eq!(take_frame(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[1, b'c']);
        assert_eq!(take_frame(&mut buf).unwrap(), Some(b"c".to_vec()));
        assert!(buf.is_empty());
        let mut bad = vec![0xff, 0xff, 0xff, 0xff];
        assert!(take_frame(&mut bad).is_err());
        let mut huge = vec![0x7f, 0xff, 0xff, 0xff];
        assert!(take_frame(&mut huge).is_err());
    }

    fn config(n: usize, randomize_hosts: bool) -> Config {
        Config {
            hosts: (0..n).map(|i| Host { name: format!("h{i}"), port: 2181 }).collect(),
            randomize_hosts,
            log_as: ("tooz.test".into(), "test".into()),
            chroot: String::new(),
            session_timeout: Duration::from_secs(1),
            auth: Vec::new(),
            tls: None,
        }
    }

    #[test]
    fn hosts_are_tried_in_the_given_order_on_every_pass_unless_randomized() {
        let fixed = config(5, false);
        for _ in 0..20 {
            assert_eq!(host_order(&fixed), vec![0, 1, 2, 3, 4]);
        }
        let random = config(5, true);
        let orders: Vec<Vec<usize>> = (0..50).map(|_| host_order(&random)).collect();
        for o in &orders {
            let mut sorted = o.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1, 2, 3, 4], "a permutation");
        }
        assert!(orders.iter().any(|o| o != &orders[0]), "fresh order per pass");
    }

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
