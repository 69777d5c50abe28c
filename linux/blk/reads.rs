// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! The disk's parallel reads ([`ReadWorks`]), over `kernel::workqueue`:
//! a `WQ_MEM_RECLAIM | WQ_UNBOUND` workqueue (`mlsdisk<N>_rd`, max_active
//! the queue depth) with one work item per tag of the (single) hardware
//! queue, so a read request needs no allocation to be handed over: its tag
//! is unique among the requests the driver owns, and the slot's previous
//! request was ended (freeing the tag) inside the previous run of the
//! slot's work item, after that run had read the request; a work item never
//! runs twice at once. Each slot is an [`Arc`], so queueing it is a
//! reference count increment (any context, no sleeping).

use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use kernel::bindings;
use kernel::prelude::*;
use kernel::str::CString;
use kernel::sync::Arc;
use kernel::workqueue::{impl_has_work, new_work, Work, WorkItem};

use super::DiskQueue;
use crate::kernel_platform::work::WorkQueue;

/// The read work items of one disk. See the module documentation.
pub(super) struct ReadWorks {
    wq: WorkQueue,
    slots: KVec<Arc<ReadSlot>>,
}

/// The work item of one tag: the request it serves and the disk's queue.
#[pin_data]
struct ReadSlot {
    #[pin]
    work: Work<ReadSlot>,
    /// The request handed over by [`ReadWorks::queue`].
    rq: AtomicPtr<bindings::request>,
    /// The disk's queue ([`ReadWorks::set_owner`]).
    owner: AtomicPtr<DiskQueue>,
}

impl_has_work! {
    impl HasWork<ReadSlot> for ReadSlot { self.work }
}

impl WorkItem for ReadSlot {
    type Pointer = Arc<ReadSlot>;

    fn run(this: Arc<ReadSlot>) {
        let rq = this.rq.load(Ordering::Acquire);
        let owner = this.owner.load(Ordering::Acquire);
        drop(this);
        // SAFETY: `owner` was set before the disk took requests and
        // outlives the read workqueue's flush; `rq` is the read request
        // that `queue_rq` handed over with its reference (`ReadWorks::queue`'s
        // contract).
        unsafe { super::read_fn(owner, rq) };
    }
}

impl ReadWorks {
    /// The read workqueue of disk `index` with `depth` work items, one per
    /// tag. Process context.
    pub(super) fn new(index: i32, depth: u32) -> Result<Self> {
        let name = CString::try_from_fmt(fmt!("mlsdisk{}_rd", index))?;
        // Reads wait for the backing device most of their time: every tag
        // may be in flight, and the decryption runs on every CPU. Reclaim
        // may be waiting for them too.
        let max = bindings::wq_consts_WQ_MAX_ACTIVE as i32;
        let active = i32::try_from(depth).unwrap_or(max).clamp(1, max);
        let wq = WorkQueue::unbound_active(&name, active)?;
        let mut slots = KVec::with_capacity(depth as usize, GFP_KERNEL)?;
        for _ in 0..depth {
            let slot = Arc::pin_init(
                pin_init!(ReadSlot {
                    work <- new_work!("mlsdisk_read"),
                    rq: AtomicPtr::new(null_mut()),
                    owner: AtomicPtr::new(null_mut()),
                }),
                GFP_KERNEL,
            )?;
            slots.push(slot, GFP_KERNEL)?;
        }
        Ok(Self { wq, slots })
    }

    /// Sets the disk's queue the work items serve, before any request is
    /// queued.
    pub(super) fn set_owner(&self, owner: *const DiskQueue) {
        for slot in self.slots.iter() {
            slot.owner.store(owner.cast_mut(), Ordering::Release);
        }
    }

    /// Runs the read of `rq` on its tag's work item, concurrently with the
    /// others (any context, no sleeping). Returns false (and does nothing)
    /// if the request's tag is out of range; true once the request is the
    /// work item's.
    ///
    /// # Safety
    ///
    /// `rq` is a read request the driver owns whose reference the caller
    /// gives up (`ARef::into_raw`) if this returns true; the owner
    /// ([`ReadWorks::set_owner`]) is set and alive until [`ReadWorks::flush`]
    /// returned.
    pub(super) unsafe fn queue(&self, rq: *mut bindings::request) -> bool {
        // SAFETY: a request the driver owns (the caller's promise).
        let tag = unsafe { (*rq).tag };
        let Some(slot) = usize::try_from(tag).ok().and_then(|t| self.slots.get(t)) else {
            return false;
        };
        slot.rq.store(rq, Ordering::Release);
        // Cannot be pending: a tag's slot is queued again only after its
        // request ended, which its work item does as its last use of the
        // slot. Were it pending all the same, that pending run serves
        // `rq` (this request): report the broken invariant once, and still
        // return true, so that the caller does not end the request a
        // second time through its other queue.
        if self.wq.queue().enqueue(slot.clone()).is_err() {
            static WARNED: AtomicBool = AtomicBool::new(false);
            if !WARNED.swap(true, Ordering::Relaxed) {
                kernel::warn_on!(true);
            }
        }
        true
    }

    /// Waits for every queued read. Process context.
    pub(super) fn flush(&self) {
        self.wq.flush();
    }
}
