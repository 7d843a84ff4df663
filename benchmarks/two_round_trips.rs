//! The physical floor of a redis or memcached lock for `benchmarks/workloads.py`: `ops` pairs
//! of the two requests a lock acquire + release cannot do without, and nothing else — on
//! redis `SET k v NX PX 30000` then `DEL k` (RESP), on memcached `add` then `delete` (text
//! protocol) — on one blocking TCP connection (no runtime, no pool, no Python), each reply
//! read in full and checked. Prints `{"ops", "seconds", "samples_us"}` as JSON.
//!
//!     two_round_trips redis://127.0.0.1:6379 3000
//!     two_round_trips memcached://127.0.0.1:11211 3000

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::exit;
use std::time::Instant;

fn fail(msg: &str) -> ! {
    eprintln!("two_round_trips: {msg}");
    exit(1)
}

/// `(scheme, host, port)` of `scheme://host:port[/...]`.
fn parse_url(url: &str) -> (String, String, u16) {
    let (scheme, rest) = url.split_once("://").unwrap_or_else(|| fail("usage: two_round_trips URL OPS"));
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let default_port = if scheme == "redis" { 6379 } else { 11211 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().unwrap_or_else(|_| fail("bad port"))),
        None => (authority, default_port),
    };
    (scheme.to_owned(), if host.is_empty() { "127.0.0.1".into() } else { host.into() }, port)
}

/// Sends `request` and reads its one-line reply, which must be `expected`.
fn round_trip(conn: &mut TcpStream, request: &[u8], expected: &[u8], buf: &mut [u8]) {
    conn.write_all(request).unwrap_or_else(|e| fail(&format!("write: {e}")));
    let mut got = 0;
    while got < expected.len() {
        match conn.read(&mut buf[got..]) {
            Ok(0) => fail("the server closed the connection"),
            Ok(n) => got += n,
            Err(e) => fail(&format!("read: {e}")),
        }
    }
    if &buf[..got] != expected {
        fail(&format!("unexpected reply {:?}", String::from_utf8_lossy(&buf[..got])));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).unwrap_or_else(|| fail("usage: two_round_trips URL OPS"));
    let ops: usize = args.get(2).and_then(|o| o.parse().ok()).unwrap_or(1000);
    let (scheme, host, port) = parse_url(url);
    let key = format!("bench-floor-{}", std::process::id());
    let value = "0123456789abcdef";
    // (acquire, its reply, release, its reply)
    let pair: [(Vec<u8>, &[u8]); 2] = match scheme.as_str() {
        "redis" => {
            let cmd = |args: &[&str]| {
                let mut out = format!("*{}\r\n", args.len());
                for a in args {
                    out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
                }
                out.into_bytes()
            };
            [(cmd(&["SET", &key, value, "NX", "PX", "30000"]), b"+OK\r\n"), (cmd(&["DEL", &key]), b":1\r\n")]
        }
        "memcached" => [
            (format!("add {key} 0 30 {}\r\n{value}\r\n", value.len()).into_bytes(), b"STORED\r\n"),
            (format!("delete {key}\r\n").into_bytes(), b"DELETED\r\n"),
        ],
        other => fail(&format!("unsupported scheme {other:?} (redis or memcached)")),
    };
    let mut conn = TcpStream::connect((host.as_str(), port)).unwrap_or_else(|e| fail(&format!("connect: {e}")));
    conn.set_nodelay(true).ok();
    let mut buf = [0u8; 256];
    let mut round = || {
        round_trip(&mut conn, &pair[0].0, pair[0].1, &mut buf);
        round_trip(&mut conn, &pair[1].0, pair[1].1, &mut buf);
    };
    for _ in 0..ops.min(200) {
        round();
    }
    let mut samples = Vec::with_capacity(ops);
    let began = Instant::now();
    for _ in 0..ops {
        let t = Instant::now();
        round();
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let seconds = began.elapsed().as_secs_f64();
    let list: Vec<String> = samples.iter().map(|s| format!("{s:.2}")).collect();
    println!("{{\"ops\": {ops}, \"seconds\": {seconds}, \"samples_us\": [{}]}}", list.join(", "));
}
