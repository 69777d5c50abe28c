//! Flushed write buffers written to the device in the background
//! (`MlsDisk::set_async_writes`): what must wait for them, and what a
//! failed one does.
//!
//! The runner here (`Lazy`) writes a flushed buffer only when the disk
//! waits for it, so a path that reads, moves or commits its blocks without
//! waiting finds the device's old content.

mod disk_common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use disk_common::*;
use mlsdisk_core::bio::BLOCK_SIZE;
use mlsdisk_core::platform::{OwnedJob, Pending, Spawn};
use mlsdisk_core::{Error, ErrorKind};

fn lazy_disk(backend: Backend) -> (Harness, Arc<Lazy>) {
    let mut h = Harness::new(backend, small_cfg());
    let lazy = Arc::new(Lazy::default());
    h.disk().set_async_writes(lazy.clone()).unwrap();
    (h, lazy)
}

fn read_tag(h: &mut Harness, lba: u64, tag: u64) {
    let mut buf = vec![0u8; BLOCK_SIZE];
    h.disk().read(lba, &mut buf).unwrap();
    assert!(check(&buf, lba, tag), "lba {lba}: want tag {tag}");
}

/// A read of blocks whose flush is still in flight waits for it, and only
/// such a read does.
#[test]
fn a_read_of_blocks_in_flight_waits_for_their_write() {
    let (mut h, lazy) = lazy_disk(Backend::Lsm);
    // A buffer's worth (8 blocks), then one more: the first eight go.
    h.disk().write(0, &blocks(0, 8, 1)).unwrap();
    h.disk().write(40, &blocks(40, 1, 2)).unwrap();
    assert_eq!(lazy.started.load(Ordering::Relaxed), 1);
    let before = h.disk().stats();
    assert_eq!(before.async_writes, 1);
    // LBA 40 is in the buffer: no wait.
    read_tag(&mut h, 40, 2);
    assert_eq!(h.disk().stats().reads_waited_for_writes, 0);
    let written = h.disk().stats().device_blocks_written;
    read_tag(&mut h, 3, 1);
    let after = h.disk().stats();
    assert_eq!(after.reads_waited_for_writes, 1);
    assert!(
        after.device_blocks_written >= written + 8,
        "the read made the write land: {} -> {}",
        written,
        after.device_blocks_written
    );
    // Nothing in flight now: a second read does not wait.
    read_tag(&mut h, 5, 1);
    assert_eq!(h.disk().stats().reads_waited_for_writes, 1);
    h.disk().sync().unwrap();
    h.close_and_reopen().unwrap();
    for l in 0..8 {
        read_tag(&mut h, l, 1);
    }
    read_tag(&mut h, 40, 2);
}

/// The cleaner waits for a flush in flight before it moves a victim that
/// may hold its blocks: here a just-flushed segment whose blocks were
/// mostly discarded is the emptiest one, and its two live blocks must move
/// with their new content. Tried at every head offset (the flush must fill
/// and close a segment for it to be a victim).
#[test]
fn the_cleaner_never_moves_blocks_still_in_flight() {
    let mut cleaned_in_flight = 0;
    for shift in 0..8u64 {
        let (mut h, _lazy) = lazy_disk(Backend::MemIndex);
        let cap = h.disk().nblocks();
        let mut tags = vec![0u64; cap as usize];
        // Fill the disk, moving the head by `shift` blocks first.
        let mut tag = 10;
        for l in 0..shift {
            h.disk().write(l, &blocks(l, 1, tag)).unwrap();
            tags[l as usize] = tag;
        }
        h.disk().sync().unwrap();
        tag += 1;
        for l in 0..cap {
            h.disk().write(l, &blocks(l, 1, tag)).unwrap();
            tags[l as usize] = tag;
        }
        h.disk().sync().unwrap();
        // Eight new blocks, flushed by the next write, then six of them
        // discarded.
        tag += 1;
        h.disk().write(16, &blocks(16, 8, tag)).unwrap();
        for l in 16..24 {
            tags[l as usize] = tag;
        }
        h.disk().write(60, &blocks(60, 1, tag)).unwrap();
        tags[60] = tag;
        h.disk().discard(16, 6).unwrap();
        for l in 16..22 {
            tags[l as usize] = 0;
        }
        // Writes that need cleaning.
        let moved = h.disk().stats().cleaner_blocks_moved;
        for k in 0..24u64 {
            tag += 1;
            let l = 30 + k % 12;
            h.disk().write(l, &blocks(l, 1, tag)).unwrap();
            tags[l as usize] = tag;
        }
        if h.disk().stats().cleaner_blocks_moved > moved {
            cleaned_in_flight += 1;
        }
        for l in 0..cap {
            read_tag(&mut h, l, tags[l as usize]);
        }
        h.close_and_reopen().unwrap();
        for l in 0..cap {
            read_tag(&mut h, l, tags[l as usize]);
        }
    }
    assert!(cleaned_in_flight > 0, "the cleaner never ran");
}

/// A runner whose jobs never run and fail with this kind when waited for:
/// a device write that failed in the background.
struct Failing(ErrorKind);

struct Failed(ErrorKind);

impl Spawn for Failing {
    fn spawn(&self, _job: OwnedJob) -> mlsdisk_core::Result<Box<dyn Pending>> {
        Ok(Box::new(Failed(self.0)))
    }
}

impl Pending for Failed {
    fn wait(self: Box<Self>) -> mlsdisk_core::Result<()> {
        Err(Error::new(self.0, "background write failed"))
    }
}

/// A background write that failed fails the sync that waits for it and
/// stops the disk; nothing of it is committed, and a reopen finds the last
/// sync's state.
#[test]
fn a_failed_background_write_fails_the_next_sync_and_stops_the_disk() {
    for backend in [Backend::Lsm, Backend::MemIndex] {
        let mut h = Harness::new(backend, small_cfg());
        h.disk().write(0, &blocks(0, 8, 1)).unwrap();
        h.disk().sync().unwrap();
        h.disk()
            .set_async_writes(Arc::new(Failing(ErrorKind::Io)))
            .unwrap();
        h.disk().write(0, &blocks(0, 8, 2)).unwrap();
        // Flushes the eight blocks into a write that fails.
        h.disk().write(40, &blocks(40, 1, 2)).unwrap();
        let e = h.disk().sync().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io, "{backend:?}: {e:?}");
        assert!(h.disk().failure().is_some());
        let mut buf = vec![0u8; BLOCK_SIZE];
        assert!(h.disk().read(0, &mut buf).is_err());
        assert!(h.disk().write(1, &buf).is_err());
        h.crash_and_reopen().unwrap();
        for l in 0..8 {
            read_tag(&mut h, l, 1);
        }
        read_tag(&mut h, 40, 0);
    }
}

/// A background write that failed for want of memory stops the disk at the
/// read that waits for it, though a read's own allocation failure leaves
/// the disk usable: the blocks it carried are acknowledged, and no later
/// sync may commit an index that points at them.
#[test]
fn a_background_write_that_failed_stops_the_disk_even_when_a_read_finds_it() {
    for kind in [ErrorKind::OutOfMemory, ErrorKind::Integrity, ErrorKind::Io] {
        let mut h = Harness::new(Backend::Lsm, small_cfg());
        h.disk().write(0, &blocks(0, 8, 1)).unwrap();
        h.disk().sync().unwrap();
        h.disk().set_async_writes(Arc::new(Failing(kind))).unwrap();
        h.disk().write(0, &blocks(0, 8, 2)).unwrap();
        h.disk().write(40, &blocks(40, 1, 2)).unwrap();
        let mut buf = vec![0u8; BLOCK_SIZE];
        let e = h.disk().read(3, &mut buf).unwrap_err();
        assert_eq!(e.kind(), kind);
        assert!(
            buf.iter().all(|&b| b == 0),
            "{kind:?}: a failed read hands out nothing"
        );
        assert!(h.disk().failure().is_some(), "{kind:?}: the disk goes on");
        assert!(h.disk().sync().is_err(), "{kind:?}: a sync committed");
        h.crash_and_reopen().unwrap();
        for l in 0..8 {
            read_tag(&mut h, l, 1);
        }
    }
}
