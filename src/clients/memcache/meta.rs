//! memcached's meta commands (stable since 1.6.10; `doc/protocol.txt`, "Meta Commands"), for
//! what the classic text protocol cannot do in one round trip: an `add` that returns the
//! item's CAS unique (`ms <key> <len> ME c`), a delete only if the CAS still matches
//! (`md <key> C<cas>`), a rewrite only if it matches (`ms ... C<cas>`), a look at an item's
//! CAS without its value (`mg <key> c`). Requests are built here and sent with
//! [`Client::pipeline`], several in one write.
//!
//! Whether a server takes them is asked once per client (`version`; see [`Support`]): an
//! older server would read a meta request's data block as a command of its own.

use std::sync::atomic::{AtomicU8, Ordering};

use super::{Client, Reply};
use crate::error::Result;

/// The first version whose meta syntax and status codes are the ones used here (1.6.10
/// renamed `OK` to `HD` and fixed `ms`'s syntax, and declared the protocol stable).
const FIRST_VERSION: (u64, u64, u64) = (1, 6, 10);

/// The status code of a meta reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// Success (stored, deleted, found without a value).
    Hd,
    /// Not stored (an add whose key exists).
    Ns,
    /// The CAS given does not match the item's.
    Ex,
    /// Not found (a delete or compare on a missing key).
    Nf,
    /// A miss of `mg`.
    En,
    /// The reply to `mn`.
    Mn,
}

/// A meta status line: the code and the CAS unique when the reply carries one (`c`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub cas: Option<u64>,
}

/// Parses a meta status line (`HD c42`, `NS`, `EN`, ...); `None` when it is not one. Flags
/// other than `c` are skipped (servers may add some).
pub fn parse_status(line: &[u8]) -> Option<Status> {
    let mut tokens = line.split(|b| *b == b' ');
    let code = match tokens.next()? {
        b"HD" => Code::Hd,
        b"NS" => Code::Ns,
        b"EX" => Code::Ex,
        b"NF" => Code::Nf,
        b"EN" => Code::En,
        b"MN" => Code::Mn,
        _ => return None,
    };
    let mut cas = None;
    for token in tokens {
        if token.is_empty() || !token.iter().all(u8::is_ascii_graphic) {
            return None;
        }
        if let Some(digits) = token.strip_prefix(b"c") {
            cas = Some(std::str::from_utf8(digits).ok()?.parse::<u64>().ok()?);
        }
    }
    Some(Status { code, cas })
}

fn storage(key: &[u8], data: &[u8], flags: &str) -> Vec<u8> {
    let mut req = Vec::with_capacity(key.len() + data.len() + 48);
    req.extend_from_slice(b"ms ");
    req.extend_from_slice(key);
    req.extend_from_slice(format!(" {} {flags}\r\n", data.len()).as_bytes());
    req.extend_from_slice(data);
    req.extend_from_slice(b"\r\n");
    req
}

/// Stores `data` only if `key` is absent (add mode), with client `flags` and `ttl` seconds;
/// the reply carries the new item's CAS unique (`HD c<cas>`, or `NS`).
pub fn add(key: &[u8], flags: u32, ttl: u32, data: &[u8]) -> Vec<u8> {
    storage(key, data, &format!("T{ttl} F{flags} ME c"))
}

/// Deletes `key` only if its CAS unique is still `cas` (`HD`, `EX`, `NF`).
pub fn delete_if(key: &[u8], cas: u64) -> Vec<u8> {
    [b"md ", key, format!(" C{cas}\r\n").as_bytes()].concat()
}

/// Gives `key` a fresh TTL and says its CAS unique, which a touch leaves as it was:
/// `HD c<cas>` when it exists, `EN` when not.
pub fn touch(key: &[u8], ttl: u32) -> Vec<u8> {
    [b"mg ", key, format!(" T{ttl} c\r\n").as_bytes()].concat()
}

/// Looks at `key` without its value: `HD c<cas>` when it exists, `EN` when not.
pub fn look(key: &[u8]) -> Vec<u8> {
    [b"mg ", key, b" c\r\n"].concat()
}

/// Whether a `version` string names a server with the meta commands used here.
pub fn version_has_meta(version: &str) -> bool {
    let mut parts = version.trim().split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u64>().ok()
    });
    match (parts.next().flatten(), parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor), Some(patch)) => (major, minor, patch) >= FIRST_VERSION,
        _ => false,
    }
}

const UNKNOWN: u8 = 0;
const YES: u8 = 1;
const NO: u8 = 2;

/// Whether the server takes meta commands: unknown until asked, then remembered until the
/// client is closed (a coordinator's `start` may find a different server behind the address).
#[derive(Default)]
pub struct Support(AtomicU8);

impl Support {
    pub(super) fn forget(&self) {
        self.0.store(UNKNOWN, Ordering::Relaxed);
    }
}

impl Client {
    /// Whether the meta commands can be used with this server (asks `version` the first time).
    pub async fn speaks_meta(&self) -> Result<bool> {
        match self.meta.0.load(Ordering::Relaxed) {
            YES => return Ok(true),
            NO => return Ok(false),
            _ => {}
        }
        let yes = matches!(self.request("version", b"version\r\n").await?, Reply::Version(v) if version_has_meta(&v));
        self.meta.0.store(if yes { YES } else { NO }, Ordering::Relaxed);
        Ok(yes)
    }

    /// Stops using meta commands with this server until the client is closed (the caller
    /// found it cannot rely on them: CAS uniques switched off with `-C` are all 0).
    pub fn stop_meta(&self) {
        self.meta.0.store(NO, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::memcache::parse_reply;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HD c42"), Some(Status { code: Code::Hd, cas: Some(42) }));
        assert_eq!(parse_status(b"NS c0"), Some(Status { code: Code::Ns, cas: Some(0) }));
        assert_eq!(parse_status(b"HD"), Some(Status { code: Code::Hd, cas: None }));
        assert_eq!(parse_status(b"EN"), Some(Status { code: Code::En, cas: None }));
        assert_eq!(parse_status(b"HD t31 c7 f1"), Some(Status { code: Code::Hd, cas: Some(7) }));
        for bad in [&b""[..], b"HDc1", b"HD c", b"HD cx", b"HD c99999999999999999999999", b"HD  c1", b"XX", b"HD \x00"] {
            assert_eq!(parse_status(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn meta_replies_among_the_others() {
        assert_eq!(parse_reply(b"HD c9\r\n"), Ok(Some((Reply::Meta(Status { code: Code::Hd, cas: Some(9) }), 7))));
        assert_eq!(parse_reply(b"EX\r\nEN\r\n"), Ok(Some((Reply::Meta(Status { code: Code::Ex, cas: None }), 4))));
        assert_eq!(parse_reply(b"VERSION 1.6.18\r\n"), Ok(Some((Reply::Version("1.6.18".into()), 16))));
        assert!(parse_reply(b"HD c\r\n").is_err());
        assert_eq!(parse_reply(b"HD c9"), Ok(None));
    }

    #[test]
    fn requests() {
        assert_eq!(add(b"k", 1, 31, b"me"), b"ms k 2 T31 F1 ME c\r\nme\r\n");
        assert_eq!(touch(b"k", 5), b"mg k T5 c\r\n");
        assert_eq!(delete_if(b"k", 77), b"md k C77\r\n");
        assert_eq!(look(b"k"), b"mg k c\r\n");
    }

    #[test]
    fn versions() {
        for yes in ["1.6.10", "1.6.18", "1.6.38", "1.7.0", "2.0.0", "1.6.21-debian"] {
            assert!(version_has_meta(yes), "{yes}");
        }
        for no in ["1.6.9", "1.5.22", "1.4.25", "", "mcrouter", "1.6", "x.y.z"] {
            assert!(!version_has_meta(no), "{no}");
        }
    }
}
