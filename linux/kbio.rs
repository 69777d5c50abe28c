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

use core::ptr::NonNull;

use kernel::prelude::*;
use mlsdisk_core::bio::{check_range, BlockSet, BLOCK_SIZE};
use mlsdisk_core::{Error as CoreError, ErrorKind, Result as CoreResult};

use crate::dm::bindings;

/// 512-byte sectors per 4 KiB block.
const SECTORS_PER_BLOCK: u64 = (BLOCK_SIZE / 512) as u64;

/// The engine's own open reference to a block device (non-exclusive, read
/// and write, by device number), closed on drop. Independent of any
/// `dm_target`, so a disk can outlive the table that opened it.
///
/// # Invariants
///
/// `file` came from `mlsdisk_bdev_open` and is closed only by `drop`;
/// `bdev` is its block device.
pub(crate) struct OpenBdev {
    file: NonNull<kernel::bindings::file>,
    bdev: NonNull<kernel::bindings::block_device>,
}

// SAFETY: an open block device file may be used and closed from any thread.
unsafe impl Send for OpenBdev {}
// SAFETY: I/O on a block device needs no exclusive access; the handle's
// fields never change.
unsafe impl Sync for OpenBdev {}

impl OpenBdev {
    /// Opens device `dev` (`dev_t`) for reading and writing. Sleeps.
    ///
    /// `exclusive`: claim the device for this handle alone while it is
    /// open, so that any other exclusive opener (another disk of this
    /// module, a dm table, a mount, `mkfs`) is refused with `EBUSY`. The
    /// dm target opens without a claim: the table's own `dm_get_device`
    /// claim already protects its device.
    ///
    /// # Errors
    ///
    /// The errno of the open (`ENXIO`, `EACCES`, `EBUSY`, ...).
    pub(crate) fn open(dev: u32, exclusive: bool) -> Result<Self> {
        let mut err: c_int = 0;
        // SAFETY: `err` is a valid out-pointer; process context.
        let file = unsafe { bindings::mlsdisk_bdev_open(dev, exclusive, &mut err) };
        let Some(file) = NonNull::new(file) else {
            return Err(if err < 0 { Error::from_errno(err) } else { ENXIO });
        };
        // SAFETY: a file just opened by `mlsdisk_bdev_open`.
        let bdev = unsafe { bindings::mlsdisk_file_bdev(file.as_ptr()) };
        match NonNull::new(bdev) {
            // INVARIANT: the file and its block device.
            Some(bdev) => Ok(Self { file, bdev }),
            None => {
                // SAFETY: opened above, closed once here.
                unsafe { bindings::mlsdisk_bdev_close(file.as_ptr()) };
                Err(ENXIO)
            }
        }
    }

    /// The size in 512-byte sectors.
    pub(crate) fn nr_sectors(&self) -> u64 {
        // SAFETY: an open block device (type invariant).
        unsafe { bindings::mlsdisk_bdev_nr_sectors(self.bdev.as_ptr()) }
    }
}

impl Drop for OpenBdev {
    fn drop(&mut self) {
        // SAFETY: open (type invariant), closed once here.
        unsafe { bindings::mlsdisk_bdev_close(self.file.as_ptr()) };
    }
}

/// A block device as 4 KiB blocks (a partial last block is unused).
pub(crate) struct BdevBlockSet {
    dev: OpenBdev,
    nblocks: u64,
}

impl BdevBlockSet {
    /// The whole device.
    pub(crate) fn new(dev: OpenBdev) -> Self {
        let nblocks = dev.nr_sectors() / SECTORS_PER_BLOCK;
        Self { dev, nblocks }
    }

    fn rw(&self, write: bool, pos: u64, buf: *mut u8, len: usize) -> CoreResult<()> {
        check_range(self.nblocks, pos, len)?;
        // Cannot overflow: `pos < nblocks <= nr_sectors / 8`.
        let sector = pos * SECTORS_PER_BLOCK;
        // SAFETY: the block device is open while `self.dev` lives (its
        // invariant); `buf` is valid for `len` bytes (reads write it,
        // writes only read it) for the duration of the call, which waits
        // for its bios; the range is inside the device (`check_range`).
        // Process context (may sleep).
        let ret = unsafe {
            bindings::mlsdisk_bdev_rw(self.dev.bdev.as_ptr(), write, sector, buf.cast(), len)
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
        // SAFETY: as in `rw`: an open device; process context.
        match unsafe { bindings::mlsdisk_bdev_flush(self.dev.bdev.as_ptr()) } {
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

/// Runs `f` on a kernel worker (the module's `mlsdisk_sync` workqueue,
/// `WQ_MEM_RECLAIM`, see `par_helpers.c`) and waits for its
/// result: a fresh, shallow stack for the engine's deep calls (create,
/// open, sync), which would otherwise sit on top of an ioctl path in a
/// 16 KiB kernel stack. The worker runs in a `GFP_NOIO` scope. Sleeps.
///
/// `None` only if the work did not run, which the workqueue API rules out
/// (`flush_work` returns after it ran).
pub(crate) fn on_worker<F: FnOnce() -> R + Send, R: Send>(f: F) -> Option<R> {
    struct Job<F, R> {
        f: Option<F>,
        r: Option<R>,
    }

    /// # Safety
    ///
    /// `arg` points at a live `Job<F, R>` that nothing else touches until
    /// this call returns.
    unsafe extern "C" fn run<F: FnOnce() -> R, R>(arg: *mut c_void) {
        // SAFETY: `arg` is the `Job` on the caller's stack, which waits
        // for this call to finish (`mlsdisk_run_on_worker` flushes the
        // work) and touches the job only after that.
        let job = unsafe { &mut *arg.cast::<Job<F, R>>() };
        if let Some(f) = job.f.take() {
            let _noio = NoIoScope::enter();
            job.r = Some(f());
        }
    }

    let mut job = Job {
        f: Some(f),
        r: None,
    };
    // SAFETY: `run::<F, R>` matches the job's type; the job outlives the
    // call, which returns only after `run` finished; `F` and `R` are `Send`.
    unsafe {
        bindings::mlsdisk_run_on_worker(
            Some(run::<F, R>),
            core::ptr::from_mut(&mut job).cast(),
        )
    };
    job.r
}
