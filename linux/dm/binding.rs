// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! Device-mapper targets in Rust.
//!
//! Mainline Rust has no device-mapper abstraction; this file is ours, and it
//! is the only place where the module touches device-mapper's C structures.
//! The target itself (`dm/target.rs`) implements [`Target`] in safe Rust.
//!
//! Which Rust type stands for which C object:
//!
//! | Rust            | C                                   | owned by                  |
//! |-----------------|-------------------------------------|---------------------------|
//! | [`Registration`]| `struct target_type`                | the module (registered)   |
//! | [`Ctr`]         | `struct dm_target` during the ctr   | device-mapper             |
//! | [`Args`]        | the ctr's `argc`/`argv`             | device-mapper             |
//! | [`DmDev`]       | `struct dm_dev` from `dm_get_device`| the target instance       |
//! | [`Bio`]         | `struct bio` passed to `map`        | device-mapper (borrowed)  |
//! | [`StatusWriter`]| the `status`/`message` result buffer| device-mapper (borrowed)  |
//! | [`DeferredBio`] | a `struct bio` taken over by `map`  | the target until it ends it |
//! | [`Limits`]      | `struct queue_limits` in `io_hints` | device-mapper (borrowed)  |
//!
//! Life cycle of a target instance: device-mapper calls `ctr` with a
//! `dm_target`; [`Target::new`] validates the arguments, opens devices
//! ([`Ctr::get_device`]) and returns a boxed instance, which is stored in
//! `ti->private`. `map`, `status` and `iterate_devices` borrow it; `dtr`
//! drops it, which closes its devices ([`DmDev`]'s `Drop`). On a failed
//! `ctr` the instance never exists: everything [`Target::new`] acquired is
//! dropped before it returns, and the trampoline sets `ti->error`.
//!
//! Deferred I/O: a target with [`Target::WORKER`] gets two bio queues
//! (`kernel_platform/platform.c`); `map` picks one, device-mapper is told
//! `DM_MAPIO_SUBMITTED`, and the target later ends the bio exactly once
//! through a [`DeferredBio`] (dropping it unended ends it with an I/O
//! error), in process context.
//!
//! - [`MapResult::Deferred`]: the ordered queue. One work item on the
//!   target's own `WQ_MEM_RECLAIM` workqueue (max_active 1) calls
//!   [`Target::process`] for each bio, one at a time, in submission order.
//!   When no bio is queued and the target is not suspended, it runs
//!   [`Target::idle`] steps (background work).
//! - [`MapResult::Parallel`]: the parallel queue. Each bio is its own work
//!   item, kept in the bio's per-bio data (`ti->per_io_data_size`, as
//!   dm-crypt does, so `map` allocates nothing), on a second
//!   `WQ_MEM_RECLAIM | WQ_UNBOUND` workqueue (`<name>_rd`, max_active
//!   `max(16, 4 x CPUs)`): [`Target::process_parallel`] runs for many bios
//!   at once, on any CPU, in any order. It may ask for the ordered worker
//!   to be woken (background work it had put off).
//!
//! A new instance starts paused (no background work); `resume` starts it;
//! `postsuspend` pauses it and waits until both queues are idle (every
//! parallel work item finished, not only its bio ended) before calling
//! [`Target::postsuspend`]. In `dtr` both queues are drained and freed
//! before the target is dropped.
//!
//! The argument words listed in [`Target::SECRET_ARGS`] are overwritten
//! after the constructor returns, whether it succeeded or not, so a key does
//! not linger in device-mapper's freed argument buffer (dm-crypt does the
//! same).

use core::{fmt, marker::PhantomData, ptr::NonNull};

use kernel::{error::Error, prelude::*, types::Opaque, ThisModule};

use crate::kernel_platform::bindings;
use bindings::{dm_dev, dm_target, target_type};

pub(crate) use crate::engine::BlkError;

/// A device-mapper target type.
///
/// The trampolines in this file call these methods; implementations are
/// safe Rust. All methods but [`Target::new`] may run concurrently on any
/// CPU, hence `Send + Sync`.
pub(crate) trait Target: Sized + Send + Sync {
    /// The target name used in table lines.
    const NAME: &'static CStr;
    /// The target version reported by `dmsetup targets`.
    const VERSION: [u32; 3];
    /// Indices of argument words that hold secrets; they are overwritten
    /// after the constructor returns (success or failure).
    const SECRET_ARGS: &'static [usize] = &[];

    /// Builds an instance from a table line. Runs in process context and may
    /// sleep and allocate.
    ///
    /// # Errors
    ///
    /// The [`CtrError`] whose message device-mapper reports.
    fn new(ti: &mut Ctr<'_>, args: &Args<'_>) -> Result<KBox<Self>, CtrError>;

    /// Maps one bio. May run in atomic context: no sleeping, no allocation
    /// that may sleep.
    fn map(&self, bio: &mut Bio) -> MapResult;

    /// Writes the `dmsetup status` / `dmsetup table` text.
    ///
    /// # Errors
    ///
    /// `fmt::Error` when the output was truncated; device-mapper then sees a
    /// full buffer and retries with a larger one.
    fn status(&self, kind: StatusType, out: &mut StatusWriter<'_>) -> fmt::Result;

    /// Calls `devices` for each underlying device, so that device-mapper can
    /// combine their queue limits.
    fn iterate_devices(&self, devices: &mut Devices<'_>) -> i32;

    /// Whether the target defers bios to a worker ([`MapResult::Deferred`]);
    /// the instance then gets a bio queue.
    const WORKER: bool = false;

    /// Serves one deferred bio, in process context (may sleep and
    /// allocate); must end it. Called in submission order, one at a time.
    fn process(&self, bio: DeferredBio) {
        bio.end(Err(BlkError::IoErr));
    }

    /// Serves one bio that `map` sent to the parallel queue
    /// ([`MapResult::Parallel`]), in process context; must end it. Runs
    /// concurrently with other calls of this method and with
    /// [`Target::process`] and [`Target::idle`], in any order. Returns
    /// whether the ordered worker should be woken (for background work).
    fn process_parallel(&self, bio: DeferredBio) -> bool {
        bio.end(Err(BlkError::IoErr));
        false
    }

    /// After device-mapper has stopped and drained I/O for a suspend (and
    /// before a table swap or removal); background work is stopped too.
    /// Process context.
    fn postsuspend(&self) {}

    /// One bounded step of background work, run by the worker when no bio
    /// is queued and the target is not suspended; returns whether more is
    /// to do.
    fn idle(&self) -> bool {
        false
    }

    /// A `dmsetup message`. Returns whether it wrote output to `out`.
    ///
    /// # Errors
    ///
    /// The errno for device-mapper (`EINVAL` for an unknown message).
    fn message(&self, _args: &Args<'_>, _out: &mut StatusWriter<'_>) -> Result<bool> {
        Err(EINVAL)
    }

    /// Adjusts the queue limits of the mapped device.
    fn io_hints(&self, _limits: &mut Limits<'_>) {}
}

/// The `blk_status_t` of a [`BlkError`].
impl BlkError {
    fn status(self) -> kernel::bindings::blk_status_t {
        // SAFETY: the helpers only return constants.
        unsafe {
            match self {
                Self::IoErr => bindings::mlsdisk_blk_sts_ioerr(),
                Self::NoSpc => bindings::mlsdisk_blk_sts_nospc(),
                Self::Resource => bindings::mlsdisk_blk_sts_resource(),
                Self::NotSupp => bindings::mlsdisk_blk_sts_notsupp(),
            }
        }
    }
}

pub(crate) use crate::kernel_platform::CtrError;

/// What [`Target::map`] did with a bio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MapResult {
    /// The bio goes to the target's ordered worker ([`Target::process`]);
    /// only for targets with [`Target::WORKER`] (others see it killed).
    Deferred,
    /// The bio goes to the target's parallel workers
    /// ([`Target::process_parallel`]); only for targets with
    /// [`Target::WORKER`] (others see it killed).
    Parallel,
    /// The bio is refused: device-mapper ends it with an I/O error
    /// (`DM_MAPIO_KILL`).
    Kill,
}

/// Which text `status` must write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusType {
    /// `dmsetup status`: runtime state.
    Info,
    /// `dmsetup table`: the table line (secrets masked).
    Table,
    /// IMA measurement text.
    Ima,
}

/// The `dm_target` during construction.
///
/// # Invariants
///
/// `ti` points at a valid `dm_target` that device-mapper passed to the
/// constructor and that nothing else accesses until the constructor returns.
pub(crate) struct Ctr<'a> {
    ti: NonNull<dm_target>,
    _ti: PhantomData<&'a mut dm_target>,
}

impl Ctr<'_> {
    fn raw(&self) -> &dm_target {
        // SAFETY: by the type invariant `ti` is valid, and exclusively ours
        // for the lifetime of `self`.
        unsafe { self.ti.as_ref() }
    }

    fn raw_mut(&mut self) -> &mut dm_target {
        // SAFETY: as in `raw`; `&mut self` makes the access exclusive.
        unsafe { self.ti.as_mut() }
    }

    /// The first sector of the target in the mapped device (`ti->begin`).
    pub(crate) fn begin(&self) -> u64 {
        self.raw().begin
    }

    /// The length of the target in sectors (`ti->len`).
    pub(crate) fn len(&self) -> u64 {
        self.raw().len
    }

    /// Whether the table is loaded for writing (`dm_table_get_mode` has
    /// `BLK_OPEN_WRITE`); `dmsetup create --readonly` loads it without.
    pub(crate) fn writable(&self) -> bool {
        // SAFETY: `ti` is valid (type invariant) and its `table` was set by
        // device-mapper before calling the constructor.
        unsafe { bindings::mlsdisk_ti_writable(self.ti.as_ptr()) }
    }

    /// Identifies the table this target is being built for (the address of
    /// its `struct dm_table`): two targets of one table line share it.
    /// Only compared, never dereferenced.
    pub(crate) fn table_id(&self) -> usize {
        self.raw().table as usize
    }

    /// Identifies the mapped device whose table this is (the address of
    /// its `struct mapped_device`): every table loaded into one mapped
    /// device, a reload included, shares it. Only compared, never
    /// dereferenced.
    pub(crate) fn md_id(&self) -> usize {
        // SAFETY: `ti` is valid (type invariant) and device-mapper set its
        // `table` before calling the constructor; `dm_table_get_md` only
        // reads `table->md`.
        unsafe { bindings::dm_table_get_md(self.raw().table) as usize }
    }

    /// Sets how many flush bios (`REQ_PREFLUSH`, empty) each flush sends to
    /// this target; 0 means flushes never reach it.
    pub(crate) fn set_num_flush_bios(&mut self, n: u32) {
        self.raw_mut().num_flush_bios = n;
    }

    /// Sets how many discard bios each discard sends to this target.
    pub(crate) fn set_num_discard_bios(&mut self, n: u32) {
        self.raw_mut().num_discard_bios = n;
    }

    /// Prepares a worker target: flushes and discards reach it whatever the
    /// backing device supports, and bios are split at `max_io_len` sectors.
    ///
    /// # Errors
    ///
    /// `EINVAL` for a bad length.
    pub(crate) fn setup_worker(&mut self, max_io_len: u64) -> Result {
        // SAFETY: `ti` is valid and exclusively ours (type invariant).
        let ret = unsafe { bindings::mlsdisk_ti_setup_worker(self.ti.as_ptr(), max_io_len) };
        if ret == 0 {
            Ok(())
        } else {
            Err(Error::from_errno(ret))
        }
    }

    /// Opens a device for this target with the table's mode
    /// (`dm_get_device`). The device is closed when the returned handle is
    /// dropped.
    ///
    /// # Errors
    ///
    /// The errno from `dm_get_device` (e.g. `ENODEV`, `ENXIO`, `EBUSY`).
    pub(crate) fn get_device(&mut self, path: &CStr) -> Result<DmDev> {
        let ti = self.ti.as_ptr();
        let mut dev: *mut dm_dev = core::ptr::null_mut();
        // SAFETY: `ti` is valid (type invariant) and its `table` was set by
        // device-mapper before calling the constructor.
        let mode = unsafe { bindings::dm_table_get_mode((*ti).table) };
        // SAFETY: `ti` is valid, `path` is a NUL-terminated string that lives
        // across the call, and `dev` is a valid out-pointer.
        let ret = unsafe { bindings::dm_get_device(ti, path.as_char_ptr(), mode, &mut dev) };
        if ret != 0 {
            return Err(Error::from_errno(ret));
        }
        let dev = NonNull::new(dev).ok_or(ENODEV)?;
        // INVARIANT: `dev` came from `dm_get_device(ti, ..)` just now.
        Ok(DmDev { ti: self.ti, dev })
    }
}

/// A device opened with `dm_get_device`, closed on drop.
///
/// # Invariants
///
/// `dev` was returned by `dm_get_device(ti, ..)` and has not been put;
/// `ti` stays valid until the handle is dropped (handles live inside the
/// target instance, which is dropped by the constructor on failure or by
/// `dtr`, both while `ti` is valid).
pub(crate) struct DmDev {
    ti: NonNull<dm_target>,
    dev: NonNull<dm_dev>,
}

// SAFETY: `dm_dev` is reference counted by device-mapper and its fields are
// not changed while it is held; the handle only reads them, and the put in
// `Drop` happens once, from the thread that owns the handle.
unsafe impl Send for DmDev {}
// SAFETY: shared access only reads immutable fields (`bdev`, `name`).
unsafe impl Sync for DmDev {}

impl DmDev {
    fn raw(&self) -> &dm_dev {
        // SAFETY: by the type invariant `dev` is a valid, held `dm_dev`.
        unsafe { self.dev.as_ref() }
    }

    /// The size of the device in 512-byte sectors.
    pub(crate) fn nr_sectors(&self) -> u64 {
        // SAFETY: `bdev` of a held `dm_dev` is a valid, open block device.
        unsafe { bindings::mlsdisk_bdev_nr_sectors(self.raw().bdev) }
    }

    /// The device number (`dev_t`) of the block device.
    pub(crate) fn dev_t(&self) -> u32 {
        // SAFETY: `bdev` of a held `dm_dev` is a valid, open block device.
        unsafe { bindings::mlsdisk_bdev_dev(self.raw().bdev) }
    }

    /// Device-mapper's holder of the exclusive claim on the device (the
    /// table's `dm_get_device` claims it), for the engine to claim it as
    /// well ([`crate::kernel_platform::bio::Claim::Dm`]).
    pub(crate) fn holder(&self) -> *mut c_void {
        // SAFETY: `bdev_file` of a held `dm_dev` is a valid, open file.
        unsafe { bindings::mlsdisk_file_holder(self.raw().bdev_file) }
    }

    /// The device's name in `major:minor` form, as `dmsetup table` shows it.
    pub(crate) fn name(&self) -> &CStr {
        let name = &self.raw().name;
        // SAFETY: `c_char` and `u8` have the same size and alignment, and the
        // array lives as long as `self`.
        let bytes = unsafe { core::slice::from_raw_parts(name.as_ptr().cast::<u8>(), name.len()) };
        CStr::from_bytes_until_nul(bytes).unwrap_or(c"?")
    }
}

impl Drop for DmDev {
    fn drop(&mut self) {
        // SAFETY: by the type invariant `ti` is valid and `dev` was obtained
        // from it and not yet put; after this the handle is gone.
        unsafe { bindings::dm_put_device(self.ti.as_ptr(), self.dev.as_ptr()) };
    }
}

/// The constructor's argument words.
///
/// # Invariants
///
/// `argv` holds valid, NUL-terminated, writable strings that live (and are
/// not touched by anyone else) for `'a`. They lie in one buffer, in order
/// (`dm_split_args` splits the table line in place), so the bytes from one
/// word's start up to the next word's start are in that buffer and ours
/// too.
pub(crate) struct Args<'a> {
    argv: &'a [*mut c_char],
    /// For a message: the table is suspended (`dm_suspended`).
    suspended: bool,
}

impl Args<'_> {
    /// For a message: whether the table is suspended, when it must not
    /// touch its devices (someone may be snapshotting them).
    pub(crate) fn suspended(&self) -> bool {
        self.suspended
    }

    /// The number of words.
    pub(crate) fn len(&self) -> usize {
        self.argv.len()
    }

    /// Word `i`, if present.
    pub(crate) fn get(&self, i: usize) -> Option<&CStr> {
        let p = *self.argv.get(i)?;
        // SAFETY: by the type invariant every word is a valid C string that
        // outlives `self`; it is not written while this borrow lives (only
        // `wipe`, which takes `&mut self`, writes).
        Some(unsafe { CStr::from_char_ptr(p) })
    }

    /// Overwrites word `i` with `'0'` characters (keeps its length, so a
    /// later reader sees a harmless string), and every byte after it up
    /// to the next word: `dm_split_args` unescapes in place, so a word that
    /// had backslash escapes leaves a tail of its original characters
    /// after its NUL. (The last word's tail, if it had escapes, ends at
    /// the end of the whole buffer, which is not known here: only up to
    /// its NUL is wiped. The key is word 1, before the options; a line
    /// without options ends with it.)
    fn wipe(&mut self, i: usize) {
        let Some(&p) = self.argv.get(i) else { return };
        // SAFETY: a valid C string (type invariant).
        let word = unsafe { CStr::from_char_ptr(p) }.count_bytes();
        let len = match self.argv.get(i + 1) {
            // The next word's start, later in the same buffer (type
            // invariant); anything else is not trusted.
            Some(&next) if (next as usize) > (p as usize) + word => next as usize - p as usize,
            _ => word,
        };
        // SAFETY: the `len` bytes from `p` are the word and (if another word
        // follows) the bytes up to that word, ours to write (type invariant:
        // one writable buffer, exclusively ours); no borrow of them is
        // alive because we hold `&mut self`.
        let bytes = unsafe { core::slice::from_raw_parts_mut(p.cast::<u8>(), len) };
        for b in bytes.iter_mut() {
            // NULs stay (word `i` keeps its length); all else becomes '0'.
            if *b != 0 {
                // SAFETY: `b` is a valid exclusive reference.
                unsafe { core::ptr::write_volatile(b, b'0') };
            }
        }
    }
}

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
    unsafe fn from_raw<'a>(ptr: *mut kernel::bindings::bio) -> &'a mut Self {
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
        unsafe { bindings::mlsdisk_bio_sector(self.as_ptr()) }
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
        unsafe { bindings::mlsdisk_bio_preflush(self.as_ptr()) }
    }

    /// Whether the bio must be durable when it completes (`REQ_FUA`).
    pub(crate) fn is_fua(&self) -> bool {
        // SAFETY: the bio is valid (type invariant).
        unsafe { bindings::mlsdisk_bio_fua(self.as_ptr()) }
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
    bio: NonNull<kernel::bindings::bio>,
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
        unsafe { bindings::mlsdisk_bio_end(bio.as_ptr(), status) };
    }
}

impl Drop for DeferredBio {
    fn drop(&mut self) {
        // SAFETY: not ended yet (`end` forgets the handle); ended once here.
        unsafe { bindings::mlsdisk_bio_end(self.bio.as_ptr(), BlkError::IoErr.status()) };
    }
}

/// The queue limits of the mapped device, during `io_hints`.
pub(crate) struct Limits<'a>(&'a mut kernel::bindings::queue_limits);

impl Limits<'_> {
    /// 4 KiB logical and physical blocks, discards in 4 KiB granules of at
    /// most `max_discard_sectors` sectors.
    pub(crate) fn set_4k_blocks(&mut self, max_discard_sectors: u32) {
        // SAFETY: a valid, exclusively borrowed `queue_limits`.
        unsafe { bindings::mlsdisk_limits_4k(self.0, max_discard_sectors) }
    }
}

/// The callout of an `iterate_devices` call.
pub(crate) struct Devices<'a> {
    ti: *mut dm_target,
    callout: bindings::iterate_devices_callout_fn,
    data: *mut c_void,
    _p: PhantomData<&'a mut ()>,
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

/// A registered target type; unregistered on drop.
///
/// # Invariants
///
/// `tt` is registered with device-mapper from `new` until `drop`, and is not
/// accessed from Rust in between (device-mapper links it into its list).
pub(crate) struct Registration<T: Target> {
    tt: KBox<Opaque<target_type>>,
    _t: PhantomData<T>,
}

// SAFETY: after registration the `target_type` is only touched by
// device-mapper under its own lock, and by `drop` (unregister), which runs
// once; the registration holds no thread-bound state.
unsafe impl<T: Target> Send for Registration<T> {}
// SAFETY: `&Registration` gives no access to the `target_type` at all.
unsafe impl<T: Target> Sync for Registration<T> {}

impl<T: Target> Registration<T> {
    /// Registers target type `T` on behalf of `module`.
    ///
    /// # Errors
    ///
    /// `ENOMEM`, or the errno of `dm_register_target` (e.g. `EEXIST`).
    pub(crate) fn new(module: &'static ThisModule) -> Result<Self> {
        let tt = target_type {
            name: T::NAME.as_char_ptr(),
            module: module.as_ptr(),
            version: T::VERSION,
            ctr: Some(ctr_callback::<T>),
            dtr: Some(dtr_callback::<T>),
            map: Some(map_callback::<T>),
            status: Some(status_callback::<T>),
            iterate_devices: Some(iterate_devices_callback::<T>),
            postsuspend: Some(postsuspend_callback::<T>),
            resume: Some(resume_callback::<T>),
            message: Some(message_callback::<T>),
            io_hints: Some(io_hints_callback::<T>),
            ..Default::default()
        };
        let tt = KBox::new(Opaque::new(tt), GFP_KERNEL)?;
        // SAFETY: `tt` is a fully initialised `target_type` at a stable heap
        // address that stays allocated until `drop` unregisters it.
        let ret = unsafe { bindings::dm_register_target(tt.get()) };
        if ret != 0 {
            return Err(Error::from_errno(ret));
        }
        // INVARIANT: registered just now.
        Ok(Self {
            tt,
            _t: PhantomData,
        })
    }
}

impl<T: Target> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: registered (type invariant). The module reference count
        // (`target_type.module`) keeps the module loaded while any target
        // instance exists, so none does now.
        unsafe { bindings::dm_unregister_target(self.tt.get()) };
    }
}

/// # Safety
///
/// Called by device-mapper as a `dm_ctr_fn`: `ti` valid and exclusively
/// ours, `argv` holding `argc` writable C strings.
unsafe extern "C" fn ctr_callback<T: Target>(
    ti: *mut dm_target,
    argc: c_uint,
    argv: *mut *mut c_char,
) -> c_int {
    let Some(nn_ti) = NonNull::new(ti) else {
        return EINVAL.to_errno();
    };
    let argv: &[*mut c_char] = if argv.is_null() || argc == 0 {
        &[]
    } else {
        // SAFETY: device-mapper passes `argc` valid pointers in `argv`,
        // alive for the whole call.
        unsafe { core::slice::from_raw_parts(argv, argc as usize) }
    };
    // INVARIANT: the words are valid, writable and ours for this call.
    let mut args = Args {
        argv,
        suspended: false,
    };
    // INVARIANT: `ti` is valid and exclusively ours for this call.
    let mut ctr = Ctr {
        ti: nn_ti,
        _ti: PhantomData,
    };
    let result = T::new(&mut ctr, &args);
    for &i in T::SECRET_ARGS {
        args.wipe(i);
    }
    let result = result.and_then(|target| {
        Instance::new(target).map_err(|err| {
            pr_err!("cannot allocate the target's bio queue\n");
            CtrError::new(c"out of memory", err)
        })
    });
    if result.is_ok() && T::WORKER {
        // SAFETY: `ti` is valid and ours during the constructor, where
        // device-mapper reads `per_io_data_size` afterwards.
        unsafe { bindings::mlsdisk_ti_set_per_bio_data(ti) };
    }
    match result {
        Ok(instance) => {
            // SAFETY: `ti` is valid; `private` is the target's to set.
            unsafe { (*ti).private = KBox::into_raw(instance).cast() };
            0
        }
        Err(e) => {
            // SAFETY: `ti` is valid; device-mapper reads `error` (a static
            // string) after we return.
            unsafe { (*ti).error = e.msg.as_char_ptr().cast_mut() };
            e.err.to_errno()
        }
    }
}

/// # Safety
///
/// `ti` must be a target constructed by `ctr_callback::<T>`, with no other
/// callback running or to come.
unsafe extern "C" fn dtr_callback<T: Target>(ti: *mut dm_target) {
    // SAFETY: `ti` is valid; `private` holds the `KBox<Instance<T>>` that
    // `ctr_callback` leaked, and nothing uses it after `dtr`.
    let instance = unsafe { KBox::from_raw((*ti).private.cast::<Instance<T>>()) };
    // The queue first (it drains into the still live target), then the
    // target itself.
    drop(instance);
    // SAFETY: `ti` is valid.
    unsafe { (*ti).private = core::ptr::null_mut() };
}

/// A target instance with its bio queues (`ti->private`).
///
/// # Invariants
///
/// `queue`, if set, was made by `mlsdisk_bioq_new` with this instance's
/// address as context, `process_callback::<T>` and
/// `parallel_callback::<T>`, and is freed only by `drop`, before `target`;
/// then the target's `per_io_data_size` was set by
/// `mlsdisk_ti_set_per_bio_data`.
struct Instance<T: Target> {
    queue: Option<NonNull<bindings::mlsdisk_bioq>>,
    target: KBox<T>,
}

impl<T: Target> Instance<T> {
    fn new(target: KBox<T>) -> Result<KBox<Self>> {
        let mut instance = KBox::new(
            Self {
                queue: None,
                target,
            },
            GFP_KERNEL,
        )?;
        if T::WORKER {
            let ctx: *mut Self = &mut *instance;
            // SAFETY: `ctx` is the boxed instance, which stays at this
            // address until dropped, and `drop` frees the queue first;
            // `T::NAME` is a static string. Process context.
            let queue = unsafe {
                bindings::mlsdisk_bioq_new(
                    T::NAME.as_char_ptr(),
                    Some(process_callback::<T>),
                    Some(parallel_callback::<T>),
                    Some(idle_callback::<T>),
                    ctx.cast(),
                )
            };
            // INVARIANT: made just now with this instance as context.
            instance.queue = Some(NonNull::new(queue).ok_or(ENOMEM)?);
        }
        Ok(instance)
    }
}

impl<T: Target> Drop for Instance<T> {
    fn drop(&mut self) {
        if let Some(queue) = self.queue.take() {
            // SAFETY: the queue is live (type invariant) and freed once;
            // it drains into `target`, which is still alive.
            unsafe { bindings::mlsdisk_bioq_free(queue.as_ptr()) };
        }
    }
}

/// # Safety
///
/// Called by the bio queue of an `Instance<T>` (its context) with a bio
/// that `map_callback::<T>` deferred.
unsafe extern "C" fn process_callback<T: Target>(
    ctx: *mut c_void,
    bio: *mut kernel::bindings::bio,
) {
    // SAFETY: the queue's context is its live instance (`Instance`
    // invariant: the queue is freed before the instance is).
    let instance = unsafe { &*ctx.cast::<Instance<T>>() };
    let Some(bio) = NonNull::new(bio) else {
        return;
    };
    // INVARIANT: a deferred bio that nobody has ended yet.
    instance.target.process(DeferredBio { bio });
}

/// # Safety
///
/// Called by the parallel queue of an `Instance<T>` (its context) with a
/// bio that `map_callback::<T>` sent there.
unsafe extern "C" fn parallel_callback<T: Target>(
    ctx: *mut c_void,
    bio: *mut kernel::bindings::bio,
) -> bool {
    // SAFETY: as in `process_callback`: the queue is freed (after waiting
    // for every parallel work item) before the instance is.
    let instance = unsafe { &*ctx.cast::<Instance<T>>() };
    let Some(bio) = NonNull::new(bio) else {
        return false;
    };
    // INVARIANT: a deferred bio that nobody has ended yet.
    instance.target.process_parallel(DeferredBio { bio })
}

/// # Safety
///
/// Called by the bio queue of an `Instance<T>` (its context).
unsafe extern "C" fn idle_callback<T: Target>(ctx: *mut c_void) -> bool {
    // SAFETY: as in `process_callback`.
    let instance = unsafe { &*ctx.cast::<Instance<T>>() };
    instance.target.idle()
}

/// # Safety
///
/// `ti` must be a live target constructed by `ctr_callback::<T>`.
unsafe fn instance_of<'a, T: Target>(ti: *mut dm_target) -> &'a Instance<T> {
    // SAFETY: the caller promises a live target; `private` holds its
    // `KBox<Instance<T>>`, which `dtr` frees only after all other callbacks
    // are done.
    unsafe { &*(*ti).private.cast::<Instance<T>>() }
}

/// # Safety
///
/// `ti` must be a live target constructed by `ctr_callback::<T>`.
unsafe fn target_of<'a, T: Target>(ti: *mut dm_target) -> &'a T {
    // SAFETY: the caller's promise.
    unsafe { &instance_of::<T>(ti).target }
}

/// # Safety
///
/// A `dm_map_fn` call: live target, valid bio lent for the call.
unsafe extern "C" fn map_callback<T: Target>(
    ti: *mut dm_target,
    bio: *mut kernel::bindings::bio,
) -> c_int {
    // SAFETY: live target (callback contract).
    let instance = unsafe { instance_of::<T>(ti) };
    // SAFETY: device-mapper lends the bio for the call.
    let lent = unsafe { Bio::from_raw(bio) };
    match instance.target.map(lent) {
        MapResult::Deferred => match instance.queue {
            Some(queue) => {
                // SAFETY: a live queue (`Instance` invariant); the bio is
                // ours to keep once we return DM_MAPIO_SUBMITTED.
                unsafe { bindings::mlsdisk_bioq_push(queue.as_ptr(), bio) };
                bindings::DM_MAPIO_SUBMITTED as c_int
            }
            None => bindings::DM_MAPIO_KILL as c_int,
        },
        MapResult::Parallel => match instance.queue {
            Some(queue) => {
                // SAFETY: a live queue (`Instance` invariant), whose target
                // set `per_io_data_size` for the work item (invariant); the
                // bio is ours to keep once we return DM_MAPIO_SUBMITTED.
                unsafe { bindings::mlsdisk_bioq_push_parallel(queue.as_ptr(), bio) };
                bindings::DM_MAPIO_SUBMITTED as c_int
            }
            None => bindings::DM_MAPIO_KILL as c_int,
        },
        MapResult::Kill => bindings::DM_MAPIO_KILL as c_int,
    }
}

/// # Safety
///
/// A `dm_postsuspend_fn` call: live target.
unsafe extern "C" fn postsuspend_callback<T: Target>(ti: *mut dm_target) {
    // SAFETY: live target (callback contract).
    let instance = unsafe { instance_of::<T>(ti) };
    if let Some(queue) = instance.queue {
        // SAFETY: a live queue; device-mapper has drained I/O; this stops
        // background work and waits for both queues' work items.
        unsafe { bindings::mlsdisk_bioq_pause(queue.as_ptr()) };
    }
    instance.target.postsuspend();
}

/// # Safety
///
/// A `dm_resume_fn` call: live target.
unsafe extern "C" fn resume_callback<T: Target>(ti: *mut dm_target) {
    // SAFETY: live target (callback contract).
    let instance = unsafe { instance_of::<T>(ti) };
    if let Some(queue) = instance.queue {
        // SAFETY: a live queue.
        unsafe { bindings::mlsdisk_bioq_resume(queue.as_ptr()) };
    }
}

/// # Safety
///
/// A `dm_message_fn` call: live target, `argv` with `argc` C strings,
/// `result` writable for `maxlen` bytes.
unsafe extern "C" fn message_callback<T: Target>(
    ti: *mut dm_target,
    argc: c_uint,
    argv: *mut *mut c_char,
    result: *mut c_char,
    maxlen: c_uint,
) -> c_int {
    // SAFETY: live target (callback contract).
    let target = unsafe { target_of::<T>(ti) };
    let argv: &[*mut c_char] = if argv.is_null() || argc == 0 {
        &[]
    } else {
        // SAFETY: device-mapper passes `argc` valid pointers, alive for the
        // call.
        unsafe { core::slice::from_raw_parts(argv, argc as usize) }
    };
    // SAFETY: live target (callback contract).
    let suspended = unsafe { bindings::dm_suspended(ti) } != 0;
    // INVARIANT: valid, writable words, ours for this call.
    let args = Args { argv, suspended };
    let mut empty = [0u8; 1];
    let buf: &mut [u8] = if result.is_null() || maxlen == 0 {
        &mut empty
    } else {
        // SAFETY: device-mapper lends `maxlen` writable bytes at `result`.
        unsafe { core::slice::from_raw_parts_mut(result.cast::<u8>(), maxlen as usize) }
    };
    match target.message(&args, &mut StatusWriter::new(buf)) {
        Ok(true) => 1,
        Ok(false) => 0,
        Err(e) => e.to_errno(),
    }
}

/// # Safety
///
/// A `dm_io_hints_fn` call: live target, `limits` valid and ours.
unsafe extern "C" fn io_hints_callback<T: Target>(
    ti: *mut dm_target,
    limits: *mut kernel::bindings::queue_limits,
) {
    // SAFETY: live target (callback contract).
    let target = unsafe { target_of::<T>(ti) };
    // SAFETY: device-mapper lends the limits for the call.
    if let Some(limits) = unsafe { limits.as_mut() } {
        target.io_hints(&mut Limits(limits));
    }
}

/// # Safety
///
/// A `dm_status_fn` call: live target, `result` writable for `maxlen` bytes.
unsafe extern "C" fn status_callback<T: Target>(
    ti: *mut dm_target,
    status_type: bindings::status_type_t,
    _status_flags: c_uint,
    result: *mut c_char,
    maxlen: c_uint,
) {
    if result.is_null() || maxlen == 0 {
        return;
    }
    let kind = match status_type {
        bindings::status_type_t_STATUSTYPE_INFO => StatusType::Info,
        bindings::status_type_t_STATUSTYPE_TABLE => StatusType::Table,
        _ => StatusType::Ima,
    };
    // SAFETY: live target (callback contract).
    let target = unsafe { target_of::<T>(ti) };
    // SAFETY: device-mapper lends `maxlen` writable bytes at `result`.
    let buf = unsafe { core::slice::from_raw_parts_mut(result.cast::<u8>(), maxlen as usize) };
    // A truncated line is reported to device-mapper by the full buffer
    // itself (it then retries with a larger one).
    let _ = target.status(kind, &mut StatusWriter::new(buf));
}

/// # Safety
///
/// A `dm_iterate_devices_fn` call: live target, `callout` and `data` from
/// device-mapper.
unsafe extern "C" fn iterate_devices_callback<T: Target>(
    ti: *mut dm_target,
    callout: bindings::iterate_devices_callout_fn,
    data: *mut c_void,
) -> c_int {
    // SAFETY: live target (callback contract).
    let target = unsafe { target_of::<T>(ti) };
    let mut devices = Devices {
        ti,
        callout,
        data,
        _p: PhantomData,
    };
    target.iterate_devices(&mut devices)
}
