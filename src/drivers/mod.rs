//! One module per backend (a folder when it has more than one file; `sql/` holds PostgreSQL's
//! and MySQL's drivers over the session lock they share), the URL options they read, and the
//! table that picks one by URL scheme.

pub mod etcd3;
pub mod file;
pub mod ipc;
pub mod memcached;
pub mod options;
pub mod redis;
pub mod sql;
pub mod zookeeper;

use std::sync::Arc;

use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::id::Id;
pub use options::Options;

/// The parts of a backend URL a driver needs.
#[derive(Clone, Debug, Default)]
pub struct Url {
    pub scheme: String,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

pub fn build(url: &Url, member: Id, options: &Options) -> Result<Arc<dyn Driver>> {
    match url.scheme.as_str() {
        "file" => Ok(Arc::new(file::FileDriver::new(member, &url.path, options)?)),
        "ipc" => Ok(Arc::new(ipc::IpcDriver::new())),
        "redis" => Ok(Arc::new(redis::RedisDriver::new(member, url, options)?)),
        "memcached" => Ok(Arc::new(memcached::MemcachedDriver::new(member, url, options)?)),
        "etcd3+http" | "etcd3+https" => Ok(Arc::new(etcd3::Etcd3Driver::new(member, url, options)?)),
        "postgresql" => Ok(Arc::new(sql::pgsql::PostgresDriver::new(url, options)?)),
        "mysql" => Ok(Arc::new(sql::mysql::MySqlDriver::new(url, options)?)),
        "zookeeper" | "kazoo" => Ok(Arc::new(zookeeper::ZooKeeperDriver::new(member, url, options)?)),
        s => Err(Error::InvalidArgument(format!("no built-in driver for scheme {s:?}"))),
    }
}
