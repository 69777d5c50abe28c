// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! One request, from either device, against the engine: [`IoRequest`] is
//! what a dm bio (`dm/target.rs`) and a blk-mq request (`blk/mod.rs`) both
//! are, and [`Worker::serve`] (in order, under the engine's mutex) and
//! [`serve_read`] (a read on the parallel path) serve it, and
//! [`Counters`] counts them. The devices only hand requests over, count
//! them and end them.
//!
//! The rules, the same for both devices:
//!
//! - requests are whole 4 KiB blocks at a block boundary (both devices
//!   declare 4 KiB logical blocks); anything else fails as an invalid
//!   request;
//! - a flush ([`Op::Flush`], or a write with `REQ_PREFLUSH`) syncs the
//!   engine before the data; a write with `REQ_FUA` syncs after it; an
//!   empty write without either flag is a flush too;
//! - a discard unmaps its blocks; an empty read or discard does nothing;
//! - any other operation fails as unsupported.

use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use kernel::sync::Mutex;
use mlsdisk_core::bio::BLOCK_SIZE;
use mlsdisk_core::{Error as CoreError, ErrorKind};

use super::{Failure, Locked, Reads, Worker, SECTORS_PER_BLOCK};

/// The operation of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Read,
    Write,
    Flush,
    Discard,
    /// Anything else (refused).
    Other,
}

/// A request of either device, as the engine's front end sees it. The
/// device keeps it until it ends it with the result of serving it.
pub(crate) trait IoRequest {
    /// The operation.
    fn op(&self) -> Op;
    /// The first sector (512 bytes) within the device (not meaningful for
    /// an empty request).
    fn sector(&self) -> u64;
    /// The data's size in bytes (0 for an empty flush).
    fn bytes(&self) -> usize;
    /// `REQ_PREFLUSH`: sync before the data.
    fn preflush(&self) -> bool;
    /// `REQ_FUA`: sync after the data.
    fn fua(&self) -> bool;
    /// Copies the request's data into `buf` (a write); returns the bytes
    /// copied.
    fn copy_out(&mut self, buf: &mut [u8]) -> usize;
    /// Copies `buf` into the request's data (a read); returns the bytes
    /// copied.
    fn copy_in(&mut self, buf: &[u8]) -> usize;
}

/// What a device received and what reached the engine: the one set of
/// request counters of both devices (the dm target's `dmsetup status` and
/// `stats`, the blk-mq disk's closing line). [`Counters::received`] counts
/// a request by what it asks for, [`Counters::failed`] one that ended with
/// an error; [`Worker::serve`] counts every engine sync it makes.
#[derive(Default)]
pub(crate) struct Counters {
    reads: AtomicU64,
    /// Writes with data.
    writes: AtomicU64,
    /// Flushes: `REQ_OP_FLUSH`, or a write with `REQ_PREFLUSH`.
    flushes: AtomicU64,
    /// Writes with `REQ_FUA`.
    fua: AtomicU64,
    discards: AtomicU64,
    /// Requests ended with an error.
    errors: AtomicU64,
    /// Engine syncs (flushes, preflushes, FUA writes, empty writes).
    syncs: AtomicU64,
}

impl Counters {
    fn one(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request of `op` with `bytes` of data and its flags.
    pub(crate) fn received(&self, op: Op, bytes: usize, preflush: bool, fua: bool) {
        match op {
            Op::Read => Self::one(&self.reads),
            Op::Write | Op::Flush => {
                if preflush || op == Op::Flush {
                    Self::one(&self.flushes);
                }
                if fua {
                    Self::one(&self.fua);
                }
                if bytes != 0 {
                    Self::one(&self.writes);
                }
            }
            Op::Discard => Self::one(&self.discards),
            Op::Other => {}
        }
    }

    /// Counts a request as received ([`Counters::received`]).
    pub(crate) fn request(&self, rq: &impl IoRequest) {
        self.received(rq.op(), rq.bytes(), rq.preflush(), rq.fua());
    }

    /// Counts a request that ended with an error.
    pub(crate) fn failed(&self) {
        Self::one(&self.errors);
    }

    /// `reads=.. writes=.. flushes=.. fua=.. discards=.. errors=..` (the
    /// dm status line's fields 11-16).
    pub(crate) fn write_requests(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        write!(
            out,
            "reads={} writes={} flushes={} fua={} discards={} errors={}",
            n(&self.reads),
            n(&self.writes),
            n(&self.flushes),
            n(&self.fua),
            n(&self.discards),
            n(&self.errors)
        )
    }

    /// [`Counters::write_requests`] as a `Display` (for a log line).
    pub(crate) fn requests(&self) -> Requests<'_> {
        Requests(self)
    }

    /// Engine syncs made by [`Worker::serve`].
    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
}

/// The request counters as `reads=.. writes=.. flushes=.. fua=..
/// discards=.. errors=..` ([`Counters::requests`]).
pub(crate) struct Requests<'a>(&'a Counters);

impl fmt::Display for Requests<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.write_requests(f)
    }
}

/// The first block of `rq` (0 for an empty request).
fn lba_of(rq: &impl IoRequest) -> u64 {
    if rq.bytes() == 0 {
        0
    } else {
        rq.sector() / SECTORS_PER_BLOCK
    }
}

/// Whether `rq` is whole 4 KiB blocks at a block boundary.
fn whole_blocks(rq: &impl IoRequest) -> bool {
    rq.sector() % SECTORS_PER_BLOCK == 0 && rq.bytes() % BLOCK_SIZE == 0
}

impl Worker {
    /// Syncs the engine, counting it.
    fn sync(&mut self, counters: &Counters) -> mlsdisk_core::Result<()> {
        Counters::one(&counters.syncs);
        self.engine.sync()
    }

    /// Serves `rq` against the engine (see the module documentation),
    /// through the worker's bounce buffer. Every sync is counted in
    /// `counters` (the request itself is counted by the device).
    pub(crate) fn serve(
        &mut self,
        rq: &mut impl IoRequest,
        counters: &Counters,
    ) -> Result<(), Failure> {
        let lba = lba_of(rq);
        let bytes = rq.bytes();
        let fail = |what, err| Failure { what, lba, err };
        let invalid = |what, why| fail(what, CoreError::new(ErrorKind::InvalidArgument, why));
        if bytes != 0 && !whole_blocks(rq) {
            return Err(invalid("request", "not whole 4 KiB blocks"));
        }
        match rq.op() {
            Op::Read | Op::Discard if bytes == 0 => Ok(()),
            Op::Read => {
                let buf = self
                    .buf
                    .get_mut(..bytes)
                    .ok_or_else(|| invalid("read", "request larger than the largest one taken"))?;
                self.engine.read(lba, buf).map_err(|e| fail("read", e))?;
                if rq.copy_in(buf) != bytes {
                    return Err(invalid("read", "request data shorter than its size"));
                }
                Ok(())
            }
            Op::Flush => self.sync(counters).map_err(|e| fail("flush", e)),
            Op::Write => {
                if rq.preflush() || (bytes == 0 && !rq.fua()) {
                    self.sync(counters).map_err(|e| fail("flush", e))?;
                }
                if bytes != 0 {
                    let buf = self.buf.get_mut(..bytes).ok_or_else(|| {
                        invalid("write", "request larger than the largest one taken")
                    })?;
                    if rq.copy_out(buf) != bytes {
                        return Err(invalid("write", "request data shorter than its size"));
                    }
                    self.engine.write(lba, buf).map_err(|e| fail("write", e))?;
                }
                if rq.fua() {
                    self.sync(counters).map_err(|e| fail("FUA sync", e))?;
                }
                Ok(())
            }
            Op::Discard => self
                .engine
                .discard(lba, (bytes / BLOCK_SIZE) as u64)
                .map_err(|e| fail("discard", e)),
            Op::Other => Err(fail(
                "request",
                CoreError::new(ErrorKind::Unsupported, "operation not supported"),
            )),
        }
    }
}

/// Serves the read `rq` on the parallel path ([`Reads`]: planned under the
/// engine's mutex, fetched and decrypted without it) with a bounce buffer
/// of its own. A request that is not whole blocks, or for which no bounce
/// buffer can be allocated, is served whole under the mutex with the
/// worker's preallocated buffer instead ([`Worker::serve`]), so reads
/// still make progress under memory pressure. Returns the result and
/// whether the ordered worker must be woken (background work was put off
/// for this read). Call it in a `GFP_NOIO` scope.
pub(crate) fn serve_read(
    reads: &Reads,
    worker: &Mutex<Worker>,
    rq: &mut impl IoRequest,
    counters: &Counters,
) -> (Result<(), Failure>, bool) {
    let lba = lba_of(rq);
    let bytes = rq.bytes();
    let fail = |err| Failure {
        what: "read",
        lba,
        err,
    };
    // kmalloc'ed (or vmalloc'ed) whole pages are page-aligned, so the
    // backing device reads straight into it.
    let mut buf = Vec::new();
    if rq.op() != Op::Read
        || bytes == 0
        || !whole_blocks(rq)
        || buf.try_reserve_exact(bytes).is_err()
    {
        return (worker.lock().serve(rq, counters), false);
    }
    buf.resize(bytes, 0);
    let done = reads.read(&Locked(worker), lba, &mut buf);
    let result = done.result.map_err(fail).and_then(|()| {
        if rq.copy_in(&buf) == bytes {
            Ok(())
        } else {
            Err(fail(CoreError::new(
                ErrorKind::InvalidArgument,
                "request data shorter than its size",
            )))
        }
    });
    (result, done.wake)
}
