//! The ZooKeeper wire format ("jute"): big-endian integers, length-prefixed buffers and
//! strings, and the records this driver exchanges with a server. Every decoder checks its
//! bounds: a short or garbled frame is an error, never a panic.

/// Operation codes (`ZooDefs.OpCode`).
pub mod op {
    pub const CREATE: i32 = 1;
    pub const DELETE: i32 = 2;
    pub const EXISTS: i32 = 3;
    pub const GET_DATA: i32 = 4;
    pub const SET_DATA: i32 = 5;
    pub const GET_CHILDREN: i32 = 8;
    pub const PING: i32 = 11;
    pub const AUTH: i32 = 100;
    pub const SET_WATCHES: i32 = 101;
    pub const CLOSE_SESSION: i32 = -11;
}

/// Reserved transaction ids of replies that answer no numbered request.
pub mod xid {
    pub const NOTIFICATION: i32 = -1;
    pub const PING: i32 = -2;
    pub const AUTH: i32 = -4;
    pub const SET_WATCHES: i32 = -8;
}

/// Server error codes (`KeeperException.Code`) this driver tells apart.
pub mod code {
    pub const CONNECTION_LOSS: i32 = -4;
    pub const NO_NODE: i32 = -101;
    pub const NODE_EXISTS: i32 = -110;
    pub const NOT_EMPTY: i32 = -111;
    pub const SESSION_EXPIRED: i32 = -112;
    pub const INVALID_ACL: i32 = -114;
    pub const SESSION_MOVED: i32 = -118;
    pub const BAD_ARGUMENTS: i32 = -8;
}

/// Human-readable name of a server error code.
pub fn code_name(c: i32) -> &'static str {
    match c {
        -1 => "system error",
        -2 => "runtime inconsistency",
        -3 => "data inconsistency",
        -4 => "connection loss",
        -5 => "marshalling error",
        -6 => "unimplemented",
        -7 => "operation timeout",
        -8 => "bad arguments",
        -13 => "new config has no quorum",
        -14 => "reconfiguration in progress",
        -101 => "no node",
        -102 => "not authorised",
        -103 => "bad version",
        -108 => "ephemeral nodes may not have children",
        -110 => "node exists",
        -111 => "node not empty",
        -112 => "session expired",
        -113 => "invalid callback",
        -114 => "invalid ACL",
        -115 => "authentication failed",
        -118 => "session moved",
        -119 => "not a read-only call",
        -120 => "ephemeral on local session",
        -121 => "no watcher",
        -122 => "request timeout",
        -123 => "reconfiguration disabled",
        -124 => "session closed because client failed to authenticate",
        -125 => "quota exceeded",
        -127 => "throttled",
        _ => "unknown error",
    }
}

/// Node creation flags.
pub mod mode {
    pub const PERSISTENT: i32 = 0;
    pub const EPHEMERAL: i32 = 1;
    pub const EPHEMERAL_SEQUENTIAL: i32 = 3;
}

/// A decoding failure: the frame does not hold what it should.
#[derive(Debug, Clone, PartialEq)]
pub struct Malformed(pub &'static str);

pub type Decoded<T> = std::result::Result<T, Malformed>;

/// Appends jute-encoded values to a buffer.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Writer {
        Writer { buf: Vec::with_capacity(64) }
    }

    pub fn int(&mut self, v: i32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn long(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn boolean(&mut self, v: bool) -> &mut Self {
        self.buf.push(v as u8);
        self
    }

    pub fn buffer(&mut self, v: &[u8]) -> &mut Self {
        self.int(v.len() as i32);
        self.buf.extend_from_slice(v);
        self
    }

    pub fn string(&mut self, v: &str) -> &mut Self {
        self.buffer(v.as_bytes())
    }

    pub fn acls(&mut self, acls: &[Acl]) -> &mut Self {
        self.int(acls.len() as i32);
        for a in acls {
            self.int(a.perms).string(&a.scheme).string(&a.id);
        }
        self
    }
}

/// Reads jute-encoded values from a frame.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data }
    }

    pub fn remaining(&self) -> usize {
        self.data.len()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Decoded<&'a [u8]> {
        if self.data.len() < n {
            return Err(Malformed(what));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    pub fn int(&mut self) -> Decoded<i32> {
        let b = self.take(4, "truncated int")?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn long(&mut self) -> Decoded<i64> {
        let b = self.take(8, "truncated long")?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    #[cfg_attr(not(test), allow(dead_code))]
    pub fn boolean(&mut self) -> Decoded<bool> {
        Ok(self.take(1, "truncated boolean")?[0] != 0)
    }

    /// A buffer; `-1` (null) reads as empty.
    pub fn buffer(&mut self) -> Decoded<Vec<u8>> {
        let n = self.int()?;
        if n < 0 {
            return Ok(Vec::new());
        }
        Ok(self.take(n as usize, "truncated buffer")?.to_vec())
    }

    pub fn string(&mut self) -> Decoded<String> {
        String::from_utf8(self.buffer()?).map_err(|_| Malformed("string is not UTF-8"))
    }

    pub fn strings(&mut self) -> Decoded<Vec<String>> {
        let n = self.int()?;
        if n < 0 {
            return Ok(Vec::new());
        }
        // Each string takes at least its 4-byte length: refuse counts the frame cannot hold.
        if (n as usize).saturating_mul(4) > self.data.len() {
            return Err(Malformed("string vector longer than its frame"));
        }
        (0..n).map(|_| self.string()).collect()
    }

    pub fn stat(&mut self) -> Decoded<Stat> {
        Ok(Stat {
            czxid: self.long()?,
            mzxid: self.long()?,
            ctime: self.long()?,
            mtime: self.long()?,
            version: self.int()?,
            cversion: self.int()?,
            aversion: self.int()?,
            ephemeral_owner: self.long()?,
            data_length: self.int()?,
            num_children: self.int()?,
            pzxid: self.long()?,
        })
    }
}

/// A node's metadata (`data.Stat`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stat {
    pub czxid: i64,
    pub mzxid: i64,
    /// Creation time, milliseconds since the epoch.
    pub ctime: i64,
    /// Last modification time, milliseconds since the epoch.
    pub mtime: i64,
    pub version: i32,
    pub cversion: i32,
    pub aversion: i32,
    pub ephemeral_owner: i64,
    pub data_length: i32,
    pub num_children: i32,
    pub pzxid: i64,
}

/// One access-control entry: permission bits for an identity.
#[derive(Clone, Debug, PartialEq)]
pub struct Acl {
    pub perms: i32,
    pub scheme: String,
    pub id: String,
}

pub const PERM_ALL: i32 = 31;

impl Acl {
    pub fn world_anyone() -> Acl {
        Acl { perms: PERM_ALL, scheme: "world".into(), id: "anyone".into() }
    }
}

/// The session handshake a client opens every connection with.
pub struct ConnectRequest<'a> {
    pub last_zxid_seen: i64,
    pub timeout_ms: i32,
    pub session_id: i64,
    pub password: &'a [u8],
}

impl ConnectRequest<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.int(0) // protocol version
            .long(self.last_zxid_seen)
            .int(self.timeout_ms)
            .long(self.session_id)
            .buffer(self.password)
            .boolean(false); // read-only sessions are not wanted
        w.buf
    }
}

#[derive(Debug, PartialEq)]
pub struct ConnectResponse {
    pub timeout_ms: i32,
    pub session_id: i64,
    pub password: Vec<u8>,
}

impl ConnectResponse {
    pub fn decode(frame: &[u8]) -> Decoded<ConnectResponse> {
        let mut r = Reader::new(frame);
        let _protocol_version = r.int()?;
        let timeout_ms = r.int()?;
        let session_id = r.long()?;
        let password = r.buffer()?;
        // Servers since 3.4 append a read-only flag; older ones do not.
        Ok(ConnectResponse { timeout_ms, session_id, password })
    }
}

/// The header of every reply to a request.
#[derive(Debug, PartialEq)]
pub struct ReplyHeader {
    pub xid: i32,
    pub zxid: i64,
    pub err: i32,
}

impl ReplyHeader {
    pub fn decode(r: &mut Reader<'_>) -> Decoded<ReplyHeader> {
        Ok(ReplyHeader { xid: r.int()?, zxid: r.long()?, err: r.int()? })
    }
}

/// A watch notification (`proto.WatcherEvent`).
#[derive(Debug, PartialEq)]
pub struct WatcherEvent {
    pub kind: i32,
    pub state: i32,
    pub path: String,
}

impl WatcherEvent {
    pub fn decode(r: &mut Reader<'_>) -> Decoded<WatcherEvent> {
        Ok(WatcherEvent { kind: r.int()?, state: r.int()?, path: r.string()? })
    }
}

/// A request frame body (without the length prefix): header then payload.
pub fn request(xid: i32, op: i32, payload: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    w.int(xid).int(op);
    w.buf.extend_from_slice(payload);
    w.buf
}

/// `SetWatches`: re-registers, on a new connection of the same session, the watches the
/// session had, relative to the last zxid it saw (the server fires those whose node changed
/// in between at once).
pub fn set_watches(relative_zxid: i64, data: &[&str], exist: &[&str], child: &[&str]) -> Vec<u8> {
    let mut w = Writer::new();
    w.long(relative_zxid);
    for paths in [data, exist, child] {
        w.int(paths.len() as i32);
        for p in paths {
            w.string(p);
        }
    }
    w.buf
}

pub fn path_and_watch(path: &str, watch: bool) -> Vec<u8> {
    let mut w = Writer::new();
    w.string(path).boolean(watch);
    w.buf
}

pub fn create(path: &str, data: &[u8], acls: &[Acl], flags: i32) -> Vec<u8> {
    let mut w = Writer::new();
    w.string(path).buffer(data).acls(acls).int(flags);
    w.buf
}

pub fn delete(path: &str, version: i32) -> Vec<u8> {
    let mut w = Writer::new();
    w.string(path).int(version);
    w.buf
}

pub fn set_data(path: &str, data: &[u8], version: i32) -> Vec<u8> {
    let mut w = Writer::new();
    w.string(path).buffer(data).int(version);
    w.buf
}

pub fn auth(scheme: &str, credentials: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    w.int(0).string(scheme).buffer(credentials);
    w.buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_request_layout() {
        let req = ConnectRequest { last_zxid_seen: 7, timeout_ms: 10_000, session_id: 0, password: &[0; 16] };
        let b = req.encode();
        assert_eq!(b.len(), 4 + 8 + 4 + 8 + 4 + 16 + 1);
        assert_eq!(&b[..4], &[0, 0, 0, 0]);
        assert_eq!(&b[4..12], &7i64.to_be_bytes());
        assert_eq!(&b[12..16], &10_000i32.to_be_bytes());
        assert_eq!(&b[24..28], &16i32.to_be_bytes());
        assert_eq!(b[44], 0);
    }

    #[test]
    fn connect_response_with_and_without_readonly_flag() {
        let mut w = Writer::new();
        w.int(0).int(4000).long(0x1234).buffer(&[9; 16]);
        let plain = w.buf.clone();
        w.boolean(false);
        for frame in [plain, w.buf] {
            let r = ConnectResponse::decode(&frame).unwrap();
            assert_eq!(r, ConnectResponse { timeout_ms: 4000, session_id: 0x1234, password: vec![9; 16] });
        }
    }

    #[test]
    fn truncated_frames_are_errors() {
        assert!(ConnectResponse::decode(&[0, 0, 0]).is_err());
        let mut w = Writer::new();
        w.int(100).buf.extend_from_slice(b"short");
        assert!(Reader::new(&w.buf).buffer().is_err());
        let mut w = Writer::new();
        w.int(i32::MAX);
        assert!(Reader::new(&w.buf).strings().is_err());
        assert!(Reader::new(&[0; 10]).stat().is_err());
        let mut w = Writer::new();
        w.int(2).buffer(&[0xff, 0xfe]);
        assert!(Reader::new(&w.buf[4..]).string().is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic generator: every decoder must return, whatever it is fed.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..300usize {
            let mut data = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                data.push((x >> 24) as u8);
            }
            let _ = ConnectResponse::decode(&data);
            let mut r = Reader::new(&data);
            let _ = ReplyHeader::decode(&mut r).and_then(|_| WatcherEvent::decode(&mut r));
            let _ = Reader::new(&data).strings();
            let _ = Reader::new(&data).stat();
            let _ = Reader::new(&data).string();
        }
    }

    #[test]
    fn round_trips() {
        let mut w = Writer::new();
        w.int(2).string("a").string("bé").long(-5).boolean(true).buffer(&[]).int(-1);
        let mut r = Reader::new(&w.buf);
        assert_eq!(r.strings().unwrap(), vec!["a".to_owned(), "bé".to_owned()]);
        assert_eq!(r.long().unwrap(), -5);
        assert!(r.boolean().unwrap());
        assert_eq!(r.buffer().unwrap(), Vec::<u8>::new());
        assert_eq!(r.buffer().unwrap(), Vec::<u8>::new(), "null buffer");
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn stat_is_68_bytes() {
        let mut w = Writer::new();
        w.long(1).long(2).long(3).long(4).int(5).int(6).int(7).long(8).int(9).int(10).long(11);
        assert_eq!(w.buf.len(), 68);
        let s = Reader::new(&w.buf).stat().unwrap();
        assert_eq!((s.ctime, s.mtime, s.ephemeral_owner, s.pzxid), (3, 4, 8, 11));
    }
}
