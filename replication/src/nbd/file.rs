//! [`FileBackend`]: a volume stored as one sparse raw file, with no replication.
//!
//! The backend of `metrodr volume serve` without a peer, of the NBD conformance tests
//! and of the benchmark's "unreplicated" case. Reads and writes use positional I/O
//! (`pread`/`pwrite`) on one shared file descriptor, so requests of every connection
//! run concurrently and share the page cache — which is why an export of this backend
//! may advertise `NBD_FLAG_CAN_MULTI_CONN`: `fdatasync` on the shared file covers
//! every connection's completed writes.
//!
//! Small reads and writes (up to [`FileBackend::inline_max`], 64 KiB by default) run
//! on the calling task: a page-cache copy takes microseconds, while handing it to
//! tokio's blocking pool and back costs two thread wake-ups — on the 2-vCPU VMs we
//! run on, that made a 4 KiB write two to three times slower. Should an inline call be
//! slow (a cold read from disk, dirty-page throttling: over [`INLINE_SLOW`]), the
//! backend sends everything to the blocking pool for the next [`INLINE_BACKOFF`], so a
//! runtime worker is held up by a slow call at most once per back-off period. FUA
//! writes, flushes, trims, zeroing and extent maps always use the blocking pool.
//!
//! Must never: report a write with FUA (or a flush) complete before `fdatasync`
//! returned; change the file's size; or claim a range is a hole or zero when it
//! may hold data (extents come from `SEEK_DATA`/`SEEK_HOLE`, which are exact).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::errno::Errno as NixErrno;
use nix::fcntl::{FallocateFlags, fallocate};
use nix::unistd::{Whence, lseek};

use crate::backend::{BackendError, BlockBackend, Extent};

/// A sparse raw file.
#[derive(Debug, Clone)]
pub struct FileBackend {
    file: Arc<File>,
    size: u64,
    read_only: bool,
    path: PathBuf,
    inline_max: usize,
    inline: Arc<InlineGate>,
}

/// An inline read or write slower than this sends I/O to the blocking pool...
pub const INLINE_SLOW: Duration = Duration::from_millis(1);
/// ...for this long.
pub const INLINE_BACKOFF: Duration = Duration::from_secs(1);
/// Default largest read or write done inline.
pub const DEFAULT_INLINE_MAX: usize = 64 * 1024;

/// Whether small I/O may run inline right now.
#[derive(Debug)]
struct InlineGate {
    epoch: Instant,
    /// Inline I/O is off until this many milliseconds after `epoch`.
    off_until_ms: AtomicU64,
}

impl InlineGate {
    fn new() -> InlineGate {
        InlineGate {
            epoch: Instant::now(),
            off_until_ms: AtomicU64::new(0),
        }
    }

    fn open(&self) -> bool {
        self.epoch.elapsed().as_millis() as u64 >= self.off_until_ms.load(Ordering::Relaxed)
    }

    /// Time an inline call; close the gate for a while if it was slow.
    fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        let took = t.elapsed();
        if took > INLINE_SLOW {
            let until = self.epoch.elapsed() + INLINE_BACKOFF;
            self.off_until_ms
                .store(until.as_millis() as u64, Ordering::Relaxed);
            tracing::debug!(
                took_us = took.as_micros() as u64,
                "slow inline file I/O: using the blocking pool for a while"
            );
        }
        r
    }
}

/// Most extents one `extents` call reports (the client asks again from where the
/// answer stopped).
const MAX_EXTENTS: usize = 1024;

impl FileBackend {
    /// Open an existing file; its current length is the export size.
    pub fn open(path: impl AsRef<Path>, read_only: bool) -> io::Result<FileBackend> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&path)?;
        let size = file.metadata()?.len();
        Ok(FileBackend::new(file, size, read_only, path))
    }

    /// Open `path`, creating it if needed, and make it exactly `size` bytes (new space
    /// is a hole: it costs no disk until written).
    pub fn create(path: impl AsRef<Path>, size: u64) -> io::Result<FileBackend> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        file.set_len(size)?;
        Ok(FileBackend::new(file, size, false, path))
    }

    /// Wrap a file already opened (and sized) by the caller.
    pub(crate) fn new(file: File, size: u64, read_only: bool, path: PathBuf) -> FileBackend {
        FileBackend {
            file: Arc::new(file),
            size,
            read_only,
            path,
            inline_max: DEFAULT_INLINE_MAX,
            inline: Arc::new(InlineGate::new()),
        }
    }

    /// Set the largest read or write done on the calling task (0: always use the
    /// blocking pool).
    pub fn with_inline_max(mut self, bytes: usize) -> FileBackend {
        self.inline_max = bytes;
        self
    }

    /// The largest read or write done on the calling task.
    pub fn inline_max(&self) -> usize {
        self.inline_max
    }

    fn may_inline(&self, len: usize) -> bool {
        len <= self.inline_max && self.inline.open()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, for positional reads that bypass the backend (checksums).
    pub(crate) fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Run blocking file work on tokio's blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&File) -> io::Result<T> + Send + 'static,
    {
        let file = self.file.clone();
        match tokio::task::spawn_blocking(move || f(&file)).await {
            Ok(r) => r.map_err(BackendError::Io),
            Err(e) => Err(BackendError::Io(io::Error::other(format!(
                "file I/O task failed: {e}"
            )))),
        }
    }

    fn check_writable(&self) -> Result<(), BackendError> {
        if self.read_only {
            Err(BackendError::NotPermitted(format!(
                "{} is read-only",
                self.path.display()
            )))
        } else {
            Ok(())
        }
    }
}

fn to_off(v: u64) -> io::Result<i64> {
    i64::try_from(v).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset beyond 2^63"))
}

/// Deallocate a range (reads back as zeroes). `Ok(false)`: the file system cannot.
fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    let mode = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    match fallocate(file, mode, to_off(offset)?, to_off(len)?) {
        Ok(()) => Ok(true),
        Err(NixErrno::EOPNOTSUPP | NixErrno::ENOSYS) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Zero a range and keep it allocated. `Ok(false)`: the file system cannot.
fn zero_range(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    let mode = FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    match fallocate(file, mode, to_off(offset)?, to_off(len)?) {
        Ok(()) => Ok(true),
        Err(NixErrno::EOPNOTSUPP | NixErrno::ENOSYS) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The slow path: write zero bytes.
fn write_zero_bytes(file: &File, mut offset: u64, len: u64) -> io::Result<()> {
    static ZEROES: [u8; 64 * 1024] = [0; 64 * 1024];
    let end = offset + len;
    while offset < end {
        let n = (end - offset).min(ZEROES.len() as u64) as usize;
        file.write_all_at(&ZEROES[..n], offset)?;
        offset += n as u64;
    }
    Ok(())
}

/// Allocation map from `offset` for up to `len` bytes, by `SEEK_DATA`/`SEEK_HOLE`.
fn map_extents(file: &File, size: u64, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
    let end = offset.saturating_add(len).min(size);
    let mut out = Vec::new();
    let mut pos = offset;
    while pos < end && out.len() < MAX_EXTENTS {
        let data = match lseek(file, to_off(pos)?, Whence::SeekData) {
            Ok(d) => (d as u64).min(size),
            // No data at or after pos: a hole to the end.
            Err(NixErrno::ENXIO) => size,
            // The file system cannot tell: call it all data (always safe).
            Err(NixErrno::EINVAL | NixErrno::EOPNOTSUPP) => {
                out.push(Extent {
                    length: end - pos,
                    hole: false,
                    zero: false,
                });
                break;
            }
            Err(e) => return Err(e.into()),
        };
        if data > pos {
            out.push(Extent {
                length: data - pos,
                hole: true,
                zero: true,
            });
            pos = data;
            continue;
        }
        let hole = match lseek(file, to_off(pos)?, Whence::SeekHole) {
            Ok(h) => (h as u64).min(size),
            Err(NixErrno::ENXIO) => size,
            Err(e) => return Err(e.into()),
        };
        if hole <= pos {
            // Raced with a concurrent write or truncate: stop with what is known.
            out.push(Extent {
                length: end - pos,
                hole: false,
                zero: false,
            });
            break;
        }
        out.push(Extent {
            length: hole - pos,
            hole: false,
            zero: false,
        });
        pos = hole;
    }
    if out.is_empty() {
        out.push(Extent {
            length: len.max(1),
            hole: false,
            zero: false,
        });
    }
    Ok(out)
}

impl BlockBackend for FileBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, BackendError> {
        let read = move |f: &File| {
            let mut buf = vec![0u8; len as usize];
            f.read_exact_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        };
        if self.may_inline(len as usize) {
            return self
                .inline
                .run(|| read(&self.file))
                .map_err(BackendError::Io);
        }
        self.blocking(read).await
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BackendError> {
        self.check_writable()?;
        if !fua && self.may_inline(data.len()) {
            return self
                .inline
                .run(|| self.file.write_all_at(&data, offset))
                .map_err(BackendError::Io);
        }
        self.blocking(move |f| {
            f.write_all_at(&data, offset)?;
            if fua {
                f.sync_data()?;
            }
            Ok(())
        })
        .await
    }

    async fn flush(&self) -> Result<(), BackendError> {
        if self.read_only {
            return Ok(());
        }
        self.blocking(|f| f.sync_data()).await
    }

    async fn trim(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        self.check_writable()?;
        // A hint: where punching is unsupported, doing nothing is a correct trim.
        self.blocking(move |f| punch_hole(f, offset, len).map(drop))
            .await
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        may_trim: bool,
    ) -> Result<(), BackendError> {
        self.check_writable()?;
        self.blocking(move |f| {
            let done = (may_trim && punch_hole(f, offset, len)?) || zero_range(f, offset, len)?;
            if !done {
                write_zero_bytes(f, offset, len)?;
            }
            if fua {
                f.sync_data()?;
            }
            Ok(())
        })
        .await
    }

    async fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, BackendError> {
        let size = self.size;
        self.blocking(move |f| map_extents(f, size, offset, len))
            .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn backend(size: u64) -> (tempfile::TempDir, FileBackend) {
        let dir = tempfile::tempdir().unwrap();
        let b = FileBackend::create(dir.path().join("vol.raw"), size).unwrap();
        (dir, b)
    }

    #[tokio::test]
    async fn write_read_round_trip_and_size_is_kept() {
        let (_d, b) = backend(1 << 20);
        b.write(4096, Bytes::from_static(b"hello"), true)
            .await
            .unwrap();
        assert_eq!(&b.read(4094, 9).await.unwrap()[..], b"\0\0hello\0\0");
        b.flush().await.unwrap();
        assert_eq!(std::fs::metadata(b.path()).unwrap().len(), 1 << 20);
    }

    #[tokio::test]
    async fn zeroes_and_trim_read_back_as_zero() {
        let (_d, b) = backend(1 << 20);
        b.write(0, Bytes::from(vec![0xab; 256 * 1024]), false)
            .await
            .unwrap();
        b.write_zeroes(4096, 8192, false, true).await.unwrap();
        b.write_zeroes(65536, 100, true, false).await.unwrap();
        let d = b.read(0, 256 * 1024).await.unwrap();
        assert!(d[..4096].iter().all(|&x| x == 0xab));
        assert!(d[4096..12288].iter().all(|&x| x == 0));
        assert!(d[12288..65536].iter().all(|&x| x == 0xab));
        assert!(d[65536..65636].iter().all(|&x| x == 0));
        assert!(d[65636..].iter().all(|&x| x == 0xab));
        b.trim(0, 256 * 1024).await.unwrap();
        assert_eq!(std::fs::metadata(b.path()).unwrap().len(), 1 << 20);
    }

    #[tokio::test]
    async fn extents_follow_allocation() {
        let (_d, b) = backend(1 << 20);
        let all = b.extents(0, 1 << 20).await.unwrap();
        assert_eq!(
            all,
            [Extent {
                length: 1 << 20,
                hole: true,
                zero: true
            }]
        );
        b.write(512 * 1024, Bytes::from(vec![1; 4096]), false)
            .await
            .unwrap();
        let e = b.extents(0, 1 << 20).await.unwrap();
        let total: u64 = e.iter().map(|e| e.length).sum();
        assert_eq!(total, 1 << 20);
        let data: Vec<_> = e.iter().filter(|e| !e.hole).collect();
        assert_eq!(data.len(), 1);
        // Past the end: still at least one extent.
        assert!(!b.extents(1 << 20, 0).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_blocking_pool_path_gives_the_same_bytes() {
        let (_d, b) = backend(1 << 20);
        let b = b.with_inline_max(0);
        assert_eq!(b.inline_max(), 0);
        b.write(100, Bytes::from_static(b"pool"), false)
            .await
            .unwrap();
        assert_eq!(&b.read(100, 4).await.unwrap()[..], b"pool");
    }

    #[test]
    fn a_slow_inline_call_closes_the_gate_for_the_back_off() {
        let gate = InlineGate::new();
        assert!(gate.open());
        assert_eq!(gate.run(|| 7), 7);
        assert!(gate.open(), "a fast call keeps it open");
        gate.run(|| std::thread::sleep(INLINE_SLOW * 3));
        assert!(!gate.open(), "a slow call closes it");
    }

    #[tokio::test]
    async fn read_only_refuses_writes() {
        let (d, b) = backend(4096);
        drop(b);
        let ro = FileBackend::open(d.path().join("vol.raw"), true).unwrap();
        assert!(ro.read_only());
        assert!(matches!(
            ro.write(0, Bytes::from_static(b"x"), false).await,
            Err(BackendError::NotPermitted(_))
        ));
        assert!(matches!(
            ro.trim(0, 1).await,
            Err(BackendError::NotPermitted(_))
        ));
        assert_eq!(ro.read(0, 4096).await.unwrap().len(), 4096);
    }
}
