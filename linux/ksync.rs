// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! [`KernelSync`]: the core's [`SyncPlatform`] (sleeping locks, condition
//! variables, background workers) on the kernel crate, as the table in the
//! core's `platform::sync` module doc says:
//!
//! - [`KMutex`]: a `kernel::sync::Mutex` (a `struct mutex`, sleeping,
//!   uninterruptible) pinned in its own `KBox`; the box is why
//!   [`Mutex::new`] can fail.
//! - [`KCondvar`]: a `kernel::sync::CondVar` (a wait queue head), pinned
//!   the same way; `wait` is the uninterruptible wait on the guard.
//! - [`SyncPlatform::spawn`]: `Queue::try_spawn(GFP_KERNEL, job)` on an
//!   unbound `WQ_MEM_RECLAIM` workqueue ([`SyncWorkqueue`]). The 7.3 kernel
//!   crate has no owned workqueue type, only `Queue::from_raw` and the
//!   system queues; `system_unbound()` has no rescuer thread, so a job could
//!   wait for a new kworker that memory pressure prevents, while the block
//!   device's own writeback waits for that job. So the queue is allocated
//!   with `alloc_workqueue` through the kernel crate's bindings (no C
//!   helper needed) and wrapped with `Queue::from_raw`.
//! - [`LockClass`]: one static lock class key per variant for mutexes and
//!   another per variant for condition variables (`static_lock_class!()` in
//!   each `match` arm), so lockdep tells the engine's nesting locks apart.
//!
//! [`selftest`] runs the whole thing at module load: jobs on the workers
//! contending for one mutex, the loader sleeping on a condition variable
//! until they finish, a [`Task`] result, the lock classes, and [`PageBuf`]
//! alignment.

use core::ops::{Deref, DerefMut};
use core::pin::Pin;
use core::ptr;
use core::sync::atomic::{AtomicU32, Ordering};

use kernel::bindings;
use kernel::prelude::*;
use kernel::static_lock_class;
use kernel::sync::{Arc, CondVar, LockClassKey};
use kernel::workqueue::Queue;
use mlsdisk_core::platform::{
    Condvar, LockClass, Mutex, MutexGuard, PageBuf, SyncPlatform, Task, PAGE_SIZE,
};
use mlsdisk_core::{Error as CoreError, ErrorKind, Result as CoreResult};

/// An unbound, memory-reclaim workqueue for background jobs, destroyed
/// (after running every job still queued) when dropped.
pub(crate) struct SyncWorkqueue {
    queue: &'static Queue,
}

impl SyncWorkqueue {
    /// Allocates the workqueue (process context; `name` is copied).
    ///
    /// # Safety
    ///
    /// Every [`KernelSync`] made by [`Self::platform`] must be gone before
    /// the returned value is dropped, except copies owned by jobs queued on
    /// it: dropping drains the queue, so those jobs finish (and drop their
    /// copies) before the queue is freed. The module keeps the queue from
    /// load to unload, or, for the load-time self-test, for the length of
    /// the test.
    pub(crate) unsafe fn new(name: &CStr) -> Result<Self> {
        // SAFETY: `alloc_workqueue` may sleep: we are in process context
        // (the caller's contract). The format is a constant "%s" whose one
        // argument is a NUL-terminated string that outlives the call (the
        // name is copied into the queue). No other requirement.
        let raw = unsafe {
            bindings::alloc_workqueue_noprof(
                c"%s".as_char_ptr(),
                bindings::wq_flags_WQ_UNBOUND | bindings::wq_flags_WQ_MEM_RECLAIM,
                0,
                name.as_char_ptr(),
            )
        };
        if raw.is_null() {
            return Err(ENOMEM);
        }
        // SAFETY: `raw` is a live workqueue that only `Drop` destroys; by
        // the contract of this function, no reference made from it is used
        // after that (the `'static` is that contract).
        let queue = unsafe { Queue::from_raw(raw) };
        Ok(Self { queue })
    }

    /// The platform handle whose jobs run on this queue.
    pub(crate) fn platform(&self) -> KernelSync {
        KernelSync { queue: self.queue }
    }
}

impl Drop for SyncWorkqueue {
    fn drop(&mut self) {
        // `Queue` is a transparent wrapper of `struct workqueue_struct`.
        let raw = ptr::from_ref(self.queue)
            .cast_mut()
            .cast::<bindings::workqueue_struct>();
        // SAFETY: `raw` came from `alloc_workqueue` in `new` and is
        // destroyed only here, once. `destroy_workqueue` drains the queue
        // (queued jobs, and jobs they queue, run first); by the contract of
        // `new` nothing else uses the queue afterwards.
        unsafe { bindings::destroy_workqueue(raw) };
    }
}

/// The kernel's [`SyncPlatform`]. A handle, cheap to copy; valid while the
/// [`SyncWorkqueue`] it came from lives.
#[derive(Clone, Copy)]
pub(crate) struct KernelSync {
    queue: &'static Queue,
}

/// The value inside a [`KMutex`].
///
/// The kernel's guard gives `&mut` access only to `Unpin` data, and the
/// engine may lock any `T`. This wrapper is `Unpin` whatever `T` is, which
/// is sound because nothing ever pins the `T` inside it: it is moved in by
/// value and only reached through `&`/`&mut`, never as `Pin<&mut T>`.
struct Slot<T>(T);

impl<T> Unpin for Slot<T> {}

/// A sleeping kernel mutex around a `T`, for [`KernelSync`].
pub(crate) struct KMutex<T>(Pin<KBox<kernel::sync::Mutex<Slot<T>>>>);

/// Proof of holding a [`KMutex`]; unlocks when dropped.
pub(crate) struct KMutexGuard<'a, T>(kernel::sync::MutexGuard<'a, Slot<T>>);

impl<T> Deref for KMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0 .0
    }
}

impl<T> DerefMut for KMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0 .0
    }
}

fn oom(what: &'static str) -> CoreError {
    CoreError::new(ErrorKind::OutOfMemory, what)
}

/// The name and lockdep class of a mutex of `class`.
fn mutex_class(class: LockClass) -> (&'static CStr, Pin<&'static LockClassKey>) {
    match class {
        LockClass::LogState => (c"mlsdisk_log_state", static_lock_class!()),
        LockClass::LogPool => (c"mlsdisk_log_pool", static_lock_class!()),
        LockClass::Task => (c"mlsdisk_task", static_lock_class!()),
        // `Other`, and variants added later until they get their own arm.
        _ => (c"mlsdisk_other", static_lock_class!()),
    }
}

/// The name and lockdep class of a condition variable of `class` (its
/// wait queue's spinlock: a different kind of lock, so other keys).
fn condvar_class(class: LockClass) -> (&'static CStr, Pin<&'static LockClassKey>) {
    match class {
        LockClass::LogState => (c"mlsdisk_log_state_cv", static_lock_class!()),
        LockClass::LogPool => (c"mlsdisk_log_pool_cv", static_lock_class!()),
        LockClass::Task => (c"mlsdisk_task_cv", static_lock_class!()),
        _ => (c"mlsdisk_other_cv", static_lock_class!()),
    }
}

impl<T: Send> Mutex<T> for KMutex<T> {
    type Guard<'a>
        = KMutexGuard<'a, T>
    where
        Self: 'a;

    fn new(value: T, class: LockClass) -> CoreResult<Self> {
        let (name, key) = mutex_class(class);
        KBox::pin_init(kernel::sync::Mutex::new(Slot(value), name, key), GFP_KERNEL)
            .map(Self)
            .map_err(|_| oom("cannot allocate a mutex"))
    }

    fn lock(&self) -> KMutexGuard<'_, T> {
        KMutexGuard(self.0.lock())
    }
}

/// A kernel condition variable, for [`KernelSync`].
pub(crate) struct KCondvar(Pin<KBox<CondVar>>);

impl Condvar<KernelSync> for KCondvar {
    fn new(class: LockClass) -> CoreResult<Self> {
        let (name, key) = condvar_class(class);
        KBox::pin_init(CondVar::new(name, key), GFP_KERNEL)
            .map(Self)
            .map_err(|_| oom("cannot allocate a condition variable"))
    }

    fn wait<'a, T: Send>(
        &self,
        mut guard: MutexGuard<'a, KernelSync, T>,
    ) -> MutexGuard<'a, KernelSync, T>
    where
        KMutex<T>: 'a,
    {
        self.0.wait(&mut guard.0);
        guard
    }

    fn notify_one(&self) {
        self.0.notify_one();
    }

    fn notify_all(&self) {
        self.0.notify_all();
    }
}

impl SyncPlatform for KernelSync {
    type Mutex<T: Send> = KMutex<T>;
    type Condvar = KCondvar;

    fn spawn<F>(&self, job: F) -> CoreResult<()>
    where
        F: FnOnce() + Send + 'static,
    {
        self.queue
            .try_spawn(GFP_KERNEL, job)
            .map_err(|_| oom("cannot queue a background job"))
    }
}

// ---------------------------------------------------------------------------
// Load-time self-test.

/// Background jobs in the contention test.
const JOBS: u32 = 4;
/// Locked increments per job.
const ROUNDS: u64 = 2000;
/// `cpu_relax` calls between reading and writing the counter: a window in
/// which a second holder, if the lock let one in, would lose an update.
const WINDOW: u32 = 32;
/// Page counts of the page-aligned buffers (300 pages is past the kmalloc
/// limit: the vmalloc path).
const PAGE_BUF_SIZES: [usize; 6] = [1, 2, 3, 17, 64, 300];

struct Counter {
    value: u64,
    finished: u32,
    /// Bit `n % 64` set when an increment ran on CPU `n`.
    cpus: u64,
    /// Jobs that ran on the loader's own thread or outside a workqueue
    /// worker (must be none).
    off_worker: u32,
}

struct Shared {
    counter: KMutex<Counter>,
    done: KCondvar,
    /// Holders of `counter` right now, counted outside the lock.
    holders: AtomicU32,
    /// Times a holder found another one inside.
    overlaps: AtomicU32,
}

/// What the self-test measured.
struct Report {
    total: u64,
    cpus: u32,
    waits: u32,
    task_sum: u64,
}

/// One job: `ROUNDS` increments under the mutex, then "finished" and a
/// notification.
fn contend(shared: &Shared, loader: usize) {
    for _ in 0..ROUNDS {
        let mut g = shared.counter.lock();
        if shared.holders.fetch_add(1, Ordering::SeqCst) != 0 {
            shared.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        let v = g.value;
        for _ in 0..WINDOW {
            kernel::processor::cpu_relax();
        }
        g.value = v.wrapping_add(1);
        g.cpus |= 1u64 << (kernel::cpu::CpuId::current().as_u32() % 64);
        shared.holders.fetch_sub(1, Ordering::SeqCst);
    }
    let mut g = shared.counter.lock();
    g.finished += 1;
    if !on_worker(loader) {
        g.off_worker += 1;
    }
    drop(g);
    // After unlocking: a waiter that saw `finished` too small is already on
    // the wait queue (it queued itself before releasing the lock).
    shared.done.notify_all();
}

/// The running task, as a number (only compared, never dereferenced).
///
/// Not `current!().pid()`: in this kernel build the kernel crate's
/// `Task::pid()` reads the same wrong value in every task (seen in the
/// guest), so task identity is the `task_struct` address instead.
fn current_task() -> usize {
    kernel::task::Task::current_raw() as usize
}

/// Whether the caller is a workqueue worker running a work item, on a
/// task other than `loader`'s.
fn on_worker(loader: usize) -> bool {
    // SAFETY: `current_work` only reads the current task's worker state
    // (NULL outside a worker); it has no preconditions.
    let work = unsafe { bindings::current_work() };
    !work.is_null() && current_task() != loader
}

fn check(ok: bool, why: &'static str) -> CoreResult<()> {
    if ok {
        Ok(())
    } else {
        Err(CoreError::new(ErrorKind::InvalidState, why))
    }
}

fn run(sync: KernelSync) -> CoreResult<Report> {
    let loader = current_task();

    // Jobs on the workers contend for one mutex; the loader sleeps on the
    // condition variable until all of them said they finished.
    let shared = Arc::new(
        Shared {
            counter: KMutex::new(
                Counter {
                    value: 0,
                    finished: 0,
                    cpus: 0,
                    off_worker: 0,
                },
                LockClass::Other,
            )?,
            done: KCondvar::new(LockClass::Other)?,
            holders: AtomicU32::new(0),
            overlaps: AtomicU32::new(0),
        },
        GFP_KERNEL,
    )
    .map_err(|_| oom("cannot allocate the shared state"))?;
    // The loader holds the lock while it queues the jobs, so none can
    // finish before it waits: the wait must release the lock (or the jobs
    // never run) and the loader must be woken (or it never returns).
    let mut g = shared.counter.lock();
    let mut spawned = 0;
    for _ in 0..JOBS {
        let shared = shared.clone();
        if sync.spawn(move || contend(&shared, loader)).is_err() {
            break;
        }
        spawned += 1;
    }
    let mut waits = 0u32;
    while g.finished < spawned {
        g = shared.done.wait(g);
        waits = waits.saturating_add(1);
    }
    let (total, cpus, off_worker) = (g.value, g.cpus, g.off_worker);
    drop(g);
    check(spawned == JOBS, "cannot queue a background job")?;
    check(
        off_worker == 0,
        "a job ran on the loader's thread or outside a workqueue worker",
    )?;
    check(
        shared.overlaps.load(Ordering::SeqCst) == 0,
        "two jobs held the mutex at once",
    )?;
    check(
        total == u64::from(JOBS) * ROUNDS,
        "increments under the mutex were lost",
    )?;
    check(
        waits > 0,
        "the loader never slept on the condition variable",
    )?;

    // A task's result, computed on a worker.
    let task = Task::spawn(&sync, move || {
        ((1..=1000u64).sum::<u64>(), on_worker(loader))
    })?;
    let (task_sum, task_on_worker) = task.join()?;
    check(task_sum == 500_500, "the task returned a wrong result")?;
    check(task_on_worker, "the task did not run on a workqueue worker")?;

    // Every lock class: names as the core gives them, and the documented
    // nesting (pool inside state) on two different classes.
    for class in [
        LockClass::LogState,
        LockClass::LogPool,
        LockClass::Task,
        LockClass::Other,
    ] {
        check(
            mutex_class(class).0.to_bytes() == class.name().as_bytes(),
            "a lock class name differs from the core's",
        )?;
        KCondvar::new(class)?.notify_all();
    }
    let state = KMutex::new(1u32, LockClass::LogState)?;
    let pool = KMutex::new(2u32, LockClass::LogPool)?;
    {
        let mut s = state.lock();
        let mut p = pool.lock();
        *p += *s;
        *s = *p;
    }
    check(*state.lock() == 3, "nested locks lost a write")?;

    // Page-aligned buffers, small (kmalloc) to large (vmalloc).
    for n in PAGE_BUF_SIZES {
        let mut noise = KVec::<u8>::new();
        noise
            .extend_from_slice(&[1; 24], GFP_KERNEL)
            .map_err(|_| oom("cannot allocate"))?;
        let mut buf = PageBuf::new(n)?;
        check(
            buf.len() == n * PAGE_SIZE,
            "a page buffer has the wrong size",
        )?;
        check(
            (buf.as_ptr() as usize) % PAGE_SIZE == 0,
            "a page buffer is not page-aligned",
        )?;
        check(buf.iter().all(|&b| b == 0), "a page buffer is not zeroed")?;
        if let Some(last) = buf.last_mut() {
            *last = 0xa5;
        }
        check(
            buf.page(n - 1).and_then(|p| p.last()) == Some(&0xa5) && buf.page(n).is_none(),
            "a page buffer's pages are wrong",
        )?;
    }

    Ok(Report {
        total,
        cpus: cpus.count_ones(),
        waits,
        task_sum,
    })
}

/// Runs the self-test on a workqueue of its own and prints
/// `kernel sync selftest ok: ...`, or fails with the reason.
pub(crate) fn selftest() -> Result {
    // SAFETY: every `KernelSync` made from `wq` is a copy inside `run`,
    // which returns before `wq` is dropped at the end of this function; the
    // jobs capture no handle.
    let wq = unsafe { SyncWorkqueue::new(c"mlsdisk_sync") }.inspect_err(|e| {
        pr_err!(
            "kernel sync selftest failed: cannot allocate a workqueue: error {}\n",
            e.to_errno()
        );
    })?;
    let result = run(wq.platform());
    drop(wq);
    match result {
        Ok(r) => {
            pr_info!(
                "kernel sync selftest ok: {} jobs x {} locked increments = {} on an unbound WQ_MEM_RECLAIM workqueue, {} CPUs, 0 overlaps, loader woke {} times; task result {} from a worker; lock classes named as the core; PageBuf {}-{} pages page-aligned\n",
                JOBS,
                ROUNDS,
                r.total,
                r.cpus,
                r.waits,
                r.task_sum,
                PAGE_BUF_SIZES[0],
                PAGE_BUF_SIZES[PAGE_BUF_SIZES.len() - 1]
            );
            Ok(())
        }
        Err(why) => {
            pr_err!("kernel sync selftest failed: {:?}\n", why);
            Err(EINVAL)
        }
    }
}
