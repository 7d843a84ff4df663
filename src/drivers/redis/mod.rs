//! `redis://`: the Redis backend, key for key what upstream tooz writes, so processes on
//! upstream and on ours share locks and groups during a rolling upgrade:
//!
//! * `<ns>_groups` (SET of group ids); `<ns>_group:<g>` (HASH: `__created__` → `1`, and
//!   `member` → msgpack capabilities); `<ns>_beats:<m>` (`Not dead!`, expiring after
//!   `membership_timeout`): a member without a beat key is dead and pruned by readers;
//! * lock `name` = key `<ns>_<name>_lock` holding the owner's token, `SET NX PX lock_timeout`;
//!   extended and released by scripts that first check the token. Beside it (ours only):
//!   `<key>:fence`, the fencing counter, and `<key>:waiters`, a sorted set of the tokens of
//!   waiting lock objects scored by when their entry expires, so a release can tell whether
//!   others wait (see `lock/handoff.rs`);
//! * leader of `g` = the lock `leader_of_<g>`.
//!
//! Connections: see `link.rs` (a failed call is retried once on a fresh connection, so
//! a restarted server is used again without restarting the process).

mod link;
mod liveness;
mod lock;
mod scripts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use redis::{Client, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};

use super::options::Options;
use super::Url;
use crate::driver::{Driver, DriverLock, Op, Wait};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::lock::fate::Fate;
use crate::lock::handoff::Courtesies;
use crate::lock::lease::{renew_by, until_answered, Lease};
use crate::lock::ttl::wake as ttl_wake;
use crate::msgpack::{self, Value};
use crate::runtime::PerImage;
use liveness::{Beat, Liveness};
use link::{redis_err, Link, Request, Target};
pub use lock::RedisLock;
use scripts::{Lua, Scripts};

const GROUP_EXISTS: &[u8] = b"__created__";
const STILL_ALIVE: &[u8] = b"Not dead!";
const DEFAULT_PORT: u16 = 6379;

/// A lock held through a coordinator: its key, the token stored under it, and its fate.
#[derive(Clone)]
struct Held {
    key: Vec<u8>,
    token: Vec<u8>,
    fate: Arc<Fate>,
}

/// Everything a coordinator and its locks share.
struct Shared {
    link: Link,
    scripts: Scripts,
    namespace: Vec<u8>,
    encoding: Encoding,
    lock_timeout: f64,
    membership_timeout: f64,
    /// Locks currently held through this coordinator: extended by heartbeats, released at stop.
    held: Mutex<PerImage<HashMap<u64, Held>>>,
    next_lock: AtomicU64,
    /// Names this server for the in-process wake-ups of lock waiters.
    scope: String,
    /// Which locks this coordinator steps aside from, by key (`lock/handoff.rs`).
    courtesies: Courtesies,
    /// Until when members' beat keys are known to live (`liveness.rs`).
    liveness: Mutex<Liveness>,
}

#[derive(Clone, Copy)]
enum Encoding {
    Utf8,
    Latin1,
    Ascii,
}

impl Shared {
    fn encode(&self, id: &Id) -> Result<Vec<u8>> {
        match (id, self.encoding) {
            (Id::Bytes(b), _) => Ok(b.clone()),
            (Id::Text(s), Encoding::Utf8) => Ok(s.as_bytes().to_vec()),
            (Id::Text(s), Encoding::Ascii) if s.is_ascii() => Ok(s.as_bytes().to_vec()),
            (Id::Text(s), Encoding::Latin1) if s.chars().all(|c| (c as u32) < 256) => {
                Ok(s.chars().map(|c| c as u8).collect())
            }
            (Id::Text(s), _) => Err(Error::InvalidArgument(format!("id {s:?} cannot be encoded with the configured encoding"))),
        }
    }

    fn key(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut k = self.namespace.clone();
        for p in parts {
            k.extend_from_slice(p);
        }
        k
    }

    fn group_key(&self, group: &[u8]) -> Vec<u8> {
        self.key(&[b"_group:", group])
    }

    fn groups_key(&self) -> Vec<u8> {
        self.key(&[b"_groups"])
    }

    fn beat_prefix(&self) -> Vec<u8> {
        self.key(&[b"_beats:"])
    }

    fn lock_key(&self, name: &[u8]) -> Vec<u8> {
        self.key(&[b"_", name, b"_lock"])
    }

    fn liveness(&self) -> std::sync::MutexGuard<'_, Liveness> {
        self.liveness.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one of the scripts with `keys` and `args`.
    async fn eval<T: redis::FromRedisValue>(&self, what: &str, lua: &Lua, keys: &[&[u8]], args: &[&[u8]]) -> Result<T> {
        let prepare = || {
            let mut call = lua.script.prepare_invoke();
            for k in keys {
                call.key(*k);
            }
            for a in args {
                call.arg(*a);
            }
            call
        };
        let own = Request::Script { hash: lua.script.get_hash(), source: lua.source, keys, args };
        self.link
            .call(what, |c| prepare().invoke(c), |mut c| async move { prepare().invoke_async(&mut c).await }, Some(own))
            .await
    }

    /// Runs one command.
    async fn query<T: redis::FromRedisValue>(&self, what: &str, cmd: &redis::Cmd) -> Result<T> {
        let own = Request::Cmd(cmd);
        self.link.call(what, |c| cmd.query(c), |mut c| async move { cmd.query_async(&mut c).await }, Some(own)).await
    }

    fn px(seconds: f64) -> u64 {
        ((seconds * 1000.0).round() as u64).max(1)
    }

    /// The lease of a lock, as its holder reckons it (`lock/lease.rs`): `PX` is exact.
    fn lease(&self) -> Lease {
        Lease::exact(Duration::from_millis(Self::px(self.lock_timeout)))
    }

    /// Extends a held lock's key if it is still ours; the holder's clock moves on with it.
    async fn extend(&self, key: &[u8], token: &[u8], fate: &Fate) -> Result<bool> {
        let ms = Self::px(self.lock_timeout).to_string();
        let sent = Instant::now();
        let n: i64 = self.eval("extend lock", &self.scripts.extend_lock, &[key], &[token, ms.as_bytes()]).await?;
        if n == 1 {
            fate.renewed(self.lease().deadline(sent));
        }
        Ok(n == 1)
    }

    /// A held lock turned out lost: no longer extended, and its holder is told.
    fn lost(&self, id: u64, why: &str) {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner()).get().remove(&id);
        if let Some(h) = held {
            h.fate.lost(why);
        }
    }

    /// A held lock's lease ran out on the holder's clock: lost (and told), and its key deleted
    /// by compare-and-delete once the server answers again, if it is still ours (a renewal
    /// whose answer was lost may have extended it), so others need not wait out its TTL.
    fn expired(self: &Arc<Self>, id: u64, key: Vec<u8>, token: Vec<u8>, why: &'static str) {
        self.lost(id, why);
        self.delete_when_back(key, token);
    }

    /// Deletes a lock key that may still be ours (compare-and-delete), trying until the server
    /// answers or the key has surely lapsed by itself.
    fn delete_when_back(self: &Arc<Self>, key: Vec<u8>, token: Vec<u8>) {
        let me = self.clone();
        crate::runtime::runtime().spawn(async move {
            if until_answered(me.lease(), || me.link.drop_stuck(), || me.release(&key, &token)).await {
                ttl_wake(&me.scope, &key);
            }
        });
    }

    /// Extends every held lock's lease, with one script call per [`EXTEND_BATCH`] locks, each
    /// renewal with a third of the time left before the earliest holder's deadline among them,
    /// then again on a fresh connection (`lease.rs`). A lock whose key no longer holds its
    /// token is lost; the others move their holder's clock on.
    async fn extend_held(&self) -> Result<()> {
        let held: Vec<(u64, Held)> =
            self.held.lock().unwrap_or_else(|p| p.into_inner()).get().iter().map(|(id, h)| (*id, h.clone())).collect();
        let Some(deadline) = held.iter().filter_map(|(_, h)| h.fate.deadline()).min() else { return Ok(()) };
        let ms = Self::px(self.lock_timeout).to_string();
        let lost = renew_by(deadline, || self.link.drop_stuck(), || async {
            let mut lost = Vec::new();
            let holding: Vec<&(u64, Held)> = held.iter().filter(|(_, h)| h.fate.holding()).collect();
            for batch in holding.chunks(EXTEND_BATCH) {
                let keys: Vec<&[u8]> = batch.iter().map(|(_, h)| h.key.as_slice()).collect();
                let args: Vec<&[u8]> = std::iter::once(ms.as_bytes()).chain(batch.iter().map(|(_, h)| h.token.as_slice())).collect();
                let sent = Instant::now();
                let gone: Vec<usize> = self.eval("extend locks", &self.scripts.extend_locks, &keys, &args).await?;
                let deadline = self.lease().deadline(sent);
                let mut kept = vec![true; batch.len()];
                for i in gone {
                    // (A position outside the batch would be a server's error: ignored.)
                    if let Some(k) = i.checked_sub(1).and_then(|i| kept.get_mut(i)) {
                        *k = false;
                    }
                }
                for ((id, h), kept) in batch.iter().zip(kept) {
                    if !kept {
                        lost.push(*id);
                    } else {
                        h.fate.renewed(deadline);
                    }
                }
            }
            Ok(lost)
        })
        .await?;
        for id in lost {
            self.lost(id, "its key expired or was taken by another holder before the heartbeat extended it");
        }
        Ok(())
    }

    /// Deletes the lock key if it is still ours: whether it was, and whether others wait.
    async fn release(&self, key: &[u8], token: &[u8]) -> Result<(bool, bool)> {
        let waiters = waiters_key(key);
        let n: i64 = self.eval("release lock", &self.scripts.release_lock, &[key, &waiters], &[token]).await?;
        Ok((n >= 1, n == 2))
    }
}

/// How many locks one extension script call takes (the server runs a script to its end before
/// anything else: a batch keeps that to about a millisecond).
const EXTEND_BATCH: usize = 1000;

pub struct RedisDriver {
    member: Vec<u8>,
    shared: Arc<Shared>,
}

fn parse_host_port(raw: &str) -> Result<(String, u16)> {
    let (host, port) = raw
        .rsplit_once(':')
        .ok_or_else(|| Error::InvalidArgument(format!("sentinel address {raw:?} must be host:port")))?;
    let port = port.parse().map_err(|_| Error::InvalidArgument(format!("sentinel address {raw:?} has a bad port")))?;
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_owned(), port))
}

fn read_pem(option: &str, path: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::InvalidArgument(format!("{option}: cannot read {path}: {e}")))
}

fn tls_certificates(options: &Options) -> Result<Option<redis::TlsCertificates>> {
    let cert = options.str("ssl_certfile");
    let key = options.str("ssl_keyfile");
    let ca = options.str("ssl_ca_certs");
    if cert.is_none() && key.is_none() && ca.is_none() {
        return Ok(None);
    }
    let client_tls = match (cert, key) {
        (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
            client_cert: read_pem("ssl_certfile", c)?,
            client_key: read_pem("ssl_keyfile", k)?,
        }),
        (None, None) => None,
        _ => return Err(Error::InvalidArgument("ssl_certfile and ssl_keyfile go together".into())),
    };
    let root_cert = ca.map(|c| read_pem("ssl_ca_certs", c)).transpose()?;
    Ok(Some(redis::TlsCertificates { client_tls, root_cert }))
}

impl RedisDriver {
    pub fn new(member: Id, url: &Url, options: &Options) -> Result<RedisDriver> {
        let timeout = options.float("timeout", 30.0)?;
        let membership_timeout = options.float("membership_timeout", timeout)?;
        let lock_timeout = options.float("lock_timeout", timeout)?;
        let socket_timeout = options.float("socket_timeout", timeout)?;
        let connect_timeout = options.float("socket_connect_timeout", socket_timeout)?;
        let db: i64 = match options.str("db") {
            None => 0,
            Some(d) => d.trim().parse().map_err(|_| Error::InvalidArgument(format!("option db={d:?} is not an integer")))?,
        };
        let encoding = match options.str("encoding").unwrap_or("utf8").to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "utf8" => Encoding::Utf8,
            "ascii" | "usascii" => Encoding::Ascii,
            "latin1" | "iso88591" => Encoding::Latin1,
            other => return Err(Error::InvalidArgument(format!("unsupported encoding {other:?}"))),
        };
        let ssl = options.bool("ssl", false);
        let certificates = tls_certificates(options)?;

        let mut settings = RedisConnectionInfo::default().set_db(db);
        if let Some(u) = url.username.as_deref().filter(|u| !u.is_empty()) {
            settings = settings.set_username(u);
        }
        if let Some(p) = url.password.as_deref() {
            settings = settings.set_password(p);
        }
        let tcp_addr = |host: String, port: u16| {
            if ssl || certificates.is_some() {
                ConnectionAddr::TcpTls { host, port, insecure: false, tls_params: None }
            } else {
                ConnectionAddr::Tcp(host, port)
            }
        };

        let described = match (options.str("sentinel"), url.host.as_deref().filter(|h| !h.is_empty())) {
            (Some(master), _) => format!("member {member} on redis (Sentinel master {master})"),
            (None, Some(h)) => format!("member {member} on redis at {h}:{}", url.port.unwrap_or(DEFAULT_PORT)),
            (None, None) => format!("member {member} on redis at {}", url.path),
        };
        let target = if let Some(master) = options.str("sentinel") {
            let first = (
                url.host.clone().ok_or_else(|| Error::InvalidArgument("sentinel URLs need host:port of a sentinel".into()))?,
                url.port.ok_or_else(|| Error::InvalidArgument("sentinel URLs need the sentinel's port".into()))?,
            );
            let mut sentinels = vec![first];
            for extra in options.str("sentinel_fallback").unwrap_or("").split(',').filter(|s| !s.is_empty()) {
                sentinels.push(parse_host_port(extra)?);
            }
            let sentinel_tls = options.bool("sentinel_ssl", false);
            let addrs = sentinels.into_iter().map(|(h, p)| {
                if sentinel_tls {
                    ConnectionAddr::TcpTls { host: h, port: p, insecure: false, tls_params: None }
                } else {
                    ConnectionAddr::Tcp(h, p)
                }
            });
            let mut builder = redis::sentinel::SentinelClientBuilder::new(addrs, master, redis::sentinel::SentinelServerType::Master)
                .map_err(|e| redis_err("bad sentinel settings", e))?
                .set_client_to_redis_db(db);
            if let Some(u) = url.username.as_deref().filter(|u| !u.is_empty()) {
                builder = builder.set_client_to_redis_username(u);
            }
            if let Some(p) = url.password.as_deref() {
                builder = builder.set_client_to_redis_password(p);
            }
            if let Some(u) = options.str("sentinel_username") {
                builder = builder.set_client_to_sentinel_username(u);
            }
            if let Some(p) = options.str("sentinel_password") {
                builder = builder.set_client_to_sentinel_password(p);
            }
            if ssl || certificates.is_some() {
                builder = builder.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
            }
            if sentinel_tls {
                builder = builder.set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
            }
            if let Some(certs) = certificates.clone() {
                builder = builder.set_client_to_redis_certificates(certs.clone());
                if sentinel_tls {
                    builder = builder.set_client_to_sentinel_certificates(certs);
                }
            }
            Target::Sentinel(tokio::sync::Mutex::new(builder.build().map_err(|e| redis_err("bad sentinel settings", e))?))
        } else {
            let addr = match url.host.as_deref().filter(|h| !h.is_empty()) {
                Some(h) => tcp_addr(h.trim_start_matches('[').trim_end_matches(']').to_owned(), url.port.unwrap_or(DEFAULT_PORT)),
                None if !url.path.is_empty() => ConnectionAddr::Unix(url.path.clone().into()),
                None => tcp_addr("localhost".into(), DEFAULT_PORT),
            };
            let info = addr
                .into_connection_info()
                .map_err(|e| redis_err("bad Redis address", e))?
                .set_redis_settings(settings)
                .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
            let client = match certificates {
                Some(certs) => Client::build_with_tls(info, certs),
                None => Client::open(info),
            }
            .map_err(|e| redis_err("bad Redis settings", e))?;
            Target::Direct(client)
        };

        let namespace_id = match options.str("namespace") {
            Some(ns) => Id::Text(ns.to_owned()),
            None => Id::Text("_tooz".into()),
        };
        let mut shared = Shared {
            link: Link::new(
                target,
                Duration::from_secs_f64(socket_timeout.max(0.001)),
                Duration::from_secs_f64(connect_timeout.max(0.001)),
                crate::log::Health::new("tooz.drivers.redis", described),
            ),
            scripts: Scripts::new(),
            namespace: Vec::new(),
            encoding,
            lock_timeout,
            membership_timeout,
            held: Mutex::new(PerImage::new()),
            next_lock: AtomicU64::new(0),
            courtesies: Courtesies::default(),
            liveness: Mutex::new(Liveness::new()),
            scope: format!("redis:{}:{}:{}", url.host.as_deref().unwrap_or(""), url.port.unwrap_or(0), url.path),
        };
        shared.namespace = shared.encode(&namespace_id)?;
        let member = shared.encode(&member)?;
        Ok(RedisDriver { member, shared: Arc::new(shared) })
    }

    fn member_field(&self) -> Result<&[u8]> {
        if self.member == GROUP_EXISTS {
            return Err(Error::InvalidArgument(format!(
                "Member id {:?} is reserved by the redis driver",
                String::from_utf8_lossy(GROUP_EXISTS)
            )));
        }
        Ok(&self.member)
    }

    fn member_id(&self) -> Id {
        Id::Bytes(self.member.clone())
    }

    /// Releases the locks this process image holds (failures ignored: they lapse).
    async fn release_held(&self) {
        let held: Vec<Held> = self.shared.held.lock().unwrap_or_else(|p| p.into_inner()).get().drain().map(|(_, v)| v).collect();
        for Held { key, token, fate } in held {
            fate.released();
            let _ = self.shared.release(&key, &token).await;
        }
    }

    fn beat_key(&self) -> Vec<u8> {
        [self.shared.beat_prefix(), self.member.clone()].concat()
    }

    async fn beat_member(&self) -> Result<()> {
        let ms = Shared::px(self.shared.membership_timeout);
        let cmd = redis::cmd("SET").arg(self.beat_key()).arg(STILL_ALIVE).arg("PX").arg(ms).to_owned();
        self.shared.query("heartbeat", &cmd).await
    }

    /// The group's live members (with their capabilities if asked): its hash in one command
    /// (names alone unless capabilities are wanted), then, only if some member may have died
    /// since it was last found alive (`liveness.rs`), one script that checks those members'
    /// beat keys and prunes the dead.
    async fn members(&self, group: &Id, with_caps: bool) -> Result<Vec<(Id, Value)>> {
        let g = self.shared.encode(group)?;
        let gkey = self.shared.group_key(&g);
        let read = if with_caps { "HGETALL" } else { "HKEYS" };
        let reply: Vec<Vec<u8>> = self.shared.query("get members", redis::cmd(read).arg(&gkey)).await?;
        // A group's hash always holds its marker field: no hash, no group.
        if reply.is_empty() {
            return Err(Error::GroupNotCreated(group.clone()));
        }
        let mut members: Vec<(Vec<u8>, Option<Vec<u8>>)> = if with_caps {
            if reply.len() % 2 != 0 {
                return Err(Error::Tooz("malformed get_members reply".into()));
            }
            let mut it = reply.into_iter();
            std::iter::from_fn(|| Some((it.next()?, it.next()))).collect()
        } else {
            reply.into_iter().map(|m| (m, None)).collect()
        };
        members.retain(|(m, _)| m.as_slice() != GROUP_EXISTS);
        let timeout = Duration::from_millis(Shared::px(self.shared.membership_timeout));
        let others = members.iter().map(|(m, _)| m.as_slice()).filter(|m| *m != self.member.as_slice());
        let due: Option<Vec<Vec<u8>>> = self.shared.liveness().due(others, timeout, Instant::now()).map(|d| d.into_iter().map(<[u8]>::to_vec).collect());
        if let Some(due) = due {
            let prefix = self.shared.beat_prefix();
            let args: Vec<&[u8]> = std::iter::once(prefix.as_slice()).chain(due.iter().map(Vec::as_slice)).collect();
            let sent = Instant::now();
            let ttls: Vec<i64> = self.shared.eval("check members", &self.shared.scripts.check_members, &[&gkey], &args).await?;
            if ttls.len() != due.len() {
                return Err(Error::Tooz("malformed member check reply".into()));
            }
            let dead: std::collections::HashSet<&[u8]> =
                due.iter().zip(&ttls).filter(|(_, t)| matches!(Beat::from_pttl(**t), Beat::Gone)).map(|(m, _)| m.as_slice()).collect();
            members.retain(|(m, _)| !dead.contains(m.as_slice()));
            let answers = due.iter().cloned().zip(ttls.iter().map(|t| Beat::from_pttl(*t)));
            self.shared.liveness().found(sent, timeout, answers);
        }
        members
            .into_iter()
            .map(|(m, caps)| {
                let caps = match caps {
                    Some(c) => msgpack::decode(&c)?,
                    None => Value::Nil,
                };
                Ok((Id::Bytes(m), caps))
            })
            .collect()
    }

    fn new_lock(&self, name: &[u8]) -> RedisLock {
        let key = self.shared.lock_key(name);
        RedisLock {
            shared: self.shared.clone(),
            id: self.shared.next_lock.fetch_add(1, Ordering::Relaxed),
            fence_key: [key.as_slice(), b":fence"].concat(),
            waiters_key: waiters_key(&key),
            courtesy: self.shared.courtesies.of(&key),
            fate: Arc::new(Fate::new("tooz.drivers.redis", format!("{} of member {}", String::from_utf8_lossy(&key), String::from_utf8_lossy(&self.member)))),
            key,
            token: uuid::Uuid::now_v1(&node_id()).simple().to_string().into_bytes(),
        }
    }
}

fn waiters_key(lock_key: &[u8]) -> Vec<u8> {
    [lock_key, b":waiters"].concat()
}

/// A node id for uuid1 tokens (upstream uses `uuid1().hex`); random per process.
fn node_id() -> [u8; 6] {
    static NODE: std::sync::OnceLock<[u8; 6]> = std::sync::OnceLock::new();
    *NODE.get_or_init(|| {
        let r = uuid::Uuid::new_v4();
        let mut n = [0u8; 6];
        n.copy_from_slice(&r.as_bytes()[..6]);
        n[0] |= 1; // multicast bit: not a real MAC, as RFC 4122 asks
        n
    })
}

fn script_status(n: i64, group: &Id, member: Option<&Id>) -> Result<()> {
    match (n, member) {
        (1, _) => Ok(()),
        (-1, _) => Err(Error::GroupNotCreated(group.clone())),
        (-2, Some(m)) => Err(Error::MemberNotJoined { group: group.clone(), member: m.clone() }),
        (other, _) => Err(Error::Tooz(format!("unexpected script result {other}"))),
    }
}

#[async_trait]
impl Driver for RedisDriver {
    fn supports(&self, op: Op) -> bool {
        !matches!(op, Op::GetMemberInfo | Op::GetLeader | Op::StandDownGroupLeader)
    }

    fn epoch(&self) -> u64 {
        self.shared.link.epoch()
    }

    fn requires_beating(&self) -> bool {
        true
    }

    async fn start(&self) -> Result<()> {
        self.shared.link.forget();
        let info: String = self.shared.query("INFO", redis::cmd("INFO").arg("server")).await?;
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map(|v| v.trim().split('.').map(|p| p.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>())
            .unwrap_or_default();
        if version.as_slice() < [2, 6, 0].as_slice() {
            return Err(Error::NotImplemented("Redis version '2.6.0' or later is required".into()));
        }
        self.beat_member().await
    }

    async fn stop(&self) -> Result<()> {
        self.release_held().await;
        let _ = self.shared.query::<i64>("stop", redis::cmd("DEL").arg(self.beat_key())).await;
        self.shared.link.forget();
        Ok(())
    }

    async fn stop_inherited(&self) -> Result<()> {
        self.release_held().await;
        self.shared.link.forget();
        Ok(())
    }

    async fn heartbeat(&self) -> Result<Option<f64>> {
        let (beat, locks) = tokio::join!(self.beat(), self.shared.extend_held());
        beat.and(locks)?;
        Ok(Some(self.shared.lock_timeout.min(self.shared.membership_timeout)))
    }

    async fn beat(&self) -> Result<Option<f64>> {
        self.beat_member().await?;
        Ok(Some(self.shared.membership_timeout))
    }

    fn renews_leases(&self) -> bool {
        true
    }

    async fn extend_locks(&self) -> Result<Option<f64>> {
        self.shared.extend_held().await?;
        Ok(Some(self.shared.lease().renew_every().as_secs_f64()))
    }

    async fn create_group(&self, group: &Id) -> Result<()> {
        let g = self.shared.encode(group)?;
        let (gkey, groups) = (self.shared.group_key(&g), self.shared.groups_key());
        let n: i64 = self
            .shared
            .eval("create group", &self.shared.scripts.create_group, &[&gkey, &groups], &[&g, GROUP_EXISTS, b"1"])
            .await?;
        if n == 0 {
            return Err(Error::GroupAlreadyExist(group.clone()));
        }
        Ok(())
    }

    async fn delete_group(&self, group: &Id) -> Result<()> {
        let g = self.shared.encode(group)?;
        let (gkey, groups) = (self.shared.group_key(&g), self.shared.groups_key());
        let n: i64 = self.shared.eval("delete group", &self.shared.scripts.delete_group, &[&gkey, &groups], &[&g]).await?;
        match n {
            1 => Ok(()),
            -1 | -2 => Err(Error::GroupNotCreated(group.clone())),
            -3 => Err(Error::GroupNotEmpty(group.clone())),
            _ => Err(Error::Tooz(format!("Unable to remove group {group} from the group list"))),
        }
    }

    async fn destroy_group(&self, group: &Id) -> Result<()> {
        let gkey = self.shared.group_key(&self.shared.encode(group)?);
        self.shared.query::<i64>("destroy group", redis::cmd("DEL").arg(gkey)).await.map(|_| ())
    }

    async fn get_groups(&self) -> Result<Vec<Id>> {
        let ids: Vec<Vec<u8>> = self.shared.query("get groups", redis::cmd("SMEMBERS").arg(self.shared.groups_key())).await?;
        Ok(ids.into_iter().map(Id::Bytes).collect())
    }

    async fn join_group(&self, group: &Id, capabilities: &Value) -> Result<()> {
        let member = self.member_field()?.to_vec();
        let g = self.shared.encode(group)?;
        let gkey = self.shared.group_key(&g);
        let caps = msgpack::encode(capabilities);
        let n: i64 = self.shared.eval("join group", &self.shared.scripts.join_group, &[&gkey], &[&member, &caps]).await?;
        match n {
            -2 => Err(Error::MemberAlreadyExist { group: group.clone(), member: self.member_id() }),
            n => script_status(n, group, None),
        }
    }

    async fn leave_group(&self, group: &Id) -> Result<()> {
        let member = self.member_field()?.to_vec();
        let gkey = self.shared.group_key(&self.shared.encode(group)?);
        let n: i64 = self.shared.eval("leave group", &self.shared.scripts.leave_group, &[&gkey], &[&member]).await?;
        script_status(n, group, Some(&self.member_id()))
    }

    async fn get_members(&self, group: &Id) -> Result<Vec<Id>> {
        Ok(self.members(group, false).await?.into_iter().map(|(m, _)| m).collect())
    }

    async fn get_members_with_capabilities(&self, group: &Id) -> Result<Vec<(Id, Value)>> {
        self.members(group, true).await
    }

    async fn get_member_capabilities(&self, group: &Id, member: &Id) -> Result<Value> {
        let m = self.shared.encode(member)?;
        if m == GROUP_EXISTS {
            return Err(Error::MemberNotJoined { group: group.clone(), member: member.clone() });
        }
        let gkey = self.shared.group_key(&self.shared.encode(group)?);
        let pipe = redis::pipe().atomic().exists(&gkey).hget(&gkey, &m).clone();
        let pipe = &pipe;
        let (exists, caps): (bool, Option<Vec<u8>>) = self
            .shared
            .link
            .call("get member capabilities", |c| pipe.query(c), |mut c| async move { pipe.query_async(&mut c).await }, None)
            .await?;
        if !exists {
            return Err(Error::GroupNotCreated(group.clone()));
        }
        let caps = caps.ok_or_else(|| Error::MemberNotJoined { group: group.clone(), member: member.clone() })?;
        msgpack::decode(&caps)
    }

    async fn update_capabilities(&self, group: &Id, capabilities: &Value) -> Result<()> {
        let member = self.member_field()?.to_vec();
        let gkey = self.shared.group_key(&self.shared.encode(group)?);
        let caps = msgpack::encode(capabilities);
        let n: i64 = self
            .shared
            .eval("update capabilities", &self.shared.scripts.update_capabilities, &[&gkey], &[&member, &caps])
            .await?;
        script_status(n, group, Some(&self.member_id()))
    }

    async fn elect(&self, group: &Id) -> Result<bool> {
        let g = self.shared.encode(group)?;
        let lock = self.new_lock(&[b"leader_of_".as_slice(), &g].concat());
        lock.acquire(Wait::No, false).await
    }

    fn lock(&self, name: &[u8]) -> Result<Arc<dyn DriverLock>> {
        if name.is_empty() {
            return Err(Error::InvalidArgument("Locks must be provided a name".into()));
        }
        Ok(Arc::new(self.new_lock(name)))
    }
}
