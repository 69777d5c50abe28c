//! The rollback anchor on a trusted block device (`disk::BlockAnchor`): its
//! own protocol (round trip, reopen, monotonic, blank device, tampering,
//! another disk's anchor, I/O errors) and what it gives the disk (a
//! whole-image rollback of the main image is `Rollback` at open, an image
//! one sync ahead after a crash between commit and advance opens), and the
//! limit it documents (an anchor rolled back with the image gains nothing).

mod disk_common;

use std::sync::Arc;

use disk_common::{blocks, check, crypto, small_cfg, KEY, SMALL_TOTAL};
use mlsdisk_core::bio::{Adversary, BlockSet, FaultDisk, IoKind, MemDisk, BLOCK_SIZE};
use mlsdisk_core::disk::block_anchor::{is_anchor_error, ANCHOR_BLOCKS};
use mlsdisk_core::disk::{AnchorState, BlockAnchor, MlsDisk, RollbackAnchor};
use mlsdisk_core::{Error, ErrorKind};

type AnchorDev = Arc<FaultDisk<Arc<MemDisk>>>;
type Disk = MlsDisk<Arc<MemDisk>>;

const UUID_A: [u8; 16] = [0xa1; 16];
const UUID_B: [u8; 16] = [0xb2; 16];

/// A 4-block anchor device (more than the anchor needs: a partial use of a
/// device is fine) that can fail chosen I/Os.
fn anchor_dev() -> (Arc<MemDisk>, AnchorDev) {
    let mem = Arc::new(MemDisk::new(4).unwrap());
    (mem.clone(), Arc::new(FaultDisk::new(mem)))
}

fn anchor(dev: &AnchorDev, key: &[u8]) -> BlockAnchor<AnchorDev> {
    BlockAnchor::new(dev.clone(), crypto(), key).unwrap()
}

fn bound(dev: &AnchorDev, uuid: &[u8; 16], fresh: bool) -> BlockAnchor<AnchorDev> {
    let mut a = anchor(dev, &KEY);
    a.bind(uuid, fresh).unwrap();
    a
}

/// A digest for the commit `counter` (the anchor stores whatever it is given).
fn dig(counter: u64) -> [u8; 32] {
    let mut d = [0u8; 32];
    d[..8].copy_from_slice(&counter.to_le_bytes());
    d
}

fn anchor_err(e: Error, kind: ErrorKind) {
    assert_eq!(e.kind(), kind, "{e:?}");
    assert!(is_anchor_error(&e), "not named as the anchor's: {e:?}");
}

#[test]
fn advance_read_round_trip_reopen_and_monotonic() {
    let (_, dev) = anchor_dev();
    let a = bound(&dev, &UUID_A, true);
    assert_eq!(a.kind(), "dev");
    assert!(a.protects());
    assert_eq!(
        a.read().unwrap(),
        Some(AnchorState::genesis()),
        "a fresh anchor starts at the genesis state"
    );
    for c in [1, 2, 7] {
        a.advance(c, &dig(c)).unwrap();
        let st = AnchorState {
            counter: c,
            digest: dig(c),
        };
        assert_eq!(a.read().unwrap(), Some(st));
    }
    // Never lowered, and never another state with the same counter: a
    // stale or forked caller gets an error.
    anchor_err(a.advance(3, &dig(3)).unwrap_err(), ErrorKind::Rollback);
    anchor_err(a.advance(7, &dig(8)).unwrap_err(), ErrorKind::Rollback);
    assert_eq!(a.read().unwrap().map(|s| s.digest), Some(dig(7)));
    a.advance(7, &dig(7)).unwrap();
    drop(a);
    // A new handle on the same device (a reboot) reads the same state.
    let b = bound(&dev, &UUID_A, false);
    assert_eq!(
        b.read().unwrap().map(|s| (s.counter, s.digest)),
        Some((7, dig(7)))
    );
    b.advance(8, &dig(8)).unwrap();
    assert_eq!(
        bound(&dev, &UUID_A, false)
            .read()
            .unwrap()
            .map(|s| s.counter),
        Some(8)
    );
}

#[test]
fn each_advance_is_flushed() {
    let (_, dev) = anchor_dev();
    let a = bound(&dev, &UUID_A, true);
    // A failing flush fails the advance: it never returns before durable.
    dev.fail_nth(IoKind::Flush, 0, false).unwrap();
    anchor_err(a.advance(5, &dig(5)).unwrap_err(), ErrorKind::Io);
    dev.heal().unwrap();
    a.advance(6, &dig(6)).unwrap();
    assert_eq!(a.read().unwrap().map(|s| s.counter), Some(6));
}

#[test]
fn blank_device_starts_at_first_advance_and_other_content_is_refused() {
    let (mem, dev) = anchor_dev();
    let a = bound(&dev, &UUID_A, false);
    assert_eq!(
        a.read().unwrap().map(|s| s.counter),
        None,
        "an all-zero device holds no anchor yet"
    );
    a.advance(4, &dig(4)).unwrap();
    assert_eq!(
        bound(&dev, &UUID_A, false)
            .read()
            .unwrap()
            .map(|s| s.counter),
        Some(4)
    );

    // Anything else that is not an anchor (here: some file system's data)
    // is neither adopted nor overwritten by `read` or `advance`.
    let junk = vec![0x5cu8; BLOCK_SIZE * 2];
    mem.write(0, &junk).unwrap();
    let a = bound(&dev, &UUID_A, false);
    anchor_err(a.read().unwrap_err(), ErrorKind::Corrupted);
    anchor_err(a.advance(9, &dig(9)).unwrap_err(), ErrorKind::Corrupted);
    let mut back = vec![0u8; BLOCK_SIZE * 2];
    mem.read(0, &mut back).unwrap();
    assert_eq!(back, junk, "a non-anchor device was written to");
    // `create` (a fresh bind) formats it.
    let a = bound(&dev, &UUID_A, true);
    assert_eq!(a.read().unwrap().map(|s| s.counter), Some(0));
}

#[test]
fn tampered_anchor_is_an_error() {
    let (mem, dev) = anchor_dev();
    let adv = Adversary::new(mem);
    let a = bound(&dev, &UUID_A, true);
    a.advance(10, &dig(10)).unwrap();
    a.advance(11, &dig(11)).unwrap();
    let clean = adv.snapshot().unwrap();

    // One bit of the payload area of both slots: no slot verifies.
    for offset in [0usize, 8, 127, 128, 160, 4095] {
        adv.restore(&clean).unwrap();
        for slot in 0..ANCHOR_BLOCKS {
            adv.flip_byte(slot, offset, 0x01).unwrap();
        }
        let e = a.read().unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::Integrity | ErrorKind::Corrupted),
            "offset {offset}: {e:?}"
        );
        assert!(is_anchor_error(&e));
        assert!(
            a.advance(12, &dig(12)).is_err(),
            "advance over a tampered anchor"
        );
    }
    adv.restore(&clean).unwrap();
    for slot in 0..ANCHOR_BLOCKS {
        adv.flip_byte(slot, 200, 0x80).unwrap();
    }
    anchor_err(a.read().unwrap_err(), ErrorKind::Integrity);

    // Slots swapped: each slot authenticates only at its own address.
    adv.restore(&clean).unwrap();
    adv.swap(0, 1).unwrap();
    assert!(a.read().is_err(), "swapped slots read as an anchor");

    // Damage to the newest slot only reads as the previous counter (the
    // A/B slots tolerate a torn write): one sync back, never more.
    adv.restore(&clean).unwrap();
    let newest = (0..ANCHOR_BLOCKS)
        .find(|&s| {
            adv.restore(&clean).unwrap();
            adv.flip_byte(s, 300, 0x01).unwrap();
            a.read().unwrap().map(|s| s.counter) == Some(10)
        })
        .expect("damaging one slot must fall back to the other");
    adv.restore(&clean).unwrap();
    adv.flip_byte(1 - newest, 300, 0x01).unwrap();
    assert_eq!(
        a.read().unwrap().map(|s| s.counter),
        Some(11),
        "the older slot's damage hides the newest"
    );
}

#[test]
fn anchor_of_another_disk_or_key_is_refused() {
    let (_, dev) = anchor_dev();
    let a = bound(&dev, &UUID_A, true);
    a.advance(3, &dig(3)).unwrap();
    // Another UUID, same root key.
    let b = bound(&dev, &UUID_B, false);
    anchor_err(b.read().unwrap_err(), ErrorKind::WrongKey);
    anchor_err(b.advance(4, &dig(4)).unwrap_err(), ErrorKind::WrongKey);
    // Another root key, same UUID.
    let mut c = anchor(&dev, &[0x11; 32]);
    c.bind(&UUID_A, false).unwrap();
    anchor_err(c.read().unwrap_err(), ErrorKind::WrongKey);
    // Neither wrote anything: the rightful disk still reads its counter.
    assert_eq!(a.read().unwrap().map(|s| s.counter), Some(3));
}

#[test]
fn misuse_is_an_error_not_a_panic() {
    let small = Arc::new(FaultDisk::new(Arc::new(MemDisk::new(1).unwrap())));
    let e = BlockAnchor::new(small, crypto(), &KEY).unwrap_err();
    anchor_err(e, ErrorKind::InvalidArgument);
    let (_, dev) = anchor_dev();
    assert!(BlockAnchor::new(dev.clone(), crypto(), &[]).is_err());
    let a = anchor(&dev, &KEY);
    assert_eq!(a.read().unwrap_err().kind(), ErrorKind::InvalidState);
    assert_eq!(
        a.advance(1, &dig(1)).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
}

#[test]
fn io_errors_come_back_as_errors() {
    let (_, dev) = anchor_dev();
    let a = bound(&dev, &UUID_A, true);
    a.advance(2, &dig(2)).unwrap();
    for (kind, nth) in [
        (IoKind::Read, 0),
        (IoKind::Read, 1),
        (IoKind::Write, 0),
        (IoKind::Flush, 0),
    ] {
        dev.heal().unwrap();
        dev.fail_nth(kind, nth, false).unwrap();
        let e = a.advance(100 + nth, &dig(100 + nth)).unwrap_err();
        anchor_err(e, ErrorKind::Io);
    }
    dev.heal().unwrap();
    dev.fail_nth(IoKind::Read, 0, true).unwrap();
    anchor_err(a.read().unwrap_err(), ErrorKind::Io);
    dev.heal().unwrap();
    // A failed write or flush either stored the value or left the old one.
    let c = a.read().unwrap().map(|s| s.counter).unwrap();
    assert!((2..=100).contains(&c), "{c}");
    let mut f = anchor(&dev, &KEY);
    dev.fail_nth(IoKind::Write, 0, false).unwrap();
    anchor_err(f.bind(&UUID_B, true).unwrap_err(), ErrorKind::Io);
}

// --- The anchor under a disk. ---

fn main_dev() -> Arc<MemDisk> {
    Arc::new(MemDisk::new(SMALL_TOTAL).unwrap())
}

fn boxed(dev: &AnchorDev, key: &[u8]) -> Box<dyn RollbackAnchor> {
    Box::new(anchor(dev, key))
}

fn create(main: &Arc<MemDisk>, adev: &AnchorDev) -> Disk {
    MlsDisk::create(main.clone(), crypto(), &KEY, small_cfg(), boxed(adev, &KEY)).unwrap()
}

fn open(main: &Arc<MemDisk>, adev: &AnchorDev) -> mlsdisk_core::Result<Disk> {
    MlsDisk::open(main.clone(), crypto(), &KEY, small_cfg(), boxed(adev, &KEY))
}

fn write_sync(d: &mut Disk, tag: u64) {
    d.write(0, &blocks(0, 4, tag)).unwrap();
    d.sync().unwrap();
}

fn reads(d: &mut Disk, tag: u64) -> bool {
    let mut b = vec![0u8; 4 * BLOCK_SIZE];
    d.read(0, &mut b).unwrap();
    b.chunks_exact(BLOCK_SIZE)
        .enumerate()
        .all(|(i, blk)| check(blk, i as u64, tag))
}

#[test]
fn whole_image_rollback_is_detected_and_the_current_image_opens() {
    let main = main_dev();
    let (_, adev) = anchor_dev();
    let mut d = create(&main, &adev);
    let s = d.status_line();
    assert!(
        s.contains("anchor=dev") && !s.contains("unprotected"),
        "{s}"
    );
    write_sync(&mut d, 1);
    let old = Adversary::new(main.clone()).snapshot().unwrap();
    let old_sync = d.stats().sync_counter;
    write_sync(&mut d, 2);
    write_sync(&mut d, 3);
    let new_sync = d.stats().sync_counter;
    d.close().unwrap();
    let current = Adversary::new(main.clone()).snapshot().unwrap();
    let a = bound(&adev, &d_uuid(&main, &adev), false);
    assert_eq!(
        a.read().unwrap().map(|s| s.counter),
        Some(new_sync + 1),
        "close syncs once more"
    );
    drop(a);

    // The host puts the older image back; the anchor (out of its reach)
    // is intact.
    Adversary::new(main.clone()).restore(&old).unwrap();
    let e = open(&main, &adev)
        .err()
        .expect("a rolled-back image must not open");
    anchor_err(e, ErrorKind::Rollback);
    assert!(old_sync < new_sync);

    // The current image opens, with its data.
    Adversary::new(main.clone()).restore(&current).unwrap();
    let mut d = open(&main, &adev).unwrap();
    assert!(reads(&mut d, 3));
    d.close().unwrap();
}

/// The UUID of the disk on `main` (opened once with the anchor).
fn d_uuid(main: &Arc<MemDisk>, adev: &AnchorDev) -> [u8; 16] {
    let d = open(main, adev).unwrap();
    let u = d.uuid();
    drop(d);
    u
}

#[test]
fn anchor_rolled_back_with_the_image_is_not_detected() {
    // What the documentation says: the anchor is worth what its device's
    // protection is worth. Both rolled back together open at the old state.
    let main = main_dev();
    let (amem, adev) = anchor_dev();
    let mut d = create(&main, &adev);
    write_sync(&mut d, 1);
    let old_main = Adversary::new(main.clone()).snapshot().unwrap();
    let old_anchor = Adversary::new(amem.clone()).snapshot().unwrap();
    write_sync(&mut d, 2);
    drop(d);
    Adversary::new(main.clone()).restore(&old_main).unwrap();
    Adversary::new(amem).restore(&old_anchor).unwrap();
    let mut d = open(&main, &adev).unwrap();
    assert!(reads(&mut d, 1));
}

#[test]
fn anchor_of_another_disk_is_refused_at_open() {
    let (main_a, main_b) = (main_dev(), main_dev());
    let (_, adev_a) = anchor_dev();
    let (_, adev_b) = anchor_dev();
    let mut a = create(&main_a, &adev_a);
    write_sync(&mut a, 1);
    a.close().unwrap();
    let mut b = create(&main_b, &adev_b);
    write_sync(&mut b, 2);
    b.close().unwrap();
    // Disk A with disk B's anchor (same root key, other UUID).
    let e = open(&main_a, &adev_b)
        .err()
        .expect("another disk's anchor accepted");
    anchor_err(e, ErrorKind::WrongKey);
    // Nothing was changed: both still open with their own anchors.
    let mut a = open(&main_a, &adev_a).unwrap();
    assert!(reads(&mut a, 1));
    let mut b = open(&main_b, &adev_b).unwrap();
    assert!(reads(&mut b, 2));
}

#[test]
fn crash_between_commit_and_advance_opens_one_ahead() {
    let main = main_dev();
    let (_, adev) = anchor_dev();
    let mut d = create(&main, &adev);
    write_sync(&mut d, 1);
    let before = d.stats().sync_counter;
    // The commit reaches the image; the anchor's write fails (the crash
    // came between the two).
    d.write(0, &blocks(0, 4, 2)).unwrap();
    adev.fail_nth(IoKind::Write, 0, true).unwrap();
    let e = d.sync().unwrap_err();
    assert!(is_anchor_error(&e), "{e:?}");
    drop(d);
    adev.heal().unwrap();
    let uuid = {
        let mut d = open(&main, &adev).expect("an image one sync ahead of its anchor must open");
        assert!(reads(&mut d, 2), "the committed sync is there");
        let s = d.stats().sync_counter;
        assert_eq!(s, before + 1, "exactly one ahead");
        d.uuid()
    };
    // Open brought the anchor up to the image.
    let a = bound(&adev, &uuid, false);
    assert_eq!(a.read().unwrap().map(|s| s.counter), Some(before + 1));
}

#[test]
fn anchor_io_errors_fail_open_and_sync() {
    let main = main_dev();
    let (_, adev) = anchor_dev();
    let mut d = create(&main, &adev);
    write_sync(&mut d, 1);
    adev.fail_nth(IoKind::Flush, 0, false).unwrap();
    d.write(0, &blocks(0, 4, 2)).unwrap();
    anchor_err(d.sync().unwrap_err(), ErrorKind::Io);
    drop(d);
    adev.heal().unwrap();
    adev.fail_nth(IoKind::Read, 0, true).unwrap();
    anchor_err(open(&main, &adev).err().unwrap(), ErrorKind::Io);
    adev.heal().unwrap();
    let mut d = open(&main, &adev).unwrap();
    assert!(reads(&mut d, 2) || reads(&mut d, 1));
}

#[test]
fn create_replaces_an_earlier_disks_anchor() {
    let main = main_dev();
    let (_, adev) = anchor_dev();
    let mut d = create(&main, &adev);
    for t in 1..5 {
        write_sync(&mut d, t);
    }
    d.close().unwrap();
    // A new disk on the same devices: its anchor starts over.
    let mut d = create(&main, &adev);
    write_sync(&mut d, 9);
    d.close().unwrap();
    let mut d = open(&main, &adev).unwrap();
    assert!(reads(&mut d, 9));
    assert!(d.stats().sync_counter < 5);
}
