// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! The bio queues of a worker target, over `kernel::workqueue`. Both keep
//! what they need in the bio's per-bio data ([`PerBio`], whose size is the
//! target's `ti->per_io_data_size`, as dm-crypt does), so `map` allocates
//! nothing:
//!
//! - [`OrderedBios`]: the ordered queue's FIFO, linked through the per-bio
//!   data under an irq-safe spinlock; the target's `Ordered` queue
//!   (`kernel_platform/work.rs`) pops it in order (writes, flushes,
//!   discards);
//! - the parallel queue ([`push_parallel`]): each bio is its own
//!   [`kernel::workqueue::Work`] item, in its per-bio data, on a workqueue
//!   that runs several at once ([`parallel_workqueue`]: reads).
//!
//! The per-bio data is found with device-mapper's exported
//! `dm_per_bio_data`.

use core::marker::PhantomData;
use core::ptr::{addr_of_mut, null_mut, NonNull};

use kernel::bindings::{bio, work_struct};
use kernel::cpumask::Cpumask;
use kernel::new_spinlock_irq;
use kernel::prelude::*;
use kernel::str::CString;
use kernel::sync::SpinLockIrq;
use kernel::workqueue::{
    impl_has_work, new_work, HasWork, RawWorkItem, Work, WorkItem, WorkItemPointer,
};

use super::{bindings, DeferredBio};
use crate::kernel_platform::work::WorkQueue;

/// What serves the bios of the parallel queue: the target instance.
pub(super) trait ServeParallel: Sync + 'static {
    /// Serves (and ends) one bio, on a worker.
    fn serve_parallel(&self, bio: DeferredBio);
}

/// The ordered FIFO's link of a deferred bio.
struct Link {
    next: *mut Link,
    bio: NonNull<bio>,
}

/// The per-bio data of a worker target: a parallel bio's work item and
/// what it serves, or an ordered bio's link.
#[pin_data]
pub(super) struct PerBio<P: ServeParallel> {
    #[pin]
    work: Work<PerBio<P>>,
    owner: *const P,
    link: Link,
}

impl_has_work! {
    impl{P: ServeParallel} HasWork<PerBio<P>> for PerBio<P> { self.work }
}

/// `ti->per_io_data_size` of a target whose queues serve into `P`.
pub(super) fn per_bio_data_size<P: ServeParallel>() -> u32 {
    // A few pointers and a `work_struct`: far below `u32::MAX`.
    core::mem::size_of::<PerBio<P>>() as u32
}

/// The per-bio data of `bio`.
///
/// # Safety
///
/// `bio` is a bio that device-mapper passed to the map function of a
/// target whose `per_io_data_size` is [`per_bio_data_size::<P>`].
unsafe fn per_bio<P: ServeParallel>(bio: NonNull<bio>) -> NonNull<PerBio<P>> {
    // SAFETY: the caller's promise: the front pad before the clone holds
    // `size_of::<PerBio<P>>()` bytes of per-bio data, whose address this
    // returns (below a valid bio, so never null).
    unsafe {
        NonNull::new_unchecked(
            bindings::dm_per_bio_data(bio.as_ptr(), core::mem::size_of::<PerBio<P>>()).cast(),
        )
    }
}

/// The FIFO's ends.
struct Fifo {
    head: *mut Link,
    tail: *mut Link,
}

// SAFETY: the links are in the per-bio data of bios the FIFO owns, which
// may be served from any thread.
unsafe impl Send for Fifo {}

/// The ordered queue's FIFO of deferred bios (any context).
///
/// # Invariants
///
/// Every link in the FIFO is in the per-bio data (of a `PerBio<P>`) of a
/// bio that `map` deferred and nobody has ended; `tail` is the last link
/// (null exactly when `head` is).
#[pin_data]
pub(super) struct OrderedBios<P: ServeParallel> {
    #[pin]
    fifo: SpinLockIrq<Fifo>,
    _p: PhantomData<fn(P)>,
}

impl<P: ServeParallel> OrderedBios<P> {
    /// An empty FIFO.
    pub(super) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            fifo <- new_spinlock_irq!(
                Fifo {
                    head: null_mut(),
                    tail: null_mut(),
                },
                "mlsdisk_bio_fifo"
            ),
            _p: PhantomData,
        })
    }

    /// Appends `bio` (any context, no sleeping).
    ///
    /// # Safety
    ///
    /// As [`per_bio`]; the bio is the FIFO's from now on (`map` returns
    /// `DM_MAPIO_SUBMITTED` for it) until [`OrderedBios::pop`] hands it out.
    pub(super) unsafe fn push(&self, bio: NonNull<bio>) {
        // SAFETY: the caller's promise.
        let pio = unsafe { per_bio::<P>(bio) }.as_ptr();
        // SAFETY: the per-bio data is the bio's, and so ours now.
        let link = unsafe { addr_of_mut!((*pio).link) };
        // SAFETY: as above; writable, unused by anyone else.
        unsafe {
            link.write(Link {
                next: null_mut(),
                bio,
            })
        };
        let mut fifo = self.fifo.lock();
        if fifo.tail.is_null() {
            fifo.head = link;
        } else {
            // SAFETY: the tail is a link in the FIFO (type invariant),
            // changed only under the lock.
            unsafe { (*fifo.tail).next = link };
        }
        // INVARIANT: `link` is the per-bio data of a deferred bio.
        fifo.tail = link;
    }

    /// Takes the oldest bio; `None` when the FIFO is empty.
    pub(super) fn pop(&self) -> Option<DeferredBio> {
        let mut fifo = self.fifo.lock();
        let link = NonNull::new(fifo.head)?;
        // SAFETY: a link in the FIFO (type invariant), read under the lock.
        let Link { next, bio } = unsafe { link.as_ptr().read() };
        fifo.head = next;
        if next.is_null() {
            fifo.tail = null_mut();
        }
        drop(fifo);
        // INVARIANT: a bio `map` deferred, off the FIFO: nobody ended it.
        Some(DeferredBio { bio })
    }

    /// Whether no bio is queued.
    pub(super) fn is_empty(&self) -> bool {
        self.fifo.lock().head.is_null()
    }
}

/// The parallel workqueue `<name>_rd` (`WQ_MEM_RECLAIM | WQ_UNBOUND`):
/// parallel bios wait for the backing device most of their time, so
/// several per CPU may be in flight (max_active max(16, 4 x possible
/// CPUs)), the device sees a queue and the decryption runs on every CPU.
/// Process context.
pub(super) fn parallel_workqueue(name: &CStr) -> Result<WorkQueue> {
    // SAFETY: the kernel's mask of possible CPUs, fixed at boot.
    let possible = unsafe { Cpumask::from_raw(&raw const kernel::bindings::__cpu_possible_mask) };
    let max = kernel::bindings::wq_consts_WQ_MAX_ACTIVE as i32;
    let active = (4 * possible.weight() as i32).clamp(16, max);
    let name = CString::try_from_fmt(fmt!("{}_rd", name.to_str().unwrap_or("mlsdisk")))?;
    WorkQueue::unbound_active(&name, active)
}

/// The owner of a parallel bio's work item: its per-bio data, whose bio
/// the work function serves and ends.
///
/// # Invariants
///
/// Points at the initialised `PerBio<P>` of a bio that [`push_parallel`]
/// queued and nobody has ended, whose `owner` is alive until the work
/// function returned.
pub(super) struct PerBioRef<P: ServeParallel>(NonNull<PerBio<P>>);

// SAFETY: the bio may be served and ended on any thread; `P` is `Sync`.
unsafe impl<P: ServeParallel> Send for PerBioRef<P> {}

// SAFETY: the `work_struct` passed to `queue_work_on` is in the per-bio
// data of a bio that nobody ends before its work function runs (type
// invariant), so it stays valid until then.
unsafe impl<P: ServeParallel> RawWorkItem<0> for PerBioRef<P> {
    type EnqueueOutput = bool;

    unsafe fn __enqueue<F>(self, queue_work_on: F) -> bool
    where
        F: FnOnce(*mut work_struct) -> bool,
    {
        // SAFETY: a valid `PerBio<P>` (type invariant).
        let work = unsafe { Work::raw_get(PerBio::<P>::raw_get_work(self.0.as_ptr())) };
        queue_work_on(work)
    }
}

// SAFETY: [`push_parallel`] initialises the work item with `Work::new`,
// which installs this `run` (`PerBio<P>`'s `WorkItem::Pointer` is
// `PerBioRef<P>`).
unsafe impl<P: ServeParallel> WorkItemPointer<0> for PerBioRef<P> {
    unsafe extern "C" fn run(ptr: *mut work_struct) {
        // SAFETY: `__enqueue` queued the `work` field of a `PerBio<P>`.
        let pio = unsafe { PerBio::<P>::work_container_of(ptr.cast()) };
        // INVARIANT: queued by `push_parallel`, not yet served.
        let Some(pio) = NonNull::new(pio) else {
            return;
        };
        <PerBio<P> as WorkItem>::run(PerBioRef(pio));
    }
}

impl<P: ServeParallel> WorkItem for PerBio<P> {
    type Pointer = PerBioRef<P>;

    fn run(this: PerBioRef<P>) {
        let pio = this.0.as_ptr();
        // SAFETY: written by `push_parallel` (type invariant of `PerBioRef`).
        let (owner, bio) = unsafe { ((*pio).owner, (*pio).link.bio) };
        // SAFETY: alive until this function returned (type invariant).
        let owner = unsafe { &*owner };
        // Ending the bio may free it with its per-bio data: neither is
        // touched afterwards (the workqueue lets a work function free its
        // item).
        // INVARIANT: a deferred bio that nobody has ended yet.
        owner.serve_parallel(DeferredBio { bio });
    }
}

/// Queues `bio` on the parallel workqueue `wq` (any context, no
/// sleeping), to be served by `owner`.
///
/// # Safety
///
/// As [`per_bio`]; the bio is ours from now on (`map` returns
/// `DM_MAPIO_SUBMITTED` for it), and `owner` stays alive until `wq` has
/// been flushed after this call.
pub(super) unsafe fn push_parallel<P: ServeParallel>(wq: &WorkQueue, owner: &P, bio: NonNull<bio>) {
    // SAFETY: the caller's promise.
    let pio = unsafe { per_bio::<P>(bio) };
    let raw = pio.as_ptr();
    // SAFETY: the bio's per-bio data, ours and unused by anyone else.
    unsafe {
        addr_of_mut!((*raw).owner).write(owner);
        addr_of_mut!((*raw).link).write(Link {
            next: null_mut(),
            bio,
        });
    }
    let init = new_work!("mlsdisk_pio");
    // SAFETY: the `work` field of the per-bio data, writable and not moved
    // until the bio ends, which its work function does.
    unsafe { pin_init::raw_init(addr_of_mut!((*raw).work), init) };
    // INVARIANT: initialised above; the owner outlives the flush. A freshly
    // initialised item is never pending: it is queued.
    let _ = wq.queue().enqueue(PerBioRef(pio));
}
