//! The lock recipe kazoo's `Lock` uses, node for node, so that processes on upstream tooz
//! (kazoo) and on ours exclude each other:
//!
//! * the lock is a persistent directory; each contender adds an ephemeral sequential child
//!   `<uuid4 hex>__lock__<10-digit sequence>` holding its identifier (the member id);
//! * children are ranked by the sequence text (kazoo sorts the matched strings); the lowest
//!   holds the lock;
//! * a waiter watches only its immediate predecessor and looks again when it goes away;
//! * a contender that gives up deletes its node; a session that ends takes its nodes along.
//!
//! Leader election uses the same recipe on `/<namespace>/<group>/leader`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::{sleep_until, timeout_at, Instant};

use crate::clients::zookeeper::proto::{code, mode};
use crate::clients::zookeeper::{Answer, Client, ZkError};
use super::{zk_error, Link};
use crate::driver::{DriverLock, Wait};
use crate::lock::fate::{Fate, OnLost};
use crate::error::{Error, Result};
use crate::id::Id;

const NODE_NAME: &str = "__lock__";

/// The sequence text of a contender node (`…__lock__0000000042` → `0000000042`), as kazoo's
/// `__lock__(-?\d{10})$` pattern finds it; `None` for nodes that are not contenders.
pub fn contender_sequence(child: &str) -> Option<&str> {
    let bytes = child.as_bytes();
    if bytes.len() < 10 {
        return None;
    }
    let digits_at = bytes.len() - 10;
    if !bytes[digits_at..].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let head = &child[..digits_at];
    let (head, start) = match head.strip_suffix('-') {
        Some(h) => (h, digits_at - 1),
        None => (head, digits_at),
    };
    if head.ends_with(NODE_NAME) {
        Some(&child[start..])
    } else {
        None
    }
}

/// Contender nodes among `children`, lowest sequence first.
pub fn contenders(children: &[String]) -> Vec<&str> {
    let mut found: Vec<(&str, &str)> =
        children.iter().filter_map(|c| contender_sequence(c).map(|s| (s, c.as_str()))).collect();
    found.sort();
    found.into_iter().map(|(_, c)| c).collect()
}

/// The contender just ahead of `node` (the one to wait for), if any.
fn predecessor<'a>(children: &'a [String], node: &str) -> Option<&'a str> {
    let mine = contender_sequence(node)?;
    children
        .iter()
        .filter_map(|c| contender_sequence(c).map(|s| (s, c.as_str())))
        .filter(|(s, _)| *s < mine)
        .max()
        .map(|(_, c)| c)
}

/// The fencing token of a contender node: its sequence number, which ZooKeeper increments
/// for every child made under the lock directory. The 32-bit counter wraps to negative
/// numbers after 2^31 of them; read as unsigned, the order holds for 2^32.
fn fencing_token(node: &str) -> Option<u64> {
    let name = node.rsplit('/').next()?;
    let seq: i64 = contender_sequence(name)?.parse().ok()?;
    Some((seq as i32) as u32 as u64)
}

fn join(dir: &str, child: &str) -> String {
    if dir == "/" {
        format!("/{child}")
    } else {
        format!("{dir}/{child}")
    }
}

/// Deletes a node of `session` in the background until it is gone, the session is over, or
/// long enough has passed that the session must have ended. Used when a contender node could
/// not be removed in line (the connection was down, or the wait was cancelled).
pub(super) fn clean_up_later(link: Arc<Link>, target: Target, session: i64) {
    let until = Instant::now() + link.session_timeout() * 2 + link.budget();
    crate::runtime::runtime().spawn(async move {
        loop {
            let Some(client) = link.peek() else { return };
            if client.session_id() != session || Instant::now() >= until {
                return;
            }
            if client.wait_connected(until).await.is_err() {
                continue;
            }
            let attempt = async {
                let path = match &target {
                    Target::Node(p) => p.clone(),
                    Target::Prefix { dir, prefix } => {
                        let children = client.get_children(dir).await?;
                        match children.iter().find(|c| c.starts_with(prefix.as_str())) {
                            Some(c) => join(dir, c),
                            None => return Ok(()),
                        }
                    }
                };
                client.delete(&path).await
            };
            match timeout_at(until, attempt).await {
                Err(_) => return,
                Ok(Ok(())) | Ok(Err(ZkError::Server(code::NO_NODE))) => return,
                Ok(Err(ZkError::ConnectionLoss)) => tokio::time::sleep(Duration::from_millis(50)).await,
                Ok(Err(_)) => return,
            }
        }
    });
}

pub(super) enum Target {
    Node(String),
    /// A node whose creation may have happened but whose name never came back.
    Prefix { dir: String, prefix: String },
}

/// Owns a contender node until told otherwise; dropped while still armed (an error, a
/// cancelled wait), it has the node deleted in the background. While its create's answer is
/// still out, the node is known by its unique prefix only ([`Target::Prefix`]).
struct Contender {
    link: Arc<Link>,
    target: Target,
    session: i64,
    armed: bool,
}

impl Contender {
    /// Deletes the named node now (or later if the connection is down).
    async fn withdraw(mut self, client: &Client) {
        self.armed = false;
        let Target::Node(path) = &self.target else { return };
        let deadline = Instant::now() + self.link.budget();
        match timeout_at(deadline, client.delete(path)).await {
            Ok(Ok(())) | Ok(Err(ZkError::Server(code::NO_NODE))) | Ok(Err(ZkError::SessionEnded(_))) => {}
            _ => clean_up_later(self.link.clone(), Target::Node(path.clone()), self.session),
        }
    }
}

impl Drop for Contender {
    fn drop(&mut self) {
        if self.armed {
            let target = std::mem::replace(&mut self.target, Target::Node(String::new()));
            clean_up_later(self.link.clone(), target, self.session);
        }
    }
}

struct Held {
    path: String,
    session: i64,
}

pub struct ZkLock {
    link: Arc<Link>,
    name: Id,
    dir: String,
    prefix: String,
    data: Vec<u8>,
    /// One acquire at a time per lock object (as kazoo's acquire lock).
    gate: tokio::sync::Mutex<()>,
    held: Mutex<Option<Held>>,
    released: Notify,
    fate: Arc<Fate>,
}

impl ZkLock {
    pub(super) fn new(link: Arc<Link>, name: Id, dir: String, data: Vec<u8>) -> ZkLock {
        let prefix = format!("{}{NODE_NAME}", uuid::Uuid::new_v4().simple());
        let fate = Arc::new(Fate::new("tooz.drivers.zookeeper", format!("{dir} of member {}", String::from_utf8_lossy(&data))));
        ZkLock {
            fate,
            link,
            name,
            dir,
            prefix,
            data,
            gate: tokio::sync::Mutex::new(()),
            held: Mutex::new(None),
            released: Notify::new(),
        }
    }

    /// Whether this object holds the lock in the current session (a node of an ended
    /// session is gone, whatever this object remembers).
    pub(super) fn is_held(&self) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.link.peek().map(|c| c.session_id());
        match held.as_ref() {
            Some(h) if Some(h.session) == current => true,
            Some(_) => {
                *held = None;
                self.released.notify_waiters();
                self.fate.lost("its ZooKeeper session ended, and its node with it");
                false
            }
            None => false,
        }
    }

    async fn wait_until_released(&self, wait: Wait, deadline: Option<Instant>) -> bool {
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_held() {
                return true;
            }
            match (wait, deadline) {
                (Wait::No, _) => return false,
                (_, Some(d)) => {
                    if timeout_at(d, notified).await.is_err() {
                        return false;
                    }
                }
                (_, None) => notified.await,
            }
        }
    }

    /// Adds this object's contender node; creates the lock directory when missing. Returns
    /// its path and the listing of the directory asked for right behind the create (so it
    /// includes the node) in the same round trip.
    async fn enter(&self, client: &Client, deadline: Instant) -> Result<(String, Option<Answer>)> {
        let create_path = join(&self.dir, &self.prefix);
        let mut made_dir = false;
        loop {
            let created = client.start_create(&create_path, &self.data, self.link.acls(), mode::EPHEMERAL_SEQUENTIAL);
            let listed = if created.is_ok() { client.start_get_children(&self.dir).ok() } else { None };
            // Until the create's answer is in, a node may exist whose name nobody knows: should
            // this wait end early (an error, the deadline, the acquire dropped), it is looked
            // for by its unique prefix and deleted.
            let mut unnamed = Contender {
                link: self.link.clone(),
                target: Target::Prefix { dir: self.dir.clone(), prefix: self.prefix.clone() },
                session: client.session_id(),
                armed: created.is_ok(),
            };
            let attempt = timeout_at(deadline, async { client.finish_create(created?).await }).await;
            match attempt {
                Ok(Ok(path)) => {
                    unnamed.armed = false;
                    return Ok((path, listed));
                }
                Ok(Err(ZkError::Server(code::NO_NODE))) if !made_dir => {
                    unnamed.armed = false;
                    made_dir = true;
                    self.link.make_dirs(client, &self.dir, deadline).await?;
                }
                Ok(Err(e)) => {
                    // Only a lost connection leaves it unknown whether the node was made.
                    unnamed.armed &= e == ZkError::ConnectionLoss;
                    return Err(zk_error("acquire lock", e));
                }
                Err(_) => return Err(self.link.late("acquire lock", client)),
            }
        }
    }

    async fn contend(&self, wait: Wait, deadline: Option<Instant>) -> Result<bool> {
        let client = self.link.client(Instant::now() + self.link.budget()).await?;
        let (path, mut listed) = self.enter(&client, Instant::now() + self.link.budget()).await?;
        let node = path.rsplit('/').next().unwrap_or_default().to_owned();
        let contender = Contender { link: self.link.clone(), target: Target::Node(path.clone()), session: client.session_id(), armed: true };
        loop {
            // Each step may first wait for a dropped connection to come back (same session).
            let step_deadline = Instant::now() + self.link.budget();
            if client.wait_connected(step_deadline).await.is_err() {
                return Err(self.link.late("acquire lock", &client));
            }
            let look = async {
                match listed.take() {
                    Some(answer) => Client::finish_get_children(answer).await,
                    None => client.get_children(&self.dir).await,
                }
            };
            let children = match timeout_at(step_deadline, look).await {
                Err(_) => return Err(self.link.late("acquire lock", &client)),
                Ok(Err(ZkError::ConnectionLoss)) => continue,
                Ok(Err(e)) => return Err(zk_error("acquire lock", e)),
                Ok(Ok(c)) => c,
            };
            if !children.contains(&node) {
                return Err(Error::Connection(format!(
                    "the lock node {path} disappeared (was the ZooKeeper session lost?)"
                )));
            }
            let Some(ahead) = predecessor(&children, &node) else {
                let mut contender = contender;
                contender.armed = false;
                self.fate.acquired(fencing_token(&node));
                self.link.note_holding(&self.fate, client.session_id());
                *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(Held { path, session: client.session_id() });
                return Ok(true);
            };
            if wait == Wait::No || deadline.is_some_and(|d| Instant::now() >= d) {
                contender.withdraw(&client).await;
                return Ok(false);
            }
            let ahead = join(&self.dir, ahead);
            let watch = match timeout_at(step_deadline, client.exists_and_watch(&ahead)).await {
                Err(_) => return Err(self.link.late("acquire lock", &client)),
                Ok(Err(ZkError::ConnectionLoss)) => continue,
                Ok(Err(e)) => return Err(zk_error("acquire lock", e)),
                Ok(Ok((false, _))) => continue,
                Ok(Ok((true, watch))) => watch,
            };
            // Woken by the predecessor's change (the watch outlives dropped connections: the
            // client sets it again on the next one), the end of the session, or the deadline.
            match deadline {
                Some(d) => {
                    tokio::select! {
                        _ = watch => {}
                        _ = sleep_until(d) => {
                            contender.withdraw(&client).await;
                            return Ok(false);
                        }
                    }
                }
                None => {
                    let _ = watch.await;
                }
            }
        }
    }
}

#[async_trait]
impl DriverLock for ZkLock {
    fn name(&self) -> Id {
        self.name.clone()
    }

    fn acquired(&self) -> bool {
        self.is_held()
    }

    async fn acquire(&self, wait: Wait, shared: bool) -> Result<bool> {
        if shared {
            return Err(Error::NotImplemented("shared zookeeper locks are not supported".into()));
        }
        let deadline = wait.deadline();
        let _gate = match (wait, deadline) {
            (Wait::No, _) => match self.gate.try_lock() {
                Ok(g) => g,
                Err(_) => return Ok(false),
            },
            (_, Some(d)) => match timeout_at(d, self.gate.lock()).await {
                Ok(g) => g,
                Err(_) => return Ok(false),
            },
            (_, None) => self.gate.lock().await,
        };
        // Not re-entrant: a held lock is acquired again only after its release.
        if !self.wait_until_released(wait, deadline).await {
            return Ok(false);
        }
        self.contend(wait, deadline).await
    }

    async fn release(&self) -> Result<bool> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.released.notify_waiters();
        let Some(held) = held else { return Ok(false) };
        self.fate.released();
        let Some(client) = self.link.peek().filter(|c| c.session_id() == held.session) else {
            return Ok(false); // the session, and the node with it, is gone
        };
        let deadline = Instant::now() + self.link.budget();
        let outcome = match client.wait_connected(deadline).await {
            Err(e) => Err(e),
            Ok(()) => timeout_at(deadline, client.delete(&held.path)).await.unwrap_or(Err(ZkError::ConnectionLoss)),
        };
        match outcome {
            Ok(()) => Ok(true),
            Err(ZkError::Server(code::NO_NODE)) | Err(ZkError::SessionEnded(_)) => Ok(false),
            Err(e) => {
                clean_up_later(self.link.clone(), Target::Node(held.path), held.session);
                Err(zk_error("release lock", e))
            }
        }
    }

    async fn is_still_owner(&self) -> Result<bool> {
        let path = match self.held.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(h) => h.path.clone(),
            None => return Ok(false),
        };
        if !self.is_held() {
            return Ok(false);
        }
        let Some(client) = self.link.peek() else { return Ok(false) };
        let deadline = Instant::now() + self.link.budget();
        match timeout_at(deadline, client.get_data(&path)).await {
            Ok(Ok((data, _))) => Ok(data == self.data),
            Ok(Err(ZkError::Server(c))) if c != code::NO_NODE => Err(zk_error("check lock owner", ZkError::Server(c))),
            Ok(Err(ZkError::Server(_))) => {
                // Our node was deleted behind our back (an operator, a break).
                self.held.lock().unwrap_or_else(|p| p.into_inner()).take();
                self.released.notify_waiters();
                self.fate.lost("its node was deleted");
                Ok(false)
            }
            // Cannot tell (connection trouble): not provably ours.
            _ => Ok(false),
        }
    }

    fn fencing_token(&self) -> Option<u64> {
        self.fate.token()
    }

    fn on_lost(&self, callback: OnLost) {
        self.fate.on_lost(callback);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn contender_names_as_kazoo_matches_them() {
        assert_eq!(contender_sequence("abc__lock__0000000042"), Some("0000000042"));
        assert_eq!(contender_sequence("abc__lock__-000000042"), None, "nine digits after the sign");
        assert_eq!(contender_sequence("abc__lock__-2147483648"), Some("-2147483648"));
        assert_eq!(contender_sequence("__lock__0000000001"), Some("0000000001"));
        assert_eq!(contender_sequence("abc__lock__00000000042"), None, "eleven digits");
        assert_eq!(contender_sequence("abc__lock__000000042"), None);
        assert_eq!(contender_sequence("abc__rlock__0000000001"), None);
        assert_eq!(contender_sequence("leader"), None);
        assert_eq!(contender_sequence(""), None);
        assert_eq!(contender_sequence("é__lock__0000000001"), Some("0000000001"));
        assert_eq!(contender_sequence("éééééééééé"), None);
    }

    #[test]
    fn lowest_sequence_leads_and_waiters_watch_their_predecessor() {
        let children = names(&["b__lock__0000000003", "junk", "a__lock__0000000007", "c__lock__0000000001"]);
        assert_eq!(contenders(&children), vec!["c__lock__0000000001", "b__lock__0000000003", "a__lock__0000000007"]);
        assert_eq!(predecessor(&children, "c__lock__0000000001"), None);
        assert_eq!(predecessor(&children, "a__lock__0000000007"), Some("b__lock__0000000003"));
        assert_eq!(predecessor(&children, "b__lock__0000000003"), Some("c__lock__0000000001"));
        assert_eq!(predecessor(&children, "junk"), None);
    }
}
