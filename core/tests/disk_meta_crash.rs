//! The segment usage table and summaries (index entries above every LBA)
//! after crashes: each reopen must give a table that matches the index.
//! After every crash the whole disk is overwritten twice, which makes the
//! cleaner read the summary of every segment and check it against the
//! usage count (a disagreement is `Corrupted` and fails the test), and the
//! mapped-block count the disk reports must match the blocks that read
//! back mapped. Checks per block only (any version since the last sync);
//! the prefix order is disk_crash's and disk_flush_atomicity's business.

mod disk_common;

use std::collections::BTreeMap;

use disk_common::*;
use mlsdisk_core::bio::BLOCK_SIZE;

fn run(seed: u64, keep_every: usize) {
    let mut h = Harness::new(Backend::Lsm, small_cfg());
    let cap = h.disk().nblocks();
    // Per LBA: the synced version (None: zeros) and every version since,
    // any of which a crash may leave (forced commits happen on their own).
    let mut synced: Vec<Option<u64>> = vec![None; cap as usize];
    let mut since: BTreeMap<u64, Vec<Option<u64>>> = BTreeMap::new();
    let mut x = seed | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut tag = 0u64;
    let mut b = vec![0u8; BLOCK_SIZE];
    for round in 0..6 {
        let mut now = synced.clone();
        for _ in 0..40 {
            tag += 1;
            let n = 1 + rnd() % 6;
            let lba = rnd() % (cap - n);
            let v = if rnd() % 5 == 0 {
                h.disk().discard(lba, n).unwrap();
                None
            } else {
                h.disk().write(lba, &blocks(lba, n, tag)).unwrap();
                Some(tag)
            };
            for l in lba..lba + n {
                now[l as usize] = v;
                since.entry(l).or_default().push(v);
            }
            if rnd() % 8 == 0 {
                h.disk().sync().unwrap();
                synced = now.clone();
                since.clear();
            }
        }
        let k = keep_every;
        h.crash_and_reopen_keep(&move |i| k > 0 && i % k == 0)
            .unwrap_or_else(|e| panic!("seed {seed}, round {round}: reopen: {e}"));
        let mapped = h.disk().stats().mapped_blocks;
        let mut found = 0u64;
        for l in 0..cap {
            h.disk().read(l, &mut b).unwrap();
            let mut cands = vec![synced[l as usize]];
            cands.extend(since.get(&l).into_iter().flatten().copied());
            let hit = cands.iter().find(|c| match c {
                Some(t) => check(&b, l, *t),
                None => b.iter().all(|v| *v == 0),
            });
            match hit {
                Some(v) => {
                    found += u64::from(v.is_some());
                    // What the disk holds now is what the next rounds build on.
                    synced[l as usize] = *v;
                }
                None => panic!("seed {seed}, round {round}: lba {l} after the crash"),
            }
        }
        since.clear();
        assert_eq!(
            mapped, found,
            "seed {seed}, round {round}: mapped count after the crash"
        );
        // Scattered overwrites, three times the disk: segments keep a mix
        // of live and dead blocks, and the cleaner reads their summaries
        // against the reopened usage table.
        let mut now = synced.clone();
        let cleaned = h.disk().stats().segments_cleaned;
        for i in 0..3 * cap {
            tag += 1;
            let l = rnd() % cap;
            h.disk()
                .write(l, &blocks(l, 1, tag))
                .unwrap_or_else(|e| panic!("seed {seed}, round {round}, write {i}: {e}"));
            now[l as usize] = Some(tag);
            if i % 16 == 15 {
                h.disk().sync().unwrap();
            }
        }
        h.disk().sync().unwrap();
        synced = now;
        assert!(
            h.disk().stats().segments_cleaned > cleaned,
            "the cleaner never ran"
        );
        let live = synced.iter().filter(|v| v.is_some()).count() as u64;
        assert_eq!(h.disk().stats().mapped_blocks, live);
        for l in 0..cap {
            h.disk().read(l, &mut b).unwrap();
            let ok = match synced[l as usize] {
                Some(t) => check(&b, l, t),
                None => b.iter().all(|v| *v == 0),
            };
            assert!(ok, "seed {seed}, round {round}: lba {l} after cleaning");
        }
    }
}

#[test]
fn usage_table_and_summaries_match_the_index_after_crashes() {
    for seed in 1..=4 {
        for keep in [0usize, 1, 2, 3] {
            run(seed * 7919 + keep as u64, keep);
        }
    }
}
