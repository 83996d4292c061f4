//! A private libvirtd for the lab: its own sockets, config and log in one directory,
//! no hypervisor driver modules (so it never touches the machine's QEMU state), serving
//! libvirt's built-in test driver at `test+unix:///default?socket=<dir>/libvirt-sock`.
//! Tests stop and start it to see what an agent does when libvirt goes away.
//!
//! Must never: touch the machine's own libvirtd, or leave its process running (it is
//! killed by PID when dropped).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LIBVIRTD: &str = "/usr/sbin/libvirtd";

#[derive(Debug, thiserror::Error)]
pub enum LibvirtdError {
    #[error(
        "{LIBVIRTD} is missing: install the libvirt-daemon package (bash scripts/install-deps.sh)"
    )]
    Missing,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the private libvirtd did not listen within 30 s (exit: {status}): {stderr}")]
    NotListening { status: String, stderr: String },
}

pub struct PrivateLibvirtd {
    dir: PathBuf,
    child: Option<Child>,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LibvirtdError {
    let what = what.into();
    move |source| LibvirtdError::Io { what, source }
}

impl PrivateLibvirtd {
    /// Start one in `dir` (created if needed; keep the path short: unix socket paths
    /// are limited to 107 bytes).
    pub fn start_in(dir: &Path) -> Result<PrivateLibvirtd, LibvirtdError> {
        if !Path::new(LIBVIRTD).exists() {
            return Err(LibvirtdError::Missing);
        }
        std::fs::create_dir_all(dir.join("no-drivers"))
            .map_err(io(format!("creating {}", dir.display())))?;
        std::fs::write(
            dir.join("libvirtd.conf"),
            format!(
                "unix_sock_dir = \"{0}\"\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n\
                 log_outputs = \"3:file:{0}/libvirtd.log\"\n",
                dir.display()
            ),
        )
        .map_err(io("writing libvirtd.conf"))?;
        let mut d = PrivateLibvirtd {
            dir: dir.to_path_buf(),
            child: None,
        };
        d.start()?;
        Ok(d)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("libvirt-sock")
    }

    /// The URI clients use.
    pub fn uri(&self) -> String {
        format!("test+unix:///default?socket={}", self.socket().display())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Start (again) and wait until it listens.
    pub fn start(&mut self) -> Result<(), LibvirtdError> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::File::create(self.dir.join("stderr.log"))
            .map_err(io("creating stderr.log"))?;
        let child = Command::new(LIBVIRTD)
            .arg("-f")
            .arg(self.dir.join("libvirtd.conf"))
            .arg("-p")
            .arg(self.dir.join("libvirtd.pid"))
            .env("LIBVIRT_DRIVER_DIR", self.dir.join("no-drivers"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io("starting libvirtd"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(self.socket()).is_err() {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .map(|s| s.to_string());
            if exited.is_some() || Instant::now() > deadline {
                let stderr =
                    std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default();
                self.stop();
                return Err(LibvirtdError::NotListening {
                    status: exited.unwrap_or_else(|| "still running".into()),
                    stderr,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kill it (SIGKILL, by PID): the daemon is simply gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // libvirtd removes its socket on a clean exit only; SIGKILL leaves it.
        let _ = std::fs::remove_file(self.socket());
    }
}

impl Drop for PrivateLibvirtd {
    fn drop(&mut self) {
        self.stop();
    }
}
