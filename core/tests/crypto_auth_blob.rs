//! AuthBlob: create/open/write cycles, torn writes, crashes at every I/O
//! boundary, flipped bytes in either slot, wrong key, replay, swap,
//! rollback, I/O errors.

use std::sync::Arc;

use mlsdisk_core::bio::{Adversary, BlockRange, CrashDisk, FaultDisk, IoKind, MemDisk, BLOCK_SIZE};
use mlsdisk_core::crypto::auth_blob::{HEADER_LEN, MAX_PAYLOAD};
use mlsdisk_core::crypto::AuthBlob;
use mlsdisk_core::platform::StdCrypto;
use mlsdisk_core::{CryptoRef, ErrorKind};
use proptest::prelude::*;

/// The slots live at blocks POS, POS + 1 of the device.
const POS: u64 = 2;
const ROOT: &[u8] = b"0123456789abcdef0123456789abcdef";

fn long() -> bool {
    std::env::var("MLSDISK_LONG_TESTS").is_ok_and(|v| v == "1")
}

fn crypto() -> CryptoRef {
    Arc::new(StdCrypto)
}

fn payload(tag: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7) ^ tag).collect()
}

fn disk() -> (Arc<MemDisk>, Adversary) {
    let mem = Arc::new(MemDisk::new(6).unwrap());
    (mem.clone(), Adversary::new(mem))
}

fn open(mem: &Arc<MemDisk>) -> mlsdisk_core::Result<(AuthBlob<Arc<MemDisk>>, Vec<u8>)> {
    AuthBlob::open(mem.clone(), POS, crypto(), ROOT)
}

#[test]
fn create_open_write_cycles() {
    let (mem, _) = disk();
    let p0 = payload(0, 100);
    let mut b = AuthBlob::create(mem.clone(), POS, crypto(), ROOT, &p0).unwrap();
    assert_eq!(b.version(), 2);
    let (b2, got) = open(&mem).unwrap();
    assert_eq!((got, b2.version()), (p0, 2));
    for (i, len) in [0usize, 1, 17, 3000, MAX_PAYLOAD, 5]
        .into_iter()
        .enumerate()
    {
        let p = payload(i as u8 + 1, len);
        b.write(&p).unwrap();
        let (mut b2, got) = open(&mem).unwrap();
        assert_eq!(got, p);
        assert_eq!(b2.version(), b.version());
        assert_eq!(b2.newest_slot(), b.newest_slot());
        // Continue writing through the reopened handle half of the time.
        if i % 2 == 1 {
            b2.write(&p).unwrap();
            b = b2;
        }
    }
    assert_eq!(
        b.write(&vec![0u8; MAX_PAYLOAD + 1]).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    // Out of range, on a region view, and on an empty device.
    assert_eq!(
        AuthBlob::open(mem.clone(), 5, crypto(), ROOT)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
    let region = BlockRange::new(mem.clone(), 4, 2).unwrap();
    AuthBlob::create(region.clone(), 0, crypto(), ROOT, b"r").unwrap();
    assert_eq!(AuthBlob::open(region, 0, crypto(), ROOT).unwrap().1, b"r");
    let empty = Arc::new(MemDisk::new(2).unwrap());
    assert_eq!(
        AuthBlob::open(empty, 0, crypto(), ROOT).unwrap_err().kind(),
        ErrorKind::Corrupted
    );
}

#[test]
fn wrong_key_is_wrong_key() {
    let (mem, _) = disk();
    let mut b = AuthBlob::create(mem.clone(), POS, crypto(), ROOT, b"secret").unwrap();
    b.write(b"secret2").unwrap();
    for k in [
        &b"another key"[..],
        &ROOT[..16],
        b"0123456789abcdef0123456789abcdeF",
    ] {
        let e = AuthBlob::open(mem.clone(), POS, crypto(), k).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WrongKey);
    }
    // The payload is not on the disk in the clear.
    let img = mem.snapshot().unwrap();
    assert!(!img.windows(6).any(|w| w == b"secret"));
}

/// Offsets to flip in a slot: every header byte, payload bytes at a stride
/// (all in the long mode).
fn offsets() -> Vec<usize> {
    if long() {
        (0..BLOCK_SIZE).collect()
    } else {
        (0..HEADER_LEN)
            .chain((HEADER_LEN..BLOCK_SIZE).step_by(61))
            .chain([BLOCK_SIZE - 1])
            .collect()
    }
}

/// The salt field (24..56): tampering it is indistinguishable from a wrong key.
fn in_salt(off: usize) -> bool {
    (24..56).contains(&off)
}

#[test]
fn flip_any_byte_of_either_slot() {
    let (mem, adv) = disk();
    let old = payload(1, 2000);
    let new = payload(2, 3000);
    let mut b = AuthBlob::create(mem.clone(), POS, crypto(), ROOT, &old).unwrap();
    b.write(&new).unwrap(); // slot A: v3 (new), slot B: v2 (old)
    assert_eq!(b.newest_slot(), 0);
    let mut cases = 0u64;
    for off in offsets() {
        // One slot damaged: the other one is used.
        for (slot, want, ver) in [(0u64, &old, 2u64), (1, &new, 3)] {
            let keep = adv.snapshot_block(POS + slot).unwrap();
            adv.flip_byte(POS + slot, off, 0x04).unwrap();
            let (b2, got) = open(&mem).unwrap_or_else(|e| panic!("slot {slot} off {off}: {e}"));
            assert_eq!((&got, b2.version()), (want, ver), "slot {slot} off {off}");
            adv.replay(&keep).unwrap();
            cases += 1;
        }
        // Both damaged: no slot verifies.
        let ka = adv.snapshot_block(POS).unwrap();
        let kb = adv.snapshot_block(POS + 1).unwrap();
        adv.flip_byte(POS, off, 0x04).unwrap();
        adv.flip_byte(POS + 1, off, 0x20).unwrap();
        let e = open(&mem).unwrap_err().kind();
        if in_salt(off) {
            assert_eq!(e, ErrorKind::WrongKey, "off {off}");
        } else {
            assert!(
                matches!(e, ErrorKind::Integrity | ErrorKind::Corrupted),
                "off {off}: {e:?}"
            );
        }
        adv.replay(&ka).unwrap();
        adv.replay(&kb).unwrap();
        cases += 1;
    }
    assert_eq!(open(&mem).unwrap().1, new);
    println!("auth_blob flip cases: {cases}");
}

#[test]
fn torn_slot_write_never_loses_the_other() {
    // A slot write torn at 512-byte sector granularity: the first k sectors
    // new, the rest old.
    let (mem, adv) = disk();
    let mut b = AuthBlob::create(mem.clone(), POS, crypto(), ROOT, b"v2").unwrap();
    b.write(b"v3").unwrap();
    let mut cases = 0;
    for k in 1..8usize {
        let target = POS + (1 - b.newest_slot());
        let before = adv.snapshot_block(target).unwrap();
        let other = adv.snapshot_block(POS + b.newest_slot()).unwrap();
        b.write(b"next").unwrap();
        let after = adv.snapshot_block(target).unwrap();
        let mut torn = before.data.clone();
        torn[..k * 512].copy_from_slice(&after.data[..k * 512]);
        adv.write_block(target, &torn).unwrap();
        let (_, got) = open(&mem).unwrap();
        assert_ne!(got, b"next");
        adv.replay(&before).unwrap();
        adv.replay(&other).unwrap();
        // Undo the handle's idea of the write: reopen.
        b = open(&mem).unwrap().0;
        cases += 1;
    }
    println!("auth_blob torn-write cases: {cases}");
}

#[test]
fn crash_at_every_io_boundary() {
    // Workload: create, then 4 writes; crash at each I/O boundary, keeping
    // each subset of the pending block writes.
    let writes: Vec<Vec<u8>> = (0..4).map(|i| payload(10 + i, 500 * i as usize)).collect();
    let setup = || {
        let mem = Arc::new(MemDisk::new(6).unwrap());
        Arc::new(CrashDisk::new(mem))
    };
    let c = setup();
    let mut b = AuthBlob::create(c.clone(), POS, crypto(), ROOT, b"init").unwrap();
    let base = c.op_count();
    for w in &writes {
        b.write(w).unwrap();
    }
    let total = c.op_count() - base;
    let mut points = 0;
    for n in 0..=total {
        for sel in 0..3 {
            let c = setup();
            let mut b = AuthBlob::create(c.clone(), POS, crypto(), ROOT, b"init").unwrap();
            c.crash_after_ops(n).unwrap();
            let mut done = b"init".to_vec();
            let mut flight = None;
            for w in &writes {
                match b.write(w) {
                    Ok(()) => done = w.clone(),
                    Err(e) => {
                        assert_eq!(e.kind(), ErrorKind::Io);
                        flight = Some(w.clone());
                        break;
                    }
                }
            }
            match sel {
                0 => c.crash(&|_| false).unwrap(),
                1 => c.crash(&|_| true).unwrap(),
                _ => c.crash(&|i| i % 2 == 1).unwrap(),
            }
            let (_, got) = AuthBlob::open(c.clone(), POS, crypto(), ROOT).unwrap();
            assert!(
                got == done || Some(&got) == flight.as_ref(),
                "crash after {n} ops, selector {sel}"
            );
            points += 1;
        }
    }
    println!("auth_blob crash points: {points}");
}

#[test]
fn replay_swap_and_rollback() {
    let (mem, adv) = disk();
    let mut b = AuthBlob::create(mem.clone(), POS, crypto(), ROOT, b"v1v2").unwrap();
    let a_v1 = adv.snapshot_block(POS).unwrap();
    let b_v2 = adv.snapshot_block(POS + 1).unwrap();
    let image_v2 = adv.snapshot().unwrap();
    b.write(b"v3").unwrap(); // A
    b.write(b"v4").unwrap(); // B
    b.write(b"v5").unwrap(); // A
    let mut cases = 0;
    // Replay an older A while B (v4) is newer than it: v5 is lost to the
    // replay, but B still wins over the replayed A.
    let cur_a = adv.snapshot_block(POS).unwrap();
    let cur_b = adv.snapshot_block(POS + 1).unwrap();
    adv.replay(&a_v1).unwrap();
    let (bl, got) = open(&mem).unwrap();
    assert_eq!((got.as_slice(), bl.version()), (&b"v4"[..], 4));
    adv.replay(&cur_a).unwrap();
    cases += 1;
    // Replay an older B while A (v5) is newest: v5 still wins.
    adv.replay(&b_v2).unwrap();
    let (bl, got) = open(&mem).unwrap();
    assert_eq!((got.as_slice(), bl.version()), (&b"v5"[..], 5));
    cases += 1;
    // A slot copied or swapped to the other position does not verify there.
    adv.replay_at(&cur_a, POS + 1).unwrap();
    let (bl, _) = open(&mem).unwrap();
    assert_eq!(bl.version(), 5);
    adv.replay(&cur_b).unwrap();
    adv.swap(POS, POS + 1).unwrap();
    assert_eq!(open(&mem).unwrap_err().kind(), ErrorKind::Integrity);
    cases += 2;
    // Whole-image rollback opens the old version: detecting it is the
    // rollback anchor's job (it compares `version()`).
    adv.restore(&image_v2).unwrap();
    let (bl, got) = open(&mem).unwrap();
    assert_eq!((got.as_slice(), bl.version()), (&b"v1v2"[..], 2));
    cases += 1;
    println!("auth_blob replay/swap/rollback cases: {cases}");
}

#[test]
fn io_errors() {
    let mem = Arc::new(MemDisk::new(4).unwrap());
    let f = Arc::new(FaultDisk::new(mem));
    let mut b = AuthBlob::create(f.clone(), 0, crypto(), ROOT, b"one").unwrap();
    for kind in [IoKind::Write, IoKind::Flush] {
        f.fail_nth(kind, 0, false).unwrap();
        assert_eq!(b.write(b"two").unwrap_err().kind(), ErrorKind::Io);
        assert_eq!(b.version(), 2);
    }
    for nth in 0..2 {
        f.fail_nth(IoKind::Read, nth, false).unwrap();
        assert_eq!(
            AuthBlob::open(f.clone(), 0, crypto(), ROOT)
                .unwrap_err()
                .kind(),
            ErrorKind::Io
        );
    }
    f.fail_nth(IoKind::Write, 0, false).unwrap();
    assert_eq!(
        AuthBlob::create(f.clone(), 0, crypto(), ROOT, b"x")
            .unwrap_err()
            .kind(),
        ErrorKind::Io
    );
    f.heal().unwrap();
    b.write(b"three").unwrap();
    let (_, got) = AuthBlob::open(f, 0, crypto(), ROOT).unwrap();
    assert_eq!(got, b"three");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if long() { 128 } else { 16 }))]

    /// Random writes and reopens against a model (the last payload).
    #[test]
    fn prop_newest_wins(ops in prop::collection::vec((0usize..MAX_PAYLOAD + 1, any::<bool>()), 1..12)) {
        let (mem, _) = disk();
        let mut b = AuthBlob::create(mem.clone(), POS, crypto(), ROOT, b"").unwrap();
        let mut model = Vec::new();
        for (i, (len, reopen)) in ops.into_iter().enumerate() {
            let p = payload(i as u8, len);
            b.write(&p).unwrap();
            model = p;
            if reopen {
                let (b2, got) = open(&mem).unwrap();
                prop_assert_eq!(&got, &model);
                b = b2;
            }
        }
        prop_assert_eq!(open(&mem).unwrap().1, model);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if long() { 512 } else { 64 }))]

    /// Random edits to the slots never make open panic, and it returns either
    /// one of the payloads written or an error of a documented kind.
    #[test]
    fn prop_garbage_never_panics(
        edits in prop::collection::vec((0u64..2, 0usize..BLOCK_SIZE, any::<u8>()), 1..8),
    ) {
        let (mem, adv) = disk();
        let mut b = AuthBlob::create(mem.clone(), POS, crypto(), ROOT, b"first").unwrap();
        b.write(b"second").unwrap();
        for (slot, off, byte) in edits {
            adv.modify(POS + slot, &mut |blk| blk[off] = byte).unwrap();
        }
        match open(&mem) {
            Ok((_, p)) => prop_assert!(p == b"first" || p == b"second"),
            Err(e) => prop_assert!(matches!(
                e.kind(),
                ErrorKind::Integrity | ErrorKind::WrongKey | ErrorKind::Corrupted
            )),
        }
    }
}

/// `write` keeps the previous payload in the older slot (a damaged newest
/// slot falls back to it); `write_both` leaves the new payload in both
/// slots, at two consecutive versions, and every crash point of it opens at
/// the old or the new payload.
#[test]
fn write_both_leaves_no_older_payload_to_fall_back_to() {
    let (p1, p2, p3) = (payload(1, 100), payload(2, 200), payload(3, 300));
    let (mem, adv) = disk();
    let mut b = AuthBlob::create(mem.clone(), POS, crypto(), ROOT, &p1).unwrap();
    b.write(&p2).unwrap();
    adv.flip_byte(POS + b.newest_slot(), 500, 1).unwrap();
    assert_eq!(open(&mem).unwrap().1, p1, "write: the older slot holds p1");

    let (mem, adv) = disk();
    let mut b = AuthBlob::create(mem.clone(), POS, crypto(), ROOT, &p1).unwrap();
    b.write_both(&p2).unwrap();
    assert_eq!(b.version(), 4);
    for slot in 0..2 {
        let img = mem.snapshot().unwrap();
        adv.flip_byte(POS + slot, 500, 1).unwrap();
        let (b2, got) = open(&mem).unwrap();
        assert_eq!(got, p2, "write_both, slot {slot} damaged");
        assert_eq!(b2.version(), if slot == b.newest_slot() { 3 } else { 4 });
        mem.restore(&img).unwrap();
    }

    // Either of its two slot writes fails: the blob opens at the old or
    // the new payload, never at neither.
    for nth in 0..2u64 {
        let mem = Arc::new(MemDisk::new(6).unwrap());
        AuthBlob::create(mem.clone(), POS, crypto(), ROOT, &p2).unwrap();
        let fault = Arc::new(FaultDisk::new(mem.clone()));
        let mut b = AuthBlob::open(fault.clone(), POS, crypto(), ROOT)
            .unwrap()
            .0;
        fault.fail_nth(IoKind::Write, nth, false).unwrap();
        assert!(b.write_both(&p3).is_err(), "write {nth} fails");
        let got = open(&mem).unwrap().1;
        assert_eq!(got, if nth == 0 { p2.clone() } else { p3.clone() });
    }
}
