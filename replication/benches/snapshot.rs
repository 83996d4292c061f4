//! What a drill snapshot costs replication: 4 KiB writes applied to a secondary's
//! replica file (as the secondary applies the primary's stream) without a snapshot,
//! with a snapshot whose chunks are not preserved yet (each first write copies a 64 KiB
//! chunk), and with every chunk already preserved; plus the time to take a snapshot
//! and to read the snapshot back (a drill VM booting). A 256 MiB sparse file in /tmp.
//!
//! `cargo bench -p replication --bench snapshot` (`SNAP_BENCH_WRITES` sets the writes
//! per case, default 20000).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use replication::backend::BlockBackend;
use replication::snapshot::{CHUNK, GroupSnapshot};
use replication::volume::VolumeFile;

const SIZE: u64 = 256 << 20;

/// Deterministic pseudo-random 4 KiB-aligned offsets.
fn offsets(n: usize, seed: u64) -> Vec<u64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (SIZE / 4096)) * 4096
        })
        .collect()
}

async fn writes(v: &VolumeFile, offs: &[u64]) -> f64 {
    let data = Bytes::from(vec![0x5a; 4096]);
    let t = Instant::now();
    for o in offs {
        v.write(*o, data.clone()).await.unwrap();
    }
    offs.len() as f64 / t.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::var("SNAP_BENCH_WRITES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let v = Arc::new(
        VolumeFile::open("bench", &dir.path().join("v.raw"), Some(SIZE), 1 << 20).unwrap(),
    );
    // Fill it so that preserved chunks hold data (a sparse hole costs less to copy).
    let mb = Bytes::from(vec![0x11; 1 << 20]);
    for i in 0..(SIZE >> 20) {
        v.write(i << 20, mb.clone()).await.unwrap();
    }
    v.sync().await.unwrap();
    // Warm up, then the baseline on other offsets.
    let _ = writes(&v, &offsets(n, 1)).await;
    let plain = writes(&v, &offsets(n, 2)).await;
    let offs = offsets(n, 0x9e37_79b9_7f4a_7c15);

    let t = Instant::now();
    let snap = GroupSnapshot::attach(
        "bench",
        std::slice::from_ref(&v),
        ids::GroupSeq(1),
        &dir.path().join("s"),
    )
    .unwrap();
    let take_ms = t.elapsed().as_secs_f64() * 1000.0;
    let first = writes(&v, &offs).await;
    let chunks = snap.preserved_chunks().await;
    // Every chunk preserved: the hook only checks its bitmap.
    let again = writes(&v, &offs).await;

    let s = &snap.volumes[0];
    let t = Instant::now();
    let mut at = 0;
    while at < SIZE {
        let _ = s.read(at, 1 << 20).await.unwrap();
        at += 1 << 20;
    }
    let read_mbs = (SIZE >> 20) as f64 / t.elapsed().as_secs_f64();
    snap.drop_files();
    let after = writes(&v, &offsets(n, 4)).await;

    println!(
        "drill snapshot cost, {n} random 4 KiB writes on a {} MiB replica:",
        SIZE >> 20
    );
    println!("  no snapshot                        {plain:>9.0} writes/s");
    println!(
        "  snapshot, first writes             {first:>9.0} writes/s  ({:.0}% of plain; {chunks} chunks of {} KiB copied)",
        100.0 * first / plain,
        CHUNK / 1024
    );
    println!(
        "  snapshot, chunks already preserved {again:>9.0} writes/s  ({:.0}% of plain)",
        100.0 * again / plain
    );
    println!("  no snapshot, after dropping it     {after:>9.0} writes/s");
    println!("  taking the snapshot                {take_ms:>9.2} ms");
    println!("  reading the snapshot (1 MiB reads) {read_mbs:>9.0} MiB/s");
}
