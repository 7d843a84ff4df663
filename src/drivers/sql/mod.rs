//! The database backends: PostgreSQL's advisory locks and MySQL/MariaDB's `GET_LOCK`, both
//! laid over one lock held on a dedicated connection ([`session_lock`]); each driver says how
//! to connect and how to take and give back one lock on one connection.

pub mod mysql;
pub mod pgsql;
pub mod session_lock;
