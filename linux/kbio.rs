// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! [`BdevBlockSet`]: the core engine's [`BlockSet`] over the target's
//! backing block device.
//!
//! Reads and writes are synchronous bios built over the caller's buffer
//! page by page (the engine's buffers are kvmalloc memory, so possibly
//! vmalloc), as many pages per bio as the block layer takes (up to
//! `BIO_MAX_VECS`), each waited for with `submit_bio_wait`. `flush` is a
//! real cache flush of the backing device (`blkdev_issue_flush`, a
//! `REQ_PREFLUSH`). Failures are logged (rate-limited, with the device,
//! sector and errno) and come back as [`ErrorKind::Io`]. See `kplatform.c`.
//!
//! Every method sleeps: process context only.

use kernel::prelude::*;
use kernel::sync::Arc;
use mlsdisk_core::bio::{check_range, BlockSet, BLOCK_SIZE};
use mlsdisk_core::{Error as CoreError, ErrorKind, Result as CoreResult};

use crate::dm::{bindings, DmDev};

/// 512-byte sectors per 4 KiB block.
const SECTORS_PER_BLOCK: u64 = (BLOCK_SIZE / 512) as u64;

/// The first `nblocks` 4 KiB blocks of a device held by a target.
pub(crate) struct BdevBlockSet {
    dev: Arc<DmDev>,
    nblocks: u64,
}

impl BdevBlockSet {
    /// The whole device, in whole blocks (a partial last block is unused).
    pub(crate) fn new(dev: Arc<DmDev>) -> Self {
        let nblocks = dev.nr_sectors() / SECTORS_PER_BLOCK;
        Self { dev, nblocks }
    }

    fn rw(&self, write: bool, pos: u64, buf: *mut u8, len: usize) -> CoreResult<()> {
        check_range(self.nblocks, pos, len)?;
        // Cannot overflow: `pos < nblocks <= nr_sectors / 8`.
        let sector = pos * SECTORS_PER_BLOCK;
        // SAFETY: `bdev()` is valid while the `DmDev` is held (its
        // invariant), and we hold it; `buf` is valid for `len` bytes (reads
        // write it, writes only read it) for the duration of the call, which
        // waits for its bios; the range is inside the device
        // (`check_range`). Process context (may sleep).
        let ret = unsafe {
            bindings::mlsdisk_bdev_rw(self.dev.bdev(), write, sector, buf.cast(), len)
        };
        if ret == 0 {
            Ok(())
        } else if write {
            Err(CoreError::new(ErrorKind::Io, "backing device write failed"))
        } else {
            Err(CoreError::new(ErrorKind::Io, "backing device read failed"))
        }
    }
}

impl BlockSet for BdevBlockSet {
    fn read(&self, pos: u64, buf: &mut [u8]) -> CoreResult<()> {
        self.rw(false, pos, buf.as_mut_ptr(), buf.len())
    }

    fn write(&self, pos: u64, buf: &[u8]) -> CoreResult<()> {
        // The helper only reads the buffer of a write.
        self.rw(true, pos, buf.as_ptr().cast_mut(), buf.len())
    }

    fn flush(&self) -> CoreResult<()> {
        // SAFETY: as in `rw`: a held device; process context.
        match unsafe { bindings::mlsdisk_bdev_flush(self.dev.bdev()) } {
            0 => Ok(()),
            _ => Err(CoreError::new(
                ErrorKind::Io,
                "backing device cache flush failed",
            )),
        }
    }

    fn nblocks(&self) -> u64 {
        self.nblocks
    }
}

/// A scope in which the kernel's allocations do no I/O (`GFP_NOIO`
/// implied), so that memory reclaim never writes back through the device
/// whose I/O is being served. Restored on drop.
pub(crate) struct NoIoScope(c_uint, core::marker::PhantomData<*mut ()>);

impl NoIoScope {
    /// Enters the scope for the current task.
    pub(crate) fn enter() -> Self {
        // SAFETY: marks the current task; paired with the restore in `drop`
        // on the same task (the scope is not `Send`, so it is dropped on this task).
        Self(unsafe { bindings::mlsdisk_noio_save() }, core::marker::PhantomData)
    }
}

impl Drop for NoIoScope {
    fn drop(&mut self) {
        // SAFETY: restores the flags saved by `enter` on this task.
        unsafe { bindings::mlsdisk_noio_restore(self.0) };
    }
}
