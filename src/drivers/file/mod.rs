//! `file:///dir`: locks, groups and members in a directory, laid out exactly as upstream
//! tooz lays them out so both can share one directory:
//!
//! * `<dir>/<lock name>`: lock files, whole-file POSIX record locks, never deleted;
//! * `<dir>/.driver_lock`: serialises membership changes between processes;
//! * `<dir>/groups/<sha1(group)>/.metadata`: msgpack `{group_id, encoded}`;
//! * `<dir>/groups/<sha1(group)>/<sha1(member)>.raw`: msgpack
//!   `{capabilities, joined_on, member_id, encoded}`; its mtime is the member's heartbeat;
//! * `<dir>/tmp`: records are written here first and renamed into place.
//!
//! Beyond upstream (whose file driver has no election): the leader of a group holds the lock
//! file `<dir>/.leaders/<sha1(group)>`, whose contents name it (msgpack
//! `{member_id, encoded}`). Upstream processes never look there, nor in
//! `<dir>/.fences/<sha1(lock name)>`, where a lock's fencing counter is kept (`fence.rs`).

pub mod fence;
pub mod lock;

use crate::lock::fate::Fate;
use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use sha1::{Digest, Sha1};

use lock::PathLock;
use super::options::Options;
use crate::driver::{Driver, DriverLock, MemberInfo, Op, Wait};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::msgpack::{self, NaiveTime, Value};

pub struct FileDriver {
    member: Id,
    root: PathBuf,
    groups: PathBuf,
    tmp: PathBuf,
    timeout: f64,
    driver_lock: PathLock,
    joined: Mutex<HashSet<Id>>,
    /// Groups this coordinator leads, and the lock that makes it so.
    leading: Mutex<std::collections::HashMap<Id, PathLock>>,
}

/// The directory of the locks' fencing counters.
const FENCES: &str = ".fences";

fn hashed(id: &[u8]) -> String {
    Sha1::digest(id).iter().map(|b| format!("{b:02x}")).collect()
}

/// `os.path.abspath`: joined to the working directory if relative, `.`/`..` folded lexically.
pub fn abspath(p: &Path) -> PathBuf {
    let joined = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(p) };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(s) => out.push(s),
            _ => {}
        }
    }
    out
}

fn io_err(what: &str, path: &Path, e: io::Error) -> Error {
    Error::Tooz(format!("{what} {}: {e}", path.display()))
}

fn is_missing(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

fn record_field<'a>(record: &'a Value, key: &str, path: &Path) -> Result<&'a Value> {
    record.get(key).ok_or_else(|| Error::Tooz(format!("record {} has no '{key}'", path.display())))
}

/// The id stored in a `.metadata` / `.raw` record, in the type it was given: bytes marked
/// `encoded` were given as text; pre-1.36 records stored text ids as msgpack str.
fn stored_id(record: &Value, key: &str, path: &Path) -> Result<Id> {
    let encoded = matches!(record.get("encoded"), Some(Value::Bool(true)));
    match record_field(record, key, path)? {
        Value::Str(s) => Ok(Id::Text(s.clone())),
        Value::Bin(b) => Ok(Id::from_stored(b.clone(), encoded)),
        _ => Err(Error::Tooz(format!("record {} has a malformed '{key}'", path.display()))),
    }
}

fn mtime_secs(meta: &fs::Metadata) -> f64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl FileDriver {
    pub fn new(member: Id, path: &str, options: &Options) -> Result<FileDriver> {
        if path.is_empty() {
            return Err(Error::InvalidArgument("file:// URLs need a directory path, e.g. file:///var/lib/tooz".into()));
        }
        let timeout = options.float("timeout", 10.0)?;
        let root = PathBuf::from(path);
        Ok(FileDriver {
            member,
            groups: root.join("groups"),
            tmp: root.join("tmp"),
            driver_lock: PathLock::new(&root.join(".driver_lock")),
            root,
            timeout,
            joined: Mutex::new(HashSet::new()),
            leading: Mutex::new(std::collections::HashMap::new()),
        })
    }

    fn leader_path(&self, group: &Id) -> PathBuf {
        self.root.join(".leaders").join(hashed(group.as_bytes()))
    }

    fn group_dir(&self, group: &Id) -> PathBuf {
        self.groups.join(hashed(group.as_bytes()))
    }

    fn member_path(&self, group: &Id, member: &Id) -> PathBuf {
        self.group_dir(group).join(format!("{}.raw", hashed(member.as_bytes())))
    }

    fn group_exists(&self, group: &Id) -> bool {
        self.group_dir(group).join(".metadata").is_file()
    }

    fn require_group(&self, group: &Id) -> Result<()> {
        if self.group_exists(group) {
            Ok(())
        } else {
            Err(Error::GroupNotCreated(group.clone()))
        }
    }

    /// Writes `data` to `tmp/` and renames it over `dest`, so readers never see half a record.
    fn write_atomically(&self, dest: &Path, data: &[u8]) -> Result<()> {
        let mut attempt = 0u32;
        loop {
            let name = format!("tmp{}{}tooz", std::process::id(), uuid::Uuid::new_v4().simple());
            let tmp = self.tmp.join(name);
            let file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp);
            let mut file = match file {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 8 => {
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(io_err("cannot write", &tmp, e)),
            };
            let written = file.write_all(data).and_then(|_| fs::rename(&tmp, dest));
            if let Err(e) = written {
                fs::remove_file(&tmp).ok();
                return Err(io_err("cannot write", dest, e));
            }
            return Ok(());
        }
    }

    fn read_record(path: &Path) -> Result<Value> {
        let raw = fs::read(path).map_err(|e| io_err("cannot read", path, e))?;
        let record = msgpack::decode(&raw).map_err(|e| Error::Tooz(format!("corrupt record {}: {e}", path.display())))?;
        match record {
            Value::Map(_) => Ok(record),
            _ => Err(Error::Tooz(format!("corrupt record {}: not a map", path.display()))),
        }
    }

    fn member_record(&self, caps: Value, joined_on: Value) -> Value {
        Value::map_of(vec![
            ("capabilities", caps),
            ("joined_on", joined_on),
            ("member_id", Value::Bin(self.member.as_bytes().to_vec())),
            ("encoded", Value::Bool(self.member.is_text())),
        ])
    }

    /// Live members: `*.raw` files whose mtime is within `timeout` seconds of now.
    fn live_members(&self, group: &Id) -> Result<Vec<(Id, PathBuf)>> {
        let dir = self.group_dir(group);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if is_missing(&e) => return Err(Error::GroupNotCreated(group.clone())),
            Err(e) => return Err(io_err("cannot list", &dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err("cannot list", &dir, e))?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("raw") {
                continue;
            }
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if is_missing(&e) => continue,
                Err(e) => return Err(io_err("cannot stat", &path, e)),
            };
            // The clock is read after the stat: a heartbeat that touches the file while a long
            // listing runs must not date it in the future of a `now` taken at the start.
            let age = now_secs() - mtime_secs(&meta);
            if !(0.0..=self.timeout).contains(&age) {
                continue;
            }
            let record = match Self::read_record(&path) {
                Err(Error::Tooz(_)) if !path.exists() => continue,
                r => r?,
            };
            record_field(&record, "joined_on", &path)?;
            out.push((stored_id(&record, "member_id", &path)?, path));
        }
        Ok(out)
    }

    fn capabilities_of(path: &Path) -> Result<Value> {
        let record = Self::read_record(path)?;
        Ok(record.get("capabilities").cloned().unwrap_or(Value::Nil))
    }
}

#[async_trait]
impl Driver for FileDriver {
    fn supports(&self, _op: Op) -> bool {
        true
    }

    fn requires_beating(&self) -> bool {
        true
    }

    async fn start(&self) -> Result<()> {
        for dir in [&self.root, &self.groups, &self.tmp] {
            fs::create_dir_all(dir)
                .map_err(|e| Error::Connection(format!("error opening file {}: {e}", dir.display())))?;
        }
        self.joined.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(())
    }

    async fn stop(&self) -> Result<()> {
        self.leading.lock().unwrap_or_else(|p| p.into_inner()).clear();
        // Memberships whose join result nobody fetched are still ours to give up.
        let joined: Vec<Id> = self.joined.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        for group in joined {
            let path = self.member_path(&group, &self.member);
            self.driver_lock.with(|| Ok(fs::remove_file(&path).ok())).await?;
        }
        Ok(())
    }

    async fn heartbeat(&self) -> Result<Option<f64>> {
        let joined: Vec<Id> = self.joined.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
        self.driver_lock
            .with(|| {
                for group in &joined {
                    let path = self.member_path(group, &self.member);
                    let now = fs::FileTimes::new().set_modified(SystemTime::now()).set_accessed(SystemTime::now());
                    match fs::File::options().write(true).open(&path).and_then(|f| f.set_times(now)) {
                        Ok(()) => {}
                        Err(e) if is_missing(&e) => {}
                        Err(e) => return Err(io_err("cannot refresh", &path, e)),
                    }
                }
                Ok(())
            })
            .await?;
        Ok(Some(self.timeout))
    }

    async fn create_group(&self, group: &Id) -> Result<()> {
        let dir = self.group_dir(group);
        fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        let meta = dir.join(".metadata");
        let existed = meta.is_file();
        let record = Value::map_of(vec![
            ("group_id", Value::Bin(group.as_bytes().to_vec())),
            ("encoded", Value::Bool(group.is_text())),
        ]);
        self.write_atomically(&meta, &msgpack::encode(&record))?;
        if existed {
            return Err(Error::GroupAlreadyExist(group.clone()));
        }
        Ok(())
    }

    async fn delete_group(&self, group: &Id) -> Result<()> {
        let dir = self.group_dir(group);
        self.driver_lock
            .with(|| {
                let entries: Vec<String> = match fs::read_dir(&dir) {
                    Ok(e) => e.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
                    Err(e) if is_missing(&e) => return Err(Error::GroupNotCreated(group.clone())),
                    Err(e) => return Err(io_err("cannot list", &dir, e)),
                };
                match entries.as_slice() {
                    [] => {}
                    [only] if only == ".metadata" => {}
                    [_] => return Err(Error::Tooz(format!("group directory {} holds an unknown entry", dir.display()))),
                    _ => return Err(Error::GroupNotEmpty(group.clone())),
                }
                fs::remove_dir_all(&dir).map_err(|e| io_err("cannot remove", &dir, e))
            })
            .await
    }

    async fn get_groups(&self) -> Result<Vec<Id>> {
        let entries = match fs::read_dir(&self.groups) {
            Ok(e) => e,
            Err(e) if is_missing(&e) => return Ok(Vec::new()),
            Err(e) => return Err(io_err("cannot list", &self.groups, e)),
        };
        let mut out = Vec::new();
        for entry in entries.filter_map(|e| e.ok()) {
            let meta = entry.path().join(".metadata");
            // Unreadable or half-made groups are skipped, as upstream does.
            if let Ok(record) = Self::read_record(&meta) {
                if let Ok(id) = stored_id(&record, "group_id", &meta) {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    async fn join_group(&self, group: &Id, capabilities: &Value) -> Result<()> {
        let path = self.member_path(group, &self.member);
        self.driver_lock
            .with(|| {
                self.require_group(group)?;
                if path.exists() {
                    return Err(Error::MemberAlreadyExist { group: group.clone(), member: self.member.clone() });
                }
                let record = self.member_record(capabilities.clone(), NaiveTime::now_local().to_ext());
                self.write_atomically(&path, &msgpack::encode(&record))
            })
            .await?;
        self.joined.lock().unwrap_or_else(|p| p.into_inner()).insert(group.clone());
        Ok(())
    }

    async fn leave_group(&self, group: &Id) -> Result<()> {
        let path = self.member_path(group, &self.member);
        self.driver_lock
            .with(|| match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if is_missing(&e) && !self.group_exists(group) => Err(Error::GroupNotCreated(group.clone())),
                Err(e) if is_missing(&e) => {
                    Err(Error::MemberNotJoined { group: group.clone(), member: self.member.clone() })
                }
                Err(e) => Err(io_err("cannot remove", &path, e)),
            })
            .await?;
        self.joined.lock().unwrap_or_else(|p| p.into_inner()).remove(group);
        Ok(())
    }

    async fn get_members(&self, group: &Id) -> Result<Vec<Id>> {
        let members = self.driver_lock.with(|| self.live_members(group)).await?;
        Ok(members.into_iter().map(|(id, _)| id).collect())
    }

    async fn get_members_with_capabilities(&self, group: &Id) -> Result<Vec<(Id, Value)>> {
        self.driver_lock
            .with(|| {
                self.live_members(group)?
                    .into_iter()
                    .map(|(id, path)| Ok((id, Self::capabilities_of(&path)?)))
                    .collect()
            })
            .await
    }

    async fn get_member_capabilities(&self, group: &Id, member: &Id) -> Result<Value> {
        let path = self.member_path(group, member);
        self.driver_lock
            .with(|| {
                if !self.group_dir(group).is_dir() {
                    return Err(Error::GroupNotCreated(group.clone()));
                }
                if !path.is_file() {
                    return Err(Error::MemberNotJoined { group: group.clone(), member: member.clone() });
                }
                Self::capabilities_of(&path)
            })
            .await
    }

    async fn update_capabilities(&self, group: &Id, capabilities: &Value) -> Result<()> {
        let path = self.member_path(group, &self.member);
        self.driver_lock
            .with(|| {
                self.require_group(group)?;
                if !path.is_file() {
                    return Err(Error::MemberNotJoined { group: group.clone(), member: self.member.clone() });
                }
                let old = Self::read_record(&path)?;
                let joined_on = record_field(&old, "joined_on", &path)?.clone();
                let record = self.member_record(capabilities.clone(), joined_on);
                self.write_atomically(&path, &msgpack::encode(&record))
            })
            .await
    }

    async fn get_member_info(&self, group: &Id, member: &Id) -> Result<MemberInfo> {
        let path = self.member_path(group, member);
        self.driver_lock
            .with(|| {
                self.require_group(group)?;
                let meta = match fs::metadata(&path) {
                    Ok(m) => m,
                    Err(e) if is_missing(&e) => {
                        return Err(Error::MemberNotJoined { group: group.clone(), member: member.clone() })
                    }
                    Err(e) => return Err(io_err("cannot stat", &path, e)),
                };
                let record = Self::read_record(&path)?;
                let joined = NaiveTime::from_ext(record_field(&record, "joined_on", &path)?)
                    .ok_or_else(|| Error::Tooz(format!("record {} has a malformed 'joined_on'", path.display())))?;
                Ok(MemberInfo {
                    capabilities: record.get("capabilities").cloned().unwrap_or(Value::Nil),
                    created_at: joined.to_epoch_local(),
                    updated_at: mtime_secs(&meta),
                })
            })
            .await
    }

    async fn elect(&self, group: &Id) -> Result<bool> {
        if self.leading.lock().unwrap_or_else(|p| p.into_inner()).contains_key(group) {
            return Ok(false); // already the leader: no second election event
        }
        let lock = PathLock::new(&self.leader_path(group));
        if !lock.acquire(false, Wait::No).await? {
            return Ok(false);
        }
        let record = Value::map_of(vec![
            ("member_id", Value::Bin(self.member.as_bytes().to_vec())),
            ("encoded", Value::Bool(self.member.is_text())),
        ]);
        lock.barrier().write_contents(&msgpack::encode(&record))?;
        self.leading.lock().unwrap_or_else(|p| p.into_inner()).insert(group.clone(), lock);
        Ok(true)
    }

    async fn get_leader(&self, group: &Id) -> Result<Option<Id>> {
        let path = self.leader_path(group);
        let held = lock::barrier(&path).held_in_process()
            || lock::held_elsewhere(&path).map_err(|e| io_err("cannot inspect", &path, e))?;
        if !held {
            return Ok(None);
        }
        let record = Self::read_record(&path)?;
        stored_id(&record, "member_id", &path).map(Some)
    }

    async fn stand_down_group_leader(&self, group: &Id) -> Result<bool> {
        // Dropping the lock object gives the lock back.
        Ok(self.leading.lock().unwrap_or_else(|p| p.into_inner()).remove(group).is_some())
    }

    fn lock(&self, name: &[u8]) -> Result<Arc<dyn DriverLock>> {
        let name = std::str::from_utf8(name)
            .map_err(|_| Error::InvalidArgument("file lock names must be valid UTF-8".into()))?;
        if name.is_empty() {
            return Err(Error::InvalidArgument("Locks must be provided a name".into()));
        }
        if name.contains('\0') {
            return Err(Error::InvalidArgument("lock names cannot contain NUL bytes".into()));
        }
        let root = abspath(&self.root);
        let path = abspath(&self.root.join(name));
        if !path.starts_with(&root) {
            return Err(Error::InvalidArgument(format!("Path {} is not under {}", path.display(), root.display())));
        }
        let reserved = [root.clone(), root.join("groups"), root.join("tmp"), root.join(".driver_lock")];
        if reserved.contains(&path) || path.starts_with(root.join(".leaders")) || path.starts_with(root.join(FENCES)) {
            return Err(Error::InvalidArgument(format!(
                "Unable to create a lock using reserved path '{}' for lock with name {name}",
                path.display()
            )));
        }
        let fate = Fate::new("tooz.drivers.file", path.display().to_string());
        // The side file of its fencing counter, named for the path under the root (two
        // spellings of one lock name share it).
        let relative = path.strip_prefix(&root).unwrap_or(&path);
        let fence = root.join(FENCES).join(hashed(relative.as_os_str().as_encoded_bytes()));
        Ok(Arc::new(FileLock { lock: PathLock::fenced(&path, &fence), fate }))
    }
}

impl NaiveTime {
    /// Seconds since the epoch of this local wall-clock time.
    pub fn to_epoch_local(&self) -> f64 {
        use chrono::{Local, NaiveDate, TimeZone};
        NaiveDate::from_ymd_opt(self.year as i32, self.month as u32, self.day as u32)
            .and_then(|d| d.and_hms_micro_opt(self.hour as u32, self.minute as u32, self.second as u32, self.microsecond as u32))
            .and_then(|t| Local.from_local_datetime(&t).earliest())
            .map(|t| t.timestamp_micros() as f64 / 1e6)
            .unwrap_or(0.0)
    }
}

pub struct FileLock {
    lock: PathLock,
    /// Fencing tokens only: a record lock cannot be lost behind its holder's back.
    fate: Fate,
}

impl FileLock {
    /// After an attempt: a won exclusive hold takes the next fencing token.
    fn won(&self, got: bool, shared: bool) -> Result<bool> {
        if got {
            self.fate.acquired(if shared { None } else { Some(self.lock.barrier().next_token()?) });
        }
        Ok(got)
    }
}

#[async_trait]
impl DriverLock for FileLock {
    fn name(&self) -> Id {
        Id::Text(self.lock.path().to_string_lossy().into_owned())
    }

    fn acquired(&self) -> bool {
        self.lock.is_held()
    }

    async fn acquire(&self, wait: Wait, shared: bool) -> Result<bool> {
        let got = self.lock.acquire(shared, wait).await?;
        self.won(got, shared)
    }

    fn try_acquire_here(&self, shared: bool) -> Option<Result<bool>> {
        Some(self.lock.try_acquire_here(shared).and_then(|got| self.won(got, shared)))
    }

    fn stepping_aside(&self) -> bool {
        self.lock.stepping_aside()
    }

    fn release_here(&self) -> Option<Result<bool>> {
        Some(Ok(self.lock.release()))
    }

    fn fencing_token(&self) -> Option<u64> {
        self.fate.token()
    }

    async fn release(&self) -> Result<bool> {
        Ok(self.lock.release())
    }

    async fn is_still_owner(&self) -> Result<bool> {
        Ok(self.lock.is_held())
    }
}
