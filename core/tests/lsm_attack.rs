//! Attacks on the tree's blocks (tables, WAL) through the backing device:
//! flip a byte, replay an old version, swap two blocks. Open or the reads
//! must fail with an error; they never return wrong data.

mod lsm_util;

use std::collections::BTreeMap;
use std::sync::Arc;

use lsm_util::*;
use std::collections::BTreeSet;
use std::sync::Mutex;

use mlsdisk_core::bio::{Adversary, BlockSet, MemDisk, BLOCK_SIZE};
use mlsdisk_core::log::StoreRoot;
use mlsdisk_core::Result;

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

/// A disk that records which blocks were read.
struct Trace {
    inner: Arc<MemDisk>,
    reads: Mutex<BTreeSet<u64>>,
}

impl BlockSet for Trace {
    fn read(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        let n = (buf.len() / BLOCK_SIZE) as u64;
        self.reads.lock().unwrap().extend(pos..pos + n);
        self.inner.read(pos, buf)
    }
    fn write(&self, pos: u64, buf: &[u8]) -> Result<()> {
        self.inner.write(pos, buf)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn nblocks(&self) -> u64 {
        self.inner.nblocks()
    }
}

/// The chunk-region blocks a clean open + full read touches: the live
/// blocks of the tree (tables, WAL) and of the store's Merkle trees.
fn live_blocks(mem: &Arc<MemDisk>, root: &StoreRoot, model: &BTreeMap<u64, u64>) -> Vec<u64> {
    let tr = Arc::new(Trace {
        inner: mem.clone(),
        reads: Mutex::new(BTreeSet::new()),
    });
    let mut t = open(&tr, root, lsm_cfg()).unwrap();
    compare(&mut t, model, KEYS).unwrap();
    drop(t);
    let all: Vec<u64> = tr
        .reads
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|&b| b >= JOURNAL)
        .collect();
    all
}

/// Every live block of the tree, flipped anywhere, is detected: open or a
/// read fails with an error (and never returns wrong data).
#[test]
fn flipped_live_blocks_are_always_detected() {
    let (mem, root, model, _) = build();
    let adv = Adversary::new(mem.clone());
    let live = live_blocks(&mem, &root, &model);
    assert!(live.len() > 10, "{} live blocks", live.len());
    let step = if long() { 1 } else { (live.len() / 24).max(1) };
    let mut cases = 0;
    for (i, &b) in live.iter().enumerate().step_by(step) {
        let off = (i * 997 + 13) % BLOCK_SIZE;
        let v = adv.snapshot_block(b).unwrap();
        adv.flip_byte(b, off, 0x80).unwrap();
        assert!(
            !probe(&mem, &root, &model),
            "flip of live block {b} at {off} unnoticed"
        );
        adv.replay(&v).unwrap();
        cases += 1;
    }
    assert!(probe(&mem, &root, &model));
    eprintln!(
        "live flips: {cases} of {} live blocks, all detected",
        live.len()
    );
}

/// Every live block replaced by its version of an earlier sync, and every
/// pair of live blocks swapped, is detected.
#[test]
fn replayed_and_swapped_live_blocks_are_always_detected() {
    let (mem, root, model, old) = build();
    let adv = Adversary::new(mem.clone());
    let live = live_blocks(&mem, &root, &model);
    let mut replays = 0;
    for &b in &live {
        let s = (b as usize) * BLOCK_SIZE;
        let now = adv.read_block(b).unwrap();
        let then = &old[s..s + BLOCK_SIZE];
        if now[..] == *then || then.iter().all(|&x| x == 0) {
            continue;
        }
        let v = adv.snapshot_block(b).unwrap();
        adv.write_block(b, then).unwrap();
        assert!(
            !probe(&mem, &root, &model),
            "replay of live block {b} unnoticed"
        );
        adv.replay(&v).unwrap();
        replays += 1;
    }
    let mut swaps = 0;
    let step = if long() { 1 } else { 5 };
    for w in live.windows(2).step_by(step) {
        adv.swap(w[0], w[1]).unwrap();
        assert!(
            !probe(&mem, &root, &model),
            "swap of {} and {} unnoticed",
            w[0],
            w[1]
        );
        adv.swap(w[0], w[1]).unwrap();
        swaps += 1;
    }
    assert!(probe(&mem, &root, &model));
    eprintln!("live replays: {replays}, live swaps: {swaps}, all detected");
    assert!(replays > 0 && swaps > 0);
}

#[test]
fn flipped_bytes_are_detected() {
    let (mem, root, model, _) = build();
    assert!(probe(&mem, &root, &model));
    let adv = Adversary::new(mem.clone());
    let used = used_blocks(&mem, 32);
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
    let used = used_blocks(&mem, 32);
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
