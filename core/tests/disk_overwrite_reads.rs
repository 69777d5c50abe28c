//! Overwrites on a full disk look up the old version of every block
//! (eager invalidation: the old segment loses a valid block at once). The
//! leaves those lookups need are the ones the fill's flushes and
//! compactions just wrote; those go into the data cache as they are
//! written, so the lookups read no index block from the device while the
//! leaves fit the cache. Counted, not timed: the data cache misses of the
//! index during the overwrites. A reopened disk (cold cache) is the
//! control: the same overwrites miss, so the count is live.

use std::sync::Arc;

use mlsdisk_core::bio::{MemDisk, BLOCK_SIZE};
use mlsdisk_core::disk::{DiskConfig, MlsDisk, NoAnchor};
use mlsdisk_core::lsm::LsmConfig;
use mlsdisk_core::platform::StdCrypto;

const KEY: [u8; 32] = [5u8; 32];

/// A tree with several levels (small memtables and tables) and a data
/// cache that holds every leaf of the disk.
fn cfg() -> DiskConfig {
    let mut c = DiskConfig::default();
    c.lsm.memtable_entries = 1024;
    c.lsm.table_max_records = 1024;
    c.lsm.l1_max_records = 1024;
    c.lsm.level_ratio = 4;
    c.lsm.l0_max_tables = 2;
    c.lsm.data_cache_blocks = 4096;
    c
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn misses(d: &MlsDisk<Arc<MemDisk>>) -> u64 {
    d.index_stats().unwrap().data_cache_misses
}

/// Overwrites `n` random blocks (4 KiB each, content from `tag`) and syncs.
fn overwrite(d: &mut MlsDisk<Arc<MemDisk>>, rng: &mut Rng, n: u64, tag: u8) -> Vec<u64> {
    let cap = d.nblocks();
    let mut lbas = Vec::new();
    for _ in 0..n {
        let l = rng.below(cap);
        let mut b = vec![tag; BLOCK_SIZE];
        b[..8].copy_from_slice(&l.to_le_bytes());
        d.write(l, &b).unwrap();
        lbas.push(l);
    }
    d.sync().unwrap();
    lbas
}

#[test]
fn overwrites_after_a_fill_read_no_leaf() {
    let dev = Arc::new(MemDisk::new(48 * 1024).unwrap());
    let crypto = Arc::new(StdCrypto);
    let mut d =
        MlsDisk::create(dev.clone(), crypto.clone(), &KEY, cfg(), Box::new(NoAnchor)).unwrap();
    let cap = d.nblocks();
    assert!(cap > 20_000, "capacity {cap}");
    // Every block written once, sequentially, then the tree settled.
    let mut at = 0;
    while at < cap {
        let n = (cap - at).min(256);
        let mut buf = vec![0u8; n as usize * BLOCK_SIZE];
        for (i, b) in buf.chunks_exact_mut(BLOCK_SIZE).enumerate() {
            b[..8].copy_from_slice(&(at + i as u64).to_le_bytes());
        }
        d.write(at, &buf).unwrap();
        at += n;
    }
    d.sync().unwrap();
    while d.background_step().unwrap() {}
    let st = d.index_stats().unwrap();
    assert!(
        st.tables.iter().skip(1).filter(|&&t| t > 0).count() >= 2,
        "{st:?}"
    );

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let m0 = misses(&d);
    let lbas = overwrite(&mut d, &mut rng, 4000, 0xa1);
    assert_eq!(misses(&d) - m0, 0, "{:?}", d.index_stats());
    let mut r = vec![0u8; BLOCK_SIZE];
    for l in lbas.iter().take(200) {
        d.read(*l, &mut r).unwrap();
        assert_eq!(&r[..8], &l.to_le_bytes());
        assert_eq!(r[8], 0xa1);
    }
    d.close().unwrap();

    // Control: after a reopen the cache is cold and the same kind of
    // overwrites read leaves.
    let mut d = MlsDisk::open(dev, crypto, &KEY, cfg(), Box::new(NoAnchor)).unwrap();
    let m0 = misses(&d);
    overwrite(&mut d, &mut rng, 4000, 0xb2);
    assert!(misses(&d) - m0 > 100, "{:?}", d.index_stats());
}

/// After an open the data cache is cold: each lookup that misses reads its
/// leaf, and while the cache has room the next leaves of the same table
/// come in the same request (`LsmConfig::read_ahead_blocks`). Counted:
/// the leaf requests (data-cache misses) of the same 3000 random reads on
/// the same image, with read-ahead off (1) and at the default (8).
#[test]
fn a_cold_cache_warms_several_leaves_per_request() {
    let dev = Arc::new(MemDisk::new(48 * 1024).unwrap());
    let crypto = Arc::new(StdCrypto);
    let mut d =
        MlsDisk::create(dev.clone(), crypto.clone(), &KEY, cfg(), Box::new(NoAnchor)).unwrap();
    let cap = d.nblocks();
    let mut at = 0;
    while at < cap {
        let n = (cap - at).min(256);
        let mut buf = vec![0u8; n as usize * BLOCK_SIZE];
        for (i, b) in buf.chunks_exact_mut(BLOCK_SIZE).enumerate() {
            b[..8].copy_from_slice(&(at + i as u64).to_le_bytes());
        }
        d.write(at, &buf).unwrap();
        at += n;
    }
    d.sync().unwrap();
    while d.background_step().unwrap() {}
    d.close().unwrap();
    assert_eq!(LsmConfig::default().read_ahead_blocks, 8);

    let mut requests = Vec::new();
    for ahead in [1u64, 8] {
        let mut c = cfg();
        c.lsm.read_ahead_blocks = ahead;
        let mut d =
            MlsDisk::open(dev.clone(), crypto.clone(), &KEY, c, Box::new(NoAnchor)).unwrap();
        let m0 = misses(&d);
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut r = vec![0u8; BLOCK_SIZE];
        for _ in 0..3000 {
            let l = rng.below(cap);
            d.read(l, &mut r).unwrap();
            assert_eq!(&r[..8], &l.to_le_bytes(), "read-ahead {ahead}, lba {l}");
        }
        requests.push(misses(&d) - m0);
        drop(d);
    }
    eprintln!(
        "leaf requests of 3000 cold random reads: read-ahead 1: {}, read-ahead 8: {}",
        requests[0], requests[1]
    );
    // The control is live: without read-ahead nearly every leaf is a miss.
    assert!(requests[0] > 200, "{requests:?}");
    assert!(requests[1] * 3 <= requests[0], "{requests:?}");
}
