//! The certificate directory `metrodr certs init` creates: a cluster CA and one
//! certificate per node, agent and operator, each naming its identity
//! ([`crate::identity`]).
//!
//! ```text
//! DIR/ca.crt                 the cluster CA (every process trusts it)
//! DIR/ca.key                 its key (0600; keep it offline once everything is issued)
//! DIR/nodes/NAME.crt|key     an orchestrator node
//! DIR/agents/HOST.crt|key    the agent of a hypervisor host
//! DIR/operators/NAME.crt|key a person: admin, operator or auditor
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::identity::{AGENT_SERVER_NAME, NODE_SERVER_NAME, Principal, Role};
use crate::tls::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} already holds a cluster CA; issue more certificates with `metrodr certs issue`, or pick an empty directory"
    )]
    Exists(PathBuf),
    #[error(
        "{0} holds no cluster CA (ca.crt and ca.key): create one with `metrodr certs init --dir DIR`"
    )]
    NoCa(PathBuf),
    #[error("the CA in {path} is unusable: {message}")]
    BadCa { path: PathBuf, message: String },
    #[error("cannot make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clocks differ) for `days` days.
    pub fn days(days: u32) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(i64::from(days)),
        }
    }
}

/// A certificate directory.
#[derive(Debug, Clone)]
pub struct CertDir {
    pub root: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write a file through a temporary name, with `mode`, so a crash leaves the old file
/// or the new one, never half of either.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

impl CertDir {
    pub fn new(root: impl Into<PathBuf>) -> CertDir {
        CertDir { root: root.into() }
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.crt")
    }

    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }

    /// Where the files of `name` in `role` are (whether or not they exist).
    pub fn files(&self, role: Role, name: &str) -> TlsFiles {
        let dir = self.root.join(role.folder());
        TlsFiles {
            ca: self.ca_cert(),
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        }
    }

    /// Create the cluster CA. Refuses a directory that already has one (its
    /// certificates would all stop working).
    pub fn init(&self, validity: Validity) -> Result<(), PkiError> {
        if self.ca_cert().exists() || self.ca_key().exists() {
            return Err(PkiError::Exists(self.root.clone()));
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        // A name of its own (from its key), so that another cluster's CA is another
        // issuer, not a same-named one whose signatures fail.
        let tag: String = key
            .public_key_raw()
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("metrodr cluster CA {tag}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key)?;
        write_file(&self.ca_key(), key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&self.ca_cert(), cert.pem().as_bytes(), 0o644)
    }

    /// Issue (or renew) the certificate of `who`, signed by this directory's CA.
    pub fn issue(&self, who: &Principal, validity: Validity) -> Result<TlsFiles, PkiError> {
        let read = |p: PathBuf| match std::fs::read_to_string(&p) {
            Ok(s) => Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(PkiError::NoCa(self.root.clone()))
            }
            Err(source) => Err(PkiError::Io { path: p, source }),
        };
        let (ca_pem, ca_key_pem) = (read(self.ca_cert())?, read(self.ca_key())?);
        let bad = |message: String| PkiError::BadCa {
            path: self.root.clone(),
            message,
        };
        let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| bad(format!("ca.key: {e}")))?;
        let ca = CertificateParams::from_ca_cert_pem(&ca_pem)
            .map_err(|e| bad(format!("ca.crt: {e}")))?
            .self_signed(&ca_key)
            .map_err(|e| bad(format!("ca.key does not sign for ca.crt: {e}")))?;

        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, &who.name);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, who.role.as_str());
        let mut sans = vec![SanType::URI(who.uri().try_into()?)];
        let mut ekus = vec![ExtendedKeyUsagePurpose::ClientAuth];
        match who.role {
            Role::Node => {
                sans.push(SanType::DnsName(NODE_SERVER_NAME.try_into()?));
                ekus.push(ExtendedKeyUsagePurpose::ServerAuth);
            }
            Role::Agent => {
                sans.push(SanType::DnsName(AGENT_SERVER_NAME.try_into()?));
                ekus.push(ExtendedKeyUsagePurpose::ServerAuth);
            }
            Role::Admin | Role::Operator | Role::Auditor => {}
        }
        params.subject_alt_names = sans;
        params.extended_key_usages = ekus;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.signed_by(&key, &ca, &ca_key)?;

        let files = self.files(who.role, &who.name);
        write_file(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&files.cert, cert.pem().as_bytes(), 0o644)?;
        Ok(files)
    }
}
