//! The segment cleaner moves its victims in groups: the whole segments of
//! a group are read from the device in one `read_ranges` call (in flight
//! at once), at most `CLEAN_GROUP` (4) of them, each read once per move;
//! every block reads back as last written, before and after a reopen.

mod disk_common;
mod read_log;

use std::sync::Arc;

use disk_common::*;
use mlsdisk_core::bio::BLOCK_SIZE;
use mlsdisk_core::disk::{MlsDisk, NoAnchor};
use read_log::ReadLog;

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
    // The cleaner's reads: `read_ranges` calls of whole segments (the
    // index's read-ahead reads single blocks; nothing else read user data).
    let groups: Vec<usize> = dev
        .batches()
        .iter()
        .filter(|b| b.iter().all(|&(_, n)| n == seg))
        .map(Vec::len)
        .collect();
    let plain_segment_reads = dev
        .reads
        .lock()
        .unwrap()
        .iter()
        .filter(|(ranged, r)| !*ranged && r.iter().all(|&(_, n)| n == seg))
        .count();
    assert_eq!(
        plain_segment_reads, 0,
        "a victim's segment was read alone, not in its group's read"
    );
    eprintln!("victims per group read: {groups:?}");
    let victims: usize = groups.iter().sum();
    assert_eq!(
        victims as u64, stats.segments_cleaned,
        "every victim read once, in a group read: {groups:?}"
    );
    assert!(
        groups.iter().all(|&n| (1..=4).contains(&n)),
        "groups of 1 to 4 victims: {groups:?}"
    );
    assert!(
        groups.iter().filter(|&&n| n >= 2).count() * 2 >= groups.len(),
        "most rounds should move several victims at once: {groups:?}"
    );
    // No range of one call read twice.
    for b in dev.batches() {
        let mut at: Vec<u64> = b.iter().map(|&(p, _)| p).collect();
        at.sort_unstable();
        at.dedup();
        assert_eq!(
            at.len(),
            b.len(),
            "a segment read twice in one group: {b:?}"
        );
    }
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
