// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! The module's work-running layer, over the kernel's workqueue
//! abstractions (`kernel::workqueue`): [`WorkQueue`], a workqueue the
//! module allocates (7.3's Rust has `Queue` but no constructor; the
//! allocation is bindgen's binding of `alloc_workqueue_noprof`), and
//! [`Ordered`], the ordered queue with idle background work that both
//! devices run their writes, flushes and discards on:
//!
//! - one work item ([`kernel::workqueue::Work`], enqueued through an
//!   `Arc`) on an ordered `WQ_MEM_RECLAIM` workqueue (it serves the I/O
//!   reclaim may be waiting for) serves what is queued, oldest first;
//! - when nothing is queued, it runs one bounded step of the server's
//!   background work and, if more is to do, queues itself again, so that
//!   what was queued meanwhile goes first;
//! - [`Ordered::pause`] stops the background work and waits for a running
//!   work item; [`Ordered::resume`] starts it again.
//!
//! The server ([`Serve`]) brings the queue (a dm bio list, a blk-mq
//! request FIFO), serving one item, and the background step (which asks
//! the core's `ParallelReads` whether a read waits for the engine).

use core::ptr::NonNull;

use kernel::bindings;
use kernel::new_spinlock_irq;
use kernel::prelude::*;
use kernel::sync::{Arc, ArcBorrow, SpinLockIrq};
use kernel::workqueue::{impl_has_work, new_work, Queue, Work, WorkItem};

/// A workqueue the module allocated; destroyed (after it drained) on drop.
///
/// # Invariants
///
/// The pointer is a live workqueue from `alloc_workqueue`, destroyed only
/// by `drop`.
pub(crate) struct WorkQueue(NonNull<bindings::workqueue_struct>);

// SAFETY: a workqueue may be used and destroyed from any thread.
unsafe impl Send for WorkQueue {}
// SAFETY: queueing and flushing are thread-safe.
unsafe impl Sync for WorkQueue {}

impl WorkQueue {
    /// An ordered (one work item at a time), unbound `WQ_MEM_RECLAIM`
    /// workqueue named `name`. Process context.
    pub(crate) fn ordered(name: &CStr) -> Result<Self> {
        let flags = bindings::wq_flags_WQ_MEM_RECLAIM
            | bindings::wq_flags_WQ_UNBOUND
            | bindings::wq_flags___WQ_ORDERED;
        Self::alloc(name, flags, 1)
    }

    /// An unbound `WQ_MEM_RECLAIM` workqueue named `name` with the
    /// default concurrency. Process context.
    pub(crate) fn unbound(name: &CStr) -> Result<Self> {
        Self::unbound_active(name, 0)
    }

    /// An unbound `WQ_MEM_RECLAIM` workqueue named `name` that runs up to
    /// `max_active` work items at once (0: the default). Process context.
    pub(crate) fn unbound_active(name: &CStr, max_active: kernel::ffi::c_int) -> Result<Self> {
        let flags = bindings::wq_flags_WQ_MEM_RECLAIM | bindings::wq_flags_WQ_UNBOUND;
        Self::alloc(name, flags, max_active)
    }

    fn alloc(
        name: &CStr,
        flags: bindings::wq_flags,
        max_active: kernel::ffi::c_int,
    ) -> Result<Self> {
        // SAFETY: a "%s" format with one C string argument, which the
        // workqueue copies into its own name; process context.
        let wq = unsafe {
            bindings::alloc_workqueue_noprof(
                kernel::c_str!("%s").as_char_ptr(),
                flags,
                max_active,
                name.as_char_ptr(),
            )
        };
        // INVARIANT: just allocated, destroyed only by `drop`.
        NonNull::new(wq).map(Self).ok_or(ENOMEM)
    }

    /// The C workqueue.
    pub(crate) fn as_ptr(&self) -> *mut bindings::workqueue_struct {
        self.0.as_ptr()
    }

    /// The queue, to enqueue work items on.
    pub(crate) fn queue(&self) -> &Queue {
        // SAFETY: live until `drop` (type invariant), which `&self` outlasts.
        unsafe { Queue::from_raw(self.0.as_ptr()) }
    }

    /// Waits for every work item queued so far to finish.
    pub(crate) fn flush(&self) {
        // SAFETY: a live workqueue (type invariant); process context.
        unsafe { bindings::__flush_workqueue(self.0.as_ptr()) };
    }
}

impl Drop for WorkQueue {
    fn drop(&mut self) {
        // SAFETY: live (type invariant), destroyed once, here; it drains
        // first.
        unsafe { bindings::destroy_workqueue(self.0.as_ptr()) };
    }
}

/// What an [`Ordered`] queue serves.
pub(crate) trait Serve: Send + Sync + 'static {
    /// What is queued (a bio, a request).
    type Item;
    /// Takes the oldest queued item. Called only by the work item.
    fn pop(&self) -> Option<Self::Item>;
    /// Serves (and ends) one item.
    fn serve(&self, item: Self::Item);
    /// One bounded step of background work, run when nothing is queued;
    /// returns whether more is to do.
    fn idle_step(&self) -> bool;
}

/// The ordered queue with idle background work (see the module
/// documentation). Shared through an `Arc`; whoever made it calls
/// [`Ordered::pause`] before dropping the last reference to it, and no
/// kick comes after that.
#[pin_data]
pub(crate) struct Ordered<S: Serve> {
    #[pin]
    work: Work<Ordered<S>>,
    /// No background work (and no kick queues the work item); taken
    /// around every enqueue, so that [`Ordered::pause`] has no kick after
    /// it.
    #[pin]
    paused: SpinLockIrq<bool>,
    wq: WorkQueue,
    /// What the queue serves.
    #[pin]
    pub(crate) server: S,
}

impl_has_work! {
    impl{S: Serve} HasWork<Ordered<S>> for Ordered<S> { self.work }
}

impl<S: Serve> WorkItem for Ordered<S> {
    type Pointer = Arc<Ordered<S>>;

    fn run(this: Arc<Ordered<S>>) {
        while let Some(item) = this.server.pop() {
            this.server.serve(item);
        }
        // Nothing queued: one step of background work, then again if more
        // is to do (what is queued meanwhile goes first).
        if *this.paused.lock() {
            return;
        }
        if this.server.idle_step() {
            Self::kick_idle(this.as_arc_borrow());
        }
    }
}

impl<S: Serve> Ordered<S> {
    /// A queue serving `server` on a workqueue named `name`; paused if
    /// `paused` (no background work until [`Ordered::resume`]).
    pub(crate) fn new<E, I>(name: &CStr, server: I, paused: bool) -> Result<Arc<Self>>
    where
        I: PinInit<S, E>,
        Error: From<E>,
    {
        let wq = WorkQueue::ordered(name)?;
        Arc::pin_init::<Error>(
            try_pin_init!(Self {
                work <- new_work!("mlsdisk_ordered"),
                paused <- new_spinlock_irq!(paused, "mlsdisk_ordered_paused"),
                wq,
                server <- server,
            }? Error),
            GFP_KERNEL,
        )
    }

    /// Has the work item serve what was queued. Any context. A kick after
    /// [`Ordered::pause`] still queues the work item (queued items must be
    /// served), but not after the queue is torn down (see the type's
    /// documentation).
    pub(crate) fn kick(this: ArcBorrow<'_, Self>) {
        // Already queued: that run serves it (the `Arc` comes back and is
        // dropped here, never the last reference).
        let _ = this.wq.queue().enqueue(Arc::from(this));
    }

    /// Kicks for background work only: not while paused.
    pub(crate) fn kick_idle(this: ArcBorrow<'_, Self>) {
        let paused = this.paused.lock();
        if !*paused {
            let _ = this.wq.queue().enqueue(Arc::from(this));
        }
    }

    /// Stops background work and waits for a running or queued work item.
    /// Process context.
    pub(crate) fn pause(&self) {
        *self.paused.lock() = true;
        self.wq.flush();
    }

    /// Starts background work again.
    pub(crate) fn resume(this: ArcBorrow<'_, Self>) {
        *this.paused.lock() = false;
        Self::kick(this);
    }
}

/// A scope in which the kernel's allocations do no I/O (`GFP_NOIO`
/// implied), so that memory reclaim never writes back through the device
/// whose I/O is being served. Restored on drop.
pub(crate) struct NoIoScope(kernel::ffi::c_uint, core::marker::PhantomData<*mut ()>);

impl NoIoScope {
    /// Enters the scope for the current task.
    pub(crate) fn enter() -> Self {
        // SAFETY: marks the current task; paired with the restore in `drop`
        // on the same task (the scope is not `Send`, so it is dropped on this task).
        Self(
            unsafe { crate::kernel_platform::bindings::mlsdisk_noio_save() },
            core::marker::PhantomData,
        )
    }
}

impl Drop for NoIoScope {
    fn drop(&mut self) {
        // SAFETY: restores the flags saved by `enter` on this task.
        unsafe { crate::kernel_platform::bindings::mlsdisk_noio_restore(self.0) };
    }
}
