//! # guest — the probe guest: a tiny real VM that measures RPO end to end
//!
//! [`build`] makes a bootable image from Debian packages: the current cloud kernel
//! (`linux-image-<ver>-cloud-amd64`) and an initramfs of `busybox-static`, the virtio
//! block modules and an `/init` ([`INIT_SCRIPT`]) that writes numbered records to its
//! disk `/dev/vda` and prints each one it acknowledged on the serial console:
//!
//! ```text
//!   block:   0        1                   2                   …  n
//!            unused   METRODR-REC 1 end   METRODR-REC 2 end   …  METRODR-REC n end
//!   console: metrodr-probe: boot / resume-after N / ready, then metrodr-ack N+1, …
//! ```
//!
//! Each record is one 4 KiB block written with O_DIRECT + fsync, and `metrodr-ack n` is
//! printed only after that write returned. So after a failover the promoted disk must
//! hold every record the guest printed as acknowledged: [`parse_console`] reads the
//! console, [`disk_records`] reads the disk, and the difference is the data loss. At
//! boot the guest resumes after the highest record on its disk (binary search), so the
//! same disk can be booted again at the other site.
//!
//! The image is cached in the output directory with a manifest (recipe version, kernel
//! version, sha256 of every file); [`cached`] accepts only a complete image whose
//! checksums match, and [`build`] reuses it. Boot it with libvirt direct kernel boot
//! (`<kernel>`, `<initrd>`, `<cmdline>` = [`GuestImage::cmdline`], a `<serial
//! type='file'>` console) under TCG (`<domain type='qemu'>`): see `shared/MACHINE.md`.
//!
//! **Must never** install packages or change apt's or the host's configuration (it
//! only runs `apt-cache`, `apt-get download`, `dpkg-deb -x`, decompressors and `find |
//! cpio | gzip`), write outside its output and cache directories, or leave a half-built
//! image that [`cached`] would accept. It does not start VMs: that is the caller's (the
//! tests use `virsh`). Needs `apt` with a reachable Debian mirror (or the `.deb` files
//! already in the cache), `dpkg`, `cpio`, `gzip` and `findutils`.

mod console;
mod disk;
mod error;
mod tools;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use console::{ConsoleLog, GuestService, MAX_PROBLEMS, parse_console};
pub use disk::{DiskRecords, disk_records};
pub use error::GuestError;

/// Version of the build recipe, recorded in every manifest. Bump it when the image
/// layout or the way it is built changes, so that [`cached`] stops accepting images
/// built the old way. (Edits to [`INIT_SCRIPT`] need no bump: the manifest records the
/// script's checksum.)
pub const RECIPE_VERSION: u32 = 1;

/// The guest's `/init`, with `@MODULES@` replaced by the modules actually packed.
pub const INIT_SCRIPT: &str = include_str!("guest/init.sh");

/// Kernel modules the guest loads to see its virtio disk and NIC, in no particular
/// order (`/init` finds the dependency order by retrying).
pub const MODULES: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
];

/// The TCP port the guest's service listens on once it is ready (when it has a NIC).
pub const SERVICE_PORT: u16 = 80;

/// Size of a record: one disk block, as written by the guest's `dd bs=4096`.
pub const BLOCK_SIZE: u64 = 4096;

/// Default pause between two records: 10 records a second keeps the guest's disk
/// traffic tiny while the RPO resolution (one record) stays at 100 ms.
pub const DEFAULT_INTERVAL_MS: u32 = 100;

/// File names inside the output directory. The manifest is written last, so an image
/// without a manifest (or with a stale one) is never used.
pub const KERNEL_FILE: &str = "vmlinuz";
pub const INITRD_FILE: &str = "initrd.gz";
pub const MANIFEST_FILE: &str = "manifest.json";

/// How long [`build`] waits for another process building into the same directory.
/// A cold build takes well under a minute; ten minutes means that process is stuck.
pub const LOCK_DEADLINE: Duration = Duration::from_secs(600);

/// Name prefix of build scratch directories inside the output directory.
const SCRATCH_PREFIX: &str = ".build-";
const LOCK_FILE: &str = ".lock";

/// A built probe guest, ready for libvirt direct kernel boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// The kernel (`<kernel>`).
    pub kernel: PathBuf,
    /// The gzipped newc initramfs (`<initrd>`).
    pub initrd: PathBuf,
    /// The kernel command line (`<cmdline>`): serial console, quiet kernel, and the
    /// write interval; see [`cmdline`].
    pub cmdline: String,
    /// The kernel's ABI name, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_version: String,
}

/// Where and how [`build`] makes the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// Where the image (and, by default, the downloaded packages) are kept. Reused
    /// across builds: keep it in a persistent place such as the cargo target dir.
    pub out_dir: PathBuf,
    /// Where downloaded `.deb` files are kept; `None` means `<out_dir>/debs`.
    pub cache_dir: Option<PathBuf>,
    /// Pause between two records, in milliseconds; it only changes the command line,
    /// so images built with different intervals are the same files.
    pub interval_ms: u32,
}

impl BuildOptions {
    /// Options for building into `out_dir` with the default cache and interval.
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        BuildOptions {
            out_dir: out_dir.into(),
            cache_dir: None,
            interval_ms: DEFAULT_INTERVAL_MS,
        }
    }
}

/// The kernel command line for a probe guest writing a record every `interval_ms`:
/// `console=ttyS0` (libvirt's serial console), `loglevel=3` (only kernel errors, so
/// the markers stand out) and `metrodr.interval=<seconds>`, read by `/init`.
pub fn cmdline(interval_ms: u32) -> String {
    let secs = interval_ms / 1000;
    let millis = interval_ms % 1000;
    let interval = if millis == 0 {
        secs.to_string()
    } else {
        let frac = format!("{millis:03}");
        format!("{secs}.{}", frac.trim_end_matches('0'))
    };
    format!("console=ttyS0 loglevel=3 metrodr.interval={interval}")
}

/// The record of a built image, written last. Persisted: versioned by
/// [`RECIPE_VERSION`], and a test pins its shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    recipe_version: u32,
    init_sha256: String,
    kernel_version: String,
    kernel_sha256: String,
    initrd_sha256: String,
    /// Modules packed as files (built-in ones are left out).
    modules: Vec<String>,
}

/// The image in `dir` if it is complete, was built by this recipe (same
/// [`RECIPE_VERSION`] and `/init`) and every file matches its checksum; otherwise
/// `None` (nothing there, a crashed or older build, or files changed since). Its
/// command line uses [`DEFAULT_INTERVAL_MS`]. Hashes the image (~10 MB): milliseconds.
pub fn cached(dir: &Path) -> Option<GuestImage> {
    let text = fs::read_to_string(dir.join(MANIFEST_FILE)).ok()?;
    let manifest: Manifest = serde_json::from_str(&text).ok()?;
    if manifest.recipe_version != RECIPE_VERSION
        || manifest.init_sha256 != sha256_hex(INIT_SCRIPT.as_bytes())
    {
        return None;
    }
    let kernel = dir.join(KERNEL_FILE);
    let initrd = dir.join(INITRD_FILE);
    if sha256_file(&kernel).ok()? != manifest.kernel_sha256
        || sha256_file(&initrd).ok()? != manifest.initrd_sha256
    {
        return None;
    }
    Some(GuestImage {
        kernel,
        initrd,
        cmdline: cmdline(DEFAULT_INTERVAL_MS),
        kernel_version: manifest.kernel_version,
    })
}

/// Builds the probe guest into `opts.out_dir`, or reuses the image already there
/// (see [`cached`]); then no package tool runs at all, so a cached build works
/// offline. Otherwise it resolves the current cloud kernel with `apt-cache`,
/// downloads missing packages into the cache with `apt-get download`, and assembles
/// the image in a scratch directory that is renamed into place file by file, manifest
/// last. Concurrent builds into one directory take turns (a lock file); a crashed
/// build leaves at most a scratch directory, removed by the next build.
pub fn build(opts: &BuildOptions) -> Result<GuestImage, GuestError> {
    let out_dir = &opts.out_dir;
    fs::create_dir_all(out_dir)
        .map_err(|e| GuestError::io("creating output directory", out_dir, e))?;
    let _lock = lock(&out_dir.join(LOCK_FILE))?;
    let image = match cached(out_dir) {
        Some(image) => image,
        None => build_locked(opts)?,
    };
    Ok(GuestImage {
        cmdline: cmdline(opts.interval_ms),
        ..image
    })
}

/// Takes the build lock, polling so that the wait is bounded by [`LOCK_DEADLINE`].
fn lock(path: &Path) -> Result<Flock<File>, GuestError> {
    let deadline = Instant::now() + LOCK_DEADLINE;
    loop {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| GuestError::io("opening build lock", path, e))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(GuestError::LockTimeout {
                    path: path.to_owned(),
                });
            }
            Err((_, errno)) => {
                return Err(GuestError::io("locking", path, errno.into()));
            }
        }
    }
}

/// Removes its directory when dropped: scratch space of one build.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn build_locked(opts: &BuildOptions) -> Result<GuestImage, GuestError> {
    let out_dir = &opts.out_dir;
    remove_stale_scratch(out_dir);
    let cache_dir = opts
        .cache_dir
        .clone()
        .unwrap_or_else(|| out_dir.join("debs"));
    fs::create_dir_all(&cache_dir)
        .map_err(|e| GuestError::io("creating package cache", &cache_dir, e))?;

    let kernel_version = tools::cloud_kernel_version()?;
    let kernel_deb = tools::ensure_deb(&cache_dir, &format!("linux-image-{kernel_version}"))?;
    let busybox_deb = tools::ensure_deb(&cache_dir, "busybox-static")?;

    let scratch = Scratch(out_dir.join(format!("{SCRATCH_PREFIX}{}", std::process::id())));
    let _ = fs::remove_dir_all(&scratch.0);
    let unpacked_kernel = scratch.0.join("kernel-deb");
    let unpacked_busybox = scratch.0.join("busybox-deb");
    let root = scratch.0.join("root");
    for dir in ["bin", "lib/modules", "proc", "sys", "dev", "tmp"] {
        let path = root.join(dir);
        fs::create_dir_all(&path).map_err(|e| GuestError::io("creating", &path, e))?;
    }
    tools::extract(&kernel_deb, &unpacked_kernel)?;
    tools::extract(&busybox_deb, &unpacked_busybox)?;

    let kernel_src = unpacked_kernel.join(format!("boot/vmlinuz-{kernel_version}"));
    if !kernel_src.is_file() {
        return Err(GuestError::Missing {
            what: format!("boot/vmlinuz-{kernel_version}"),
            path: unpacked_kernel,
            hint: "the cached kernel .deb does not match `apt-cache depends \
                   linux-image-cloud-amd64`; delete the guest cache directory and retry",
        });
    }
    let busybox_src = unpacked_busybox.join("bin/busybox");
    let busybox = root.join("bin/busybox");
    fs::copy(&busybox_src, &busybox).map_err(|e| GuestError::io("copying", &busybox_src, e))?;
    set_mode(&busybox, 0o755)?;

    let modules_root = unpacked_kernel.join(format!("lib/modules/{kernel_version}"));
    let modules = tools::copy_modules(&modules_root, MODULES, &root.join("lib/modules"))?;
    let init = root.join("init");
    let init_text = INIT_SCRIPT.replace("@MODULES@", &modules.join(" "));
    fs::write(&init, init_text).map_err(|e| GuestError::io("writing", &init, e))?;
    set_mode(&init, 0o755)?;

    let kernel_tmp = scratch.0.join(KERNEL_FILE);
    let initrd_tmp = scratch.0.join(INITRD_FILE);
    let manifest_tmp = scratch.0.join(MANIFEST_FILE);
    fs::copy(&kernel_src, &kernel_tmp).map_err(|e| GuestError::io("copying", &kernel_src, e))?;
    tools::pack_initramfs(&root, &initrd_tmp, &scratch.0)?;
    let manifest = Manifest {
        recipe_version: RECIPE_VERSION,
        init_sha256: sha256_hex(INIT_SCRIPT.as_bytes()),
        kernel_version: kernel_version.clone(),
        kernel_sha256: sha256_file(&kernel_tmp)
            .map_err(|e| GuestError::io("hashing", &kernel_tmp, e))?,
        initrd_sha256: sha256_file(&initrd_tmp)
            .map_err(|e| GuestError::io("hashing", &initrd_tmp, e))?,
        modules,
    };
    let json = serde_json::to_string_pretty(&manifest)
        .map_err(|e| GuestError::io("encoding", &manifest_tmp, io::Error::other(e)))?;
    write_synced(&manifest_tmp, json.as_bytes())?;
    sync_file(&kernel_tmp)?;
    sync_file(&initrd_tmp)?;

    // Install: without a manifest the directory holds no image, so remove it first,
    // move the files, and put the new manifest in last.
    let manifest_path = out_dir.join(MANIFEST_FILE);
    match fs::remove_file(&manifest_path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(GuestError::io("removing old manifest", &manifest_path, e));
        }
        _ => {}
    }
    for name in [KERNEL_FILE, INITRD_FILE, MANIFEST_FILE] {
        let (from, to) = (scratch.0.join(name), out_dir.join(name));
        fs::rename(&from, &to).map_err(|e| GuestError::io("moving into place", &to, e))?;
    }
    if let Ok(dir) = File::open(out_dir) {
        // Makes the renames durable; a failure only risks a rebuild after a crash.
        let _ = dir.sync_all();
    }
    drop(scratch);
    Ok(GuestImage {
        kernel: out_dir.join(KERNEL_FILE),
        initrd: out_dir.join(INITRD_FILE),
        cmdline: cmdline(opts.interval_ms),
        kernel_version,
    })
}

/// Removes scratch directories of builds that crashed (the caller holds the lock, so
/// no other build is using one).
fn remove_stale_scratch(out_dir: &Path) {
    let Ok(entries) = fs::read_dir(out_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(SCRATCH_PREFIX))
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), GuestError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| GuestError::io("setting permissions of", path, e))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), GuestError> {
    let mut file = File::create(path).map_err(|e| GuestError::io("creating", path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| GuestError::io("writing", path, e))
}

fn sync_file(path: &Path) -> Result<(), GuestError> {
    File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(|e| GuestError::io("syncing", path, e))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `virsh -c qemu:///system ARGS` (the machine's libvirtd, where probe guests run):
/// whether it succeeded, and its output (stdout, then stderr).
pub fn virsh(args: &[&str]) -> (bool, String) {
    match std::process::Command::new("virsh")
        .arg("-c")
        .arg("qemu:///system")
        .args(args)
        .output()
    {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout).trim(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ),
        Err(e) => (false, format!("cannot run virsh: {e}")),
    }
}

/// Destroy and undefine the domain `name` on the machine's libvirtd (errors ignored:
/// it may be gone already).
pub fn remove_domain(name: &str) {
    let _ = virsh(&["destroy", name]);
    let _ = virsh(&["undefine", name]);
}

/// The PID of the running domain `name`'s QEMU process, from libvirt's pidfile.
pub fn qemu_pid(name: &str) -> Option<i32> {
    fs::read_to_string(format!("/run/libvirt/qemu/{name}.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_formats_the_interval_in_seconds() {
        assert_eq!(
            cmdline(100),
            "console=ttyS0 loglevel=3 metrodr.interval=0.1"
        );
        assert!(cmdline(0).ends_with("metrodr.interval=0"));
        assert!(cmdline(50).ends_with("metrodr.interval=0.05"));
        assert!(cmdline(1500).ends_with("metrodr.interval=1.5"));
        assert!(cmdline(2000).ends_with("metrodr.interval=2"));
    }

    #[test]
    fn kernel_version_comes_from_the_depends_line() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            tools::parse_kernel_version(out).as_deref(),
            Some("6.1.0-56-cloud-amd64")
        );
        assert_eq!(
            tools::parse_kernel_version("  Depends: <linux-image-6.1.0-9-cloud-amd64>\n")
                .as_deref(),
            Some("6.1.0-9-cloud-amd64")
        );
        assert_eq!(tools::parse_kernel_version("  Depends: libc6\n"), None);
        assert_eq!(tools::parse_kernel_version(""), None);
        assert_eq!(
            tools::parse_kernel_version("  Depends: linux-image-$(rm -rf)\n"),
            None
        );
    }

    /// Pins the persisted manifest format of RECIPE_VERSION 1: changing it needs a
    /// version bump (old images are then rebuilt, never misread).
    #[test]
    fn manifest_format_is_pinned() {
        assert_eq!(RECIPE_VERSION, 1);
        let manifest = Manifest {
            recipe_version: 1,
            init_sha256: "i".into(),
            kernel_version: "6.1.0-56-cloud-amd64".into(),
            kernel_sha256: "k".into(),
            initrd_sha256: "r".into(),
            modules: vec!["virtio".into()],
        };
        let json = serde_json::to_string(&manifest).unwrap();
        assert_eq!(
            json,
            r#"{"recipe_version":1,"init_sha256":"i","kernel_version":"6.1.0-56-cloud-amd64","kernel_sha256":"k","initrd_sha256":"r","modules":["virtio"]}"#
        );
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), manifest);
    }

    #[test]
    fn init_script_keeps_the_markers_other_code_parses() {
        for marker in [
            "metrodr-probe: boot",
            "metrodr-probe: resume-after $n",
            "metrodr-probe: ready",
            "metrodr-ack $n",
            "metrodr-write-failed $n",
            "METRODR-REC %d end",
            "@MODULES@",
        ] {
            assert!(INIT_SCRIPT.contains(marker), "{marker}");
        }
    }
}
