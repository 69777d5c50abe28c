//! From a ublk request to the engine, without ublk: [`decode`] checks a
//! request's descriptor (opcode, flags, sector range) against the disk and
//! the I/O buffer, [`Engine::execute`] runs it on the disk and gives the
//! result the ublk driver wants (bytes done, or a negative errno). Both are
//! plain functions over the core's types, so host unit tests reach them.
//!
//! Semantics are the dm target's (`linux/README.md`): a flush syncs the
//! engine; a FUA write syncs after its data; a discard unmaps whole 4 KiB
//! blocks. Reads plan under the disk's lock and fetch and authenticate
//! their data blocks without it (the core's `ParallelReads`, the protocol
//! the kernel module runs), so the queues' threads read in parallel while
//! writes, syncs and discards take the disk one at a time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use mlsdisk_core::bio::{BlockSet, BLOCK_SIZE};
use mlsdisk_core::disk::{MlsDisk, ParallelReads};
use mlsdisk_core::{Error, ErrorKind};

use crate::admin;

/// 512-byte sectors per 4 KiB block.
const SECTORS_PER_BLOCK: u64 = (BLOCK_SIZE / 512) as u64;

/// ublk opcodes and flags (`include/uapi/linux/ublk_cmd.h`).
pub const OP_READ: u32 = 0;
/// Write `nr_sectors` from the buffer.
pub const OP_WRITE: u32 = 1;
/// Flush the volatile cache.
pub const OP_FLUSH: u32 = 2;
/// Discard a range.
pub const OP_DISCARD: u32 = 3;
/// Write zeroes (never sent: the device declares no support).
pub const OP_WRITE_ZEROES: u32 = 5;
/// Force unit access on a write.
pub const F_FUA: u32 = 1 << 13;

/// One request, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Read `blocks` blocks from `lba` into the buffer.
    Read { lba: u64, blocks: u64 },
    /// Write `blocks` blocks from the buffer at `lba`; `fua`: sync after.
    Write { lba: u64, blocks: u64, fua: bool },
    /// Sync.
    Flush,
    /// Unmap `blocks` blocks from `lba`.
    Discard { lba: u64, blocks: u64 },
}

/// Checks a request: `op_flags`, `start_sector`, `nr_sectors` of its
/// descriptor, on a disk of `capacity` blocks with an I/O buffer of
/// `buf_len` bytes. A refusal is a negative errno: `-EINVAL` for a range
/// that is not whole 4 KiB blocks, is empty, runs past the capacity or
/// does not fit the buffer; `-EOPNOTSUPP` for other opcodes.
pub fn decode(
    op_flags: u32,
    start_sector: u64,
    nr_sectors: u32,
    capacity: u64,
    buf_len: usize,
) -> Result<Request, i32> {
    let op = op_flags & 0xff;
    if op == OP_FLUSH {
        return Ok(Request::Flush);
    }
    if op != OP_READ && op != OP_WRITE && op != OP_DISCARD {
        return Err(-libc::EOPNOTSUPP);
    }
    let sectors = u64::from(nr_sectors);
    if sectors == 0 || start_sector % SECTORS_PER_BLOCK != 0 || sectors % SECTORS_PER_BLOCK != 0 {
        return Err(-libc::EINVAL);
    }
    let lba = start_sector / SECTORS_PER_BLOCK;
    let blocks = sectors / SECTORS_PER_BLOCK;
    if lba.checked_add(blocks).is_none_or(|end| end > capacity) {
        return Err(-libc::EINVAL);
    }
    if op == OP_DISCARD {
        return Ok(Request::Discard { lba, blocks });
    }
    if blocks.saturating_mul(BLOCK_SIZE as u64) > buf_len as u64 {
        return Err(-libc::EINVAL);
    }
    Ok(if op == OP_READ {
        Request::Read { lba, blocks }
    } else {
        Request::Write {
            lba,
            blocks,
            fua: op_flags & F_FUA != 0,
        }
    })
}

/// The negative errno for a core error: `-EIO` for what failed
/// authentication or stopped the disk, `-EINVAL`, `-ENOSPC` and `-ENOMEM`
/// for refusals that changed nothing.
pub fn errno_of(e: &Error) -> i32 {
    match e.kind() {
        ErrorKind::InvalidArgument => -libc::EINVAL,
        ErrorKind::NoSpace => -libc::ENOSPC,
        ErrorKind::OutOfMemory => -libc::ENOMEM,
        _ => -libc::EIO,
    }
}

/// Request counters (as the target's status line has them).
#[derive(Debug, Default)]
pub struct Counters {
    /// Read requests.
    pub reads: AtomicU64,
    /// Write requests.
    pub writes: AtomicU64,
    /// Flush requests.
    pub flushes: AtomicU64,
    /// Writes with FUA.
    pub fua: AtomicU64,
    /// Discard requests.
    pub discards: AtomicU64,
    /// Requests that failed.
    pub errors: AtomicU64,
}

/// How many failures are logged one by one (then only counted).
const LOGGED_ERRORS: u64 = 64;

/// The disk behind its lock, with the request counters.
pub struct Engine<D: BlockSet> {
    disk: Mutex<MlsDisk<D>>,
    /// The parallel read path on the disk (the kernel module's).
    reads: ParallelReads<D>,
    capacity: u64,
    /// The counters.
    pub counters: Counters,
}

impl<D: BlockSet> Engine<D> {
    /// Wraps an open disk.
    pub fn new(disk: MlsDisk<D>) -> Self {
        let capacity = disk.nblocks();
        let reads = ParallelReads::new(Some(disk.reader()));
        Self {
            disk: Mutex::new(disk),
            reads,
            capacity,
            counters: Counters::default(),
        }
    }

    /// The logical capacity in 4 KiB blocks.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn disk(&self) -> Result<MutexGuard<'_, MlsDisk<D>>, Error> {
        self.disk
            .lock()
            .map_err(|_| Error::new(ErrorKind::InvalidState, "disk lock poisoned"))
    }

    /// The disk back (to close it).
    pub fn into_disk(self) -> Result<MlsDisk<D>, Error> {
        self.disk
            .into_inner()
            .map_err(|_| Error::new(ErrorKind::InvalidState, "disk lock poisoned"))
    }

    /// Syncs the disk, then runs the index's pending background work.
    pub fn sync(&self) -> Result<(), Error> {
        let mut d = self.disk()?;
        d.sync()?;
        while d.background_step()? {}
        Ok(())
    }

    /// The disk's status line (health, counters, anchor) with the request
    /// counters.
    pub fn status_line(&self) -> String {
        let c = &self.counters;
        let line = match self.disk() {
            Ok(mut d) => d.status_line(),
            Err(e) => admin::error_words(e),
        };
        format!(
            "{line} reads={} writes={} flushes={} fua={} discards={} errors={} reread={}",
            c.reads.load(Ordering::Relaxed),
            c.writes.load(Ordering::Relaxed),
            c.flushes.load(Ordering::Relaxed),
            c.fua.load(Ordering::Relaxed),
            c.discards.load(Ordering::Relaxed),
            c.errors.load(Ordering::Relaxed),
            self.reads.rereads()
        )
    }

    /// A read on the core's parallel path ([`ParallelReads`], as the kernel
    /// module reads): planned under the disk's lock, fetched and
    /// authenticated without it; a failed fetch (a stale plan, or a device
    /// error) is read again under the lock, where it cannot race, and that
    /// result is final. Background work runs only in [`Engine::sync`]
    /// here, so the read's wake report has nothing to wake.
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.reads.read(&self.disk, lba, buf).result
    }

    /// Runs `req` with the request's I/O buffer `buf`; the result for the
    /// ublk driver: bytes read or written, 0 for a flush or discard, or a
    /// negative errno. A failure is logged on standard error (the first
    /// ones) as the target logs to the kernel log.
    pub fn execute(&self, req: Request, buf: &mut [u8]) -> i32 {
        let c = &self.counters;
        let (what, lba, r) = match req {
            Request::Read { lba, blocks } => {
                c.reads.fetch_add(1, Ordering::Relaxed);
                let r = bytes(blocks).and_then(|n| {
                    let b = buf.get_mut(..n).ok_or(einval())?;
                    self.read(lba, b).map(|()| n)
                });
                ("read", lba, r)
            }
            Request::Write { lba, blocks, fua } => {
                c.writes.fetch_add(1, Ordering::Relaxed);
                if fua {
                    c.fua.fetch_add(1, Ordering::Relaxed);
                }
                let r = bytes(blocks).and_then(|n| {
                    let b = buf.get(..n).ok_or(einval())?;
                    self.disk()?.write(lba, b)?;
                    Ok(n)
                });
                match r {
                    Ok(n) if fua => match self.sync() {
                        Ok(()) => ("FUA sync", lba, Ok(n)),
                        Err(e) => ("FUA sync", lba, Err(e)),
                    },
                    r => ("write", lba, r),
                }
            }
            Request::Flush => {
                c.flushes.fetch_add(1, Ordering::Relaxed);
                ("flush", 0, self.sync().map(|()| 0))
            }
            Request::Discard { lba, blocks } => {
                c.discards.fetch_add(1, Ordering::Relaxed);
                (
                    "discard",
                    lba,
                    self.disk()
                        .and_then(|mut d| d.discard(lba, blocks))
                        .map(|()| 0),
                )
            }
        };
        match r {
            // At most the buffer's length, which fits an i32 (checked by
            // `bytes`).
            Ok(n) => i32::try_from(n).unwrap_or(-libc::EIO),
            Err(e) => {
                let n = c.errors.fetch_add(1, Ordering::Relaxed);
                if n < LOGGED_ERRORS {
                    eprintln!(
                        "mlsdisk serve: {what} at block {lba} failed: {}",
                        admin::error_words(e)
                    );
                } else if n == LOGGED_ERRORS {
                    eprintln!("mlsdisk serve: further failures are only counted");
                }
                errno_of(&e)
            }
        }
    }
}

fn einval() -> Error {
    Error::new(ErrorKind::InvalidArgument, "request larger than its buffer")
}

/// `blocks` in bytes, if that fits an `i32` (the result field).
fn bytes(blocks: u64) -> Result<usize, Error> {
    blocks
        .checked_mul(BLOCK_SIZE as u64)
        .filter(|&n| n <= i32::MAX as u64)
        .map(|n| n as usize)
        .ok_or(einval())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlsdisk_core::bio::MemDisk;
    use mlsdisk_core::disk::{DiskConfig, NoAnchor};
    use mlsdisk_core::platform::StdCrypto;
    use std::sync::Arc;

    const BUF: usize = 64 * BLOCK_SIZE;
    const KEY: [u8; 32] = [7; 32];

    fn engine() -> Engine<MemDisk> {
        let dev = MemDisk::new(4096).unwrap();
        let d = MlsDisk::create(
            dev,
            Arc::new(StdCrypto),
            &KEY,
            DiskConfig::default(),
            Box::new(NoAnchor),
        )
        .unwrap();
        Engine::new(d)
    }

    fn syncs(e: &Engine<MemDisk>) -> u64 {
        e.disk().unwrap().stats().sync_counter
    }

    #[test]
    fn decode_bounds_and_partial_blocks() {
        let cap = 100;
        assert_eq!(
            decode(OP_READ, 8, 16, cap, BUF),
            Ok(Request::Read { lba: 1, blocks: 2 })
        );
        // The last block, and one past it.
        assert_eq!(
            decode(OP_WRITE, 99 * 8, 8, cap, BUF),
            Ok(Request::Write {
                lba: 99,
                blocks: 1,
                fua: false
            })
        );
        assert_eq!(decode(OP_WRITE, 99 * 8, 16, cap, BUF), Err(-libc::EINVAL));
        assert_eq!(decode(OP_READ, 100 * 8, 8, cap, BUF), Err(-libc::EINVAL));
        // A start far past the end.
        assert_eq!(
            decode(OP_READ, u64::MAX - 7, 8, cap, BUF),
            Err(-libc::EINVAL)
        );
        // Partial blocks: start or length not a multiple of 8 sectors.
        assert_eq!(decode(OP_READ, 1, 8, cap, BUF), Err(-libc::EINVAL));
        assert_eq!(decode(OP_WRITE, 8, 7, cap, BUF), Err(-libc::EINVAL));
        assert_eq!(decode(OP_DISCARD, 4, 8, cap, BUF), Err(-libc::EINVAL));
        // Empty.
        assert_eq!(decode(OP_READ, 8, 0, cap, BUF), Err(-libc::EINVAL));
        // Larger than the buffer (a discard has no buffer).
        assert_eq!(decode(OP_READ, 0, 65 * 8, cap, BUF), Err(-libc::EINVAL));
        assert_eq!(
            decode(OP_DISCARD, 0, 100 * 8, cap, BUF),
            Ok(Request::Discard {
                lba: 0,
                blocks: 100
            })
        );
        // Flags: FUA on a write; unknown opcodes refused.
        assert_eq!(
            decode(OP_WRITE | F_FUA, 0, 8, cap, BUF),
            Ok(Request::Write {
                lba: 0,
                blocks: 1,
                fua: true
            })
        );
        assert_eq!(decode(OP_FLUSH, 0, 0, cap, BUF), Ok(Request::Flush));
        assert_eq!(
            decode(OP_WRITE_ZEROES, 0, 8, cap, BUF),
            Err(-libc::EOPNOTSUPP)
        );
        assert_eq!(decode(14, 0, 8, cap, BUF), Err(-libc::EOPNOTSUPP));
    }

    #[test]
    fn write_read_discard() {
        let e = engine();
        let mut buf = vec![0u8; BUF];
        for (i, b) in buf.iter_mut().enumerate().take(3 * BLOCK_SIZE) {
            *b = (i / BLOCK_SIZE) as u8 + 1;
        }
        let w = decode(OP_WRITE, 80, 24, e.capacity(), BUF).unwrap();
        assert_eq!(e.execute(w, &mut buf), 3 * BLOCK_SIZE as i32);
        let mut out = vec![0xaau8; BUF];
        let r = decode(OP_READ, 80, 24, e.capacity(), BUF).unwrap();
        assert_eq!(e.execute(r, &mut out), 3 * BLOCK_SIZE as i32);
        assert_eq!(out[..3 * BLOCK_SIZE], buf[..3 * BLOCK_SIZE]);
        // Discard the middle block: it reads as zeros, the others stay.
        let d = decode(OP_DISCARD, 88, 8, e.capacity(), BUF).unwrap();
        assert_eq!(e.execute(d, &mut out), 0);
        assert_eq!(e.execute(r, &mut out), 3 * BLOCK_SIZE as i32);
        assert!(out[BLOCK_SIZE..2 * BLOCK_SIZE].iter().all(|&b| b == 0));
        assert!(out[..BLOCK_SIZE].iter().all(|&b| b == 1));
        assert!(out[2 * BLOCK_SIZE..3 * BLOCK_SIZE].iter().all(|&b| b == 3));
        let c = &e.counters;
        assert_eq!(c.reads.load(Ordering::Relaxed), 2);
        assert_eq!(c.writes.load(Ordering::Relaxed), 1);
        assert_eq!(c.discards.load(Ordering::Relaxed), 1);
        assert_eq!(c.errors.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn flush_and_fua_sync() {
        let e = engine();
        let mut buf = vec![5u8; BUF];
        let s0 = syncs(&e);
        let w = decode(OP_WRITE, 0, 8, e.capacity(), BUF).unwrap();
        assert_eq!(e.execute(w, &mut buf), BLOCK_SIZE as i32);
        assert_eq!(syncs(&e), s0, "a plain write does not sync");
        let f = decode(OP_WRITE | F_FUA, 8, 8, e.capacity(), BUF).unwrap();
        assert_eq!(e.execute(f, &mut buf), BLOCK_SIZE as i32);
        assert_eq!(syncs(&e), s0 + 1, "a FUA write syncs");
        assert_eq!(e.execute(Request::Flush, &mut buf), 0);
        assert_eq!(syncs(&e), s0 + 2, "a flush syncs");
        assert_eq!(e.counters.fua.load(Ordering::Relaxed), 1);
        assert_eq!(e.counters.flushes.load(Ordering::Relaxed), 1);
        // What was synced survives a reopen (power cut after the flush).
        let d = e.into_disk().unwrap();
        let image = d.device().inner().snapshot().unwrap();
        drop(d);
        let dev = MemDisk::new(4096).unwrap();
        dev.restore(&image).unwrap();
        let d = MlsDisk::open(
            dev,
            Arc::new(StdCrypto),
            &KEY,
            DiskConfig::default(),
            Box::new(NoAnchor),
        )
        .unwrap();
        let e = Engine::new(d);
        let mut out = vec![0u8; BUF];
        let r = decode(OP_READ, 0, 16, e.capacity(), BUF).unwrap();
        assert_eq!(e.execute(r, &mut out), 2 * BLOCK_SIZE as i32);
        assert!(out[..2 * BLOCK_SIZE].iter().all(|&b| b == 5));
    }

    #[test]
    fn refusals_are_errnos() {
        let e = engine();
        let mut small = vec![0u8; BLOCK_SIZE];
        // A request larger than the buffer handed in: refused, counted.
        let r = Request::Read { lba: 0, blocks: 2 };
        assert_eq!(e.execute(r, &mut small), -libc::EINVAL);
        // Past the end (not caught by decode here): the core refuses.
        let r = Request::Write {
            lba: e.capacity(),
            blocks: 1,
            fua: false,
        };
        assert_eq!(e.execute(r, &mut small), -libc::EINVAL);
        let r = Request::Discard {
            lba: e.capacity() - 1,
            blocks: 2,
        };
        assert_eq!(e.execute(r, &mut small), -libc::EINVAL);
        assert_eq!(e.counters.errors.load(Ordering::Relaxed), 3);
        // The disk still serves.
        let w = Request::Write {
            lba: 0,
            blocks: 1,
            fua: true,
        };
        assert_eq!(e.execute(w, &mut small), BLOCK_SIZE as i32);
        assert_eq!(errno_of(&Error::new(ErrorKind::Integrity, "x")), -libc::EIO);
        assert_eq!(
            errno_of(&Error::new(ErrorKind::NoSpace, "x")),
            -libc::ENOSPC
        );
    }
}
