//! Real network namespaces, real TCP, real iptables: no mocks. Needs root, iproute2 and
//! iptables; without them every test fails with a banner saying so (never a silent
//! skip, which would let CI pass without testing anything).

// clippy.toml allows unwrap in #[test] functions only; the helpers below are test code
// too, and a panic there is the test failure we want.
#![allow(clippy::unwrap_used)]

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use chaos::netns::{self, LabError, NetLab, STATE_DIR};

/// Long enough for a SYN/SYN-ACK on a loaded machine, short enough that a blocked
/// connect (its SYN dropped) fails fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Deadline for an accepted connection and its first byte to show up.
const ACCEPT_DEADLINE: Duration = Duration::from_secs(5);

fn require_lab_machine() {
    if let Err(e) = netns::preflight() {
        let bar = "#".repeat(78);
        eprintln!(
            "\n{bar}\n# chaos netns tests CANNOT RUN on this machine:\n#   {e}\n\
             # They build real network namespaces: run them as root with iproute2 and\n\
             # iptables installed (bash scripts/install-deps.sh). Failing, not skipping.\n\
             {bar}\n"
        );
        panic!("netns lab preflight failed: {e}");
    }
}

fn lab(nodes: &[&str]) -> NetLab {
    require_lab_machine();
    NetLab::create(nodes).unwrap_or_else(|e| panic!("creating lab {nodes:?}: {e}"))
}

/// A listener bound in `node`'s namespace on its address and an OS-chosen port.
fn listen(lab: &NetLab, node: &str) -> (TcpListener, SocketAddr) {
    let addr = lab.addr(node);
    let listener = lab
        .in_ns(node, || TcpListener::bind((addr, 0)))
        .unwrap()
        .unwrap();
    let local = listener.local_addr().unwrap();
    (listener, local)
}

/// Connects to `to` from `from`'s namespace, or from the root namespace if `None`.
fn connect(lab: &NetLab, from: Option<&str>, to: SocketAddr) -> io::Result<TcpStream> {
    match from {
        Some(node) => lab
            .in_ns(node, || TcpStream::connect_timeout(&to, CONNECT_TIMEOUT))
            .unwrap(),
        None => TcpStream::connect_timeout(&to, CONNECT_TIMEOUT),
    }
}

/// Asserts a connection from `from` reaches `listener`, that the listener sees the
/// expected source address, and that a byte gets through.
fn assert_reaches(lab: &NetLab, from: Option<&str>, listener: &TcpListener) {
    let to = listener.local_addr().unwrap();
    let mut client = connect(lab, from, to)
        .unwrap_or_else(|e| panic!("{from:?} should reach {to} in lab {}: {e}", lab.tag()));
    client.write_all(b"x").unwrap();
    let (mut server, peer) = accept_within(listener, ACCEPT_DEADLINE);
    let expected: IpAddr = from.map_or(lab.bridge_addr(), |n| lab.addr(n)).into();
    assert_eq!(peer.ip(), expected, "source address seen by the listener");
    server.set_read_timeout(Some(ACCEPT_DEADLINE)).unwrap();
    let mut byte = [0u8; 1];
    server.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"x");
}

fn assert_blocked(lab: &NetLab, from: Option<&str>, to: SocketAddr) {
    let result = connect(lab, from, to);
    assert!(
        result.is_err(),
        "{from:?} should NOT reach {to} in lab {}, but connected",
        lab.tag()
    );
}

/// Polls a non-blocking accept until `deadline` passes.
fn accept_within(listener: &TcpListener, deadline: Duration) -> (TcpStream, SocketAddr) {
    listener.set_nonblocking(true).unwrap();
    let end = Instant::now() + deadline;
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                stream.set_nonblocking(false).unwrap();
                return (stream, peer);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("no connection accepted within {deadline:?}: {e}"),
        }
    }
}

fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Asserts that no namespace, link or record carries `tag` any more.
fn assert_gone(tag: &str) {
    let netns = stdout_of(Command::new("ip").args(["netns", "list"]));
    assert!(!netns.contains(tag), "namespaces of {tag} left:\n{netns}");
    let links = stdout_of(Command::new("ip").args(["-o", "link", "show"]));
    assert!(!links.contains(tag), "links of {tag} left:\n{links}");
    let record = std::path::Path::new(STATE_DIR).join(format!("{tag}.lab"));
    assert!(!record.exists(), "{} left", record.display());
}

#[test]
fn isolate_cuts_a_node_off_from_nodes_but_not_from_the_harness() {
    let lab = lab(&["a", "b"]);
    let (listener_a, addr_a) = listen(&lab, "a");
    let (listener_b, addr_b) = listen(&lab, "b");
    assert_reaches(&lab, Some("b"), &listener_a);
    assert_reaches(&lab, None, &listener_a);

    lab.isolate("a").unwrap();
    assert_blocked(&lab, Some("b"), addr_a);
    assert_blocked(&lab, Some("a"), addr_b);
    // The harness must still see an isolated node (e.g. to watch it refuse writes).
    assert_reaches(&lab, None, &listener_a);
    assert_reaches(&lab, None, &listener_b);

    lab.heal("a").unwrap();
    assert_reaches(&lab, Some("b"), &listener_a);
    assert_reaches(&lab, Some("a"), &listener_b);
    lab.destroy().unwrap();
}

#[test]
fn partition_cuts_one_pair_both_ways_and_nothing_else() {
    let lab = lab(&["a", "b", "c"]);
    let (listener_a, addr_a) = listen(&lab, "a");
    let (listener_b, addr_b) = listen(&lab, "b");

    lab.partition("a", "b").unwrap();
    assert_blocked(&lab, Some("b"), addr_a);
    assert_blocked(&lab, Some("a"), addr_b);
    assert_reaches(&lab, Some("c"), &listener_a);
    assert_reaches(&lab, Some("c"), &listener_b);
    assert_reaches(&lab, None, &listener_a);

    // Healing either end restores the pair.
    lab.heal("b").unwrap();
    assert_reaches(&lab, Some("b"), &listener_a);
    assert_reaches(&lab, Some("a"), &listener_b);

    lab.partition("a", "b").unwrap();
    lab.isolate("c").unwrap();
    lab.heal_all().unwrap();
    assert_reaches(&lab, Some("b"), &listener_a);
    assert_reaches(&lab, Some("c"), &listener_b);
}

#[test]
fn command_runs_inside_the_node_namespace() {
    let long = "site-paris/host.with-a-rather-long-name-for-a-node";
    let lab = lab(&[long, "b"]);
    let ns = lab.ns_name(long);
    assert!(ns.starts_with(lab.tag()) && !ns.contains('/'), "{ns}");
    assert_eq!(lab.nodes().collect::<Vec<_>>(), vec![long, "b"]);

    let addrs = stdout_of(lab.command(long, "ip").args(["-4", "-o", "addr", "show"]));
    assert!(
        addrs.contains(&format!("inet {}/24", lab.addr(long))),
        "{addrs}"
    );
    assert!(!addrs.contains(&lab.addr("b").to_string()), "{addrs}");
    assert!(!addrs.contains(&lab.bridge_addr().to_string()), "{addrs}");
    assert!(
        addrs.contains("inet 127.0.0.1/8"),
        "lo should be up: {addrs}"
    );
}

#[test]
fn dropped_or_destroyed_labs_leave_nothing_behind() {
    let dropped = lab(&["a", "b"]);
    let dropped_tag = dropped.tag().to_string();
    // A process still inside a namespace keeps it alive; the lab must remove its names
    // anyway and must not kill the process (it is ours, not the lab's).
    let mut sleeper = dropped.command("a", "sleep").arg("60").spawn().unwrap();
    let destroyed = lab(&["x"]);
    let destroyed_tag = destroyed.tag().to_string();

    drop(dropped);
    assert_gone(&dropped_tag);
    assert!(
        sleeper.try_wait().unwrap().is_none(),
        "the lab killed a process"
    );
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();

    destroyed.destroy().unwrap();
    assert_gone(&destroyed_tag);
}

#[test]
fn concurrent_labs_get_distinct_subnets_and_all_work() {
    require_lab_machine();
    let results: Vec<(String, std::net::Ipv4Addr)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let lab = lab(&["a", "b"]);
                    let (listener, _) = listen(&lab, "a");
                    assert_reaches(&lab, Some("b"), &listener);
                    assert_reaches(&lab, None, &listener);
                    let result = (lab.tag().to_string(), lab.subnet());
                    lab.destroy().unwrap();
                    result
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut subnets: Vec<_> = results.iter().map(|r| r.1).collect();
    let mut tags: Vec<_> = results.iter().map(|r| r.0.clone()).collect();
    subnets.sort();
    subnets.dedup();
    tags.sort();
    tags.dedup();
    assert_eq!(subnets.len(), 4, "{results:?}");
    assert_eq!(tags.len(), 4, "{results:?}");
}

#[test]
fn unknown_nodes_and_bad_node_lists_are_errors() {
    let lab = lab(&["a"]);
    assert!(matches!(
        lab.isolate("nope"),
        Err(LabError::UnknownNode { .. })
    ));
    assert!(matches!(
        lab.in_ns("nope", || ()),
        Err(LabError::UnknownNode { .. })
    ));
    let err = NetLab::create(&["a", "a"]).unwrap_err();
    assert!(matches!(err, LabError::BadNodes { .. }), "{err}");
    assert!(err.to_string().contains("twice"), "{err}");
}

/// Env var that turns [`crash_helper_child`] into a lab creator that aborts.
const CRASH_CHILD_ENV: &str = "METRODR_NETNS_CRASH_CHILD";

/// Not a test on its own: run by `cleanup_stale_removes_labs_of_crashed_processes` in
/// a child process, where it creates a lab and aborts so that Drop never runs.
#[test]
fn crash_helper_child() {
    if std::env::var_os(CRASH_CHILD_ENV).is_none() {
        return;
    }
    let lab = lab(&["a", "b"]);
    println!("TAG={}", lab.tag());
    io::stdout().flush().unwrap();
    std::process::abort();
}

#[test]
fn cleanup_stale_removes_labs_of_crashed_processes() {
    require_lab_machine();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_helper_child", "--nocapture"])
        .env(CRASH_CHILD_ENV, "1")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the child should have aborted");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tag = stdout
        .lines()
        .find_map(|l| l.strip_prefix("TAG="))
        .unwrap_or_else(|| {
            panic!(
                "child printed no tag:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_string();
    let netns = stdout_of(Command::new("ip").args(["netns", "list"]));
    assert!(
        netns.contains(&tag),
        "the crash should leave {tag}:\n{netns}"
    );

    let cleaned = netns::cleanup_stale(&tag).unwrap();
    assert_eq!(cleaned, vec![tag.clone()]);
    assert_gone(&tag);

    // A live process's lab matching the prefix must survive. (Its own tag as prefix,
    // so this test never cleans up after, or races with, another test binary.)
    let live = lab(&["a"]);
    let cleaned = netns::cleanup_stale(live.tag()).unwrap();
    assert!(cleaned.is_empty(), "{cleaned:?}");
    let (listener, _) = listen(&live, "a");
    assert_reaches(&live, None, &listener);
}

/// Env var that turns [`failing_iptables_helper`] into a lab creator whose `iptables`
/// always fails.
const FAIL_CHILD_ENV: &str = "METRODR_NETNS_FAIL_CHILD";

/// Not a test on its own: run by `failed_creation_removes_what_it_made` in a child
/// process whose PATH starts with a fake `iptables` that always fails.
#[test]
fn failing_iptables_helper() {
    if std::env::var_os(FAIL_CHILD_ENV).is_none() {
        return;
    }
    require_lab_machine();
    let err = NetLab::create(&["a", "b"]).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LabError::Command { .. }), "{text}");
    assert!(text.contains("fake iptables refuses"), "{text}");
    // By then the bridge, a namespace and a veth existed; all must be gone again.
    let start = text.find(netns::TAG_PREFIX).unwrap();
    let tag = &text[start..start + 8];
    assert_gone(tag);
    println!("HALFWAY_OK {tag}");
}

#[test]
fn failed_creation_removes_what_it_made() {
    use std::os::unix::fs::PermissionsExt;
    require_lab_machine();
    let dir = std::env::temp_dir().join(format!("mdr-fake-iptables-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("iptables");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'fake iptables refuses' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path =
        std::env::join_paths(std::iter::once(dir.clone()).chain(std::env::split_paths(&path)))
            .unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "failing_iptables_helper", "--nocapture"])
        .env(FAIL_CHILD_ENV, "1")
        .env("PATH", path)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("HALFWAY_OK"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Echoes every byte back on each accepted connection, until the listener's test ends.
fn echo_forever(listener: TcpListener) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// The median round trip of one byte over `stream`, of `n` tries.
fn round_trip(stream: &mut TcpStream, n: usize) -> Duration {
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(ACCEPT_DEADLINE)).unwrap();
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            stream.write_all(b"p").unwrap();
            let mut b = [0u8; 1];
            stream.read_exact(&mut b).unwrap();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[n / 2]
}

#[test]
fn a_transparent_proxy_shapes_what_a_node_sends_to_another_and_partitions_still_cut() {
    use chaos::proxy::{DirProps, LinkProps, LinkProxy, Target, Wire, WireSide};
    const MARK: u32 = 0x4d44;
    let lab = lab(&["a", "b"]);
    let (listener, addr_b) = listen(&lab, "b");
    echo_forever(listener);
    let (spared, spared_addr) = listen(&lab, "b");
    let proxy = lab
        .in_ns("a", || {
            LinkProxy::start_with(
                "127.0.0.1:0".parse().unwrap(),
                Target::Original { mark: MARK },
                LinkProps::default(),
                Wire::default(),
                WireSide::Near,
            )
        })
        .unwrap()
        .expect("starting the proxy inside a");
    let port = proxy.local_addr().port();
    lab.redirect("a", "b", spared_addr.port(), MARK, port)
        .unwrap();

    // A connection from a to b goes through the proxy, to where it was going.
    let mut to_b = connect(&lab, Some("a"), addr_b).expect("a reaches b through the proxy");
    let fast = round_trip(&mut to_b, 21);
    assert_eq!(proxy.stats().connections_accepted, 1, "{:?}", proxy.stats());
    proxy
        .set(LinkProps::symmetric(DirProps::with_delay(
            Duration::from_millis(25),
        )))
        .unwrap();
    let slow = round_trip(&mut to_b, 11);
    assert!(
        slow >= Duration::from_millis(50)
            && slow < Duration::from_millis(50) + fast * 4 + Duration::from_millis(30),
        "25 ms each way: a round trip takes {slow:?} (unshaped {fast:?})"
    );
    // The excepted port and the harness are not redirected.
    assert_reaches(&lab, Some("a"), &spared);
    assert_eq!(proxy.stats().connections_accepted, 1, "{:?}", proxy.stats());
    // A connection made to the proxy itself, not redirected, is refused (dialling
    // its own address would loop).
    let direct = lab
        .in_ns("a", || {
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(ACCEPT_DEADLINE))?;
            let mut b = [0u8; 1];
            s.read(&mut b)
        })
        .unwrap();
    assert!(
        !matches!(direct, Ok(1)),
        "a direct connection to the proxy got data: {direct:?}"
    );
    // A partition still cuts the proxied path: the proxy's own connection is filtered.
    lab.partition("a", "b").unwrap();
    let mut cut = connect(&lab, Some("a"), addr_b).expect("the proxy accepts locally");
    cut.set_read_timeout(Some(Duration::from_millis(800)))
        .unwrap();
    cut.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    assert!(
        cut.read(&mut b).is_err(),
        "nothing comes back across a partition"
    );
    lab.heal_all().unwrap();
    let mut again = connect(&lab, Some("a"), addr_b).expect("healed");
    round_trip(&mut again, 3);
}
