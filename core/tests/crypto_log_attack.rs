//! CryptoLog under attack: flipped bytes, replayed and swapped blocks never
//! give wrong data, only Integrity errors, and every read whose path goes
//! through a tampered block fails.
//!
//! A tracing wrapper records which blocks each read touches, so each attack
//! re-reads exactly the positions that depend on the attacked block (plus a
//! control read that must still succeed).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use mlsdisk_core::bio::{BlockSet, MemDisk, BLOCK_SIZE};
use mlsdisk_core::crypto::crypto_log::NodeCache;
use mlsdisk_core::crypto::{CryptoLog, RootMeta};
use mlsdisk_core::platform::StdCrypto;
use mlsdisk_core::{CryptoRef, ErrorKind, Result};

fn crypto() -> CryptoRef {
    Arc::new(StdCrypto)
}

fn long() -> bool {
    std::env::var("MLSDISK_LONG_TESTS").is_ok_and(|v| v == "1")
}

/// A MemDisk that records the addresses read.
struct Traced {
    disk: MemDisk,
    reads: Mutex<Vec<u64>>,
}

impl BlockSet for Traced {
    fn read(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        self.reads.lock().unwrap().push(pos);
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

fn traced(n: u64) -> Traced {
    Traced {
        disk: MemDisk::new(n).unwrap(),
        reads: Mutex::new(Vec::new()),
    }
}

fn block(seed: u64, i: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_SIZE];
    for (j, x) in b.iter_mut().enumerate() {
        *x = (seed.wrapping_mul(131) ^ i.wrapping_mul(7919) ^ j as u64) as u8;
    }
    b
}

/// Writes a log of `n` blocks (content `seed`) to addresses from `base` on,
/// flushing (and reopening) every `flush_every` appends; returns the root
/// and the addresses written.
fn build(
    disk: &dyn BlockSet,
    n: u64,
    seed: u64,
    base: u64,
    flush_every: u64,
) -> (RootMeta, Vec<u64>) {
    let mut used = Vec::new();
    let mut next = base;
    let mut alloc = || {
        next += 1;
        used.push(next - 1);
        Ok(next - 1)
    };
    let mut log = CryptoLog::new(crypto(), 16).unwrap();
    for i in 0..n {
        log.append(disk, &mut alloc, &block(seed, i)).unwrap();
        if (i + 1) % flush_every == 0 {
            let root = log.flush(disk, &mut alloc).unwrap();
            log = CryptoLog::open(crypto(), 16, root).unwrap();
        }
    }
    let root = log.flush(disk, &mut alloc).unwrap();
    (root, used)
}

/// For every position, the blocks its read touches; and the inverse map.
fn paths(disk: &Traced, root: &RootMeta, seed: u64) -> BTreeMap<u64, BTreeSet<u64>> {
    let log = CryptoLog::open(crypto(), 16, root.clone()).unwrap();
    let mut buf = vec![0u8; BLOCK_SIZE];
    let mut by_addr: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for p in 0..root.nblocks {
        disk.reads.lock().unwrap().clear();
        log.read(disk, p, &mut buf).unwrap();
        assert_eq!(buf, block(seed, p));
        for &a in disk.reads.lock().unwrap().iter() {
            by_addr.entry(a).or_default().insert(p);
        }
    }
    by_addr
}

/// Reads `must_fail` (each must fail with Integrity) and `must_pass`
/// (each must return the right data).
fn expect(disk: &Traced, root: &RootMeta, seed: u64, must_fail: &BTreeSet<u64>, must_pass: &[u64]) {
    let log = CryptoLog::open(crypto(), 16, root.clone()).unwrap();
    let mut buf = vec![0u8; BLOCK_SIZE];
    for &p in must_fail {
        let e = log
            .read(disk, p, &mut buf)
            .expect_err("tampered read succeeded");
        assert_eq!(e.kind(), ErrorKind::Integrity, "{e:?}");
    }
    for &p in must_pass {
        if !must_fail.contains(&p) {
            log.read(disk, p, &mut buf).unwrap();
            assert_eq!(buf, block(seed, p));
        }
    }
}

fn raw(disk: &Traced, a: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_SIZE];
    disk.disk.read(a, &mut b).unwrap();
    b
}

#[test]
fn round_trip_many_shapes() {
    let disk = traced(2000);
    for (n, every) in [(0, 1), (1, 1), (71, 5), (72, 72), (73, 1000), (150, 7)] {
        let (root, _) = build(&disk, n, n, 0, every);
        assert_eq!(root.nblocks, n);
        let log = CryptoLog::open(crypto(), 16, root.clone()).unwrap();
        let mut buf = vec![0u8; BLOCK_SIZE];
        for p in 0..n {
            log.read(&disk, p, &mut buf).unwrap();
            assert_eq!(buf, block(n, p), "n {n} pos {p}");
        }
        assert!(log.read(&disk, n, &mut buf).is_err());
        // Through a small node cache (evicting), in a scattered order.
        let mut cache = NodeCache::new(2);
        for k in 0..n {
            let p = (k * 37) % n;
            log.read_cached(&disk, p, &mut buf, Some(&mut cache))
                .unwrap();
            assert_eq!(buf, block(n, p), "cached: n {n} pos {p}");
        }
        if n > 72 {
            assert!(cache.hits_misses().0 > 0);
        }
        if n > 3 {
            let mut buf = vec![0u8; 3 * BLOCK_SIZE];
            log.read(&disk, n - 3, &mut buf).unwrap();
            assert_eq!(&buf[2 * BLOCK_SIZE..], &block(n, n - 1)[..]);
            assert!(log.read(&disk, n - 2, &mut buf).is_err());
        }
    }
}

#[test]
fn flip_any_byte_of_any_block() {
    let disk = traced(400);
    // Two levels of nodes: a full level-0 node, a partial one, the root.
    let n = 80;
    let (root, used) = build(&disk, n, 1, 0, u64::MAX);
    let by_addr = paths(&disk, &root, 1);
    assert_eq!(
        by_addr.len(),
        used.len(),
        "every block written is referenced"
    );
    let offsets: Vec<usize> = if long() {
        (0..BLOCK_SIZE).step_by(13).collect()
    } else {
        vec![]
    };
    let mut cases = 0;
    for (&a, deps) in &by_addr {
        let orig = raw(&disk, a);
        let offsets: Vec<usize> = if long() {
            offsets.clone()
        } else {
            vec![
                (a as usize * 1031 + 5) % BLOCK_SIZE,
                BLOCK_SIZE - 1 - a as usize % 16,
            ]
        };
        for &off in &offsets {
            let mut b = orig.clone();
            b[off] ^= 0x01;
            disk.write(a, &b).unwrap();
            expect(&disk, &root, 1, deps, &[0, n - 1]);
            cases += 1;
        }
        disk.write(a, &orig).unwrap();
    }
    eprintln!("crypto_log flip cases: {cases}");
}

#[test]
fn replay_old_version_and_swap_are_detected() {
    let disk = traced(400);
    let n = 80;
    // Version 1 of the log at addresses 0.., then version 2 (other content)
    // at the same addresses, as after a delete and a reuse of the space.
    let (_root1, used1) = build(&disk, n, 1, 0, 10);
    let old: BTreeMap<u64, Vec<u8>> = used1.iter().map(|&a| (a, raw(&disk, a))).collect();
    let (root2, _) = build(&disk, n, 2, 0, 10);
    let by_addr = paths(&disk, &root2, 2);
    let mut cases = 0;
    for (&a, deps) in &by_addr {
        let Some(o) = old.get(&a) else { continue };
        let cur = raw(&disk, a);
        disk.write(a, o).unwrap();
        expect(&disk, &root2, 2, deps, &[0, n - 1]);
        disk.write(a, &cur).unwrap();
        cases += 1;
    }
    // Swap pairs of referenced blocks (data with data, node with data, ...).
    let live: Vec<u64> = by_addr.keys().copied().collect();
    let step = if long() { 1 } else { 7 };
    for i in (0..live.len()).step_by(step) {
        let (x, y) = (live[i], live[(i + 5) % live.len()]);
        let (bx, by) = (raw(&disk, x), raw(&disk, y));
        disk.write(x, &by).unwrap();
        disk.write(y, &bx).unwrap();
        let deps: BTreeSet<u64> = by_addr[&x].union(&by_addr[&y]).copied().collect();
        expect(&disk, &root2, 2, &deps, &[]);
        disk.write(x, &bx).unwrap();
        disk.write(y, &by).unwrap();
        cases += 1;
    }
    eprintln!("crypto_log replay/swap cases: {cases}");
}

#[test]
fn an_older_root_still_reads_its_own_version() {
    // Copy-on-write: appending and flushing never disturbs an older root.
    let disk = traced(1000);
    let mut next = 0u64;
    let mut alloc = || {
        next += 1;
        Ok(next - 1)
    };
    let mut log = CryptoLog::new(crypto(), 32).unwrap();
    let mut roots = Vec::new();
    for i in 0..100u64 {
        log.append(&disk, &mut alloc, &block(5, i)).unwrap();
        if i % 9 == 0 {
            roots.push(log.flush(&disk, &mut alloc).unwrap());
        }
    }
    let mut buf = vec![0u8; BLOCK_SIZE];
    for r in &roots {
        let l = CryptoLog::open(crypto(), 32, r.clone()).unwrap();
        l.read(&disk, r.nblocks - 1, &mut buf).unwrap();
        assert_eq!(buf, block(5, r.nblocks - 1));
        assert!(l.read(&disk, r.nblocks, &mut buf).is_err());
    }
}
