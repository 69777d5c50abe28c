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
//! (`queue.rs`); `map` picks one, device-mapper is told
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
pub(crate) trait Target: Sized + Send + Sync + 'static {
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
        // The block layer's own mapping (`BLK_STS_*` are casts, which
        // bindgen does not evaluate): EIO is `BLK_STS_IOERR`, ENOSPC
        // `BLK_STS_NOSPC`, ENOMEM `BLK_STS_RESOURCE`, EOPNOTSUPP
        // `BLK_STS_NOTSUPP`.
        let errno = match self {
            Self::IoErr => EIO,
            Self::NoSpc => ENOSPC,
            Self::Resource => ENOMEM,
            Self::NotSupp => EOPNOTSUPP,
        };
        // SAFETY: a table lookup, no preconditions.
        unsafe { kernel::bindings::errno_to_blk_status(errno.to_errno()) }
    }
}

pub(crate) use crate::kernel_platform::CtrError;

mod bio;
mod callbacks;
mod queue;

pub(crate) use bio::{Bio, BioOp, DeferredBio, Devices, Limits, StatusWriter};
pub(crate) use callbacks::Registration;

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
        let mode = unsafe { bindings::dm_table_get_mode(self.raw().table) };
        mode & bindings::mlsdisk_blk_open_MLSDISK_BLK_OPEN_WRITE != 0
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
        let ti = self.raw_mut();
        ti.set_flush_supported(true);
        ti.set_discards_supported(true);
        // SAFETY: `ti` is valid and exclusively ours (type invariant).
        let ret = unsafe { bindings::dm_set_target_max_io_len(ti, max_io_len) };
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
        // SAFETY: `bdev` of a held `dm_dev` is a valid, open block device;
        // its `bd_dev` never changes.
        unsafe { (*self.raw().bdev).bd_dev }
    }

    /// Device-mapper's holder of the exclusive claim on the device (the
    /// table's `dm_get_device` claims it), for the engine to claim it as
    /// well ([`crate::kernel_platform::bio::Claim::Dm`]).
    pub(crate) fn holder(&self) -> *mut c_void {
        // SAFETY: `bdev_file` of a held `dm_dev` is a valid, open block
        // device file; the block layer keeps its holder in `private_data`
        // (block/bdev.c) and does not change it while the file is open.
        unsafe { (*self.raw().bdev_file).private_data }
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
