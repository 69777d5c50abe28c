//! A device wrapper that counts blocks read and written and flushes, for
//! the write-amplification statistics.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::bio::{BlockSet, BLOCK_SIZE};
use crate::Result;

/// `D` with counters. Failed calls are not counted.
pub struct Counted<D> {
    inner: D,
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
}

impl<D: BlockSet> Counted<D> {
    /// Wraps `inner`.
    pub fn new(inner: D) -> Self {
        Self {
            inner,
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        }
    }

    /// (blocks read, blocks written, flushes) so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.reads.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
            self.flushes.load(Ordering::Relaxed),
        )
    }

    /// The device underneath.
    pub fn inner(&self) -> &D {
        &self.inner
    }
}

impl<D: BlockSet> BlockSet for Counted<D> {
    fn read(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        self.inner.read(pos, buf)?;
        self.reads
            .fetch_add((buf.len() / BLOCK_SIZE) as u64, Ordering::Relaxed);
        Ok(())
    }
    fn read_ranges(&self, ranges: &mut [(u64, &mut [u8])]) -> Result<()> {
        self.inner.read_ranges(ranges)?;
        let blocks: usize = ranges.iter().map(|(_, b)| b.len() / BLOCK_SIZE).sum();
        self.reads.fetch_add(blocks as u64, Ordering::Relaxed);
        Ok(())
    }
    fn write(&self, pos: u64, buf: &[u8]) -> Result<()> {
        self.inner.write(pos, buf)?;
        self.writes
            .fetch_add((buf.len() / BLOCK_SIZE) as u64, Ordering::Relaxed);
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()?;
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn nblocks(&self) -> u64 {
        self.inner.nblocks()
    }
}
