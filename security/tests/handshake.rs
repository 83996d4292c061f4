//! Real TLS handshakes over localhost TCP between certificates `CertDir` issued:
//! who gets in, who is refused, and what the refusal says.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use security::{AGENT_SERVER_NAME, CertDir, Principal, Role, Tls, Validity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn cluster(dir: &std::path::Path) -> CertDir {
    let d = CertDir::new(dir);
    d.init(Validity::days(30)).unwrap();
    d
}

fn issue(d: &CertDir, role: Role, name: &str) -> Tls {
    let files = d
        .issue(&Principal::new(role, name).unwrap(), Validity::days(30))
        .unwrap();
    Tls::load(&files).unwrap()
}

/// Serve one handshake with `server`; connect with a rustls client built from
/// `client_config`; return (server's outcome, client's outcome).
async fn handshake(
    server: &Tls,
    client_config: Arc<rustls::ClientConfig>,
) -> (Result<Principal, String>, Result<(), String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = server.clone();
    let srv = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        match server.accept(tcp).await {
            Ok((mut s, p)) => {
                let mut b = [0u8; 4];
                s.read_exact(&mut b).await.map_err(|e| e.to_string())?;
                s.write_all(&b).await.map_err(|e| e.to_string())?;
                s.flush().await.map_err(|e| e.to_string())?;
                Ok(p)
            }
            Err(e) => Err(e),
        }
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config);
    let name = rustls::pki_types::ServerName::try_from(AGENT_SERVER_NAME).unwrap();
    let client = async {
        let mut s = connector
            .connect(name, tcp)
            .await
            .map_err(|e| security::tls::describe(&e))?;
        s.write_all(b"ping")
            .await
            .map_err(|e| security::tls::describe(&e))?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b)
            .await
            .map_err(|e| security::tls::describe(&e))?;
        assert_eq!(&b, b"ping");
        Ok(())
    }
    .await;
    (srv.await.unwrap(), client)
}

#[tokio::test]
async fn two_agents_of_one_ca_know_each_other() {
    let t = tempfile::tempdir().unwrap();
    let d = cluster(t.path());
    let a = issue(&d, Role::Agent, "north-h1");
    let b = issue(&d, Role::Agent, "south-h1");
    assert_eq!(
        a.principal,
        Principal::new(Role::Agent, "north-h1").unwrap()
    );
    let (srv, cli) = handshake(&b, a.client.clone()).await;
    assert_eq!(srv.unwrap(), a.principal);
    cli.unwrap();
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_and_told_why() {
    let t = tempfile::tempdir().unwrap();
    let d = cluster(t.path());
    let server = issue(&d, Role::Agent, "south-h1");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&server.ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    use rustls::pki_types::pem::PemObject;
    let anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let (srv, cli) = handshake(&server, Arc::new(anonymous)).await;
    let e = srv.unwrap_err();
    assert!(e.contains("presented no certificate"), "{e}");
    let e = cli.unwrap_err();
    assert!(e.contains("requires a client certificate"), "{e}");
}

/// A client that trusts `trusts` (an attacker trusts any server) and presents the
/// certificate in `files`.
fn client_trusting(trusts: &Tls, files: &security::TlsFiles) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(&files.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&files.key).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&trusts.ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap(),
    )
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_both_ways() {
    let t = tempfile::tempdir().unwrap();
    let ours = cluster(&t.path().join("ours"));
    let theirs = cluster(&t.path().join("theirs"));
    let server = issue(&ours, Role::Agent, "south-h1");
    let foreign = theirs
        .issue(
            &Principal::new(Role::Admin, "mallory").unwrap(),
            Validity::days(30),
        )
        .unwrap();
    // Their certificate presented to our server: refused.
    let (srv, cli) = handshake(&server, client_trusting(&server, &foreign)).await;
    let e = srv.unwrap_err();
    assert!(e.contains("not signed by this cluster's CA"), "{e}");
    let e = cli.unwrap_err();
    assert!(e.contains("another CA"), "{e}");
    // Our client reaching their server: it refuses the server.
    let client = issue(&ours, Role::Agent, "north-h1");
    let intruder = issue(&theirs, Role::Agent, "south-h1");
    let (srv, cli) = handshake(&intruder, client.client.clone()).await;
    let e = cli.unwrap_err();
    assert!(e.contains("not signed by this cluster's CA"), "{e}");
    assert!(srv.is_err());
}

#[tokio::test]
async fn an_expired_certificate_is_refused_and_cannot_even_be_loaded() {
    let t = tempfile::tempdir().unwrap();
    let d = cluster(t.path());
    let server = issue(&d, Role::Agent, "south-h1");
    let now = time::OffsetDateTime::now_utc();
    let expired = Validity {
        not_before: now - time::Duration::days(10),
        not_after: now - time::Duration::days(1),
    };
    let files = d
        .issue(&Principal::new(Role::Agent, "old-h1").unwrap(), expired)
        .unwrap();
    let e = Tls::load(&files).unwrap_err().to_string();
    assert!(e.contains("valid from") && e.contains("certs issue"), "{e}");

    // Presented anyway (by a client that skips the load-time check): refused.
    let (srv, _) = handshake(&server, client_trusting(&server, &files)).await;
    let e = srv.unwrap_err();
    assert!(e.contains("expired"), "{e}");
}

#[tokio::test]
async fn an_operator_certificate_cannot_serve() {
    let t = tempfile::tempdir().unwrap();
    let d = cluster(t.path());
    let op = issue(&d, Role::Admin, "alice");
    let client = issue(&d, Role::Agent, "north-h1");
    let (_, cli) = handshake(&op, client.client.clone()).await;
    let e = cli.unwrap_err();
    assert!(
        e.contains("not one of this cluster's servers") || e.contains("not for this use"),
        "{e}"
    );
}

#[test]
fn init_refuses_to_replace_a_ca_and_keys_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let d = cluster(t.path());
    let e = d.init(Validity::days(1)).unwrap_err().to_string();
    assert!(e.contains("already holds a cluster CA"), "{e}");
    let files = d
        .issue(
            &Principal::new(Role::Node, "orch-a").unwrap(),
            Validity::days(1),
        )
        .unwrap();
    for key in [d.ca_key(), files.key.clone()] {
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
    let empty = CertDir::new(t.path().join("none"));
    let e = empty
        .issue(
            &Principal::new(Role::Node, "orch-a").unwrap(),
            Validity::days(1),
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("holds no cluster CA") && e.contains("certs init"),
        "{e}"
    );
    let loaded = Tls::load(&files).unwrap();
    assert!(!format!("{loaded:?}").contains("PRIVATE KEY"));
}
