//! The operator client: connects to any reachable node of a cluster and, for requests
//! that must run on the leader, follows the leader hint a follower answers with.

use std::sync::Arc;
use std::time::Duration;

use security::Tls;
use tonic::transport::Channel;

use crate::network::MAX_MESSAGE_BYTES;
use crate::pb::operator_client::OperatorClient;

/// How long to wait for a connection to one node before trying the next.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default deadline for one operator call (writes wait for a commit, which the server
/// itself bounds by its write timeout).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no orchestrator address given: pass --cluster HOST:PORT[,HOST:PORT...] or set METRODR_CLUSTER"
    )]
    NoAddress,
    #[error(
        "cannot reach any orchestrator node ({tried}): {last}. Is the cluster running, and are the addresses right?"
    )]
    Unreachable { tried: String, last: String },
    #[error("{addr}: {code:?}: {message}")]
    Call {
        addr: String,
        code: tonic::Code,
        message: String,
    },
}

impl ClientError {
    pub fn from_status(addr: &str, s: tonic::Status) -> Self {
        ClientError::Call {
            addr: addr.to_string(),
            code: s.code(),
            message: s.message().to_string(),
        }
    }

    /// The gRPC code of a failed call, if it was one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Call { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A connection to one node.
#[derive(Clone)]
pub struct Client {
    pub addr: String,
    pub op: OperatorClient<Channel>,
    dialer: Dialer,
}

/// How to reach the cluster: with this operator's credentials (mutual TLS), or plain
/// gRPC to a cluster running without TLS.
#[derive(Clone, Default)]
pub struct Dialer {
    pub tls: Option<Arc<Tls>>,
}

/// The text of a failed connection, with the TLS reason when there is one (tonic
/// nests it a few sources deep).
fn connect_error(addr: &str, e: &tonic::transport::Error) -> String {
    let mut why = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            why = security::tls::describe(io);
            break;
        }
        why = s.to_string();
        src = s.source();
    }
    format!("{addr}: {why}")
}

impl Dialer {
    pub fn new(tls: Option<Arc<Tls>>) -> Dialer {
        Dialer { tls }
    }

    async fn one(&self, addr: &str) -> Result<Client, String> {
        let ep = security::grpc::endpoint(addr, self.tls.as_deref())?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .tcp_nodelay(true);
        // Bounded as a whole: TCP connect, then the TLS handshake (each bounded too).
        let ch = tokio::time::timeout(CONNECT_TIMEOUT * 3, ep.connect())
            .await
            .map_err(|_| format!("{addr}: no answer within {:?}", CONNECT_TIMEOUT * 3))?
            .map_err(|e| connect_error(addr, &e))?;
        Ok(Client {
            addr: addr.to_string(),
            op: OperatorClient::new(ch)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            dialer: self.clone(),
        })
    }

    /// Connect to the first reachable address.
    pub async fn connect(&self, addrs: &[String]) -> Result<Client, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::NoAddress);
        }
        let mut last = String::new();
        for a in addrs {
            match self.one(a).await {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(ClientError::Unreachable {
            tried: addrs.join(", "),
            last,
        })
    }

    /// Connect to one specific node.
    pub async fn connect_to(&self, addr: &str) -> Result<Client, ClientError> {
        self.one(addr)
            .await
            .map_err(|last| ClientError::Unreachable {
                tried: addr.to_string(),
                last,
            })
    }
}

/// Split `a:1,b:2` (and spaces) into addresses.
pub fn parse_addrs(s: &str) -> Vec<String> {
    s.split([',', ' '])
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

impl Client {
    /// Connect to the first reachable address of a cluster without TLS.
    pub async fn connect(addrs: &[String]) -> Result<Client, ClientError> {
        Dialer::default().connect(addrs).await
    }

    /// Connect to one node of a cluster without TLS.
    pub async fn connect_to(addr: &str) -> Result<Client, ClientError> {
        Dialer::default().connect_to(addr).await
    }

    /// How this client connected (to reach other nodes the same way).
    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// Run `call` here; if the node answers that the leader is elsewhere (the
    /// `x-metrodr-leader` hint), run it once more at the leader.
    pub async fn at_leader<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(OperatorClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match call(self.op.clone()).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => {
                let hint = s
                    .metadata()
                    .get("x-metrodr-leader")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                match hint {
                    Some(leader) if leader != self.addr => {
                        let c = self.dialer.connect_to(&leader).await?;
                        call(c.op.clone())
                            .await
                            .map(tonic::Response::into_inner)
                            .map_err(|s| ClientError::from_status(&leader, s))
                    }
                    _ => Err(ClientError::from_status(&self.addr, s)),
                }
            }
        }
    }
}
