//! The thin I/O shell of the builder: apt, dpkg-deb, decompressors and the
//! `find | cpio | gzip` pipeline, each failure named with its command and stderr.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::GuestError;

const HINT_APT: &str = "check network access to the Debian mirror in \
                        /etc/apt/sources.list(.d) and run `apt-get update`; or copy the \
                        .deb files into the guest cache directory by hand";
const HINT_DPKG: &str = "the cached .deb may be damaged: delete it from the guest cache \
                         directory so the next build downloads it again";
const HINT_TOOLS: &str = "is it installed? The build needs apt, dpkg, cpio, gzip, \
                          xz-utils, zstd and findutils: `bash scripts/install-deps.sh`";
const HINT_MODULES: &str = "the Debian cloud kernel package changed its layout; update \
                            chaos::guest::MODULES";

/// Bound on the stderr quoted in an error: enough for apt's explanation, not a flood.
const STDERR_MAX_CHARS: usize = 2000;

/// Runs `cmd` to completion, returning its output when it exits 0.
pub(super) fn run(cmd: &mut Command, what: &str, hint: &'static str) -> Result<Output, GuestError> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| spawn_error(cmd, what, HINT_TOOLS, source))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(command_error(
            cmd,
            what,
            hint,
            &output.status,
            &output.stderr,
        ))
    }
}

fn cmdline(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

fn spawn_error(cmd: &Command, what: &str, hint: &'static str, e: std::io::Error) -> GuestError {
    GuestError::Spawn {
        what: what.to_owned(),
        cmdline: cmdline(cmd),
        hint,
        source: e,
    }
}

fn command_error(
    cmd: &Command,
    what: &str,
    hint: &'static str,
    status: &std::process::ExitStatus,
    stderr: &[u8],
) -> GuestError {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    // Keep the end: apt and dpkg put the actual error last.
    let skip = text.chars().count().saturating_sub(STDERR_MAX_CHARS);
    let stderr: String = text.chars().skip(skip).collect();
    GuestError::Command {
        what: what.to_owned(),
        cmdline: cmdline(cmd),
        status: status.to_string(),
        stderr: if stderr.is_empty() {
            "(no stderr)".to_owned()
        } else {
            stderr
        },
        hint,
    }
}

/// The kernel ABI name of Debian's current cloud kernel (`6.1.0-56-cloud-amd64`), from
/// the package lists (no network: `apt-cache` reads the local lists).
pub(super) fn cloud_kernel_version() -> Result<String, GuestError> {
    let out = run(
        Command::new("apt-cache")
            .args(["depends", "linux-image-cloud-amd64"])
            .env("LC_ALL", "C"),
        "finding the current Debian cloud kernel",
        "run `apt-get update` (the package lists may be empty) and check that a Debian \
         amd64 mirror is configured",
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_kernel_version(&text).ok_or_else(|| GuestError::KernelVersion {
        output: text.trim().chars().take(STDERR_MAX_CHARS).collect(),
    })
}

/// From `apt-cache depends` output, the version in the first
/// `Depends: linux-image-<version>` line.
pub(super) fn parse_kernel_version(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let dep = line.trim().strip_prefix("Depends:")?.trim();
        let dep = dep.trim_start_matches('<').trim_end_matches('>');
        let version = dep.strip_prefix("linux-image-")?;
        let plausible = version.starts_with(|c: char| c.is_ascii_digit())
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '~'));
        plausible.then(|| version.to_owned())
    })
}

/// The `.deb` of `package` in `cache_dir`, downloaded with `apt-get download` if the
/// cache has none. Downloads land in a private directory first and are renamed in,
/// so an interrupted download never looks like a cached package (it leaves a
/// `.download-<pid>-<package>` directory, which the cache otherwise ignores: the cache
/// may be shared by builders that do not share a lock, so nobody else removes it).
pub(super) fn ensure_deb(cache_dir: &Path, package: &str) -> Result<PathBuf, GuestError> {
    if let Some(deb) = find_deb(cache_dir, package)? {
        return Ok(deb);
    }
    let staging = cache_dir.join(format!(".download-{}-{package}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)
        .map_err(|e| GuestError::io("creating download directory", &staging, e))?;
    // Downloaded as the user running this (root, in a directory of its own), not as
    // apt's sandbox user `_apt`, who cannot write here: apt would warn about it on every
    // download and that warning would read like the error when something fails.
    let result = run(
        Command::new("apt-get")
            .args(["-o", "APT::Sandbox::User=root", "download", "-q", package])
            .current_dir(&staging)
            .env("LC_ALL", "C"),
        &format!("downloading {package}"),
        HINT_APT,
    )
    .and_then(|_| {
        let deb = find_deb(&staging, package)?.ok_or_else(|| GuestError::Missing {
            what: format!("the .deb of {package} after `apt-get download`"),
            path: staging.clone(),
            hint: HINT_APT,
        })?;
        let name = deb.file_name().unwrap_or_default();
        let target = cache_dir.join(name);
        fs::rename(&deb, &target)
            .map_err(|e| GuestError::io("moving the download into the cache", &target, e))?;
        Ok(target)
    });
    let _ = fs::remove_dir_all(&staging);
    result
}

/// The newest-named `<package>_*.deb` in `dir` (file names carry the version).
fn find_deb(dir: &Path, package: &str) -> Result<Option<PathBuf>, GuestError> {
    let prefix = format!("{package}_");
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(GuestError::io("listing", dir, e)),
    };
    Ok(entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&prefix) && name.ends_with(".deb"))
        })
        .max())
}

/// `dpkg-deb -x deb into`.
pub(super) fn extract(deb: &Path, into: &Path) -> Result<(), GuestError> {
    run(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(into),
        &format!("unpacking {}", deb.display()),
        HINT_DPKG,
    )
    .map(drop)
}

/// Copies the kernel modules `names` from an unpacked kernel package into `dest_dir`
/// as plain `<name>.ko`, decompressing `.ko.xz`/`.ko.zst`/`.ko.gz` (busybox `insmod`
/// loads only plain modules). Returns the names copied: a module the kernel has built
/// in (listed in `modules.builtin`) needs no file and is left out.
pub(super) fn copy_modules(
    modules_root: &Path,
    names: &[&str],
    dest_dir: &Path,
) -> Result<Vec<String>, GuestError> {
    let mut files = BTreeMap::new();
    index_modules(&modules_root.join("kernel"), &mut files)?;
    let builtin = fs::read_to_string(modules_root.join("modules.builtin")).unwrap_or_default();
    let builtin: Vec<String> = builtin
        .lines()
        .filter_map(|line| module_name(Path::new(line.trim())))
        .collect();
    let mut copied = Vec::new();
    for &name in names {
        let Some(src) = files.get(name) else {
            if builtin.iter().any(|b| b == name) {
                continue;
            }
            return Err(GuestError::Missing {
                what: format!("kernel module {name}"),
                path: modules_root.to_owned(),
                hint: HINT_MODULES,
            });
        };
        let dest = dest_dir.join(format!("{name}.ko"));
        let src_name = src.to_string_lossy();
        let decompressor = if src_name.ends_with(".ko.xz") {
            Some("xz")
        } else if src_name.ends_with(".ko.zst") {
            Some("zstd")
        } else if src_name.ends_with(".ko.gz") {
            Some("gzip")
        } else {
            None
        };
        match decompressor {
            None => {
                fs::copy(src, &dest).map_err(|e| GuestError::io("copying module to", &dest, e))?;
            }
            Some(tool) => {
                let out = File::create(&dest)
                    .map_err(|e| GuestError::io("creating module file", &dest, e))?;
                run(
                    Command::new(tool).arg("-dc").arg(src).stdout(out),
                    &format!("decompressing kernel module {name}"),
                    HINT_TOOLS,
                )?;
            }
        }
        copied.push(name.to_owned());
    }
    Ok(copied)
}

/// Module name (dashes as underscores, like the kernel) → file, for every module
/// file under `dir`.
fn index_modules(dir: &Path, files: &mut BTreeMap<String, PathBuf>) -> Result<(), GuestError> {
    let entries = fs::read_dir(dir).map_err(|e| GuestError::io("listing", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| GuestError::io("listing", dir, e))?;
        let path = entry.path();
        let file_type = entry
            .file_type()
            .map_err(|e| GuestError::io("inspecting", &path, e))?;
        if file_type.is_dir() {
            index_modules(&path, files)?;
        } else if let Some(name) = module_name(&path) {
            files.insert(name, path);
        }
    }
    Ok(())
}

/// `…/virtio-blk.ko.xz` → `virtio_blk`; `None` for files that are not modules.
fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))?;
    Some(stem.replace('-', "_"))
}

/// `cd root && find . | cpio -o -H newc --owner 0:0 | gzip -9 -n > out`. Every file
/// in the archive is owned by root whoever builds it. Stderr goes to files next to
/// `out` so that no pipe can fill up and stall the pipeline.
pub(super) fn pack_initramfs(root: &Path, out: &Path, scratch: &Path) -> Result<(), GuestError> {
    let err_file = |name: &str| -> Result<(PathBuf, File), GuestError> {
        let path = scratch.join(name);
        let file =
            File::create(&path).map_err(|e| GuestError::io("creating stderr file", &path, e))?;
        Ok((path, file))
    };
    let (find_err_path, find_err) = err_file("find.stderr")?;
    let (cpio_err_path, cpio_err) = err_file("cpio.stderr")?;
    let (gzip_err_path, gzip_err) = err_file("gzip.stderr")?;
    let output = File::create(out).map_err(|e| GuestError::io("creating", out, e))?;
    let what = "packing the initramfs";

    let mut find = Command::new("find");
    find.arg(".").current_dir(root);
    let mut cpio = Command::new("cpio");
    cpio.args(["-o", "-H", "newc", "--quiet", "--owner", "0:0"])
        .current_dir(root);
    let mut gzip = Command::new("gzip");
    gzip.args(["-9", "-n"]);

    let mut find_child = find
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(find_err)
        .spawn()
        .map_err(|e| spawn_error(&find, what, HINT_TOOLS, e))?;
    let find_out = find_child.stdout.take().map_or(Stdio::null(), Stdio::from);
    let mut cpio_child = cpio
        .stdin(find_out)
        .stdout(Stdio::piped())
        .stderr(cpio_err)
        .spawn()
        .map_err(|e| spawn_error(&cpio, what, HINT_TOOLS, e));
    let cpio_out = match cpio_child.as_mut() {
        Ok(child) => child.stdout.take().map_or(Stdio::null(), Stdio::from),
        Err(_) => Stdio::null(),
    };
    let gzip_child = gzip
        .stdin(cpio_out)
        .stdout(output)
        .stderr(gzip_err)
        .spawn()
        .map_err(|e| spawn_error(&gzip, what, HINT_TOOLS, e));

    // Reap every child that started before reporting the first failure.
    let find_status = find_child.wait();
    let cpio_status = cpio_child.map(|mut c| c.wait());
    let gzip_status = gzip_child.map(|mut c| c.wait());
    for (cmd, err_path, status) in [
        (&find, &find_err_path, Ok(find_status)),
        (&cpio, &cpio_err_path, cpio_status),
        (&gzip, &gzip_err_path, gzip_status),
    ] {
        let status = status?.map_err(|e| GuestError::io("waiting for", cmd.get_program(), e))?;
        if !status.success() {
            let stderr = fs::read(err_path).unwrap_or_default();
            return Err(command_error(cmd, what, HINT_TOOLS, &status, &stderr));
        }
    }
    Ok(())
}
