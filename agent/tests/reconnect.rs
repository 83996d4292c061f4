//! `Libvirt` survives its daemon going away and coming back.
//!
//! The test driver runs inside the client library, so it has no daemon to lose. This
//! test starts a *private* libvirtd instead: its sockets in a temp dir, and
//! `LIBVIRT_DRIVER_DIR` pointing at an empty dir so it loads no hypervisor driver
//! modules (in particular not the QEMU driver, whose state dirs belong to the
//! machine's libvirtd). What it still serves is the test driver, built into libvirt
//! itself, as `test+unix:///default?socket=<dir>/libvirt-sock`. The test kills and
//! restarts that daemon by pid; the machine's libvirtd is never touched.

// Test helpers may unwrap like the tests themselves (clippy.toml allows it only inside
// #[test] functions): a panic here is a test failure, which is what we want.
#![allow(clippy::unwrap_used)]

use agent::hypervisor::{HvErrorKind, Hypervisor, Libvirt};
use tempfile::TempDir;

/// The lab's private libvirtd (see `chaos::libvirtd`).
struct PrivateDaemon {
    _dir: TempDir,
    d: chaos::libvirtd::PrivateLibvirtd,
}

impl PrivateDaemon {
    fn new() -> PrivateDaemon {
        // A short path: unix socket paths are limited to 107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("mdr-lv")
            .tempdir_in("/tmp")
            .unwrap();
        let d = chaos::libvirtd::PrivateLibvirtd::start_in(dir.path()).unwrap_or_else(|e| {
            panic!(
                "\n\n####################################################################\n\
                 #### cannot start a private libvirtd: {e}\n\
                 ####################################################################\n\n"
            )
        });
        PrivateDaemon { _dir: dir, d }
    }

    fn uri(&self) -> String {
        self.d.uri()
    }

    fn start(&mut self) {
        self.d.start().unwrap();
    }

    fn stop(&mut self) {
        self.d.stop();
    }
}

fn domain(name: &str) -> String {
    format!(
        "<domain type='test'><name>{name}</name><memory unit='MiB'>32</memory>\
         <os><type>hvm</type></os></domain>"
    )
}

fn names(hv: &Libvirt) -> Vec<String> {
    hv.list().unwrap().into_iter().map(|d| d.name).collect()
}

#[test]
fn survives_the_daemon_going_away_and_coming_back() {
    let mut daemon = PrivateDaemon::new();
    let hv = Libvirt::new(&daemon.uri());
    let vm = format!("metrodr-reconnect-{}", std::process::id());

    hv.define(&domain(&vm)).unwrap();
    hv.start(&vm).unwrap();
    assert!(names(&hv).contains(&vm));

    // Daemon gone: the call fails with Unavailable and a message an operator can act on.
    daemon.stop();
    for attempt in 0..2 {
        let e = hv.list().unwrap_err();
        assert_eq!(e.kind, HvErrorKind::Unavailable, "attempt {attempt}: {e}");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "list: libvirt at {} is not reachable: ",
                daemon.uri()
            )),
            "{text}"
        );
        assert!(text.ends_with("is libvirtd running?"), "{text}");
        eprintln!("while the daemon is down: {text}");
    }
    let e = hv.state(&vm).unwrap_err();
    assert_eq!(e.kind, HvErrorKind::Unavailable, "{e}");

    // Back again: the next call connects afresh. (The test driver's domains lived in
    // the old daemon's memory, so only its built-in "test" domain is there.)
    daemon.start();
    assert_eq!(names(&hv), ["test"]);

    // Restarted between two calls: the held connection is dead, and the call succeeds
    // anyway, on the one retry with a fresh connection.
    hv.define(&domain(&vm)).unwrap();
    daemon.stop();
    daemon.start();
    hv.define(&domain(&vm)).unwrap();
    assert_eq!(names(&hv), [vm.as_str(), "test"]);
    hv.start(&vm).unwrap();
    daemon.stop();
    daemon.start();
    assert_eq!(
        hv.state(&vm).unwrap_err().kind,
        HvErrorKind::NotFound,
        "reconnected to a daemon that never heard of it"
    );
}
