//! Mutual TLS for every connection of the cluster: loading a process's credentials,
//! the rustls client and server configurations built from them, and the reasons a
//! handshake failed, in words an operator can act on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use crate::identity::Principal;

/// How long a peer may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The three files a process needs: the cluster CA, its certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}. Create the certificates with `metrodr certs init`")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Bad { path: PathBuf, message: String },
    #[error("{0}")]
    Config(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A process's loaded credentials and the TLS configurations made from them.
#[derive(Clone)]
pub struct Tls {
    /// Who this process is (from its own certificate).
    pub principal: Principal,
    /// PEM text of the CA and the certificate (public); tonic's client wants PEM.
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    pub not_after: String,
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Tls")
            .field("principal", &self.principal)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl Tls {
    pub fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
        let bad = |path: &Path, message: String| TlsError::Bad {
            path: path.to_path_buf(),
            message,
        };
        let ca_pem = read(&files.ca)?;
        let cert_pem = read(&files.cert)?;
        let key_pem = read(&files.key)?;
        let certs = |path: &Path, pem: &[u8]| -> Result<Vec<CertificateDer<'static>>, TlsError> {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(path, format!("not a PEM certificate file: {e:?}")))?;
            if certs.is_empty() {
                return Err(bad(path, "holds no certificate".into()));
            }
            Ok(certs)
        };
        let ca = certs(&files.ca, &ca_pem)?;
        let chain = certs(&files.cert, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| bad(&files.key, format!("not a PEM private key: {e:?}")))?;
        let principal = Principal::from_cert_der(&chain[0]).map_err(|e| bad(&files.cert, e))?;
        let not_after = {
            let (_, c) = x509_parser::parse_x509_certificate(&chain[0])
                .map_err(|e| bad(&files.cert, format!("does not parse: {e}")))?;
            let v = c.validity();
            if !v.is_valid() {
                return Err(bad(
                    &files.cert,
                    format!(
                        "the certificate of {principal} is valid from {} to {} only: issue a new one with `metrodr certs issue`",
                        v.not_before, v.not_after
                    ),
                ));
            }
            v.not_after.to_string()
        };

        let mut roots = RootCertStore::empty();
        for c in &ca {
            roots
                .add(c.clone())
                .map_err(|e| bad(&files.ca, format!("not a usable CA certificate: {e}")))?;
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;
        let mismatch = |e: rustls::Error| {
            bad(
                &files.key,
                format!("does not go with {}: {e}", files.cert.display()),
            )
        };
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(mismatch)?;
        // gRPC clients ask for h2; the replication stream asks for nothing.
        server.alpn_protocols = vec![b"h2".to_vec()];
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(mismatch)?;
        Ok(Tls {
            principal,
            ca_pem,
            cert_pem,
            key_pem,
            not_after,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// The key in PEM (for tonic's client identity). Never log it.
    pub fn key_pem(&self) -> &[u8] {
        &self.key_pem
    }

    /// Accept one connection: the handshake, with a deadline, then the peer's identity.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, Principal), String> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.server.clone());
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Err(_) => return Err("the TLS handshake did not finish within 10 s".into()),
            Ok(Err(e)) => return Err(describe(&e)),
            Ok(Ok(s)) => s,
        };
        let p = {
            let (_, conn) = tls.get_ref();
            peer_principal(conn.peer_certificates())?
        };
        Ok((tls, p))
    }

    /// Connect to a server that must hold a certificate naming `server_name`
    /// ([`crate::identity::AGENT_SERVER_NAME`] for a replication peer).
    pub async fn connect(
        &self,
        tcp: TcpStream,
        server_name: &'static str,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let connector = tokio_rustls::TlsConnector::from(self.client.clone());
        let name = ServerName::try_from(server_name).map_err(|e| e.to_string())?;
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp)).await {
            Err(_) => Err("the TLS handshake did not finish within 10 s".into()),
            Ok(Err(e)) => Err(describe(&e)),
            Ok(Ok(s)) => Ok(s),
        }
    }
}

/// The identity of a verified peer (rustls has checked the chain to our CA).
pub fn peer_principal(certs: Option<&[CertificateDer<'_>]>) -> Result<Principal, String> {
    let first = certs
        .and_then(|c| c.first())
        .ok_or("the peer presented no certificate")?;
    Principal::from_cert_der(first)
}

/// Why a handshake failed, for the log line an operator reads.
pub fn describe(e: &std::io::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let Some(r) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) else {
        return format!("the connection failed during the TLS handshake: {e}");
    };
    match r {
        E::NoCertificatesPresented => {
            "the peer presented no certificate (every connection needs one from this cluster's CA: see `metrodr certs`)".into()
        }
        E::InvalidCertificate(C::UnknownIssuer) => {
            "its certificate is not signed by this cluster's CA".into()
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "its certificate has expired: issue a new one with `metrodr certs issue`".into()
        }
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "its certificate is not valid yet (is a clock wrong?)".into()
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "its certificate is not one of this cluster's servers (wrong role: e.g. an operator or agent certificate where a node was expected)".into()
        }
        E::InvalidCertificate(C::InvalidPurpose | C::InvalidPurposeContext { .. }) => {
            "its certificate is not for this use (e.g. an operator certificate presented by a server)".into()
        }
        E::InvalidCertificate(C::BadSignature) => {
            "its certificate's signature does not verify against this cluster's CA".into()
        }
        E::InvalidCertificate(other) => format!("its certificate is invalid: {other:?}"),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            "the peer does not speak TLS (is it configured without certificates?)".into()
        }
        E::AlertReceived(A::CertificateRequired) => {
            "the server requires a client certificate and this process sent none".into()
        }
        E::AlertReceived(A::UnknownCA) => {
            "the peer does not trust this process's certificate (it is from another CA)".into()
        }
        E::AlertReceived(A::CertificateExpired) => {
            "the peer refused this process's certificate: it has expired".into()
        }
        E::AlertReceived(a) => format!("the peer refused the handshake ({a:?})"),
        other => format!("TLS handshake failed: {other}"),
    }
}

/// A connection refused before it could make any call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub peer: SocketAddr,
    pub reason: String,
}
