//! Attacks on the tree's blocks (tables, WAL) through the backing device:
//! flip a byte, replay an old version, swap two blocks. Open or the reads
//! must fail with an error; they never return wrong data.

mod lsm_util;

use std::collections::BTreeMap;
use std::sync::Arc;

use lsm_util::*;
use mlsdisk_core::bio::{Adversary, MemDisk};
use mlsdisk_core::log::StoreRoot;

const KEYS: u64 = 80;

/// Builds a tree with tables on several levels and a WAL, synced twice.
/// Returns the disk, the root, the model, and the image after the first sync.
fn build() -> (Arc<MemDisk>, StoreRoot, BTreeMap<u64, u64>, Vec<u8>) {
    let (mem, root) = fresh_disk();
    let mut t = open(&mem, &root, lsm_cfg()).unwrap();
    let mut model = BTreeMap::new();
    let mut rng = Rng(77);
    for i in 0..200u64 {
        let k = rng.below(KEYS);
        t.put(k, Val(i)).unwrap();
        model.insert(k, i);
        t.compact_step().unwrap();
    }
    t.sync(b"1").unwrap();
    let old = mem.snapshot().unwrap();
    for i in 200..260u64 {
        let k = rng.below(KEYS);
        if i % 4 == 0 {
            t.delete(k).unwrap();
            model.remove(&k);
        } else {
            t.put(k, Val(i)).unwrap();
            model.insert(k, i);
        }
        if i % 2 == 0 {
            t.compact_step().unwrap();
        }
    }
    t.sync(b"2").unwrap();
    let st = t.stats();
    assert!(st.tables.iter().sum::<u32>() >= 2, "{st:?}");
    assert!(st.memtable_entries > 0, "{st:?}");
    let root = t.store().root();
    (mem, root, model, old)
}

/// Opens and reads everything; Ok(true) if all reads matched, Ok(false) if
/// something failed with an error. Wrong data panics.
fn probe(mem: &Arc<MemDisk>, root: &StoreRoot, model: &BTreeMap<u64, u64>) -> bool {
    match open(mem, root, lsm_cfg()) {
        Err(_) => false,
        Ok(mut t) => compare(&mut t, model, KEYS).is_ok(),
    }
}

/// The used blocks of the chunk region; in fast mode a fixed sample of
/// `fast` of them, spread evenly.
fn used_blocks(mem: &Arc<MemDisk>, fast: usize) -> Vec<u64> {
    let img = mem.snapshot().unwrap();
    let all: Vec<u64> = (JOURNAL..DISK_BLOCKS)
        .filter(|&b| {
            let s = (b as usize) * 4096;
            img[s..s + 4096].iter().any(|&x| x != 0)
        })
        .collect();
    if long() || all.len() <= fast {
        return all;
    }
    let step = all.len() / fast;
    all.into_iter().step_by(step).collect()
}

#[test]
fn flipped_bytes_are_detected() {
    let (mem, root, model, _) = build();
    assert!(probe(&mem, &root, &model));
    let adv = Adversary::new(mem.clone());
    let used = used_blocks(&mem, 12);
    let mut detected = 0;
    let mut cases = 0;
    for (i, &b) in used.iter().enumerate() {
        let off = (i * 613) % 4096;
        let v = adv.snapshot_block(b).unwrap();
        adv.flip_byte(b, off, 0x04).unwrap();
        if !probe(&mem, &root, &model) {
            detected += 1;
        }
        adv.replay(&v).unwrap();
        cases += 1;
    }
    assert!(probe(&mem, &root, &model));
    eprintln!("flip: {cases} blocks, {detected} detected, rest unread or stale (never wrong data)");
    assert!(detected > 0);
}

#[test]
fn replayed_and_swapped_blocks_are_detected() {
    let (mem, root, model, old) = build();
    let adv = Adversary::new(mem.clone());
    let used = used_blocks(&mem, 12);
    let mut cases = 0;
    let mut detected = 0;
    // Replay: put back the first sync's version of every block that changed.
    for &b in &used {
        let s = (b as usize) * 4096;
        let cur = adv.snapshot_block(b).unwrap();
        let now = adv.read_block(b).unwrap();
        if now[..] == old[s..s + 4096] {
            continue;
        }
        adv.write_block(b, &old[s..s + 4096]).unwrap();
        if !probe(&mem, &root, &model) {
            detected += 1;
        }
        adv.replay(&cur).unwrap();
        cases += 1;
    }
    // Swap pairs of used blocks.
    for w in used.chunks_exact(2).step_by(if long() { 1 } else { 3 }) {
        adv.swap(w[0], w[1]).unwrap();
        if !probe(&mem, &root, &model) {
            detected += 1;
        }
        adv.swap(w[0], w[1]).unwrap();
        cases += 1;
    }
    assert!(probe(&mem, &root, &model));
    eprintln!("replay/swap: {cases} cases, {detected} detected");
    assert!(detected > 0);
}
