//! The engine's own `NoSpace` in the middle of a write-buffer flush must
//! never hand out or commit wrong bytes (issue: the flush sealed the write
//! buffer in place, so a flush that stopped half way left ciphertext where
//! reads and the next flush took it for plaintext).
//!
//! Each test drives a small disk into `NoSpace` the way a user would (data
//! log full with `auto_sync` off and segments smaller than the write
//! buffer; an index region too small for the tree with `auto_sync` on) and
//! checks after every error:
//! - every block reads as one of the versions it may hold (the last
//!   acknowledged one; for the blocks of the failed request, old or new) or
//!   the disk is stopped (`failure()` is set and requests fail);
//! - when the disk is still usable, the sync the message asks for commits
//!   exactly that, and a reopen reads it back;
//! - when the disk stopped, a reopen gives the last sync (or a state the
//!   disk synced on its own after it: a forced sync), never other bytes.

mod disk_common;

use std::collections::BTreeSet;
use std::sync::Arc;

use mlsdisk_core::bio::{MemDisk, BLOCK_SIZE};
use mlsdisk_core::disk::{DiskConfig, LayoutConfig, MlsDisk, NoAnchor};
use mlsdisk_core::ErrorKind;

const KEY: [u8; 32] = [0x5a; 32];

/// A block that says which LBA and which write it is.
fn block(lba: u64, tag: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_SIZE];
    b[..8].copy_from_slice(&lba.to_le_bytes());
    b[8..16].copy_from_slice(&tag.to_le_bytes());
    let fill = (lba.wrapping_mul(31) ^ tag.wrapping_mul(131)) as u8 | 1;
    b[16..].fill(fill);
    b
}

/// The tag of a block read back at `lba`: 0 for zeros, `None` for bytes
/// that are no version of that block.
fn tag_of(lba: u64, b: &[u8]) -> Option<u64> {
    if b.iter().all(|&x| x == 0) {
        return Some(0);
    }
    let tag = u64::from_le_bytes(b[8..16].try_into().ok()?);
    (b == block(lba, tag).as_slice()).then_some(tag)
}

/// Per LBA, the versions a read may return.
struct Model {
    /// Versions since the last sync that returned Ok (the first is the
    /// synced one); a stopped disk may reopen to any of them (forced syncs).
    since_sync: Vec<BTreeSet<u64>>,
    /// Versions a read may return now.
    now: Vec<BTreeSet<u64>>,
}

impl Model {
    fn new(cap: u64) -> Self {
        let zero: BTreeSet<u64> = [0].into();
        Self {
            since_sync: vec![zero.clone(); cap as usize],
            now: vec![zero; cap as usize],
        }
    }

    /// A write of `tag` to `lba` that returned Ok.
    fn acked(&mut self, lba: u64, tag: u64) {
        self.now[lba as usize] = [tag].into();
        self.since_sync[lba as usize].insert(tag);
    }

    /// A write of `tag` to `lba` that failed: old or new.
    fn maybe(&mut self, lba: u64, tag: u64) {
        self.now[lba as usize].insert(tag);
        self.since_sync[lba as usize].insert(tag);
    }

    /// A sync returned Ok: what reads return now is what is durable. A
    /// block the failed request may or may not have taken is fixed by the
    /// read that follows (see `settle`).
    fn synced(&mut self) {
        self.since_sync = self.now.clone();
    }

    /// After a read returned `tag` from a usable disk, that version is the
    /// block's content from now on.
    fn settle(&mut self, lba: u64, tag: u64) {
        self.now[lba as usize] = [tag].into();
    }
}

/// Reads every block; each must be a version the model allows. Returns
/// false if the disk refused (it stopped itself).
fn check_all(d: &mut MlsDisk<Arc<MemDisk>>, m: &mut Model, what: &str) -> bool {
    let mut b = vec![0u8; BLOCK_SIZE];
    for lba in 0..d.nblocks() {
        match d.read(lba, &mut b) {
            Ok(()) => {
                let t = tag_of(lba, &b).unwrap_or_else(|| {
                    panic!("{what}: lba {lba} reads bytes that no write ever gave it")
                });
                assert!(
                    m.now[lba as usize].contains(&t),
                    "{what}: lba {lba} reads version {t}, allowed {:?}",
                    m.now[lba as usize]
                );
                m.settle(lba, t);
            }
            Err(e) => {
                assert!(
                    d.failure().is_some(),
                    "{what}: read of lba {lba} failed ({e}) on a disk that says it is healthy"
                );
                return false;
            }
        }
    }
    true
}

/// Reopens `dev` and checks every block against the versions since the
/// last sync (a stopped disk) or the current ones (after a clean close).
fn reopen_and_check(dev: &Arc<MemDisk>, cfg: &DiskConfig, allowed: &[BTreeSet<u64>], what: &str) {
    let mut d = MlsDisk::open(
        dev.clone(),
        disk_common::crypto(),
        &KEY,
        cfg.clone(),
        Box::new(NoAnchor),
    )
    .unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
    let mut b = vec![0u8; BLOCK_SIZE];
    for lba in 0..d.nblocks() {
        d.read(lba, &mut b)
            .unwrap_or_else(|e| panic!("{what}: read {lba} after reopen: {e}"));
        let t = tag_of(lba, &b).unwrap_or_else(|| {
            panic!("{what}: after reopen lba {lba} reads bytes no write ever gave it")
        });
        assert!(
            allowed[lba as usize].contains(&t),
            "{what}: after reopen lba {lba} reads version {t}, allowed {:?}",
            allowed[lba as usize]
        );
    }
}

/// Random writes of 1-8 blocks until `writes` requests went through;
/// returns how many `NoSpace` errors were met (each one checked).
fn run(cfg: DiskConfig, dev_blocks: u64, writes: u64, seed: u64, what: &str) -> u64 {
    let dev = Arc::new(MemDisk::new(dev_blocks).unwrap());
    let mut d = MlsDisk::create(
        dev.clone(),
        disk_common::crypto(),
        &KEY,
        cfg.clone(),
        Box::new(NoAnchor),
    )
    .unwrap();
    let cap = d.nblocks();
    let mut m = Model::new(cap);
    let mut x = seed | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut nospace = 0u64;
    let mut tag = 0u64;
    let mut i = 0u64;
    // NoSpace on every attempt in a row: the index region (sized far below
    // what the tree needs) is full for good, and the disk refuses updates
    // up front; stop there and check what it holds.
    let mut refused_in_row = 0u32;
    while i < writes && refused_in_row < 16 {
        let n = 1 + rnd() % 8;
        let lba = rnd() % (cap - n);
        tag += 1;
        let mut buf = Vec::with_capacity((n as usize) * BLOCK_SIZE);
        for k in 0..n {
            buf.extend_from_slice(&block(lba + k, tag));
        }
        match d.write(lba, &buf) {
            Ok(()) => {
                for k in 0..n {
                    m.acked(lba + k, tag);
                }
                i += 1;
                refused_in_row = 0;
                if rnd() % 400 == 0 {
                    match d.sync() {
                        Ok(()) => m.synced(),
                        Err(e) => {
                            let what = format!("{what}, sync after write {i} ({e})");
                            assert_eq!(
                                e.kind(),
                                ErrorKind::NoSpace,
                                "{what}: unexpected error kind"
                            );
                            nospace += 1;
                            if !check_all(&mut d, &mut m, &what) || d.failure().is_some() {
                                drop(d);
                                reopen_and_check(&dev, &cfg, &m.since_sync, &what);
                                return nospace;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                for k in 0..n {
                    m.maybe(lba + k, tag);
                }
                let what = format!("{what}, write {i} ({e})");
                if e.kind() != ErrorKind::NoSpace {
                    panic!("{what}: unexpected error kind");
                }
                nospace += 1;
                refused_in_row += 1;
                if !check_all(&mut d, &mut m, &what) || d.failure().is_some() {
                    // Stopped: requests fail, a reopen gives the last sync
                    // or one the disk made on its own since.
                    assert!(
                        d.write(0, &block(0, tag + 1)).is_err(),
                        "{what}: write accepted by a stopped disk"
                    );
                    assert!(d.sync().is_err(), "{what}: sync accepted by a stopped disk");
                    drop(d);
                    reopen_and_check(&dev, &cfg, &m.since_sync, &what);
                    return nospace;
                }
                // Usable: do what the message says, then everything read
                // back now must be what the sync made durable.
                d.sync()
                    .unwrap_or_else(|e| panic!("{what}: the sync after NoSpace: {e}"));
                m.synced();
                check_all(&mut d, &mut m, &format!("{what}, after the sync"));
                let snapshot = m.now.clone();
                drop(d);
                reopen_and_check(
                    &dev,
                    &cfg,
                    &snapshot,
                    &format!("{what}, crash after the sync"),
                );
                d = MlsDisk::open(
                    dev.clone(),
                    disk_common::crypto(),
                    &KEY,
                    cfg.clone(),
                    Box::new(NoAnchor),
                )
                .unwrap();
            }
        }
    }
    assert!(
        check_all(&mut d, &mut m, what),
        "{what}: stopped at the end"
    );
    d.sync().unwrap();
    m.synced();
    let snapshot = m.now.clone();
    drop(d);
    reopen_and_check(&dev, &cfg, &snapshot, &format!("{what}: final reopen"));
    nospace
}

/// `auto_sync` off, segments of 16 blocks under a 256-block write buffer:
/// the data log fills in the middle of a flush.
#[test]
fn data_log_full_mid_flush_with_small_segments() {
    for seed in [1u64, 1234] {
        let cfg = DiskConfig {
            layout: LayoutConfig {
                seg_blocks: 16,
                ..LayoutConfig::default()
            },
            write_buffer_blocks: 256,
            auto_sync: false,
            ..DiskConfig::default()
        };
        let n = run(
            cfg,
            4096,
            3000,
            seed,
            &format!("small segments, seed {seed}"),
        );
        eprintln!("small segments, seed {seed}: {n} NoSpace errors checked");
        assert!(
            n > 0,
            "seed {seed}: the data log never filled: the test reached nothing"
        );
    }
}

/// The index region far smaller than the tree needs, `auto_sync` on (the
/// default): the index runs out of chunks. (On fd48f58 seed 3 read back
/// another block's ciphertext after "no free chunk in the log store".)
#[test]
fn index_region_full_mid_flush() {
    for seed in [3u64, 99] {
        let cfg = DiskConfig {
            layout: LayoutConfig {
                index_blocks: 120,
                ..LayoutConfig::default()
            },
            write_buffer_blocks: 256,
            ..DiskConfig::default()
        };
        let n = run(cfg, 4096, 4000, seed, &format!("tight index, seed {seed}"));
        eprintln!("tight index, seed {seed}: {n} NoSpace errors checked");
        assert!(
            n > 0,
            "seed {seed}: the index never filled: the test reached nothing"
        );
    }
}
