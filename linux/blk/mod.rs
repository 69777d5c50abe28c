// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! The blk-mq disks `/dev/mlsdisk0`, `/dev/mlsdisk1`, ...: the same engine
//! as the dm target, set up by module parameters instead of `dmsetup`.
//!
//! ```text
//! insmod mlsdisk.ko disk_backing=/dev/vda,/dev/vdb disk_key=<hex>,<hex> \
//!     disk_mode=create disk_anchor=none,/dev/vdc
//! ```
//!
//! Each parameter is a comma list; `disk_key`, `disk_mode` and
//! `disk_anchor` give either one item for every disk or one per disk.
//!
//! - `disk_backing`: the backing block devices (path or `major:minor`), at
//!   most [`MAX_DISKS`]; the Nth makes `/dev/mlsdisk<N-1>`. Without it no
//!   disk is made (the dm target works as always).
//! - `disk_key`: the root keys as for the table line: 32 or 64 hex digits,
//!   or a keyring reference `:<size>:logon:<description>` (no comma in the
//!   description). The parameters have permissions 0 (nothing under
//!   `/sys/module/mlsdisk/parameters`), and the key string is overwritten
//!   with zeros once parsed, whether the disks came up or not.
//! - `disk_mode`: `create` formats the device, `open` (the default) opens
//!   an existing disk.
//! - `disk_anchor`: `none` (the default) or the device of the disk's
//!   rollback anchor (`engine_disk::start_with_anchor`, as the table's
//!   `anchor=dev:<device>`).
//!
//! No device may serve two disks (as backing or anchor), nor be a disk's
//! backing and anchor. All or nothing: the disks are opened in order, and
//! if one fails (a wrong key, a device without an mlsdisk, a tampered one,
//! a rollback its anchor catches) the ones already made are removed again
//! and `insmod` fails, with the disk and the cause in the kernel log.
//!
//! The disk has 4 KiB logical and physical blocks and the engine's logical
//! capacity. It declares a volatile write cache with FUA, so that the block
//! layer sends flushes (`REQ_OP_FLUSH`) and FUA writes: a flush syncs the
//! engine, a FUA write syncs after the data. Discards unmap. An engine error
//! ends the request with an error status (`BLK_STS_IOERR`, `NOSPC`,
//! `RESOURCE`, `NOTSUPP`) and a rate-limited
//! `mlsdisk: mlsdisk<N>: <op> at block <n> failed: ...` line.
//!
//! # Where the engine runs
//!
//! `queue_rq` never calls the engine. The tag set of `kernel::block::mq` is
//! not `BLK_MQ_F_BLOCKING`, so `queue_rq` runs under RCU and must not sleep,
//! while the engine allocates (`GFP_KERNEL`, vmalloc) and waits for bios.
//! Rather than a blocking queue (whose dispatch would then run the engine on
//! whatever task submitted the I/O, on that task's stack), `queue_rq` hands
//! each request to a workqueue, as the dm target does (see "Threads" in
//! `dm/target.rs`):
//!
//! - reads go to the disk's read workqueue (`mlsdisk<N>_rd`,
//!   `WQ_MEM_RECLAIM | WQ_UNBOUND`, one work item per tag, so up to
//!   [`QUEUE_DEPTH`] at once and no allocation in `queue_rq`); each plans
//!   under the engine's mutex, then fetches and decrypts into a bounce
//!   buffer of its own without it ([`Reads`]), copies into the request and
//!   ends it;
//! - everything else is appended to a preallocated FIFO served by the
//!   disk's ordered `WQ_MEM_RECLAIM` workqueue: its one work item ends the
//!   requests in order, in a `GFP_NOIO` scope, and when the FIFO is empty
//!   runs the engine's background work (compaction, cleaning) a bounded
//!   step at a time, never while a read waits for the engine.
//!
//! # Lifetime
//!
//! The disk's `block_device_operations` name this module as owner, so an
//! open (mounted) disk pins the module: `rmmod` fails with `EBUSY`. Module
//! exit, for each disk (the last first), deletes the disk (waiting for its
//! requests), drains and frees the read workqueue, then the ordered one,
//! then syncs and closes the engine.
//!
//! Each disk has its own engine, workqueues and tag set. A blk-mq disk and
//! a dm table must not use the same backing device: the dm target's
//! registry of open disks does not cover these disks.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use kernel::ffi::{c_char, c_int, c_void};

use kernel::block::mq::{self, Operations, TagSet};
use kernel::prelude::*;
use kernel::sync::aref::ARef;
use kernel::sync::{Arc, ArcBorrow, Mutex, SpinLockIrq};
use kernel::types::ForeignOwnable;
use kernel::{bindings, new_mutex, new_spinlock_irq};

use crate::engine::registry::BlkClaim;
use crate::engine::serve::{serve_read, IoRequest, Op};
use crate::engine::{Closed, Engine, Failure, Reads, Worker, SECTORS_PER_BLOCK};
use crate::kernel_platform::bio::{
    device_number, on_worker, BdevBlockSet, Claim, NoIoScope, OpenBdev,
};
use crate::table::{self, KeySpec, RawKey};

/// The C side (`blk/helpers.c`, declared in `bindings/blk_helpers.h`,
/// which bindgen reads).
use crate::kernel_platform::bindings as ffi;

/// Largest request in sectors (1 MiB, the worker's buffer).
const MAX_IO_SECTORS: u32 = crate::engine::MAX_IO_SECTORS as u32;

/// Largest discard in sectors (64 MiB).
const MAX_DISCARD_SECTORS: u32 = 1 << 17;

/// Tags of the one hardware queue.
const QUEUE_DEPTH: u32 = 64;

/// The FIFO holds every request the driver owns: at most one per tag, plus
/// the flush machinery's own request (which borrows a tag); the rest is
/// margin.
const FIFO_CAPACITY: usize = QUEUE_DEPTH as usize + 8;

/// Most disks the module parameters may ask for (`/dev/mlsdisk0` to
/// `/dev/mlsdisk7`).
const MAX_DISKS: usize = 8;

/// Requests served, logged when the disk is removed (and checked by the
/// guest test: flushes and discards must reach the engine).
#[derive(Default)]
struct Counts {
    reads: AtomicU64,
    writes: AtomicU64,
    /// Engine syncs: flushes, preflushes and FUA writes.
    syncs: AtomicU64,
    discards: AtomicU64,
    /// Requests ended with an error.
    errors: AtomicU64,
}

impl Counts {
    fn one(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a served request.
    fn count(&self, op: u32, bytes: usize, ok: bool) {
        match (ok, op) {
            (false, _) => Self::one(&self.errors),
            (true, ffi::MLSDISK_RQ_READ) => Self::one(&self.reads),
            (true, ffi::MLSDISK_RQ_WRITE) if bytes != 0 => Self::one(&self.writes),
            (true, ffi::MLSDISK_RQ_DISCARD) => Self::one(&self.discards),
            _ => {}
        }
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        write!(
            f,
            "reads={} writes={} syncs={} discards={} errors={}",
            n(&self.reads),
            n(&self.writes),
            n(&self.syncs),
            n(&self.discards),
            n(&self.errors)
        )
    }
}

/// What the worker needs to know about a request.
struct Rq {
    raw: *mut bindings::request,
    op: u32,
    /// First sector.
    pos: u64,
    bytes: usize,
    fua: bool,
    preflush: bool,
}

impl Rq {
    /// What the driver needs of `raw`.
    ///
    /// # Safety
    ///
    /// The driver owns `raw` (started by `queue_rq`, not ended yet) for as
    /// long as the `Rq` lives.
    unsafe fn new(raw: *mut bindings::request) -> Self {
        // SAFETY: the caller's promise: a live request the driver owns.
        unsafe {
            Self {
                raw,
                op: ffi::mlsdisk_blk_rq_op(raw),
                pos: ffi::mlsdisk_blk_rq_pos(raw),
                bytes: ffi::mlsdisk_blk_rq_bytes(raw) as usize,
                fua: ffi::mlsdisk_blk_rq_fua(raw),
                preflush: ffi::mlsdisk_blk_rq_preflush(raw),
            }
        }
    }
}

impl IoRequest for Rq {
    fn op(&self) -> Op {
        match self.op {
            ffi::MLSDISK_RQ_READ => Op::Read,
            ffi::MLSDISK_RQ_WRITE => Op::Write,
            ffi::MLSDISK_RQ_FLUSH => Op::Flush,
            ffi::MLSDISK_RQ_DISCARD => Op::Discard,
            _ => Op::Other,
        }
    }
    fn sector(&self) -> u64 {
        self.pos
    }
    fn bytes(&self) -> usize {
        self.bytes
    }
    fn preflush(&self) -> bool {
        self.preflush
    }
    fn fua(&self) -> bool {
        self.fua
    }
    fn copy_out(&mut self, buf: &mut [u8]) -> usize {
        // SAFETY: the driver owns the request (`Rq::new`'s promise); `buf`
        // is valid for `buf.len()` bytes, which the copy only writes.
        unsafe { ffi::mlsdisk_blk_rq_copy(self.raw, buf.as_mut_ptr().cast(), buf.len(), false) }
    }
    fn copy_in(&mut self, buf: &[u8]) -> usize {
        // SAFETY: as in `copy_out`; the copy only reads `buf` (to_rq).
        unsafe {
            ffi::mlsdisk_blk_rq_copy(self.raw, buf.as_ptr().cast_mut().cast(), buf.len(), true)
        }
    }
}

/// The disk's state, shared by `queue_rq` (as the queue's data) and the
/// worker.
#[pin_data]
struct DiskState {
    /// Requests handed over by `queue_rq`, oldest first. Allocated with
    /// [`FIFO_CAPACITY`] up front: `queue_rq` never makes it grow.
    #[pin]
    pending: SpinLockIrq<VecDeque<ARef<mq::Request<BlkOps>>>>,
    /// The engine, used by the workers (and at close).
    #[pin]
    io: Mutex<Worker>,
    /// The parallel read path on the engine.
    reads: Reads,
    /// What reached the engine.
    counts: Counts,
    /// The disk's ordered workqueue; valid from before the disk is added
    /// until after it is deleted (see [`BlkDisk`]).
    work: WorkPtr,
    /// The disk's read workqueue; valid as long as `work`.
    rworks: ReadsPtr,
    /// Set at teardown: no more background work.
    closing: AtomicBool,
    /// N of `/dev/mlsdisk<N>`, for the log.
    index: c_int,
}

/// The C work item, owned by [`BlkDisk`].
struct WorkPtr(NonNull<ffi::mlsdisk_blk_work>);

// SAFETY: queue_work may be called from any context and thread.
unsafe impl Send for WorkPtr {}
// SAFETY: as above; the pointer itself never changes.
unsafe impl Sync for WorkPtr {}

/// The C read work items, owned by [`BlkDisk`].
struct ReadsPtr(NonNull<ffi::mlsdisk_blk_reads>);

// SAFETY: queue_work may be called from any context and thread.
unsafe impl Send for ReadsPtr {}
// SAFETY: as above; the pointer itself never changes.
unsafe impl Sync for ReadsPtr {}

impl DiskState {
    /// Kicks the worker.
    fn kick(&self) {
        // SAFETY: the workqueue lives while the disk can take requests
        // (`BlkDisk` frees it only after deleting the disk). Any context.
        unsafe { ffi::mlsdisk_blk_work_queue(self.work.0.as_ptr()) };
    }

    /// The work item: serves every queued request, in order, then runs
    /// background steps while nothing is queued.
    fn run(&self) {
        let _noio = NoIoScope::enter();
        loop {
            // A statement of its own: the lock is released before `serve`.
            let next = self.pending.lock().pop_front();
            let Some(rq) = next else { break };
            self.serve(rq);
        }
        while !self.closing.load(Ordering::Relaxed) && self.pending.lock().is_empty() {
            // Not while a read waits for the engine (it kicks us afterwards).
            if !self.reads.background_may_run() {
                break;
            }
            match self.io.lock().engine.background_step() {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    if crate::kernel_platform::ratelimit() {
                        pr_err!("mlsdisk{}: background work failed: {:?}\n", self.index, e);
                    }
                    break;
                }
            }
        }
    }

    fn serve(&self, rq: ARef<mq::Request<BlkOps>>) {
        // SAFETY: the worker owns `rq` until it ends it below.
        let mut req = unsafe { Rq::new(raw_of(&rq)) };
        let result = self.io.lock().serve(&mut req, Some(&self.counts.syncs));
        self.counts.count(req.op, req.bytes, result.is_ok());
        finish(rq, result, self.index);
    }

    /// Serves a read request on the read workqueue ([`serve_read`]:
    /// planned under the engine's mutex, fetched without it), with a
    /// bounce buffer of its own.
    fn serve_read(&self, rq: ARef<mq::Request<BlkOps>>) {
        let _noio = NoIoScope::enter();
        // SAFETY: this worker owns `rq` until it ends it below.
        let mut req = unsafe { Rq::new(raw_of(&rq)) };
        let (result, wake) = serve_read(&self.reads, &self.io, &mut req);
        if wake && !self.closing.load(Ordering::Relaxed) {
            self.kick();
        }
        self.counts.count(req.op, req.bytes, result.is_ok());
        finish(rq, result, self.index);
    }
}

/// The C request behind `rq`.
fn raw_of(rq: &ARef<mq::Request<BlkOps>>) -> *mut bindings::request {
    // `Request` is `#[repr(transparent)]` over the C `struct request`
    // (through `Opaque`), so its address is the C request's.
    core::ptr::from_ref::<mq::Request<BlkOps>>(rq)
        .cast_mut()
        .cast::<bindings::request>()
}

/// Ends `rq` with `result`, logging a failure (rate-limited) for disk
/// `index`.
fn finish(rq: ARef<mq::Request<BlkOps>>, result: Result<(), Failure>, index: c_int) {
    match result {
        Ok(()) => {
            if let Err(rq) = mq::Request::end_ok(rq) {
                // Only if another reference existed, which this driver
                // never makes; end it anyway.
                end_with(rq, 0);
            }
        }
        Err(f) => {
            if crate::kernel_platform::ratelimit() {
                pr_err!(
                    "mlsdisk{}: {} at block {} failed: {:?}\n",
                    index,
                    f.what,
                    f.lba,
                    f.err
                );
            }
            end_with(rq, f.errno());
        }
    }
}

/// Ends a request the driver owns with `errno` (0: success). The Rust
/// `Request` has no way to end with an error status.
fn end_with(rq: ARef<mq::Request<BlkOps>>, errno: c_int) {
    // The reference is given up without being dropped; the C side drops
    // the request's reference count (private to `kernel::block::mq`) from
    // 2 to 0 as `Request::end_ok` does, so the request goes back to the
    // block layer in the state the Rust side expects (blk/helpers.c).
    let raw = ARef::into_raw(rq).as_ptr().cast::<bindings::request>();
    // SAFETY: the driver owns the request (started by `queue_rq`, not ended
    // yet) and holds no other reference to it; it is ended exactly once,
    // here, and not touched afterwards.
    unsafe { ffi::mlsdisk_blk_rq_end(raw, errno) };
}

/// The blk-mq operations of the disk.
struct BlkOps;

#[vtable]
impl Operations for BlkOps {
    type QueueData = Arc<DiskState>;

    fn queue_rq(
        state: ArcBorrow<'_, DiskState>,
        rq: ARef<mq::Request<Self>>,
        _is_last: bool,
    ) -> Result {
        // No engine here (it sleeps and allocates; this runs under RCU):
        // hand the request to a worker. See the module documentation.
        let raw = raw_of(&rq);
        // SAFETY: `queue_rq` owns the request (started, not ended).
        let read = unsafe {
            ffi::mlsdisk_blk_rq_op(raw) == ffi::MLSDISK_RQ_READ
                && ffi::mlsdisk_blk_rq_bytes(raw) != 0
        };
        let rq = if read {
            let ptr = ARef::into_raw(rq);
            // SAFETY: the read workqueue lives while the disk takes
            // requests (`BlkDisk` frees it only after deleting the disk);
            // the request is the driver's, and its reference goes with it
            // (`read_fn` takes it back). Any context, no sleeping.
            if unsafe { ffi::mlsdisk_blk_reads_queue(state.rworks.0.as_ptr(), raw) } {
                return Ok(());
            }
            // Not queued (a tag out of range): the reference is still ours.
            // SAFETY: from `into_raw` above, not used since.
            unsafe { ARef::from_raw(ptr) }
        } else {
            rq
        };
        let refused = {
            let mut pending = state.pending.lock();
            if pending.len() < pending.capacity() {
                // Within the capacity: no allocation.
                pending.push_back(rq);
                None
            } else {
                Some(rq)
            }
        };
        match refused {
            // Cannot happen (the FIFO holds every request the driver can
            // own); never sleep or allocate here, so fail the request.
            Some(rq) => end_with(rq, EIO.to_errno()),
            None => state.kick(),
        }
        Ok(())
    }

    fn commit_rqs(_state: ArcBorrow<'_, DiskState>) {}

    fn complete(rq: ARef<mq::Request<Self>>) {
        // Requests are ended by the worker, never completed remotely; end
        // one that gets here anyway.
        if let Err(rq) = mq::Request::end_ok(rq) {
            end_with(rq, 0);
        }
    }
}

/// The work item's entry point.
///
/// # Safety
///
/// `arg` is the [`DiskState`] set by [`BlkDisk::start`], alive until the
/// workqueue is freed.
unsafe extern "C" fn work_fn(arg: *mut c_void) {
    // SAFETY: see the function's safety section; `BlkDisk` holds a
    // reference to the state until after it freed the workqueue.
    let state = unsafe { &*arg.cast::<DiskState>() };
    state.run();
}

/// The read work items' entry point.
///
/// # Safety
///
/// `arg` is the [`DiskState`] set by [`BlkDisk::start`], alive until the
/// read workqueue is freed; `rq` is a read request that `queue_rq` handed
/// over with its reference (`ARef::into_raw`).
unsafe extern "C" fn read_fn(arg: *mut c_void, rq: *mut bindings::request) {
    // SAFETY: as in `work_fn`, for the read workqueue.
    let state = unsafe { &*arg.cast::<DiskState>() };
    let Some(rq) = NonNull::new(rq.cast::<mq::Request<BlkOps>>()) else {
        return;
    };
    // SAFETY: the reference `queue_rq` gave up with `into_raw` (see the
    // function's safety section); `Request` is transparent over the C
    // request.
    let rq = unsafe { ARef::from_raw(rq) };
    state.serve_read(rq);
}

/// A live `/dev/mlsdisk<N>`.
///
/// # Invariants
///
/// `disk` was added by `mlsdisk_blk_add_disk` with `queuedata` (from
/// `Arc<DiskState>::into_foreign`) on `tagset`; `work` and `rworks` are
/// the ordered and the read workqueue of `state`, whose argument is
/// `state`. All are released only by `drop`.
pub(crate) struct BlkDisk {
    disk: NonNull<bindings::gendisk>,
    queuedata: *mut c_void,
    work: NonNull<ffi::mlsdisk_blk_work>,
    rworks: NonNull<ffi::mlsdisk_blk_reads>,
    state: Arc<DiskState>,
    /// Kept for the disk, which uses it until `drop` deleted it.
    _tagset: Arc<TagSet<BlkOps>>,
    /// The registry entry of the backing device, dropped (after the
    /// engine was closed in `drop`) with the fields.
    _claim: BlkClaim,
}

// SAFETY: the gendisk, the workqueue and the tag set are kernel objects that
// may be used and released from any thread; `BlkDisk` is only dropped (at
// module exit), never used through a shared reference.
unsafe impl Send for BlkDisk {}
// SAFETY: `BlkDisk` has no methods taking `&self`.
unsafe impl Sync for BlkDisk {}

/// A parameter as bytes (empty when not given).
fn param(p: *const c_char) -> &'static [u8] {
    if p.is_null() {
        return &[];
    }
    // SAFETY: a module parameter's string (NUL-terminated), which lives
    // while the module does; only `mlsdisk_blk_wipe_key_param` writes it,
    // after the last use of the key's bytes.
    unsafe { CStr::from_char_ptr(p) }.to_bytes()
}

/// The items of a comma-separated list parameter (none when empty).
fn items(p: &[u8]) -> impl Iterator<Item = &[u8]> {
    p.split(|&c| c == b',').take_while(move |_| !p.is_empty())
}

/// The item of a list parameter for disk `i` of `n`: the list has either
/// one item (for every disk) or `n`. `None` if not given (an empty list).
/// The count was checked by [`check_count`].
fn item_for(p: &[u8], i: usize) -> Option<&[u8]> {
    let count = items(p).count();
    match count {
        0 => None,
        1 => items(p).next(),
        _ => items(p).nth(i),
    }
}

/// Fails unless the list parameter `name` has 0, 1 or `n` items.
fn check_count(name: &str, p: &[u8], n: usize) -> Result {
    let count = items(p).count();
    if count <= 1 || count == n {
        return Ok(());
    }
    pr_err!(
        "{}: {} items for {} disks in disk_backing (give one for all, or one per disk)\n",
        name,
        count,
        n
    );
    Err(EINVAL)
}

/// Parses one key (hex or keyring reference) for disk `index`.
fn parse_one_key(index: usize, arg: &[u8]) -> Result<RawKey> {
    match table::parse_key(arg) {
        Ok(KeySpec::Raw(key)) => Ok(key),
        Ok(KeySpec::Keyring(r)) => crate::kernel_platform::crypto::keyring_key(&r).map_err(|e| {
            pr_err!("mlsdisk{}: disk_key: {}\n", index, e.msg);
            e.err
        }),
        Err(e) => {
            pr_err!("mlsdisk{}: disk_key: {}\n", index, format_args!("{e}"));
            Err(EINVAL)
        }
    }
}

/// Wipes the `disk_key` parameter when dropped. Module init holds one from
/// its first line, so that the key's string is zeroed on every path out of
/// init, the early failures included (a selftest, the workqueue, the dm
/// registration): a failed `insmod` frees the parameter with a plain
/// `kfree`, which would leave the key in freed memory.
pub(crate) struct KeyParamWipe;

impl Drop for KeyParamWipe {
    fn drop(&mut self) {
        // SAFETY: no preconditions; nothing borrows the parameter's string
        // past init, and the guard is dropped at the end of init.
        unsafe { ffi::mlsdisk_blk_wipe_key_param() };
    }
}

/// The root keys of the `n` disks from the `disk_key` parameter (one for
/// all, or one per disk), which is wiped whether or not it parses.
fn take_keys(n: usize) -> Result<KVec<RawKey>> {
    // SAFETY: no preconditions.
    let arg = param(unsafe { ffi::mlsdisk_blk_param_key() });
    let keys = (|| -> Result<KVec<RawKey>> {
        check_count("disk_key", arg, n)?;
        let mut keys = KVec::with_capacity(n, GFP_KERNEL)?;
        for i in 0..n {
            let Some(one) = item_for(arg, i) else {
                pr_err!("mlsdisk{}: disk_key not given\n", i);
                return Err(EINVAL);
            };
            keys.push(parse_one_key(i, one)?, GFP_KERNEL)?;
        }
        Ok(keys)
    })();
    // SAFETY: no preconditions; `arg` is not used after this.
    unsafe { ffi::mlsdisk_blk_wipe_key_param() };
    keys
}

/// Creates or opens the engine of disk `index` on `dev`, with the rollback
/// anchor on `anchor` if given (on a worker). Returns it and its logical
/// capacity in blocks.
fn start_engine(
    index: c_int,
    dev: u32,
    (create, force): (bool, bool),
    key: &RawKey,
    anchor: Option<u32>,
) -> Result<(Box<dyn Engine>, u64)> {
    let opened = on_worker(|| -> Result<(Box<dyn Engine>, u64)> {
        // Exclusive: a dm table, a mount or another disk on the same
        // device is refused while this disk is open (EBUSY).
        let bdev = OpenBdev::open(dev, Claim::Own).inspect_err(|e| {
            let why = match e.to_errno() == EBUSY.to_errno() {
                true => " (in use: claimed by a mount, a dm table or another disk)",
                false => "",
            };
            pr_err!(
                "mlsdisk{}: cannot open the backing device{}: error {}\n",
                index,
                why,
                e.to_errno()
            );
        })?;
        let set = BdevBlockSet::new(bdev);
        #[cfg(not(mlsdisk_passthrough))]
        {
            let anchor = match anchor {
                Some(adev) => Some(BdevBlockSet::new(
                    OpenBdev::open(adev, Claim::None).inspect_err(|e| {
                        pr_err!(
                            "mlsdisk{}: cannot open the anchor device: error {}\n",
                            index,
                            e.to_errno()
                        );
                    })?,
                )),
                None => None,
            };
            let mode = Some(if create {
                table::Mode::Create
            } else {
                table::Mode::Open
            });
            match anchor {
                Some(anchor) => crate::engine::disk::start_with_anchor(
                    mode,
                    force,
                    set,
                    key.as_bytes(),
                    Some(anchor),
                ),
                None => crate::engine::disk::start(mode, force, set, key.as_bytes()),
            }
            .map_err(|e| {
                pr_err!("mlsdisk{}: {}\n", index, e.msg);
                e.err
            })
        }
        #[cfg(mlsdisk_passthrough)]
        {
            let _ = (create, force, key, anchor, index);
            let (engine, nblocks) = crate::engine::PassThrough::new(set);
            Ok((Box::new(engine) as Box<dyn Engine>, nblocks))
        }
    });
    opened.unwrap_or(Err(EIO))
}

/// What the module parameters say about one disk.
struct DiskParams<'a> {
    backing: &'a [u8],
    dev: u32,
    create: bool,
    /// `force_create`: format even over an existing mlsdisk.
    force: bool,
    /// The anchor's name and `dev_t`.
    anchor: Option<(&'a [u8], u32)>,
}

/// The parameters of disk `i` of `n`, checked (mode, devices found, the
/// anchor not the backing device).
fn disk_params<'a>(
    i: usize,
    backing: &'a [u8],
    mode: &'a [u8],
    anchors: &'a [u8],
) -> Result<DiskParams<'a>> {
    let (create, force) = match item_for(mode, i).unwrap_or(b"") {
        b"" | b"open" => (false, false),
        b"create" => (true, false),
        b"force_create" => (true, true),
        other => {
            pr_err!(
                "mlsdisk{}: disk_mode '{}': expected 'create', 'force_create' or 'open'\n",
                i,
                format_args!("{}", table::Escaped(other))
            );
            return Err(EINVAL);
        }
    };
    let dev = device_number(backing).inspect_err(|e| {
        pr_err!(
            "mlsdisk{}: cannot find the backing device '{}': error {}\n",
            i,
            format_args!("{}", table::Escaped(backing)),
            e.to_errno()
        );
    })?;
    let anchor = match item_for(anchors, i).unwrap_or(b"none") {
        b"none" => None,
        name => {
            if cfg!(mlsdisk_passthrough) {
                pr_err!(
                    "mlsdisk{}: disk_anchor needs the engine (not the pass-through build)\n",
                    i
                );
                return Err(EINVAL);
            }
            let adev = device_number(name).inspect_err(|e| {
                pr_err!(
                    "mlsdisk{}: cannot find the anchor device '{}': error {}\n",
                    i,
                    format_args!("{}", table::Escaped(name)),
                    e.to_errno()
                );
            })?;
            Some((name, adev))
        }
    };
    Ok(DiskParams {
        backing,
        dev,
        create,
        force,
        anchor,
    })
}

/// The blk-mq disks the module parameters ask for (none, or
/// `/dev/mlsdisk0` ... in order). Dropping it removes them, the last first.
pub(crate) struct BlkDisks(KVec<BlkDisk>);

impl Drop for BlkDisks {
    fn drop(&mut self) {
        while let Some(disk) = self.0.pop() {
            drop(disk);
        }
    }
}

impl BlkDisks {
    /// No disks.
    pub(crate) fn none() -> Self {
        Self(KVec::new())
    }

    /// Whether no disk was added.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Opens the engines of the disks the module parameters ask for: all
    /// of them or none (a failure closes the ones already opened); adds no
    /// disk ([`Opened::add`] does). Process context (module init).
    pub(crate) fn open_params() -> Result<Opened> {
        // SAFETY: no preconditions.
        let backing = param(unsafe { ffi::mlsdisk_blk_param_backing() });
        // SAFETY: no preconditions.
        let mode = param(unsafe { ffi::mlsdisk_blk_param_mode() });
        // SAFETY: no preconditions.
        let anchors = param(unsafe { ffi::mlsdisk_blk_param_anchor() });
        let n = items(backing).count();
        if n == 0 {
            // SAFETY: no preconditions.
            if !param(unsafe { ffi::mlsdisk_blk_param_key() }).is_empty() {
                // SAFETY: no preconditions.
                unsafe { ffi::mlsdisk_blk_wipe_key_param() };
                pr_err!("disk_key given without disk_backing\n");
                return Err(EINVAL);
            }
            if !anchors.is_empty() {
                pr_err!("disk_anchor given without disk_backing\n");
                return Err(EINVAL);
            }
            return Ok(Opened(KVec::new()));
        }
        // The keys first: the parameter is wiped whatever happens next.
        let keys = take_keys(n)?;
        if n > MAX_DISKS {
            pr_err!("disk_backing names {} devices, at most {}\n", n, MAX_DISKS);
            return Err(EINVAL);
        }
        check_count("disk_mode", mode, n)?;
        check_count("disk_anchor", anchors, n)?;
        let mut all = KVec::<DiskParams<'_>>::with_capacity(n, GFP_KERNEL)?;
        for (i, one) in items(backing).enumerate() {
            all.push(disk_params(i, one, mode, anchors)?, GFP_KERNEL)?;
        }
        // No device twice: not two disks on one backing device, no anchor
        // on a backing device or shared by two disks.
        for (i, a) in all.iter().enumerate() {
            let mut devs = [Some(a.dev), a.anchor.map(|(_, d)| d)];
            if a.anchor.is_some_and(|(_, d)| d == a.dev) {
                pr_err!(
                    "mlsdisk{}: the anchor device is the backing device: the anchor must live outside the image\n",
                    i
                );
                return Err(EINVAL);
            }
            for (j, b) in all.iter().enumerate().skip(i + 1) {
                for d in devs.iter_mut().flatten() {
                    if *d == b.dev || b.anchor.is_some_and(|(_, bd)| bd == *d) {
                        pr_err!(
                            "mlsdisk{} and mlsdisk{} use the same device {}:{} (each backing and anchor device serves one disk)\n",
                            i,
                            j,
                            *d >> 20,
                            *d & 0xfffff
                        );
                        return Err(EINVAL);
                    }
                }
            }
        }
        // Every engine first: a failure here leaves nothing anyone could
        // have seen (no disk was added), so init may still fail.
        let mut pending = KVec::<Pending>::with_capacity(n, GFP_KERNEL)?;
        for (i, (p, key)) in all.iter().zip(keys.iter()).enumerate() {
            // `i < MAX_DISKS`, which fits.
            let index = i as c_int;
            let disk = match Pending::open(
                index,
                p.dev,
                (p.create, p.force),
                key,
                p.anchor.map(|(_, d)| d),
            ) {
                Ok(disk) => disk,
                Err(e) => {
                    pr_err!(
                        "mlsdisk{}: cannot {} the disk on '{}' (error {}); closing the {} engine(s) opened before it (no disk was added), insmod fails\n",
                        i,
                        if p.create { "create" } else { "open" },
                        format_args!("{}", table::Escaped(p.backing)),
                        e.to_errno(),
                        pending.len()
                    );
                    // `pending` drops here: each engine is synced and closed.
                    return Err(e);
                }
            };
            pr_info!(
                "mlsdisk{}: {} on {} ({} blocks of 4 KiB, {}-bit root key, {}){}\n",
                i,
                if p.create { "created" } else { "opened" },
                format_args!("{}", table::Escaped(p.backing)),
                disk.capacity_blocks(),
                key.bits(),
                format_args!("{}", AnchorShown(p.anchor.map(|(name, _)| name))),
                if cfg!(not(mlsdisk_passthrough)) {
                    ""
                } else {
                    ", pass-through stage: NOT encrypted"
                }
            );
            // Reserved for `n` above: does not allocate.
            pending.push(disk, GFP_KERNEL)?;
        }
        Ok(Opened(pending))
    }
}

/// The disks of the module parameters with their engines open, none added
/// yet ([`BlkDisks::open_params`]); [`Opened::add`] makes them visible.
pub(crate) struct Opened(KVec<Pending>);

impl Opened {
    /// Adds every disk, in order. Once a disk is added, `udev`/`blkid` may
    /// hold it open (and with it a reference to the module, which
    /// `try_module_get` grants while the module is still coming up), so
    /// module init must not fail after that: a module whose init fails is
    /// freed regardless of such references. Hence nothing here fails once
    /// the first disk is added: if a later `add_disk` fails (out of memory,
    /// a sysfs name clash), that disk's engine is closed, the disks after
    /// it are closed unadded, and the module stays loaded with the disks
    /// added so far (logged). Fails only if the first disk cannot be added
    /// (then nothing was visible).
    pub(crate) fn add(self) -> Result<BlkDisks> {
        let n = self.0.len();
        // Allocated before the first add: pushing below never allocates.
        let mut disks = BlkDisks(KVec::with_capacity(n, GFP_KERNEL)?);
        let mut rest = self.0.into_iter();
        for one in rest.by_ref() {
            let index = one.parts.as_ref().map_or(0, |p| p.state.index);
            match one.add() {
                Ok(disk) => {
                    if let Err(e) = disks.0.push_within_capacity(disk) {
                        // Cannot happen (capacity `n`); a disk dropped
                        // while the module stays loaded is safe.
                        drop(e);
                        break;
                    }
                }
                Err(e) if disks.0.is_empty() => {
                    pr_err!(
                        "mlsdisk{}: cannot add the disk (error {}): closing the other engines, insmod fails\n",
                        index,
                        e.to_errno()
                    );
                    // `rest` drops with this function: closed, never added.
                    return Err(e);
                }
                Err(e) => {
                    pr_err!(
                        "mlsdisk{}: cannot add the disk (error {}); the module stays loaded with the {} disk(s) added before it (init must not fail once a disk is visible), the later ones are closed\n",
                        index,
                        e.to_errno(),
                        disks.0.len()
                    );
                    break;
                }
            }
        }
        // Any disks left in `rest` are closed, never added.
        drop(rest);
        Ok(disks)
    }
}

/// "rollback anchor on <device>" or "no rollback anchor".
struct AnchorShown<'a>(Option<&'a [u8]>);

impl fmt::Display for AnchorShown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(name) => write!(f, "rollback anchor on {}", table::Escaped(name)),
            None => f.write_str("no rollback anchor"),
        }
    }
}

/// A disk whose engine is open and whose workqueues, state and tag set
/// are allocated, but that is not added yet: nothing outside the module
/// can see it. Dropping it frees the workqueues and closes (syncs) the
/// engine. Module init opens every disk to this stage before it adds any
/// (see [`BlkDisks::add`]).
struct Pending {
    /// `None` once handed on to [`Pending::add`].
    parts: Option<Parts>,
}

/// What a [`Pending`] disk holds.
///
/// # Invariants
///
/// `work` and `rworks` are the ordered and the read workqueue of `state`
/// (whose argument is `state`), never queued yet; `tagset` is initialised.
struct Parts {
    work: NonNull<ffi::mlsdisk_blk_work>,
    rworks: NonNull<ffi::mlsdisk_blk_reads>,
    state: Arc<DiskState>,
    tagset: Arc<TagSet<BlkOps>>,
    /// Logical capacity in 4 KiB blocks.
    capacity: u64,
    /// The disk's entry in the registry of open disks; dropped after the
    /// engine is closed.
    claim: BlkClaim,
}

impl Parts {
    /// Frees the workqueues and closes (syncs) the engine of a disk that
    /// was never added.
    fn discard(self) {
        // SAFETY: the workqueues were never queued (the disk was never
        // added, so no request reached them); freed once, here, the read
        // workqueue first.
        unsafe {
            ffi::mlsdisk_blk_reads_free(self.rworks.as_ptr());
            ffi::mlsdisk_blk_work_free(self.work.as_ptr());
        }
        close(&self.state);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(parts) = self.parts.take() {
            let index = parts.state.index;
            parts.discard();
            pr_info!(
                "mlsdisk{}: engine closed (synced); the disk was never added\n",
                index
            );
        }
    }
}

impl Pending {
    fn capacity_blocks(&self) -> u64 {
        self.parts.as_ref().map_or(0, |p| p.capacity)
    }

    /// Opens the engine of disk `index` and allocates everything the disk
    /// needs, without adding it.
    fn open(
        index: c_int,
        dev: u32,
        mode: (bool, bool),
        key: &RawKey,
        anchor: Option<u32>,
    ) -> Result<Self> {
        // One user per backing device: refused if a dm table (or another
        // disk) has it, and it stays registered until the engine is closed.
        let claim = BlkClaim::new(dev, index)?;
        let (engine, capacity) = start_engine(index, dev, mode, key, anchor)?;
        let mut buf = Vec::new();
        buf.try_reserve_exact(MAX_IO_SECTORS as usize * 512)
            .map_err(|_| ENOMEM)?;
        buf.resize(MAX_IO_SECTORS as usize * 512, 0);
        let mut fifo = VecDeque::new();
        fifo.try_reserve_exact(FIFO_CAPACITY).map_err(|_| ENOMEM)?;
        let reads = Reads::new(engine.reader());
        // SAFETY: `work_fn` matches the callback type; process context.
        let work = unsafe { ffi::mlsdisk_blk_work_new(Some(work_fn), index) };
        let Some(work) = NonNull::new(work) else {
            // The engine is dropped on this stack (an out-of-memory path).
            return Err(ENOMEM);
        };
        // SAFETY: `read_fn` matches the callback type; process context.
        let rworks = unsafe { ffi::mlsdisk_blk_reads_new(Some(read_fn), index, QUEUE_DEPTH) };
        let Some(rworks) = NonNull::new(rworks) else {
            // SAFETY: created above, never queued, freed once.
            unsafe { ffi::mlsdisk_blk_work_free(work.as_ptr()) };
            return Err(ENOMEM);
        };
        let free_work = || {
            // SAFETY: created above, never queued, freed once; the read
            // workqueue (which may kick `work`) first.
            unsafe {
                ffi::mlsdisk_blk_reads_free(rworks.as_ptr());
                ffi::mlsdisk_blk_work_free(work.as_ptr());
            }
        };
        let state = match Arc::pin_init(
            pin_init!(DiskState {
                pending <- new_spinlock_irq!(fifo),
                io <- new_mutex!(Worker { engine, buf }),
                reads,
                counts: Counts::default(),
                work: WorkPtr(work),
                rworks: ReadsPtr(rworks),
                closing: AtomicBool::new(false),
                index,
            }),
            GFP_KERNEL,
        ) {
            Ok(state) => state,
            Err(e) => {
                // The engine was moved into the failed initializer and is
                // dropped with it (on this stack: an out-of-memory path).
                free_work();
                return Err(e);
            }
        };
        // SAFETY: the state outlives both workqueues (`Parts::discard` and
        // `BlkDisk::drop` free them before dropping their reference to it).
        unsafe {
            let arg = Arc::as_ptr(&state).cast_mut().cast();
            ffi::mlsdisk_blk_work_set_arg(work.as_ptr(), arg);
            ffi::mlsdisk_blk_reads_set_arg(rworks.as_ptr(), arg);
        };
        let tagset = match Arc::pin_init(TagSet::new(1, QUEUE_DEPTH, 1), GFP_KERNEL) {
            Ok(t) => t,
            Err(e) => {
                free_work();
                close(&state);
                return Err(e);
            }
        };
        // INVARIANT: the workqueues were made above for `state` and never
        // queued; `tagset` is initialised.
        Ok(Self {
            parts: Some(Parts {
                work,
                rworks,
                state,
                tagset,
                capacity,
                claim,
            }),
        })
    }

    /// Adds the disk `/dev/mlsdisk<index>`. On failure the engine is
    /// closed and the workqueues freed (nothing was visible).
    fn add(mut self) -> Result<BlkDisk> {
        let Some(parts) = self.parts.take() else {
            return Err(EIO);
        };
        let index = parts.state.index;
        let queuedata = parts.state.clone().into_foreign();
        // `TagSet` is `#[repr(transparent)]` over `Opaque<blk_mq_tag_set>`,
        // so its address is the C tag set's.
        let set = Arc::as_ptr(&parts.tagset)
            .cast_mut()
            .cast::<bindings::blk_mq_tag_set>();
        // SAFETY: `set` is an initialized tag set (kept alive by `tagset`
        // for as long as the disk); `queuedata` is an `Arc<DiskState>`
        // from `into_foreign`, as `BlkOps::QueueData` expects; process
        // context.
        let disk = unsafe {
            ffi::mlsdisk_blk_add_disk(
                set,
                queuedata,
                index,
                parts.capacity.saturating_mul(SECTORS_PER_BLOCK),
                MAX_IO_SECTORS,
                MAX_DISCARD_SECTORS,
            )
        };
        let disk = match kernel::error::from_err_ptr(disk).map(NonNull::new) {
            Ok(Some(disk)) => disk,
            failed => {
                // `mlsdisk_blk_add_disk` never returns NULL; count it as a
                // failure.
                let err = failed.err().unwrap_or(EIO);
                pr_err!(
                    "mlsdisk{}: cannot add the disk: error {}\n",
                    index,
                    err.to_errno()
                );
                // SAFETY: the failed add left nothing behind and gave
                // `queuedata` back (see blk_helpers.h).
                drop(unsafe { Arc::<DiskState>::from_foreign(queuedata) });
                parts.discard();
                return Err(err);
            }
        };
        // INVARIANT: added above with `queuedata` on `tagset`; `work` and
        // `rworks` are the state's workqueues.
        Ok(BlkDisk {
            disk,
            queuedata,
            work: parts.work,
            rworks: parts.rworks,
            state: parts.state,
            _tagset: parts.tagset,
            _claim: parts.claim,
        })
    }
}

/// Takes the engine out of `state`, then syncs and drops it on a worker,
/// logging a failure. The state's engine is [`Closed`] afterwards.
fn close(state: &DiskState) {
    state.closing.store(true, Ordering::Relaxed);
    // `Closed` is zero-sized: boxing it does not allocate.
    let index = state.index;
    pr_info!(
        "mlsdisk{}: closing: {} reread={}\n",
        index,
        format_args!("{}", state.counts),
        state.reads.rereads()
    );
    let engine = core::mem::replace(&mut state.io.lock().engine, Box::new(Closed));
    let result = on_worker(move || {
        let mut engine = engine;
        let result = engine.sync();
        drop(engine);
        result
    });
    match result {
        Some(Ok(())) => {}
        Some(Err(e)) => pr_err!("mlsdisk{}: sync at close failed: {:?}\n", index, e),
        None => pr_err!("mlsdisk{}: sync at close did not run\n", index),
    }
}

impl Drop for BlkDisk {
    fn drop(&mut self) {
        // No background work from now on.
        self.state.closing.store(true, Ordering::Relaxed);
        // SAFETY: a live disk (type invariant), deleted once. Waits for
        // every request (the worker ends them); no `queue_rq` afterwards.
        unsafe { ffi::mlsdisk_blk_del_disk(self.disk.as_ptr()) };
        // SAFETY: the disk is gone, so nothing queues a read any more; this
        // waits for the read work items (which may still kick the ordered
        // one after ending their request) and frees their workqueue, once.
        unsafe { ffi::mlsdisk_blk_reads_free(self.rworks.as_ptr()) };
        // SAFETY: nothing queues the work any more; this waits for a
        // running work item and frees the workqueue, once.
        unsafe { ffi::mlsdisk_blk_work_free(self.work.as_ptr()) };
        // SAFETY: `queuedata` came from `into_foreign` and the disk that
        // borrowed it is released.
        drop(unsafe { Arc::<DiskState>::from_foreign(self.queuedata) });
        close(&self.state);
        pr_info!("mlsdisk{}: removed (synced and closed)\n", self.state.index);
        // The tag set and the state go after this, with the fields.
    }
}
