//! A `get_sorted` of keys far apart (the segment cleaner's live check, the
//! old versions a flush of random writes looks up) reads the data blocks
//! it lacks of a whole level in one scattered read of the store, all
//! handed to the device at once (`BlockSet::read_ranges`), not one device
//! request per block, each waited for. Counted, not timed: the device
//! records every call. The blocks read so are checked like any other: a
//! flipped byte in one of them fails the lookup with `Integrity`.

mod lsm_util;
mod read_log;

use std::collections::BTreeMap;
use std::sync::Arc;

use lsm_util::*;
use mlsdisk_core::bio::{BlockSet, BLOCK_SIZE};
use mlsdisk_core::lsm::{LsmConfig, TxLsmTree};
use mlsdisk_core::ErrorKind;
use read_log::ReadLog;

/// Tables of 1500 records (about 21 data blocks each), several levels; a
/// data cache of 128 blocks (64 for a batch) and a meta cache that holds
/// every index block.
fn cfg() -> LsmConfig {
    let mut c = LsmConfig::default();
    c.memtable_entries = 700;
    c.wal_max_blocks = 40;
    c.meta_cache_blocks = 512;
    c.data_cache_blocks = 128;
    c.l0_max_tables = 3;
    c.l1_max_records = 3000;
    c.level_ratio = 4;
    c.table_max_records = 1500;
    c.step_records = 300;
    c
}

const KEYS: u64 = 20_000;
/// Where the keys written after `0..KEYS` start.
const OTHER: u64 = 1 << 20;

/// A tree holding `value(k)` for every key of `0..KEYS`, written in a
/// scattered order and compacted down, reopened (cold caches); its disk.
fn populated() -> (Arc<ReadLog>, mlsdisk_core::log::StoreRoot) {
    populated_with(KEYS)
}

/// [`populated`] with the keys `0..keys`.
fn populated_with(keys: u64) -> (Arc<ReadLog>, mlsdisk_core::log::StoreRoot) {
    let (mem, root) = fresh_disk();
    let dev = Arc::new(ReadLog::new(DISK_BLOCKS));
    dev.mem.restore(&mem.snapshot().unwrap()).unwrap();
    let mut t = open(&dev, &root, cfg()).unwrap();
    // A stride coprime with `keys` visits every key once.
    assert_ne!(
        keys % 7919,
        0,
        "7919 (a prime) must not divide the key count"
    );
    for i in 0..keys {
        let k = i * 7919 % keys;
        t.put(k, Val(value(k))).unwrap();
        if i % 8 == 0 {
            t.compact_step().unwrap();
        }
        if i % 2000 == 1999 {
            t.sync(b"scatter").unwrap();
        }
    }
    // Then 5000 other keys: the memtables and L0 (at most 6 tables of
    // 700) hold only those at the end, so every key of `0..KEYS` is in a
    // level below L0, where a key has one table.
    for i in 0..5000 {
        t.put(OTHER + i, Val(i)).unwrap();
        if i % 8 == 0 {
            t.compact_step().unwrap();
        }
        if i % 2000 == 1999 {
            t.sync(b"scatter").unwrap();
        }
    }
    t.sync(b"scatter").unwrap();
    let st = t.stats();
    assert!(
        st.tables[1..].iter().sum::<u32>() >= 8,
        "the test needs many tables below L0: {st:?}"
    );
    let root = t.store().root();
    drop(t);
    (dev, root)
}

fn value(k: u64) -> u64 {
    k * 3 + 1
}

/// 48 keys spread over the whole key space (keys far apart).
fn scattered() -> Vec<u64> {
    (0..48u64).map(|i| i * (KEYS / 48) + 17).collect()
}

/// `get_sorted(keys)` on `t`, checked against `value`; the ranges of each
/// `read_ranges` call it made.
fn checked_lookup(
    t: &mut TxLsmTree<Arc<ReadLog>, Val>,
    dev: &ReadLog,
    keys: &[u64],
) -> Vec<Vec<(u64, usize)>> {
    dev.clear();
    let mut out = Vec::new();
    t.get_sorted(keys, &mut out).unwrap();
    let got: Vec<Option<u64>> = out.iter().map(|v| v.map(|v| v.0)).collect();
    let want: Vec<Option<u64>> = keys.iter().map(|&k| Some(value(k))).collect();
    assert_eq!(got, want, "get_sorted returned wrong data");
    dev.batches()
}

/// The blocks of each batch.
fn blocks_per_batch(batches: &[Vec<(u64, usize)>]) -> Vec<usize> {
    batches
        .iter()
        .map(|b| b.iter().map(|r| r.1).sum())
        .collect()
}

#[test]
fn keys_far_apart_read_their_data_blocks_in_one_batch() {
    let (dev, root) = populated();
    let mut t = open(&dev, &root, cfg()).unwrap();
    let keys = scattered();
    let before = t.stats();
    let batches = checked_lookup(&mut t, &dev, &keys);
    let blocks = blocks_per_batch(&batches);
    let after = t.stats();
    let misses = after.data_cache_misses - before.data_cache_misses;
    let hits = after.data_cache_hits - before.data_cache_hits;
    eprintln!(
        "{} keys: data blocks read in batches {blocks:?}, {} plain device reads, data cache +{hits} hits +{misses} misses",
        keys.len(),
        dev.plain_reads()
    );
    // Every key is in a data block of its own (48 keys, more than 280
    // data blocks), in a level below L0: each level's blocks in one batch,
    // 48 blocks in all (one more per bloom filter false positive).
    let levels = after.tables[1..].iter().filter(|&&n| n > 0).count();
    assert!(
        !blocks.is_empty() && blocks.len() <= levels,
        "data blocks read in {} batches, {levels} levels",
        blocks.len()
    );
    let total: usize = blocks.iter().sum();
    assert!(
        (keys.len()..keys.len() + 4).contains(&total),
        "{total} blocks in the batches"
    );
    // The lookups found them cached, and the statistics count each block
    // once: a miss when the batch read it, no hit when its lookup fetched
    // it.
    assert_eq!((hits, misses), (0, total as u64));
    // Asked again: all from the data cache, no device read.
    let again = checked_lookup(&mut t, &dev, &keys);
    assert_eq!((dev.plain_reads(), again.len()), (0, 0));
}

#[test]
fn a_flipped_byte_in_a_block_of_the_batch_fails_the_lookup() {
    let (dev, root) = populated();
    let keys = scattered();
    // Where the batch reads from, learned on a first open.
    let ranges = {
        let mut t = open(&dev, &root, cfg()).unwrap();
        dev.clear();
        let mut out = Vec::new();
        t.get_sorted(&keys, &mut out).unwrap();
        let b = dev.batches();
        assert!(!b.is_empty(), "no batch read");
        b.concat()
    };
    let model: BTreeMap<u64, u64> = keys.iter().map(|&k| (k, value(k))).collect();
    for pick in [0, ranges.len() / 2, ranges.len() - 1] {
        let (at, _) = ranges[pick];
        let mut b = vec![0u8; BLOCK_SIZE];
        dev.mem.read(at, &mut b).unwrap();
        let good = b.clone();
        b[200] ^= 0x10;
        dev.mem.write(at, &b).unwrap();
        let mut t = open(&dev, &root, cfg()).unwrap();
        let mut out = Vec::new();
        let e = t
            .get_sorted(&keys, &mut out)
            .expect_err("a lookup read a flipped block and returned data");
        assert_eq!(e.kind(), ErrorKind::Integrity, "{e:?}");
        drop(t);
        dev.mem.write(at, &good).unwrap();
        // Restored, the same lookup answers again.
        let mut t = open(&dev, &root, cfg()).unwrap();
        t.get_sorted(&keys, &mut out).unwrap();
        for (k, v) in keys.iter().zip(&out) {
            assert_eq!(v.map(|v| v.0), model.get(k).copied(), "key {k}");
        }
    }
}

/// A lookup that needs more blocks reads them in batches of at most 256
/// (a bounded buffer beside the caches), every block once.
#[test]
fn many_blocks_come_in_batches_of_at_most_256() {
    // 48000 keys: the deepest level holds more than 256 data blocks.
    let n = 48_000;
    let (dev, root) = populated_with(n);
    let mut c = cfg();
    c.data_cache_blocks = 2048;
    let mut t = open(&dev, &root, c).unwrap();
    // A key every 61: nearly every data block of every level below L0.
    let keys: Vec<u64> = (0..n).step_by(61).collect();
    let batches = checked_lookup(&mut t, &dev, &keys);
    let blocks = blocks_per_batch(&batches);
    eprintln!("{} keys: blocks per batch {blocks:?}", keys.len());
    assert!(blocks.iter().all(|&b| b <= 256), "{blocks:?}");
    assert!(blocks.iter().sum::<usize>() >= 600, "{blocks:?}");
    assert!(
        blocks.iter().filter(|&&b| b == 256).count() >= 1,
        "no level needed more than one batch: {blocks:?}"
    );
    // No block read twice.
    let mut all: Vec<u64> = batches.concat().iter().map(|r| r.0).collect();
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), n, "a block was read twice");
}
