//! `etcd3+http://` and `etcd3+https://`: etcd v3 over native gRPC, key for key what upstream's
//! etcd3gw (JSON gateway) driver writes, so processes on upstream and on ours share groups,
//! members and locks during a rolling upgrade:
//!
//! * group `g`: key `tooz/groups/<g>/` holding the key itself, no lease;
//! * member `m` of `g`: key `tooz/groups/<g>/<m>` holding msgpack capabilities, attached to
//!   the coordinator's membership lease (TTL `membership_timeout`, refreshed by heartbeats),
//!   so a member vanishes with its coordinator;
//! * lock `name`: key `/tooz/locks<name>` (no separator, as upstream) holding 16 random bytes
//!   of the lock object, attached to the coordinator's lock lease (TTL `lock_timeout`, one
//!   for all its locks, `lock_lease.rs`); taken by a transaction `create_revision == 0 → put`,
//!   released by `value == ours → delete`.
//!
//! Beyond upstream (keys upstream never reads, so it is not disturbed):
//!
//! * `tooz/member-info/<g>/<m>`: join and update times (msgpack map), on the membership
//!   lease, written in the same transactions as the member key (`get_member_info`);
//! * leader election as etcd's `concurrency.Election`: each candidate puts
//!   `tooz/elections/<g>/<m>` (value: its member id) on the coordinator's election lease
//!   (TTL `leader_timeout`, default `lock_timeout`, refreshed by heartbeats); the candidate
//!   with the lowest create revision leads.
//!
//! Waiting for a lock uses a watch stream on its key (a push from etcd when the holder lets
//! go), not polling. Several endpoints (`hosts` option) give failover (see `link.rs`).
//!
//! The calls go through our own etcd client (`crate::clients::etcd`: tonic, hand-written
//! prost messages), not the `etcd-client` crate, whose build script compiles etcd's .proto
//! files and so needs a system `protoc`; building us needs only cargo and a C compiler.
//!
//! One file of about 775 lines (and its tests): groups, members, leaders and the lease they
//! all hang on share one `Shared` state and key layout; the lock is `lock.rs`, the channel
//! and failover `link.rs`, watch streams `watch.rs`.

mod link;
mod lock;
mod lock_lease;
mod watch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use crate::clients::etcd::messages::{
    Compare, CompareResult as Cmp, DeleteRangeRequest, DeleteRangeResponse, KeyValue, RangeRequest, RangeResponse, RequestOp, SortOrder, SortTarget,
    TxnRequest, TxnResponse, WatchCreateRequest,
};

use super::options::{self, Options};
use super::Url;
use crate::clients::tls::{self, ClientCert, Named, TlsOptions, Verify};
use crate::driver::{Driver, DriverLock, MemberInfo, Op};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::msgpack::{self, Value};
use crate::runtime::PerImage;
use crate::lock::fate::Fate;
use crate::lock::handoff::Courtesies;
use crate::lock::lease::{renew_by, until_answered, Lease};
use link::{lapsed, lease_gone, Link};
use lock::Etcd3Lock;

const DEFAULT_PORT: u16 = 2379;
const GROUP_PREFIX: &[u8] = b"tooz/groups/";
const INFO_PREFIX: &[u8] = b"tooz/member-info/";
const ELECTION_PREFIX: &[u8] = b"tooz/elections/";
pub(crate) const LOCK_PREFIX: &[u8] = b"/tooz/locks";

fn group_key(g: &[u8]) -> Vec<u8> {
    [GROUP_PREFIX, g, b"/"].concat()
}

fn member_key(g: &[u8], m: &[u8]) -> Vec<u8> {
    [GROUP_PREFIX, g, b"/", m].concat()
}

fn info_key(g: &[u8], m: &[u8]) -> Vec<u8> {
    [INFO_PREFIX, g, b"/", m].concat()
}

fn election_prefix(g: &[u8]) -> Vec<u8> {
    [ELECTION_PREFIX, g, b"/"].concat()
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Lease TTLs are whole seconds (at least 1).
fn ttl_seconds(seconds: f64) -> i64 {
    (seconds.ceil() as i64).max(1)
}

/// The coordinator's two leases: members (and their info keys) hang on one, election
/// candidacies on the other (their TTLs differ: `membership_timeout`, `leader_timeout`).
#[derive(Clone, Copy)]
enum LeaseKind {
    Membership,
    Election,
}

/// What a coordinator remembers of a group it joined (to re-attach it to a new lease).
#[derive(Clone)]
struct Joined {
    caps: Vec<u8>,
    created_at: f64,
}

#[derive(Default)]
struct State {
    /// The membership lease (0 before start and after stop).
    lease: i64,
    /// The lease of election candidacies (0 until the first election).
    election_lease: i64,
    joined: HashMap<Vec<u8>, Joined>,
    /// Groups whose election this coordinator entered, and whether it was leading at the
    /// last look.
    candidate: HashMap<Vec<u8>, bool>,
    /// When the request that last set the election lease (a grant or a refresh) was sent, and
    /// by which process image (a forked worker leaves its parent's lease to the parent).
    election_sent: Option<(tokio::time::Instant, u64)>,
    /// The lease this image's locks hang on (`lock_lease.rs`).
    lock_lease: PerImage<Option<lock_lease::LockLease>>,
    /// Locks held through this coordinator: lock id → (key, lease), refreshed by heartbeats.
    held: PerImage<HashMap<u64, (Vec<u8>, i64)>>,
    /// The fates of the held locks (told when a heartbeat finds a lock's lease lapsed).
    fates: PerImage<HashMap<u64, Arc<crate::lock::fate::Fate>>>,
}

impl State {
    /// A held lock turned out lost: no longer refreshed, and its holder is told.
    fn lost(&mut self, id: u64, why: &str) {
        self.held.get().remove(&id);
        if let Some(fate) = self.fates.get().remove(&id) {
            fate.lost(why);
        }
    }

    fn slot(&mut self, kind: LeaseKind) -> &mut i64 {
        match kind {
            LeaseKind::Membership => &mut self.lease,
            LeaseKind::Election => &mut self.election_lease,
        }
    }
}

/// Everything a coordinator and its locks share.
pub(crate) struct Shared {
    link: Link,
    member: Vec<u8>,
    lock_ttl: i64,
    membership_ttl: i64,
    leader_ttl: i64,
    heartbeat_every: f64,
    state: Mutex<State>,
    /// The leaderships this coordinator holds, on the election lease: lost on the holder's
    /// clock like a lock (`lock/fate.rs`), when every group it leads stands it down.
    leadership: Arc<Fate>,
    next_lock: AtomicU64,
    /// Which locks this coordinator steps aside from, by key (`lock/handoff.rs`).
    courtesies: Courtesies,
    /// One grant of a lock lease at a time.
    granting: tokio::sync::Mutex<()>,
    /// Acquires of this coordinator waiting for a lock (their waiter entries are on the lock
    /// lease, which stays in use meanwhile).
    waiting: AtomicUsize,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn grant(&self, ttl: i64) -> Result<i64> {
        let r = self.link.run("grant lease", |c| async move { c.lease_grant(ttl).await }).await?;
        if !r.error.is_empty() {
            return Err(Error::Tooz(format!("etcd refused a lease: {}", r.error)));
        }
        Ok(r.id)
    }

    /// Refreshes a lease; false when etcd no longer knows it (expired or revoked).
    async fn keep_alive(&self, lease: i64) -> Result<bool> {
        let outcome = self
            .link
            .run("refresh lease", |c| async move {
                match c.lease_keep_alive(lease).await {
                    // TTL 0: etcd does not know the lease.
                    Ok(ttl) => Ok(ttl > 0),
                    Err(e) if lease_gone(&e) => Ok(false),
                    Err(e) => Err(e),
                }
            })
            .await?;
        Ok(outcome)
    }

    /// The election lease, as its holder reckons it.
    fn election_lease(&self) -> Lease {
        Lease::exact(Duration::from_secs(self.leader_ttl.max(1) as u64))
    }

    /// Every leadership of this coordinator ends (its election lease is gone, or may be):
    /// the groups it led, for the record.
    fn stand_down_all(&self) -> String {
        let mut st = self.state();
        let mut led = Vec::new();
        for (g, leading) in st.candidate.iter_mut() {
            if std::mem::replace(leading, false) {
                led.push(String::from_utf8_lossy(g).into_owned());
            }
        }
        led.join(", ")
    }

    /// This coordinator leads where its candidacy is oldest (`leading`), or no longer leads
    /// in `group`: the leadership held on the election lease begins, goes on or ends.
    fn note_leading(self: &Arc<Self>, group: Vec<u8>, leading: Option<bool>) -> bool {
        let mut st = self.state();
        let was = match leading {
            Some(l) => st.candidate.insert(group, l),
            None => st.candidate.remove(&group),
        }
        .unwrap_or(false);
        let leads_any = st.candidate.values().any(|l| *l);
        let sent = st.election_sent.map(|(sent, _)| sent);
        drop(st);
        match (leads_any, self.leadership.holding(), sent) {
            (true, false, Some(sent)) => {
                let me = self.clone();
                let on_expiry = Box::new(move |why| {
                    let led = me.stand_down_all();
                    me.leadership.lost(&format!("{why}; it no longer leads {led}"));
                });
                self.leadership.acquired_on_lease(None, self.election_lease().deadline(sent), on_expiry);
            }
            (false, true, _) => self.leadership.released(),
            _ => {}
        }
        leading == Some(true) && !was
    }

    /// Refreshes the election lease, if there is one; a lapsed one is replaced (and the
    /// leaderships on it are lost). The holder's clock of the leaderships moves on with it.
    async fn keep_election(&self) -> Result<()> {
        let generation = crate::runtime::generation();
        let election = match *self.state() {
            State { election_lease, election_sent: Some((_, by)), .. } if election_lease != 0 && by == generation => election_lease,
            _ => return Ok(()),
        };
        let sent = tokio::time::Instant::now();
        if self.keep_alive(election).await? {
            self.state().election_sent = Some((sent, generation));
            self.leadership.renewed(self.election_lease().deadline(sent));
        } else {
            let led = self.stand_down_all();
            self.leadership.lost(&format!("the election lease lapsed before it was refreshed; it no longer leads {led}"));
            self.renew(LeaseKind::Election, election).await?;
        }
        Ok(())
    }

    /// Revokes a lease in the background, trying again until etcd answers or the lease has
    /// surely lapsed by itself (`lease::until_answered`).
    fn revoke_until_answered(self: &Arc<Self>, lease: i64) {
        let me = self.clone();
        crate::runtime::runtime().spawn(async move {
            until_answered(me.lock_lease(), || me.link.reset(), || me.revoke(lease)).await;
        });
    }

    /// Revokes a lease in the background (its keys go at once); failures are harmless, the
    /// lease then simply expires.
    fn revoke_later(self: &Arc<Self>, lease: i64) {
        if lease == 0 {
            return;
        }
        let me = self.clone();
        crate::runtime::runtime().spawn(async move {
            let _ = me.revoke(lease).await;
        });
    }

    async fn revoke(&self, lease: i64) -> Result<()> {
        self.link
            .run("revoke lease", |c| async move {
                match c.lease_revoke(lease).await {
                    Ok(_) => Ok(()),
                    Err(e) if lease_gone(&e) => Ok(()),
                    Err(e) => Err(e),
                }
            })
            .await
    }

    async fn txn(&self, what: &str, txn: TxnRequest) -> Result<TxnResponse> {
        self.link.run(what, |c| { let txn = txn.clone(); async move { c.txn(txn).await } }).await
    }

    async fn get(&self, what: &str, range: RangeRequest) -> Result<RangeResponse> {
        self.link.run(what, |c| { let range = range.clone(); async move { c.range(range).await } }).await
    }

    /// Deletes the one key `key`.
    async fn delete(&self, what: &str, key: Vec<u8>) -> Result<DeleteRangeResponse> {
        self.link
            .run(what, |c| {
                let key = key.clone();
                async move { c.delete_range(DeleteRangeRequest::key(key)).await }
            })
            .await
    }

    fn lease(&self) -> Result<i64> {
        match self.state().lease {
            0 => Err(Error::Tooz("the coordinator is not started".into())),
            l => Ok(l),
        }
    }

    fn ttl_of(&self, kind: LeaseKind) -> i64 {
        match kind {
            LeaseKind::Membership => self.membership_ttl,
            LeaseKind::Election => self.leader_ttl,
        }
    }

    /// Replaces the lease of `kind` that lapsed (`expired`; 0: there was none yet) and puts
    /// back what hung on it: memberships (of groups that still exist) or election
    /// candidacies (at the back of each queue). Upstream leaves its members lost.
    async fn renew(&self, kind: LeaseKind, expired: i64) -> Result<i64> {
        let sent = tokio::time::Instant::now();
        let lease = self.grant(self.ttl_of(kind)).await?;
        let swapped = {
            let mut st = self.state();
            let slot = st.slot(kind);
            if *slot != expired && *slot != 0 {
                Err(*slot) // renewed meanwhile by another call: use that one
            } else {
                *slot = lease;
                if let LeaseKind::Election = kind {
                    st.election_sent = Some((sent, crate::runtime::generation()));
                }
                Ok(())
            }
        };
        if let Err(theirs) = swapped {
            self.revoke(lease).await.ok();
            return Ok(theirs);
        }
        match kind {
            LeaseKind::Membership => {
                let joined = self.state().joined.clone();
                for (g, j) in joined {
                    let txn = TxnRequest::when([Compare::version(group_key(&g), Cmp::Greater, 0)]).and_then([
                        RequestOp::put(member_key(&g, &self.member), j.caps.clone(), lease),
                        RequestOp::put(info_key(&g, &self.member), info_value(j.created_at, now()), lease),
                    ]);
                    if !self.txn("rejoin group", txn).await?.succeeded {
                        self.state().joined.remove(&g);
                    }
                }
            }
            LeaseKind::Election => {
                let groups: Vec<Vec<u8>> = self.state().candidate.keys().cloned().collect();
                for g in groups {
                    let key = [election_prefix(&g), self.member.clone()].concat();
                    let txn = TxnRequest::when([Compare::create_revision(key.clone(), Cmp::Equal, 0)])
                        .and_then([RequestOp::put(key, self.member.clone(), lease)]);
                    self.txn("re-enter election", txn).await?;
                }
            }
        }
        Ok(lease)
    }

    /// Runs `op` with the lease of `kind` (the election lease is granted on first use); if
    /// etcd says the lease lapsed (the coordinator missed its heartbeats), renews it and runs
    /// `op` once more.
    async fn with_lease<T, F, Fut>(&self, kind: LeaseKind, op: F) -> Result<T>
    where
        F: Fn(i64) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let membership = self.lease()?;
        let current = match kind {
            LeaseKind::Membership => membership,
            LeaseKind::Election => self.state().election_lease,
        };
        let lease = match current {
            0 => self.renew(kind, 0).await?,
            l => l,
        };
        match op(lease).await {
            Err(e) if lapsed(&e) => {
                let lease = self.renew(kind, lease).await?;
                op(lease).await
            }
            other => other,
        }
    }
}

fn info_value(created_at: f64, updated_at: f64) -> Vec<u8> {
    msgpack::encode(&Value::map_of(vec![("created_at", Value::Float(created_at)), ("updated_at", Value::Float(updated_at))]))
}

/// The keys read by the `index`-th op of the transaction's branch that ran (none if it was
/// not a read).
fn first_kvs(resp: &TxnResponse, index: usize) -> &[KeyValue] {
    resp.range(index).map_or(&[], |r| r.kvs.as_slice())
}

fn count_of(resp: &TxnResponse, index: usize) -> i64 {
    resp.range(index).map_or(0, |r| r.count)
}

pub struct Etcd3Driver {
    shared: Arc<Shared>,
}

/// TLS from upstream's options: `ca_cert`, `cert_cert` with `cert_key`; https without them
/// checks the server against the system's roots.
fn tls_config(https: bool, options: &Options) -> Result<Option<Arc<rustls::ClientConfig>>> {
    let client_cert = match (Named::lookup(options, "cert_cert"), Named::lookup(options, "cert_key")) {
        (Some(cert), Some(key)) => Some(ClientCert { cert, key }),
        (None, None) => None,
        _ => return Err(Error::InvalidArgument("cert_cert and cert_key go together".into())),
    };
    let ca_file = Named::lookup(options, "ca_cert");
    if !https {
        return Ok(None);
    }
    Ok(Some(tls::client_config(&TlsOptions { ca_file, client_cert, key_password: None, verify: Verify::Full })?))
}

impl Etcd3Driver {
    /// Refreshes the lock lease (every held lock at once) and the election lease, each renewal
    /// with a third of the time left before the earlier holder's deadline of the two, then again
    /// on fresh channels (`lock/lease.rs`).
    async fn extend_held(&self) -> Result<()> {
        let locks = self.shared.lock_lease_to_renew();
        let election = self.shared.state().election_lease != 0;
        let deadline = locks.map(|(_, d)| d).into_iter().chain(self.shared.leadership.deadline()).min();
        let deadline = match deadline {
            Some(d) => d,
            // Nothing held on this side: a candidacy's lease is refreshed all the same.
            None if election => tokio::time::Instant::now() + self.shared.election_lease().length,
            None => return Ok(()),
        };
        renew_by(deadline, || self.shared.link.reset(), || async {
            let (election, locks) = tokio::join!(self.shared.keep_election(), async {
                match locks {
                    Some((lease, _)) => self.shared.refresh_lock_lease(lease).await.map(drop),
                    None => Ok(()),
                }
            });
            election.and(locks)
        })
        .await
    }

    /// Lets go of the locks this process image holds: revoking their lease deletes their keys.
    async fn release_held(&self) {
        {
            let mut st = self.shared.state();
            st.held.get().clear();
            for (_, fate) in st.fates.get().drain() {
                fate.released();
            }
        }
        if let Some(lease) = self.shared.take_lock_lease() {
            let _ = self.shared.revoke(lease).await;
        }
    }

    pub fn new(member: Id, url: &Url, options: &Options) -> Result<Etcd3Driver> {
        let timeout = options.float("timeout", 30.0)?;
        let lock_timeout = options.float("lock_timeout", timeout)?;
        let membership_timeout = options.float("membership_timeout", timeout)?;
        let leader_timeout = options.float("leader_timeout", lock_timeout)?;
        if timeout <= 0.0 {
            return Err(Error::InvalidArgument("option timeout must be positive".into()));
        }
        if let Some(v) = options.str("api_version") {
            // Upstream picks the gateway's path with it; gRPC has no such path. Accepted.
            if v.trim().is_empty() || v.contains('/') {
                return Err(Error::InvalidArgument(format!("option api_version={v:?} is not a version")));
            }
        }
        let https = url.scheme.ends_with("https");
        let scheme = if https { "https" } else { "http" };
        let mut hosts: Vec<(String, u16)> = Vec::new();
        if let Some(h) = url.host.as_deref().filter(|h| !h.is_empty()) {
            hosts.push((h.trim_start_matches('[').trim_end_matches(']').to_owned(), url.port.unwrap_or(DEFAULT_PORT)));
        }
        for entry in options.str("hosts").unwrap_or("").split(',').filter(|h| !h.trim().is_empty()) {
            hosts.push(options::host_port(entry, DEFAULT_PORT)?);
        }
        if hosts.is_empty() {
            hosts.push(("localhost".into(), DEFAULT_PORT));
        }
        let endpoints = hosts
            .into_iter()
            .map(|(h, p)| if h.contains(':') { format!("{scheme}://[{h}]:{p}") } else { format!("{scheme}://{h}:{p}") })
            .collect();
        let user = match (url.username.as_deref().filter(|u| !u.is_empty()), url.password.as_deref()) {
            (Some(u), p) => Some((u.to_owned(), p.unwrap_or("").to_owned())),
            (None, Some(_)) => return Err(Error::InvalidArgument("a password needs a user name".into())),
            (None, None) => None,
        };
        let tls = tls_config(https, options)?;
        let member_bytes = member.as_bytes().to_vec();
        Ok(Etcd3Driver {
            shared: Arc::new(Shared {
                link: Link::new(endpoints, tls, user, Duration::from_secs_f64(timeout), format!("member {member}")),
                member: member_bytes,
                lock_ttl: ttl_seconds(lock_timeout),
                membership_ttl: ttl_seconds(membership_timeout),
                leader_ttl: ttl_seconds(leader_timeout),
                heartbeat_every: lock_timeout.min(membership_timeout).min(leader_timeout),
                state: Mutex::new(State::default()),
                leadership: Arc::new(Fate::of(
                    "leadership",
                    "tooz.drivers.etcd3gw",
                    format!("of member {member}"),
                )),
                next_lock: AtomicU64::new(0),
                courtesies: Courtesies::with_grace(lock::HANDOVER_GRACE),
                granting: tokio::sync::Mutex::new(()),
                waiting: AtomicUsize::new(0),
            }),
        })
    }

    fn member_id(&self) -> Id {
        Id::Bytes(self.shared.member.clone())
    }

    async fn list_group(&self, group: &Id, keys_only: bool) -> Result<Vec<(Id, Vec<u8>)>> {
        self.read_group(group, keys_only).await?.1.ok_or_else(|| Error::GroupNotCreated(group.clone()))
    }

    /// The revision of the read, and the group's members with their values (`None` when the
    /// group does not exist).
    async fn read_group(&self, group: &Id, keys_only: bool) -> Result<(i64, Option<Vec<(Id, Vec<u8>)>>)> {
        let gkey = group_key(group.as_bytes());
        let mut range = RangeRequest::key(gkey.clone()).prefix();
        if keys_only {
            range = range.keys_only();
        }
        let r = self.shared.get("get members", range).await?;
        let revision = r.revision();
        let mut found = false;
        let mut out = Vec::new();
        for KeyValue { key, value, .. } in r.kvs {
            if key == gkey {
                found = true;
            } else {
                out.push((Id::Bytes(key[gkey.len()..].to_vec()), value));
            }
        }
        Ok((revision, found.then_some(out)))
    }

    fn election_key(&self, g: &[u8]) -> Vec<u8> {
        [election_prefix(g), self.shared.member.clone()].concat()
    }

    /// The candidate of `prefix` with the lowest create revision: the leader.
    fn oldest_candidate(prefix: Vec<u8>) -> RangeRequest {
        RangeRequest::key(prefix).prefix().sort(SortTarget::Create, SortOrder::Ascend).limit(1)
    }
}

#[async_trait]
impl Driver for Etcd3Driver {
    fn supports(&self, _op: Op) -> bool {
        true
    }

    fn requires_beating(&self) -> bool {
        true
    }

    async fn start(&self) -> Result<()> {
        self.shared.link.reset();
        let lease = self.shared.grant(self.shared.membership_ttl).await?;
        let mut st = self.shared.state();
        st.lease = lease;
        st.election_lease = 0;
        st.joined.clear();
        st.candidate.clear();
        drop(st);
        self.shared.leadership.released();
        Ok(())
    }

    async fn stop(&self) -> Result<()> {
        let (lease, election) = {
            let mut st = self.shared.state();
            st.joined.clear();
            st.candidate.clear();
            (std::mem::take(&mut st.lease), std::mem::take(&mut st.election_lease))
        };
        self.shared.leadership.released();
        // Revoking a lease deletes what hangs on it: members, candidacies, held locks.
        self.release_held().await;
        for l in [lease, election] {
            if l != 0 {
                let _ = self.shared.revoke(l).await;
            }
        }
        self.shared.link.reset();
        Ok(())
    }

    async fn stop_inherited(&self) -> Result<()> {
        self.release_held().await;
        self.shared.link.reset();
        Ok(())
    }

    async fn heartbeat(&self) -> Result<Option<f64>> {
        let (beat, locks) = tokio::join!(self.beat(), self.extend_held());
        beat.and(locks)?;
        Ok(Some(self.shared.heartbeat_every))
    }

    fn renews_leases(&self) -> bool {
        true
    }

    async fn beat(&self) -> Result<Option<f64>> {
        let lease = self.shared.lease()?;
        if !self.shared.keep_alive(lease).await? {
            self.shared.renew(LeaseKind::Membership, lease).await?;
        }
        Ok(Some(self.shared.heartbeat_every))
    }

    async fn extend_locks(&self) -> Result<Option<f64>> {
        self.extend_held().await?;
        let every = self.shared.lock_lease().renew_every().min(self.shared.election_lease().renew_every());
        Ok(Some(every.as_secs_f64()))
    }

    async fn create_group(&self, group: &Id) -> Result<()> {
        let key = group_key(group.as_bytes());
        let txn = TxnRequest::when([Compare::version(key.clone(), Cmp::Equal, 0)]).and_then([RequestOp::put(key.clone(), key, 0)]);
        if !self.shared.txn("create group", txn).await?.succeeded {
            return Err(Error::GroupAlreadyExist(group.clone()));
        }
        Ok(())
    }

    async fn delete_group(&self, group: &Id) -> Result<()> {
        let gkey = group_key(group.as_bytes());
        loop {
            let r = self.shared.get("delete group", RangeRequest::key(gkey.clone()).prefix().keys_only()).await?;
            let revision = r.revision();
            if !r.kvs.iter().any(|kv| kv.key == gkey) {
                return Err(Error::GroupNotCreated(group.clone()));
            }
            if r.kvs.len() > 1 {
                return Err(Error::GroupNotEmpty(group.clone()));
            }
            // Delete only if nothing under the group changed since the read (no one joined).
            let txn = TxnRequest::when([
                Compare::version(gkey.clone(), Cmp::NotEqual, 0),
                Compare::mod_revision(gkey.clone(), Cmp::Less, revision + 1).prefix(),
            ])
            .and_then([RequestOp::delete(gkey.clone())]);
            if self.shared.txn("delete group", txn).await?.succeeded {
                return Ok(());
            }
        }
    }

    async fn destroy_group(&self, group: &Id) -> Result<()> {
        let gkey = group_key(group.as_bytes());
        self.shared.delete("destroy group", gkey).await?;
        Ok(())
    }

    async fn get_groups(&self) -> Result<Vec<Id>> {
        let r = self.shared.get("get groups", RangeRequest::key(GROUP_PREFIX).prefix().keys_only()).await?;
        // Group keys end with '/' and have no lease; member keys hang on a lease.
        Ok(r.kvs
            .into_iter()
            .filter(|kv| kv.lease == 0 && kv.key.len() > GROUP_PREFIX.len() + 1 && kv.key.ends_with(b"/"))
            .map(|kv| Id::Bytes(kv.key[GROUP_PREFIX.len()..kv.key.len() - 1].to_vec()))
            .collect())
    }

    async fn join_group(&self, group: &Id, capabilities: &Value) -> Result<()> {
        let g = group.as_bytes().to_vec();
        let caps = msgpack::encode(capabilities);
        let created_at = now();
        let (gkey, mkey, ikey) = (group_key(&g), member_key(&g, &self.shared.member), info_key(&g, &self.shared.member));
        let resp = self
            .shared
            .with_lease(LeaseKind::Membership, |lease| {
                let txn = TxnRequest::when([
                    Compare::version(gkey.clone(), Cmp::Greater, 0),
                    Compare::create_revision(mkey.clone(), Cmp::Equal, 0),
                ])
                .and_then([
                    RequestOp::put(mkey.clone(), caps.clone(), lease),
                    RequestOp::put(ikey.clone(), info_value(created_at, created_at), lease),
                ])
                .or_else([RequestOp::range(RangeRequest::key(gkey.clone()).count_only())]);
                async move { self.shared.txn("join group", txn).await }
            })
            .await?;
        if !resp.succeeded {
            if count_of(&resp, 0) == 0 {
                return Err(Error::GroupNotCreated(group.clone()));
            }
            return Err(Error::MemberAlreadyExist { group: group.clone(), member: self.member_id() });
        }
        self.shared.state().joined.insert(g, Joined { caps, created_at });
        Ok(())
    }

    async fn leave_group(&self, group: &Id) -> Result<()> {
        let g = group.as_bytes();
        let mkey = member_key(g, &self.shared.member);
        let txn = TxnRequest::when([Compare::create_revision(mkey.clone(), Cmp::NotEqual, 0)])
            .and_then([RequestOp::delete(mkey), RequestOp::delete(info_key(g, &self.shared.member))]);
        let ok = self.shared.txn("leave group", txn).await?.succeeded;
        self.shared.state().joined.remove(g);
        if !ok {
            return Err(Error::MemberNotJoined { group: group.clone(), member: self.member_id() });
        }
        Ok(())
    }

    async fn get_members(&self, group: &Id) -> Result<Vec<Id>> {
        Ok(self.list_group(group, true).await?.into_iter().map(|(m, _)| m).collect())
    }

    /// Pushed: a watch stream on the group's prefix from the revision of the last read wakes
    /// the wait; `poll` is only a safety net.
    async fn next_members(&self, group: &Id, known: &[Id], poll: Duration) -> Result<Vec<Id>> {
        loop {
            let (revision, found) = self.read_group(group, true).await?;
            let now: Vec<Id> = found.unwrap_or_default().into_iter().map(|(m, _)| m).collect();
            if !crate::driver::same_members(&now, known) {
                return Ok(now);
            }
            let deadline = Some(tokio::time::Instant::now() + poll);
            // A put under the prefix may only update capabilities: looking again tells.
            let watch = WatchCreateRequest::key(group_key(group.as_bytes())).prefix();
            watch::wait_for_event(&self.shared.link, "watch members", watch, revision, deadline, |_| true).await;
        }
    }

    async fn get_members_with_capabilities(&self, group: &Id) -> Result<Vec<(Id, Value)>> {
        self.list_group(group, false)
            .await?
            .into_iter()
            .map(|(m, v)| Ok((m, if v.is_empty() { Value::Nil } else { msgpack::decode(&v)? })))
            .collect()
    }

    async fn get_member_capabilities(&self, group: &Id, member: &Id) -> Result<Value> {
        let g = group.as_bytes();
        let txn = TxnRequest::default().and_then([
            RequestOp::range(RangeRequest::key(member_key(g, member.as_bytes()))),
            RequestOp::range(RangeRequest::key(group_key(g)).count_only()),
        ]);
        let resp = self.shared.txn("get member capabilities", txn).await?;
        match first_kvs(&resp, 0).first() {
            Some(kv) if kv.value.is_empty() => Ok(Value::Nil),
            Some(kv) => msgpack::decode(&kv.value),
            None if count_of(&resp, 1) == 0 => Err(Error::GroupNotCreated(group.clone())),
            None => Err(Error::MemberNotJoined { group: group.clone(), member: member.clone() }),
        }
    }

    async fn update_capabilities(&self, group: &Id, capabilities: &Value) -> Result<()> {
        let g = group.as_bytes().to_vec();
        let caps = msgpack::encode(capabilities);
        let (mkey, ikey) = (member_key(&g, &self.shared.member), info_key(&g, &self.shared.member));
        let created_at = self.shared.state().joined.get(&g).map(|j| j.created_at);
        let updated_at = now();
        let resp = self
            .shared
            .with_lease(LeaseKind::Membership, |lease| {
                let mut ops = vec![RequestOp::put(mkey.clone(), caps.clone(), lease)];
                if let Some(created_at) = created_at {
                    ops.push(RequestOp::put(ikey.clone(), info_value(created_at, updated_at), lease));
                }
                let txn = TxnRequest::when([Compare::create_revision(mkey.clone(), Cmp::NotEqual, 0)])
                    .and_then(ops)
                    .or_else([RequestOp::range(RangeRequest::key(group_key(&g)).count_only())]);
                async move { self.shared.txn("update capabilities", txn).await }
            })
            .await?;
        if !resp.succeeded {
            if count_of(&resp, 0) == 0 {
                return Err(Error::GroupNotCreated(group.clone()));
            }
            return Err(Error::MemberNotJoined { group: group.clone(), member: self.member_id() });
        }
        if let Some(j) = self.shared.state().joined.get_mut(&g) {
            j.caps = caps;
        }
        Ok(())
    }

    async fn get_member_info(&self, group: &Id, member: &Id) -> Result<MemberInfo> {
        let (g, m) = (group.as_bytes(), member.as_bytes());
        let txn = TxnRequest::default()
            .and_then([RequestOp::range(RangeRequest::key(member_key(g, m))), RequestOp::range(RangeRequest::key(info_key(g, m)))]);
        let resp = self.shared.txn("get member info", txn).await?;
        let Some(kv) = first_kvs(&resp, 0).first() else {
            return Err(Error::MemberNotJoined { group: group.clone(), member: member.clone() });
        };
        let capabilities = if kv.value.is_empty() { Value::Nil } else { msgpack::decode(&kv.value)? };
        let info = match first_kvs(&resp, 1).first() {
            Some(i) => msgpack::decode(&i.value)?,
            None => {
                return Err(Error::Tooz(format!(
                    "no join time is recorded for member {member} of group {group} (it joined through a client that records none)"
                )))
            }
        };
        let time = |k: &str| match info.get(k) {
            Some(Value::Float(f)) => Ok(*f),
            Some(v) => v.as_int().map(|i| i as f64).ok_or_else(|| Error::Serialization(format!("bad {k} in member info"))),
            None => Err(Error::Serialization(format!("no {k} in member info"))),
        };
        Ok(MemberInfo { capabilities, created_at: time("created_at")?, updated_at: time("updated_at")? })
    }

    async fn get_leader(&self, group: &Id) -> Result<Option<Id>> {
        let r = self.shared.get("get leader", Self::oldest_candidate(election_prefix(group.as_bytes()))).await?;
        Ok(r.kvs.into_iter().next().map(|kv| Id::Bytes(kv.value)))
    }

    async fn stand_down_group_leader(&self, group: &Id) -> Result<bool> {
        let g = group.as_bytes().to_vec();
        let key = self.election_key(&g);
        let prefix = election_prefix(&g);
        // Only the leader stands down: delete our candidacy if it is the oldest.
        let r = self.shared.get("get leader", Self::oldest_candidate(prefix)).await?;
        let leading = r.kvs.first().is_some_and(|kv| kv.key == key);
        if !leading {
            return Ok(false);
        }
        let txn = TxnRequest::when([Compare::create_revision(key.clone(), Cmp::NotEqual, 0)]).and_then([RequestOp::delete(key)]);
        let ok = self.shared.txn("stand down", txn).await?.succeeded;
        self.shared.note_leading(g, None);
        Ok(ok)
    }

    async fn elect(&self, group: &Id) -> Result<bool> {
        let g = group.as_bytes().to_vec();
        let key = self.election_key(&g);
        let prefix = election_prefix(&g);
        let resp = self
            .shared
            .with_lease(LeaseKind::Election, |lease| {
                let txn = TxnRequest::when([Compare::create_revision(key.clone(), Cmp::Equal, 0)])
                    .and_then([
                        RequestOp::put(key.clone(), self.shared.member.clone(), lease),
                        RequestOp::range(Self::oldest_candidate(prefix.clone())),
                    ])
                    .or_else([RequestOp::range(Self::oldest_candidate(prefix.clone()))]);
                async move { self.shared.txn("run for leader", txn).await }
            })
            .await?;
        let index = if resp.succeeded { 1 } else { 0 };
        let leading = first_kvs(&resp, index).first().is_some_and(|kv| kv.key == key);
        Ok(self.shared.note_leading(g, Some(leading)))
    }

    /// Pushed: a watch on the election prefix from the revision at which someone else was
    /// seen leading; no leader, or this member leading, returns at once.
    async fn wait_leader_change(&self, group: &Id, poll: Duration) -> Result<()> {
        let g = group.as_bytes().to_vec();
        let prefix = election_prefix(&g);
        let r = self.shared.get("get leader", Self::oldest_candidate(prefix.clone())).await?;
        let revision = r.revision();
        match r.kvs.first() {
            Some(kv) if kv.key != self.election_key(&g) => {
                let deadline = Some(tokio::time::Instant::now() + poll);
                let watch = WatchCreateRequest::key(prefix).prefix();
                watch::wait_for_event(&self.shared.link, "watch leader", watch, revision, deadline, |_| true).await;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn lock(&self, name: &[u8]) -> Result<Arc<dyn DriverLock>> {
        if name.is_empty() {
            return Err(Error::InvalidArgument("Locks must be provided a name".into()));
        }
        Ok(Arc::new(Etcd3Lock::new(self.shared.clone(), name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_upstreams() {
        assert_eq!(group_key(b"g"), b"tooz/groups/g/");
        assert_eq!(member_key(b"g", b"m"), b"tooz/groups/g/m");
        assert_eq!([LOCK_PREFIX, b"name"].concat(), b"/tooz/locks" .iter().chain(b"name").copied().collect::<Vec<_>>());
        assert_eq!(ttl_seconds(0.2), 1);
        assert_eq!(ttl_seconds(2.5), 3);
    }

    #[test]
    fn options_and_urls() {
        let url = Url { scheme: "etcd3+http".into(), host: Some("h1".into()), port: Some(1), ..Url::default() };
        let o = Options::new([("hosts", "h2:2,[::1]:3"), ("timeout", "5")].into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect());
        let d = Etcd3Driver::new(Id::from("m"), &url, &o).unwrap();
        assert_eq!(d.shared.link.describe(), "http://h1:1,http://h2:2,http://[::1]:3");
        assert_eq!(d.shared.lock_ttl, 5);
        let bad = Options::new([("timeout".to_owned(), "x".to_owned())].into_iter().collect());
        assert!(matches!(Etcd3Driver::new(Id::from("m"), &url, &bad), Err(Error::InvalidArgument(_))));
        let half = Options::new([("cert_cert".to_owned(), "/x".to_owned())].into_iter().collect());
        assert!(matches!(Etcd3Driver::new(Id::from("m"), &url, &half), Err(Error::InvalidArgument(_))));
    }
}
