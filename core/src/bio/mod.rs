//! Block I/O: the device underneath every layer.
//!
//! A [`BlockSet`] is an array of 4 KiB blocks with random reads and writes of
//! whole blocks and a flush. It is the only thing the engine asks of a storage
//! device, and it assumes nothing of it: the device may lose unflushed writes
//! at a crash, return errors, or (being the host's) return anything at all.
//! The layers above authenticate what they read.
//!
//! Implementations here: [`MemDisk`] (memory, `std`), [`FileDisk`] (a file
//! or device node, optionally `O_DIRECT`, `std`), and region views
//! ([`BlockRange`]). The kernel module implements `BlockSet` over its backing
//! block device with bios.
//!
//! Test devices (`std`), which wrap real ones:
//! - [`CrashDisk`]: unflushed writes stay volatile; a simulated crash keeps
//!   any chosen subset of them, in any order; "power off after N I/Os".
//! - [`FaultDisk`]: fails the Nth read, write or flush with `ErrorKind::Io`,
//!   or tears the Nth write (its first blocks land, then it fails).
//! - [`Adversary`]: the host, over a shared [`MemDisk`]: read, modify or
//!   flip bytes of any block, replay an old version of a block, swap blocks,
//!   roll the whole image back.
//!
//! # Contract
//!
//! - `pos` counts blocks; a buffer's length is a non-zero multiple of
//!   [`BLOCK_SIZE`]; an access past [`BlockSet::nblocks`] is an
//!   [`ErrorKind::InvalidArgument`] error, never a panic.
//! - A write is durable only after a later `flush` returns `Ok`. Until then a
//!   crash may keep any subset of the unflushed writes, in any order.
//! - Methods take `&self`: implementations do their own locking, so one device
//!   can be shared (an [`alloc::sync::Arc`] of it is a `BlockSet` too).
//! - [`BlockSet::read_ranges`] reads several ranges in one call; a device
//!   that can keep requests in flight issues them all before waiting, and
//!   a wrapper device forwards the call (else its inner device sees the
//!   ranges one at a time).
//!
//! # Example
//!
//! A device that keeps one byte pattern per block (not useful, but complete):
//!
//! ```
//! use mlsdisk_core::bio::{BlockSet, BLOCK_SIZE};
//! use mlsdisk_core::Result;
//!
//! struct Zeros(u64);
//!
//! impl BlockSet for Zeros {
//!     fn read(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
//!         mlsdisk_core::bio::check_range(self.0, pos, buf.len())?;
//!         buf.fill(0);
//!         Ok(())
//!     }
//!     fn write(&self, pos: u64, buf: &[u8]) -> Result<()> {
//!         mlsdisk_core::bio::check_range(self.0, pos, buf.len())
//!     }
//!     fn flush(&self) -> Result<()> {
//!         Ok(())
//!     }
//!     fn nblocks(&self) -> u64 {
//!         self.0
//!     }
//! }
//!
//! let d = Zeros(8);
//! let mut b = vec![1u8; BLOCK_SIZE];
//! d.read(7, &mut b).unwrap();
//! assert!(b.iter().all(|&x| x == 0));
//! assert!(d.read(8, &mut b).is_err());
//! ```

#[cfg(feature = "std")]
mod adversary;
mod aligned;
#[cfg(feature = "std")]
mod crash_disk;
#[cfg(feature = "std")]
mod fault_disk;
#[cfg(feature = "std")]
mod file_disk;
#[cfg(feature = "std")]
mod mem_disk;
#[cfg(feature = "std")]
pub use adversary::{Adversary, BlockVersion, Image};
#[cfg(feature = "std")]
pub use crash_disk::CrashDisk;
#[cfg(feature = "std")]
pub use fault_disk::{FaultDisk, IoKind};
#[cfg(feature = "std")]
pub use file_disk::FileDisk;
#[cfg(feature = "std")]
pub use mem_disk::MemDisk;

pub use aligned::{is_page_aligned, AlignedBuf, PAGE_ALIGN};

use alloc::sync::Arc;

use crate::{Error, ErrorKind, Result};

/// The size of a block in bytes.
pub const BLOCK_SIZE: usize = 4096;

/// A device of 4 KiB blocks. See the module documentation for the contract.
pub trait BlockSet: Send + Sync {
    /// Reads `buf.len() / BLOCK_SIZE` blocks starting at block `pos`.
    fn read(&self, pos: u64, buf: &mut [u8]) -> Result<()>;
    /// Writes `buf.len() / BLOCK_SIZE` blocks starting at block `pos`.
    fn write(&self, pos: u64, buf: &[u8]) -> Result<()>;
    /// Makes every write that returned before this call durable.
    fn flush(&self) -> Result<()>;
    /// The number of blocks of the device.
    fn nblocks(&self) -> u64;
    /// Reads several ranges: each `(pos, buf)` as [`BlockSet::read`]
    /// would. The default reads them one after another; a device that can
    /// keep several requests in flight overrides it to issue them all
    /// before waiting for any (a read of data that random writes
    /// scattered is many small device reads). On error, which buffers
    /// were filled is unspecified.
    fn read_ranges(&self, ranges: &mut [(u64, &mut [u8])]) -> Result<()> {
        for (pos, buf) in ranges.iter_mut() {
            self.read(*pos, buf)?;
        }
        Ok(())
    }
}

/// Checks that `len` bytes at block `pos` are whole blocks inside a device of
/// `nblocks` blocks.
pub fn check_range(nblocks: u64, pos: u64, len: usize) -> Result<()> {
    if len == 0 || len % BLOCK_SIZE != 0 {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "buffer is not a whole number of blocks",
        ));
    }
    let count = (len / BLOCK_SIZE) as u64;
    match pos.checked_add(count) {
        Some(end) if end <= nblocks => Ok(()),
        _ => Err(Error::new(
            ErrorKind::InvalidArgument,
            "block range past the end of the device",
        )),
    }
}

impl<T: BlockSet + ?Sized> BlockSet for Arc<T> {
    fn read(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read(pos, buf)
    }
    fn read_ranges(&self, ranges: &mut [(u64, &mut [u8])]) -> Result<()> {
        (**self).read_ranges(ranges)
    }
    fn write(&self, pos: u64, buf: &[u8]) -> Result<()> {
        (**self).write(pos, buf)
    }
    fn flush(&self) -> Result<()> {
        (**self).flush()
    }
    fn nblocks(&self) -> u64 {
        (**self).nblocks()
    }
}

impl<T: BlockSet + ?Sized> BlockSet for &T {
    fn read(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read(pos, buf)
    }
    fn read_ranges(&self, ranges: &mut [(u64, &mut [u8])]) -> Result<()> {
        (**self).read_ranges(ranges)
    }
    fn write(&self, pos: u64, buf: &[u8]) -> Result<()> {
        (**self).write(pos, buf)
    }
    fn flush(&self) -> Result<()> {
        (**self).flush()
    }
    fn nblocks(&self) -> u64 {
        (**self).nblocks()
    }
}

/// A window of `len` blocks of a device starting at block `start`: a region.
///
/// Block 0 of the view is block `start` of the device. Flush flushes the
/// whole device.
#[derive(Clone, Debug)]
pub struct BlockRange<D> {
    disk: D,
    start: u64,
    len: u64,
}

impl<D: BlockSet> BlockRange<D> {
    /// A view of blocks `start .. start + len` of `disk`.
    pub fn new(disk: D, start: u64, len: u64) -> Result<Self> {
        match start.checked_add(len) {
            Some(end) if end <= disk.nblocks() => Ok(Self { disk, start, len }),
            _ => Err(Error::new(
                ErrorKind::InvalidArgument,
                "region past the end of the device",
            )),
        }
    }

    /// The device underneath.
    pub fn inner(&self) -> &D {
        &self.disk
    }

    /// The first block of the view on the device.
    pub fn start(&self) -> u64 {
        self.start
    }
}

impl<D: BlockSet> BlockSet for BlockRange<D> {
    fn read(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self.len, pos, buf.len())?;
        self.disk.read(self.start + pos, buf)
    }
    fn read_ranges(&self, ranges: &mut [(u64, &mut [u8])]) -> Result<()> {
        // Every range is checked before any moves: on an error the
        // positions are left as the caller gave them.
        for (pos, buf) in ranges.iter() {
            check_range(self.len, *pos, buf.len())?;
        }
        for (pos, _) in ranges.iter_mut() {
            *pos += self.start;
        }
        let r = self.disk.read_ranges(ranges);
        for (pos, _) in ranges.iter_mut() {
            *pos -= self.start;
        }
        r
    }
    fn write(&self, pos: u64, buf: &[u8]) -> Result<()> {
        check_range(self.len, pos, buf.len())?;
        self.disk.write(self.start + pos, buf)
    }
    fn flush(&self) -> Result<()> {
        self.disk.flush()
    }
    fn nblocks(&self) -> u64 {
        self.len
    }
}
