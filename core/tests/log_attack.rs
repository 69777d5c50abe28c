//! TxLogStore under attack: flipped bytes, replayed and swapped blocks of
//! the chunk region and of the journal, and whole-image rollback. Every case
//! must give an error (Integrity, Corrupted) or exactly the committed data,
//! and every read whose path goes through a tampered block must fail.

mod log_util;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use log_util::*;
use mlsdisk_core::bio::{Adversary, BlockSet, MemDisk, BLOCK_SIZE};
use mlsdisk_core::log::{LogId, StoreRoot, TxLogStore};
use mlsdisk_core::{ErrorKind, Result};

/// A memory disk that can record the addresses read.
struct Traced {
    disk: Arc<MemDisk>,
    reads: Mutex<Option<Vec<u64>>>,
}

impl BlockSet for Traced {
    fn read(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        if let Some(r) = self.reads.lock().unwrap().as_mut() {
            r.extend(pos..pos + (buf.len() / BLOCK_SIZE) as u64);
        }
        self.disk.read(pos, buf)
    }
    fn write(&self, pos: u64, buf: &[u8]) -> Result<()> {
        self.disk.write(pos, buf)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn nblocks(&self) -> u64 {
        self.disk.nblocks()
    }
}

type D = Arc<Traced>;

struct Setup {
    mem: Arc<MemDisk>,
    disk: D,
    adv: Adversary,
    model: Model,
    root: StoreRoot,
    /// The image and root after the second commit (for replay).
    old_image: Vec<u8>,
    old_root: StoreRoot,
    /// Which (log, pos) reads go through each block.
    deps: BTreeMap<u64, BTreeSet<(u64, u64)>>,
}

fn setup() -> Setup {
    let mem = Arc::new(MemDisk::new(DISK_BLOCKS).unwrap());
    let disk = Arc::new(Traced {
        disk: mem.clone(),
        reads: Mutex::new(None),
    });
    let mut h = Harness::new(format(&disk), Model::default());
    h.begin().unwrap();
    let a = h.create(0).unwrap();
    h.append(a, 1, 10).unwrap();
    let b = h.create(1).unwrap();
    h.append(b, 2, 4).unwrap();
    h.commit(b"one").unwrap();
    h.begin().unwrap();
    h.append(a, 3, 3).unwrap();
    h.seal(b).unwrap();
    h.commit(b"two").unwrap();
    let old_image = mem.snapshot().unwrap();
    let old_root = h.store.root();
    // Delete b, reuse its chunks for c, grow a: old blocks get overwritten.
    h.begin().unwrap();
    h.delete(b).unwrap();
    h.commit(b"three").unwrap();
    h.begin().unwrap();
    let c = h.create(2).unwrap();
    h.append(c, 4, 12).unwrap();
    h.append(a, 5, 70).unwrap(); // a gets a second tree level
    h.commit(b"four").unwrap();
    let model = h.committed.clone();
    let root = h.store.root();
    drop(h);
    let mut s = open(&disk, &root).unwrap();
    // Without the node cache, so that every read shows its whole path.
    s.set_node_cache(0);
    check(&s, &model, true).unwrap();
    let mut deps: BTreeMap<u64, BTreeSet<(u64, u64)>> = BTreeMap::new();
    let mut buf = vec![0u8; BLOCK_SIZE];
    for (&id, l) in &model.logs {
        for p in 0..l.blocks.len() as u64 {
            *disk.reads.lock().unwrap() = Some(Vec::new());
            s.read(LogId(id), p, &mut buf).unwrap();
            for a in disk.reads.lock().unwrap().take().unwrap() {
                deps.entry(a).or_default().insert((id, p));
            }
        }
    }
    Setup {
        adv: Adversary::new(mem.clone()),
        mem,
        disk,
        model,
        root,
        old_image,
        old_root,
        deps,
    }
}

#[derive(Default, Debug)]
struct Tally {
    cases: usize,
    open_failed: usize,
    reads_failed: usize,
}

/// Opens the tampered store: an error, or the exact committed metadata with
/// every read through `bad` blocks failing and a control read working.
fn verify(st: &Setup, bad: &[u64], t: &mut Tally) {
    t.cases += 1;
    let s: TxLogStore<D> = match open(&st.disk, &st.root) {
        Err(e) => {
            assert!(
                is_tamper_error(e.kind()),
                "tampering {bad:?}: open gave {e:?}"
            );
            t.open_failed += 1;
            return;
        }
        Ok(s) => s,
    };
    // Metadata comes from the journal, verified up to the trusted tail.
    let meta_only = Model {
        logs: st.model.logs.clone(),
        user_state: st.model.user_state.clone(),
    };
    assert_eq!(s.user_state(), meta_only.user_state.as_slice());
    for (&id, l) in &st.model.logs {
        assert_eq!(s.log_len(LogId(id)).unwrap(), l.blocks.len() as u64);
    }
    let mut buf = vec![0u8; BLOCK_SIZE];
    let mut failing: BTreeSet<(u64, u64)> = BTreeSet::new();
    for b in bad {
        if let Some(d) = st.deps.get(b) {
            failing.extend(d.iter().copied());
        }
    }
    for &(id, p) in &failing {
        let e = s
            .read(LogId(id), p, &mut buf)
            .expect_err("read through a tampered block succeeded");
        assert_eq!(e.kind(), ErrorKind::Integrity, "{e:?}");
        t.reads_failed += 1;
    }
    // Control reads: first and last block of each log, unless affected.
    for (&id, l) in &st.model.logs {
        for p in [0, l.blocks.len() as u64 - 1] {
            if failing.contains(&(id, p)) {
                continue;
            }
            match s.read(LogId(id), p, &mut buf) {
                Ok(()) => assert_eq!(buf, content(l.blocks[p as usize], p as usize)),
                Err(e) => panic!("tampering {bad:?}: unaffected read ({id}, {p}) failed: {e:?}"),
            }
        }
    }
}

fn written_blocks(st: &Setup) -> Vec<u64> {
    (0..DISK_BLOCKS)
        .filter(|&b| st.adv.read_block(b).unwrap().iter().any(|&x| x != 0))
        .collect()
}

#[test]
fn flip_a_byte_of_every_written_block() {
    let st = setup();
    let mut t = Tally::default();
    let blocks = written_blocks(&st);
    for &b in &blocks {
        let offsets: Vec<usize> = if long() {
            vec![0, 17, 48, 1000, 2048, BLOCK_SIZE - 1]
        } else {
            vec![
                (b as usize * 997) % BLOCK_SIZE,
                BLOCK_SIZE - 1 - (b as usize % 32),
            ]
        };
        for off in offsets {
            let v = st.adv.snapshot_block(b).unwrap();
            st.adv.flip_byte(b, off, 0x20).unwrap();
            verify(&st, &[b], &mut t);
            st.adv.replay(&v).unwrap();
        }
    }
    eprintln!("log_attack flips over {} blocks: {t:?}", blocks.len());
    assert!(t.open_failed > 0 && t.reads_failed > 0);
}

#[test]
fn replay_old_blocks_and_roll_back_the_image() {
    let st = setup();
    let mut t = Tally::default();
    let cur = st.mem.snapshot().unwrap();
    let mut replayed = 0;
    for b in 0..DISK_BLOCKS {
        let r = b as usize * BLOCK_SIZE..(b as usize + 1) * BLOCK_SIZE;
        if cur[r.clone()] == st.old_image[r.clone()] {
            continue;
        }
        st.adv.write_block(b, &st.old_image[r.clone()]).unwrap();
        verify(&st, &[b], &mut t);
        st.adv.write_block(b, &cur[r]).unwrap();
        replayed += 1;
    }
    assert!(replayed > 10, "{replayed}");
    // The whole old image, with the new root: the journal cannot reach the
    // trusted tail.
    st.mem.restore(&st.old_image).unwrap();
    let e = open(&st.disk, &st.root).map(|_| ()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Integrity, "{e:?}");
    // With the old root, the old image opens to the old state (rollback of
    // the whole image is the owner's anchor's business; see the disk layer).
    let s = open(&st.disk, &st.old_root).unwrap();
    assert_eq!(s.user_state(), b"two");
    eprintln!("log_attack replays: {replayed} blocks: {t:?}");
}

#[test]
fn swap_pairs_of_blocks() {
    let st = setup();
    let mut t = Tally::default();
    let blocks = written_blocks(&st);
    let step = if long() { 1 } else { 2 };
    for i in (0..blocks.len()).step_by(step) {
        for j in [i + 1, i + 7] {
            let (Some(&x), Some(&y)) = (blocks.get(i), blocks.get(j % blocks.len())) else {
                continue;
            };
            if x == y {
                continue;
            }
            st.adv.swap(x, y).unwrap();
            verify(&st, &[x, y], &mut t);
            st.adv.swap(x, y).unwrap();
        }
    }
    eprintln!("log_attack swaps: {t:?}");
    assert!(t.cases > 10);
}

#[test]
fn wrong_key_and_bad_root() {
    let st = setup();
    let (j, c) = regions(&st.disk);
    let e = TxLogStore::open(j, c, crypto(), &[1u8; 32], &st.root)
        .map(|_| ())
        .unwrap_err();
    assert!(is_tamper_error(e.kind()), "{e:?}");
    let bytes = st.root.emit_array().unwrap();
    for i in 0..bytes.len() {
        let mut b = bytes;
        b[i] ^= 0x04;
        match StoreRoot::parse(&b) {
            Err(e) => assert_eq!(e.kind(), ErrorKind::Corrupted),
            Ok(r) => {
                // Salt, start or tail changed: the journal does not verify.
                let e = open(&st.disk, &r).map(|_| ()).unwrap_err();
                assert!(
                    is_tamper_error(e.kind()) || e.kind() == ErrorKind::InvalidArgument,
                    "root byte {i}: {e:?}"
                );
            }
        }
    }
}

#[test]
fn a_warm_node_cache_never_returns_wrong_data() {
    // One store instance reads everything (nodes cached), then blocks are
    // tampered with under it: reads give the right data (a cached node is
    // trusted memory) or Integrity (data blocks are never cached).
    let st = setup();
    let s = open(&st.disk, &st.root).unwrap();
    check(&s, &st.model, true).unwrap();
    let mut buf = vec![0u8; BLOCK_SIZE];
    let mut failed = 0;
    for b in written_blocks(&st) {
        let v = st.adv.snapshot_block(b).unwrap();
        st.adv
            .flip_byte(b, (b as usize * 31) % BLOCK_SIZE, 0x01)
            .unwrap();
        for (&id, l) in &st.model.logs {
            for p in 0..l.blocks.len() {
                match s.read(LogId(id), p as u64, &mut buf) {
                    Ok(()) => assert!(buf == content(l.blocks[p], p), "wrong data"),
                    Err(e) => {
                        assert_eq!(e.kind(), ErrorKind::Integrity);
                        failed += 1;
                    }
                }
            }
        }
        st.adv.replay(&v).unwrap();
    }
    assert!(failed > 0);
}
