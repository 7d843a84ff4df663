//! `memcached://host[:port]`: groups, members, locks and leaders as memcached keys, written
//! exactly as upstream tooz (pymemcache) writes them, so both share one server:
//!
//! | key | flags | expiry | value |
//! |---|---|---|---|
//! | `_TOOZ_GROUP_LIST` | 2 | none | msgpack list of group ids (as given: bytes or str) |
//! | `_TOOZ_GROUP_<g>` | 2 | none | msgpack `{member_id: {b'capabilities': caps}}` |
//! | `_TOOZ_MEMBER_<m>` | 1 | membership_timeout | `It's alive!` |
//! | `__TOOZ_LOCK_<name>` | 1 (2 for a str member id) | lock_timeout | holder's member id |
//! | `__TOOZ_LOCK__TOOZ_GROUP_LEADER_<g>` | as locks | leader_timeout | leader's member id |
//!
//! Flags 1 = raw bytes, 2 = msgpack (oslo encoding). Group changes are `gets` + `cas`, retried
//! when another writer got in between. A member is alive while its beat key exists; dead
//! members are dropped from a group's map by whoever lists it, and a coordinator never drops
//! itself. Memcached counts expiry in whole seconds of its own clock, so every TTL sent is
//! rounded up and given one more second: a key refreshed every half TTL never lapses.
//!
//! One file of about 640 lines (and its tests): groups, members and the heartbeat share the
//! compare-and-swap helpers and key layout above; the lock is `lock.rs`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::clients::memcache::{self, Client, Config, Item, Reply, Store};
use super::options::Options;
use crate::clients::tls::{self, ClientCert, Named, TlsOptions, Verify};
use super::Url;
use crate::driver::{unsupported, Driver, DriverLock, Op, Wait};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::msgpack::{self, Value};
use crate::runtime::PerImage;
use crate::lock::handoff::Courtesies;
use crate::lock::lease::{renew_by, Lease};

mod lock;
use lock::{LockState, MemcachedLock};

const GROUP_PREFIX: &[u8] = b"_TOOZ_GROUP_";
const GROUP_LEADER_PREFIX: &[u8] = b"_TOOZ_GROUP_LEADER_";
const MEMBER_PREFIX: &[u8] = b"_TOOZ_MEMBER_";
const GROUP_LIST_KEY: &[u8] = b"_TOOZ_GROUP_LIST";
const LOCK_PREFIX: &[u8] = b"__TOOZ_LOCK_";
const STILL_ALIVE: &[u8] = b"It's alive!";
const DEFAULT_TIMEOUT: f64 = 30.0;
const DEFAULT_PORT: u16 = 11211;
/// Flags of a raw bytes value and of a msgpack value.
const FLAG_BYTES: u32 = 1;
const FLAG_MSGPACK: u32 = 2;
/// A read-modify-write that loses this many races in a row gives up.
const MAX_CAS_ATTEMPTS: u32 = 10_000;

fn prefixed(prefix: &[u8], id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + id.len());
    key.extend_from_slice(prefix);
    key.extend_from_slice(id);
    key
}

/// pymemcache's serializer as upstream configures it: bytes raw (flags 1), the rest msgpack.
fn encode(v: &Value) -> (u32, Vec<u8>) {
    match v {
        Value::Bin(b) => (FLAG_BYTES, b.clone()),
        other => (FLAG_MSGPACK, msgpack::encode(other)),
    }
}

fn decode(item: &Item) -> Result<Value> {
    match item.flags {
        FLAG_BYTES => Ok(Value::Bin(item.data.clone())),
        FLAG_MSGPACK => msgpack::decode(&item.data).map_err(|e| {
            Error::Serialization(format!("memcached key {} holds undecodable data: {e}", String::from_utf8_lossy(&item.key)))
        }),
        other => Err(Error::Serialization(format!("Unknown serialization format '{other}'"))),
    }
}

fn id_value(id: &Id) -> Value {
    match id {
        Id::Bytes(b) => Value::Bin(b.clone()),
        Id::Text(s) => Value::Str(s.clone()),
    }
}

fn value_id(v: &Value) -> Option<Id> {
    match v {
        Value::Bin(b) => Some(Id::Bytes(b.clone())),
        Value::Str(s) => Some(Id::Text(s.clone())),
        _ => None,
    }
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> Error {
    Error::Tooz(format!("{what} in memcached is malformed: {detail}"))
}

/// A group's record: member id -> that member's entry (`{b'capabilities': caps, ...}`).
struct Members(Vec<(Id, Value)>);

impl Members {
    fn parse(group: &Id, v: Value) -> Result<Option<Members>> {
        match v {
            // A group being deleted is set to nil first: it no longer exists.
            Value::Nil => Ok(None),
            Value::Map(items) => items
                .into_iter()
                .map(|(k, entry)| {
                    let id = value_id(&k).ok_or_else(|| corrupt(&format!("group {group}"), "a member id is not bytes or str"))?;
                    if !matches!(entry, Value::Map(_)) {
                        return Err(corrupt(&format!("group {group}"), format!("the entry of member {id} is not a map")));
                    }
                    Ok((id, entry))
                })
                .collect::<Result<Vec<_>>>()
                .map(|m| Some(Members(m))),
            other => Err(corrupt(&format!("group {group}"), format!("expected a map, found {}", kind(&other)))),
        }
    }

    fn to_value(&self) -> Value {
        Value::Map(self.0.iter().map(|(id, entry)| (id_value(id), entry.clone())).collect())
    }

    fn position(&self, member: &Id) -> Option<usize> {
        self.0.iter().position(|(id, _)| id == member)
    }

    fn capabilities(entry: &Value) -> Value {
        entry.get("capabilities").cloned().unwrap_or(Value::Nil)
    }

    fn new_entry(caps: &Value) -> Value {
        Value::Map(vec![(Value::Bin(b"capabilities".to_vec()), caps.clone())])
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Bool(_) => "a boolean",
        Value::Int(_) | Value::UInt(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Str(_) => "a string",
        Value::Bin(_) => "bytes",
        Value::Array(_) => "a list",
        Value::Map(_) => "a map",
        Value::Ext(..) => "an extension value",
    }
}

/// Settings shared by the driver and its locks.
struct Shared {
    client: Client,
    member: Id,
    /// What identifies the server in the process-wide lock wake-up table.
    scope: String,
    /// Which locks this coordinator steps aside from, by key (`lock/handoff.rs`).
    courtesies: Courtesies,
    /// Locks this coordinator holds (refreshed by the heartbeat, released by `stop`).
    held: Mutex<PerImage<Vec<Arc<LockState>>>>,
}

pub struct MemcachedDriver {
    shared: Arc<Shared>,
    membership_timeout: f64,
    lock_timeout: f64,
    leader_timeout: f64,
    joined: Mutex<HashSet<Id>>,
    beat: Beat,
}

/// The member's key and the beat's request, made once.
struct Beat {
    key: Vec<u8>,
    /// Asking for a reply, and the same with `noreply` (see `clients/memcache/later.rs`).
    request: Vec<u8>,
    quiet: Vec<u8>,
}

/// The TTL sent for a key that must live `seconds` (see the module notes).
fn ttl(seconds: f64) -> u32 {
    memcache::expiry(seconds + 1.0)
}

/// TLS as upstream sets it up with `ssl.create_default_context(SERVER_AUTH, cafile=ca_cert)`:
/// the server's chain is verified (against `ca_cert`, else the system's roots), its host name
/// only when `ssl_check_hostname` is true; an optional client certificate `ssl_cert`, whose key
/// is `ssl_key` or else in the same file (as Python's `load_cert_chain`). `ssl_ciphers` (an
/// OpenSSL cipher string) has no rustls equivalent and is not used: rustls offers only modern
/// AEAD suites.
fn tls_config(options: &Options) -> Result<Arc<rustls::ClientConfig>> {
    let cert = Named::lookup(options, "ssl_cert");
    let key = Named::lookup(options, "ssl_key");
    let client_cert = match (cert, key) {
        (None, None) => None,
        (Some(cert), key) => Some(ClientCert { cert, key: key.unwrap_or(cert) }),
        (None, Some(_)) => return Err(Error::InvalidArgument("ssl_key given without ssl_cert".into())),
    };
    tls::client_config(&TlsOptions {
        ca_file: Named::lookup(options, "ca_cert"),
        // A key password only matters with a client certificate (where it is refused).
        key_password: client_cert.and(Named::lookup(options, "ssl_key_password")),
        client_cert,
        verify: if options.bool("ssl_check_hostname", false) { Verify::Full } else { Verify::ChainOnly },
    })
}

impl MemcachedDriver {
    pub fn new(member: Id, url: &Url, options: &Options) -> Result<MemcachedDriver> {
        let timeout = options.float("timeout", DEFAULT_TIMEOUT)?;
        let membership_timeout = options.float("membership_timeout", timeout)?;
        let lock_timeout = options.float("lock_timeout", timeout)?;
        let leader_timeout = options.float("leader_timeout", timeout)?;
        let max_pool_size = match options.str("max_pool_size") {
            None => None,
            Some(raw) => Some(
                raw.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| Error::InvalidArgument(format!("option max_pool_size={raw:?} is not a positive integer")))?,
            ),
        };
        let tls = if options.bool("use_ssl", false) {
            Some(Arc::new(memcache::tls::TlsSettings::new(tls_config(options)?)))
        } else {
            None
        };
        let host = url.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| "localhost".into());
        let port = url.port.unwrap_or(DEFAULT_PORT);
        let scope = format!("memcached://{host}:{port}");
        let log_as = ("tooz.drivers.memcached".to_owned(), format!("member {member} on memcached at {host}:{port}"));
        let client = Client::new(Config {
            log_as,
            host,
            port,
            timeout: (timeout > 0.0).then(|| Duration::from_secs_f64(timeout)),
            max_pool_size,
            tls,
        });
        let key = Self::beat_key(&member);
        let beat_ttl = ttl(membership_timeout);
        let beat = Beat {
            request: memcache::storage_request(Store::Set, &key, FLAG_BYTES, beat_ttl, STILL_ALIVE, None),
            quiet: memcache::quiet_storage_request(Store::Set, &key, FLAG_BYTES, beat_ttl, STILL_ALIVE),
            key,
        };
        Ok(MemcachedDriver {
            beat,
            shared: Arc::new(Shared { client, member, scope, courtesies: Courtesies::default(), held: Mutex::new(PerImage::new()) }),
            membership_timeout,
            lock_timeout,
            leader_timeout,
            joined: Mutex::new(HashSet::new()),
        })
    }

    fn client(&self) -> &Client {
        &self.shared.client
    }

    fn member(&self) -> &Id {
        &self.shared.member
    }

    fn beat_key(member: &Id) -> Vec<u8> {
        prefixed(MEMBER_PREFIX, member.as_bytes())
    }

    fn group_key(group: &Id) -> Vec<u8> {
        prefixed(GROUP_PREFIX, group.as_bytes())
    }

    fn leader_key(group: &Id) -> Vec<u8> {
        prefixed(LOCK_PREFIX, &prefixed(GROUP_LEADER_PREFIX, group.as_bytes()))
    }

    fn new_lock(&self, key: Vec<u8>, timeout: f64) -> Arc<LockState> {
        Arc::new(LockState::new(self.shared.clone(), key, timeout))
    }

    /// `gets` of a group's record: `None` when the group does not exist.
    async fn load_group(&self, group: &Id) -> Result<Option<(Members, u64)>> {
        let key = Self::group_key(group);
        let Some(item) = self.client().gets(&key).await? else {
            return Ok(None);
        };
        let cas = item.cas.ok_or_else(|| Error::Tooz("memcached sent no CAS value for gets".into()))?;
        Ok(Members::parse(group, decode(&item)?)?.map(|m| (m, cas)))
    }

    async fn store_group(&self, group: &Id, members: &Members, cas: u64) -> Result<bool> {
        let (flags, data) = encode(&members.to_value());
        self.client().cas(&Self::group_key(group), flags, 0, &data, cas).await
    }

    /// Read-modify-write of a group's record: `change` edits it (or fails), then `cas`;
    /// repeated while another writer gets in between.
    async fn change_group(&self, group: &Id, mut change: impl FnMut(&mut Members) -> Result<()>) -> Result<()> {
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let Some((mut members, cas)) = self.load_group(group).await? else {
                return Err(Error::GroupNotCreated(group.clone()));
            };
            change(&mut members)?;
            if self.store_group(group, &members, cas).await? {
                return Ok(());
            }
            backoff(attempt).await;
        }
        Err(Error::Tooz(format!("group {group} kept changing under us; gave up")))
    }

    /// Read-modify-write of the group list (created on first use).
    async fn change_group_list(&self, change: impl Fn(&mut Vec<Value>)) -> Result<()> {
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let stored = match self.client().gets(GROUP_LIST_KEY).await? {
                None => None,
                Some(item) => {
                    let cas = item.cas.ok_or_else(|| Error::Tooz("memcached sent no CAS value for gets".into()))?;
                    match decode(&item)? {
                        Value::Array(list) => Some((list, cas)),
                        Value::Nil => Some((Vec::new(), cas)),
                        other => return Err(corrupt("the group list", format!("expected a list, found {}", kind(&other)))),
                    }
                }
            };
            let stored_ok = match stored {
                Some((mut list, cas)) => {
                    change(&mut list);
                    let (flags, data) = encode(&Value::Array(list));
                    self.client().cas(GROUP_LIST_KEY, flags, 0, &data, cas).await?
                }
                None => {
                    let mut list = Vec::new();
                    change(&mut list);
                    if list.is_empty() {
                        return Ok(());
                    }
                    let (flags, data) = encode(&Value::Array(list));
                    self.client().store(Store::Add, GROUP_LIST_KEY, flags, 0, &data).await?
                }
            };
            if stored_ok {
                return Ok(());
            }
            backoff(attempt).await;
        }
        Err(Error::Tooz("the group list kept changing under us; gave up".into()))
    }

    /// The group's live members, pruning the dead ones from its record (never self).
    async fn live_members(&self, group: &Id) -> Result<Vec<(Id, Value)>> {
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let Some((members, cas)) = self.load_group(group).await? else {
                return Err(Error::GroupNotCreated(group.clone()));
            };
            let others: Vec<Vec<u8>> = members
                .0
                .iter()
                .filter(|(id, _)| id != self.member())
                .map(|(id, _)| Self::beat_key(id))
                .filter(|k| memcache::check_key(k).is_ok())
                .collect();
            let alive: HashSet<Vec<u8>> = if others.is_empty() {
                HashSet::new()
            } else {
                let keys: Vec<&[u8]> = others.iter().map(Vec::as_slice).collect();
                self.client()
                    .get_many(&keys, false)
                    .await?
                    .into_iter()
                    .filter(|i| !i.data.is_empty())
                    .map(|i| i.key)
                    .collect()
            };
            let total = members.0.len();
            let live = Members(
                members
                    .0
                    .into_iter()
                    .filter(|(id, _)| id == self.member() || alive.contains(&Self::beat_key(id)))
                    .collect(),
            );
            if live.0.len() == total || self.store_group(group, &live, cas).await? {
                return Ok(live.0);
            }
            backoff(attempt).await;
        }
        Err(Error::Tooz(format!("group {group} kept changing under us; gave up")))
    }

    /// Refreshes this member's beat key. The reply is checked by a later beat rather than
    /// awaited, and a beat soon after one that asked for a reply asks for none: see
    /// `clients/memcache/later.rs`.
    async fn beat_member(&self) -> Result<()> {
        let Beat { key, request, quiet } = &self.beat;
        memcache::check_key(key)?;
        self.client().send_checked_later("heartbeat", request, Some(quiet), |r| matches!(r, Reply::Stored)).await
    }

    /// Extends every held lock's (and leadership's) lease, each renewal with a third of the
    /// time left before the earliest holder's deadline among them, then again (`lock/lease.rs`):
    /// a request given up on takes its connection with it, so the next try connects afresh.
    async fn extend_held(&self) -> Result<()> {
        let held = self.held();
        let Some(deadline) = held.iter().filter_map(|l| l.fate_deadline()).min() else { return Ok(()) };
        renew_by(deadline, || {}, || async {
            for batch in held.chunks(EXTEND_BATCH) {
                LockState::touch_all(batch).await?;
            }
            Ok(())
        })
        .await
    }

    /// Releases the locks this process image holds.
    async fn release_held(&self) {
        for lock in self.held() {
            if lock.release().await.is_err() {
                // Unreachable server: the key lapses by itself; this coordinator is done with it.
                lock.forget();
            }
        }
    }

    fn held(&self) -> Vec<Arc<LockState>> {
        self.shared.held.lock().unwrap_or_else(|p| p.into_inner()).get().clone()
    }
}

/// How many lock extensions go out in one pipelined write.
const EXTEND_BATCH: usize = 1000;

/// A short pause between attempts of a lost read-modify-write race (upstream waits 1 s).
async fn backoff(attempt: u32) {
    let ms = (1u64 << attempt.min(6)).min(50);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[async_trait]
impl Driver for MemcachedDriver {
    fn supports(&self, op: Op) -> bool {
        !matches!(op, Op::GetMemberInfo | Op::StandDownGroupLeader)
    }

    fn epoch(&self) -> u64 {
        self.client().connections_lost()
    }

    fn requires_beating(&self) -> bool {
        true
    }

    async fn start(&self) -> Result<()> {
        self.joined.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.client().close();
        // Connects (and checks the member id makes a usable key) right away, as upstream, and
        // waits for the first beat's reply: a server that does not speak memcached fails here.
        // On a pooled connection (from a caller's thread, one it reads itself): the beat's own
        // connection is opened by the first heartbeat, so a coordinator never told to beat
        // never opens it.
        if self.client().store(Store::Set, &self.beat.key, FLAG_BYTES, ttl(self.membership_timeout), STILL_ALIVE).await? {
            Ok(())
        } else {
            Err(Error::Tooz("memcached did not store the member's first heartbeat".into()))
        }
    }

    /// Best effort: what cannot be cleaned up now (server gone) expires by itself.
    async fn stop(&self) -> Result<()> {
        let joined: Vec<Id> = self.joined.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        for group in joined {
            let _ = self.leave_group(&group).await;
        }
        self.release_held().await;
        // Like upstream's, a delete with `noreply` and then the connections closed: nothing
        // waits for it (the key would lapse by itself anyway).
        let _ = self.client().delete_then_close(&self.beat.key).await;
        Ok(())
    }

    async fn stop_inherited(&self) -> Result<()> {
        self.release_held().await;
        self.client().close();
        Ok(())
    }

    async fn heartbeat(&self) -> Result<Option<f64>> {
        let (beat, locks) = tokio::join!(self.beat_member(), self.extend_held());
        beat.and(locks)?;
        Ok(Some(self.membership_timeout.min(self.leader_timeout).min(self.lock_timeout)))
    }

    async fn beat(&self) -> Result<Option<f64>> {
        self.beat_member().await?;
        Ok(Some(self.membership_timeout))
    }

    fn renews_leases(&self) -> bool {
        true
    }

    async fn extend_locks(&self) -> Result<Option<f64>> {
        self.extend_held().await?;
        // Locks and leaderships: the shorter lease's renewal period, whatever is held now (a
        // leadership won meanwhile is renewed in time).
        let shortest = ttl(self.lock_timeout.min(self.leader_timeout));
        Ok(Some(Lease::coarse(Duration::from_secs(u64::from(shortest))).renew_every().as_secs_f64()))
    }

    async fn create_group(&self, group: &Id) -> Result<()> {
        let key = Self::group_key(group);
        let (flags, data) = encode(&Value::Map(Vec::new()));
        if !self.client().store(Store::Add, &key, flags, 0, &data).await? {
            // A record left as nil by an interrupted delete is a group that does not exist.
            match self.client().gets(&key).await? {
                Some(item) if matches!(decode(&item), Ok(Value::Nil)) && item.cas.is_some() => {
                    if !self.client().cas(&key, flags, 0, &data, item.cas.unwrap_or_default()).await? {
                        return Err(Error::GroupAlreadyExist(group.clone()));
                    }
                }
                _ => return Err(Error::GroupAlreadyExist(group.clone())),
            }
        }
        let entry = id_value(group);
        self.change_group_list(|list| {
            if !list.contains(&entry) {
                list.push(entry.clone());
            }
        })
        .await
    }

    async fn delete_group(&self, group: &Id) -> Result<()> {
        let key = Self::group_key(group);
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let Some((members, cas)) = self.load_group(group).await? else {
                return Err(Error::GroupNotCreated(group.clone()));
            };
            if !members.0.is_empty() {
                return Err(Error::GroupNotEmpty(group.clone()));
            }
            // Marked gone with cas first, so a join racing with us cannot slip in.
            let (flags, data) = encode(&Value::Nil);
            if self.client().cas(&key, flags, 0, &data, cas).await? {
                self.client().delete(&key).await?;
                let entry = id_value(group);
                return self.change_group_list(|list| list.retain(|g| g != &entry)).await;
            }
            backoff(attempt).await;
        }
        Err(Error::Tooz(format!("group {group} kept changing under us; gave up")))
    }

    async fn destroy_group(&self, group: &Id) -> Result<()> {
        self.client().delete(&Self::group_key(group)).await.map(|_| ())
    }

    async fn get_groups(&self) -> Result<Vec<Id>> {
        let Some(item) = self.client().get(GROUP_LIST_KEY).await? else {
            return Ok(Vec::new());
        };
        match decode(&item)? {
            Value::Nil => Ok(Vec::new()),
            Value::Array(list) => list
                .iter()
                .map(|v| value_id(v).ok_or_else(|| corrupt("the group list", "an entry is not bytes or str")))
                .collect(),
            other => Err(corrupt("the group list", format!("expected a list, found {}", kind(&other)))),
        }
    }

    async fn join_group(&self, group: &Id, capabilities: &Value) -> Result<()> {
        let me = self.member().clone();
        self.change_group(group, |members| {
            if members.position(&me).is_some() {
                return Err(Error::MemberAlreadyExist { group: group.clone(), member: me.clone() });
            }
            members.0.push((me.clone(), Members::new_entry(capabilities)));
            Ok(())
        })
        .await?;
        self.joined.lock().unwrap_or_else(|p| p.into_inner()).insert(group.clone());
        Ok(())
    }

    async fn leave_group(&self, group: &Id) -> Result<()> {
        let me = self.member().clone();
        let result = self
            .change_group(group, |members| match members.position(&me) {
                Some(i) => {
                    members.0.remove(i);
                    Ok(())
                }
                None => Err(Error::MemberNotJoined { group: group.clone(), member: me.clone() }),
            })
            .await;
        if matches!(result, Ok(()) | Err(Error::GroupNotCreated(_)) | Err(Error::MemberNotJoined { .. })) {
            self.joined.lock().unwrap_or_else(|p| p.into_inner()).remove(group);
        }
        result
    }

    async fn get_members(&self, group: &Id) -> Result<Vec<Id>> {
        Ok(self.live_members(group).await?.into_iter().map(|(id, _)| id).collect())
    }

    async fn get_member_capabilities(&self, group: &Id, member: &Id) -> Result<Value> {
        self.live_members(group)
            .await?
            .into_iter()
            .find(|(id, _)| id == member)
            .map(|(_, entry)| Members::capabilities(&entry))
            .ok_or_else(|| Error::MemberNotJoined { group: group.clone(), member: member.clone() })
    }

    async fn get_members_with_capabilities(&self, group: &Id) -> Result<Vec<(Id, Value)>> {
        Ok(self.live_members(group).await?.into_iter().map(|(id, entry)| (id, Members::capabilities(&entry))).collect())
    }

    async fn update_capabilities(&self, group: &Id, capabilities: &Value) -> Result<()> {
        let me = self.member().clone();
        self.change_group(group, |members| {
            let i = members.position(&me).ok_or_else(|| Error::MemberNotJoined { group: group.clone(), member: me.clone() })?;
            let Value::Map(fields) = &mut members.0[i].1 else {
                return Err(corrupt(&format!("group {group}"), "a member entry is not a map"));
            };
            match fields.iter_mut().find(|(k, _)| k.as_bytes() == Some(b"capabilities".as_slice())) {
                Some((_, v)) => *v = capabilities.clone(),
                None => fields.push((Value::Bin(b"capabilities".to_vec()), capabilities.clone())),
            }
            Ok(())
        })
        .await
    }

    async fn get_leader(&self, group: &Id) -> Result<Option<Id>> {
        match self.client().get(&Self::leader_key(group)).await? {
            None => Ok(None),
            Some(item) => {
                let v = decode(&item)?;
                value_id(&v).map(Some).ok_or_else(|| corrupt(&format!("the leader of group {group}"), "not a member id"))
            }
        }
    }

    async fn stand_down_group_leader(&self, _group: &Id) -> Result<bool> {
        unsupported("stand_down_group_leader")
    }

    async fn elect(&self, group: &Id) -> Result<bool> {
        // A fresh lock each time: a leader already holding the key does not win it again.
        let lock = self.new_lock(Self::leader_key(group), self.leader_timeout);
        lock.acquire(Wait::No).await
    }

    fn lock(&self, name: &[u8]) -> Result<Arc<dyn DriverLock>> {
        if name.is_empty() {
            return Err(Error::InvalidArgument("Locks must be provided a name".into()));
        }
        let key = prefixed(LOCK_PREFIX, name);
        memcache::check_key(&key)?;
        Ok(Arc::new(MemcachedLock(self.new_lock(key, self.lock_timeout))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_upstream() {
        assert_eq!(MemcachedDriver::group_key(&Id::from(&b"g1"[..])), b"_TOOZ_GROUP_g1");
        assert_eq!(MemcachedDriver::beat_key(&Id::from("m1")), b"_TOOZ_MEMBER_m1");
        assert_eq!(MemcachedDriver::leader_key(&Id::from(&b"g1"[..])), b"__TOOZ_LOCK__TOOZ_GROUP_LEADER_g1");
    }

    #[test]
    fn values_encode_as_pymemcache_with_upstreams_serializer() {
        assert_eq!(encode(&Value::Bin(b"me".to_vec())), (1, b"me".to_vec()));
        assert_eq!(encode(&Value::Str("me".into())), (2, vec![0xa2, b'm', b'e']));
        assert_eq!(encode(&Value::Map(vec![])), (2, vec![0x80]));
        let item = |flags, data: &[u8]| Item { key: b"k".to_vec(), flags, data: data.to_vec(), cas: None };
        assert_eq!(decode(&item(1, b"\xc1raw")).unwrap(), Value::Bin(b"\xc1raw".to_vec()));
        assert_eq!(decode(&item(2, b"\xc0")).unwrap(), Value::Nil);
        assert!(matches!(decode(&item(2, b"\xc1")), Err(Error::Serialization(_))));
        assert!(matches!(decode(&item(0, b"x")), Err(Error::Serialization(_))));
    }

    #[test]
    fn group_records_parse_or_fail_cleanly() {
        let g = Id::from(&b"g"[..]);
        let good = Value::Map(vec![
            (Value::Bin(b"a".to_vec()), Members::new_entry(&Value::Nil)),
            (Value::Str("b".into()), Members::new_entry(&Value::Int(1))),
        ]);
        let m = Members::parse(&g, good).unwrap().unwrap();
        assert_eq!(m.0[0].0, Id::Bytes(b"a".to_vec()));
        assert_eq!(m.0[1].0, Id::Text("b".into()));
        assert_eq!(Members::capabilities(&m.0[1].1), Value::Int(1));
        assert!(Members::parse(&g, Value::Nil).unwrap().is_none());
        assert!(Members::parse(&g, Value::Array(vec![])).is_err());
        assert!(Members::parse(&g, Value::Map(vec![(Value::Int(1), Value::Map(vec![]))])).is_err());
        assert!(Members::parse(&g, Value::Map(vec![(Value::Bin(b"a".to_vec()), Value::Int(1))])).is_err());
    }

    #[test]
    fn ttls_have_a_second_of_slack() {
        assert_eq!(ttl(30.0), 31);
        assert_eq!(ttl(1.0), 2);
        assert_eq!(ttl(0.2), 2);
    }
}
