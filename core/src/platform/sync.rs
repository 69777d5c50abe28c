//! Sleeping locks, condition variables, background workers and page-aligned
//! buffers: the threading half of the platform boundary.
//!
//! The engine asks for these through [`SyncPlatform`], passed in explicitly
//! like [`super::Crypto`] (no global). Userspace gets them from `std`
//! (`StdSync`, feature `std`); the kernel module implements the same
//! traits on the `kernel` crate. Everything here may sleep, so it is for
//! process context only (the dm map callback and blk-mq `queue_rq` already
//! hand their work to a kernel worker before the engine runs).
//!
//! # How the kernel implements each piece
//!
//! | here | kernel (`rust/kernel`) |
//! |---|---|
//! | [`Mutex::new`] | `KBox::pin_init(kernel::new_mutex!(value, name), GFP_KERNEL)?`: the lock must not move after init, so it lives pinned in its own box; the box allocation is why `new` is fallible |
//! | [`Mutex::lock`] | `kernel::sync::Mutex::lock` (sleeping, uninterruptible), the guard is `kernel::sync::MutexGuard<'_, T>` |
//! | [`Condvar::new`] | `KBox::pin_init(kernel::new_condvar!(name), GFP_KERNEL)?` |
//! | [`Condvar::wait`] | `CondVar::wait(&mut guard)` (uninterruptible), then hand the guard back |
//! | [`Condvar::notify_one`] / [`Condvar::notify_all`] | `CondVar::notify_one` / `notify_all` |
//! | [`SyncPlatform::spawn`] | `Queue::try_spawn(GFP_KERNEL, job)` on an unbound `WQ_MEM_RECLAIM` workqueue the module allocates once (a block device's background work must make progress under memory pressure); a failed allocation is `ENOMEM`, i.e. an `Err` here |
//! | [`PageBuf`] | nothing: it is a core type over the global allocator (the module's allocator is `kvmalloc`) |
//!
//! [`LockClass`] names the lock for lockdep: the kernel implementation keeps
//! one static `LockClassKey` per variant (a `match` whose arms each use
//! `kernel::static_lock_class!()`), so two engine locks that nest (see the
//! lock order in [`crate::log`]) are different classes and lockdep checks
//! their order instead of reporting recursive locking.
//!
//! Nothing here needs `'static` except the job handed to a worker, which the
//! kernel needs too (a work item outlives the call that queued it). Guards
//! are not required to be `Send` (a kernel guard must be dropped on the
//! thread that took it). A poisoned `std` lock (a test thread panicked while
//! holding it) is taken anyway: the engine never panics, and the kernel has
//! no poisoning.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ops::{Deref, DerefMut};

use crate::{Error, ErrorKind, Result};

/// Which engine lock a mutex or condition variable is, for the kernel's
/// lock validator (one lock class per variant). Userspace ignores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockClass {
    /// The committed state of a shared log store (held across a commit).
    LogState,
    /// The chunk pool of a log store (short, nests inside `LogState`).
    LogPool,
    /// The result slot of a background task ([`Task`]).
    Task,
    /// Anything else (tests, tools).
    Other,
}

impl LockClass {
    /// A name for the lock (the kernel passes it to lockdep).
    pub fn name(self) -> &'static str {
        match self {
            Self::LogState => "mlsdisk_log_state",
            Self::LogPool => "mlsdisk_log_pool",
            Self::Task => "mlsdisk_task",
            Self::Other => "mlsdisk_other",
        }
    }
}

/// A sleeping mutual-exclusion lock around a `T`.
pub trait Mutex<T: Send>: Send + Sync + Sized {
    /// Proof of holding the lock; gives access to the value.
    type Guard<'a>: DerefMut<Target = T>
    where
        Self: 'a;

    /// A new lock around `value`. Fails (`OutOfMemory`) when the platform
    /// cannot allocate it (the kernel's pinned lock lives in its own box).
    fn new(value: T, class: LockClass) -> Result<Self>;

    /// Takes the lock, sleeping until it is free. Not reentrant: taking a
    /// lock the caller holds deadlocks.
    fn lock(&self) -> Self::Guard<'_>;
}

/// The guard of platform `P`'s mutex around a `T`.
pub type MutexGuard<'a, P, T> = <<P as SyncPlatform>::Mutex<T> as Mutex<T>>::Guard<'a>;

/// A condition variable that waits on a guard of the same platform's mutex.
pub trait Condvar<P: SyncPlatform + ?Sized>: Send + Sync + Sized {
    /// A new condition variable (fallible, like [`Mutex::new`]).
    fn new(class: LockClass) -> Result<Self>;

    /// Releases the lock behind `guard`, sleeps until notified, takes the
    /// lock again and gives the guard back. Wake-ups may be spurious:
    /// callers wait in a loop over their condition.
    fn wait<'a, T: Send>(&self, guard: MutexGuard<'a, P, T>) -> MutexGuard<'a, P, T>
    where
        P::Mutex<T>: 'a;

    /// Wakes one waiter, if any.
    fn notify_one(&self);

    /// Wakes every waiter.
    fn notify_all(&self);
}

/// What the engine needs from the platform to run several threads: sleeping
/// locks, condition variables and background workers. See the module doc
/// for the kernel's implementation of each.
pub trait SyncPlatform: Send + Sync {
    /// A sleeping mutex around a `T`.
    type Mutex<T: Send>: Mutex<T>;
    /// A condition variable for [`Self::Mutex`].
    type Condvar: Condvar<Self>;

    /// Runs `job` once on a background worker and returns without waiting.
    /// Fails when no worker can be had (out of memory, too many threads);
    /// the job is then dropped without running. [`Task::spawn`] adds a
    /// result and a way to wait for it.
    fn spawn<F>(&self, job: F) -> Result<()>
    where
        F: FnOnce() + Send + 'static;
}

/// A job running on a worker, whose result can be waited for.
///
/// Built on [`SyncPlatform`] alone (a mutex-guarded slot and a condition
/// variable), so every platform has it.
pub struct Task<P: SyncPlatform, R: Send> {
    shared: Arc<TaskShared<P, R>>,
}

struct TaskShared<P: SyncPlatform, R: Send> {
    slot: P::Mutex<Option<Result<R>>>,
    done: P::Condvar,
}

/// Puts the job's result in the slot, or, if the job never finished (a
/// panicking test job unwinds through this), an error, and wakes the waiter.
struct Finish<P: SyncPlatform, R: Send> {
    shared: Arc<TaskShared<P, R>>,
    result: Option<R>,
}

impl<P: SyncPlatform, R: Send> Drop for Finish<P, R> {
    fn drop(&mut self) {
        let r = self.result.take().ok_or(Error::new(
            ErrorKind::InvalidState,
            "background job ended without a result",
        ));
        *self.shared.slot.lock() = Some(r);
        self.shared.done.notify_all();
    }
}

impl<P, R> Task<P, R>
where
    P: SyncPlatform + 'static,
    R: Send + 'static,
{
    /// Runs `job` on one of `platform`'s workers.
    pub fn spawn<F>(platform: &P, job: F) -> Result<Self>
    where
        F: FnOnce() -> R + Send + 'static,
    {
        let shared = Arc::new(TaskShared::<P, R> {
            slot: P::Mutex::new(None, LockClass::Task)?,
            done: P::Condvar::new(LockClass::Task)?,
        });
        let finish = Finish {
            shared: shared.clone(),
            result: None,
        };
        platform.spawn(move || {
            // Bind the whole guard inside the job, so that it drops (and
            // publishes the result) when the job ends, however it ends.
            let mut finish = finish;
            finish.result = Some(job());
        })?;
        Ok(Self { shared })
    }

    /// Whether the job has finished.
    pub fn is_done(&self) -> bool {
        self.shared.slot.lock().is_some()
    }

    /// Sleeps until the job has finished and returns its result.
    pub fn join(self) -> Result<R> {
        let mut g = self.shared.slot.lock();
        loop {
            if let Some(r) = g.take() {
                return r;
            }
            g = self.shared.done.wait(g);
        }
    }
}

/// Bytes of a page (and of a block).
pub const PAGE_SIZE: usize = 4096;

/// A zeroed, page-aligned byte buffer of whole pages, without `unsafe`.
///
/// The first page starts at an address that is a multiple of
/// [`PAGE_SIZE`], so each 4 KiB block of the buffer lies in exactly one
/// page. That is what lets the kernel shim hand a block buffer to a bio page
/// by page (`virt_to_page`/`vmalloc_to_page` of each block, one `bio_vec`
/// per block, no bounce copy) and what `O_DIRECT` file I/O in userspace
/// needs. Use it for block buffers that go to the backing device.
///
/// How: it asks the allocator for exactly the bytes needed and keeps them
/// if they happen to be page-aligned (the kernel's `kvmalloc` gives page
/// alignment for these sizes); otherwise it allocates one page more and
/// starts at the first page boundary inside (the address is read as a
/// number; the buffer never grows, so it never moves).
pub struct PageBuf {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl PageBuf {
    /// A zeroed buffer of `npages` pages (`OutOfMemory` if it cannot be had).
    pub fn new(npages: usize) -> Result<Self> {
        let len = npages.checked_mul(PAGE_SIZE).ok_or(Error::new(
            ErrorKind::InvalidArgument,
            "page buffer too large",
        ))?;
        let raw = crate::fallible::filled_vec(len, 0)?;
        if Self::misalignment(&raw) == 0 {
            return Ok(Self { raw, off: 0, len });
        }
        let slack = len.checked_add(PAGE_SIZE - 1).ok_or(Error::new(
            ErrorKind::InvalidArgument,
            "page buffer too large",
        ))?;
        let raw = crate::fallible::filled_vec(slack, 0)?;
        let off = (PAGE_SIZE - Self::misalignment(&raw)) % PAGE_SIZE;
        Ok(Self { raw, off, len })
    }

    fn misalignment(v: &[u8]) -> usize {
        (v.as_ptr() as usize) % PAGE_SIZE
    }

    /// Number of pages.
    pub fn npages(&self) -> usize {
        self.len / PAGE_SIZE
    }

    /// The buffer's bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.raw.get(self.off..self.off + self.len).unwrap_or(&[])
    }

    /// The buffer's bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let (off, len) = (self.off, self.len);
        self.raw.get_mut(off..off + len).unwrap_or(&mut [])
    }

    /// Page `i`, or `None` past the end.
    pub fn page(&self, i: usize) -> Option<&[u8]> {
        let start = i.checked_mul(PAGE_SIZE)?;
        self.as_slice().get(start..start.checked_add(PAGE_SIZE)?)
    }
}

impl Deref for PageBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl DerefMut for PageBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl core::fmt::Debug for PageBuf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PageBuf({} pages)", self.npages())
    }
}
