//! `zookeeper://` and `kazoo://`: the ZooKeeper backend, znode for znode what upstream's
//! kazoo-based driver writes, so processes on upstream and on ours share groups, locks and
//! leaders during a rolling upgrade:
//!
//! * `/<ns>` (persistent, made at start); group `/<ns>/<g>` (persistent, empty); member
//!   `/<ns>/<g>/<m>` (ephemeral, msgpack capabilities), so a member lives as long as its
//!   session;
//! * lock `name`: kazoo's lock recipe under `/<ns>/locks/<name>` (see `lock.rs`);
//! * leader of `g`: the same recipe under `/<ns>/<g>/leader` (which therefore shows up as a
//!   member `leader`, as it does upstream).
//!
//! The protocol client is our own (`crate::clients::zookeeper`) and runs on the shared tokio
//! runtime: the session survives dropped connections while the server keeps it, and a
//! forked child gets working sessions of its own.
//!
//! One file of about 780 lines (and its tests): the session link, the node layout and every
//! group, member and leader call share the helpers above them, and split by call they would
//! send a reader back and forth; kazoo's lock recipe, which stands alone, is `lock.rs`.

mod lock;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::{timeout_at, Instant};

use super::options::Options;
use crate::clients::tls::{self, ClientCert, Named, TlsOptions, Verify};
use super::Url;
use crate::driver::{Driver, DriverLock, MemberInfo, Op, Wait};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::msgpack::{self, Value};
use crate::runtime;
use crate::clients::zookeeper::{Client, Config, Ended, Host, State, ZkError};
use lock::ZkLock;
use crate::clients::zookeeper::proto::{self, code, mode, Acl};

const DEFAULT_PORT: u16 = 2181;

/// The tooz error for a failed ZooKeeper call (specific codes are handled by the callers).
pub(crate) fn zk_error(what: &str, e: ZkError) -> Error {
    match e {
        ZkError::Server(code::BAD_ARGUMENTS) | ZkError::Server(code::INVALID_ACL) => {
            Error::InvalidArgument(format!("{what}: {e}"))
        }
        ZkError::Server(code::CONNECTION_LOSS) | ZkError::Server(code::SESSION_EXPIRED) | ZkError::Server(code::SESSION_MOVED) => {
            Error::Connection(format!("{what}: {e}"))
        }
        ZkError::Server(_) | ZkError::Protocol(_) => Error::Tooz(format!("{what}: {e}")),
        ZkError::ConnectionLoss | ZkError::Unreachable(_) | ZkError::SessionEnded(_) => Error::Connection(format!("{what}: {e}")),
    }
}

/// The session shared by a coordinator and its locks: made at start, remade on demand after
/// it ended (expiry), closed at stop.
pub(crate) struct Link {
    config: Arc<Config>,
    acls: Vec<Acl>,
    /// How long one call may take (option `timeout`).
    budget: Duration,
    /// The session and the fork generation (`runtime::generation`) it was opened in.
    current: Mutex<Option<(u64, Client)>>,
    connecting: tokio::sync::Mutex<()>,
    /// Sessions opened so far: a new one means the previous one ended, and its ephemeral
    /// nodes (members, locks, leaders) with it.
    sessions: std::sync::atomic::AtomicU64,
    /// Locks held, with the session they are held in (checked at each heartbeat).
    holdings: Mutex<Vec<(std::sync::Weak<crate::lock::fate::Fate>, i64)>>,
}

impl Link {
    pub(crate) fn budget(&self) -> Duration {
        self.budget
    }

    pub(crate) fn session_timeout(&self) -> Duration {
        self.config.session_timeout
    }

    pub(crate) fn acls(&self) -> &[Acl] {
        &self.acls
    }

    /// The current session, if there is one that has not ended (never connects).
    pub(crate) fn peek(&self) -> Option<Client> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|(generation, _)| *generation != runtime::generation()) {
            // Forked: the session's task stayed in the parent. Leave its handle alone (the
            // parent still uses the session) and let this process open its own.
            if let Some(inherited) = current.take() {
                std::mem::forget(inherited);
            }
        }
        current.as_ref().map(|(_, c)| c.clone()).filter(|c| !c.is_ended())
    }

    /// A connected session: the current one once it is connected, or a new one.
    pub(crate) async fn client(&self, deadline: Instant) -> Result<Client> {
        loop {
            if let Some(c) = self.peek() {
                match c.wait_connected(deadline).await {
                    Ok(()) => return Ok(c),
                    Err(ZkError::SessionEnded(_)) => continue,
                    Err(_) => {
                        return Err(Error::Connection(format!(
                            "not connected to ZooKeeper ({}) after {:.1}s",
                            self.describe(),
                            self.budget.as_secs_f64()
                        )))
                    }
                }
            }
            let _one_at_a_time = timeout_at(deadline, self.connecting.lock())
                .await
                .map_err(|_| Error::Connection(format!("timed out connecting to ZooKeeper ({})", self.describe())))?;
            if self.peek().is_some() {
                continue;
            }
            let c = Client::connect(self.config.clone(), deadline).await.map_err(|e| match e {
                ZkError::SessionEnded(Ended::AuthFailed) => Error::Connection(format!("ZooKeeper ({}) refused the credentials", self.describe())),
                e => Error::Connection(format!("cannot connect to ZooKeeper ({}): {e}", self.describe())),
            })?;
            *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((runtime::generation(), c.clone()));
            self.sessions.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Ok(c);
        }
    }

    fn describe(&self) -> String {
        describe_hosts(&self.config.hosts)
    }

    /// A lock was won in `session`.
    pub(crate) fn note_holding(&self, fate: &Arc<crate::lock::fate::Fate>, session: i64) {
        let mut holdings = self.holdings.lock().unwrap_or_else(|p| p.into_inner());
        holdings.retain(|(f, _)| f.upgrade().is_some_and(|f| f.holding() && !Arc::ptr_eq(&f, fate)));
        holdings.push((Arc::downgrade(fate), session));
    }

    /// Reports the held locks whose session is no longer the current one.
    fn check_holdings(&self) {
        let current = self.peek().map(|c| c.session_id());
        let lost: Vec<Arc<crate::lock::fate::Fate>> = {
            let mut holdings = self.holdings.lock().unwrap_or_else(|p| p.into_inner());
            let mut lost = Vec::new();
            holdings.retain(|(f, session)| match f.upgrade() {
                Some(f) if f.holding() && Some(*session) != current => {
                    lost.push(f);
                    false
                }
                Some(f) => f.holding(),
                None => false,
            });
            lost
        };
        for fate in lost {
            fate.lost("its ZooKeeper session ended, and its node with it");
        }
    }

    /// The error for a call that ran out of time: a timeout if the session is connected
    /// (the server is slow), a connection error if it is not.
    pub(crate) fn late(&self, what: &str, client: &Client) -> Error {
        match client.state() {
            State::Connected(_) => Error::Timeout(format!("{what}: no answer from ZooKeeper within {:.1}s", self.budget.as_secs_f64())),
            _ => Error::Connection(format!("{what}: lost the connection to ZooKeeper ({})", self.describe())),
        }
    }

    /// Runs one call on a connected session within the time budget. The outer error is the
    /// session's (connection, time); the inner one the server's answer, for the caller to map.
    async fn run<T, F, Fut>(&self, what: &str, call: F) -> Result<std::result::Result<T, ZkError>>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, ZkError>>,
    {
        let deadline = Instant::now() + self.budget;
        let c = self.client(deadline).await?;
        match timeout_at(deadline, call(c.clone())).await {
            Err(_) => Err(self.late(what, &c)),
            Ok(Err(e @ (ZkError::ConnectionLoss | ZkError::SessionEnded(_) | ZkError::Unreachable(_)))) => Err(zk_error(what, e)),
            Ok(r) => Ok(r),
        }
    }

    /// Creates `path` and any missing parent (kazoo's `ensure_path`).
    pub(crate) async fn make_dirs(&self, client: &Client, path: &str, deadline: Instant) -> Result<()> {
        let mut missing: Vec<&str> = Vec::new();
        let mut target = path;
        loop {
            if target == "/" || target.is_empty() {
                return Ok(());
            }
            let made = timeout_at(deadline, client.create(target, b"", &self.acls, mode::PERSISTENT))
                .await
                .map_err(|_| self.late("create path", client))?;
            match made {
                Ok(_) | Err(ZkError::Server(code::NODE_EXISTS)) => match missing.pop() {
                    Some(next) => target = next,
                    None => return Ok(()),
                },
                Err(ZkError::Server(code::NO_NODE)) => {
                    missing.push(target);
                    target = match target.rfind('/') {
                        Some(0) | None => "/",
                        Some(i) => &target[..i],
                    };
                }
                Err(e) => return Err(zk_error("create path", e)),
            }
        }
    }

    async fn close(&self) {
        let current = self.peek();
        self.current.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(c) = current {
            c.close(Instant::now() + self.budget.min(Duration::from_secs(5))).await;
        }
    }
}

/// A node name from an id: ZooKeeper paths are text.
fn id_text(id: &Id, what: &str) -> Result<String> {
    match id {
        Id::Text(s) => Ok(s.clone()),
        Id::Bytes(b) => String::from_utf8(b.clone())
            .map_err(|_| Error::InvalidArgument(format!("{what} {id} is not valid UTF-8 (ZooKeeper node names are text)"))),
    }
}

/// Joins path parts as kazoo does: a part starting with `/` starts over, empty components
/// vanish, `.` and `..` are refused.
fn zk_path(parts: &[&str]) -> Result<String> {
    let mut joined = String::from("/");
    for p in parts {
        if p.starts_with('/') {
            joined = (*p).to_owned();
        } else {
            if !joined.ends_with('/') {
                joined.push('/');
            }
            joined.push_str(p);
        }
    }
    let mut out = String::with_capacity(joined.len());
    for comp in joined.split('/').filter(|c| !c.is_empty()) {
        if comp == "." || comp == ".." || comp.contains('\0') {
            return Err(Error::InvalidArgument(format!("{joined:?} is not a valid ZooKeeper path")));
        }
        out.push('/');
        out.push_str(comp);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The ACL kazoo's `make_digest_acl(user, password, all=True)` builds.
fn digest_acl(user: &str, password: &str) -> Acl {
    use sha1::{Digest, Sha1};
    let hash = Sha1::digest(format!("{user}:{password}").as_bytes());
    Acl { perms: proto::PERM_ALL, scheme: "digest".into(), id: format!("{user}:{}", base64(&hash)) }
}

/// `host[:port]`, `[v6][:port]` or a bare IPv6 address.
fn parse_host(raw: &str) -> Result<Host> {
    let (name, port) = super::options::host_port(raw, DEFAULT_PORT)?;
    Ok(Host { name, port })
}

fn describe_hosts(hosts: &[Host]) -> String {
    hosts.iter().map(|h| format!("{}:{}", h.name, h.port)).collect::<Vec<_>>().join(",")
}

/// The hosts and chroot of kazoo's connect string: `h1[:p1],h2[:p2][/chroot]`.
fn parse_hosts(entries: &[String]) -> Result<(Vec<Host>, String)> {
    let mut hosts = Vec::new();
    let mut chroot = String::new();
    for entry in entries {
        let (list, root) = match entry.find('/') {
            Some(i) => (&entry[..i], Some(&entry[i..])),
            None => (entry.as_str(), None),
        };
        if let Some(root) = root {
            let root = zk_path(&[root])?;
            chroot = if root == "/" { String::new() } else { root };
        }
        for h in list.split(',').filter(|h| !h.trim().is_empty()) {
            hosts.push(parse_host(h)?);
        }
    }
    if hosts.is_empty() {
        hosts.push(Host { name: "localhost".into(), port: DEFAULT_PORT });
    }
    Ok((hosts, chroot))
}

/// TLS from kazoo's options: `use_ssl`, `ca`, `certfile` with `keyfile`, `verify_certs`;
/// `None` without `use_ssl`. `keyfile_password` is refused (encrypted keys are not supported).
fn tls_config(options: &Options) -> Result<Option<Arc<rustls::ClientConfig>>> {
    if !options.bool("use_ssl", false) {
        return Ok(None);
    }
    let client_cert = match (Named::lookup(options, "certfile"), Named::lookup(options, "keyfile")) {
        (Some(cert), Some(key)) => Some(ClientCert { cert, key }),
        (None, None) => None,
        _ => return Err(Error::InvalidArgument("certfile and keyfile go together".into())),
    };
    let config = tls::client_config(&TlsOptions {
        ca_file: Named::lookup(options, "ca"),
        client_cert,
        key_password: Named::lookup(options, "keyfile_password"),
        verify: if options.bool("verify_certs", true) { Verify::Full } else { Verify::Nothing },
    })?;
    Ok(Some(config))
}

pub struct ZooKeeperDriver {
    member: Id,
    member_node: std::result::Result<String, Error>,
    link: Arc<Link>,
    base: String,
    timeout: f64,
    /// Leader locks by leader directory, created by elections (kazoo keeps one per group).
    leaders: Mutex<HashMap<String, Arc<ZkLock>>>,
}

impl ZooKeeperDriver {
    pub fn new(member: Id, url: &Url, options: &Options) -> Result<ZooKeeperDriver> {
        let timeout = options.float("timeout", 10.0)?;
        if timeout <= 0.0 || timeout > 1e6 {
            return Err(Error::InvalidArgument(format!("option timeout={timeout} must be positive and at most 1e6 seconds")));
        }
        match options.str("handler") {
            None | Some("threading") | Some("eventlet") => {}
            Some(other) => {
                return Err(Error::InvalidArgument(format!(
                    "Unknown handler '{other}' requested valid handlers are ['eventlet', 'threading']"
                )))
            }
        }
        for retry in ["connection_retry", "command_retry"] {
            // kazoo takes these as retry policies; a URL can only carry text. Accepted, unused:
            // reconnection and call time limits follow `timeout`.
            let _ = options.str(retry);
        }
        let mut entries = Vec::new();
        if let Some(h) = url.host.as_deref().filter(|h| !h.is_empty()) {
            let h = if h.contains(':') { format!("[{h}]") } else { h.to_owned() };
            entries.push(match url.port {
                Some(p) => format!("{h}:{p}"),
                None => h,
            });
        }
        if let Some(extra) = options.str("hosts") {
            entries.extend(extra.split(',').filter(|s| !s.trim().is_empty()).map(str::to_owned));
        }
        let (hosts, chroot) = parse_hosts(&entries)?;
        let tls = tls_config(options)?;
        let (auth, acls) = match (url.username.as_deref(), url.password.as_deref()) {
            (Some(u), Some(p)) if !u.is_empty() => {
                (vec![("digest".to_owned(), format!("{u}:{p}").into_bytes())], vec![digest_acl(u, p)])
            }
            _ => (Vec::new(), vec![Acl::world_anyone()]),
        };
        let namespace = options.str("namespace").unwrap_or("tooz");
        let base = zk_path(&[namespace])?;
        let member_node = id_text(&member, "member id");
        let log_as = ("tooz.drivers.zookeeper".to_owned(), format!("member {member} on zookeeper at {}", describe_hosts(&hosts)));
        let config = Config {
            hosts,
            randomize_hosts: options.bool("randomize_hosts", true),
            log_as,
            chroot,
            session_timeout: Duration::from_secs_f64(timeout),
            auth,
            tls,
        };
        Ok(ZooKeeperDriver {
            member,
            member_node,
            link: Arc::new(Link {
                config: Arc::new(config),
                acls,
                budget: Duration::from_secs_f64(timeout),
                current: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                sessions: std::sync::atomic::AtomicU64::new(0),
                holdings: Mutex::new(Vec::new()),
            }),
            base,
            timeout,
            leaders: Mutex::new(HashMap::new()),
        })
    }

    fn member_node(&self) -> Result<&str> {
        self.member_node.as_deref().map_err(Clone::clone)
    }

    fn group_path(&self, group: &Id) -> Result<String> {
        zk_path(&[&self.base, &id_text(group, "group id")?])
    }

    fn member_path(&self, group: &Id, member: &str) -> Result<String> {
        zk_path(&[&self.base, &id_text(group, "group id")?, member])
    }

    fn leader_dir(&self, group: &Id) -> Result<String> {
        zk_path(&[&self.group_path(group)?, "leader"])
    }

    /// After a member node was not found: is it the group that is missing?
    async fn member_missing(&self, group: &Id, member: &Id) -> Error {
        let Ok(path) = self.group_path(group) else {
            return Error::GroupNotCreated(group.clone());
        };
        match self.link.run("check group", |c| async move { c.node_exists(&path).await }).await {
            Ok(Ok(false)) => Error::GroupNotCreated(group.clone()),
            _ => Error::MemberNotJoined { group: group.clone(), member: member.clone() },
        }
    }

    fn decode_caps(data: &[u8]) -> Result<Value> {
        if data.is_empty() {
            Ok(Value::Nil)
        } else {
            msgpack::decode(data)
        }
    }
}

impl Client {
    /// Whether a node exists (no watch).
    async fn node_exists(&self, path: &str) -> std::result::Result<bool, ZkError> {
        match self.get_data(path).await {
            Ok(_) => Ok(true),
            Err(ZkError::Server(code::NO_NODE)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl Driver for ZooKeeperDriver {
    fn supports(&self, op: Op) -> bool {
        let _ = op;
        true
    }

    fn epoch(&self) -> u64 {
        self.link.sessions.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn requires_beating(&self) -> bool {
        true
    }

    async fn start(&self) -> Result<()> {
        self.link.close().await;
        self.leaders.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let deadline = Instant::now() + self.link.budget;
        let client = self.link.client(deadline).await?;
        self.link.make_dirs(&client, &self.base, deadline).await
    }

    async fn stop(&self) -> Result<()> {
        self.leaders.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.link.close().await;
        Ok(())
    }

    async fn heartbeat(&self) -> Result<Option<f64>> {
        self.link.check_holdings();
        let base = self.base.clone();
        match self.link.run("heartbeat", |c| async move { c.get_data(&base).await }).await? {
            Ok(_) | Err(ZkError::Server(code::NO_NODE)) => Ok(Some(self.timeout)),
            Err(e) => Err(zk_error("heartbeat", e)),
        }
    }

    async fn create_group(&self, group: &Id) -> Result<()> {
        let path = self.group_path(group)?;
        let acls = self.link.acls.clone();
        match self.link.run("create group", |c| async move { c.create(&path, b"", &acls, mode::PERSISTENT).await }).await? {
            Ok(_) => Ok(()),
            Err(ZkError::Server(code::NODE_EXISTS)) => Err(Error::GroupAlreadyExist(group.clone())),
            Err(ZkError::Server(code::NO_NODE)) => {
                Err(Error::Tooz(format!("Tooz namespace '{}' has not been created", self.base.trim_start_matches('/'))))
            }
            Err(e) => Err(zk_error("create group", e)),
        }
    }

    async fn delete_group(&self, group: &Id) -> Result<()> {
        let path = self.group_path(group)?;
        match self.link.run("delete group", |c| async move { c.delete(&path).await }).await? {
            Ok(()) => Ok(()),
            Err(ZkError::Server(code::NO_NODE)) => Err(Error::GroupNotCreated(group.clone())),
            Err(ZkError::Server(code::NOT_EMPTY)) => Err(Error::GroupNotEmpty(group.clone())),
            Err(e) => Err(zk_error("delete group", e)),
        }
    }

    async fn get_groups(&self) -> Result<Vec<Id>> {
        let base = self.base.clone();
        match self.link.run("get groups", |c| async move { c.get_children(&base).await }).await? {
            Ok(children) => Ok(children.into_iter().map(|g| Id::Bytes(g.into_bytes())).collect()),
            Err(ZkError::Server(code::NO_NODE)) => {
                Err(Error::Tooz(format!("Tooz namespace '{}' has not been created", self.base.trim_start_matches('/'))))
            }
            Err(e) => Err(zk_error("get groups", e)),
        }
    }

    async fn join_group(&self, group: &Id, capabilities: &Value) -> Result<()> {
        let member = self.member_node()?;
        if member.is_empty() || member.contains('/') {
            return Err(Error::InvalidArgument(format!("member id {:?} cannot name a ZooKeeper node", member)));
        }
        let path = self.member_path(group, member)?;
        let caps = msgpack::encode(capabilities);
        let acls = self.link.acls.clone();
        match self.link.run("join group", |c| async move { c.create(&path, &caps, &acls, mode::EPHEMERAL).await }).await? {
            Ok(_) => Ok(()),
            Err(ZkError::Server(code::NODE_EXISTS)) => {
                Err(Error::MemberAlreadyExist { group: group.clone(), member: self.member.clone() })
            }
            Err(ZkError::Server(code::NO_NODE)) => Err(Error::GroupNotCreated(group.clone())),
            Err(e) => Err(zk_error("join group", e)),
        }
    }

    async fn rejoin_group(&self, group: &Id, capabilities: &Value) -> Result<()> {
        match self.join_group(group, capabilities).await {
            Err(Error::MemberAlreadyExist { .. }) => {}
            other => return other,
        }
        // A restarted server keeps an expired session's ephemeral nodes until it expires the
        // session itself: a node of ours from an earlier session is about to vanish. Replace it.
        let path = self.member_path(group, self.member_node()?)?;
        let stale = self
            .link
            .run("rejoin group", |c| async move {
                let (_, stat) = c.get_data(&path).await?;
                if stat.ephemeral_owner == c.session_id() {
                    return Ok(false);
                }
                match c.delete(&path).await {
                    Ok(()) | Err(ZkError::Server(code::NO_NODE)) => Ok(true),
                    Err(e) => Err(e),
                }
            })
            .await?;
        match stale {
            Ok(false) => Err(Error::MemberAlreadyExist { group: group.clone(), member: self.member.clone() }),
            Ok(true) | Err(ZkError::Server(code::NO_NODE)) => self.join_group(group, capabilities).await,
            Err(e) => Err(zk_error("rejoin group", e)),
        }
    }

    async fn leave_group(&self, group: &Id) -> Result<()> {
        let path = self.member_path(group, self.member_node()?)?;
        match self.link.run("leave group", |c| async move { c.delete(&path).await }).await? {
            Ok(()) => Ok(()),
            // Upstream's answer whether or not the group exists.
            Err(ZkError::Server(code::NO_NODE)) => {
                Err(Error::MemberNotJoined { group: group.clone(), member: self.member.clone() })
            }
            Err(e) => Err(zk_error("leave group", e)),
        }
    }

    async fn get_members(&self, group: &Id) -> Result<Vec<Id>> {
        let path = self.group_path(group)?;
        match self.link.run("get members", |c| async move { c.get_children(&path).await }).await? {
            Ok(children) => Ok(children.into_iter().map(|m| Id::Bytes(m.into_bytes())).collect()),
            Err(ZkError::Server(code::NO_NODE)) => Err(Error::GroupNotCreated(group.clone())),
            Err(e) => Err(zk_error("get members", e)),
        }
    }

    /// Pushed: a child watch on the group node (an exists watch while the group is missing)
    /// wakes the wait; `poll` is only a safety net.
    async fn next_members(&self, group: &Id, known: &[Id], poll: Duration) -> Result<Vec<Id>> {
        let path = self.group_path(group)?;
        loop {
            let p = path.clone();
            let seen = self
                .link
                .run("watch members", |c| async move {
                    match c.get_children_and_watch(&p).await {
                        Ok((children, watch)) => Ok((Some(children), watch)),
                        Err(ZkError::Server(code::NO_NODE)) => {
                            c.exists_and_watch(&p).await.map(|(exists, watch)| (if exists { None } else { Some(Vec::new()) }, watch))
                        }
                        Err(e) => Err(e),
                    }
                })
                .await?;
            match seen {
                // The group appeared between the two reads: look at its children again.
                Ok((None, _)) => continue,
                Ok((Some(children), watch)) => {
                    let now: Vec<Id> = children.into_iter().map(|m| Id::Bytes(m.into_bytes())).collect();
                    if !crate::driver::same_members(&now, known) {
                        return Ok(now);
                    }
                    let _ = tokio::time::timeout(poll, watch).await;
                }
                Err(e) => return Err(zk_error("watch members", e)),
            }
        }
    }

    async fn get_member_capabilities(&self, group: &Id, member: &Id) -> Result<Value> {
        let path = self.member_path(group, &id_text(member, "member id")?)?;
        match self.link.run("get member capabilities", |c| async move { c.get_data(&path).await }).await? {
            Ok((data, _)) => Self::decode_caps(&data),
            Err(ZkError::Server(code::NO_NODE)) => Err(self.member_missing(group, member).await),
            Err(e) => Err(zk_error("get member capabilities", e)),
        }
    }

    async fn get_members_with_capabilities(&self, group: &Id) -> Result<Vec<(Id, Value)>> {
        let path = self.group_path(group)?;
        let read = self
            .link
            .run("get members", |c| async move {
                let children = c.get_children(&path).await?;
                // Send every read before waiting for the first answer.
                let mut pending = Vec::with_capacity(children.len());
                for m in &children {
                    let member_path = if path == "/" { format!("/{m}") } else { format!("{path}/{m}") };
                    pending.push(c.start_get_data(&member_path)?);
                }
                let mut out = Vec::with_capacity(children.len());
                for (m, p) in children.into_iter().zip(pending) {
                    match Client::finish_get_data(p).await {
                        Ok((data, _)) => out.push((m, data)),
                        Err(ZkError::Server(code::NO_NODE)) => {} // left meanwhile
                        Err(e) => return Err(e),
                    }
                }
                Ok(out)
            })
            .await?;
        match read {
            Ok(members) => members
                .into_iter()
                .map(|(m, data)| Ok((Id::Bytes(m.into_bytes()), Self::decode_caps(&data)?)))
                .collect(),
            Err(ZkError::Server(code::NO_NODE)) => Err(Error::GroupNotCreated(group.clone())),
            Err(e) => Err(zk_error("get members", e)),
        }
    }

    async fn update_capabilities(&self, group: &Id, capabilities: &Value) -> Result<()> {
        let path = self.member_path(group, self.member_node()?)?;
        let caps = msgpack::encode(capabilities);
        match self.link.run("update capabilities", |c| async move { c.set_data(&path, &caps).await }).await? {
            Ok(_) => Ok(()),
            Err(ZkError::Server(code::NO_NODE)) => Err(self.member_missing(group, &self.member).await),
            Err(e) => Err(zk_error("update capabilities", e)),
        }
    }

    async fn get_member_info(&self, group: &Id, member: &Id) -> Result<MemberInfo> {
        let path = self.member_path(group, &id_text(member, "member id")?)?;
        match self.link.run("get member info", |c| async move { c.get_data(&path).await }).await? {
            Ok((data, stat)) => Ok(MemberInfo {
                capabilities: Self::decode_caps(&data)?,
                created_at: stat.ctime as f64 / 1000.0,
                updated_at: stat.mtime as f64 / 1000.0,
            }),
            Err(ZkError::Server(code::NO_NODE)) => Err(self.member_missing(group, member).await),
            Err(e) => Err(zk_error("get member info", e)),
        }
    }

    async fn get_leader(&self, group: &Id) -> Result<Option<Id>> {
        let dir = self.leader_dir(group)?;
        let found = self
            .link
            .run("get leader", |c| async move {
                let children = match c.get_children(&dir).await {
                    Ok(children) => children,
                    Err(ZkError::Server(code::NO_NODE)) => return Ok(None),
                    Err(e) => return Err(e),
                };
                // The first contender still there when asked holds the lock.
                for node in lock::contenders(&children) {
                    match c.get_data(&format!("{dir}/{node}")).await {
                        Ok((data, _)) => return Ok(Some(data)),
                        Err(ZkError::Server(code::NO_NODE)) => continue,
                        Err(e) => return Err(e),
                    }
                }
                Ok(None)
            })
            .await?;
        match found {
            Ok(Some(data)) if !data.is_empty() => Ok(Some(Id::Bytes(data))),
            Ok(_) => Ok(None),
            Err(e) => Err(zk_error("get leader", e)),
        }
    }

    async fn stand_down_group_leader(&self, group: &Id) -> Result<bool> {
        let dir = self.leader_dir(group)?;
        let lock = self.leaders.lock().unwrap_or_else(|p| p.into_inner()).get(&dir).cloned();
        match lock {
            Some(lock) => {
                lock.release().await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn elect(&self, group: &Id) -> Result<bool> {
        let dir = self.leader_dir(group)?;
        let lock = {
            let mut leaders = self.leaders.lock().unwrap_or_else(|p| p.into_inner());
            leaders
                .entry(dir.clone())
                .or_insert_with(|| Arc::new(ZkLock::new(self.link.clone(), group.clone(), dir, self.member.as_bytes().to_vec())))
                .clone()
        };
        if lock.is_held() {
            return Ok(false); // still the leader: no second election event
        }
        lock.acquire(Wait::No, false).await
    }

    /// Pushed: a child watch on the election's lock directory; an empty directory (the leader
    /// left before we looked) returns at once.
    async fn wait_leader_change(&self, group: &Id, poll: Duration) -> Result<()> {
        let dir = self.leader_dir(group)?;
        let seen = self.link.run("watch leader", |c| async move { c.get_children_and_watch(&dir).await }).await?;
        match seen {
            Ok((contenders, watch)) if !contenders.is_empty() => {
                let _ = tokio::time::timeout(poll, watch).await;
                Ok(())
            }
            Ok(_) | Err(ZkError::Server(code::NO_NODE)) => Ok(()),
            Err(e) => Err(zk_error("watch leader", e)),
        }
    }

    fn lock(&self, name: &[u8]) -> Result<Arc<dyn DriverLock>> {
        if name.is_empty() {
            return Err(Error::InvalidArgument("Locks must be provided a name".into()));
        }
        let text = std::str::from_utf8(name)
            .map_err(|_| Error::InvalidArgument("lock names must be valid UTF-8 (ZooKeeper node names are text)".into()))?;
        let dir = zk_path(&[&self.base, "locks", text])?;
        if dir == "/" {
            return Err(Error::InvalidArgument(format!("lock name {text:?} names no ZooKeeper node")));
        }
        Ok(Arc::new(ZkLock::new(self.link.clone(), Id::Bytes(name.to_vec()), dir, self.member.as_bytes().to_vec())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_like_kazoo() {
        assert_eq!(zk_path(&["tooz"]).unwrap(), "/tooz");
        assert_eq!(zk_path(&["/tooz", "g", "m"]).unwrap(), "/tooz/g/m");
        assert_eq!(zk_path(&["/tooz", "locks", "a/b//c/"]).unwrap(), "/tooz/locks/a/b/c");
        assert_eq!(zk_path(&["/tooz", "/abs"]).unwrap(), "/abs");
        assert_eq!(zk_path(&["/"]).unwrap(), "/");
        assert!(zk_path(&["/tooz", ".."]).is_err());
        assert!(zk_path(&["/tooz", "a\0b"]).is_err());
    }

    #[test]
    fn digest_acl_matches_kazoo() {
        // kazoo.security.make_digest_acl_credential("user", "pass")
        assert_eq!(digest_acl("user", "pass").id, "user:smGaoVKd/cQkjm7b88GyorAUz20=");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }

    #[test]
    fn hosts_parse_with_ports_ipv6_and_chroot() {
        let (hosts, chroot) = parse_hosts(&["a:1,b".into(), "[::1]:3".into(), "c:4/root/x".into()]).unwrap();
        let got: Vec<_> = hosts.iter().map(|h| (h.name.as_str(), h.port)).collect();
        assert_eq!(got, vec![("a", 1), ("b", 2181), ("::1", 3), ("c", 4)]);
        assert_eq!(chroot, "/root/x");
        assert_eq!(parse_hosts(&[]).unwrap().0[0].name, "localhost");
        for bad in ["a:0", "a:x", "[::1", "[::1]x", ":1", "us er@h:1"] {
            assert!(parse_hosts(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
