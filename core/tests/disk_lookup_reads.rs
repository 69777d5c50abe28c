//! A lookup reads at most one index block from the device: what it needs
//! to find its leaf (the tables' index blocks and the bloom filters of
//! the levels above the deepest) is pinned in memory, at open and when a
//! flush or compaction installs tables. Counted, not timed: the device
//! blocks each 4 KiB read of a mapped block costs on a cold data cache
//! (the data block itself, plus at most one index block).

use std::sync::Arc;

use mlsdisk_core::bio::{FileDisk, BLOCK_SIZE};
use mlsdisk_core::disk::{DiskConfig, MlsDisk, NoAnchor};
use mlsdisk_core::platform::StdCrypto;

const KEY: [u8; 32] = [9u8; 32];

/// A small tree with several levels: memtables of 1024 entries, tables of
/// 1024 records, L1 of 1024 records and a ratio of 4; caches of two blocks
/// (cold for every lookup) and `pinned` pinned blocks.
fn cfg(pinned: usize) -> DiskConfig {
    let mut c = DiskConfig::default();
    c.lsm.memtable_entries = 1024;
    c.lsm.table_max_records = 1024;
    c.lsm.l1_max_records = 1024;
    c.lsm.level_ratio = 4;
    c.lsm.l0_max_tables = 2;
    c.lsm.meta_cache_blocks = 2;
    c.lsm.data_cache_blocks = 2;
    c.lsm.pinned_meta_blocks = pinned;
    // These cache sizes, not the default budget's split.
    c.cache_budget_bytes = 0;
    c
}

/// A tiny deterministic generator.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

struct Setup {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
    total: u64,
}

impl Setup {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mlsd-lookup-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk.img");
        // 8192 logical blocks (32 MiB) at least.
        let mut total = 16384u64;
        while cfg(0).geometry(total).unwrap().capacity < 8192 {
            total += 1024;
        }
        Self { dir, path, total }
    }

    fn create(&self, c: DiskConfig) -> MlsDisk<FileDisk> {
        let dev = FileDisk::create(&self.path, self.total, false).unwrap();
        MlsDisk::create(dev, Arc::new(StdCrypto), &KEY, c, Box::new(NoAnchor)).unwrap()
    }

    fn open(&self, c: DiskConfig) -> MlsDisk<FileDisk> {
        let dev = FileDisk::open(&self.path, false).unwrap();
        MlsDisk::open(dev, Arc::new(StdCrypto), &KEY, c, Box::new(NoAnchor)).unwrap()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes every block once in a scattered order and then a third of them
/// again, with syncs, and runs the background work to the end: keys in
/// every level.
fn populate(d: &mut MlsDisk<FileDisk>) -> u64 {
    let cap = d.nblocks().min(8192);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut b = vec![0u8; BLOCK_SIZE];
    // A stride coprime with the capacity visits every block once.
    let stride = (0..)
        .map(|k| 4099 + 2 * k)
        .find(|s| gcd(*s, cap) == 1)
        .unwrap();
    for i in 0..cap {
        let l = i * stride % cap;
        b[..8].copy_from_slice(&l.to_le_bytes());
        d.write(l, &b).unwrap();
        if i % 512 == 511 {
            d.sync().unwrap();
        }
    }
    for i in 0..cap / 3 {
        let l = rng.below(cap);
        b[..8].copy_from_slice(&l.to_le_bytes());
        b[8] = 1;
        d.write(l, &b).unwrap();
        if i % 512 == 511 {
            d.sync().unwrap();
        }
    }
    d.sync().unwrap();
    while d.background_step().unwrap() {}
    d.sync().unwrap();
    cap
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// What the index read from the device for `n` scattered 4 KiB reads,
/// one at a time: the most index blocks one lookup read, how many lookups
/// read more than one, and the total. (Each read costs its data block,
/// one device block, plus what the index lookup reads.)
struct Cost {
    worst: u64,
    over_one: u64,
    total: u64,
}

fn lookups(d: &mut MlsDisk<FileDisk>, cap: u64, n: u64) -> Cost {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut b = vec![0u8; BLOCK_SIZE];
    let mut c = Cost {
        worst: 0,
        over_one: 0,
        total: 0,
    };
    for _ in 0..n {
        let l = rng.below(cap);
        let r0 = d.device().counts().0;
        d.read(l, &mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()), l);
        let index_reads = (d.device().counts().0 - r0)
            .checked_sub(1)
            .expect("a read of a mapped block read no data block");
        c.worst = c.worst.max(index_reads);
        c.over_one += u64::from(index_reads > 1);
        c.total += index_reads;
    }
    c
}

/// Levels that hold tables.
fn levels(d: &MlsDisk<FileDisk>) -> usize {
    let s = d.index_stats().unwrap();
    s.tables.iter().filter(|&&t| t > 0).count()
}

#[test]
fn a_lookup_reads_at_most_one_index_block_in_process_and_after_reopen() {
    let s = Setup::new("pinned");
    let mut d = s.create(cfg(4096));
    let cap = populate(&mut d);
    let tables = d.index_stats().unwrap().tables;
    let lv = levels(&d);
    assert!(
        lv >= 3,
        "tables per level {tables:?}: the test needs three levels"
    );
    let n = 2000;
    // The one index read a lookup makes is its data block; a second one
    // happens only when a bloom filter of an upper level answers "maybe"
    // for a key it does not hold (about 1 % per table at 10 bits a key).
    let check = |c: &Cost, when: &str| {
        eprintln!(
            "{when}: tables per level {tables:?}; index blocks read per lookup: worst {}, {} of {n} lookups read more than one, mean {:.3}",
            c.worst,
            c.over_one,
            c.total as f64 / n as f64
        );
        assert!(
            c.worst <= 2,
            "{when}: a lookup read {} index blocks",
            c.worst
        );
        assert!(
            c.over_one <= n / 50,
            "{when}: {} of {n} lookups read more than one index block",
            c.over_one
        );
        assert!(c.total <= n + n / 50, "{when}: {} index blocks", c.total);
    };
    // In process: the tables the compactions made were pinned as they
    // were installed.
    check(&lookups(&mut d, cap, n), "in process");
    // After a reopen: open pins only what its own lookups touch (it stays
    // constant-time); the background steps of an idle disk load the rest
    // of the pinned set; the data cache is cold.
    d.close().unwrap();
    let mut d = s.open(cfg(4096));
    let at_open = d.index_stats().unwrap().pinned_blocks;
    let mut steps = 0;
    while d.background_step().unwrap() {
        steps += 1;
        assert!(steps < 10_000, "background steps never went idle");
    }
    let pinned = d.index_stats().unwrap().pinned_blocks;
    assert!(
        pinned > at_open,
        "the background steps pinned nothing ({at_open} blocks at open)"
    );
    check(&lookups(&mut d, cap, n), "after reopen");
}

#[test]
fn without_a_pinned_budget_lookups_read_index_and_bloom_blocks() {
    // The same tree with nothing pinned: what the pinned part saves. This
    // shows the counts above measure the index's reads.
    let s = Setup::new("unpinned");
    let mut d = s.create(cfg(0));
    let cap = populate(&mut d);
    d.close().unwrap();
    let mut d = s.open(cfg(0));
    assert_eq!(d.index_stats().unwrap().pinned_blocks, 0);
    let n = 500;
    let c = lookups(&mut d, cap, n);
    eprintln!(
        "unpinned: worst {}, mean {:.3} index blocks per lookup",
        c.worst,
        c.total as f64 / n as f64
    );
    assert!(c.worst >= 3, "worst {}", c.worst);
    assert!(c.total >= 2 * n, "{} index blocks for {n} lookups", c.total);
}

#[test]
fn with_a_budget_too_small_for_the_leaves_a_lookup_still_reads_at_most_one_index_block() {
    // The budget's own split, not hand-set cache sizes: 512 KiB, so the
    // leaves of this tree (hundreds of blocks) do not fit the leaf cache
    // and most lookups read their leaf. What must not happen is a second
    // read for the Merkle node above that leaf: the split gives the nodes
    // enough room for every level-0 node of the index (one per 72 blocks
    // of a table). With a thirty-second of the budget for nodes (3 nodes
    // here, the split before) lookups read two or three blocks.
    let mut c = cfg(0);
    c.cache_budget_bytes = 512 << 10;
    // No read-ahead: while the leaf cache has room, a missed leaf brings
    // its neighbours along in the same request (more blocks, not more
    // requests); this counts blocks, and is about the nodes.
    c.lsm.read_ahead_blocks = 1;
    let split = c.cache_split().unwrap();
    let s = Setup::new("budget");
    let mut d = s.create(c.clone());
    let cap = populate(&mut d);
    let tables: u64 = d
        .index_stats()
        .unwrap()
        .tables
        .iter()
        .map(|&t| t as u64)
        .sum();
    assert!(levels(&d) >= 3, "the test needs three levels");
    d.close().unwrap();
    let mut d = s.open(c.clone());
    while d.background_step().unwrap() {}
    let n = 2000;
    let cost = lookups(&mut d, cap, n);
    eprintln!(
        "budget 512 KiB ({split:?}, {} node blocks lent), {tables} tables: index blocks per lookup worst {}, {} of {n} over one, mean {:.3}",
        d.index_stats().unwrap().node_blocks_lent,
        cost.worst,
        cost.over_one,
        cost.total as f64 / n as f64
    );
    // The leaves do not fit: lookups do read index blocks (this shows the
    // counts measure a cold leaf cache, not a warm one). The leaf cache
    // also has the room the node share's nodes leave (14 blocks
    // here: `LsmConfig::node_cache_nodes`), so somewhat fewer than half
    // the lookups miss (0.475 a lookup measured).
    assert!(
        cost.total >= n / 3,
        "only {} index blocks for {n} lookups: the leaves fit the cache",
        cost.total
    );
    assert!(cost.worst <= 2, "a lookup read {} index blocks", cost.worst);
    assert!(
        cost.over_one <= n / 50,
        "{} of {n} lookups read more than one index block",
        cost.over_one
    );
}

/// The index blocks (bloom, index and data blocks of tables, from the
/// caches or the device) the index fetched during `f`.
fn fetches(d: &mut MlsDisk<FileDisk>, f: impl FnOnce(&mut MlsDisk<FileDisk>)) -> u64 {
    let count = |d: &MlsDisk<FileDisk>| {
        let s = d.index_stats().unwrap();
        s.cache_hits + s.cache_misses + s.data_cache_hits + s.data_cache_misses
    };
    let before = count(d);
    f(d);
    count(d) - before
}

/// A read of 256 blocks looks them up in one pass over the tree: a data
/// block of a table is fetched once for all the read's keys it spans, and
/// a key inside a data block fetched for a smaller key needs no bloom or
/// index block. A lookup per block fetches at least one block per key:
/// 1187 to 1359 fetches for each of these reads before `get_sorted`,
/// 24 to 64 with it, 25 to 67 since a lookup also finds the last leaf
/// its keys need in a table (`fetch_data_run`: one more index block
/// fetch, from the cache, per table).
#[test]
fn a_long_read_fetches_each_index_block_once_not_once_per_block() {
    let s = Setup::new("sorted");
    let mut c = cfg(4096);
    c.lsm.meta_cache_blocks = 4096;
    c.lsm.data_cache_blocks = 4096;
    let mut d = s.create(c);
    let cap = populate(&mut d);
    assert!(levels(&d) >= 3, "the test needs three levels");
    let mut buf = vec![0u8; 256 * BLOCK_SIZE];
    let mut worst = 0;
    for start in [0, cap / 3, cap - 256] {
        let n = fetches(&mut d, |d| d.read(start, &mut buf).unwrap());
        for (i, b) in buf.chunks_exact(BLOCK_SIZE).enumerate() {
            let l = start + i as u64;
            assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()), l, "lba {l}");
        }
        eprintln!("256 blocks from {start}: {n} index block fetches");
        worst = worst.max(n);
    }
    assert!(
        worst <= 80,
        "a 256-block read fetched {worst} index blocks: not one pass"
    );
}

/// A discard asks the index once per batch for the mapped LBAs of its
/// range (`DiskIndex::range`: each table's blocks that span the range),
/// not once per LBA: a lookup per LBA fetched at least one block per LBA
/// (a bloom probe of each upper table, then the index and data blocks).
/// The discarded blocks read as zeros and the others as written, before
/// and after a reopen.
#[test]
fn a_discard_scans_the_index_once_per_range_not_once_per_block() {
    let s = Setup::new("discard");
    let mut c = cfg(4096);
    c.lsm.meta_cache_blocks = 4096;
    c.lsm.data_cache_blocks = 4096;
    let mut d = s.create(c.clone());
    let cap = populate(&mut d);
    assert!(levels(&d) >= 3, "the test needs three levels");
    let mapped = d.stats().mapped_blocks;
    assert_eq!(mapped, cap);
    // Every block of the range is mapped, and the range runs on past the
    // populated blocks into never-written ones when the disk has them.
    let (from, n) = (cap / 2, 2048 + (d.nblocks() - cap).min(2048));
    let end = (from + n).min(d.nblocks());
    let blocks = end - from;
    let k = fetches(&mut d, |d| d.discard(from, blocks).unwrap());
    eprintln!("discard of {blocks} blocks: {k} index block fetches");
    assert!(
        k <= blocks / 4,
        "a discard of {blocks} blocks fetched {k} index blocks: a lookup per block"
    );
    assert_eq!(d.stats().mapped_blocks, mapped - (cap - from).min(blocks));
    let check = |d: &mut MlsDisk<FileDisk>| {
        let mut b = vec![0u8; BLOCK_SIZE];
        // From 1: block 0 holds its LBA, 0, and reads as zeros either way.
        for l in (1..d.nblocks().min(end + 64)).step_by(7) {
            d.read(l, &mut b).unwrap();
            let want = if l >= from && l < end || l >= cap {
                None
            } else {
                Some(l)
            };
            let got = b
                .iter()
                .any(|&x| x != 0)
                .then(|| u64::from_le_bytes(b[..8].try_into().unwrap()));
            assert_eq!(got, want, "lba {l}");
        }
    };
    check(&mut d);
    d.close().unwrap();
    let mut d = s.open(c);
    assert_eq!(d.stats().mapped_blocks, mapped - (cap - from).min(blocks));
    check(&mut d);
}

/// The index leaves (data blocks of the tables) that 64-block reads at
/// random places miss in a full cache: a read needs one or two leaves of
/// each table that holds its blocks, and since `fetch_data_run` the ones
/// it needs of a table come in one request. Counted in cache misses (a
/// request of several blocks is one miss) over 200 reads.
#[test]
fn a_read_gets_the_leaves_it_needs_of_a_table_in_one_request() {
    let s = Setup::new("runs");
    let mut c = cfg(4096);
    c.lsm.meta_cache_blocks = 4096;
    c.lsm.data_cache_blocks = 16;
    let mut d = s.create(c);
    let cap = populate(&mut d);
    assert!(levels(&d) >= 3, "the test needs three levels");
    let misses = |d: &MlsDisk<FileDisk>| d.index_stats().unwrap().data_cache_misses;
    let mut rng = Rng(0x5851_f42d_4c95_7f2d);
    let mut buf = vec![0u8; 64 * BLOCK_SIZE];
    // Warm up: the leaf cache full.
    for _ in 0..50 {
        d.read(rng.below(cap - 64), &mut buf).unwrap();
    }
    let (mut total, mut worst) = (0, 0);
    for _ in 0..200 {
        let start = rng.below(cap - 64);
        let m0 = misses(&d);
        d.read(start, &mut buf).unwrap();
        for (i, b) in buf.chunks_exact(BLOCK_SIZE).enumerate() {
            let l = start + i as u64;
            assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()), l, "lba {l}");
        }
        let m = misses(&d) - m0;
        total += m;
        worst = worst.max(m);
    }
    let tables = d.index_stats().unwrap().tables;
    eprintln!("200 reads of 64 blocks: {total} leaf requests, at most {worst} in one read; tables per level {tables:?}");
    // A read touches at most one table per level here (four levels, one
    // L0 table): 525 requests now, 710 with a request per leaf (the
    // second leaf of a table a sequential read-ahead of 8).
    assert!(
        total <= 600,
        "{total} leaf requests for 200 reads: not one per table"
    );
}
