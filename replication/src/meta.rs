//! Durable state of one replica, kept beside its data file:
//!
//! - `<data>.mdr.json` — [`ReplicaMeta`]: role, highest epoch seen, data generation and
//!   its history, whether the copy is consistent, last sequence number. Replaced
//!   atomically (write, fsync, rename, fsync the directory).
//! - `<data>.mdr.bitmap` — [`Bitmap`]: regions written while the peer did not get them
//!   (running degraded with permission, or async overflow). A bit is on disk (fsynced)
//!   before the write that set it is acknowledged.
//! - `<data>.mdr.al` — [`ActivityLog`]: regions that may have writes in flight, so that
//!   after a crash (or when an old primary returns) exactly those regions are compared
//!   and resynced. A region enters the log on disk (one slot written in place and
//!   fdatasync'd) before a write to it is issued.
//!
//! Each file carries a format version; a file of another version is refused.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ids::{Epoch, Generation, GroupSeq};
use serde::{Deserialize, Serialize};

pub const META_VERSION: u32 = 1;
/// Unit of change tracking and resync: 1 MiB.
pub const DEFAULT_REGION_SIZE: u32 = 1 << 20;
/// Regions the activity log holds before it evicts the least recently used one (4 GiB
/// of hot data with 1 MiB regions; what is resynced at most after a crash).
pub const DEFAULT_AL_REGIONS: usize = 4096;
/// Generations remembered (enough to tell "behind" from "diverged").
pub const HISTORY: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Primary,
    Secondary,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaMeta {
    pub version: u32,
    pub volume: String,
    pub size: u64,
    pub region_size: u32,
    pub role: Role,
    /// Highest epoch this replica has seen; frames from a lower epoch are refused.
    pub epoch: Epoch,
    /// Current data generation.
    pub generation: Generation,
    /// Earlier generations, oldest first.
    pub history: Vec<Generation>,
    /// The data is a complete copy as of `last_seq` (false while resyncing, or for a
    /// secondary that has never been synced).
    pub consistent: bool,
    /// Highest group sequence number written to this replica.
    pub last_seq: GroupSeq,
    /// Primary only: the orchestrator committed the peer as outdated; this replica
    /// runs alone and records what the peer misses in the bitmap.
    pub peer_outdated: bool,
    /// Primary only: the generation since which the dirty bitmap records every region
    /// the peer may lack (a peer at that generation, or the one just before it, can be
    /// brought back by copying the bitmap's regions). None: no tracking in force.
    #[serde(default)]
    pub tracked_since: Option<Generation>,
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("{path}: {what}")]
    Io {
        path: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Corrupt { path: PathBuf, why: String },
    /// Metadata of another format version (written by another metrodr version).
    #[error("{path}: metadata format {found} (this metrodr reads {META_VERSION})")]
    Version { path: PathBuf, found: u32 },
}

fn io_err(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> MetaError {
    let path = path.to_path_buf();
    let what = what.to_string();
    move |source| MetaError::Io { path, what, source }
}

/// The three metadata paths of a data file.
pub fn meta_path(data: &Path) -> PathBuf {
    with_suffix(data, ".mdr.json")
}
pub fn bitmap_path(data: &Path) -> PathBuf {
    with_suffix(data, ".mdr.bitmap")
}
pub fn al_path(data: &Path) -> PathBuf {
    with_suffix(data, ".mdr.al")
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// A fresh generation id: time and pid make it unique enough across sites.
pub fn new_generation() -> Generation {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Generation(format!("{now:x}-{:x}", std::process::id()))
}

impl ReplicaMeta {
    pub fn new(volume: &str, size: u64, role: Role, epoch: Epoch) -> Self {
        ReplicaMeta {
            version: META_VERSION,
            volume: volume.to_string(),
            size,
            region_size: DEFAULT_REGION_SIZE,
            role,
            epoch,
            generation: new_generation(),
            history: Vec::new(),
            // A new primary's data is what it is; a new secondary knows nothing yet.
            consistent: role == Role::Primary,
            last_seq: GroupSeq(0),
            peer_outdated: false,
            tracked_since: None,
        }
    }

    pub fn regions(&self) -> u32 {
        u32::try_from(self.size.div_ceil(u64::from(self.region_size))).unwrap_or(u32::MAX)
    }

    /// Start a new generation (promotion, or continuing without the peer).
    pub fn bump_generation(&mut self) {
        let old = std::mem::replace(&mut self.generation, new_generation());
        self.history.push(old);
        if self.history.len() > HISTORY {
            self.history.remove(0);
        }
    }

    pub fn load(data: &Path) -> Result<Option<Self>, MetaError> {
        let path = meta_path(data);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path, "read")(e)),
        };
        let m: ReplicaMeta = serde_json::from_slice(&text).map_err(|e| MetaError::Corrupt {
            path: path.clone(),
            why: format!("not valid replica metadata: {e}"),
        })?;
        if m.version != META_VERSION {
            return Err(MetaError::Version {
                path,
                found: m.version,
            });
        }
        Ok(Some(m))
    }

    /// Persist atomically and durably.
    pub fn save(&self, data: &Path) -> Result<(), MetaError> {
        let path = meta_path(data);
        let tmp = with_suffix(&path, ".tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| MetaError::Corrupt {
            path: path.clone(),
            why: e.to_string(),
        })?;
        let mut f = File::create(&tmp).map_err(io_err(&tmp, "create"))?;
        f.write_all(&bytes).map_err(io_err(&tmp, "write"))?;
        f.sync_all().map_err(io_err(&tmp, "fsync"))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path, "rename"))?;
        sync_parent(&path)?;
        Ok(())
    }
}

const BITMAP_MAGIC: &[u8; 8] = b"MDRBMAP1";
const BITMAP_HEADER: u64 = 16;

/// One bit per region, on disk. Setting a bit is durable when `set` returns true.
#[derive(Debug)]
pub struct Bitmap {
    file: File,
    path: PathBuf,
    bits: Vec<u8>,
    regions: u32,
}

impl Bitmap {
    /// Open or create the bitmap of `regions` regions.
    pub fn open(data: &Path, regions: u32) -> Result<Bitmap, MetaError> {
        let path = bitmap_path(data);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path, "open"))?;
        let nbytes = (regions as usize).div_ceil(8);
        let mut raw = Vec::new();
        file.read_to_end(&mut raw).map_err(io_err(&path, "read"))?;
        let bits = if raw.is_empty() {
            let mut head = Vec::with_capacity(BITMAP_HEADER as usize + nbytes);
            head.extend_from_slice(BITMAP_MAGIC);
            head.extend_from_slice(&u64::from(regions).to_be_bytes());
            head.resize(BITMAP_HEADER as usize + nbytes, 0);
            file.write_all_at(&head, 0)
                .map_err(io_err(&path, "write"))?;
            file.sync_all().map_err(io_err(&path, "fsync"))?;
            vec![0; nbytes]
        } else {
            if raw.len() < BITMAP_HEADER as usize || &raw[..8] != BITMAP_MAGIC {
                return Err(MetaError::Corrupt {
                    path,
                    why: "not a metrodr bitmap (bad magic)".into(),
                });
            }
            let n = u64::from_be_bytes(raw[8..16].try_into().unwrap_or([0; 8]));
            if n != u64::from(regions) || raw.len() != BITMAP_HEADER as usize + nbytes {
                return Err(MetaError::Corrupt {
                    path,
                    why: format!("bitmap for {n} regions, expected {regions}"),
                });
            }
            raw.split_off(BITMAP_HEADER as usize)
        };
        Ok(Bitmap {
            file,
            path,
            bits,
            regions,
        })
    }

    pub fn get(&self, region: u32) -> bool {
        self.bits
            .get(region as usize / 8)
            .is_some_and(|b| b & (1 << (region % 8)) != 0)
    }

    /// Set a bit durably. Returns whether it was newly set (a disk write happened).
    pub fn set(&mut self, region: u32) -> Result<bool, MetaError> {
        if region >= self.regions || self.get(region) {
            return Ok(false);
        }
        let i = region as usize / 8;
        self.bits[i] |= 1 << (region % 8);
        self.file
            .write_all_at(&self.bits[i..=i], BITMAP_HEADER + i as u64)
            .map_err(io_err(&self.path, "write"))?;
        self.file.sync_data().map_err(io_err(&self.path, "fsync"))?;
        Ok(true)
    }

    /// Set many bits with one fsync. Returns how many were newly set.
    pub fn set_many(&mut self, regions: impl IntoIterator<Item = u32>) -> Result<u64, MetaError> {
        let mut n = 0;
        for region in regions {
            if region < self.regions && !self.get(region) {
                self.bits[region as usize / 8] |= 1 << (region % 8);
                n += 1;
            }
        }
        if n > 0 {
            self.file
                .write_all_at(&self.bits, BITMAP_HEADER)
                .map_err(io_err(&self.path, "write"))?;
            self.file.sync_data().map_err(io_err(&self.path, "fsync"))?;
        }
        Ok(n)
    }

    /// Clear a bit (durable at the next `sync`): a clear bit that is lost only causes
    /// one more region to be resynced.
    pub fn clear(&mut self, region: u32) -> Result<(), MetaError> {
        if !self.get(region) {
            return Ok(());
        }
        let i = region as usize / 8;
        self.bits[i] &= !(1 << (region % 8));
        self.file
            .write_all_at(&self.bits[i..=i], BITMAP_HEADER + i as u64)
            .map_err(io_err(&self.path, "write"))
    }

    pub fn set_regions(&self) -> Vec<u32> {
        (0..self.regions).filter(|r| self.get(*r)).collect()
    }

    pub fn count(&self) -> u64 {
        self.bits.iter().map(|b| u64::from(b.count_ones())).sum()
    }

    pub fn sync(&self) -> Result<(), MetaError> {
        self.file.sync_data().map_err(io_err(&self.path, "fsync"))
    }
}

const AL_MAGIC: &[u8; 8] = b"MDRALOG2";
const AL_HEADER: u64 = 8;
const AL_EMPTY: u32 = u32::MAX;

/// The regions that may have writes in flight: an LRU set kept on disk as an array of
/// slots, so that entering a region costs one 4-byte write in place and an fdatasync
/// (no rename, nothing else to make durable). After a crash the set on disk covers
/// every region that was written without its peer's confirmation (a primary) or
/// without an fsync (a secondary).
#[derive(Debug)]
pub struct ActivityLog {
    file: File,
    path: PathBuf,
    capacity: usize,
    /// Region per slot ([`AL_EMPTY`]: free).
    slots: Vec<u32>,
    /// Region → its slot.
    index: std::collections::HashMap<u32, usize>,
    /// Most recently used last.
    lru: VecDeque<u32>,
}

impl ActivityLog {
    pub fn open(data: &Path, capacity: usize) -> Result<ActivityLog, MetaError> {
        let path = al_path(data);
        let capacity = capacity.max(1);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path, "open"))?;
        let mut raw = Vec::new();
        file.read_to_end(&mut raw).map_err(io_err(&path, "read"))?;
        let slots = if raw.is_empty() {
            let slots = vec![AL_EMPTY; capacity];
            let mut b = AL_MAGIC.to_vec();
            slots
                .iter()
                .for_each(|r| b.extend_from_slice(&r.to_be_bytes()));
            file.write_all_at(&b, 0).map_err(io_err(&path, "write"))?;
            file.sync_all().map_err(io_err(&path, "fsync"))?;
            sync_parent(&path)?;
            slots
        } else {
            if raw.len() < AL_HEADER as usize || &raw[..8] != AL_MAGIC || (raw.len() - 8) % 4 != 0 {
                return Err(MetaError::Corrupt {
                    path,
                    why: "not a metrodr activity log (bad magic or length)".into(),
                });
            }
            raw[8..]
                .chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let mut al = ActivityLog {
            file,
            path,
            capacity,
            slots,
            index: std::collections::HashMap::new(),
            lru: VecDeque::new(),
        };
        for (i, r) in al.slots.iter().enumerate() {
            if *r != AL_EMPTY && al.index.insert(*r, i).is_none() {
                al.lru.push_back(*r);
            }
        }
        Ok(al)
    }

    pub fn regions(&self) -> Vec<u32> {
        let mut r: Vec<u32> = self.index.keys().copied().collect();
        r.sort_unstable();
        r
    }

    pub fn contains(&self, region: u32) -> bool {
        self.index.contains_key(&region)
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Make sure `region` is in the log on disk before a write to it is issued.
    /// `busy(r)` tells whether region r may not be evicted now (writes in flight). When
    /// the log is full, the least recently used idle region gives up its slot; if every
    /// region is busy, the log grows. Returns true when the disk was written.
    pub fn touch(&mut self, region: u32, busy: impl Fn(u32) -> bool) -> Result<bool, MetaError> {
        if self.index.contains_key(&region) {
            if let Some(pos) = self.lru.iter().rposition(|r| *r == region) {
                self.lru.remove(pos);
                self.lru.push_back(region);
            }
            return Ok(false);
        }
        let slot = if self.index.len() < self.capacity
            && let Some(free) = self.slots.iter().position(|r| *r == AL_EMPTY)
        {
            free
        } else if let Some(pos) = self.lru.iter().position(|r| !busy(*r)) {
            let old = self.lru.remove(pos).unwrap_or(AL_EMPTY);
            self.index.remove(&old).unwrap_or(0)
        } else {
            self.slots.push(AL_EMPTY);
            self.slots.len() - 1
        };
        self.slots[slot] = region;
        self.index.insert(region, slot);
        self.lru.push_back(region);
        self.file
            .write_all_at(&region.to_be_bytes(), AL_HEADER + 4 * slot as u64)
            .map_err(io_err(&self.path, "write"))?;
        self.file.sync_data().map_err(io_err(&self.path, "fsync"))?;
        Ok(true)
    }

    /// Forget every region (after the peer confirmed everything, after a resync, or
    /// on a clean stop).
    pub fn clear(&mut self) -> Result<(), MetaError> {
        if self.index.is_empty() && self.slots.len() == self.capacity {
            return Ok(());
        }
        self.slots = vec![AL_EMPTY; self.capacity];
        self.index.clear();
        self.lru.clear();
        let mut b = Vec::with_capacity(4 * self.capacity);
        self.slots
            .iter()
            .for_each(|r| b.extend_from_slice(&r.to_be_bytes()));
        self.file
            .write_all_at(&b, AL_HEADER)
            .map_err(io_err(&self.path, "write"))?;
        self.file
            .set_len(AL_HEADER + b.len() as u64)
            .map_err(io_err(&self.path, "truncate"))?;
        self.file.sync_data().map_err(io_err(&self.path, "fsync"))
    }
}

fn sync_parent(path: &Path) -> Result<(), MetaError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync dir"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_refuses_other_versions() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("v.raw");
        assert!(ReplicaMeta::load(&data).unwrap().is_none());
        let mut m = ReplicaMeta::new("v", 10 << 20, Role::Primary, Epoch(1));
        m.bump_generation();
        m.save(&data).unwrap();
        assert_eq!(ReplicaMeta::load(&data).unwrap(), Some(m.clone()));
        assert_eq!(m.regions(), 10);
        m.version = 99;
        std::fs::write(meta_path(&data), serde_json::to_vec(&m).unwrap()).unwrap();
        assert!(matches!(
            ReplicaMeta::load(&data),
            Err(MetaError::Version { found: 99, .. })
        ));
        std::fs::write(meta_path(&data), b"{garbage").unwrap();
        assert!(ReplicaMeta::load(&data).is_err());
    }

    /// Metadata written before the counters were typed (the fixtures are files the
    /// code of then wrote) reads with every field, and is written back byte for byte:
    /// the typed epoch, sequence number and generations persist as the bare values.
    #[test]
    fn metadata_written_before_the_typed_counters_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        for (fixture, bytes) in [
            (
                "meta-v1-primary",
                &include_bytes!("../tests/fixtures/meta-v1-primary.mdr.json")[..],
            ),
            (
                "meta-v1-secondary",
                &include_bytes!("../tests/fixtures/meta-v1-secondary.mdr.json")[..],
            ),
        ] {
            let data = dir.path().join(format!("{fixture}.raw"));
            std::fs::write(meta_path(&data), bytes).unwrap();
            let m = ReplicaMeta::load(&data).unwrap().unwrap();
            assert_eq!(m.version, META_VERSION, "{fixture}");
            m.save(&data).unwrap();
            assert_eq!(
                std::fs::read(meta_path(&data)).unwrap(),
                bytes,
                "{fixture}: saved differently from the format of before"
            );
        }
        let data = dir.path().join("meta-v1-primary.raw");
        let m = ReplicaMeta::load(&data).unwrap().unwrap();
        assert_eq!(
            (m.role, m.epoch, m.last_seq, m.peer_outdated),
            (Role::Primary, Epoch(4), GroupSeq(812), true)
        );
        assert_eq!(m.generation, Generation::new("18c4a1f2b3d4e5f6-3039"));
        assert_eq!(
            m.history,
            vec![
                Generation::new("18c4a1f000000000-3038"),
                Generation::new("18c4a1f100000000-3038")
            ]
        );
        assert_eq!(
            m.tracked_since,
            Some(Generation::new("18c4a1f100000000-3038"))
        );
        let s = ReplicaMeta::load(&dir.path().join("meta-v1-secondary.raw"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (s.role, s.epoch, s.last_seq, s.consistent, s.tracked_since),
            (Role::Secondary, Epoch(2), GroupSeq(77), false, None)
        );
    }

    #[test]
    fn bitmap_bits_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("v.raw");
        let mut b = Bitmap::open(&data, 100).unwrap();
        assert!(b.set(3).unwrap());
        assert!(!b.set(3).unwrap(), "already set: no disk write");
        b.set(99).unwrap();
        b.set(42).unwrap();
        b.clear(42).unwrap();
        b.sync().unwrap();
        drop(b);
        let b = Bitmap::open(&data, 100).unwrap();
        assert_eq!(b.set_regions(), vec![3, 99]);
        assert_eq!(b.count(), 2);
        assert!(
            Bitmap::open(&data, 101).is_err(),
            "size mismatch is refused"
        );
    }

    #[test]
    fn the_activity_log_persists_and_evicts_idle_regions_only() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("v.raw");
        let mut al = ActivityLog::open(&data, 3).unwrap();
        assert!(al.touch(1, |_| false).unwrap());
        assert!(al.touch(2, |_| false).unwrap());
        assert!(!al.touch(1, |_| false).unwrap(), "already in: no rewrite");
        al.touch(3, |_| false).unwrap();
        // 2 is the least recently used; 1 was touched again.
        al.touch(4, |_| false).unwrap();
        assert_eq!(al.regions(), vec![1, 3, 4]);
        // A busy region is never evicted: the log grows instead.
        al.touch(5, |_| true).unwrap();
        assert_eq!(al.regions(), vec![1, 3, 4, 5]);
        drop(al);
        let al = ActivityLog::open(&data, 3).unwrap();
        assert_eq!(al.regions(), vec![1, 3, 4, 5]);
        let mut al = ActivityLog::open(&data, 3).unwrap();
        al.clear().unwrap();
        drop(al);
        let mut al = ActivityLog::open(&data, 3).unwrap();
        assert!(al.is_empty());
        for r in [7, 8, 9] {
            al.touch(r, |_| false).unwrap();
        }
        assert_eq!(
            std::fs::metadata(al_path(&data)).unwrap().len(),
            8 + 3 * 4,
            "reuses its slots"
        );
    }

    #[test]
    fn a_damaged_activity_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("v.raw");
        std::fs::write(al_path(&data), b"MDRALOG2\0\0").unwrap();
        assert!(
            ActivityLog::open(&data, 3)
                .unwrap_err()
                .to_string()
                .contains("activity log")
        );
        std::fs::write(al_path(&data), b"something else").unwrap();
        assert!(ActivityLog::open(&data, 3).is_err());
    }
}
