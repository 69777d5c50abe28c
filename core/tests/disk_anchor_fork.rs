//! The rollback anchor binds the committed state, not only its counter.
//!
//! The attack these tests play: during sync s+1 (data B) the host stops the
//! VM after the journal flush but before the anchor write and keeps that
//! image i1 (counter s+1, anchor still s). It boots the VM on the image as
//! it was at s (dropping an in-flight sync is allowed), the user writes C
//! and that sync completes (anchor s+1). Putting i1 back presents the
//! anchor's counter with another commit: it must not open. Around it: the
//! in-flight sync itself (one ahead, history through the anchor) opens; an
//! image two syncs ahead, an image with the anchor's counter but another
//! digest and an image one ahead that does not descend from the anchored
//! commit are refused; an anchor that held nothing says "(tofu)" in the
//! status line until the first anchored sync.
//!
//! Each runs with `MemAnchor` and with `BlockAnchor` on a `MemDisk`.

mod disk_common;

use std::sync::Arc;

use disk_common::{blocks, check, crypto, small_cfg, KEY, SMALL_TOTAL};
use mlsdisk_core::bio::{Adversary, FaultDisk, Image, IoKind, MemDisk, BLOCK_SIZE};
use mlsdisk_core::disk::block_anchor::is_anchor_error;
use mlsdisk_core::disk::{AnchorState, BlockAnchor, MemAnchor, MlsDisk, NoAnchor, RollbackAnchor};
use mlsdisk_core::{ErrorKind, Result};

type AnchorDev = Arc<FaultDisk<Arc<MemDisk>>>;
type Disk = MlsDisk<Arc<MemDisk>>;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Mem,
    Dev,
}

/// The anchor of a rig: shared memory, or a trusted block device.
enum Anchor {
    Mem(MemAnchor),
    Dev { mem: Arc<MemDisk>, dev: AnchorDev },
}

/// What the anchor holds, saved to be put back (the anchor "missed" some
/// writes).
enum Saved {
    Mem(Option<AnchorState>),
    Dev(Image),
}

/// A disk image on a `MemDisk` and its anchor.
struct Rig {
    main: Arc<MemDisk>,
    anchor: Anchor,
}

impl Rig {
    fn new(kind: Kind) -> Self {
        let main = Arc::new(MemDisk::new(SMALL_TOTAL).unwrap());
        let anchor = match kind {
            Kind::Mem => Anchor::Mem(MemAnchor::new()),
            Kind::Dev => {
                let mem = Arc::new(MemDisk::new(2).unwrap());
                let dev = Arc::new(FaultDisk::new(mem.clone()));
                Anchor::Dev { mem, dev }
            }
        };
        Self { main, anchor }
    }

    fn boxed(&self) -> Box<dyn RollbackAnchor> {
        match &self.anchor {
            Anchor::Mem(a) => Box::new(a.clone()),
            Anchor::Dev { dev, .. } => {
                Box::new(BlockAnchor::new(dev.clone(), crypto(), &KEY).unwrap())
            }
        }
    }

    fn kind_name(&self) -> &'static str {
        match self.anchor {
            Anchor::Mem(_) => "memory",
            Anchor::Dev { .. } => "dev",
        }
    }

    fn create(&self) -> Disk {
        MlsDisk::create(self.main.clone(), crypto(), &KEY, small_cfg(), self.boxed()).unwrap()
    }

    fn open(&self) -> Result<Disk> {
        MlsDisk::open(self.main.clone(), crypto(), &KEY, small_cfg(), self.boxed())
    }

    /// The host's copy of the whole disk image.
    fn image(&self) -> Image {
        Adversary::new(self.main.clone()).snapshot().unwrap()
    }

    /// The host puts an image back.
    fn put(&self, img: &Image) {
        Adversary::new(self.main.clone()).restore(img).unwrap();
    }

    fn save_anchor(&self) -> Saved {
        match &self.anchor {
            Anchor::Mem(a) => Saved::Mem(a.read().unwrap()),
            Anchor::Dev { mem, .. } => Saved::Dev(Adversary::new(mem.clone()).snapshot().unwrap()),
        }
    }

    fn restore_anchor(&self, s: &Saved) {
        match (&self.anchor, s) {
            (Anchor::Mem(a), Saved::Mem(v)) => a.force(*v),
            (Anchor::Dev { mem, .. }, Saved::Dev(img)) => {
                Adversary::new(mem.clone()).restore(img).unwrap()
            }
            _ => unreachable!(),
        }
    }

    /// Writes `tag` and syncs, but the host stops the VM after the
    /// journal flush and before the anchor write: returns the image the
    /// host keeps (its anchor is still at the previous sync).
    fn sync_but_lose_the_anchor_write(&self, mut d: Disk, tag: u64) -> Image {
        d.write(0, &blocks(0, 4, tag)).unwrap();
        match &self.anchor {
            Anchor::Mem(_) => {
                let before = self.save_anchor();
                d.sync().unwrap();
                self.restore_anchor(&before);
            }
            Anchor::Dev { dev, .. } => {
                dev.fail_nth(IoKind::Write, 0, true).unwrap();
                let e = d.sync().unwrap_err();
                assert!(is_anchor_error(&e), "{e:?}");
                dev.heal().unwrap();
            }
        }
        drop(d);
        self.image()
    }
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

fn refused(r: Result<Disk>, what: &str) {
    let e = r
        .err()
        .unwrap_or_else(|| panic!("{what}: the image opened"));
    assert_eq!(e.kind(), ErrorKind::Rollback, "{what}: {e:?}");
    assert!(
        is_anchor_error(&e),
        "{what}: not named as the anchor's: {e:?}"
    );
}

/// A disk at sync s with data A (tag 1), open; and the image at s.
fn at_s(rig: &Rig) -> (Disk, Image, u64) {
    let mut d = rig.create();
    write_sync(&mut d, 1);
    let s = d.stats().sync_counter;
    (d, rig.image(), s)
}

fn fork_of_a_dropped_in_flight_sync_is_refused(kind: Kind) {
    let rig = Rig::new(kind);
    let (d, img_s, s) = at_s(&rig);
    // Sync s+1 with B reaches the journal, not the anchor: the host keeps i1.
    let i1 = rig.sync_but_lose_the_anchor_write(d, 2);
    // The host boots the VM on the image at s (the in-flight sync dropped).
    rig.put(&img_s);
    let mut d = rig.open().expect("the anchored image opens");
    assert!(reads(&mut d, 1));
    assert_eq!(d.stats().sync_counter, s);
    // The user writes C; that sync completes: the anchor is at s+1.
    write_sync(&mut d, 3);
    assert_eq!(d.stats().sync_counter, s + 1);
    drop(d);
    let img_c = rig.image();
    // The host puts i1 back: same counter as the anchor, another commit.
    rig.put(&i1);
    refused(rig.open(), "forked image with the anchor's counter");
    // The completed sync is what opens.
    rig.put(&img_c);
    let mut d = rig.open().unwrap();
    assert!(reads(&mut d, 3), "the completed sync C is there");
    assert_eq!(d.stats().sync_counter, s + 1);
}

#[test]
fn fork_of_a_dropped_in_flight_sync_is_refused_mem_anchor() {
    fork_of_a_dropped_in_flight_sync_is_refused(Kind::Mem);
}

#[test]
fn fork_of_a_dropped_in_flight_sync_is_refused_block_anchor() {
    fork_of_a_dropped_in_flight_sync_is_refused(Kind::Dev);
}

fn in_flight_sync_through_the_anchor_opens(kind: Kind) {
    let rig = Rig::new(kind);
    let (d, img_s, s) = at_s(&rig);
    let i1 = rig.sync_but_lose_the_anchor_write(d, 2);
    // The image as the crash left it: one sync ahead, from the anchored commit.
    rig.put(&i1);
    let mut d = rig.open().expect("the in-flight sync opens");
    assert!(reads(&mut d, 2));
    assert_eq!(d.stats().sync_counter, s + 1);
    let st = d.status_line();
    assert!(!st.contains("tofu"), "{st}");
    drop(d);
    // Open brought the anchor up to it: the image at s is now older.
    rig.put(&img_s);
    refused(rig.open(), "the image before the in-flight sync");
    rig.put(&i1);
    let mut d = rig.open().unwrap();
    write_sync(&mut d, 4);
    d.close().unwrap();
    let mut d = rig.open().unwrap();
    assert!(reads(&mut d, 4));
}

#[test]
fn in_flight_sync_through_the_anchor_opens_mem_anchor() {
    in_flight_sync_through_the_anchor_opens(Kind::Mem);
}

#[test]
fn in_flight_sync_through_the_anchor_opens_block_anchor() {
    in_flight_sync_through_the_anchor_opens(Kind::Dev);
}

fn image_two_syncs_ahead_is_refused(kind: Kind) {
    let rig = Rig::new(kind);
    let (mut d, _, s) = at_s(&rig);
    let anchor_at_s = rig.save_anchor();
    write_sync(&mut d, 2);
    write_sync(&mut d, 3);
    assert_eq!(d.stats().sync_counter, s + 2);
    drop(d);
    // Neither anchor write happened: the image is two syncs ahead.
    rig.restore_anchor(&anchor_at_s);
    refused(rig.open(), "two syncs ahead of the anchor");
}

#[test]
fn image_two_syncs_ahead_is_refused_mem_anchor() {
    image_two_syncs_ahead_is_refused(Kind::Mem);
}

#[test]
fn image_two_syncs_ahead_is_refused_block_anchor() {
    image_two_syncs_ahead_is_refused(Kind::Dev);
}

/// `st` with one bit of the digest flipped.
fn other_digest(st: AnchorState) -> AnchorState {
    let mut o = st;
    o.digest[7] ^= 0x20;
    o
}

#[test]
fn same_counter_with_another_digest_is_refused() {
    let rig = Rig::new(Kind::Mem);
    let Anchor::Mem(a) = &rig.anchor else {
        unreachable!()
    };
    let (d, _, s) = at_s(&rig);
    drop(d);
    let good = a.read().unwrap().unwrap();
    assert_eq!(good.counter, s);
    a.force(Some(other_digest(good)));
    refused(rig.open(), "the anchor's counter with another digest");
    a.force(Some(good));
    let mut d = rig.open().unwrap();
    assert!(reads(&mut d, 1));
}

#[test]
fn one_ahead_not_from_the_anchored_commit_is_refused() {
    let rig = Rig::new(Kind::Mem);
    let Anchor::Mem(a) = &rig.anchor else {
        unreachable!()
    };
    let (d, _, s) = at_s(&rig);
    let good = a.read().unwrap().unwrap();
    rig.sync_but_lose_the_anchor_write(d, 2);
    assert_eq!(a.read().unwrap(), Some(good));
    // The image is one ahead, but its prev is not the anchor's digest.
    a.force(Some(other_digest(good)));
    refused(rig.open(), "one ahead, history not through the anchor");
    a.force(Some(good));
    let d = rig.open().unwrap();
    drop(d);
    assert_eq!(a.read().unwrap().map(|st| st.counter), Some(s + 1));
}

#[test]
fn every_sync_anchors_a_new_digest_even_without_changes() {
    let rig = Rig::new(Kind::Mem);
    let Anchor::Mem(a) = &rig.anchor else {
        unreachable!()
    };
    let (mut d, _, _) = at_s(&rig);
    let mut seen = vec![a.read().unwrap().unwrap()];
    for _ in 0..3 {
        d.sync().unwrap();
        let st = a.read().unwrap().unwrap();
        assert_eq!(st.counter, seen.last().unwrap().counter + 1);
        assert!(seen.iter().all(|o| o.digest != st.digest));
        seen.push(st);
    }
}

fn tofu_is_shown_until_the_first_anchored_sync(kind: Kind) {
    let rig = Rig::new(kind);
    let name = rig.kind_name();
    let (mut d, _, _) = at_s(&rig);
    // Created under the anchor: nothing was taken on trust.
    let st = d.status_line();
    assert!(st.contains(&format!("anchor={name}")), "{st}");
    assert!(!st.contains("tofu"), "{st}");
    d.close().unwrap();
    // The anchor loses its state (a blank device, a new anchor): the image
    // is trusted on first use, and the status says so.
    match &rig.anchor {
        Anchor::Mem(a) => a.force(None),
        Anchor::Dev { mem, .. } => {
            let adv = Adversary::new(mem.clone());
            for b in 0..2 {
                adv.write_block(b, &[0u8; BLOCK_SIZE]).unwrap();
            }
        }
    }
    let mut d = rig.open().unwrap();
    let st = d.status_line();
    assert!(st.contains(&format!(" anchor={name}(tofu)")), "{st}");
    assert!(!st.contains("unprotected"), "{st}");
    assert!(d.stats().anchor_tofu);
    for tok in st.split(' ').filter(|t| t.starts_with("anchor=")) {
        assert!(!tok.contains(char::is_whitespace));
    }
    // A sync the anchor stored ends it.
    write_sync(&mut d, 5);
    let st = d.status_line();
    assert!(
        st.contains(&format!("anchor={name}")) && !st.contains("tofu"),
        "{st}"
    );
    assert!(!d.stats().anchor_tofu);
    d.close().unwrap();
    let mut d = rig.open().unwrap();
    let st = d.status_line();
    assert!(!st.contains("tofu"), "{st}");
}

#[test]
fn tofu_is_shown_until_the_first_anchored_sync_mem_anchor() {
    tofu_is_shown_until_the_first_anchored_sync(Kind::Mem);
}

#[test]
fn tofu_is_shown_until_the_first_anchored_sync_block_anchor() {
    tofu_is_shown_until_the_first_anchored_sync(Kind::Dev);
}

#[test]
fn no_anchor_is_never_tofu_and_says_unprotected() {
    let main = Arc::new(MemDisk::new(SMALL_TOTAL).unwrap());
    let d = MlsDisk::create(
        main.clone(),
        crypto(),
        &KEY,
        small_cfg(),
        Box::new(NoAnchor),
    );
    d.unwrap().close().unwrap();
    let mut d = MlsDisk::open(main, crypto(), &KEY, small_cfg(), Box::new(NoAnchor)).unwrap();
    let st = d.status_line();
    assert!(st.contains("anchor=none (unprotected"), "{st}");
    assert!(!st.contains("tofu") && !d.stats().anchor_tofu, "{st}");
}
