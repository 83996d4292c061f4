//! One replica's data file and its change tracking: positional I/O on a sparse raw
//! file, the activity log and the dirty bitmap ([`crate::meta`]), and a range lock that
//! orders overlapping writes (so the local file and the stream see them in one order).
//!
//! The data I/O is the NBD [`FileBackend`]'s (small reads and writes inline on the
//! calling task, large ones and every fsync on tokio's blocking pool; zeroing by
//! fallocate; extents by SEEK_DATA/SEEK_HOLE).

use std::collections::{BTreeSet, HashMap};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::backend::{BackendError, BlockBackend};
use crate::meta::{ActivityLog, Bitmap, DEFAULT_AL_REGIONS, MetaError};
use crate::nbd::FileBackend;

fn io(e: BackendError) -> std::io::Error {
    match e {
        BackendError::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until no held range overlaps, then holds `[start, end)` until dropped.
#[derive(Debug, Default)]
pub struct RangeLock {
    held: Mutex<Vec<(u64, u64, u64)>>,
    next: Mutex<u64>,
    released: Notify,
}

pub struct RangeGuard<'a> {
    lock: &'a RangeLock,
    id: u64,
}

impl RangeLock {
    pub async fn lock(&self, start: u64, end: u64) -> RangeGuard<'_> {
        let id = {
            let mut n = lock(&self.next);
            *n += 1;
            *n
        };
        loop {
            let wait = self.released.notified();
            {
                let mut held = lock(&self.held);
                if !held.iter().any(|(s, e, _)| *s < end && start < *e) {
                    held.push((start, end, id));
                    return RangeGuard { lock: self, id };
                }
            }
            wait.await;
        }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        lock(&self.lock.held).retain(|(_, _, id)| *id != self.id);
        self.lock.released.notify_waiters();
    }
}

#[derive(Debug)]
struct Tracking {
    al: ActivityLog,
    bitmap: Bitmap,
    /// Writes in flight per region (a busy region is never evicted from the log).
    inflight: HashMap<u32, u32>,
}

/// One volume's replica on this host.
#[derive(Debug)]
pub struct VolumeFile {
    pub id: String,
    pub path: PathBuf,
    pub size: u64,
    pub region_size: u32,
    data: FileBackend,
    pub ranges: RangeLock,
    tracking: Mutex<Tracking>,
    /// A drill snapshot of this replica, copying chunks before they change.
    preserver: Mutex<Option<Arc<crate::snapshot::Preserver>>>,
    /// The disk under this replica has failed (a fault the lab injects through the
    /// agent): every read, write and flush fails with an I/O error, as a dying disk's
    /// would, until it is repaired.
    failed: std::sync::atomic::AtomicBool,
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{path}: {what}")]
    Io {
        path: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Meta(#[from] MetaError),
}

impl VolumeFile {
    /// Open a data file, creating it sparse with `size` when it does not exist. An
    /// existing file keeps its size (it must be at least `size` when one is given).
    pub fn open(
        id: &str,
        path: &Path,
        size: Option<u64>,
        region_size: u32,
    ) -> Result<VolumeFile, VolumeError> {
        let io = |what: &str| {
            let path = path.to_path_buf();
            let what = what.to_string();
            move |source| VolumeError::Io { path, what, source }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(size.is_some())
            .truncate(false)
            .open(path)
            .map_err(io("open"))?;
        let mut len = file.metadata().map_err(io("stat"))?.len();
        if let Some(want) = size
            && len < want
        {
            file.set_len(want).map_err(io("set size"))?;
            len = want;
        }
        let regions = u32::try_from(len.div_ceil(u64::from(region_size))).unwrap_or(u32::MAX);
        Ok(VolumeFile {
            id: id.to_string(),
            path: path.to_path_buf(),
            size: len,
            region_size,
            data: FileBackend::new(file, len, false, path.to_path_buf()),
            ranges: RangeLock::default(),
            tracking: Mutex::new(Tracking {
                al: ActivityLog::open(path, DEFAULT_AL_REGIONS)?,
                bitmap: Bitmap::open(path, regions)?,
                inflight: HashMap::new(),
            }),
            preserver: Mutex::new(None),
            failed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Attach (or detach, with None) a snapshot's copy-on-write preserver.
    pub fn set_preserver(&self, p: Option<Arc<crate::snapshot::Preserver>>) {
        *lock(&self.preserver) = p;
    }

    /// Detach `p` if it is the one attached.
    pub fn clear_preserver(&self, p: &Arc<crate::snapshot::Preserver>) {
        let mut cur = lock(&self.preserver);
        if cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, p)) {
            *cur = None;
        }
    }

    pub fn preserver(&self) -> Option<Arc<crate::snapshot::Preserver>> {
        lock(&self.preserver).clone()
    }

    pub fn regions(&self) -> u32 {
        u32::try_from(self.size.div_ceil(u64::from(self.region_size))).unwrap_or(u32::MAX)
    }

    pub fn regions_of(&self, offset: u64, len: u64) -> std::ops::RangeInclusive<u32> {
        let rs = u64::from(self.region_size);
        let first = offset / rs;
        let last = (offset + len.max(1) - 1) / rs;
        (first as u32)..=(last as u32)
    }

    /// Fail (or repair) the disk under this replica: see [`VolumeFile::is_failed`].
    pub fn set_failed(&self, failed: bool) {
        self.failed
            .store(failed, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_failed(&self) -> bool {
        self.failed.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn check_disk(&self) -> std::io::Result<()> {
        if self.is_failed() {
            return Err(std::io::Error::other(format!(
                "{}: input/output error (the disk under this replica failed)",
                self.path.display()
            )));
        }
        Ok(())
    }

    pub async fn read(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        self.check_disk()?;
        let len =
            u32::try_from(len).map_err(|_| std::io::Error::other("read larger than 4 GiB"))?;
        self.data.read(offset, len).await.map_err(io)
    }

    pub async fn write(&self, offset: u64, data: Bytes) -> std::io::Result<()> {
        self.check_disk()?;
        if let Some(p) = self.preserver() {
            p.preserve(offset, data.len() as u64).await?;
        }
        self.data.write(offset, data, false).await.map_err(io)
    }

    /// Make the range read as zeroes; `trim`: it may be deallocated (a hole).
    pub async fn zero(&self, offset: u64, len: u64, trim: bool) -> std::io::Result<()> {
        self.check_disk()?;
        if let Some(p) = self.preserver() {
            p.preserve(offset, len).await?;
        }
        self.data
            .write_zeroes(offset, len, false, trim)
            .await
            .map_err(io)
    }

    pub async fn sync(&self) -> std::io::Result<()> {
        self.check_disk()?;
        self.data.flush().await.map_err(io)
    }

    /// Allocation status (holes read as zeroes and cost nothing to copy).
    pub async fn extents(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<Vec<crate::backend::Extent>, BackendError> {
        self.data.extents(offset, len).await
    }

    /// CRC-32C of each region, read from the file (blocking pool).
    pub async fn region_sums(
        self: &Arc<Self>,
        regions: Vec<u32>,
    ) -> std::io::Result<Vec<(u32, u32)>> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; me.region_size as usize];
            regions
                .into_iter()
                .map(|r| {
                    let off = u64::from(r) * u64::from(me.region_size);
                    let n = (me.size.saturating_sub(off)).min(u64::from(me.region_size)) as usize;
                    me.data.file().read_exact_at(&mut buf[..n], off)?;
                    Ok((r, crc32c::crc32c(&buf[..n])))
                })
                .collect()
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Before a write to `regions` is issued: log them (durably, when new) in the
    /// activity log, and in the bitmap too when the peer will not get the write.
    /// Blocking (fsync) only when something new must reach the disk.
    pub async fn track(
        self: &Arc<Self>,
        regions: std::ops::RangeInclusive<u32>,
        dirty: bool,
    ) -> Result<(), VolumeError> {
        let need_io = {
            let mut t = lock(&self.tracking);
            for r in regions.clone() {
                *t.inflight.entry(r).or_default() += 1;
            }
            regions
                .clone()
                .any(|r| !t.al.contains(r) || (dirty && !t.bitmap.get(r)))
        };
        if !need_io {
            return Ok(());
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut t = lock(&me.tracking);
            for r in regions {
                let Tracking {
                    al,
                    inflight,
                    bitmap,
                } = &mut *t;
                al.touch(r, |x| inflight.get(&x).copied().unwrap_or(0) > 0)?;
                if dirty {
                    bitmap.set(r)?;
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| VolumeError::Io {
            path: self.path.clone(),
            what: "tracking".into(),
            source: std::io::Error::other(e),
        })?
    }

    /// The write to `regions` completed (locally).
    pub fn untrack(&self, regions: std::ops::RangeInclusive<u32>) {
        let mut t = lock(&self.tracking);
        for r in regions {
            if let Some(n) = t.inflight.get_mut(&r) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    t.inflight.remove(&r);
                }
            }
        }
    }

    /// Mark regions dirty (the peer misses them), durably (one fsync).
    pub async fn mark_dirty(self: &Arc<Self>, regions: Vec<u32>) -> Result<(), VolumeError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || lock(&me.tracking).bitmap.set_many(regions).map(|_| ()))
            .await
            .map_err(|e| VolumeError::Io {
                path: self.path.clone(),
                what: "bitmap".into(),
                source: std::io::Error::other(e),
            })?
            .map_err(VolumeError::from)
    }

    /// At the start of a primary run: every region in the activity log may hold a
    /// write the peer lacks; record them in the bitmap (durably). Blocking.
    pub fn fold_al_into_bitmap(&self) -> Result<u64, VolumeError> {
        let mut t = lock(&self.tracking);
        let al = t.al.regions();
        Ok(t.bitmap.set_many(al)?)
    }

    /// Regions that may differ from the peer: activity log ∪ dirty bitmap.
    pub fn changed_regions(&self) -> BTreeSet<u32> {
        let t = lock(&self.tracking);
        t.al.regions()
            .into_iter()
            .chain(t.bitmap.set_regions())
            .collect()
    }

    pub fn al_regions(&self) -> Vec<u32> {
        lock(&self.tracking).al.regions()
    }

    pub fn dirty_count(&self) -> u64 {
        lock(&self.tracking).bitmap.count()
    }

    /// After the peer was brought up to date: forget the dirty bits and the idle part of
    /// the activity log.
    pub fn synced(&self, regions: &BTreeSet<u32>) -> Result<(), VolumeError> {
        let mut t = lock(&self.tracking);
        for r in regions {
            t.bitmap.clear(*r)?;
        }
        t.bitmap.sync()?;
        if t.inflight.is_empty() {
            t.al.clear()?;
        }
        Ok(())
    }

    /// Forget the activity log (a secondary after a completed resync, or any replica
    /// on a clean stop once everything is durable and confirmed).
    pub fn clear_al(&self) -> Result<(), VolumeError> {
        Ok(lock(&self.tracking).al.clear()?)
    }

    /// A secondary made everything it applied durable (fsync): no region is busy any
    /// more (regions stay in the log until evicted).
    pub fn all_flushed(&self) {
        lock(&self.tracking).inflight.clear();
    }

    /// Has a write been applied since the last [`all_flushed`](Self::all_flushed)?
    pub fn has_unflushed(&self) -> bool {
        !lock(&self.tracking).inflight.is_empty()
    }
}

/// Open a replica's data file and its metadata, creating both when missing: a new
/// data file of `size` bytes with `role` at `epoch`. Existing metadata wins over
/// `role`/`epoch` (roles change only through promotion and demotion).
pub fn open_replica(
    id: &str,
    path: &Path,
    size: Option<u64>,
    role: crate::meta::Role,
    epoch: ids::Epoch,
) -> Result<(Arc<VolumeFile>, crate::meta::ReplicaMeta), VolumeError> {
    let existing = crate::meta::ReplicaMeta::load(path)?;
    let region_size = existing
        .as_ref()
        .map_or(crate::meta::DEFAULT_REGION_SIZE, |m| m.region_size);
    let vol = VolumeFile::open(id, path, size, region_size)?;
    let meta = match existing {
        Some(m) => {
            if m.size != vol.size {
                return Err(VolumeError::Meta(MetaError::Corrupt {
                    path: crate::meta::meta_path(path),
                    why: format!(
                        "metadata says {} bytes, the data file has {}",
                        m.size, vol.size
                    ),
                }));
            }
            m
        }
        None => {
            let m = crate::meta::ReplicaMeta::new(id, vol.size, role, epoch);
            m.save(path)?;
            m
        }
    };
    Ok((Arc::new(vol), meta))
}

#[cfg(test)]
mod disk_fault_tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_disk_fails_every_io_until_it_is_repaired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v =
            VolumeFile::open("v", &dir.path().join("v.raw"), Some(1 << 20), 1 << 16).expect("open");
        v.write(0, Bytes::from(vec![7u8; 4096]))
            .await
            .expect("write");
        v.set_failed(true);
        assert!(v.is_failed());
        let e = v
            .write(4096, Bytes::from(vec![1u8; 4096]))
            .await
            .expect_err("failed disk");
        assert!(
            e.to_string().contains("the disk under this replica failed"),
            "{e}"
        );
        assert!(v.read(0, 4096).await.is_err());
        assert!(v.zero(0, 4096, false).await.is_err());
        assert!(v.sync().await.is_err());
        v.set_failed(false);
        assert_eq!(v.read(0, 4096).await.expect("read")[..], [7u8; 4096][..]);
        v.write(4096, Bytes::from(vec![1u8; 4096]))
            .await
            .expect("repaired");
    }
}
