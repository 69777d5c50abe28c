//! Shared rig of the LSM integration tests: a tree on a real `TxLogStore`
//! over a memory disk (optionally behind a `CrashDisk`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use mlsdisk_core::bio::{BlockRange, BlockSet, MemDisk};
use mlsdisk_core::log::{LogStoreConfig, StoreRoot, TxLogStore};
use mlsdisk_core::lsm::{LsmConfig, LsmValue, TxLsmTree};
use mlsdisk_core::platform::StdCrypto;
use mlsdisk_core::{CryptoRef, Error, ErrorKind, Result};

pub const KEY: &[u8] = &[9u8; 32];
/// Journal blocks, then the chunk region.
pub const JOURNAL: u64 = 64;
pub const CHUNK_BLOCKS: u32 = 8;
pub const CHUNKS: u64 = 512;
pub const DISK_BLOCKS: u64 = JOURNAL + CHUNKS * CHUNK_BLOCKS as u64;

/// A 56-byte value like the disk's `BlockRecord`: the u64 repeated, so a
/// decode notices a changed byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Val(pub u64);

impl LsmValue for Val {
    const SIZE: usize = 56;
    fn emit(&self, out: &mut [u8]) {
        for c in out.chunks_exact_mut(8) {
            c.copy_from_slice(&self.0.to_le_bytes());
        }
    }
    fn parse(b: &[u8]) -> Result<Self> {
        if b.len() != 56 {
            return Err(Error::new(ErrorKind::Corrupted, "test value length"));
        }
        let first: [u8; 8] = b[..8].try_into().unwrap();
        if b.chunks_exact(8).any(|c| c != first) {
            return Err(Error::new(ErrorKind::Corrupted, "test value"));
        }
        Ok(Self(u64::from_le_bytes(first)))
    }
}

pub fn crypto() -> CryptoRef {
    Arc::new(StdCrypto)
}

pub fn store_cfg() -> LogStoreConfig {
    LogStoreConfig {
        chunk_blocks: CHUNK_BLOCKS,
        key_len: 16,
        snapshot_every: 8,
    }
}

/// Tiny limits (flushes and compactions all the time), but caches big
/// enough that repeated reads in a test do not all go to the store.
pub fn lsm_cfg() -> LsmConfig {
    let mut c = LsmConfig::tiny();
    c.meta_cache_blocks = 64;
    c.data_cache_blocks = 32;
    c
}

/// A freshly formatted, empty tree as a disk image and its store root, made
/// once per test binary (formatting is the slow part of a small case).
pub fn formatted_image() -> &'static (Vec<u8>, StoreRoot) {
    static IMG: std::sync::OnceLock<(Vec<u8>, StoreRoot)> = std::sync::OnceLock::new();
    IMG.get_or_init(|| {
        let mem = Arc::new(MemDisk::new(DISK_BLOCKS).unwrap());
        let t = format(&mem, lsm_cfg()).unwrap();
        let root = t.store().root();
        drop(t);
        (mem.snapshot().unwrap(), root)
    })
}

/// A memory disk holding a freshly formatted, empty tree, and its root.
pub fn fresh_disk() -> (Arc<MemDisk>, StoreRoot) {
    let (img, root) = formatted_image();
    let mem = Arc::new(MemDisk::new(DISK_BLOCKS).unwrap());
    mem.restore(img).unwrap();
    (mem, *root)
}

fn regions<D: BlockSet + Clone>(d: &D) -> (BlockRange<D>, BlockRange<D>) {
    (
        BlockRange::new(d.clone(), 0, JOURNAL).unwrap(),
        BlockRange::new(d.clone(), JOURNAL, DISK_BLOCKS - JOURNAL).unwrap(),
    )
}

/// Formats a store and a tree on `d`.
pub fn format<D: BlockSet + Clone>(d: &D, cfg: LsmConfig) -> Result<TxLsmTree<D, Val>> {
    let (j, c) = regions(d);
    let store = TxLogStore::format(j, c, crypto(), KEY, store_cfg())?;
    TxLsmTree::format(store, cfg)
}

/// Opens the store (from `root`) and the tree on `d`.
pub fn open<D: BlockSet + Clone>(
    d: &D,
    root: &StoreRoot,
    cfg: LsmConfig,
) -> Result<TxLsmTree<D, Val>> {
    let (j, c) = regions(d);
    let store = TxLogStore::open(j, c, crypto(), KEY, root)?;
    TxLsmTree::open(store, cfg)
}

/// Everything the tree holds, by `for_each`.
pub fn contents<D: BlockSet>(t: &mut TxLsmTree<D, Val>) -> Result<BTreeMap<u64, u64>> {
    let mut m = BTreeMap::new();
    t.for_each(&mut |k, v| {
        m.insert(k, v.0);
        Ok(())
    })?;
    Ok(m)
}

/// Checks every key of `0..keys` by `get`, `get_sorted` and `range`, and
/// the whole content by `for_each`, against `model`; errors pass through (for attack tests).
pub fn compare<D: BlockSet>(
    t: &mut TxLsmTree<D, Val>,
    model: &BTreeMap<u64, u64>,
    keys: u64,
) -> Result<()> {
    for k in 0..keys {
        let got = t.get(k)?.map(|v| v.0);
        assert_eq!(got, model.get(&k).copied(), "get({k}) returned wrong data");
    }
    // The same keys in one pass, all of them and every third.
    for step in [1, 3] {
        let ks: Vec<u64> = (0..keys).step_by(step).collect();
        let mut out = Vec::new();
        t.get_sorted(&ks, &mut out)?;
        let got: Vec<Option<u64>> = out.iter().map(|v| v.as_ref().map(|v| v.0)).collect();
        let want: Vec<Option<u64>> = ks.iter().map(|k| model.get(k).copied()).collect();
        assert_eq!(
            got, want,
            "get_sorted(0..{keys} step {step}) returned wrong data"
        );
    }
    // The same keys by range scans: windows of several widths (the widest
    // up to the scan's limit), and one past the end.
    for w in [7u64, 1000, mlsdisk_core::lsm::MAX_RANGE] {
        let mut from = 0;
        while from < keys {
            let to = (from + w).min(keys);
            let mut out = Vec::new();
            t.range(from, to, &mut out)?;
            let got: Vec<(u64, u64)> = out.iter().map(|(k, v)| (*k, v.0)).collect();
            let want: Vec<(u64, u64)> = model.range(from..to).map(|(k, v)| (*k, *v)).collect();
            assert_eq!(got, want, "range({from}..{to}) returned wrong data");
            from = to;
        }
    }
    let mut out = Vec::new();
    t.range(keys, keys + 100, &mut out)?;
    let want: Vec<u64> = model.range(keys..keys + 100).map(|(k, _)| *k).collect();
    let got: Vec<u64> = out.iter().map(|(k, _)| *k).collect();
    assert_eq!(got, want, "range past the compared keys");
    let all = contents(t)?;
    assert_eq!(&all, model, "for_each returned wrong data");
    Ok(())
}

/// A deterministic xorshift generator.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Whether the long test mode is on.
pub fn long() -> bool {
    std::env::var("MLSDISK_LONG_TESTS").is_ok_and(|v| v == "1")
}
