//! Attacks on the metadata of a disk with the real index: superblock,
//! journal (MacChain), index tables and WAL (chunk region); whole-image
//! rollback with and without an anchor; wrong key; truncated device.
//!
//! The rule checked everywhere: after any tampering the disk either refuses
//! to open (Integrity, Corrupted, Rollback, WrongKey) or every read returns
//! exactly the synced data or an error. Never wrong or stale data.

mod disk_common;

use disk_common::*;
use mlsdisk_core::bio::{MemDisk, BLOCK_SIZE};
use mlsdisk_core::disk::MlsDisk;
use mlsdisk_core::{Cause, ErrorKind};

const N: u64 = 40;

/// A disk with two synced generations: tag 1 everywhere, then tag 2 on
/// the first half (so the index has tables, WAL records and overwrites).
fn setup(use_anchor: bool) -> Harness {
    let mut h = Harness::with(Backend::Lsm, small_cfg(), SMALL_TOTAL, use_anchor);
    h.disk().write(0, &blocks(0, N, 1)).unwrap();
    h.disk().sync().unwrap();
    h.disk().write(0, &blocks(0, N / 2, 2)).unwrap();
    h.disk().discard(N - 2, 2).unwrap();
    h.disk().sync().unwrap();
    h
}

fn want(l: u64) -> u64 {
    if l < N / 2 {
        2
    } else if l >= N - 2 {
        0
    } else {
        1
    }
}

/// Opens and reads everything; panics on wrong data. Returns whether the
/// disk opened and read back entirely correct.
fn probe(h: &mut Harness) -> bool {
    let _ = h.take();
    let mut d = match h.open() {
        Ok(d) => d,
        Err(e) => {
            assert!(
                matches!(
                    e.kind(),
                    ErrorKind::Integrity | ErrorKind::Corrupted | ErrorKind::Rollback
                ),
                "open failed with {e:?}"
            );
            return false;
        }
    };
    let mut all_ok = true;
    let mut b = vec![0u8; BLOCK_SIZE];
    for l in 0..N {
        match d.read(l, &mut b) {
            Ok(()) => assert!(check(&b, l, want(l)), "lba {l}: wrong data after tampering"),
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        ErrorKind::Integrity | ErrorKind::Corrupted | ErrorKind::InvalidState
                    ),
                    "lba {l}: {e:?}"
                );
                all_ok = false;
            }
        }
    }
    all_ok
}

/// Every in-use block of a region: flip one byte, probe, restore.
fn sweep_region(start: u64, len: u64) -> (usize, usize) {
    let mut h = setup(true);
    let _ = h.take();
    let adv = h.adversary();
    let (mut tried, mut detected) = (0, 0);
    for pos in start..start + len {
        let orig = adv.read_block(pos).unwrap();
        if orig.iter().all(|&x| x == 0) {
            continue;
        }
        for off in [0usize, 77, 4095] {
            adv.flip_byte(pos, off, 0x20).unwrap();
            tried += 1;
            if !probe(&mut h) {
                detected += 1;
            }
            adv.write_block(pos, &orig).unwrap();
        }
    }
    assert!(probe(&mut h), "disk must open again once restored");
    (tried, detected)
}

#[test]
fn flips_in_the_journal_and_chunk_regions() {
    let h = setup(true);
    let g = h.geometry();
    drop(h);
    let (t1, d1) = sweep_region(g.journal_start, g.journal_len);
    let (t2, d2) = sweep_region(g.chunk_start, g.chunk_len);
    eprintln!("journal flips: {t1} ({d1} detected); chunk flips: {t2} ({d2} detected)");
    assert!(t1 > 0 && t2 > 0);
    // Flips in blocks the last commit still uses must be noticed; flips
    // in dead blocks (old WAL, freed chunks) may go unnoticed, harmlessly.
    assert!(d1 > 0 && d2 > 0);
}

#[test]
fn superblock_flips_replays_and_swaps() {
    let mut h = setup(true);
    let _ = h.take();
    let adv = h.adversary();
    // One slot damaged: the other one opens.
    for slot in 0..2 {
        let orig = adv.read_block(slot).unwrap();
        adv.flip_byte(slot, 200, 1).unwrap();
        assert!(probe(&mut h), "one bad slot must not lose the disk");
        adv.write_block(slot, &orig).unwrap();
    }
    // Both damaged: no open.
    let (a, b) = (adv.read_block(0).unwrap(), adv.read_block(1).unwrap());
    adv.flip_byte(0, 300, 1).unwrap();
    adv.flip_byte(1, 300, 1).unwrap();
    assert!(!probe(&mut h));
    adv.write_block(0, &a).unwrap();
    adv.write_block(1, &b).unwrap();
    // Swapped slots: each is bound to its address.
    adv.swap(0, 1).unwrap();
    assert!(!probe(&mut h));
    adv.swap(0, 1).unwrap();
    assert!(probe(&mut h));
}

#[test]
fn replay_of_old_superblock_and_journal_is_detected_with_anchor() {
    let mut h = Harness::with(Backend::Lsm, small_cfg(), SMALL_TOTAL, true);
    h.disk().write(0, &blocks(0, N, 1)).unwrap();
    h.disk().sync().unwrap();
    let adv = h.adversary();
    let g = h.geometry();
    let old: Vec<_> = (0..g.data_start)
        .map(|p| adv.snapshot_block(p).unwrap())
        .collect();
    h.disk().write(0, &blocks(0, N, 2)).unwrap();
    h.disk().sync().unwrap();
    let _ = h.take();
    // Put back every metadata block (superblock, journal, chunks) of the
    // older sync: the anchor knows better.
    for v in &old {
        adv.replay(v).unwrap();
    }
    let e = h.open().err().expect("rolled-back metadata must not open");
    assert_eq!(e.kind(), ErrorKind::Rollback, "{e:?}");
}

#[test]
fn whole_image_rollback_detected_with_anchor_reported_without() {
    for use_anchor in [true, false] {
        let mut h = Harness::with(Backend::Lsm, small_cfg(), SMALL_TOTAL, use_anchor);
        h.disk().write(0, &blocks(0, N, 1)).unwrap();
        h.disk().sync().unwrap();
        let adv = h.adversary();
        let img = adv.snapshot().unwrap();
        h.disk().write(0, &blocks(0, N, 2)).unwrap();
        h.disk().sync().unwrap();
        let _ = h.take();
        adv.restore(&img).unwrap();
        match h.open() {
            Err(e) => {
                assert!(use_anchor);
                assert_eq!(e.kind(), ErrorKind::Rollback);
            }
            Ok(mut d) => {
                assert!(!use_anchor, "rollback went unnoticed with an anchor");
                let s = d.status_line();
                assert!(
                    s.contains("unprotected against whole-image rollback"),
                    "{s}"
                );
                let mut b = vec![0u8; BLOCK_SIZE];
                d.read(0, &mut b).unwrap();
                assert!(check(&b, 0, 1), "the old image opens as itself");
            }
        }
    }
}

#[test]
fn wrong_key_truncated_device_and_garbage() {
    let mut h = setup(false);
    let _ = h.take();
    let e = h.open_with_key(&[0x11; 32]).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::WrongKey, "{e:?}");
    let e = h.open_with_key(&[0x5a; 16]).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::WrongKey, "{e:?}");
    // A truncated copy of the image does not open.
    let img = h.mem.snapshot().unwrap();
    let short = std::sync::Arc::new(MemDisk::new(SMALL_TOTAL - 1).unwrap());
    short
        .restore(&img[..(SMALL_TOTAL as usize - 1) * BLOCK_SIZE])
        .unwrap();
    let e = MlsDisk::open(
        short,
        crypto(),
        &KEY,
        small_cfg(),
        Box::new(mlsdisk_core::disk::NoAnchor),
    )
    .err()
    .unwrap();
    assert_eq!(e.kind(), ErrorKind::Corrupted, "{e:?}");
    // The cause is data (the kernel module names truncation from it).
    assert_eq!(e.cause(), Cause::Truncated, "{e:?}");
    // A blank device is not a disk.
    let blank = std::sync::Arc::new(MemDisk::new(SMALL_TOTAL).unwrap());
    let e = MlsDisk::open(
        blank,
        crypto(),
        &KEY,
        small_cfg(),
        Box::new(mlsdisk_core::disk::NoAnchor),
    )
    .err()
    .unwrap();
    assert_eq!(e.kind(), ErrorKind::Corrupted, "{e:?}");
    assert_eq!(e.cause(), Cause::Unspecified, "{e:?}");
}

#[test]
fn replay_and_swap_of_single_metadata_blocks() {
    // Old versions of metadata blocks (from before the last sync), put
    // back one at a time; then pairs of in-use blocks swapped.
    let mut h = Harness::with(Backend::Lsm, small_cfg(), SMALL_TOTAL, true);
    h.disk().write(0, &blocks(0, N, 1)).unwrap();
    h.disk().sync().unwrap();
    let g = h.geometry();
    let adv = h.adversary();
    let old: Vec<_> = (0..g.data_start)
        .map(|p| adv.snapshot_block(p).unwrap())
        .collect();
    h.disk().write(0, &blocks(0, N / 2, 2)).unwrap();
    h.disk().discard(N - 2, 2).unwrap();
    h.disk().sync().unwrap();
    let _ = h.take();
    let (mut replays, mut swaps) = (0, 0);
    for (p, v) in old.iter().enumerate() {
        let cur = adv.read_block(p as u64).unwrap();
        if v.data[..] == cur[..] {
            continue;
        }
        adv.replay(v).unwrap();
        probe(&mut h);
        replays += 1;
        adv.write_block(p as u64, &cur).unwrap();
    }
    let used: Vec<u64> = (g.journal_start..g.data_start)
        .filter(|&p| adv.read_block(p).unwrap().iter().any(|&x| x != 0))
        .collect();
    for w in used.windows(2).step_by(3) {
        adv.swap(w[0], w[1]).unwrap();
        probe(&mut h);
        swaps += 1;
        adv.swap(w[0], w[1]).unwrap();
    }
    assert!(probe(&mut h));
    eprintln!("metadata block replays: {replays}, swaps: {swaps}");
    assert!(replays > 5 && swaps > 5);
}
