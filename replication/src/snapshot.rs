//! Copy-on-write snapshots of a secondary consistency group, for test drills (DESIGN §5,
//! §7).
//!
//! A snapshot freezes every volume of the group at one sequence point of the primary's
//! stream: it is taken between two applied frames (the secondary applies frames one at
//! a time, under the group's apply lock), so no frame is half in it and all volumes
//! hold the same `last_seq`. From then on replication goes on: before the secondary
//! changes a chunk the snapshot has not preserved yet, the old chunk is copied into the
//! snapshot's preserve file ([`Preserver::preserve`], under the preserver's lock, so a
//! reader never sees the new data in the snapshot). Snapshot reads take a preserved
//! chunk from the preserve file and every other chunk from the live replica.
//!
//! The drill's VMs write to a private overlay per volume (4 KiB blocks, a sparse file
//! and a bitmap): their writes never reach the replica, the primary or the other site.
//!
//! Never: let a snapshot read return data written after its sequence point; let a
//! drill write reach the replica file.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::backend::{BackendError, BlockBackend};
use crate::volume::VolumeFile;

/// Preservation granularity: the first change to a chunk copies the whole chunk.
pub const CHUNK: u64 = 64 * 1024;
/// Overlay granularity.
pub const BLOCK: u64 = 4096;

/// A set of chunk or block numbers.
#[derive(Debug, Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: u64) -> Bits {
        Bits(vec![0; n.div_ceil(64) as usize])
    }
    fn get(&self, i: u64) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    fn set(&mut self, i: u64) {
        if let Some(w) = self.0.get_mut((i / 64) as usize) {
            *w |= 1 << (i % 64);
        }
    }
    fn count(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

/// The copy-on-write side of one volume's snapshot, attached to the live replica
/// ([`VolumeFile::set_preserver`]) while the snapshot exists.
#[derive(Debug)]
pub struct Preserver {
    live: Arc<VolumeFile>,
    store: File,
    store_path: PathBuf,
    /// Chunks copied to the store. Held while copying and while a snapshot read looks
    /// at the live file, so that a chunk is never overwritten under a reader.
    preserved: tokio::sync::Mutex<Bits>,
}

impl Preserver {
    fn chunk_len(&self, c: u64) -> u64 {
        CHUNK.min(self.live.size.saturating_sub(c * CHUNK))
    }

    /// Before `[offset, offset + len)` of the live replica changes: copy every chunk
    /// of it the snapshot has not preserved yet.
    pub async fn preserve(&self, offset: u64, len: u64) -> std::io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let first = offset / CHUNK;
        let last = (offset + len - 1) / CHUNK;
        let mut done = self.preserved.lock().await;
        for c in first..=last {
            if done.get(c) {
                continue;
            }
            let n = self.chunk_len(c);
            if n == 0 {
                continue;
            }
            let old = self.live.read(c * CHUNK, n as usize).await?;
            self.store.write_all_at(&old, c * CHUNK)?;
            done.set(c);
        }
        Ok(())
    }

    /// Chunks copied so far.
    pub async fn preserved_chunks(&self) -> u64 {
        self.preserved.lock().await.count()
    }

    /// Read the volume as it was at the snapshot.
    async fn read(&self, offset: u64, len: u64) -> std::io::Result<Bytes> {
        let mut out = BytesMut::with_capacity(len as usize);
        let end = offset + len;
        let mut at = offset;
        let done = self.preserved.lock().await;
        while at < end {
            let c = at / CHUNK;
            let upto = ((c + 1) * CHUNK).min(end);
            let n = (upto - at) as usize;
            if done.get(c) {
                let mut buf = vec![0u8; n];
                self.store.read_exact_at(&mut buf, at)?;
                out.extend_from_slice(&buf);
            } else {
                out.extend_from_slice(&self.live.read(at, n).await?);
            }
            at = upto;
        }
        Ok(out.freeze())
    }
}

/// One volume of a snapshot as the drill's VM sees it: the snapshot, with the VM's own
/// writes in a private overlay. An NBD [`BlockBackend`].
#[derive(Debug)]
pub struct SnapshotVolume {
    pub id: String,
    size: u64,
    base: Arc<Preserver>,
    overlay: File,
    overlay_path: PathBuf,
    /// Overlay blocks the VM wrote; held while writing (read-modify-write of partial
    /// blocks).
    written: tokio::sync::Mutex<Bits>,
}

impl SnapshotVolume {
    async fn read_view(&self, offset: u64, len: u64) -> std::io::Result<Bytes> {
        let written = self.written.lock().await;
        self.read_locked(&written, offset, len).await
    }

    async fn read_locked(&self, written: &Bits, offset: u64, len: u64) -> std::io::Result<Bytes> {
        let mut out = BytesMut::with_capacity(len as usize);
        let end = offset + len;
        let mut at = offset;
        while at < end {
            // A run of blocks from the same source.
            let b = at / BLOCK;
            let mine = written.get(b);
            let mut upto = ((b + 1) * BLOCK).min(end);
            while upto < end && written.get(upto / BLOCK) == mine {
                upto = ((upto / BLOCK + 1) * BLOCK).min(end);
            }
            let n = upto - at;
            if mine {
                let mut buf = vec![0u8; n as usize];
                self.overlay.read_exact_at(&mut buf, at)?;
                out.extend_from_slice(&buf);
            } else {
                out.extend_from_slice(&self.base.read(at, n).await?);
            }
            at = upto;
        }
        Ok(out.freeze())
    }

    async fn write_view(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut written = self.written.lock().await;
        let end = offset + data.len() as u64;
        let first = offset / BLOCK;
        let last = (end - 1) / BLOCK;
        // Partial first and last blocks: what the VM saw there, then its bytes.
        let start = first * BLOCK;
        let stop = ((last + 1) * BLOCK).min(self.size);
        let mut buf = if start < offset || stop > end {
            let mut b = self
                .read_locked(&written, start, stop - start)
                .await?
                .to_vec();
            b[(offset - start) as usize..(end - start) as usize].copy_from_slice(data);
            b
        } else {
            data.to_vec()
        };
        buf.truncate((stop - start) as usize);
        self.overlay.write_all_at(&buf, start)?;
        for b in first..=last {
            written.set(b);
        }
        Ok(())
    }
}

impl BlockBackend for SnapshotVolume {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, BackendError> {
        Ok(self.read_view(offset, u64::from(len)).await?)
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BackendError> {
        self.write_view(offset, &data).await?;
        if fua {
            self.overlay.sync_data()?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), BackendError> {
        Ok(self.overlay.sync_data()?)
    }

    async fn trim(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        // The contents no longer matter: zeroes are as good as anything.
        self.write_zeroes(offset, len, false, true).await
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        _may_trim: bool,
    ) -> Result<(), BackendError> {
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let n = (end - at).min(1 << 20);
            self.write_view(at, &vec![0u8; n as usize]).await?;
            at += n;
        }
        if fua {
            self.overlay.sync_data()?;
        }
        Ok(())
    }
}

/// A snapshot of a whole group at one sequence point.
#[derive(Debug)]
pub struct GroupSnapshot {
    pub group: String,
    /// The last sequence number of the primary's stream the snapshot holds.
    pub seq: ids::GroupSeq,
    pub volumes: Vec<Arc<SnapshotVolume>>,
    preservers: Vec<Arc<Preserver>>,
    dir: PathBuf,
}

impl GroupSnapshot {
    /// Create the snapshot's files in `dir` and attach a preserver to each live
    /// volume. The caller makes sure no write is being applied meanwhile (a secondary:
    /// [`crate::secondary::ReplicaGroup::snapshot`] holds its apply lock)
    /// and passes the sequence number of the last applied frame.
    pub fn attach(
        group: &str,
        live: &[Arc<VolumeFile>],
        seq: ids::GroupSeq,
        dir: &Path,
    ) -> Result<GroupSnapshot, String> {
        std::fs::create_dir_all(dir).map_err(|e| {
            format!(
                "cannot create the snapshot directory {}: {e}",
                dir.display()
            )
        })?;
        let open = |path: &Path, size: u64| -> Result<File, String> {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            f.set_len(size)
                .map_err(|e| format!("cannot size {}: {e}", path.display()))?;
            Ok(f)
        };
        let mut preservers = Vec::new();
        let mut volumes = Vec::new();
        for v in live {
            let store_path = dir.join(format!("{}.preserved", v.id));
            let overlay_path = dir.join(format!("{}.overlay", v.id));
            let base = Arc::new(Preserver {
                live: v.clone(),
                store: open(&store_path, v.size)?,
                store_path,
                preserved: tokio::sync::Mutex::new(Bits::new(v.size.div_ceil(CHUNK))),
            });
            volumes.push(Arc::new(SnapshotVolume {
                id: v.id.clone(),
                size: v.size,
                base: base.clone(),
                overlay: open(&overlay_path, v.size)?,
                overlay_path,
                written: tokio::sync::Mutex::new(Bits::new(v.size.div_ceil(BLOCK))),
            }));
            preservers.push(base);
        }
        for (v, p) in live.iter().zip(&preservers) {
            v.set_preserver(Some(p.clone()));
        }
        Ok(GroupSnapshot {
            group: group.to_string(),
            seq,
            volumes,
            preservers,
            dir: dir.to_path_buf(),
        })
    }

    /// Chunks replication had to copy so far, over all volumes.
    pub async fn preserved_chunks(&self) -> u64 {
        let mut n = 0;
        for p in &self.preservers {
            n += p.preserved_chunks().await;
        }
        n
    }

    /// Detach from the live volumes (replication copies nothing more) and delete the
    /// snapshot's files.
    pub fn drop_files(&self) {
        for p in &self.preservers {
            p.live.clear_preserver(p);
            let _ = std::fs::remove_file(&p.store_path);
        }
        for v in &self.volumes {
            let _ = std::fs::remove_file(&v.overlay_path);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn volume(dir: &Path, size: u64) -> Arc<VolumeFile> {
        Arc::new(VolumeFile::open("v", &dir.join("v.raw"), Some(size), 1 << 20).unwrap())
    }

    fn fill(b: u8, n: usize) -> Bytes {
        Bytes::from(vec![b; n])
    }

    #[tokio::test]
    async fn the_snapshot_keeps_its_point_while_the_replica_changes() {
        let dir = tempfile::tempdir().unwrap();
        let v = volume(dir.path(), 1 << 20);
        v.write(0, fill(b'A', 1 << 20)).await.unwrap();
        let snap = GroupSnapshot::attach(
            "g",
            std::slice::from_ref(&v),
            ids::GroupSeq(7),
            &dir.path().join("s"),
        )
        .unwrap();
        // Replication goes on: a partial chunk, a whole chunk, a zeroed range.
        v.write(100, fill(b'B', 10)).await.unwrap();
        v.write(CHUNK * 3, fill(b'C', CHUNK as usize))
            .await
            .unwrap();
        v.zero(CHUNK * 5, 3 * CHUNK, false).await.unwrap();
        let s = &snap.volumes[0];
        assert_eq!(s.read(0, 1 << 20).await.unwrap(), fill(b'A', 1 << 20));
        assert_eq!(&v.read(100, 10).await.unwrap()[..], &[b'B'; 10]);
        assert_eq!(snap.preserved_chunks().await, 1 + 1 + 3);
        // A second change of a preserved chunk copies nothing more.
        v.write(110, fill(b'D', 10)).await.unwrap();
        assert_eq!(snap.preserved_chunks().await, 5);
        assert_eq!(s.read(0, 4096).await.unwrap(), fill(b'A', 4096));
        snap.drop_files();
        assert!(!dir.path().join("s").exists());
        // Detached: changes copy nothing and the preserver is gone.
        v.write(CHUNK * 9, fill(b'E', 10)).await.unwrap();
        assert!(v.preserver().is_none());
    }

    #[tokio::test]
    async fn drill_writes_stay_in_the_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let v = volume(dir.path(), 256 * 1024);
        v.write(0, fill(b'A', 256 * 1024)).await.unwrap();
        let snap = GroupSnapshot::attach(
            "g",
            std::slice::from_ref(&v),
            ids::GroupSeq(1),
            &dir.path().join("s"),
        )
        .unwrap();
        let s = &snap.volumes[0];
        // Unaligned: read-modify-write of two partial blocks.
        s.write(4000, fill(b'X', 200), false).await.unwrap();
        let got = s.read(3996, 208).await.unwrap();
        assert_eq!(&got[..4], b"AAAA");
        assert_eq!(&got[4..204], &[b'X'; 200][..]);
        assert_eq!(&got[204..], b"AAAA");
        s.write_zeroes(8192, 4096, false, true).await.unwrap();
        assert_eq!(s.read(8192, 4096).await.unwrap(), fill(0, 4096));
        // The replica never saw any of it, and replication still preserves under it.
        assert_eq!(v.read(0, 256 * 1024).await.unwrap(), fill(b'A', 256 * 1024));
        v.write(4000, fill(b'R', 200)).await.unwrap();
        assert_eq!(&s.read(4000, 200).await.unwrap()[..], &[b'X'; 200][..]);
        assert_eq!(&s.read(5000, 10).await.unwrap()[..], b"AAAAAAAAAA");
        snap.drop_files();
    }
}
