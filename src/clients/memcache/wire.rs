//! memcached's text protocol as bytes: requests built ([`storage_request`] and friends), keys
//! checked, and replies parsed by [`parse_reply`], a pure function over the bytes received so
//! far, unit-tested without a server and unable to panic on whatever arrives.

use super::meta;
use crate::error::{Error, Result};

/// Longest key memcached accepts.
pub const MAX_KEY_LEN: usize = 250;
/// Largest value block this client agrees to read (memcached's own ceiling is 1 GiB).
const MAX_VALUE_LEN: usize = 1 << 30;
/// Longest reply line (a `VALUE` header or a status) before the reply counts as garbage.
const MAX_LINE_LEN: usize = 8 << 10;
/// Keys per `get`/`gets` request line (memcached reads long retrieval lines, but keep it sane).
pub(super) const MAX_KEYS_PER_GET: usize = 64;

/// A stored item as the server returned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub key: Vec<u8>,
    pub flags: u32,
    pub data: Vec<u8>,
    /// The CAS unique, for `gets`.
    pub cas: Option<u64>,
}

/// One reply of the text protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `VALUE ...` blocks up to `END` (no blocks: none of the keys exist).
    Values(Vec<Item>),
    Stored,
    NotStored,
    Exists,
    NotFound,
    Deleted,
    Touched,
    /// The new value of an `incr`.
    Number(u64),
    /// The status line of a meta command (`meta::parse_status`).
    Meta(meta::Status),
    /// The server's version string, for `version`.
    Version(String),
}

/// The server refused the request (`ERROR`, `CLIENT_ERROR ...`, `SERVER_ERROR ...`), or sent
/// something that is not the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyError {
    Server(String),
    Garbage(String),
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?.windows(2).position(|w| w == b"\r\n").map(|p| p + from)
}

fn garbage(what: &str, line: &[u8]) -> ReplyError {
    let shown: Vec<u8> = line.iter().copied().take(80).collect();
    ReplyError::Garbage(format!("{what}: {:?}", String::from_utf8_lossy(&shown)))
}

fn parse_num<T: std::str::FromStr>(token: Option<&[u8]>, line: &[u8]) -> std::result::Result<T, ReplyError> {
    token
        .and_then(|t| std::str::from_utf8(t).ok())
        .and_then(|t| t.parse::<T>().ok())
        .ok_or_else(|| garbage("malformed VALUE line", line))
}

/// Parses one complete reply at the start of `buf`.
///
/// `Ok(None)`: more bytes are needed. `Ok(Some((reply, n)))`: the reply took the first `n`
/// bytes. `Err`: an error reply or bytes that are not the protocol; either way the connection
/// must not be used again.
pub fn parse_reply(buf: &[u8]) -> std::result::Result<Option<(Reply, usize)>, ReplyError> {
    let mut items = Vec::new();
    let mut pos = 0;
    loop {
        let Some(end) = find_crlf(buf, pos) else {
            if buf.len() - pos > MAX_LINE_LEN {
                return Err(garbage("reply line too long", &buf[pos..]));
            }
            return Ok(None);
        };
        let line = &buf[pos..end];
        let next = end + 2;
        if let Some(rest) = line.strip_prefix(b"VALUE ") {
            let mut tokens = rest.split(|b| *b == b' ').filter(|t| !t.is_empty());
            let key = tokens.next().ok_or_else(|| garbage("malformed VALUE line", line))?.to_vec();
            let flags: u32 = parse_num(tokens.next(), line)?;
            let len: usize = parse_num(tokens.next(), line)?;
            let cas = match tokens.next() {
                Some(t) => Some(parse_num::<u64>(Some(t), line)?),
                None => None,
            };
            if tokens.next().is_some() {
                return Err(garbage("malformed VALUE line", line));
            }
            if len > MAX_VALUE_LEN {
                return Err(garbage("value too large", line));
            }
            let data_end = next.checked_add(len).ok_or_else(|| garbage("value too large", line))?;
            if buf.len() < data_end + 2 {
                return Ok(None);
            }
            if &buf[data_end..data_end + 2] != b"\r\n" {
                return Err(garbage("value block not terminated", line));
            }
            items.push(Item { key, flags, data: buf[next..data_end].to_vec(), cas });
            pos = data_end + 2;
            continue;
        }
        if !items.is_empty() && line != b"END" {
            return Err(garbage("unexpected line among values", line));
        }
        let reply = match line {
            b"END" => Reply::Values(std::mem::take(&mut items)),
            b"STORED" => Reply::Stored,
            b"NOT_STORED" => Reply::NotStored,
            b"EXISTS" => Reply::Exists,
            b"NOT_FOUND" => Reply::NotFound,
            b"DELETED" => Reply::Deleted,
            b"TOUCHED" => Reply::Touched,
            _ if !line.is_empty() && line.len() <= 20 && line.iter().all(u8::is_ascii_digit) => {
                Reply::Number(parse_num(Some(line), line)?)
            }
            _ if line.starts_with(b"VERSION ") => Reply::Version(String::from_utf8_lossy(&line[8..]).into_owned()),
            b"ERROR" => return Err(ReplyError::Server("memcached: ERROR (unknown command)".into())),
            _ if line.starts_with(b"CLIENT_ERROR") || line.starts_with(b"SERVER_ERROR") => {
                return Err(ReplyError::Server(format!("memcached: {}", String::from_utf8_lossy(line))));
            }
            _ => match meta::parse_status(line) {
                Some(status) => Reply::Meta(status),
                None => return Err(garbage("unexpected reply", line)),
            },
        };
        return Ok(Some((reply, next)));
    }
}

/// Whether `buf` holds `n` whole replies (or something that is not one: the reader reports it).
pub(super) fn replies_in(buf: &[u8], n: usize) -> bool {
    let mut at = 0;
    for _ in 0..n {
        match parse_reply(&buf[at..]) {
            Ok(Some((_, used))) => at += used,
            Ok(None) => return false,
            Err(_) => return true,
        }
    }
    true
}

/// A key memcached (and pymemcache, which upstream uses) accepts: 1 to 250 bytes, no
/// whitespace, no control characters.
pub fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("memcached keys cannot be empty".into()));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidArgument(format!(
            "Key is too long ({} bytes, memcached allows {MAX_KEY_LEN}): {:?}",
            key.len(),
            String::from_utf8_lossy(&key[..40])
        )));
    }
    if key.iter().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || *b == 0x0b) {
        return Err(Error::InvalidArgument(format!(
            "Key contains whitespace or control characters: {:?}",
            String::from_utf8_lossy(key)
        )));
    }
    Ok(())
}

/// The expiry field of a storage/touch command: whole seconds, never 0 (0 means "never
/// expires" to memcached) and never past 30 days (larger values are read as a unix time).
pub fn expiry(seconds: f64) -> u32 {
    const MAX_RELATIVE: f64 = 60.0 * 60.0 * 24.0 * 30.0;
    if !seconds.is_finite() {
        return MAX_RELATIVE as u32;
    }
    seconds.ceil().clamp(1.0, MAX_RELATIVE) as u32
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Set,
    Add,
}

/// Encodes a storage request (`set`/`add`, or `cas` when `cas` is given).
pub fn storage_request(kind: Store, key: &[u8], flags: u32, exptime: u32, data: &[u8], cas: Option<u64>) -> Vec<u8> {
    storage_request_with(kind, key, flags, exptime, data, cas, false)
}

/// [`storage_request`] with `noreply`: the server answers nothing.
pub fn quiet_storage_request(kind: Store, key: &[u8], flags: u32, exptime: u32, data: &[u8]) -> Vec<u8> {
    storage_request_with(kind, key, flags, exptime, data, None, true)
}

fn storage_request_with(kind: Store, key: &[u8], flags: u32, exptime: u32, data: &[u8], cas: Option<u64>, quiet: bool) -> Vec<u8> {
    let verb: &[u8] = match (cas, kind) {
        (Some(_), _) => b"cas",
        (None, Store::Set) => b"set",
        (None, Store::Add) => b"add",
    };
    let mut req = Vec::with_capacity(key.len() + data.len() + 64);
    req.extend_from_slice(verb);
    req.push(b' ');
    req.extend_from_slice(key);
    req.extend_from_slice(format!(" {flags} {exptime} {}", data.len()).as_bytes());
    if let Some(cas) = cas {
        req.extend_from_slice(format!(" {cas}").as_bytes());
    }
    if quiet {
        req.extend_from_slice(b" noreply");
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(data);
    req.extend_from_slice(b"\r\n");
    req
}

/// Encodes a `delete` request.
pub fn delete_request(key: &[u8]) -> Vec<u8> {
    [b"delete ", key, b"\r\n"].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(buf: &[u8]) -> Reply {
        let (reply, used) = parse_reply(buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
        reply
    }

    #[test]
    fn status_replies() {
        assert_eq!(parse_all(b"STORED\r\n"), Reply::Stored);
        assert_eq!(parse_all(b"NOT_STORED\r\n"), Reply::NotStored);
        assert_eq!(parse_all(b"EXISTS\r\n"), Reply::Exists);
        assert_eq!(parse_all(b"NOT_FOUND\r\n"), Reply::NotFound);
        assert_eq!(parse_all(b"DELETED\r\n"), Reply::Deleted);
        assert_eq!(parse_all(b"TOUCHED\r\n"), Reply::Touched);
        assert_eq!(parse_all(b"END\r\n"), Reply::Values(vec![]));
    }

    #[test]
    fn values_with_and_without_cas() {
        let buf = b"VALUE k1 2 3 77\r\nab\r\r\nVALUE k2 1 0\r\n\r\nEND\r\n";
        match parse_all(buf) {
            Reply::Values(items) => {
                assert_eq!(items.len(), 2);
                assert_eq!(items[0], Item { key: b"k1".to_vec(), flags: 2, data: b"ab\r".to_vec(), cas: Some(77) });
                assert_eq!(items[1], Item { key: b"k2".to_vec(), flags: 1, data: vec![], cas: None });
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn data_may_contain_protocol_words() {
        let data = b"END\r\nSTORED\r\n";
        let mut buf = format!("VALUE k 1 {}\r\n", data.len()).into_bytes();
        buf.extend_from_slice(data);
        buf.extend_from_slice(b"\r\nEND\r\n");
        assert_eq!(parse_all(&buf), Reply::Values(vec![Item { key: b"k".to_vec(), flags: 1, data: data.to_vec(), cas: None }]));
    }

    #[test]
    fn incomplete_input_asks_for_more() {
        let full = b"VALUE k 1 5 9\r\nhello\r\nEND\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse_reply(&full[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(parse_reply(full).unwrap().is_some());
        assert_eq!(parse_reply(b"STORED\r"), Ok(None));
    }

    #[test]
    fn error_replies() {
        assert!(matches!(parse_reply(b"ERROR\r\n"), Err(ReplyError::Server(_))));
        assert!(matches!(parse_reply(b"CLIENT_ERROR bad data chunk\r\n"), Err(ReplyError::Server(m)) if m.contains("bad data chunk")));
        assert!(matches!(parse_reply(b"SERVER_ERROR object too large for cache\r\n"), Err(ReplyError::Server(_))));
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        for bad in [
            &b"HELLO\r\n"[..],
            b"VALUE\r\n",
            b"VALUE k\r\n",
            b"VALUE k x 1\r\n",
            b"VALUE k 1 -1\r\n",
            b"VALUE k 1 99999999999999999999999\r\n",
            b"VALUE k 1 1 2 3\r\n",
            b"VALUE k 1 2\r\nabcd\r\n",
            b"VALUE k 1 1\r\na\r\nSTORED\r\n",
            b"VALUE k 4294967296 1\r\na\r\nEND\r\n",
        ] {
            assert!(matches!(parse_reply(bad), Err(ReplyError::Garbage(_))), "{:?}", String::from_utf8_lossy(bad));
        }
        // No line end within a sane length.
        assert!(parse_reply(&vec![b'x'; MAX_LINE_LEN + 10]).is_err());
        // A huge announced block is refused up front rather than waited for.
        assert!(parse_reply(format!("VALUE k 1 {}\r\n", usize::MAX).as_bytes()).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: every prefix of some mangled replies.
        let seeds: [&[u8]; 4] = [b"VALUE k 1 3 5\r\nabc\r\nEND\r\n", b"STORED\r\n", b"VALUE \xff\xfe 1 1\r\n\x00\r\nEND\r\n", b"\r\n\r\n"];
        let mut x: u32 = 12345;
        for seed in seeds {
            for _ in 0..500 {
                let mut v = seed.to_vec();
                x = x.wrapping_mul(1664525).wrapping_add(1013904223);
                let i = (x as usize) % v.len();
                v[i] = (x >> 24) as u8;
                for cut in 0..=v.len() {
                    let _ = parse_reply(&v[..cut]);
                }
            }
        }
    }

    #[test]
    fn keys() {
        assert!(check_key(b"_TOOZ_GROUP_abc").is_ok());
        assert!(check_key(&[b'a'; 250]).is_ok());
        assert!(check_key(&[b'a'; 251]).is_err());
        assert!(check_key(b"").is_err());
        for bad in [&b"a b"[..], b"a\nb", b"a\rb", b"a\tb", b"a\x00b", b"a\x0bb", b" a", b"a\x7f"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_key("clé".as_bytes()).is_ok(), "non-ASCII bytes are fine for the server");
    }

    #[test]
    fn requests() {
        assert_eq!(storage_request(Store::Add, b"k", 1, 30, b"me", None), b"add k 1 30 2\r\nme\r\n");
        assert_eq!(storage_request(Store::Set, b"k", 2, 5, b"\xc0", None), b"set k 2 5 1\r\n\xc0\r\n");
        assert_eq!(quiet_storage_request(Store::Set, b"k", 2, 5, b"\xc0"), b"set k 2 5 1 noreply\r\n\xc0\r\n");
        assert_eq!(storage_request(Store::Set, b"k", 2, 5, b"", Some(42)), b"cas k 2 5 0 42\r\n\r\n");
    }

    #[test]
    fn expiries() {
        assert_eq!(expiry(30.0), 30);
        assert_eq!(expiry(2.5), 3);
        assert_eq!(expiry(0.0), 1, "0 would mean never");
        assert_eq!(expiry(1e12), 2_592_000, "larger would be read as a unix time");
        assert_eq!(expiry(f64::NAN), 2_592_000);
    }
}
