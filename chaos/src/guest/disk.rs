//! Reading the records the probe guest left on a disk, from the host side.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::BLOCK_SIZE;

/// What [`disk_records`] found on a probe disk. Block `n` (n ≥ 1) "holds its record"
/// when it starts with `METRODR-REC n end`, the rule the guest itself uses at boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskRecords {
    /// The highest `n` such that blocks `1..=n` all hold their records (0: none).
    /// This is what the guest's boot-time binary search finds on a disk without holes,
    /// and what RPO checks compare with the last acknowledged record.
    pub contiguous: u64,
    /// `Some(contiguous + 1)` when that block lacks its record but some later block
    /// holds one: a hole, i.e. a write that was lost while a later one survived. The
    /// guest never writes record n+1 before n was acknowledged, so a hole means the
    /// disk (or its replication) lost an acknowledged write.
    pub first_gap: Option<u64>,
    /// The highest block that holds its record, if any.
    pub highest: Option<u64>,
    /// Whole 4 KiB blocks on the disk, block 0 (unused) included.
    pub blocks: u64,
}

/// Reads the records on a raw disk image (or any file or block device); see
/// [`DiskRecords`]. Reads the whole disk once, 1 MiB at a time: the cost is the disk's
/// size (a 16 MiB probe disk takes milliseconds). Uses the page cache, so read a disk
/// after its guest stopped, or a file whose writers use it too.
pub fn disk_records(path: &Path) -> io::Result<DiskRecords> {
    let mut file = File::open(path)?;
    // Seeking to the end also sizes block devices, where metadata().len() is 0.
    let size = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    let blocks = size / BLOCK_SIZE;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut block = vec![0u8; BLOCK_SIZE as usize];
    let mut found = DiskRecords {
        blocks,
        ..DiskRecords::default()
    };
    let mut in_prefix = true;
    for n in 0..blocks {
        reader.read_exact(&mut block)?;
        if n == 0 {
            continue;
        }
        if holds_record(&block, n) {
            found.highest = Some(n);
            if in_prefix {
                found.contiguous = n;
            } else if found.first_gap.is_none() {
                found.first_gap = Some(found.contiguous + 1);
            }
        } else {
            in_prefix = false;
        }
    }
    Ok(found)
}

/// The guest's test: `head -c 40 | grep -q "^METRODR-REC $n end"`.
fn holds_record(block: &[u8], n: u64) -> bool {
    block.starts_with(format!("METRODR-REC {n} end").as_bytes())
}
