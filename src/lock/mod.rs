//! What every lock shares, whatever its backend: an acquire that can be abandoned half-way
//! ([`acquire`]), the fencing token and lost-holding notice of a lock object ([`fate`]), fair
//! hand-over between processes ([`handoff`]), waiting for a lock that is a key with a TTL on
//! a server ([`ttl`]), and the holder's own clock of such a key's lease and how its renewal
//! is retried ([`lease`]). Drivers use these; nothing here knows a backend.

pub mod acquire;
pub mod fate;
pub mod handoff;
pub mod lease;
pub mod ttl;
