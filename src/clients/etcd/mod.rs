//! A small etcd v3 client: the KV (range, delete, transactions), Lease (grant, revoke, one
//! keep-alive), Watch and Auth calls of etcd's gRPC API, over a tonic channel the caller
//! makes (one per member: failover and TLS stay the caller's).
//!
//! The protobuf messages are written by hand for prost's derive (`messages.rs`), so building
//! needs no `protoc` and no generated code: the `etcd-client` crate compiles etcd's .proto
//! files in its build script, which needs a system `protoc`, and `pip install` from our
//! sdist should need only cargo and a C compiler.

mod client;
pub mod messages;
mod requests;

pub use client::{Client, Watch};
pub use requests::prefix_end;

#[cfg(test)]
mod tests;
