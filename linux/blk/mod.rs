// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! The blk-mq disks `/dev/mlsdisk0`, `/dev/mlsdisk1`, ...: the same engine
//! as the dm target, set up by module parameters instead of `dmsetup`.
//!
//! ```text
//! insmod mlsdisk.ko disk_backing=/dev/vda,/dev/vdb disk_key=<hex>,<hex> \
//!     disk_mode=create disk_anchor=none,/dev/vdc
//! ```
//!
//! Each parameter is a comma list; `disk_key`, `disk_mode`, `disk_anchor`
//! and `disk_cache_mib` give either one item for every disk or one per
//! disk.
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
//!   rollback anchor (`engine::disk::start_with_options`, as the table's
//!   `anchor=dev:<device>`).
//! - `disk_cache_mib`: the memory budget of the disk's caches in MiB, as
//!   the table's `cache_mib=` (the same range, [`table::CACHE_MIB_MIN`] to
//!   [`table::CACHE_MIB_MAX`]); not given: the engine's default (64 MiB).
//!   A value out of range or not a number fails `insmod`
//!   (`mlsdisk<N>: disk_cache_mib '<value>': expected ...`).
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
//! Each disk has its own engine, workqueues and tag set. One user per
//! backing device: each disk is in the module's registry of open disks
//! (`engine/registry.rs`, shared with the dm target) from before its engine
//! opens until after it is closed, so a dm table on its device is refused
//! naming the disk, and its engine claims the device exclusively (a
//! mount, `mkfs`, another driver get `EBUSY`).

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use core::fmt;
use core::ptr::NonNull;
use kernel::ffi::{c_char, c_int, c_void};

use kernel::block::mq::{self, Operations, TagSet};
use kernel::prelude::*;
use kernel::sync::aref::ARef;
use kernel::sync::{Arc, ArcBorrow, SpinLockIrq};
use kernel::types::ForeignOwnable;
use kernel::{bindings, new_spinlock_irq};

use crate::engine::registry::BlkClaim;
use crate::engine::serve::{serve_read, Counters, IoRequest, Op};
use crate::engine::{Disk, Engine, Failure, SECTORS_PER_BLOCK};
use crate::kernel_platform::bio::{device_number, Access, BdevBlockSet, Claim, OpenBdev};
use crate::kernel_platform::work::{NoIoScope, Ordered, Serve};
use crate::table::{self, KeySpec, RawKey};

mod disk;
mod params;
mod reads;

pub(crate) use disk::BlkDisks;
pub(crate) use params::KeyParamWipe;

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
                fua: (*raw).cmd_flags & ffi::mlsdisk_req_flag_MLSDISK_REQ_FUA != 0,
                preflush: (*raw).cmd_flags & ffi::mlsdisk_req_flag_MLSDISK_REQ_PREFLUSH != 0,
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

/// The disk's state, shared by `queue_rq` (as the queue's data, inside
/// the disk's [`Ordered`] queue) and the workers.
#[pin_data]
struct DiskState {
    /// Requests handed over by `queue_rq`, oldest first. Allocated with
    /// [`FIFO_CAPACITY`] up front: `queue_rq` never makes it grow.
    #[pin]
    pending: SpinLockIrq<VecDeque<ARef<mq::Request<BlkOps>>>>,
    /// The engine and its parallel read path, used by the workers (and
    /// at close).
    disk: Disk,
    /// What reached the engine (logged at removal, and checked by the
    /// guest test: flushes and discards must reach the engine).
    counts: Counters,
    /// The disk's read work items (`reads.rs`), flushed after the disk is
    /// deleted (see [`BlkDisk`]).
    rworks: reads::ReadWorks,
    /// N of `/dev/mlsdisk<N>`, for the log.
    index: c_int,
}

/// The disk's ordered queue (writes, flushes, discards, background work)
/// with its state: the queue's data.
type DiskQueue = Ordered<DiskState>;

impl Serve for DiskState {
    type Item = ARef<mq::Request<BlkOps>>;

    fn pop(&self) -> Option<Self::Item> {
        self.pending.lock().pop_front()
    }

    fn serve(&self, rq: Self::Item) {
        let _noio = NoIoScope::enter();
        // SAFETY: the worker owns `rq` until it ends it below.
        let mut req = unsafe { Rq::new(raw_of(&rq)) };
        self.counts.request(&req);
        let result = self.disk.worker.lock().serve(&mut req, &self.counts);
        if result.is_err() {
            self.counts.failed();
        }
        finish(rq, result, self.index);
    }

    fn idle_step(&self) -> bool {
        // Not while a read waits for the engine (it kicks us afterwards).
        if !self.disk.reads.background_may_run() {
            return false;
        }
        let _noio = NoIoScope::enter();
        match self.disk.worker.lock().engine.background_step() {
            Ok(more) => more,
            Err(e) => {
                if crate::kernel_platform::ratelimit() {
                    pr_err!("mlsdisk{}: background work failed: {:?}\n", self.index, e);
                }
                false
            }
        }
    }
}

impl DiskState {
    /// Serves a read request on the read workqueue ([`serve_read`]:
    /// planned under the engine's mutex, fetched without it), with a
    /// bounce buffer of its own. Returns whether the ordered worker must
    /// be woken.
    fn serve_read(&self, rq: ARef<mq::Request<BlkOps>>) -> bool {
        let _noio = NoIoScope::enter();
        // SAFETY: this worker owns `rq` until it ends it below.
        let mut req = unsafe { Rq::new(raw_of(&rq)) };
        self.counts.request(&req);
        let (result, wake) =
            serve_read(&self.disk.reads, &self.disk.worker, &mut req, &self.counts);
        if result.is_err() {
            self.counts.failed();
        }
        finish(rq, result, self.index);
        wake
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
    type QueueData = Arc<DiskQueue>;

    fn queue_rq(
        queue: ArcBorrow<'_, DiskQueue>,
        rq: ARef<mq::Request<Self>>,
        _is_last: bool,
    ) -> Result {
        // No engine here (it sleeps and allocates; this runs under RCU):
        // hand the request to a worker. See the module documentation.
        let state = &queue.server;
        let raw = raw_of(&rq);
        // SAFETY: `queue_rq` owns the request (started, not ended).
        let read = unsafe {
            ffi::mlsdisk_blk_rq_op(raw) == ffi::MLSDISK_RQ_READ
                && ffi::mlsdisk_blk_rq_bytes(raw) != 0
        };
        let rq = if read {
            let ptr = ARef::into_raw(rq);
            // SAFETY: the request is the driver's, and its reference goes
            // with it (`read_fn` takes it back); the owner was set before
            // the disk was added and outlives the read works' flush
            // (`BlkDisk::drop`). Any context, no sleeping.
            if unsafe { state.rworks.queue(raw) } {
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
            None => Ordered::kick(queue),
        }
        Ok(())
    }

    fn commit_rqs(_queue: ArcBorrow<'_, DiskQueue>) {}

    fn complete(rq: ARef<mq::Request<Self>>) {
        // Requests are ended by the worker, never completed remotely; end
        // one that gets here anyway.
        if let Err(rq) = mq::Request::end_ok(rq) {
            end_with(rq, 0);
        }
    }
}

/// The read work items' entry point (`reads.rs`).
///
/// # Safety
///
/// `queue` is the [`DiskQueue`] of an `Arc` (`Arc::as_ptr`) that `BlkDisk`
/// holds until after the read work items are flushed; `rq` is a read
/// request that `queue_rq` handed over with its reference
/// (`ARef::into_raw`).
unsafe fn read_fn(queue: *const DiskQueue, rq: *mut bindings::request) {
    // SAFETY: see the function's safety section: the pointer of an `Arc`
    // that outlives this call.
    let queue = unsafe { ArcBorrow::from_raw(queue) };
    let Some(rq) = NonNull::new(rq.cast::<mq::Request<BlkOps>>()) else {
        return;
    };
    // SAFETY: the reference `queue_rq` gave up with `into_raw` (see the
    // function's safety section); `Request` is transparent over the C
    // request.
    let rq = unsafe { ARef::from_raw(rq) };
    if queue.server.serve_read(rq) {
        // Background work was put off for this read (not while paused at
        // teardown).
        Ordered::kick_idle(queue);
    }
}
