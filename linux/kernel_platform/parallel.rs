// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! [`KernelParallel`]: the core's [`Parallel`] runner on a kernel
//! workqueue, so the write path seals a buffer's blocks on several CPUs.
//!
//! `run` hands the jobs to `mlsdisk_par_run` (`kernel_platform/parallel.c`): job 0 on the
//! calling thread, the others as work items on the module's unbound
//! `mlsdisk_par` workqueue, then a wait for all of them. The jobs borrow
//! the caller's buffers; that is sound because the C function returns only
//! after every job has returned. The workqueue lives from module load
//! ([`ParallelWorkqueue::new`]) to unload, after every disk is gone.

use core::ffi::{c_uint, c_void};

use kernel::prelude::*;
use mlsdisk_core::platform::{Job, Parallel};

/// The C side (`parallel.c`, declared in `bindings/par_helpers.h`).
use super::bindings as ffi;

/// The module's workqueue for parallel jobs; destroyed when dropped.
pub(crate) struct ParallelWorkqueue(());

impl ParallelWorkqueue {
    /// Allocates the workqueue (module init, process context).
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: called once at module init, before any disk exists.
        match unsafe { ffi::mlsdisk_par_init() } {
            0 => Ok(Self(())),
            e => Err(Error::from_errno(e)),
        }
    }
}

impl Drop for ParallelWorkqueue {
    fn drop(&mut self) {
        // SAFETY: module unload: every disk, and so every KernelParallel
        // user, is gone; destroy_workqueue drains what is left.
        unsafe { ffi::mlsdisk_par_exit() };
    }
}

/// Runs jobs on the module's workqueue. See the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct KernelParallel;

/// Calls job `idx` of the slice `ctx` points to.
///
/// # Safety
///
/// `ctx` is the start of a live `[Job<'_>]` of more than `idx` elements
/// that nothing else uses while the call runs, and `idx` is passed once.
unsafe extern "C" fn call_job(ctx: *mut c_void, idx: c_uint) {
    // SAFETY: per the contract, `ctx.add(idx)` is an element of the live
    // slice and this is the only reference to it (each index is called
    // exactly once, and `run` does not touch the slice meanwhile).
    let job: &mut Job<'_> = unsafe { &mut *ctx.cast::<Job<'_>>().add(idx as usize) };
    job();
}

impl Parallel for KernelParallel {
    fn width(&self) -> usize {
        // SAFETY: reads the online CPU count; no other effect.
        unsafe { ffi::mlsdisk_par_width() as usize }
    }

    fn run(&self, jobs: &mut [Job<'_>]) {
        let Ok(n) = c_uint::try_from(jobs.len()) else {
            for job in jobs.iter_mut() {
                job();
            }
            return;
        };
        // SAFETY: `jobs` stays borrowed (alive, unused here) until
        // `mlsdisk_par_run` returns, which it does only after calling
        // `call_job` exactly once for each index below `n = jobs.len()`.
        // The jobs are `Send`, so running them on workers is allowed.
        unsafe { ffi::mlsdisk_par_run(Some(call_job), jobs.as_mut_ptr().cast::<c_void>(), n) };
    }
}
