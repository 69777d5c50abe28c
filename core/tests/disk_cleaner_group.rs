//! The segment cleaner moves its victims in groups: the runs of a group's
//! segments that hold live blocks are read from the device in one
//! `read_ranges` call (in flight at once), at most `CLEAN_GROUP` (4)
//! segments per call, each block at most once per move, and the dead runs
//! of a victim are not read; every block reads back as last written,
//! before and after a reopen.

mod disk_common;
mod read_log;

use std::sync::Arc;

use disk_common::*;
use mlsdisk_core::bio::BLOCK_SIZE;
use mlsdisk_core::disk::{DiskConfig, MlsDisk, NoAnchor};
use read_log::ReadLog;

/// The cleaner's reads so far: the `read_ranges` calls in the data region
/// (no user read ran), as (segment, offset, blocks) ranges. Panics on a
/// plain read of data blocks or a range across a segment's end.
fn cleaner_reads(dev: &ReadLog, data_start: u64, seg: u64) -> Vec<Vec<(u64, u64, u64)>> {
    let reads = dev.reads.lock().unwrap();
    let mut calls = Vec::new();
    for (ranged, r) in reads.iter() {
        if r.iter().all(|&(p, _)| p < data_start) {
            continue;
        }
        assert!(*ranged, "a plain read of data blocks: {r:?}");
        let call: Vec<(u64, u64, u64)> = r
            .iter()
            .map(|&(p, n)| {
                assert!(p >= data_start, "one call across regions: {r:?}");
                let (s, off) = ((p - data_start) / seg, (p - data_start) % seg);
                assert!(off + n as u64 <= seg, "a range across a segment end: {r:?}");
                (s, off, n as u64)
            })
            .collect();
        calls.push(call);
    }
    calls
}

#[test]
fn the_cleaner_reads_a_group_of_victims_in_one_scattered_read() {
    let cfg = small_cfg();
    let seg = cfg.layout.seg_blocks as usize;
    let dev = Arc::new(ReadLog::new(SMALL_TOTAL));
    let mut d =
        MlsDisk::create(dev.clone(), crypto(), &KEY, cfg.clone(), Box::new(NoAnchor)).unwrap();
    let cap = d.nblocks();
    let mut tag = 1u64;
    d.write(0, &blocks(0, cap, tag)).unwrap();
    d.sync().unwrap();
    let mut model = vec![tag; cap as usize];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    dev.clear();
    for round in 0..40 {
        for _ in 0..cap / 2 {
            tag += 1;
            let l = rng.below(cap);
            d.write(l, &blocks(l, 1, tag)).unwrap();
            model[l as usize] = tag;
        }
        if round % 3 == 2 {
            d.sync().unwrap();
        }
    }
    d.sync().unwrap();
    let stats = d.stats();
    assert!(
        stats.segments_cleaned >= 40,
        "the workload should clean: {} segments cleaned",
        stats.segments_cleaned
    );
    // The cleaner's reads: one `read_ranges` call per group, of the
    // group's segments' live runs.
    let data_start = d.geometry().data_start;
    let calls = cleaner_reads(&dev, data_start, seg as u64);
    let groups: Vec<usize> = calls
        .iter()
        .map(|c| {
            let mut segs: Vec<u64> = c.iter().map(|r| r.0).collect();
            segs.dedup();
            // Ascending and distinct: no block of one call read twice.
            for w in c.windows(2) {
                assert!(
                    (w[0].0, w[0].1 + w[0].2) <= (w[1].0, w[1].1),
                    "ranges out of order or overlapping: {c:?}"
                );
            }
            segs.len()
        })
        .collect();
    eprintln!("victims per group read: {groups:?}");
    let victims: usize = groups.iter().sum();
    // Victims with no live block are not read at all.
    assert!(
        victims as u64 <= stats.segments_cleaned && victims as u64 * 2 >= stats.segments_cleaned,
        "every victim read at most once, most in a group read: {} cleaned, {groups:?}",
        stats.segments_cleaned
    );
    let read: u64 = calls.iter().flatten().map(|r| r.2).sum();
    assert!(
        read >= stats.cleaner_blocks_moved,
        "{read} blocks read for {} moved",
        stats.cleaner_blocks_moved
    );
    assert!(
        groups.iter().all(|&n| (1..=4).contains(&n)),
        "groups of 1 to 4 victims: {groups:?}"
    );
    assert!(
        groups.iter().filter(|&&n| n >= 2).count() * 2 >= groups.len(),
        "most rounds should move several victims at once: {groups:?}"
    );
    let verify = |d: &mut MlsDisk<Arc<ReadLog>>, what: &str| {
        let mut buf = vec![0u8; cap as usize * BLOCK_SIZE];
        d.read(0, &mut buf).unwrap();
        for (i, b) in buf.chunks_exact(BLOCK_SIZE).enumerate() {
            assert!(check(b, i as u64, model[i]), "{what}: LBA {i} read wrong");
        }
    };
    verify(&mut d, "open");
    drop(d);
    let mut d = MlsDisk::open(dev.clone(), crypto(), &KEY, cfg, Box::new(NoAnchor)).unwrap();
    verify(&mut d, "reopened");
}

/// Overwrites in runs of 64 blocks leave victims whose dead blocks come in
/// runs: the cleaner reads the live runs only, not the whole segments
/// (before, every victim was read whole: as many blocks as the segments
/// cleaned hold).
#[test]
fn the_cleaner_reads_only_the_live_runs_of_its_victims() {
    let cfg = DiskConfig::default();
    let seg = u64::from(cfg.layout.seg_blocks);
    // 128 MiB: 64 segments of data region and more.
    let dev = Arc::new(ReadLog::new(32 * 1024));
    let mut d =
        MlsDisk::create(dev.clone(), crypto(), &KEY, cfg.clone(), Box::new(NoAnchor)).unwrap();
    // Half of the disk written, then overwritten: the victims hold few
    // live blocks (measured: 17 % of the blocks of the segments cleaned).
    let cap = d.nblocks() / 2;
    const RUN: u64 = 64;
    let mut tag = 1u64;
    for l in (0..cap).step_by(RUN as usize) {
        let n = RUN.min(cap - l);
        d.write(l, &blocks(l, n, tag)).unwrap();
    }
    d.sync().unwrap();
    let mut model = vec![tag; cap as usize];
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let before = d.stats();
    dev.clear();
    for round in 0..12 {
        for _ in 0..cap / RUN {
            tag += 1;
            let l = rng.below(cap / RUN) * RUN;
            let n = RUN.min(cap - l);
            d.write(l, &blocks(l, n, tag)).unwrap();
            for m in &mut model[l as usize..(l + n) as usize] {
                *m = tag;
            }
        }
        if round % 2 == 1 {
            d.sync().unwrap();
        }
    }
    d.sync().unwrap();
    let stats = d.stats();
    let cleaned = stats.segments_cleaned - before.segments_cleaned;
    let moved = stats.cleaner_blocks_moved - before.cleaner_blocks_moved;
    assert!(
        cleaned >= 32,
        "the workload should clean: {cleaned} segments"
    );
    let calls = cleaner_reads(&dev, d.geometry().data_start, seg);
    let read: u64 = calls.iter().flatten().map(|r| r.2).sum();
    eprintln!(
        "{cleaned} segments cleaned ({} blocks), {moved} blocks moved, {read} blocks read in {} calls",
        cleaned * seg,
        calls.len()
    );
    assert!(read >= moved, "{read} blocks read for {moved} moved");
    // The dead runs (64 blocks, more than the gap the cleaner reads
    // across) stay unread: well under half of the whole segments.
    assert!(
        read * 2 <= cleaned * seg,
        "the cleaner read {read} blocks of {cleaned} segments ({} blocks) to move {moved}",
        cleaned * seg
    );
    let mut buf = vec![0u8; cap as usize * BLOCK_SIZE];
    d.read(0, &mut buf).unwrap();
    for (i, b) in buf.chunks_exact(BLOCK_SIZE).enumerate() {
        assert!(check(b, i as u64, model[i]), "LBA {i} read wrong");
    }
}
