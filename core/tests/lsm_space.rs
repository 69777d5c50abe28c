//! The index's space accounting alone (`LsmTree::space_for`, the
//! `DiskIndex::room_for` of the disk): the tree on the log store of a
//! 1 GiB disk's index region, with the disk's fitted tuning, driven as the
//! disk drives it (batches of 256 updates, each after asking for room, a
//! commit only when only a commit makes room). Never a NoSpace; every key
//! checked against a model at the end and after a reopen; the worst chunk
//! margin is printed. And the tree used without asking: an update that
//! does not fit is refused up front, without poisoning the tree.

use std::sync::Arc;

use mlsdisk_core::bio::{BlockRange, MemDisk};
use mlsdisk_core::disk::{BlockRecord, DiskConfig};
use mlsdisk_core::log::TxLogStore;
use mlsdisk_core::lsm::{LsmStats, TxLsmTree};
use mlsdisk_core::platform::{AeadKey, StdCrypto};
use mlsdisk_core::ErrorKind;

const KEY: [u8; 32] = [0x3c; 32];
/// 1 GiB in blocks.
const TOTAL: u64 = 1 << 18;

fn long() -> bool {
    std::env::var_os("MLSDISK_LONG_TESTS").is_some_and(|v| v != "0")
}

fn passes() -> u64 {
    if long() {
        4
    } else {
        2
    }
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn small_memtable() -> DiskConfig {
    let mut cfg = DiskConfig::default();
    cfg.lsm.memtable_entries = 4096;
    cfg
}

type Tree = TxLsmTree<Arc<MemDisk>, BlockRecord>;

fn rec(v: u64) -> BlockRecord {
    BlockRecord {
        hba: v,
        key: AeadKey::from_slice(&[7u8; 16]).unwrap(),
        mac: [9u8; 16],
    }
}

struct IndexRun {
    stats: LsmStats,
    commits_asked: u64,
    user_syncs: u64,
    need_max: u64,
}

/// Fills every key, then `passes` x keys random updates in batches of 256
/// with syncs every `sync_every` batches on average (0: none). Returns the
/// tree's stats (the chunk margin).
fn index_run(cfg: &DiskConfig, seed: u64, passes: u64, sync_every: u64) -> IndexRun {
    // The regions and tuning the disk's index would have.
    let geo = cfg.geometry(TOTAL).unwrap();
    let (scfg, lcfg) = cfg.index_configs(&geo);
    let dev = Arc::new(MemDisk::new(geo.journal_len + geo.chunk_len).unwrap());
    let regions = || {
        (
            BlockRange::new(dev.clone(), 0, geo.journal_len).unwrap(),
            BlockRange::new(dev.clone(), geo.journal_len, geo.chunk_len).unwrap(),
        )
    };
    let crypto = Arc::new(StdCrypto);
    let (j, c) = regions();
    let store = TxLogStore::format(j, c, crypto.clone(), &KEY, scfg).unwrap();
    let mut t = Tree::format(store, lcfg.clone()).unwrap();
    t.expect_batch(256);
    let keys = geo.capacity;
    let mut model = vec![0u64; keys as usize];
    let mut rng = Rng(seed | 1);
    let mut run = IndexRun {
        stats: LsmStats::default(),
        commits_asked: 0,
        user_syncs: 0,
        need_max: 0,
    };
    let mut batch = |t: &mut Tree, ks: &mut dyn Iterator<Item = u64>, v: u64, model: &mut [u64]| {
        let c = t.space_for(256);
        run.need_max = run.need_max.max(c.need);
        if !c.fits_now() {
            assert!(c.fits_after_commit(), "no room even after a commit: {c:?}");
            t.sync(b"").unwrap();
            run.commits_asked += 1;
            let c = t.space_for(256);
            assert!(c.fits_now(), "no room after a commit: {c:?}");
        }
        for k in ks {
            t.put(k, rec(v)).unwrap_or_else(|e| {
                panic!(
                    "put {k}: {e:?}; room asked {c:?}, now {:?}, {:?}",
                    t.space_for(1),
                    t.stats()
                )
            });
            model[k as usize] = v;
        }
        for _ in 0..2 {
            if !t.compact_step().unwrap() {
                break;
            }
        }
    };
    let mut k = 0;
    while k < keys {
        let n = (keys - k).min(256);
        batch(&mut t, &mut (k..k + n), 1, &mut model);
        k += n;
    }
    let batches = keys * passes / 256;
    for b in 0..batches {
        let ks: Vec<u64> = (0..256).map(|_| rng.below(keys)).collect();
        batch(&mut t, &mut ks.into_iter(), 2 + b, &mut model);
        if sync_every > 0 && rng.below(sync_every) == 0 {
            t.sync(b"").unwrap();
            run.user_syncs += 1;
        }
    }
    t.sync(b"").unwrap();
    run.stats = t.stats();
    let check = |t: &mut Tree, what: &str| {
        let mut seen = 0u64;
        t.for_each(&mut |k, r| {
            assert_eq!(r.hba, model[k as usize], "{what}: key {k}");
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, keys, "{what}: keys");
    };
    check(&mut t, "before reopen");
    let root = t.store().root();
    drop(t);
    let (j, c) = regions();
    let store = TxLogStore::open(j, c, crypto, &KEY, &root).unwrap();
    let mut t = Tree::open(store, lcfg).unwrap();
    check(&mut t, "after reopen");
    run
}

fn report(name: &str, r: &IndexRun) {
    let s = &r.stats;
    eprintln!(
        "{name}: {} chunks; fewest free before a commit {} ({} pinned then), most pinned {}; \
         {} commits for room, {} user syncs, {} flushes, {} compactions, {} stalls; largest need {}",
        s.chunks_total,
        s.chunks_free_low,
        s.chunks_pinned_at_low,
        s.chunks_pinned_high,
        r.commits_asked,
        r.user_syncs,
        s.flushes,
        s.compactions,
        s.stalls,
        r.need_max
    );
    assert!(s.chunks_free_low < s.chunks_total, "no commit was measured");
}

#[test]
fn index_alone_default_config_margin() {
    for (seed, sync_every) in [(1, 0), (2, 8)] {
        let r = index_run(&DiskConfig::default(), seed, passes(), sync_every);
        report(
            &format!("index alone, default, syncs every ~{sync_every} batches"),
            &r,
        );
    }
}

#[test]
fn index_alone_small_memtable_margin() {
    let r = index_run(&small_memtable(), 3, passes(), 4);
    report("index alone, memtable 4096, syncs every ~4 batches", &r);
}

#[test]
fn space_for_refuses_before_the_store_is_full() {
    // A tree on a small region, never committed unless it must: every
    // update either fits or is refused up front with NoSpace (no poison),
    // and a commit then always makes room.
    let cfg = DiskConfig::default();
    let geo = cfg.geometry(1 << 14).unwrap();
    let (scfg, lcfg) = cfg.index_configs(&geo);
    let dev = Arc::new(MemDisk::new(geo.journal_len + geo.chunk_len).unwrap());
    let j = BlockRange::new(dev.clone(), 0, geo.journal_len).unwrap();
    let c = BlockRange::new(dev.clone(), geo.journal_len, geo.chunk_len).unwrap();
    let store = TxLogStore::format(j, c, Arc::new(StdCrypto), &KEY, scfg).unwrap();
    let mut t = Tree::format(store, lcfg).unwrap();
    let mut rng = Rng(77);
    let mut refused = 0;
    for i in 0..geo.capacity * 8 {
        let k = rng.below(geo.capacity);
        match t.put(k, rec(i)) {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::NoSpace, "{e:?}");
                refused += 1;
                t.sync(b"").unwrap();
                // The refused update goes in after the commit, and the
                // tree was not poisoned by the refusal.
                t.put(k, rec(i)).unwrap();
            }
        }
        t.compact_step().unwrap();
    }
    eprintln!("{refused} updates refused until a commit");
    assert!(
        refused > 0,
        "the store never filled up: the test tests nothing"
    );
}
