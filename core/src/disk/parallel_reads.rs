//! Reads on many threads at once against one disk behind a lock: the
//! protocol the kernel module's devices and the userspace tools share.
//!
//! A read takes the engine's lock only to *plan* ([`ReadPlanner::plan_read`]:
//! write buffer, forward map, index); fetching the ciphertext and
//! authenticating it runs without the lock ([`DataReader::fetch`]), so
//! several reads are in flight to the device while writes, syncs and
//! background work take the engine one at a time. A fetch that fails (a
//! stale plan: the block moved or was rewritten meanwhile, see the
//! [`super::reader`] module; or a device error) is repeated whole under the
//! lock, where it cannot race; that result is final. So a read returns the
//! content of the last write acknowledged before it was planned (or one
//! racing with it), or an error, never other data.
//!
//! The same type keeps the rule that background work (compaction,
//! cleaning) never holds back a read by more than one step: the worker that
//! runs it asks [`ParallelReads::background_may_run`] before each step; a
//! step is put off while a read waits for the lock or plans, but never
//! twice in a row (compaction must keep up with the writes under a steady
//! stream of reads), and the last planning read reports that the worker
//! must be woken ([`ReadDone::wake`]).
//!
//! What a platform brings: the engine behind its lock ([`EngineLock`]; the
//! kernel module's sleeping mutex, or `std::sync::Mutex` with feature
//! `std`), and the threads (the kernel's read workqueue, the tools' queue
//! threads). Every method here is `&self`, so one `ParallelReads` is shared
//! by all of them.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::{DataReader, MlsDisk, ReadPlan};
use crate::bio::BlockSet;
use crate::{Error, ErrorKind, Result};

/// The half of an engine a read needs under the lock.
pub trait ReadPlanner {
    /// Fills what needs no device read and returns what is left for the
    /// [`DataReader`] to fetch (see [`MlsDisk::plan_read`]). An engine that
    /// does not split its reads reads everything here and returns an empty
    /// plan.
    fn plan_read(&mut self, lba: u64, buf: &mut [u8]) -> Result<ReadPlan>;
    /// Reads whole, under the lock (the fallback of a failed fetch).
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<()>;
}

impl<D: BlockSet> ReadPlanner for MlsDisk<D> {
    fn plan_read(&mut self, lba: u64, buf: &mut [u8]) -> Result<ReadPlan> {
        MlsDisk::plan_read(self, lba, buf)
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<()> {
        MlsDisk::read(self, lba, buf)
    }
}

/// The engine behind its lock, as the platform holds it.
pub trait EngineLock {
    /// The engine.
    type Engine: ReadPlanner + ?Sized;
    /// Runs `f` on the engine with the lock held (sleeping until it is
    /// free) and releases the lock before returning.
    fn locked<R>(&self, f: impl FnOnce(&mut Self::Engine) -> R) -> R;
}

#[cfg(feature = "std")]
impl<T: ReadPlanner> EngineLock for std::sync::Mutex<T> {
    type Engine = T;

    fn locked<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // A panicking thread poisons the lock; the engine never panics
        // itself, so its state is consistent: take it anyway.
        let mut guard = self
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }
}

/// The outcome of one read ([`ParallelReads::read`]).
#[must_use]
#[derive(Debug)]
pub struct ReadDone {
    /// The read's result; on error the buffer holds no plaintext of the
    /// blocks the device was to give.
    pub result: Result<()>,
    /// Background work was put off for the reads that were planning, and
    /// this read was the last of them: the platform must wake the worker
    /// that runs it.
    pub wake: bool,
}

/// The shared state of the reads of one engine (see the module
/// documentation).
pub struct ParallelReads<D> {
    /// Fetches planned reads (`None`: the engine does not split reads; its
    /// plans are always empty).
    reader: Option<DataReader<D>>,
    /// Reads waiting for the engine's lock or holding it to plan.
    planning: AtomicUsize,
    /// Background work was put off for a planning read; the last planning
    /// read reports it ([`ReadDone::wake`]).
    deferred: AtomicBool,
    /// The last background step was put off (only the worker that asks
    /// [`ParallelReads::background_may_run`] reads and writes this).
    put_off: AtomicBool,
    /// Reads whose fetch ran without the lock and succeeded.
    unlocked: AtomicU64,
    /// Fetches that failed and were repeated under the lock.
    rereads: AtomicU64,
}

impl<D: BlockSet> ParallelReads<D> {
    /// The reads of an engine whose plans `reader` fetches.
    pub fn new(reader: Option<DataReader<D>>) -> Self {
        Self {
            reader,
            planning: AtomicUsize::new(0),
            deferred: AtomicBool::new(false),
            put_off: AtomicBool::new(false),
            unlocked: AtomicU64::new(0),
            rereads: AtomicU64::new(0),
        }
    }

    /// Reads `buf.len() / 4096` blocks at `lba` of the engine behind
    /// `engine` (see the module documentation). May run on any number of
    /// threads at once.
    pub fn read<L: EngineLock + ?Sized>(&self, engine: &L, lba: u64, buf: &mut [u8]) -> ReadDone {
        self.planning.fetch_add(1, Ordering::SeqCst);
        let planned = engine.locked(|e| e.plan_read(lba, buf));
        // The last planning read takes over background work put off for it.
        let wake = self.planning.fetch_sub(1, Ordering::SeqCst) == 1
            && self.deferred.swap(false, Ordering::SeqCst);
        let result = match planned {
            Err(e) => Err(e),
            Ok(plan) if plan.is_empty() => Ok(()),
            Ok(plan) => {
                let fetched = match &self.reader {
                    Some(reader) => reader.fetch(&plan, buf),
                    None => Err(Error::new(
                        ErrorKind::InvalidState,
                        "read plan without a reader",
                    )),
                };
                // The plan holds the blocks' keys: wiped now, not after
                // the fallback.
                drop(plan);
                match fetched {
                    Ok(()) => {
                        self.unlocked.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(_) => {
                        // Stale plan or device error: again, whole, under
                        // the lock, where it cannot race. Final.
                        self.rereads.fetch_add(1, Ordering::Relaxed);
                        engine.locked(|e| e.read(lba, buf))
                    }
                }
            }
        };
        ReadDone { result, wake }
    }

    /// Whether the worker that runs background work may run a step now.
    /// Not while a read waits for the engine's lock or plans: the step is
    /// put off, and the last planning read reports it ([`ReadDone::wake`]).
    /// But never twice in a row: a read waits for one step at most, the
    /// one running when it arrived. Call it from one worker only.
    pub fn background_may_run(&self) -> bool {
        if self.planning.load(Ordering::SeqCst) == 0 || self.put_off.load(Ordering::Relaxed) {
            self.put_off.store(false, Ordering::Relaxed);
            return true;
        }
        self.deferred.store(true, Ordering::SeqCst);
        if self.planning.load(Ordering::SeqCst) == 0 && self.deferred.swap(false, Ordering::SeqCst)
        {
            // The reads finished meanwhile and none of them took the
            // deferred work over: run it now.
            return true;
        }
        // Put off; the last planning read reports it.
        self.put_off.store(true, Ordering::Relaxed);
        false
    }

    /// Reads whose fetch ran without the lock so far.
    pub fn unlocked(&self) -> u64 {
        self.unlocked.load(Ordering::Relaxed)
    }

    /// Fetches repeated under the lock so far.
    pub fn rereads(&self) -> u64 {
        self.rereads.load(Ordering::Relaxed)
    }
}
