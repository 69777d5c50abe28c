//! Memory of an open disk does not follow its size: a 1 TiB disk on a
//! sparse file costs about what a 1 GiB one does (the segment table holds
//! 11 bytes per segment and nothing per block; per-block state lives in the
//! index).

use std::sync::Arc;

use mlsdisk_core::bio::{FileDisk, BLOCK_SIZE};
use mlsdisk_core::disk::{DiskConfig, MlsDisk, NoAnchor};
use mlsdisk_core::platform::StdCrypto;

/// Resident memory of this process in KiB.
fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    l.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Creates a disk of `gib` GiB on a sparse file, writes 4096 blocks spread
/// over it, syncs, reopens; returns (disk-layer bytes after create, after
/// the writes, after the reopen, RSS growth in KiB over the whole run).
fn measure(gib: u64) -> (u64, u64, u64, u64) {
    let dir = std::env::temp_dir().join(format!("mlsd-mem-{}-{gib}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("disk.img");
    let rss0 = rss_kib();
    let dev = FileDisk::create(&path, gib << 18, false).unwrap();
    let key = [3u8; 32];
    let mut d = MlsDisk::create(
        dev,
        Arc::new(StdCrypto),
        &key,
        DiskConfig::default(),
        Box::new(NoAnchor),
    )
    .unwrap();
    let at_create = d.stats().disk_memory_bytes;
    let cap = d.nblocks();
    let block = vec![0x77u8; BLOCK_SIZE];
    for i in 0..4096u64 {
        d.write(i * (cap / 4096), &block).unwrap();
    }
    d.sync().unwrap();
    let written = d.stats().disk_memory_bytes;
    drop(d);
    let dev = FileDisk::open(&path, false).unwrap();
    let mut d = MlsDisk::open(
        dev,
        Arc::new(StdCrypto),
        &key,
        DiskConfig::default(),
        Box::new(NoAnchor),
    )
    .unwrap();
    let mut r = vec![0u8; BLOCK_SIZE];
    d.read(cap / 4096 * 17, &mut r).unwrap();
    assert_eq!(r, block);
    let reopened = d.stats().disk_memory_bytes;
    let rss = rss_kib().saturating_sub(rss0);
    drop(d);
    std::fs::remove_dir_all(&dir).unwrap();
    (at_create, written, reopened, rss)
}

#[test]
fn a_terabyte_disk_costs_about_what_a_gigabyte_disk_costs() {
    let small = measure(1);
    let big = measure(1024);
    eprintln!("1 GiB: {small:?}; 1 TiB: {big:?} (disk-layer bytes at create, after 4096 writes, after reopen; RSS growth KiB)");
    const MIB: u64 = 1 << 20;
    // Nothing per block of the disk at create or open: the fixed part
    // (buffers, 11 bytes per segment) stays under 32 MiB at 1 TiB, and
    // grows from 1 GiB to 1 TiB by less than 16 MiB (the former per-block
    // arrays grew by 2 GiB).
    assert!(big.0 <= 32 * MIB, "1 TiB disk at create: {} bytes", big.0);
    assert!(
        big.0 - small.0.min(big.0) <= 16 * MIB,
        "{small:?} -> {big:?}"
    );
    // Nothing per block written: no forward or reverse map in memory (the
    // segment table is per segment, its summaries per open segment), so
    // 4096 writes spread over the disk and a reopen leave the disk layer's
    // memory exactly where create put it.
    for (s, what) in [(small, "1 GiB"), (big, "1 TiB")] {
        assert_eq!(s.1, s.0, "{what}: writes grew the disk layer: {s:?}");
        assert_eq!(s.2, s.0, "{what}: the reopen holds more: {s:?}");
    }
    // The whole process, index caches included, stays within the fixed
    // part plus the default cache budget.
    assert!(big.3 <= 96 * 1024, "1 TiB disk: RSS grew by {} KiB", big.3);
}
