// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! [`BdevBlockSet`]: the core engine's [`BlockSet`] over the target's
//! backing block device.
//!
//! Reads and writes are synchronous bios built over the caller's buffer
//! page by page (the engine's buffers are kvmalloc memory, so possibly
//! vmalloc), as many pages per bio as the block layer takes (up to
//! `BIO_MAX_VECS`), each waited for with `submit_bio_wait`; the ranges of
//! a `read_ranges` call (a read of scattered data blocks) go out as
//! chained bios, all in flight at once, and are waited for together. `flush` is a
//! real cache flush of the backing device (`blkdev_issue_flush`, a
//! `REQ_PREFLUSH`). Failures are logged (rate-limited, with the device,
//! sector and errno) and come back as [`ErrorKind::Io`]. See `kernel_platform/platform.c`.
//!
//! Every method sleeps: process context only.

use core::ptr::NonNull;

use kernel::prelude::*;
use mlsdisk_core::bio::{check_range, BlockSet, BLOCK_SIZE};
use mlsdisk_core::{Error as CoreError, ErrorKind, Result as CoreResult};

use crate::kernel_platform::bindings;
use crate::kernel_platform::work::NoIoScope;

/// 512-byte sectors per 4 KiB block.
pub(crate) const SECTORS_PER_BLOCK: u64 = (BLOCK_SIZE / 512) as u64;

/// Ranges one `mlsdisk_bdev_read_ranges` call takes (a 1.5 KiB array on
/// the stack): a 256 KiB read, however scattered, is one call.
const RANGES_AT_ONCE: usize = 64;

/// How [`OpenBdev::open`] claims its device.
#[derive(Clone, Copy)]
pub(crate) enum Claim {
    /// Exclusively, for a holder of its own: any other exclusive opener
    /// (a dm table, a mount, `mkfs`, another disk) gets `EBUSY` while the
    /// device is open. The blk-mq disks.
    Own,
    /// Exclusively, for device-mapper's holder (taken from a `dm_dev` of
    /// the table, [`crate::dm::binding::DmDev::holder`]): the table's own claim is
    /// joined and outlives it, so nothing but device-mapper gets the
    /// device while the engine has it. The dm target.
    Dm(*mut c_void),
    // The pass-through build has no anchor devices.
    #[cfg_attr(mlsdisk_passthrough, allow(dead_code))]
    /// No claim (a rollback anchor device of a dm table is claimed by
    /// device-mapper only while its table is built).
    None,
}

// SAFETY: the holder is an identity token (compared by address by the
// block layer, never dereferenced), valid as long as device-mapper is
// loaded; passing it to another thread is harmless.
unsafe impl Send for Claim {}
// SAFETY: as above: nothing is reached through the token.
unsafe impl Sync for Claim {}

/// Whether [`OpenBdev::open`] opens its device for writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Reading and writing (`BLK_OPEN_READ | BLK_OPEN_WRITE`).
    ReadWrite,
    /// Reading only (`BLK_OPEN_READ`), for a read-only dm table: the
    /// device is not opened for writing, and [`BdevBlockSet`] refuses
    /// every write and flush on it before a bio is built, so nothing the
    /// engine does (its open included) can write the device.
    ReadOnly,
}

/// The engine's own open reference to a block device (by device number,
/// for reading, and for writing as [`Access`] says, exclusive as [`Claim`]
/// says), closed on drop. Independent of any `dm_target`, so a disk can
/// outlive the table that opened it.
///
/// An exclusive open claims the device for a holder: a token of its own
/// (`_token`, a heap byte whose address is unique while the claim lasts),
/// so that another exclusive opener (a second disk, a dm table, a mount)
/// gets `EBUSY`; or device-mapper's, which claims again. The block layer
/// keeps the holder in the file; `drop` ends the claim (`bdev_fput`),
/// then frees the token.
///
/// # Invariants
///
/// `file` came from `bdev_file_open_by_dev` (for writing if `access` is
/// [`Access::ReadWrite`], claimed for a holder if `claimed`: `token`'s
/// address if there is a token) and is closed only by `drop`, before
/// the token is freed; `bdev` is
/// its block device.
pub(crate) struct OpenBdev {
    file: NonNull<kernel::bindings::file>,
    bdev: NonNull<kernel::bindings::block_device>,
    claimed: bool,
    /// The claim's own holder token ([`Claim::Own`]), kept (not read)
    /// until the claim has ended in `drop`.
    _token: Option<KBox<u8>>,
    access: Access,
}

// SAFETY: an open block device file may be used and closed from any thread.
unsafe impl Send for OpenBdev {}
// SAFETY: I/O on a block device needs no exclusive access; the handle's
// fields never change.
unsafe impl Sync for OpenBdev {}

impl OpenBdev {
    /// Opens device `dev` (`dev_t`) as `access` says, claimed as `claim`
    /// says. Sleeps.
    ///
    /// # Errors
    ///
    /// The errno of the open (`ENXIO`, `EACCES`, `EBUSY`, ...).
    pub(crate) fn open(dev: u32, claim: Claim, access: Access) -> Result<Self> {
        let token = match claim {
            Claim::Own => Some(KBox::new(0u8, GFP_KERNEL)?),
            Claim::Dm(_) | Claim::None => None,
        };
        let holder: *mut c_void = match (&token, claim) {
            (Some(token), _) => core::ptr::from_ref::<u8>(token).cast_mut().cast(),
            (None, Claim::Dm(holder)) => holder,
            (None, _) => core::ptr::null_mut(),
        };
        let mut mode = bindings::mlsdisk_blk_open_MLSDISK_BLK_OPEN_READ;
        if access == Access::ReadWrite {
            mode |= bindings::mlsdisk_blk_open_MLSDISK_BLK_OPEN_WRITE;
        }
        // SAFETY: `holder` is NULL, device-mapper's holder (which lives as
        // long as device-mapper, a static of dm.c), or the address of
        // `token`, which is freed only after the claim ends (`drop`);
        // no holder operations; process context.
        let file = unsafe {
            kernel::bindings::bdev_file_open_by_dev(dev, mode, holder, core::ptr::null())
        };
        let file = NonNull::new(kernel::error::from_err_ptr(file)?).ok_or(ENXIO)?;
        // SAFETY: a block device file just opened.
        let bdev = unsafe { kernel::bindings::file_bdev(file.as_ptr()) };
        let claimed = !holder.is_null();
        let Some(bdev) = NonNull::new(bdev) else {
            // SAFETY: opened above (claimed as `claimed`), closed once here.
            unsafe { close_file(file, claimed) };
            return Err(ENXIO);
        };
        // INVARIANT: the file and its block device, opened as `access`,
        // claimed for `holder` (`token`'s address, if any) if not NULL.
        Ok(Self {
            file,
            bdev,
            claimed,
            _token: token,
            access,
        })
    }

    /// The size in 512-byte sectors.
    pub(crate) fn nr_sectors(&self) -> u64 {
        // SAFETY: an open block device (type invariant).
        unsafe { bindings::mlsdisk_bdev_nr_sectors(self.bdev.as_ptr()) }
    }
}

/// Closes a block device file; `bdev_fput` ends its claim first (now, not
/// at the last reference's release) if `claimed`.
///
/// # Safety
///
/// `file` is an open block device file from `bdev_file_open_by_dev`,
/// claimed for a holder if and only if `claimed`, not used afterwards.
/// Process context.
unsafe fn close_file(file: NonNull<kernel::bindings::file>, claimed: bool) {
    // SAFETY: the caller's promise: an open block device file, claimed as
    // `claimed` says, closed once here.
    unsafe {
        if claimed {
            kernel::bindings::bdev_fput(file.as_ptr());
        } else {
            kernel::bindings::fput(file.as_ptr());
        }
    }
}

impl Drop for OpenBdev {
    fn drop(&mut self) {
        // SAFETY: an open block device file, claimed as `claimed` says
        // (type invariant), closed once here; process context (the engine
        // is dropped on a worker or in a constructor).
        unsafe { close_file(self.file, self.claimed) };
        // The claim has ended: the token may go (with the fields).
    }
}

/// The `dev_t` of a device named by `name`: `major:minor`, or a path.
pub(crate) fn device_number(name: &[u8]) -> Result<u32> {
    let num = |s: &[u8]| -> Option<u32> {
        if s.is_empty() || s.len() > 7 || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(s.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')))
    };
    if let Some(i) = name.iter().position(|&c| c == b':') {
        if let (Some(major), Some(minor)) =
            (name.get(..i).and_then(num), name.get(i + 1..).and_then(num))
        {
            if major < (1 << 12) && minor < (1 << 20) {
                return Ok((major << 20) | minor);
            }
        }
    }
    if name.is_empty() || name.contains(&0) {
        return Err(EINVAL);
    }
    let mut path = KVec::with_capacity(name.len() + 1, GFP_KERNEL)?;
    path.extend_from_slice(name, GFP_KERNEL)?;
    path.push(0, GFP_KERNEL)?;
    let mut dev: kernel::bindings::dev_t = 0;
    // SAFETY: `path` is NUL-terminated; `dev` is a valid out-pointer.
    // Process context.
    let ret = unsafe { kernel::bindings::lookup_bdev(path.as_ptr().cast(), &mut dev) };
    if ret < 0 {
        return Err(Error::from_errno(ret));
    }
    Ok(dev)
}

/// A block device as 4 KiB blocks (a partial last block is unused). On a
/// device opened [`Access::ReadOnly`], writes and flushes fail with
/// [`ErrorKind::InvalidState`] and reach no device.
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

    /// Refuses a write or flush on a device opened [`Access::ReadOnly`]
    /// (logged, rate-limited): a read-only table writes nothing, not even
    /// what the engine's open would (a rollback anchor started or brought
    /// up, a recovery).
    fn writable(&self, what: &str) -> CoreResult<()> {
        if self.dev.access == Access::ReadWrite {
            return Ok(());
        }
        if crate::kernel_platform::ratelimit() {
            pr_err!(
                "{} refused: the device is open read-only (a read-only table writes nothing)\n",
                what
            );
        }
        Err(CoreError::new(
            ErrorKind::InvalidState,
            "write refused: the device is open read-only",
        ))
    }

    fn rw(&self, write: bool, pos: u64, buf: *mut u8, len: usize) -> CoreResult<()> {
        if write {
            self.writable("write")?;
        }
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

    /// Up to [`RANGES_AT_ONCE`] ranges at a time go out as chained bios,
    /// all in flight before the call waits (a read of data that random
    /// writes scattered is many small device reads).
    fn read_ranges(&self, ranges: &mut [(u64, &mut [u8])]) -> CoreResult<()> {
        for (pos, buf) in ranges.iter() {
            check_range(self.nblocks, *pos, buf.len())?;
        }
        let mut batch: [bindings::mlsdisk_range; RANGES_AT_ONCE] =
            core::array::from_fn(|_| bindings::mlsdisk_range {
                sector: 0,
                buf: core::ptr::null_mut(),
                len: 0,
            });
        for group in ranges.chunks_mut(RANGES_AT_ONCE) {
            for (i, (pos, buf)) in group.iter_mut().enumerate() {
                let r = batch.get_mut(i).ok_or(CoreError::new(
                    ErrorKind::InvalidState,
                    "read ranges batch",
                ))?;
                // Cannot overflow: `pos < nblocks <= nr_sectors / 8`.
                r.sector = *pos * SECTORS_PER_BLOCK;
                r.buf = buf.as_mut_ptr().cast();
                r.len = buf.len();
            }
            let n = group.len();
            // SAFETY: the block device is open while `self.dev` lives;
            // the first `n` entries of `batch` name the buffers of
            // `group`, each valid for writes of its length and borrowed
            // mutably by this call, which waits for every bio; every
            // range is inside the device (`check_range`). Process
            // context (may sleep).
            let ret = unsafe {
                bindings::mlsdisk_bdev_read_ranges(self.dev.bdev.as_ptr(), batch.as_ptr(), n)
            };
            if ret != 0 {
                return Err(CoreError::new(ErrorKind::Io, "backing device read failed"));
            }
        }
        Ok(())
    }

    fn write(&self, pos: u64, buf: &[u8]) -> CoreResult<()> {
        // The helper only reads the buffer of a write.
        self.rw(true, pos, buf.as_ptr().cast_mut(), buf.len())
    }

    fn flush(&self) -> CoreResult<()> {
        self.writable("cache flush")?;
        // SAFETY: as in `rw`: an open device; process context.
        match unsafe { kernel::bindings::blkdev_issue_flush(self.dev.bdev.as_ptr()) } {
            0 => Ok(()),
            err => {
                if crate::kernel_platform::ratelimit() {
                    // SAFETY: an open device; its `bd_dev` never changes.
                    let dev = unsafe { (*self.dev.bdev.as_ptr()).bd_dev };
                    pr_err!(
                        "backing device {}:{}: cache flush failed: error {}\n",
                        dev >> 20,
                        dev & 0xfffff,
                        err
                    );
                }
                Err(CoreError::new(
                    ErrorKind::Io,
                    "backing device cache flush failed",
                ))
            }
        }
    }

    fn nblocks(&self) -> u64 {
        self.nblocks
    }
}

impl BdevBlockSet {
    /// How the device was opened.
    // The pass-through build has no open errors to name.
    #[cfg_attr(mlsdisk_passthrough, allow(dead_code))]
    pub(crate) fn access(&self) -> Access {
        self.dev.access
    }
}

/// Runs `f` on a kernel worker (the module's `mlsdisk_sync` workqueue,
/// `WQ_MEM_RECLAIM`, see `kernel_platform/parallel.rs`) and waits for its
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
            super::parallel::sync_wq(),
            Some(run::<F, R>),
            core::ptr::from_mut(&mut job).cast(),
        )
    };
    job.r
}
