//! A TLS connection to memcached; the client configuration comes from
//! [`crate::clients::tls::client_config`].

use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::{Error, Result};

pub struct TlsSettings {
    connector: TlsConnector,
}

impl TlsSettings {
    pub fn new(config: Arc<rustls::ClientConfig>) -> TlsSettings {
        TlsSettings { connector: TlsConnector::from(config) }
    }

    pub async fn connect(&self, host: &str, tcp: TcpStream) -> Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| Error::InvalidArgument(format!("invalid TLS server name {host:?}: {e}")))?;
        self.connector
            .connect(name, tcp)
            .await
            .map_err(|e| Error::Connection(format!("TLS handshake with memcached at {host} failed: {e}")))
    }
}
