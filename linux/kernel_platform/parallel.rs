// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! [`KernelParallel`]: the core's [`Parallel`] runner on a kernel
//! workqueue, so the write path seals a buffer's blocks on several CPUs
//! and writes a flush's blocks to the backing device while the caller
//! updates the index, and a long read (at least 2 x 128 KiB to fetch)
//! reads and decrypts its parts on several CPUs; and the module's two
//! shared workqueues ([`ModuleWorkqueues`]).
//!
//! `run` runs job 0 on the calling thread and the others as work items
//! (`kernel::workqueue::Work`, one boxed item each, allocated in a
//! `GFP_NOIO` scope;
//! a job whose item cannot be allocated runs on the caller) on the
//! module's unbound `mlsdisk_par` workqueue (`WQ_MEM_RECLAIM`: a rescuer,
//! so the jobs make progress under memory pressure, as the write path
//! must), then waits on a completion until the last job signals it. The
//! jobs borrow the caller's buffers; that is sound because `run` returns
//! only after every job has returned. Every job runs in a `GFP_NOIO`
//! scope: the caller holds the engine's mutex, or serves a read, either of
//! which writeback may be waiting for, so an allocation in a job (the
//! crypto API's included) must not recurse into I/O through reclaim. Read
//! jobs and a flush's write job wait for their bios in the work item; the
//! reads and writes that queue them run on the devices' read workqueues
//! and ordered workers, never on `mlsdisk_par`, so a job never waits for
//! a job behind it on its own queue.
//!
//! The same init makes `mlsdisk_sync` (`WQ_MEM_RECLAIM | WQ_UNBOUND`), the
//! queue `on_worker` (`kernel_platform/bio.rs`) runs create, open, sync and
//! close of a disk on, on a fresh stack, with a rescuer thread. Both live
//! from module load ([`ModuleWorkqueues::new`]) to unload, after every disk
//! is gone.

use core::ffi::c_void;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use kernel::bindings;
use kernel::cpumask::Cpumask;
use kernel::prelude::*;
use kernel::sync::Completion;
use kernel::workqueue::{impl_has_work, new_work, Queue, Work, WorkItem};
use mlsdisk_core::platform::{Job, Parallel};

use super::work::NoIoScope;
use super::work::WorkQueue;

/// `mlsdisk_par`, published by [`ModuleWorkqueues`] (null outside its life).
static PAR_WQ: AtomicPtr<bindings::workqueue_struct> = AtomicPtr::new(null_mut());
/// `mlsdisk_sync`, as above.
static SYNC_WQ: AtomicPtr<bindings::workqueue_struct> = AtomicPtr::new(null_mut());

/// The module's shared workqueues; destroyed when dropped (module unload,
/// after every disk is gone).
pub(crate) struct ModuleWorkqueues {
    par: WorkQueue,
    sync: WorkQueue,
}

impl ModuleWorkqueues {
    /// Allocates both workqueues (module init, process context).
    pub(crate) fn new() -> Result<Self> {
        let par = WorkQueue::unbound(kernel::c_str!("mlsdisk_par"))?;
        let sync = WorkQueue::unbound(kernel::c_str!("mlsdisk_sync"))?;
        PAR_WQ.store(par.as_ptr(), Ordering::Release);
        SYNC_WQ.store(sync.as_ptr(), Ordering::Release);
        Ok(Self { par, sync })
    }
}

impl Drop for ModuleWorkqueues {
    fn drop(&mut self) {
        // Nothing uses them any more (every disk is gone); the fields
        // destroy them after this.
        PAR_WQ.store(null_mut(), Ordering::Release);
        SYNC_WQ.store(null_mut(), Ordering::Release);
        self.par.flush();
        self.sync.flush();
    }
}

/// The `mlsdisk_sync` workqueue, null before module init made it or after
/// unload destroyed it.
pub(crate) fn sync_wq() -> *mut bindings::workqueue_struct {
    SYNC_WQ.load(Ordering::Acquire)
}

/// Runs jobs on the module's workqueue. See the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct KernelParallel;

/// Calls the job `ctx` points to.
///
/// # Safety
///
/// `ctx` points at a live `Job<'_>` that nothing else uses while the call
/// runs, and each job is called once.
unsafe fn call_job(ctx: *mut c_void) {
    // SAFETY: per the contract, the only reference to a live job.
    let job: &mut Job<'_> = unsafe { &mut *ctx.cast::<Job<'_>>() };
    let _noio = NoIoScope::enter();
    job();
}

/// One job of a [`KernelParallel::run`] call, as a work item.
///
/// # Invariants
///
/// `job`, `left` and `done` point into the frame of the `run` call that
/// made the item, which waits on `done` until `left` reached 0, so they
/// are live until the item decremented `left`; `job` is this item's alone.
#[pin_data]
struct ParItem {
    #[pin]
    work: Work<ParItem>,
    job: *mut c_void,
    left: *const AtomicUsize,
    done: *const Completion,
}

// SAFETY: the pointers are to `Send` jobs and to thread-safe counters the
// `run` call keeps alive for the item (type invariant).
unsafe impl Send for ParItem {}

impl_has_work! {
    impl HasWork<ParItem> for ParItem { self.work }
}

/// One job is done: the last one wakes the `run` call.
///
/// # Safety
///
/// `left` and `done` are a live `run` call's, and each job calls this once.
unsafe fn job_done(left: *const AtomicUsize, done: *const Completion) {
    // SAFETY: live until `left` reaches 0 (the caller's promise); `done`
    // is touched only by the job that brings it there, before `run` can
    // return (it waits for `done`).
    unsafe {
        if (*left).fetch_sub(1, Ordering::AcqRel) == 1 {
            (*done).complete_all();
        }
    }
}

impl WorkItem for ParItem {
    type Pointer = Pin<KBox<ParItem>>;

    fn run(this: Pin<KBox<ParItem>>) {
        let (job, left, done) = (this.job, this.left, this.done);
        drop(this);
        // SAFETY: live, this item's alone, called once (type invariant).
        unsafe { call_job(job) };
        // SAFETY: the item's `run` call (type invariant), once.
        unsafe { job_done(left, done) };
    }
}

impl Parallel for KernelParallel {
    fn width(&self) -> usize {
        if PAR_WQ.load(Ordering::Acquire).is_null() {
            return 1;
        }
        // SAFETY: the kernel's mask of online CPUs, which lives forever;
        // its weight is `num_online_cpus()` (a snapshot either way).
        let online = unsafe { Cpumask::from_raw(&raw const bindings::__cpu_online_mask) };
        online.weight() as usize
    }

    fn run(&self, jobs: &mut [Job<'_>]) {
        let wq = PAR_WQ.load(Ordering::Acquire);
        let Some((first, rest)) = jobs.split_first_mut() else {
            return;
        };
        if rest.is_empty() || wq.is_null() {
            let _noio = NoIoScope::enter();
            first();
            for job in rest.iter_mut() {
                job();
            }
            return;
        }
        // SAFETY: the module's workqueue lives while any disk does, and a
        // disk's engine and its readers are the only callers.
        let queue = unsafe { Queue::from_raw(wq) };
        let left = AtomicUsize::new(rest.len());
        // The items are allocated in a no-I/O scope (`GFP_KERNEL` becomes
        // `GFP_NOIO`: the caller holds the engine's mutex or serves a read).
        let _noio = NoIoScope::enter();
        pin_init::stack_pin_init!(let done = Completion::new());
        let done: &Completion = &done;
        let (left_ptr, done_ptr): (*const AtomicUsize, *const Completion) = (&left, done);
        for job in rest.iter_mut() {
            let ctx = core::ptr::from_mut(job).cast::<c_void>();
            // INVARIANT: `ctx` is this job's alone; `left` and `done` live
            // until `wait_for_completion` below returned.
            let item = KBox::pin_init(
                pin_init!(ParItem {
                    work <- new_work!("mlsdisk_par"),
                    job: ctx,
                    left: left_ptr,
                    done: done_ptr,
                }),
                GFP_KERNEL,
            );
            match item {
                Ok(item) => queue.enqueue(item),
                Err(_) => {
                    // No memory for the item: run the job here.
                    // SAFETY: this job's only use; `left`/`done` are ours.
                    unsafe {
                        call_job(ctx);
                        job_done(left_ptr, done_ptr);
                    }
                }
            }
        }
        first();
        done.wait_for_completion();
    }
}
