// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! What device-mapper lends the target around I/O: [`Bio`] (in `map`),
//! [`DeferredBio`] (taken over by `map`, ended by the target), the status
//! buffer, the queue limits and the `iterate_devices` callout.

use super::*;

/// The operation of a [`Bio`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BioOp {
    /// `REQ_OP_READ`.
    Read,
    /// `REQ_OP_WRITE` (empty with [`Bio::is_preflush`] for a flush).
    Write,
    /// `REQ_OP_FLUSH` (request-based only; bio-based flushes are writes).
    Flush,
    /// `REQ_OP_DISCARD`.
    Discard,
    /// Any other `REQ_OP_*` value.
    Other(u32),
}

/// A bio handed to [`Target::map`].
///
/// # Invariants
///
/// Wraps a valid `struct bio` that device-mapper lent to the target for the
/// duration of the `map` call.
#[repr(transparent)]
pub(crate) struct Bio(Opaque<kernel::bindings::bio>);

impl Bio {
    /// # Safety
    ///
    /// `ptr` must be a valid bio that stays valid and unshared for `'a`.
    pub(super) unsafe fn from_raw<'a>(ptr: *mut kernel::bindings::bio) -> &'a mut Self {
        // SAFETY: `Bio` is transparent over `Opaque<bio>`, which has the
        // layout of `bio`; validity and exclusivity are the caller's promise.
        unsafe { &mut *ptr.cast::<Self>() }
    }

    fn as_ptr(&self) -> *mut kernel::bindings::bio {
        self.0.get()
    }

    /// The first sector (`bi_iter.bi_sector`).
    pub(crate) fn sector(&self) -> u64 {
        // SAFETY: the bio is valid (type invariant).
        unsafe { (*self.as_ptr()).bi_iter.bi_sector }
    }

    /// The size in 512-byte sectors (0 for an empty flush).
    pub(crate) fn sectors(&self) -> u32 {
        // SAFETY: the bio is valid (type invariant).
        unsafe { bindings::mlsdisk_bio_sectors(self.as_ptr()) }
    }

    /// The operation.
    pub(crate) fn op(&self) -> BioOp {
        // SAFETY: the bio is valid (type invariant).
        let op = unsafe { bindings::mlsdisk_bio_op(self.as_ptr()) };
        match op {
            bindings::mlsdisk_req_op_MLSDISK_REQ_OP_READ => BioOp::Read,
            bindings::mlsdisk_req_op_MLSDISK_REQ_OP_WRITE => BioOp::Write,
            bindings::mlsdisk_req_op_MLSDISK_REQ_OP_FLUSH => BioOp::Flush,
            bindings::mlsdisk_req_op_MLSDISK_REQ_OP_DISCARD => BioOp::Discard,
            other => BioOp::Other(other),
        }
    }

    /// Whether the cache must be flushed before this bio (`REQ_PREFLUSH`);
    /// an empty write with this flag is a pure flush.
    pub(crate) fn is_preflush(&self) -> bool {
        // SAFETY: the bio is valid (type invariant).
        let opf = unsafe { (*self.as_ptr()).bi_opf };
        opf & bindings::mlsdisk_req_flag_MLSDISK_REQ_PREFLUSH != 0
    }

    /// Whether the bio must be durable when it completes (`REQ_FUA`).
    pub(crate) fn is_fua(&self) -> bool {
        // SAFETY: the bio is valid (type invariant).
        let opf = unsafe { (*self.as_ptr()).bi_opf };
        opf & bindings::mlsdisk_req_flag_MLSDISK_REQ_FUA != 0
    }
}

/// The `result` buffer of a status call, written like `DMEMIT`: output is
/// truncated to the buffer and always NUL-terminated.
pub(crate) struct StatusWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> StatusWriter<'a> {
    /// A writer over `buf`.
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        if let Some(b) = buf.first_mut() {
            *b = 0;
        }
        Self { buf, pos: 0 }
    }
}

impl fmt::Write for StatusWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // One byte stays free for the NUL.
        let room = self.buf.len().saturating_sub(1).saturating_sub(self.pos);
        let n = s.len().min(room);
        let src = s.as_bytes().get(..n).ok_or(fmt::Error)?;
        let dst = self.buf.get_mut(self.pos..self.pos + n).ok_or(fmt::Error)?;
        dst.copy_from_slice(src);
        self.pos += n;
        if let Some(b) = self.buf.get_mut(self.pos) {
            *b = 0;
        }
        if n < s.len() {
            Err(fmt::Error)
        } else {
            Ok(())
        }
    }
}

/// A bio that `map` deferred to the worker: owned by the target until
/// [`DeferredBio::end`] (or drop, which ends it with an I/O error).
///
/// # Invariants
///
/// `bio` is a valid bio that device-mapper handed to `map`, which returned
/// `DM_MAPIO_SUBMITTED` for it, and that has not been ended.
pub(crate) struct DeferredBio {
    pub(super) bio: NonNull<kernel::bindings::bio>,
}

// SAFETY: a submitted bio may be completed from any thread; the handle is
// its only owner.
unsafe impl Send for DeferredBio {}

impl DeferredBio {
    fn as_bio(&self) -> &Bio {
        // SAFETY: valid and owned by us (type invariant); `Bio` only reads
        // through a shared reference.
        unsafe { Bio::from_raw(self.bio.as_ptr()) }
    }

    /// The first sector in the mapped device (`bi_iter.bi_sector`).
    pub(crate) fn sector(&self) -> u64 {
        self.as_bio().sector()
    }

    /// The size in 512-byte sectors.
    pub(crate) fn sectors(&self) -> u32 {
        self.as_bio().sectors()
    }

    /// The operation.
    pub(crate) fn op(&self) -> BioOp {
        self.as_bio().op()
    }

    /// `REQ_PREFLUSH`: flush before the data.
    pub(crate) fn is_preflush(&self) -> bool {
        self.as_bio().is_preflush()
    }

    /// `REQ_FUA`: durable on completion.
    pub(crate) fn is_fua(&self) -> bool {
        self.as_bio().is_fua()
    }

    /// Copies the bio's data into `buf` (for a write); returns the bytes
    /// copied (less than `buf.len()` only if the bio is shorter).
    pub(crate) fn copy_out(&self, buf: &mut [u8]) -> usize {
        // SAFETY: the bio is valid (type invariant); `buf` is valid for
        // `buf.len()` bytes of writes; the helper copies at most that.
        unsafe { bindings::mlsdisk_bio_copy(self.bio.as_ptr(), buf.as_mut_ptr(), buf.len(), false) }
    }

    /// Copies `buf` into the bio's pages (for a read); returns the bytes
    /// copied.
    pub(crate) fn copy_in(&mut self, buf: &[u8]) -> usize {
        // SAFETY: as in `copy_out`; the helper only reads `buf` here.
        unsafe {
            bindings::mlsdisk_bio_copy(self.bio.as_ptr(), buf.as_ptr().cast_mut(), buf.len(), true)
        }
    }

    /// Ends the bio: success, or the given error status.
    pub(crate) fn end(self, result: core::result::Result<(), BlkError>) {
        let status = match result {
            Ok(()) => 0,
            Err(e) => e.status(),
        };
        let bio = self.bio;
        core::mem::forget(self);
        // SAFETY: the bio is valid and not yet ended (type invariant); the
        // handle is gone, so it is ended exactly once.
        unsafe { end_bio(bio, status) };
    }
}

impl Drop for DeferredBio {
    fn drop(&mut self) {
        // SAFETY: not ended yet (`end` forgets the handle); ended once here.
        unsafe { end_bio(self.bio, BlkError::IoErr.status()) };
    }
}

/// Ends `bio` with `status`.
///
/// # Safety
///
/// `bio` is a valid bio the caller owns and has not ended; it is not used
/// afterwards.
unsafe fn end_bio(bio: NonNull<kernel::bindings::bio>, status: kernel::bindings::blk_status_t) {
    // SAFETY: the caller's promise: the bio is ours to complete.
    unsafe {
        (*bio.as_ptr()).bi_status = status;
        kernel::bindings::bio_endio(bio.as_ptr());
    }
}

/// The queue limits of the mapped device, during `io_hints`.
pub(crate) struct Limits<'a>(pub(super) &'a mut kernel::bindings::queue_limits);

impl Limits<'_> {
    /// 4 KiB logical and physical blocks, discards in 4 KiB granules of at
    /// most `max_discard_sectors` sectors.
    pub(crate) fn set_4k_blocks(&mut self, max_discard_sectors: u32) {
        let l = &mut *self.0;
        l.logical_block_size = l.logical_block_size.max(4096);
        l.physical_block_size = l.physical_block_size.max(4096);
        l.io_min = l.io_min.max(4096);
        l.discard_granularity = 4096;
        l.max_hw_discard_sectors = max_discard_sectors;
    }
}

/// The callout of an `iterate_devices` call.
pub(crate) struct Devices<'a> {
    pub(super) ti: *mut dm_target,
    pub(super) callout: bindings::iterate_devices_callout_fn,
    pub(super) data: *mut c_void,
    pub(super) _p: PhantomData<&'a mut ()>,
}

impl Devices<'_> {
    /// Reports `dev`, used from sector `start` for `len` sectors.
    pub(crate) fn call(&mut self, dev: &DmDev, start: u64, len: u64) -> i32 {
        let Some(callout) = self.callout else {
            return 0;
        };
        // SAFETY: device-mapper passed `callout`, `ti` and `data` together
        // for this call; `dev` is a device held by this target.
        unsafe { callout(self.ti, dev.dev.as_ptr(), start, len, self.data) }
    }
}
