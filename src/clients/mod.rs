//! Our own wire clients, for servers whose maintained Rust crates did not fit (blocking I/O,
//! no fork safety, a parser that could panic, a build that needs `protoc`): they speak a
//! protocol and know nothing of tooz's data model, which the drivers in `crate::drivers` lay
//! over them.

pub mod etcd;
pub mod memcache;
pub mod pg_guard;
pub mod pg_tls;
pub mod resp;
pub mod tls;
pub mod zookeeper;
