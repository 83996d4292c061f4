//! Pure decisions for the netns lab: names, subnets, fault rules and the on-disk record.
//!
//! Nothing here runs a command or touches a file; [`super`] is the thin shell that acts
//! on these decisions. Keeping them here lets unit tests cover every choice without root.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// First three characters of every lab tag, so `ip netns list` and `ip link` show at a
/// glance which names belong to metrodr labs.
pub const TAG_PREFIX: &str = "mdr";

/// Random characters after [`TAG_PREFIX`]. 36^5 ≈ 60 million tags; with the longest
/// link name `<tag>v<i>` this stays within Linux's 15-byte interface names for up to
/// [`MAX_NODES`] nodes (8 + 1 + 3 = 12 bytes).
const TAG_RANDOM_CHARS: u32 = 5;

/// Addresses .2 ..= .254 of one /24 go to nodes (.1 is the bridge, .255 broadcast).
pub const MAX_NODES: usize = 253;

/// Longest node part of a namespace name. Namespace names are file names under
/// /run/netns, so the kernel limit is far away; this keeps `ip netns list` readable.
const NODE_PART_MAX: usize = 24;

/// Labs live in 10.200.0.0 – 10.255.255.255: 56 × 256 = 14,336 possible /24s, far
/// from the 10.0.x/10.1.x ranges that home routers and cloud VPCs like to use.
const SECOND_OCTET_FIRST: u64 = 200;
const SECOND_OCTET_COUNT: u64 = 56;

/// A lab's /24, written as its two middle octets: 10.`0`.`1`.0/24.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subnet(pub [u8; 2]);

impl Subnet {
    /// The address of host `host` (1 ..= 254) inside this /24.
    pub fn host(self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.0[0], self.0[1], host)
    }

    /// The root-namespace side of the lab: the bridge's address.
    pub fn bridge(self) -> Ipv4Addr {
        self.host(1)
    }

    /// Node `index` (0-based, in creation order) gets .`index + 2`.
    pub fn node(self, index: usize) -> Ipv4Addr {
        assert!(index < MAX_NODES, "node index {index} beyond one /24");
        // The assert above keeps index + 2 within 2 ..= 254.
        self.host(u8::try_from(index + 2).unwrap_or(u8::MAX))
    }

    pub fn network(self) -> Ipv4Addr {
        self.host(0)
    }

    /// Name of the cross-process reservation file for this subnet.
    pub fn reservation_name(self) -> String {
        format!("net-10.{}.{}", self.0[0], self.0[1])
    }
}

/// splitmix64: spreads (pid, counter, attempt) over the whole u64 so that neighbouring
/// pids and counters land far apart in the tag and subnet spaces.
pub fn mix(pid: u32, counter: u64, attempt: u64) -> u64 {
    let mut z = (u64::from(pid) << 32)
        ^ counter.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ attempt.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `mdr` + 5 base-36 characters.
pub fn tag_from(hash: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rest = hash % 36u64.pow(TAG_RANDOM_CHARS);
    let mut tag = String::from(TAG_PREFIX);
    for _ in 0..TAG_RANDOM_CHARS {
        let digit = usize::try_from(rest % 36).unwrap_or(0);
        tag.push(char::from(DIGITS[digit]));
        rest /= 36;
    }
    tag
}

pub fn subnet_from(hash: u64) -> Subnet {
    let second = SECOND_OCTET_FIRST + hash % SECOND_OCTET_COUNT;
    let third = (hash >> 8) % 256;
    Subnet([
        u8::try_from(second).unwrap_or(u8::MAX),
        u8::try_from(third).unwrap_or(0),
    ])
}

pub fn bridge_name(tag: &str) -> String {
    format!("{tag}br")
}

/// The WAN namespace, which holds the bridge. Node names are sanitised to
/// `[A-Za-z0-9_-]`, so no node namespace can be called this.
pub fn wan_ns(tag: &str) -> String {
    format!("{tag}.wan")
}

/// The harness's end, in the root namespace, of the veth pair into the WAN (it holds
/// the bridge address).
pub fn harness_veth(tag: &str) -> String {
    format!("{tag}h")
}

/// The WAN end of the harness's veth pair (enslaved to the bridge).
pub fn harness_wan_veth(tag: &str) -> String {
    format!("{tag}w")
}

/// WAN-namespace end of node `index`'s veth pair (enslaved to the bridge).
pub fn host_veth(tag: &str, index: usize) -> String {
    format!("{tag}v{index}")
}

/// Namespace end of node `index`'s veth pair.
pub fn ns_veth(tag: &str, index: usize) -> String {
    format!("{tag}p{index}")
}

/// Namespace names `<tag>-<node>` for `nodes`, in order. Node names are sanitised to
/// `[A-Za-z0-9_-]` and truncated; when two names collide after that, the later one
/// gets its index appended, so the mapping stays one-to-one.
pub fn ns_names(tag: &str, nodes: &[&str]) -> Result<Vec<String>, String> {
    if nodes.is_empty() {
        return Err("a lab needs at least one node".into());
    }
    if nodes.len() > MAX_NODES {
        return Err(format!(
            "{} nodes given but one /24 holds at most {MAX_NODES}",
            nodes.len()
        ));
    }
    let mut seen_nodes = BTreeSet::new();
    let mut taken = BTreeSet::new();
    let mut names = Vec::with_capacity(nodes.len());
    for (index, node) in nodes.iter().enumerate() {
        if node.is_empty() {
            return Err(format!("node #{index} has an empty name"));
        }
        if !seen_nodes.insert(*node) {
            return Err(format!("node {node:?} is listed twice"));
        }
        let clean: String = node
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(NODE_PART_MAX)
            .collect();
        let mut name = format!("{tag}-{clean}");
        if !taken.insert(name.clone()) {
            let short: String = clean.chars().take(NODE_PART_MAX - 4).collect();
            name = format!("{tag}-{short}-{index}");
            taken.insert(name.clone());
        }
        names.push(name);
    }
    Ok(names)
}

/// The effective capability set from /proc/PID/status text: the `CapEff` field, a
/// 64-bit hexadecimal mask (proc(5)). None when the field is missing or malformed.
pub fn effective_capabilities(status: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == "CapEff")
            .then(|| u64::from_str_radix(value.trim(), 16).ok())
            .flatten()
    })
}

/// Whether `subnet` clashes with a network already on the host. Networks of /16 or
/// narrower clash when they overlap. Broader ones (a VPN's 10.0.0.0/8) clash only if
/// their own address lies inside `subnet`: our /24 route is more specific and wins,
/// and refusing every candidate under a /8 would make labs impossible on such hosts.
pub fn clashes(subnet: Subnet, existing: &[(Ipv4Addr, u8)]) -> bool {
    let ours = u32::from(subnet.network());
    existing.iter().any(|&(addr, len)| {
        let theirs = u32::from(addr);
        let compare_len = if len >= 16 { len.min(24) } else { 24 };
        let mask = u32::MAX << (32 - u32::from(compare_len));
        theirs & mask == ours & mask
    })
}

/// Which pairs of nodes (by index) may not talk. Both ends of a blocked pair drop the
/// other's traffic, so a heal on either node fully restores the pair. A one-way block
/// (`from`, `to`) drops only what `from` sends to `to` (an asymmetric partition: `to`
/// still reaches `from`, though TCP to it stalls without its replies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    blocked: BTreeSet<(usize, usize)>,
    one_way: BTreeSet<(usize, usize)>,
}

impl Faults {
    pub fn block(&mut self, a: usize, b: usize) {
        if a != b {
            self.blocked.insert((a.min(b), a.max(b)));
        }
    }

    /// Blocks `node` from every node in `0..node_count` except itself.
    pub fn isolate(&mut self, node: usize, node_count: usize) {
        for other in 0..node_count {
            self.block(node, other);
        }
    }

    /// Drops what `from` sends to `to`, not the reverse.
    pub fn block_one_way(&mut self, from: usize, to: usize) {
        if from != to {
            self.one_way.insert((from, to));
        }
    }

    pub fn heal(&mut self, node: usize) {
        self.blocked.retain(|&(a, b)| a != node && b != node);
        self.one_way.retain(|&(a, b)| a != node && b != node);
    }

    pub fn clear(&mut self) {
        self.blocked.clear();
        self.one_way.clear();
    }

    /// Nodes whose packets `node` must drop on arrival only (one-way blocks towards
    /// it that a two-way block does not already cover), ascending.
    pub fn dropped_senders(&self, node: usize) -> Vec<usize> {
        let both = self.blocked_peers(node);
        self.one_way
            .iter()
            .filter(|&&(from, to)| to == node && !both.contains(&from))
            .map(|&(from, _)| from)
            .collect()
    }

    /// Nodes whose traffic `node` must drop, ascending.
    pub fn blocked_peers(&self, node: usize) -> Vec<usize> {
        self.blocked
            .iter()
            .filter_map(|&(a, b)| match (a == node, b == node) {
                (true, _) => Some(b),
                (_, true) => Some(a),
                _ => None,
            })
            .collect()
    }

    /// Nodes whose rule set differs between `self` and `next`: only those need their
    /// chain rewritten.
    pub fn changed_nodes(&self, next: &Faults, node_count: usize) -> Vec<usize> {
        (0..node_count)
            .filter(|&n| {
                self.blocked_peers(n) != next.blocked_peers(n)
                    || self.dropped_senders(n) != next.dropped_senders(n)
            })
            .collect()
    }
}

/// iptables argument lists that fill an (already flushed) fault chain so that it drops
/// everything from and to `peers`, and what arrives from `senders`. The bridge address
/// is never among them, which is what keeps an isolated node reachable from the
/// harness.
///
/// Connections an iptables `REDIRECT` sent to a link proxy in the node (conntrack
/// state DNAT) are never dropped: both ends are in the node, and the reply, whose
/// source is rewritten to the peer's address, would otherwise match the peer's rule.
/// The proxy's own connection to the peer is filtered like any other.
pub fn fault_rules(chain: &str, peers: &[Ipv4Addr], senders: &[Ipv4Addr]) -> Vec<Vec<String>> {
    let mut rules = Vec::with_capacity(peers.len() * 2 + senders.len() + 1);
    if !peers.is_empty() || !senders.is_empty() {
        rules.push(
            [
                "-w",
                "-A",
                chain,
                "-m",
                "conntrack",
                "--ctstate",
                "DNAT",
                "-j",
                "RETURN",
            ]
            .map(String::from)
            .to_vec(),
        );
    }
    let pairs = peers
        .iter()
        .flat_map(|p| [(p, "-s"), (p, "-d")])
        .chain(senders.iter().map(|p| (p, "-s")));
    for (peer, direction) in pairs {
        rules.push(
            [
                "-w",
                "-A",
                chain,
                direction,
                &format!("{peer}/32"),
                "-j",
                "DROP",
            ]
            .map(String::from)
            .to_vec(),
        );
    }
    rules
}

/// The nat rule, inside a node's namespace, that sends its new TCP connections to
/// `dest` (except to `except_port`, and except sockets marked `mark`, the proxy's own)
/// to `port` on its loopback, where a transparent link proxy listens.
pub fn redirect_rule(dest: Ipv4Addr, except_port: u16, mark: u32, port: u16) -> Vec<String> {
    [
        "-w",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-d",
        &format!("{dest}/32"),
        "!",
        "--dport",
        &except_port.to_string(),
        "-m",
        "mark",
        "!",
        "--mark",
        &format!("{mark:#x}"),
        "-j",
        "REDIRECT",
        "--to-ports",
        &port.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// Version of the lab record format (files `<tag>.lab` in the state directory);
/// records of any other version are refused, never guessed at.
pub const RECORD_VERSION: u32 = 1;
const RECORD_MAGIC: &str = "metrodr-lab-record";

/// What a lab wrote down about itself in its state file before creating anything, so
/// that `cleanup_stale` can remove exactly those names after the creator crashed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub pid: u32,
    /// Start time of `pid` (field 22 of `/proc/<pid>/stat`): tells a reused pid apart.
    pub starttime: u64,
    pub subnet: Option<Subnet>,
    /// A root-namespace bridge: only labs made before the WAN namespace had one.
    pub bridge: Option<String>,
    pub netns: Vec<String>,
    /// Root-namespace veth ends.
    pub links: Vec<String>,
}

impl Record {
    pub fn encode(&self) -> String {
        let mut out = format!(
            "{RECORD_MAGIC} {RECORD_VERSION}\npid {}\nstarttime {}\n",
            self.pid, self.starttime
        );
        if let Some(Subnet([a, b])) = self.subnet {
            out.push_str(&format!("subnet 10.{a}.{b}.0/24\n"));
        }
        if let Some(bridge) = &self.bridge {
            out.push_str(&format!("bridge {bridge}\n"));
        }
        for ns in &self.netns {
            out.push_str(&format!("netns {ns}\n"));
        }
        for link in &self.links {
            out.push_str(&format!("link {link}\n"));
        }
        out
    }

    pub fn decode(text: &str) -> Result<Record, String> {
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        if header != format!("{RECORD_MAGIC} {RECORD_VERSION}") {
            return Err(format!(
                "first line is {header:?}, expected \"{RECORD_MAGIC} {RECORD_VERSION}\""
            ));
        }
        let mut record = Record::default();
        let (mut pid, mut starttime) = (None, None);
        for line in lines.filter(|l| !l.trim().is_empty()) {
            let (key, value) = line
                .split_once(' ')
                .ok_or_else(|| format!("line {line:?} has no value"))?;
            let bad = || format!("bad {key} {value:?}");
            match key {
                "pid" => pid = Some(value.parse().map_err(|_| bad())?),
                "starttime" => starttime = Some(value.parse().map_err(|_| bad())?),
                "subnet" => {
                    let (net, len) = super::iproute::parse_cidr(value).ok_or_else(bad)?;
                    let [ten, a, b, zero] = net.octets();
                    if (ten, zero, len) != (10, 0, 24) {
                        return Err(bad());
                    }
                    record.subnet = Some(Subnet([a, b]));
                }
                "bridge" => record.bridge = Some(checked_name(value)?),
                "netns" => record.netns.push(checked_name(value)?),
                "link" => record.links.push(checked_name(value)?),
                _ => return Err(format!("unknown key {key:?}")),
            }
        }
        record.pid = pid.ok_or("no pid line")?;
        record.starttime = starttime.ok_or("no starttime line")?;
        Ok(record)
    }
}

/// Every name a lab creates starts with [`TAG_PREFIX`]; a record naming anything else
/// was not written by us, and acting on it could delete someone else's interface.
fn checked_name(name: &str) -> Result<String, String> {
    // A WAN namespace is `<tag>.wan` ([`wan_ns`]); nothing else has a dot.
    let stem = name.strip_suffix(".wan").unwrap_or(name);
    let plain = stem
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if name.starts_with(TAG_PREFIX) && plain {
        Ok(name.to_string())
    } else {
        Err(format!("name {name:?} is not one a lab creates"))
    }
}

/// Field 22 (starttime) of a `/proc/<pid>/stat` line. The command name (field 2) may
/// contain spaces and parentheses, so fields are counted after its last ')'.
pub fn starttime_from_stat(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // after_comm starts at field 3 (state); starttime is field 22.
    after_comm.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Whether a `/proc/<pid>/stat` line is of a process that has exited (a zombie no one
/// reaped yet, e.g. under a container's init that does not reap, or dead).
pub fn exited_from_stat(stat: &str) -> bool {
    let Some(i) = stat.rfind(')') else {
        return false;
    };
    matches!(
        stat[i + 1..].split_whitespace().next(),
        Some("Z" | "X" | "x")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_short_prefixed_and_spread() {
        let tags: BTreeSet<String> = (0..1000).map(|c| tag_from(mix(4242, c, 0))).collect();
        assert_eq!(tags.len(), 1000, "1000 counters should give 1000 tags");
        for tag in &tags {
            assert_eq!(tag.len(), 8);
            assert!(tag.starts_with(TAG_PREFIX));
            // The longest interface name must fit Linux's 15 bytes.
            assert!(host_veth(tag, MAX_NODES - 1).len() <= 15);
            assert!(ns_veth(tag, MAX_NODES - 1).len() <= 15);
            assert!(bridge_name(tag).len() <= 15);
            assert!(harness_veth(tag).len() <= 15);
            assert!(harness_wan_veth(tag).len() <= 15);
            assert!(ns_names(tag, &["wan"]).unwrap()[0] != wan_ns(tag));
        }
    }

    #[test]
    fn subnets_stay_in_the_lab_range() {
        for attempt in 0..5000 {
            let Subnet([a, _]) = subnet_from(mix(1, 2, attempt));
            assert!((200..=255).contains(&a), "second octet {a}");
        }
        let s = Subnet([201, 7]);
        assert_eq!(s.bridge(), Ipv4Addr::new(10, 201, 7, 1));
        assert_eq!(s.node(0), Ipv4Addr::new(10, 201, 7, 2));
        assert_eq!(s.node(MAX_NODES - 1), Ipv4Addr::new(10, 201, 7, 254));
        assert_eq!(s.reservation_name(), "net-10.201.7");
    }

    #[test]
    fn ns_names_are_sanitised_unique_and_refuse_bad_lists() {
        let long = "site-paris/primary host.with-a-very-long-name";
        let names = ns_names("mdrabcde", &["a", long, "x y", "x/y"]).unwrap();
        assert_eq!(names[0], "mdrabcde-a");
        assert_eq!(names[1], "mdrabcde-site-paris_primary_host_");
        assert_eq!(names[2], "mdrabcde-x_y");
        assert_eq!(names[3], "mdrabcde-x_y-3");
        assert!(ns_names("t", &[]).is_err());
        assert!(ns_names("t", &["a", "a"]).is_err());
        assert!(ns_names("t", &[""]).is_err());
        let many: Vec<String> = (0..=MAX_NODES).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(ns_names("t", &many).is_err());
    }

    #[test]
    fn a_lab_subnet_avoids_the_hosts_networks() {
        let addrs = [
            (Ipv4Addr::new(127, 0, 0, 1), 8),
            (Ipv4Addr::new(10, 201, 7, 9), 24),
        ];
        let routes = [
            (Ipv4Addr::new(10, 202, 0, 0), 16),
            (Ipv4Addr::new(10, 203, 4, 5), 32),
        ];
        assert!(clashes(Subnet([201, 7]), &addrs));
        assert!(!clashes(Subnet([201, 8]), &addrs));
        assert!(clashes(Subnet([202, 99]), &routes), "inside a /16");
        assert!(clashes(Subnet([203, 4]), &routes), "a host route inside");
        assert!(!clashes(Subnet([203, 5]), &routes));
        // A VPN's 10/8 does not block every lab, only the /24 holding its address.
        let vpn = [(Ipv4Addr::new(10, 210, 0, 1), 8)];
        assert!(!clashes(Subnet([201, 7]), &vpn));
        assert!(clashes(Subnet([210, 0]), &vpn));
    }

    #[test]
    fn faults_are_symmetric_and_heal_per_node() {
        let mut f = Faults::default();
        f.isolate(0, 3);
        assert_eq!(f.blocked_peers(0), vec![1, 2]);
        assert_eq!(f.blocked_peers(1), vec![0]);
        let before = f.clone();
        f.heal(0);
        assert_eq!(f, Faults::default());
        assert_eq!(before.changed_nodes(&f, 3), vec![0, 1, 2]);
        f.block(1, 2);
        f.block(2, 2);
        assert_eq!(f.blocked_peers(2), vec![1]);
        assert_eq!(Faults::default().changed_nodes(&f, 3), vec![1, 2]);
        f.heal(2);
        assert_eq!(f, Faults::default());
    }

    #[test]
    fn one_way_blocks_drop_only_at_the_receiver_and_heal_from_either_end() {
        let mut f = Faults::default();
        f.block_one_way(0, 1);
        f.block_one_way(2, 2);
        assert_eq!(f.dropped_senders(1), vec![0]);
        assert_eq!(f.dropped_senders(0), Vec::<usize>::new());
        assert_eq!(f.blocked_peers(1), Vec::<usize>::new());
        assert_eq!(Faults::default().changed_nodes(&f, 3), vec![1]);
        // A two-way block covers it: no second rule.
        f.block(0, 1);
        assert_eq!(f.dropped_senders(1), Vec::<usize>::new());
        f.heal(0);
        assert_eq!(f, Faults::default());
        f.block_one_way(0, 1);
        f.heal(1);
        assert_eq!(f, Faults::default());
    }

    #[test]
    fn the_redirect_spares_the_proxy_and_the_excepted_port() {
        let rule = redirect_rule(Ipv4Addr::new(10, 200, 0, 3), 7400, 0x4d44, 41234).join(" ");
        assert_eq!(
            rule,
            "-w -t nat -A OUTPUT -p tcp -d 10.200.0.3/32 ! --dport 7400 -m mark ! --mark 0x4d44 -j REDIRECT --to-ports 41234"
        );
    }

    #[test]
    fn fault_rules_drop_both_directions_per_peer() {
        assert!(fault_rules("MDR-FAULT", &[], &[]).is_empty());
        let rules = fault_rules(
            "MDR-FAULT",
            &[Ipv4Addr::new(10, 200, 0, 3)],
            &[Ipv4Addr::new(10, 200, 0, 4)],
        );
        let lines: Vec<String> = rules.iter().map(|r| r.join(" ")).collect();
        assert_eq!(
            lines,
            vec![
                "-w -A MDR-FAULT -m conntrack --ctstate DNAT -j RETURN",
                "-w -A MDR-FAULT -s 10.200.0.3/32 -j DROP",
                "-w -A MDR-FAULT -d 10.200.0.3/32 -j DROP",
                "-w -A MDR-FAULT -s 10.200.0.4/32 -j DROP"
            ]
        );
    }

    #[test]
    fn record_round_trips_and_pins_its_version() {
        let record = Record {
            pid: 77,
            starttime: 123456,
            subnet: Some(Subnet([250, 3])),
            bridge: Some("mdrabcdebr".into()),
            netns: vec!["mdrabcde.wan".into(), "mdrabcde-a".into()],
            links: vec!["mdrabcdev0".into()],
        };
        let text = record.encode();
        assert!(text.starts_with("metrodr-lab-record 1\n"), "{text}");
        assert_eq!(Record::decode(&text), Ok(record));
        assert!(Record::decode("metrodr-lab-record 2\npid 1\nstarttime 1\n").is_err());
        assert!(Record::decode("metrodr-lab-record 1\npid 1\n").is_err());
        // Never accept a name we would not have created: cleanup would delete it.
        let foreign = "metrodr-lab-record 1\npid 1\nstarttime 1\nlink eth0\n";
        assert!(Record::decode(foreign).is_err());
        // Only `.wan` may follow a tag's name after a dot.
        for odd in ["mdrabcde.evil", "mdrabcde.wan.wan", "mdr/../x.wan"] {
            let t = format!("metrodr-lab-record 1\npid 1\nstarttime 1\nnetns {odd}\n");
            assert!(Record::decode(&t).is_err(), "{odd}");
        }
    }

    #[test]
    fn capabilities_come_from_the_capeff_mask() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_capabilities(status), Some(0x1ff_ffff_ffff));
        let none = "CapEff:\t0000000000003000\n";
        let caps = effective_capabilities(none).unwrap();
        assert_ne!(caps & (1 << 12), 0, "CAP_NET_ADMIN");
        assert_eq!(caps & (1 << 21), 0, "no CAP_SYS_ADMIN");
        assert_eq!(effective_capabilities("CapEff:\tzz\n"), None);
        assert_eq!(effective_capabilities("Name:\tx\n"), None);
    }

    #[test]
    fn a_zombie_counts_as_exited() {
        assert!(exited_from_stat("42 (metrodr) Z 1 42 42 0 -1 4194560"));
        assert!(!exited_from_stat("42 (metrodr) S 1 42 42 0 -1 4194560"));
        assert!(!exited_from_stat("42 (a) Z) R 1 42"));
        assert!(!exited_from_stat("garbage"));
    }

    #[test]
    fn starttime_survives_odd_command_names() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                    1000 10 18446744073709551615";
        assert_eq!(starttime_from_stat(stat), Some(987654));
        assert_eq!(starttime_from_stat("garbage"), None);
    }
}
