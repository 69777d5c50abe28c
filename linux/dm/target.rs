// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! The `mlsdisk` device-mapper target.
//!
//! ```text
//! <start> <len> mlsdisk <backing device> <key> [<#opts> <opt>...]
//! ```
//!
//! The constructor validates the table line (see `table.rs` for the
//! grammar), reads a keyring key if one is referenced, opens the backing
//! device, creates (`create`) or opens the disk on it, and checks that the
//! target fits in the disk's logical capacity. Then:
//!
//! - `map` only counts the bio and defers it: it may run in atomic
//!   context, and the engine sleeps and allocates. Reads go to the
//!   parallel workers ([`MapResult::Parallel`]), everything else to the
//!   ordered worker ([`MapResult::Deferred`]); see "Threads" below;
//! - the ordered worker ([`dm::Target::process`], one bio at a time, in
//!   order, in a `GFP_NOIO` scope) copies the bio's data through a
//!   reusable buffer and runs it against an [`Engine`] behind a sleeping
//!   mutex: `REQ_PREFLUSH` syncs before the data, `REQ_FUA` after it, a
//!   discard discards; errors end the bio with `BLK_STS_IOERR` (`NOSPC`,
//!   `RESOURCE` where they fit) and are named in the kernel log,
//!   rate-limited;
//! - the mapped device has 4 KiB logical blocks (`io_hints`), so every bio
//!   is whole blocks; bios are split at [`MAX_IO_SECTORS`];
//! - suspend (postsuspend) and removal sync the engine; `dmsetup message
//!   <dev> 0 sync` and `stats`; background work between bios.
//!
//! The engine is the core's `disk::MlsDisk` over [`BdevBlockSet`] with
//! [`crate::kernel_platform::crypto::KernelCrypto`] (`engine/disk.rs`), one per backing
//! device ([`Shared`]). `MLSDISK_PASSTHROUGH=1` builds a pass-through
//! engine instead (blocks unencrypted at the same offset; `dmsetup status`
//! then starts with `passthrough`), to measure the target's own path.
//!
//! # Threads
//!
//! Writes, flushes, FUA and discards keep their order: one ordered worker
//! serves them, and runs the engine's background work (compaction) one
//! bounded step at a time when it has nothing else to do. Reads run on
//! the parallel workers ([`dm::Target::process_parallel`], many at once):
//! each read bio takes the engine's mutex only to *plan* (`plan_read`:
//! write buffer, forward map, index lookups; no data I/O), then, without
//! the lock, reads the ciphertext from the backing device and decrypts it
//! into a bounce buffer of its own ([`Reads`], the core's `DataReader`),
//! copies it into the bio and ends it. So several reads are in flight to
//! the backing device at once and AES-GCM runs on every CPU, while a
//! write or a sync holds the engine.
//!
//! - Ordering: a read that arrives after a write *completed* sees it. The
//!   write was done under the engine's mutex before its bio ended, and the
//!   read's plan is made under the same mutex afterwards, so the plan
//!   names the new version (in the write buffer or the index). A read that
//!   overlaps a write may return either version, as on any disk.
//! - A plan may go stale before its fetch (a write, the cleaner, a sync
//!   that frees the segment). The fetch then returns the planned version
//!   or fails authentication, never other data (core `disk::reader`); on
//!   any fetch error the read is repeated whole under the mutex
//!   (`Engine::read`, which cannot race), and that result is final: a
//!   tampered block still ends the bio with an I/O error. Such repeats are
//!   counted (`reread=` in `dmsetup status`).
//! - Background work never holds back a read by more than one step: a
//!   step is not started while a read waits for the mutex (or holds it);
//!   the last such read wakes the ordered worker again. A step is put off
//!   at most once in a row, though, so that compaction keeps up with the
//!   writes under a steady stream of reads.
//! - Memory: each read allocates its bounce buffer (bio-sized, in a
//!   `GFP_NOIO` scope); if that fails it is served whole under the mutex
//!   with the ordered worker's preallocated buffer, so reads still make
//!   progress under memory pressure.
//! - Suspend (postsuspend) and removal wait for every parallel work item
//!   before syncing or dropping the engine.
//! - The pass-through engine does not split its reads (its `plan_read`
//!   reads whole under the mutex).
//!
//! Every constructor failure logs a detailed `mlsdisk: <cause>` line and
//! sets `ti->error` to a fixed summary (device-mapper logs it after the
//! target name); whatever was acquired (the backing device, the key) is
//! released before the constructor returns. No message ever contains the
//! key, and `dmsetup table` shows `-` in its place (or the keyring
//! reference `:<size>:<type>:<description>` the key was read from).

mod attach;
mod ctr;

use alloc::boxed::Box;
use core::fmt::{self, Write as _};
use core::sync::atomic::{AtomicBool, Ordering};

use kernel::prelude::*;
use kernel::sync::Arc;

use crate::dm::binding::{
    self as dm, Args, Bio, BioOp, BlkError, Ctr, CtrError, DeferredBio, Devices, DmDev, Limits,
    MapResult, StatusType, StatusWriter,
};
use crate::engine::registry::{self, DevName, DmUse, Entry, State, User, UserName};
use crate::engine::serve::{serve_read, Counters, IoRequest, Op};
#[cfg(mlsdisk_passthrough)]
use crate::engine::PassThrough;
use crate::engine::{Disk, Engine, Failure, KeyCheck, Shared, MAX_IO_SECTORS, SECTORS_PER_BLOCK};
use crate::kernel_platform::bio::{device_number, Access, BdevBlockSet, Claim, OpenBdev};
use crate::kernel_platform::work::NoIoScope;
#[cfg(not(mlsdisk_passthrough))]
use crate::table::AnchorKind;
use crate::table::{self, Escaped, KeyRef, KeySpec, Options, RawKey};

/// Largest discard bio, in sectors.
const MAX_DISCARD_SECTORS: u32 = MAX_IO_SECTORS as u32;

/// A deferred bio as the engine's front end serves it ([`IoRequest`]):
/// sectors relative to the target.
struct DmRequest<'a> {
    bio: &'a mut DeferredBio,
    /// The bio's first sector relative to the target.
    rel: u64,
}

impl IoRequest for DmRequest<'_> {
    fn op(&self) -> Op {
        op_of(self.bio.op())
    }
    fn sector(&self) -> u64 {
        self.rel
    }
    fn bytes(&self) -> usize {
        self.bio.sectors() as usize * 512
    }
    fn preflush(&self) -> bool {
        self.bio.is_preflush()
    }
    fn fua(&self) -> bool {
        self.bio.is_fua()
    }
    fn copy_out(&mut self, buf: &mut [u8]) -> usize {
        self.bio.copy_out(buf)
    }
    fn copy_in(&mut self, buf: &[u8]) -> usize {
        self.bio.copy_in(buf)
    }
}

/// The front end's operation of a bio's.
fn op_of(op: BioOp) -> Op {
    match op {
        BioOp::Read => Op::Read,
        BioOp::Write => Op::Write,
        BioOp::Flush => Op::Flush,
        BioOp::Discard => Op::Discard,
        BioOp::Other(_) => Op::Other,
    }
}

/// One `mlsdisk` target instance.
pub(crate) struct MlsDisk {
    /// The table's claim on the backing device (for device-mapper's limits
    /// and dependencies); the engine has its own reference.
    backing: DmDev,
    /// The disk (`None` only while dropping).
    shared: Option<Arc<Shared>>,
    /// [`Ctr::table_id`] of this instance's table (its place in the
    /// registry entry of the disk).
    table: usize,
    /// Whether the table was loaded for writing ([`Ctr::writable`]). A
    /// read-only table refuses writes and discards, runs no background
    /// work and never syncs: it does not write the backing device.
    writable: bool,
    /// The first sector of the target in the mapped device.
    begin: u64,
    /// The length of the target in sectors.
    len: u64,
    /// The key's length in bits (logged and measured by IMA); the key
    /// itself is not kept here.
    key_bits: usize,
    /// Where the key came from, if from the keyring (shown by `dmsetup
    /// table` in the key's place; it is not secret).
    keyref: Option<KeyRef>,
    /// The optional arguments, for `dmsetup table`.
    options: Options,
    /// Bios seen by `map` (and the engine syncs they caused), for
    /// `dmsetup status` (and for tests: flushes and discards must reach
    /// the target).
    counters: Counters,
}

impl MlsDisk {
    fn fail(msg: &'static CStr, err: Error) -> CtrError {
        CtrError::new(msg, err)
    }

    /// The first sector of `bio` relative to the target. device-mapper only
    /// sends bios inside the target; empty flushes carry no meaningful
    /// sector.
    fn rel(&self, bio: &DeferredBio) -> u64 {
        if bio.sectors() == 0 {
            0
        } else {
            bio.sector().wrapping_sub(self.begin)
        }
    }

    /// Ends `bio` with `result`, counting and logging (rate-limited) a
    /// failure.
    fn end(&self, bio: DeferredBio, result: Result<(), Failure>) {
        match result {
            Ok(()) => bio.end(Ok(())),
            Err(f) => {
                self.counters.failed();
                if crate::kernel_platform::ratelimit() {
                    pr_err!("{} at block {} failed: {:?}\n", f.what, f.lba, f.err);
                }
                bio.end(Err(f.status()));
            }
        }
    }

    /// Syncs the engine, logging a failure; `why` names the occasion.
    fn sync(&self, why: &str) -> mlsdisk_core::Result<()> {
        match &self.shared {
            Some(shared) => shared.disk.sync(why),
            None => Ok(()),
        }
    }
}

impl dm::Target for MlsDisk {
    const NAME: &'static CStr = c"mlsdisk";
    const VERSION: [u32; 3] = [0, 1, 0];
    const SECRET_ARGS: &'static [usize] = &[table::KEY_ARG];

    fn new(ti: &mut Ctr<'_>, args: &Args<'_>) -> Result<KBox<Self>, CtrError> {
        Self::construct(ti, args)
    }

    const WORKER: bool = true;

    fn map(&self, bio: &mut Bio) -> MapResult {
        // Atomic context possible: count and hand over, nothing else.
        self.counters.received(
            op_of(bio.op()),
            bio.sectors() as usize * 512,
            bio.is_preflush(),
            bio.is_fua(),
        );
        if !self.writable {
            let writes = match bio.op() {
                BioOp::Write => bio.sectors() != 0,
                BioOp::Read | BioOp::Flush => false,
                BioOp::Discard | BioOp::Other(_) => true,
            };
            if writes {
                // A read-only table: refused before the engine sees it.
                self.counters.failed();
                return MapResult::Kill;
            }
        }
        // Reads on many threads, the rest in order (see "Threads").
        if bio.op() == BioOp::Read && bio.sectors() != 0 {
            MapResult::Parallel
        } else {
            MapResult::Deferred
        }
    }

    fn process(&self, mut bio: DeferredBio) {
        if !self.writable && bio.op() != BioOp::Read {
            // Only empty flushes get here (`map` refused the rest): nothing
            // was written through this table, so there is nothing to make
            // durable, and a sync would write the device.
            bio.end(Ok(()));
            return;
        }
        let rel = self.rel(&bio);
        let Some(shared) = &self.shared else {
            bio.end(Err(BlkError::IoErr));
            return;
        };
        let result = {
            let _noio = NoIoScope::enter();
            shared
                .disk
                .worker
                .lock()
                .serve(&mut DmRequest { bio: &mut bio, rel }, &self.counters)
        };
        self.end(bio, result);
    }

    fn process_parallel(&self, mut bio: DeferredBio) -> bool {
        let rel = self.rel(&bio);
        let Some(shared) = &self.shared else {
            bio.end(Err(BlkError::IoErr));
            return false;
        };
        let (result, wake) = {
            let _noio = NoIoScope::enter();
            serve_read(
                &shared.disk.reads,
                &shared.disk.worker,
                &mut DmRequest { bio: &mut bio, rel },
                &self.counters,
            )
        };
        self.end(bio, result);
        wake
    }

    fn postsuspend(&self) {
        if self.writable {
            let _ = self.sync("suspend");
        }
    }

    fn idle(&self) -> bool {
        let Some(shared) = &self.shared else {
            return false;
        };
        // Background work (compaction) writes the device.
        if !self.writable {
            return false;
        }
        // Not while a read waits for the engine (it wakes us afterwards).
        if !shared.disk.reads.background_may_run() {
            return false;
        }
        let _noio = NoIoScope::enter();
        match shared.disk.worker.lock().engine.background_step() {
            Ok(more) => more,
            Err(e) => {
                if crate::kernel_platform::ratelimit() {
                    pr_err!("background work failed: {:?}\n", e);
                }
                false
            }
        }
    }

    fn message(&self, args: &Args<'_>, out: &mut StatusWriter<'_>) -> Result<bool> {
        let word = args.get(0).map_or(&[][..], CStr::to_bytes);
        match (word, args.len()) {
            (b"sync", 1) if args.suspended() => {
                // A suspended table must not write its backing device: it
                // may be being snapshotted. Suspend already synced.
                pr_err!("sync refused: the table is suspended (it was synced by the suspend; resume it first)\n");
                Err(EBUSY)
            }
            (b"sync", 1) if !self.writable => {
                pr_err!("sync refused: the table is read-only (it writes nothing)\n");
                Err(EROFS)
            }
            (b"sync", 1) => self.sync("message").map(|()| false).map_err(|_| EIO),
            (b"stats", 1) => {
                self.counters.write_requests(out).map_err(|_| ENOSPC)?;
                Ok(true)
            }
            _ => {
                pr_err!(
                    "unknown message '{}' ({} words): expected 'sync' or 'stats'\n",
                    format_args!("{}", Escaped(word)),
                    args.len()
                );
                Err(EINVAL)
            }
        }
    }

    fn io_hints(&self, limits: &mut Limits<'_>) {
        limits.set_4k_blocks(MAX_DISCARD_SECTORS);
    }

    fn status(&self, kind: StatusType, out: &mut StatusWriter<'_>) -> fmt::Result {
        match kind {
            StatusType::Info => {
                if let Some(shared) = &self.shared {
                    // Writeback may wait for the engine while we hold its
                    // mutex: no allocation here may recurse into I/O.
                    let _noio = NoIoScope::enter();
                    shared.disk.worker.lock().engine.status(out)?;
                }
                out.write_str(" ")?;
                self.counters.write_requests(out)?;
                if let Some(shared) = &self.shared {
                    write!(out, " reread={}", shared.disk.reads.rereads())?;
                }
                Ok(())
            }
            StatusType::Table => {
                // Never the key: `-` stands in its place, or the keyring
                // reference it was read from.
                write!(out, "{} ", Escaped(self.backing.name().to_bytes()))?;
                match &self.keyref {
                    Some(r) => write!(out, "{r}")?,
                    None => out.write_str("-")?,
                }
                self.options.emit(out)
            }
            StatusType::Ima => write!(
                out,
                "target_name=mlsdisk,target_version={}.{}.{},stage={},key_bits={},read_only={};",
                <Self as dm::Target>::VERSION[0],
                <Self as dm::Target>::VERSION[1],
                <Self as dm::Target>::VERSION[2],
                // What protects the data: only the pass-through build
                // leaves it unencrypted.
                if cfg!(mlsdisk_passthrough) {
                    "passthrough"
                } else {
                    "engine"
                },
                self.key_bits,
                if self.writable { "n" } else { "y" }
            ),
        }
    }

    fn iterate_devices(&self, devices: &mut Devices<'_>) -> i32 {
        // The whole target maps onto the start of the backing device.
        devices.call(&self.backing, 0, self.len)
    }
}
