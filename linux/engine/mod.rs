// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! The front end both devices share: what the dm target (`dm/target.rs`) and
//! the blk-mq disks (`blk/mod.rs`) run their requests against.
//!
//! - [`Engine`]: the disk engine behind a mutex (the core's `disk::MlsDisk`,
//!   `engine/disk.rs`, or the pass-through engine of the
//!   `MLSDISK_PASSTHROUGH=1` build, [`PassThrough`]); [`Closed`] stands in
//!   for an engine taken out to be closed.
//! - [`Reads`]: the core's parallel-read protocol (plan under the mutex,
//!   fetch and decrypt without it, repeat under the mutex on any fetch
//!   error, and the rule that background work never holds back a read by
//!   more than a step) on the backing device; [`Locked`] hands it the
//!   engine behind the worker's mutex.
//! - [`Failure`]: one failed request, and the one mapping from the engine's
//!   error kind to a block status ([`BlkError`]) and an errno.
//! - [`Disk`]: an open disk, opened ([`Disk::open`]: the engine on a
//!   worker) and closed ([`Disk::close`]: synced and dropped on a worker)
//!   the same way by both devices; [`Shared`]: a disk as the dm target
//!   shares it between the tables of one mapped device.
//! - [`registry`]: the one registry of open disks, keyed by backing device,
//!   that both devices consult, so a backing device has one user.
//!
//! Nothing here depends on the dm target or the blk-mq disks.

#[cfg(not(mlsdisk_passthrough))]
pub(crate) mod disk;
pub(crate) mod registry;
pub(crate) mod serve;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::pin::Pin;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kernel::new_mutex;
use kernel::prelude::*;
use kernel::sync::Mutex;
#[cfg(mlsdisk_passthrough)]
use mlsdisk_core::bio::BlockSet;
#[cfg(mlsdisk_passthrough)]
use mlsdisk_core::bio::BLOCK_SIZE;
use mlsdisk_core::disk::{DataReader, EngineLock, ParallelReads, ReadPlan, ReadPlanner};
use mlsdisk_core::{Error as CoreError, ErrorKind};

use crate::kernel_platform::bio::{on_worker, Access, BdevBlockSet};
use crate::table::RawKey;

pub(crate) use crate::kernel_platform::bio::SECTORS_PER_BLOCK;

/// Largest bio the target takes, in sectors (device-mapper splits larger
/// ones): 1 MiB, the size of the worker's reusable buffer.
pub(crate) const MAX_IO_SECTORS: u64 = 2048;

/// What the worker runs bios against. Addresses are 4 KiB blocks of the
/// target; buffers are whole blocks. Every method may sleep.
pub(crate) trait Engine: Send {
    /// Reads blocks starting at `lba`.
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> mlsdisk_core::Result<()>;
    /// Writes blocks starting at `lba`.
    fn write(&mut self, lba: u64, buf: &[u8]) -> mlsdisk_core::Result<()>;
    /// Makes every completed write durable.
    fn sync(&mut self) -> mlsdisk_core::Result<()>;
    /// Unmaps `nblocks` blocks starting at `lba`.
    fn discard(&mut self, lba: u64, nblocks: u64) -> mlsdisk_core::Result<()>;
    /// The engine's part of `dmsetup status` (health, sync counter, space,
    /// anchor), before the target's bio counters.
    fn status(&mut self, out: &mut dyn fmt::Write) -> fmt::Result;
    /// One bounded step of background work (compaction, cleaning); returns
    /// whether more is to do.
    fn background_step(&mut self) -> mlsdisk_core::Result<bool> {
        Ok(false)
    }
    /// The first half of a read ([`Reads`]): fills what needs no device
    /// read and returns what is left for [`Engine::reader`] to fetch. The
    /// default reads everything here (an empty plan): an engine without a
    /// reader does not split its reads.
    fn plan_read(&mut self, lba: u64, buf: &mut [u8]) -> mlsdisk_core::Result<ReadPlan> {
        self.read(lba, buf)?;
        Ok(ReadPlan::default())
    }
    /// What fetches this engine's read plans without the engine (`None`:
    /// its plans are always empty).
    fn reader(&self) -> Option<DataReader<BdevBlockSet>> {
        None
    }
}

/// Reads that run on many threads at once: the core's parallel-read
/// protocol (`mlsdisk_core::disk::ParallelReads`: the engine's mutex is
/// held only to plan; fetching and decrypting run without it; background
/// work is put off for a planning read, never twice in a row), on the
/// backing device. Shared by the dm target and the blk-mq disk; the
/// userspace tools and the core's tests run the same type.
pub(crate) type Reads = ParallelReads<BdevBlockSet>;

impl ReadPlanner for dyn Engine {
    fn plan_read(&mut self, lba: u64, buf: &mut [u8]) -> mlsdisk_core::Result<ReadPlan> {
        Engine::plan_read(self, lba, buf)
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> mlsdisk_core::Result<()> {
        Engine::read(self, lba, buf)
    }
}

/// The engine behind the worker's mutex, as [`Reads`] takes it.
pub(crate) struct Locked<'a>(pub(crate) &'a Mutex<Worker>);

impl EngineLock for Locked<'_> {
    type Engine = dyn Engine;

    fn locked<R>(&self, f: impl FnOnce(&mut (dyn Engine + 'static)) -> R) -> R {
        f(&mut *self.0.lock().engine)
    }
}

/// The pass-through engine: the backing device's blocks at the same
/// offset, no encryption (`MLSDISK_PASSTHROUGH=1` builds only).
#[cfg(mlsdisk_passthrough)]
pub(crate) struct PassThrough {
    dev: BdevBlockSet,
    /// Blocks of the device.
    nblocks: u64,
}

#[cfg(mlsdisk_passthrough)]
impl PassThrough {
    /// The pass-through engine on `dev`, and its capacity in blocks.
    pub(crate) fn new(dev: BdevBlockSet) -> (Self, u64) {
        let nblocks = dev.nblocks();
        (Self { dev, nblocks }, nblocks)
    }

    fn check(&self, lba: u64, nblocks: u64) -> mlsdisk_core::Result<()> {
        match lba.checked_add(nblocks) {
            Some(end) if end <= self.nblocks => Ok(()),
            _ => Err(CoreError::new(
                ErrorKind::InvalidArgument,
                "request past the end of the target",
            )),
        }
    }
}

#[cfg(mlsdisk_passthrough)]
impl Engine for PassThrough {
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> mlsdisk_core::Result<()> {
        self.check(lba, (buf.len() / BLOCK_SIZE) as u64)?;
        self.dev.read(lba, buf)
    }

    fn write(&mut self, lba: u64, buf: &[u8]) -> mlsdisk_core::Result<()> {
        self.check(lba, (buf.len() / BLOCK_SIZE) as u64)?;
        self.dev.write(lba, buf)
    }

    fn sync(&mut self) -> mlsdisk_core::Result<()> {
        self.dev.flush()
    }

    fn discard(&mut self, lba: u64, nblocks: u64) -> mlsdisk_core::Result<()> {
        // Nothing to unmap on a pass-through device; the range is checked.
        self.check(lba, nblocks)
    }

    fn status(&mut self, out: &mut dyn fmt::Write) -> fmt::Result {
        write!(
            out,
            "engine=passthrough capacity={} selftest=ok checksum={:016x}",
            self.nblocks.saturating_mul(SECTORS_PER_BLOCK),
            SELFTEST_CHECKSUM.load(Ordering::Relaxed)
        )
    }
}

/// The ordered worker's state, behind the disk's mutex.
pub(crate) struct Worker {
    pub(crate) engine: Box<dyn Engine>,
    /// Bounce buffer for one request ([`MAX_IO_SECTORS`]), reused.
    pub(crate) buf: Vec<u8>,
}

/// Why a request failed, as a block status (`blk_status_t` for a dm bio,
/// an errno for a blk-mq request): the one mapping from the engine's
/// error kinds ([`Failure::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlkError {
    /// `BLK_STS_IOERR` (`EIO`).
    IoErr,
    /// `BLK_STS_NOSPC` (`ENOSPC`).
    NoSpc,
    /// `BLK_STS_RESOURCE` (`ENOMEM`: out of memory).
    Resource,
    /// `BLK_STS_NOTSUPP` (`EOPNOTSUPP`).
    NotSupp,
}

impl BlkError {
    /// The errno the block layer maps back to the same status.
    pub(crate) fn errno(self) -> kernel::ffi::c_int {
        match self {
            Self::IoErr => EIO,
            Self::NoSpc => ENOSPC,
            Self::Resource => ENOMEM,
            Self::NotSupp => EOPNOTSUPP,
        }
        .to_errno()
    }
}

/// One failed request (a bio here, a request of the blk-mq disk): what was
/// being done, where, and the engine's error.
pub(crate) struct Failure {
    pub(crate) what: &'static str,
    pub(crate) lba: u64,
    pub(crate) err: CoreError,
}

impl Failure {
    /// The errno that ends a blk-mq request ([`Failure::status`]'s).
    pub(crate) fn errno(&self) -> kernel::ffi::c_int {
        self.status().errno()
    }

    /// The status that ends the request.
    pub(crate) fn status(&self) -> BlkError {
        match self.err.kind() {
            ErrorKind::NoSpace => BlkError::NoSpc,
            ErrorKind::OutOfMemory => BlkError::Resource,
            ErrorKind::Unsupported => BlkError::NotSupp,
            _ => BlkError::IoErr,
        }
    }
}

/// The checksum of the core self-test that ran at module load (it must have
/// passed for the module to load at all).
static SELFTEST_CHECKSUM: AtomicU64 = AtomicU64::new(0);

/// Records the module-load self-test result for the status line.
pub(crate) fn set_selftest_checksum(checksum: u64) {
    SELFTEST_CHECKSUM.store(checksum, Ordering::Relaxed);
}

/// An open disk, the same for both devices: the engine behind the
/// worker's mutex, the parallel read path on it, and its capacity. Opened
/// by [`Disk::open`] (the engine on a worker), closed by [`Disk::close`]
/// (synced and dropped on a worker); the dm target shares one between the
/// tables of a mapped device ([`Shared`]), a blk-mq disk owns its own.
pub(crate) struct Disk {
    /// Logical capacity in 4 KiB blocks.
    pub(crate) capacity: u64,
    /// The engine and the worker's buffer, behind a sleeping lock.
    pub(crate) worker: Pin<KBox<Mutex<Worker>>>,
    /// The parallel read path on this engine.
    pub(crate) reads: Reads,
}

impl Disk {
    /// Opens a disk: runs `open_engine` (which creates or opens the engine
    /// and returns it with its capacity in blocks) on a kernel worker (a
    /// fresh stack: its deepest paths do not fit on top of an ioctl or
    /// insmod path), then allocates the worker's buffer and the parallel
    /// read path around the engine. `fail` turns a failure of this
    /// function's own (`ENOMEM`; `EIO` if the worker did not run) into the
    /// caller's error; the engine is dropped (closed unsynced) then. Sleeps.
    pub(crate) fn open<E>(
        open_engine: impl FnOnce() -> Result<(Box<dyn Engine>, u64), E> + Send,
        fail: impl FnOnce(Error) -> E,
    ) -> Result<Self, E>
    where
        E: Send,
    {
        let (engine, capacity) = match on_worker(open_engine) {
            Some(opened) => opened?,
            None => return Err(fail(EIO)),
        };
        let reads = Reads::new(engine.reader());
        let mut buf = Vec::new();
        if buf
            .try_reserve_exact((MAX_IO_SECTORS * 512) as usize)
            .is_err()
        {
            return Err(fail(ENOMEM));
        }
        buf.resize((MAX_IO_SECTORS * 512) as usize, 0);
        let worker = match KBox::pin_init(new_mutex!(Worker { engine, buf }), GFP_KERNEL) {
            Ok(worker) => worker,
            Err(_) => return Err(fail(ENOMEM)),
        };
        Ok(Self {
            capacity,
            worker,
            reads,
        })
    }

    /// Syncs the engine, logging a failure; `why` names the occasion. Runs
    /// on a kernel worker (a fresh stack: callers are ioctl paths).
    pub(crate) fn sync(&self, why: &str) -> mlsdisk_core::Result<()> {
        let result = on_worker(|| self.worker.lock().engine.sync())
            .unwrap_or(Err(CoreError::new(ErrorKind::Io, "sync did not run")));
        if let Err(e) = result {
            pr_err!("sync at {} failed: {:?}\n", why, e);
        }
        result
    }

    /// Takes the engine out (it is [`Closed`] afterwards: every request
    /// fails) and, on a worker (a fresh stack), syncs it if `sync` and
    /// drops it. Returns the sync's result; the caller logs a failure.
    /// Sleeps.
    pub(crate) fn close(&self, sync: bool) -> mlsdisk_core::Result<()> {
        // `Closed` is zero-sized: boxing it does not allocate.
        let engine = core::mem::replace(&mut self.worker.lock().engine, Box::new(Closed));
        on_worker(move || {
            let mut engine = engine;
            let result = if sync { engine.sync() } else { Ok(()) };
            drop(engine);
            result
        })
        .unwrap_or(Err(CoreError::new(ErrorKind::Io, "close did not run")))
    }
}

/// A disk of the dm target ([`Disk`]), shared by the target instances of
/// the successive tables of one mapped device (see [`registry`]). A table
/// reload constructs the new table while the old one is still live: the
/// new instance must take over the open disk, not open it a second time
/// (two engines writing one device would destroy it). Dropping the last
/// reference closes the disk ([`Disk::close`]), with a sync unless the last
/// table was read-only.
pub(crate) struct Shared {
    /// Which key the disk was opened with, not the key itself: a second
    /// table must give the same ([`KeyCheck`]).
    pub(crate) key_check: KeyCheck,
    /// How the engine's devices are open: [`Access::ReadOnly`] when a
    /// read-only table opened the disk (then every write and flush fails
    /// below the engine, and only read-only tables may join it).
    pub(crate) access: Access,
    /// The disk.
    pub(crate) disk: Disk,
    /// Whether closing syncs the engine: set by the last table to go, to
    /// whether it was writable (a read-only table never writes the
    /// device; what writable tables before it wrote was synced at their
    /// suspend or removal).
    pub(crate) final_sync: AtomicBool,
}

/// A value that tells whether a second table gives the same key as the
/// disk was opened with, without keeping a copy of the key: HMAC-SHA256
/// under the key of a fixed label.
pub(crate) struct KeyCheck(mlsdisk_core::platform::Hash);

impl KeyCheck {
    const LABEL: &'static [u8] = b"mlsdisk: same root key as the open disk";

    /// The check value of `key`.
    pub(crate) fn of(key: &RawKey) -> mlsdisk_core::Result<Self> {
        crate::kernel_platform::crypto::hmac_sha256(key.as_bytes(), &[Self::LABEL]).map(Self)
    }

    /// Whether `key` is the key this value was made from (constant time).
    pub(crate) fn matches(&self, key: &RawKey) -> bool {
        let Ok(other) = Self::of(key) else {
            return false;
        };
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

/// The engine of a closed disk: refuses everything (also stands in for
/// the blk-mq disk's engine once it was taken out to be closed).
pub(crate) struct Closed;

impl Engine for Closed {
    fn read(&mut self, _: u64, _: &mut [u8]) -> mlsdisk_core::Result<()> {
        Err(CoreError::new(ErrorKind::InvalidState, "disk closed"))
    }
    fn write(&mut self, _: u64, _: &[u8]) -> mlsdisk_core::Result<()> {
        Err(CoreError::new(ErrorKind::InvalidState, "disk closed"))
    }
    fn sync(&mut self) -> mlsdisk_core::Result<()> {
        Ok(())
    }
    fn discard(&mut self, _: u64, _: u64) -> mlsdisk_core::Result<()> {
        Err(CoreError::new(ErrorKind::InvalidState, "disk closed"))
    }
    fn status(&mut self, out: &mut dyn fmt::Write) -> fmt::Result {
        out.write_str("health=closed")
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The final sync and the engine's own teardown, on a fresh stack.
        if let Err(e) = self.disk.close(self.final_sync.load(Ordering::Relaxed)) {
            pr_err!("sync at close failed: {:?}\n", e);
        }
    }
}
