//! The WAN between the lab's production sites: a transparent link proxy in each
//! site's namespace carries every TCP connection that site opens to the other
//! (replication streams, NBD), so `shape` can give the link delay, jitter, loss and a
//! bandwidth limit (the kernel's netem is not available here).
//!
//! ```text
//!   ns north: agent ─connect 10.x.y.3:p─► nat OUTPUT REDIRECT ─► proxy north→south ─(SO_MARK)─► south
//!   ns south: agent ─connect 10.x.y.2:p─► nat OUTPUT REDIRECT ─► proxy south→north ─(SO_MARK)─► north
//! ```
//!
//! Each connection crosses one proxy; the two proxies of a link share its bandwidth
//! buckets, so a limit holds for the link whichever side opened a connection. The
//! control plane (the orchestrator port) is not redirected: Raft and the agents'
//! leases cross the bridge directly, unshaped. The proxies are in the path from the
//! start, shaped or not, so connections made before a `shape` feel it too. Partitions
//! still apply: the proxies' own connections are filtered by the fault chains.
//!
//! Never: redirect the control plane's port (Raft and leases are not shaped), or
//! leave a proxy thread in a namespace that is being removed (the lab drops the links
//! before the namespaces).

use std::net::{Ipv4Addr, SocketAddr};

use chaos::netns::NetLab;
use chaos::proxy::{LinkProps, LinkProxy, Target, Wire, WireSide};
use chaos::scenario::LinkShape;
use serde::{Deserialize, Serialize};

use crate::error::{Context, LabError};

/// `SO_MARK` of the proxies' own connections, which the redirect rules let through.
const PROXY_MARK: u32 = 0x4d44;

/// One production-site link: the proxy in `a` (for what `a` opens) and in `b`.
pub struct SiteLink {
    pub a: String,
    pub b: String,
    from_a: LinkProxy,
    from_b: LinkProxy,
    /// The shape in force.
    shape: LinkShape,
}

/// What `lab status` shows of a link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkRecord {
    pub a: String,
    pub b: String,
    pub shape: String,
    pub bytes_a_to_b: u64,
    pub bytes_b_to_a: u64,
    pub connections: u64,
}

impl SiteLink {
    /// Puts proxies in the path between `a` and `b`; `except_port` (the control
    /// plane's) is not redirected.
    pub fn start(net: &NetLab, a: &str, b: &str, except_port: u16) -> Result<SiteLink, LabError> {
        let wire = Wire::default();
        let proxy = |from: &str, to: &str, side: WireSide| -> Result<LinkProxy, LabError> {
            let wire = wire.clone();
            let what = || format!("starting the link proxy in {from} towards {to}");
            let p = net
                .in_ns(from, move || {
                    LinkProxy::start_with(
                        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                        Target::Original { mark: PROXY_MARK },
                        LinkProps::default(),
                        wire,
                        side,
                    )
                })
                .with_ctx(what)?
                .with_ctx(what)?;
            net.redirect(from, to, except_port, PROXY_MARK, p.local_addr().port())
                .with_ctx(|| format!("redirecting {from}'s connections to {to}"))?;
            Ok(p)
        };
        Ok(SiteLink {
            a: a.to_string(),
            b: b.to_string(),
            from_a: proxy(a, b, WireSide::Near)?,
            from_b: proxy(b, a, WireSide::Far)?,
            shape: LinkShape::default(),
        })
    }

    /// Whether this is the link between `x` and `y` (either order).
    pub fn joins(&self, x: &str, y: &str) -> bool {
        (self.a == x && self.b == y) || (self.a == y && self.b == x)
    }

    /// Gives both directions of the link `shape` (all zero: full speed).
    pub fn shape(&mut self, shape: LinkShape) -> Result<(), LabError> {
        let dir = shape.props();
        let props = LinkProps {
            to_target: dir,
            to_client: dir,
            ..LinkProps::default()
        };
        let what = || format!("shaping the link {} <-> {}", self.a, self.b);
        self.from_a.set(props).with_ctx(what)?;
        self.from_b.set(props).with_ctx(what)?;
        self.shape = shape;
        Ok(())
    }

    pub fn record(&self) -> LinkRecord {
        let (sa, sb) = (self.from_a.stats(), self.from_b.stats());
        LinkRecord {
            a: self.a.clone(),
            b: self.b.clone(),
            shape: self.shape.describe(),
            bytes_a_to_b: sa.to_target.bytes + sb.to_client.bytes,
            bytes_b_to_a: sa.to_client.bytes + sb.to_target.bytes,
            connections: sa.connections_accepted + sb.connections_accepted,
        }
    }
}
