//! The app's probes, as the agent of the VM's host runs them (the health gate of a
//! failover, a switchover or a restart): a serial probe waits for a marker on the VM's
//! console; a tcp probe connects to a port of the VM until a connection is accepted.
//!
//! Where a tcp probe connects ([`Target`]): the probe's `address` when it names one;
//! else the VM's own address as this host knows it, from the agent's `guest_network`:
//! a libvirt network's DHCP leases or ARP table, or (user-mode networking) the
//! forward of the guest port on this host's loopback. Behind such a forward QEMU
//! itself accepts every connection for the guest, so there a connection counts only
//! once QEMU's network stack shows the guest completed the handshake (the monitor's
//! `info usernet`).

use proto::agent::{CommandOutcome, Executed, FailureKind};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use topology::VmId;

use tokio::net::TcpStream;
use topology::spec::PortForward;

use super::{Resources, hv};
use crate::config::GuestNetwork;
use crate::domain_xml;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between two rounds of attempts.
const RETRY: Duration = Duration::from_millis(250);
/// How long a connection through a user-mode forward may wait for the guest's side
/// of the handshake before the round counts as failed.
const GUEST_HANDSHAKE: Duration = Duration::from_millis(1500);

/// Wait for `marker` on the VM's serial console after `mark`: where the log stood at
/// its latest start here (0, the whole log, when this agent did not start it).
pub(super) async fn console(
    res: &Resources,
    vm: &str,
    mark: u64,
    marker: &str,
    timeout_s: u32,
) -> Executed {
    let path = res.paths.consoles_dir.join(format!("{vm}.log"));
    let started = Instant::now();
    let deadline = Duration::from_secs(u64::from(timeout_s));
    loop {
        let text = std::fs::read(&path).unwrap_or_default();
        let since = text
            .get(usize::try_from(mark).unwrap_or(usize::MAX)..)
            .unwrap_or(&[]);
        let since = String::from_utf8_lossy(since);
        if since.contains(marker) {
            return Executed::done(CommandOutcome::Probed {
                domain: vm.to_string(),
                marker: marker.to_string(),
                after_ms: ms(started),
            });
        }
        if started.elapsed() >= deadline {
            let last = since
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Executed::failed(
                FailureKind::Failed,
                format!(
                    "{vm}: {marker:?} did not appear on the serial console within {timeout_s} s (last line: {:?}); see {}",
                    last.chars().take(200).collect::<String>(),
                    path.display()
                ),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where one round of a tcp probe connects.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// Connect to these; a connection counts when it is accepted.
    Direct { addrs: Vec<SocketAddr>, how: String },
    /// The guest port's forward on this host's loopback (user-mode networking).
    Forward(PortForward),
}

/// Why a round found nowhere to connect: `Retry` may change (DNS, a lease not given
/// out yet); `Never` will not while the VM runs as it is defined.
enum NoTarget {
    Retry(String),
    Never(String),
}

/// Connect to `port` of `vm` until a connection is accepted or `timeout_s` passes.
pub(super) async fn tcp(
    res: &Resources,
    vm_id: &VmId,
    port: u16,
    address: Option<&str>,
    timeout_s: u32,
) -> Executed {
    let vm = vm_id.as_str();
    let started = Instant::now();
    let deadline = Duration::from_secs(u64::from(timeout_s));
    loop {
        let last = match target(res, vm, port, address).await {
            Err(NoTarget::Never(why)) => {
                return Executed::failed(
                    FailureKind::Failed,
                    format!("{vm}: tcp probe of port {port}: {why}"),
                );
            }
            Err(NoTarget::Retry(why)) => why,
            Ok(t) => match attempt(res, vm, &t).await {
                Ok(how) => {
                    return Executed::done(CommandOutcome::TcpProbed {
                        vm: vm_id.clone(),
                        target: how,
                        after_ms: ms(started),
                    });
                }
                Err(why) => why,
            },
        };
        if started.elapsed() >= deadline {
            return Executed::failed(
                FailureKind::Failed,
                format!(
                    "{vm}: tcp port {port} did not accept a connection within {timeout_s} s (last: {last})"
                ),
            );
        }
        tokio::time::sleep(RETRY).await;
    }
}

async fn target(
    res: &Resources,
    vm: &str,
    port: u16,
    address: Option<&str>,
) -> Result<Target, NoTarget> {
    if let Some(a) = address {
        return match tokio::net::lookup_host((a, port)).await {
            Ok(addrs) => Ok(Target::Direct {
                addrs: addrs.collect(),
                how: format!("{a}:{port}"),
            }),
            Err(e) => Err(NoTarget::Retry(format!("cannot resolve {a}: {e}"))),
        };
    }
    let name = vm.to_string();
    match &res.cfg.guest_network {
        GuestNetwork::None => Err(NoTarget::Never(
            "the probe names no address and this host's VMs have no network (guest_network = \"none\" in the agent config): give the probe an `address`, or set guest_network".into(),
        )),
        GuestNetwork::User => {
            let xml = hv(res, move |h| h.xml(&name))
                .await
                .map_err(|e| NoTarget::Retry(e.to_string()))?;
            domain_xml::user_forwards(&xml)
                .into_iter()
                .find(|f| f.guest == port)
                .map(Target::Forward)
                .ok_or_else(|| {
                    NoTarget::Never(format!(
                        "the VM has no forward of guest port {port} (it was defined without this probe: define it again)"
                    ))
                })
        }
        GuestNetwork::Network(net) => {
            let ips = hv(res, move |h| h.addresses(&name))
                .await
                .map_err(|e| NoTarget::Retry(e.to_string()))?;
            if ips.is_empty() {
                return Err(NoTarget::Retry(format!(
                    "libvirt knows no address of the VM on {net} yet (no DHCP lease, not in the ARP table)"
                )));
            }
            let how = ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            Ok(Target::Direct {
                addrs: ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect(),
                how: format!("{how} port {port} (from libvirt, network {net})"),
            })
        }
    }
}

/// One round: Ok with what accepted, or why nothing did.
async fn attempt(res: &Resources, vm: &str, t: &Target) -> Result<String, String> {
    match t {
        Target::Direct { addrs, how } => {
            let mut why = format!("{how}: no address");
            for a in addrs {
                match connect(*a).await {
                    Ok(_) => return Ok(a.to_string()),
                    Err(e) => why = format!("{a}: {e}"),
                }
            }
            Err(why)
        }
        Target::Forward(f) => {
            let a = SocketAddr::from(([127, 0, 0, 1], f.host));
            let stream = connect(a).await.map_err(|e| format!("{a}: {e}"))?;
            let waited = Instant::now();
            loop {
                // The guest refused: QEMU closes our side.
                let mut byte = [0u8; 1];
                match stream.try_read(&mut byte) {
                    Ok(0) => {
                        return Err(format!(
                            "{a} (guest port {}): the guest refused the connection",
                            f.guest
                        ));
                    }
                    Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
                        return Err(format!("{a} (guest port {}): {e}", f.guest));
                    }
                    _ => {}
                }
                let name = vm.to_string();
                let info = hv(res, move |h| h.usernet(&name))
                    .await
                    .map_err(|e| format!("cannot ask QEMU about its user-mode network: {e}"))?;
                if guest_established(&info, f.guest) > 0 {
                    return Ok(format!(
                        "{a} (guest port {} behind QEMU's user-mode forward; the guest completed the handshake)",
                        f.guest
                    ));
                }
                if waited.elapsed() >= GUEST_HANDSHAKE {
                    return Err(format!(
                        "{a} (guest port {}): QEMU accepted for the guest, but the guest did not complete the handshake",
                        f.guest
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connect(a: SocketAddr) -> Result<TcpStream, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(a)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no answer within {} ms",
            CONNECT_TIMEOUT.as_millis()
        )),
    }
}

/// How many TCP connections to `guest_port` QEMU's user-mode stack holds established
/// with the guest, from the monitor's `info usernet` table:
///
/// ```text
///   Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
///   TCP[HOST_FORWARD]  13       127.0.0.1 41001       10.0.2.15    80     0     0
///   TCP[ESTABLISHED]   15       127.0.0.1 41001       10.0.2.15    80     0     0
/// ```
fn guest_established(info: &str, guest_port: u16) -> usize {
    info.lines()
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() >= 6
                && cols[0] == "TCP[ESTABLISHED]"
                && cols[5].parse::<u16>() == Ok(guest_port)
        })
        .count()
}

fn ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "Hub -1 (mdrnet0):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  TCP[HOST_FORWARD]  13       127.0.0.1 41001       10.0.2.15    80     0     0
  TCP[HOST_FORWARD]  14       127.0.0.1 41002       10.0.2.15  5432     0     0
  TCP[SYN_SENT]      16       127.0.0.1 41002       10.0.2.15  5432     0     0
  TCP[ESTABLISHED]   15       127.0.0.1 41001       10.0.2.15    80     0     0
";

    #[test]
    fn only_established_connections_to_the_guest_port_count() {
        assert_eq!(guest_established(INFO, 80), 1);
        // A forward alone, or a handshake the guest has not answered, is not the guest.
        assert_eq!(guest_established(INFO, 5432), 0);
        assert_eq!(guest_established(INFO, 22), 0);
        assert_eq!(guest_established("", 80), 0);
        assert_eq!(guest_established("TCP[ESTABLISHED] garbage", 80), 0);
    }
}
