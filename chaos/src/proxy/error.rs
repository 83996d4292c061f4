//! The link proxy's error type: what failed, on which address, and what to do.

use std::io;
use std::net::SocketAddr;

/// What went wrong while starting or reconfiguring a [`super::LinkProxy`].
///
/// Errors on forwarded connections (a peer resets, the target refuses) are not
/// returned to anyone: they close that one connection (with RST, so the other side
/// sees a failure rather than a clean end of stream) and are counted in
/// [`super::ProxyStats`]. The proxy never panics on network errors.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(
        "could not listen on {addr}; use an address of this machine (loopback or a lab \
         namespace) and a free port, or port 0 to let the kernel choose"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(
        "could not start the proxy's threads (its tokio runtime or its timer thread); is \
         the process out of threads or file descriptors?"
    )]
    Runtime {
        #[source]
        source: io::Error,
    },
    #[error("bad link property {field} = {value}: {reason}")]
    BadProps {
        field: String,
        value: String,
        reason: &'static str,
    },
}
