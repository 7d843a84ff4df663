//! The Rust core of tooz: drivers behind one async trait, the shared runtime, and (with the
//! `python` feature) the PyO3 binding that the `tooz` Python package wraps.

pub mod clients;
pub mod coordinator;
pub mod driver;
pub mod drivers;
pub mod error;
pub mod hashring;
pub mod id;
pub mod lock;
pub mod log;
pub mod membership;
pub mod msgpack;
pub mod pool;
pub mod queue;
pub mod runtime;

#[cfg(feature = "python")]
mod py;

/// mimalloc: per-thread heaps, no arena contention between the runtime's threads (Cargo.toml
/// has the measurement).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
