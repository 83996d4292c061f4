//! Mutual TLS for tonic: the endpoint a client connects with, the stream of verified
//! connections a server serves, and the identity behind a request.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::identity::{NODE_SERVER_NAME, Principal};
use crate::tls::{Refusal, Tls, peer_principal};

/// Most handshakes in progress at once; more connections wait to be accepted.
const MAX_HANDSHAKES: usize = 256;

/// How long a client waits for a server's side of the TLS handshake. A paused or
/// wedged node accepts TCP (the kernel does) but never answers: without this bound a
/// connect would wait forever. Loopback takes milliseconds, a slow WAN a few hundred.
pub const CLIENT_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// An endpoint to an orchestrator node at `addr` (host:port): plain HTTP/2 without
/// `tls`, else mutual TLS with this process's certificate, and the server must hold a
/// node certificate of the same CA.
pub fn endpoint(addr: &str, tls: Option<&Tls>) -> Result<Endpoint, String> {
    let Some(tls) = tls else {
        return Endpoint::from_shared(format!("http://{addr}")).map_err(|e| format!("{addr}: {e}"));
    };
    let cfg = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_pem))
        .identity(Identity::from_pem(&tls.cert_pem, tls.key_pem()))
        .domain_name(NODE_SERVER_NAME)
        .timeout(CLIENT_HANDSHAKE_TIMEOUT);
    Endpoint::from_shared(format!("https://{addr}"))
        .and_then(|e| e.tls_config(cfg))
        .map_err(|e| format!("{addr}: {e}"))
}

/// The stream of connections whose handshake succeeded, for tonic's
/// `serve_with_incoming`. Handshakes run concurrently (a slow client holds up no one);
/// each failure is logged with the peer's address and why, and passed to `refused`.
/// The accept loop ends when the stream is dropped; its task (returned) holds the
/// listener, so a caller that binds the same address again awaits it first.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<Tls>,
    refused: Arc<dyn Fn(Refusal) + Send + Sync>,
) -> (
    impl Stream<Item = std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(64);
    let accepting = tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = tokio::select! {
                _ = tx.closed() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("accepting a connection: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (tx, tls, refused) = (tx.clone(), tls.clone(), refused.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tls.accept(tcp).await {
                    Ok((stream, _)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Err(reason) => {
                        tracing::warn!(%peer, "refused a connection: {reason}");
                        refused(Refusal { peer, reason });
                    }
                }
            });
        }
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    (stream, accepting)
}

/// The verified identity behind a request served over [`incoming`].
pub fn principal<T>(req: &tonic::Request<T>) -> Result<Principal, String> {
    let certs = req.peer_certs();
    peer_principal(certs.as_deref().map(Vec::as_slice))
}

/// The peer's address, for log lines.
pub fn peer_addr<T>(req: &tonic::Request<T>) -> Option<SocketAddr> {
    req.remote_addr()
}
