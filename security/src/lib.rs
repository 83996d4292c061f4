//! Who may talk to a metrodr cluster, and how it knows (DESIGN §10).
//!
//! - [`pki`]: the cluster CA and the certificates `metrodr certs init` issues;
//! - [`identity`]: the role and name a certificate speaks for;
//! - [`tls`]: mutual TLS on every connection (rustls), with handshake failures
//!   explained;
//! - [`policy`]: what each role may do (pure; the whole table is tested).

pub mod grpc;
pub mod identity;
pub mod pki;
pub mod policy;
pub mod tls;

pub use identity::{AGENT_SERVER_NAME, NODE_SERVER_NAME, Principal, Role};
pub use pki::{CertDir, PkiError, Validity};
pub use policy::{Access, Denied, authorize};
pub use tls::{Refusal, Tls, TlsError, TlsFiles};
