//! What `ip -json` says, as types: links with their operational state, IPv4 addresses
//! and routes. The lab reads the machine's state only through these (never by
//! searching `ip`'s human output), so a change in iproute2's wording cannot change a
//! decision.
//!
//! Pure: parsing only; [`super::shell`] runs the commands.

use std::net::Ipv4Addr;

use serde::Deserialize;

/// One entry of `ip -json link show`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Link {
    #[serde(rename = "ifname")]
    pub name: String,
    #[serde(default)]
    pub operstate: OperState,
}

/// A link's operational state (RFC 2863), as the kernel reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperState {
    Up,
    Down,
    LowerLayerDown,
    Dormant,
    Testing,
    NotPresent,
    /// Loopback and links whose driver does not report a state.
    #[default]
    #[serde(other)]
    Unknown,
}

/// `ip -json link show` output.
pub fn links(json: &str) -> Result<Vec<Link>, serde_json::Error> {
    serde_json::from_str(json)
}

#[derive(Debug, Deserialize)]
struct AddrLink {
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Debug, Deserialize)]
struct AddrInfo {
    family: Family,
    local: Option<String>,
    prefixlen: Option<u8>,
}

/// An address's family, as the JSON format names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Family {
    Inet,
    #[serde(other)]
    Other,
}

/// The IPv4 networks (address, prefix length) of `ip -json -4 addr show` output.
pub fn ipv4_addrs(json: &str) -> Result<Vec<(Ipv4Addr, u8)>, serde_json::Error> {
    let links: Vec<AddrLink> = serde_json::from_str(json)?;
    Ok(links
        .iter()
        .flat_map(|l| &l.addr_info)
        .filter(|a| a.family == Family::Inet)
        .filter_map(|a| {
            let addr = a.local.as_deref()?.parse::<Ipv4Addr>().ok()?;
            let len = a.prefixlen.filter(|l| *l <= 32)?;
            Some((addr, len))
        })
        .collect())
}

#[derive(Debug, Deserialize)]
struct Route {
    dst: String,
}

/// The destinations of `ip -json -4 route show` output, as networks. `default` (the
/// JSON format's keyword for 0.0.0.0/0) is left out: it is no network of its own.
pub fn ipv4_routes(json: &str) -> Result<Vec<(Ipv4Addr, u8)>, serde_json::Error> {
    let routes: Vec<Route> = serde_json::from_str(json)?;
    Ok(routes.iter().filter_map(|r| parse_cidr(&r.dst)).collect())
}

/// `a.b.c.d/len` or a host address `a.b.c.d` (a /32).
pub fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, len.parse::<u8>().ok()?),
        None => (text, 32),
    };
    let addr = addr.parse::<Ipv4Addr>().ok()?;
    (len <= 32).then_some((addr, len))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Trimmed from iproute2 6.1 on Debian 12.
    const LINKS: &str = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"operstate":"UNKNOWN","link_type":"loopback"},
        {"ifindex":7,"link":"mdrabcdew","ifname":"mdrabcdeh","flags":["BROADCAST","UP"],"operstate":"UP","link_netnsid":0},
        {"ifindex":9,"ifname":"mdrabcdebr","flags":[],"operstate":"DOWN"},
        {"ifindex":10,"ifname":"x","operstate":"LOWERLAYERDOWN"}]"#;

    #[test]
    fn links_carry_their_operational_state() {
        let l = links(LINKS).unwrap();
        let names: Vec<&str> = l.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["lo", "mdrabcdeh", "mdrabcdebr", "x"]);
        assert_eq!(l[0].operstate, OperState::Unknown);
        assert_eq!(l[1].operstate, OperState::Up);
        assert_eq!(l[2].operstate, OperState::Down);
        // An unfamiliar spelling is not Up: a wait keeps waiting rather than guessing.
        assert_eq!(l[3].operstate, OperState::Unknown);
        assert!(links("not json").is_err());
    }

    #[test]
    fn addresses_and_routes_become_networks() {
        let addr = r#"[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
            {"ifindex":4,"ifname":"eth0","addr_info":[{"family":"inet","local":"10.201.7.9","prefixlen":24},
            {"family":"inet6","local":"fe80::1","prefixlen":64}]},{"ifindex":5,"ifname":"y"}]"#;
        assert_eq!(
            ipv4_addrs(addr).unwrap(),
            vec![
                (Ipv4Addr::new(127, 0, 0, 1), 8),
                (Ipv4Addr::new(10, 201, 7, 9), 24)
            ]
        );
        let route = r#"[{"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]},
            {"dst":"10.202.0.0/16","dev":"x","flags":[]},{"dst":"10.203.4.5","dev":"y","flags":[]}]"#;
        assert_eq!(
            ipv4_routes(route).unwrap(),
            vec![
                (Ipv4Addr::new(10, 202, 0, 0), 16),
                (Ipv4Addr::new(10, 203, 4, 5), 32)
            ]
        );
        assert_eq!(ipv4_addrs("[]").unwrap(), vec![]);
        assert!(ipv4_routes("{").is_err());
    }

    #[test]
    fn cidrs_parse_or_are_refused() {
        assert_eq!(
            parse_cidr("10.0.0.0/24"),
            Some((Ipv4Addr::new(10, 0, 0, 0), 24))
        );
        assert_eq!(
            parse_cidr("10.0.0.1"),
            Some((Ipv4Addr::new(10, 0, 0, 1), 32))
        );
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        assert_eq!(parse_cidr("default"), None);
    }
}
