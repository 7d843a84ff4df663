//! The rustls client configuration the TLS-capable drivers share (memcached, ZooKeeper).
//!
//! A driver reads its own options (names, defaults, which combinations it accepts) and
//! describes what it wants in [`TlsOptions`]; [`client_config`] does the rest: the trust
//! roots (a CA PEM file, else the system's roots), the server check ([`Verify`]), an
//! optional client certificate, all on the ring crypto provider. Every problem with the
//! files is an [`Error::InvalidArgument`] naming the option and the path.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::drivers::options::Options;
use crate::error::{Error, Result};

/// A driver option that was given, with its name for error messages.
#[derive(Clone, Copy, Debug)]
pub struct Named<'a> {
    pub option: &'a str,
    pub value: &'a str,
}

impl<'a> Named<'a> {
    /// The option `option` when it is set.
    pub fn lookup(options: &'a Options, option: &'a str) -> Option<Named<'a>> {
        options.str(option).map(|value| Named { option, value })
    }
}

/// How much of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// The chain up to a trusted root, and the host name.
    Full,
    /// The chain up to a trusted root; a certificate for another name passes.
    ChainOnly,
    /// Nothing: any certificate passes (the CA file is not even read).
    Nothing,
}

/// A client certificate chain and its private key (both PEM; may be the same file).
#[derive(Clone, Copy, Debug)]
pub struct ClientCert<'a> {
    pub cert: Named<'a>,
    pub key: Named<'a>,
}

/// What a driver wants of its TLS connections.
#[derive(Clone, Copy, Debug)]
pub struct TlsOptions<'a> {
    /// PEM file of trusted roots; `None`: the system's roots.
    pub ca_file: Option<Named<'a>>,
    pub client_cert: Option<ClientCert<'a>>,
    /// A password for an encrypted key: refused, as encrypted keys are not supported.
    pub key_password: Option<Named<'a>>,
    pub verify: Verify,
}

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

fn setup_failed(e: impl std::fmt::Display) -> Error {
    invalid(format!("TLS set-up failed: {e}"))
}

/// The certificates of a PEM file; none at all is an error.
fn load_certs(file: Named<'_>) -> Result<Vec<CertificateDer<'static>>> {
    let Named { option, value: path } = file;
    let found: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| invalid(format!("{option}: cannot read {path}: {e}")))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| invalid(format!("{option}: bad certificate in {path}: {e}")))?;
    if found.is_empty() {
        return Err(invalid(format!("{option}: no certificate in {path}")));
    }
    Ok(found)
}

/// The first private key of a PEM file.
fn load_key(file: Named<'_>) -> Result<PrivateKeyDer<'static>> {
    let Named { option, value: path } = file;
    PrivateKeyDer::from_pem_file(path).map_err(|e| invalid(format!("{option}: cannot read a key from {path}: {e}")))
}

/// The roots of `ca_file`, else the system's (those it cannot use are skipped).
fn root_store(ca_file: Option<Named<'_>>) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(file) => {
            for cert in load_certs(file)? {
                roots
                    .add(cert)
                    .map_err(|e| invalid(format!("{}: unusable certificate in {}: {e}", file.option, file.value)))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    Ok(Arc::new(roots))
}

/// A client configuration as `o` describes it.
pub fn client_config(o: &TlsOptions<'_>) -> Result<Arc<ClientConfig>> {
    if let Some(password) = o.key_password {
        return Err(invalid(format!(
            "{}: encrypted private keys are not supported; give an unencrypted key",
            password.option
        )));
    }
    // rustls 0.23.48 marks the ring provider deprecated because ring has no post-quantum key
    // exchange (ML-KEM); the provider that has it, aws-lc-rs, is a large C build that the sdist
    // (cargo and a C compiler only) and the zig-linked manylinux2014 wheels would carry. The key
    // exchange is the classical X25519/P-256 set, as with rustls before 0.23.48.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(setup_failed)?;
    let builder = match o.verify {
        Verify::Full => builder.with_root_certificates(root_store(o.ca_file)?),
        Verify::ChainOnly => {
            let chain = WebPkiServerVerifier::builder_with_provider(root_store(o.ca_file)?, provider.clone())
                .build()
                .map_err(setup_failed)?;
            builder.dangerous().with_custom_certificate_verifier(Arc::new(Lenient::new(Some(chain), &provider)))
        }
        Verify::Nothing => builder.dangerous().with_custom_certificate_verifier(Arc::new(Lenient::new(None, &provider))),
    };
    let config = match o.client_cert {
        None => builder.with_no_client_auth(),
        Some(ClientCert { cert, key }) => {
            let chain = load_certs(cert)?;
            let key_der = load_key(key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| invalid(format!("{}/{}: unusable client certificate: {e}", cert.option, key.option)))?
        }
    };
    Ok(Arc::new(config))
}

/// The server check short of [`Verify::Full`]: with `chain`, the chain must verify but the
/// certificate may be for another name ([`Verify::ChainOnly`]); without, any certificate
/// passes ([`Verify::Nothing`]). Handshake signatures are checked either way.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Lenient {
    fn new(chain: Option<Arc<WebPkiServerVerifier>>, provider: &CryptoProvider) -> Lenient {
        Lenient { chain, algorithms: provider.signature_verification_algorithms }
    }
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named<'a>(option: &'a str, value: &'a str) -> Named<'a> {
        Named { option, value }
    }

    fn options<'a>(verify: Verify) -> TlsOptions<'a> {
        TlsOptions { ca_file: None, client_cert: None, key_password: None, verify }
    }

    fn message(o: &TlsOptions<'_>) -> String {
        match client_config(o) {
            Err(Error::InvalidArgument(msg)) => msg,
            Err(other) => panic!("not InvalidArgument: {other:?}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn missing_files_name_the_option_and_the_path() {
        let o = TlsOptions { ca_file: Some(named("ca", "/no/such/ca.pem")), ..options(Verify::Full) };
        let msg = message(&o);
        assert!(msg.starts_with("ca: cannot read /no/such/ca.pem"), "{msg}");

        let o = TlsOptions {
            client_cert: Some(ClientCert { cert: named("certfile", "/no/such/c.pem"), key: named("keyfile", "/k") }),
            ..options(Verify::Nothing)
        };
        let msg = message(&o);
        assert!(msg.starts_with("certfile: cannot read /no/such/c.pem"), "{msg}");
    }

    #[test]
    fn empty_ca_file_is_refused() {
        let path = std::env::temp_dir().join(format!("tooz-tls-empty-{}.pem", std::process::id()));
        std::fs::write(&path, "").unwrap();
        let path_str = path.to_str().unwrap();
        let o = TlsOptions { ca_file: Some(named("ca_cert", path_str)), ..options(Verify::ChainOnly) };
        let msg = message(&o);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(msg, format!("ca_cert: no certificate in {path_str}"));
    }

    #[test]
    fn key_passwords_are_refused() {
        let o = TlsOptions { key_password: Some(named("keyfile_password", "secret")), ..options(Verify::Full) };
        let msg = message(&o);
        assert!(msg.starts_with("keyfile_password: encrypted private keys are not supported"), "{msg}");
        assert!(!msg.contains("secret"), "{msg}");
    }

    #[test]
    fn trusting_anything_reads_no_ca_file() {
        let o = TlsOptions { ca_file: Some(named("ca", "/no/such/ca.pem")), ..options(Verify::Nothing) };
        assert!(client_config(&o).is_ok());
        assert!(client_config(&options(Verify::Full)).is_ok());
    }
}
