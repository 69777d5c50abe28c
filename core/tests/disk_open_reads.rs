//! The device blocks read by a clean open and by crash recovery, at 1k,
//! 100k and 1M mapped blocks on
//! one device, with small tables (4096 records) so that the index has
//! many of them (hundreds at 1M). Counted, never timed.
//!
//! Open reads the superblock, the log store's journal, the tree's header
//! and its table manifest (a few blocks: about 45 tables a block), the
//! WALs of the memtables (bounded by the configuration: small memtables
//! here, so at most a few blocks) and the segment usage table (a few
//! index lookups). It reads no table footer, index or bloom block of its
//! own.
//!
//! `MLSDISK_OPEN_READS_SIZES=1000,100000` runs other sizes (the 1M case
//! writes 4 GiB through the engine: about a minute in release).

use std::sync::Arc;

use mlsdisk_core::bio::{FileDisk, BLOCK_SIZE};
use mlsdisk_core::disk::{DiskConfig, MlsDisk, NoAnchor};
use mlsdisk_core::platform::StdCrypto;

const KEY: [u8; 32] = [0x5a; 32];
/// 8 GiB sparse backing file: room for 1M mapped blocks and the cleaner.
const DEV_BLOCKS: u64 = 2 << 20;

fn cfg() -> DiskConfig {
    let mut c = DiskConfig::default();
    c.lsm.memtable_entries = 256;
    c.lsm.wal_max_blocks = 8;
    c.lsm.table_max_records = 4096;
    c.lsm.l1_max_records = 16 * 1024;
    c.lsm.level_ratio = 4;
    c
}

fn block(lba: u64, tag: u64) -> Vec<u8> {
    let mut b = vec![(lba as u8) ^ (tag as u8) | 1; BLOCK_SIZE];
    b[..8].copy_from_slice(&lba.to_le_bytes());
    b[8..16].copy_from_slice(&tag.to_le_bytes());
    b
}

fn open(path: &std::path::Path) -> MlsDisk<FileDisk> {
    let dev = FileDisk::open(path, false).unwrap();
    MlsDisk::open(dev, Arc::new(StdCrypto), &KEY, cfg(), Box::new(NoAnchor)).unwrap()
}

struct Reads {
    mapped: u64,
    tables: u32,
    levels: usize,
    clean: u64,
    recovery: u64,
}

/// Maps `mapped` blocks (1 MiB writes), syncs, closes; counts the device
/// blocks read by a clean open, then by the open after a crash (writes
/// and write-buffer flushes after the last sync, then the disk dropped).
fn open_reads(mapped: u64) -> Reads {
    // A directory of its own per run: the two tests may run at once.
    static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("mlsd-oreads-{}-{run}-{mapped}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("disk.img");
    let dev = FileDisk::create(&path, DEV_BLOCKS, false).unwrap();
    let mut d = MlsDisk::create(dev, Arc::new(StdCrypto), &KEY, cfg(), Box::new(NoAnchor)).unwrap();
    assert!(mapped <= d.nblocks(), "{} blocks", d.nblocks());
    let mut lba = 0;
    let mut buf = Vec::with_capacity(256 * BLOCK_SIZE);
    while lba < mapped {
        let n = (mapped - lba).min(256);
        buf.clear();
        for k in 0..n {
            buf.extend_from_slice(&block(lba + k, 1));
        }
        d.write(lba, &buf).unwrap();
        lba += n;
    }
    d.close().unwrap();

    let mut d = open(&path);
    let clean = d.device().counts().0;
    assert_eq!(d.stats().mapped_blocks, mapped);
    let st = d.index_stats().unwrap();
    let tables = st.tables.iter().sum();
    let levels = st.tables.iter().filter(|&&n| n > 0).count();
    for i in 0..600u64 {
        let l = (i * 7919) % mapped;
        d.write(l, &block(l, 2)).unwrap();
    }
    drop(d);
    let mut d = open(&path);
    let recovery = d.device().counts().0;
    assert_eq!(
        d.stats().mapped_blocks,
        mapped,
        "the crash lost nothing synced"
    );
    let mut r = vec![0u8; BLOCK_SIZE];
    for l in [0, mapped / 3, mapped - 1] {
        d.read(l, &mut r).unwrap();
        assert_eq!(r, block(l, 1), "lba {l}");
    }
    drop(d);
    std::fs::remove_dir_all(&dir).unwrap();
    Reads {
        mapped,
        tables,
        levels,
        clean,
        recovery,
    }
}

fn runs() -> Vec<Reads> {
    let sizes: Vec<u64> = match std::env::var("MLSDISK_OPEN_READS_SIZES") {
        Ok(s) => s.split(',').map(|x| x.trim().parse().unwrap()).collect(),
        Err(_) => vec![1_000, 100_000, 1_000_000],
    };
    assert!(sizes.len() >= 2, "need two sizes to compare");
    let runs: Vec<Reads> = sizes.iter().map(|&m| open_reads(m)).collect();
    for r in &runs {
        eprintln!(
            "mapped {:>8}: {:>4} tables in {} levels; device blocks read by open {}, by crash recovery {}",
            r.mapped, r.tables, r.levels, r.clean, r.recovery
        );
    }
    // The largest size has many tables: one footer per table would show.
    let last = runs.last().unwrap();
    assert!(
        last.mapped < 1_000_000 || last.tables >= 200,
        "expected many tables at {} mapped: {}",
        last.mapped,
        last.tables
    );
    runs
}

/// No read per table: open read one footer (and its Merkle path) per
/// table before the manifest, 1 to 2 blocks a table (271 tables at 1M
/// mapped here); now what still grows is far below one block per table:
/// the manifest (1/56 of a block a table), the log store's journal
/// snapshot (one entry per log, about 1/37 of a block), and the lookups
/// of the segment usage table through whatever L0 and levels the tree
/// has (measured: 27, 31, 67 blocks at 1k, 100k, 1M mapped).
#[test]
fn open_and_recovery_read_no_block_per_table() {
    let runs = runs();
    let first = &runs[0];
    for r in &runs[1..] {
        let allowed = 16 + u64::from(r.tables.saturating_sub(first.tables)) / 4;
        for (what, a, b) in [
            ("clean open", first.clean, r.clean),
            ("crash recovery", first.recovery, r.recovery),
        ] {
            assert!(
                b <= a + allowed,
                "{what}: {a} blocks at {} mapped ({} tables), {b} at {} ({} tables): \
                 more than {allowed} more",
                first.mapped,
                first.tables,
                r.mapped,
                r.tables
            );
        }
    }
}

/// The goal of issue 10: the same reads (within 8 blocks) at every size.
/// Not met yet. Counted by stage on c99808f (100k -> 1M mapped, 30 -> 272
/// tables, 4 levels both): the log store's open (superblock, journal
/// snapshot and the deltas after it) 18 -> 34 blocks, the tree's header
/// and manifest 6 -> 10, the segment usage table 9 -> 27, in all 33 -> 71
/// (28 at 1k). The usage table grows because only entries of segments
/// ever used exist (1k mapped: a few; 1M: most of 683), each level holding
/// versions of them; the journal because a snapshot names every log. Flat
/// needs the usage table stored densely outside the levels (one log,
/// rewritten in place of its deltas) and a journal whose replay does not
/// grow with the number of tables.
#[test]
#[ignore = "not met yet: 28 -> 71 blocks from 1k to 1M mapped (log store journal 18 -> 34, manifest 6 -> 10, usage table 9 -> 27)"]
fn open_and_recovery_reads_are_flat_from_1k_to_1m_mapped_blocks() {
    let runs = runs();
    const SLACK: u64 = 8;
    let first = &runs[0];
    for r in &runs[1..] {
        assert!(
            r.clean.abs_diff(first.clean) <= SLACK,
            "clean open: {} blocks at {} mapped, {} at {}",
            first.clean,
            first.mapped,
            r.clean,
            r.mapped
        );
        assert!(
            r.recovery.abs_diff(first.recovery) <= SLACK,
            "crash recovery: {} blocks at {} mapped, {} at {}",
            first.recovery,
            first.mapped,
            r.recovery,
            r.mapped
        );
    }
}
