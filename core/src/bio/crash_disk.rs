//! A test device that loses unflushed writes at a simulated crash.

use std::boxed::Box;
use std::sync::{Mutex, MutexGuard};
use std::vec::Vec;

use super::{check_range, BlockSet, BLOCK_SIZE};
use crate::{Error, ErrorKind, Result};

/// A device whose writes since the last flush are volatile.
///
/// Writes since the last successful [`BlockSet::flush`] live in memory (reads
/// see them) and reach the inner device only at the next flush. A simulated
/// crash ([`CrashDisk::crash`], [`CrashDisk::crash_in_order`]) persists a
/// chosen subset of the unflushed *block* writes — so a multi-block write can
/// be torn at block granularity — and drops the rest, exactly what the
/// [`BlockSet`] contract allows a real device to do.
///
/// To enumerate crash points, a test runs a workload once and reads
/// [`CrashDisk::op_count`], then for each `n` runs it again on a fresh disk
/// with [`CrashDisk::crash_after_ops`]`(n)`: the first `n` writes/flushes
/// succeed, every later I/O fails with [`ErrorKind::Io`] (the machine is
/// "off"), and the test then calls `crash` with a subset selector and
/// reopens.
#[derive(Debug)]
pub struct CrashDisk<D> {
    inner: D,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Unflushed block writes, oldest first: (block, contents).
    pending: Vec<(u64, Box<[u8]>)>,
    /// Write calls and flush calls that succeeded.
    ops: u64,
    /// Block writes that succeeded.
    writes: u64,
    /// Flushes that succeeded.
    flushes: u64,
    /// After this many successful ops, every I/O fails.
    fail_after: Option<u64>,
}

impl<D: BlockSet> CrashDisk<D> {
    /// Wraps `inner`, whose current contents count as durable.
    pub fn new(inner: D) -> Self {
        Self {
            inner,
            state: Mutex::new(State::default()),
        }
    }

    /// The durable device underneath.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| Error::new(ErrorKind::Io, "crash disk lock poisoned"))
    }

    /// Write calls plus flush calls that succeeded so far.
    pub fn op_count(&self) -> u64 {
        self.lock().map(|s| s.ops).unwrap_or(0)
    }

    /// Block writes that succeeded so far (a 3-block write counts 3).
    pub fn write_count(&self) -> u64 {
        self.lock().map(|s| s.writes).unwrap_or(0)
    }

    /// Flushes that succeeded so far.
    pub fn flush_count(&self) -> u64 {
        self.lock().map(|s| s.flushes).unwrap_or(0)
    }

    /// Block writes since the last flush (what a crash may keep or drop).
    pub fn pending_count(&self) -> usize {
        self.lock().map(|s| s.pending.len()).unwrap_or(0)
    }

    /// From now on, after `n` more successful write/flush calls the power is
    /// cut: every later read, write and flush fails with `ErrorKind::Io` until
    /// the next [`crash`](Self::crash).
    pub fn crash_after_ops(&self, n: u64) -> Result<()> {
        let mut s = self.lock()?;
        s.fail_after = Some(s.ops.saturating_add(n));
        Ok(())
    }

    /// Whether the power is cut (see [`crash_after_ops`](Self::crash_after_ops)).
    pub fn is_dead(&self) -> bool {
        self.lock()
            .map(|s| s.fail_after.is_some_and(|f| s.ops >= f))
            .unwrap_or(true)
    }

    /// Simulates a crash: of the unflushed block writes (numbered from 0,
    /// oldest first) those for which `keep(i)` is true reach the device, in
    /// order; the others are lost. The device then works again.
    pub fn crash(&self, keep: &dyn Fn(usize) -> bool) -> Result<()> {
        let mut s = self.lock()?;
        let pending = core::mem::take(&mut s.pending);
        s.fail_after = None;
        drop(s);
        for (i, (pos, data)) in pending.iter().enumerate() {
            if keep(i) {
                self.inner.write(*pos, data)?;
            }
        }
        self.inner.flush()
    }

    /// Simulates a crash that persists the unflushed block writes numbered in
    /// `order`, in that order (so a later write to a block may land before an
    /// earlier one). Indexes past the end are ignored.
    pub fn crash_in_order(&self, order: &[usize]) -> Result<()> {
        let mut s = self.lock()?;
        let pending = core::mem::take(&mut s.pending);
        s.fail_after = None;
        drop(s);
        for &i in order {
            if let Some((pos, data)) = pending.get(i) {
                self.inner.write(*pos, data)?;
            }
        }
        self.inner.flush()
    }

    /// Like a crash that keeps every unflushed write (a clean stop).
    pub fn crash_keep_all(&self) -> Result<()> {
        self.crash(&|_| true)
    }

    fn dead(s: &State) -> bool {
        s.fail_after.is_some_and(|f| s.ops >= f)
    }
}

fn power_off() -> Error {
    Error::new(ErrorKind::Io, "crash disk: power is off")
}

impl<D: BlockSet> BlockSet for CrashDisk<D> {
    fn read(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self.inner.nblocks(), pos, buf.len())?;
        let s = self.lock()?;
        if Self::dead(&s) {
            return Err(power_off());
        }
        self.inner.read(pos, buf)?;
        for (p, data) in &s.pending {
            if let Some(off) = p.checked_sub(pos) {
                let start = usize::try_from(off)
                    .ok()
                    .and_then(|o| o.checked_mul(BLOCK_SIZE));
                let end = start.and_then(|st| st.checked_add(BLOCK_SIZE));
                if let Some(dst) = start.zip(end).and_then(|(st, e)| buf.get_mut(st..e)) {
                    dst.copy_from_slice(data);
                }
            }
        }
        Ok(())
    }

    fn write(&self, pos: u64, buf: &[u8]) -> Result<()> {
        check_range(self.inner.nblocks(), pos, buf.len())?;
        let mut s = self.lock()?;
        if Self::dead(&s) {
            return Err(power_off());
        }
        let n = buf.len() / BLOCK_SIZE;
        s.pending.try_reserve(n)?;
        for (i, chunk) in buf.chunks_exact(BLOCK_SIZE).enumerate() {
            let mut v = Vec::new();
            v.try_reserve_exact(BLOCK_SIZE)?;
            v.extend_from_slice(chunk);
            s.pending.push((pos + i as u64, v.into_boxed_slice()));
        }
        s.ops += 1;
        s.writes += n as u64;
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        let mut s = self.lock()?;
        if Self::dead(&s) {
            return Err(power_off());
        }
        for (pos, data) in &s.pending {
            self.inner.write(*pos, data)?;
        }
        self.inner.flush()?;
        s.pending.clear();
        s.ops += 1;
        s.flushes += 1;
        Ok(())
    }

    fn nblocks(&self) -> u64 {
        self.inner.nblocks()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bio::MemDisk;
    use std::sync::Arc;

    fn blk(b: u8) -> Vec<u8> {
        vec![b; BLOCK_SIZE]
    }

    #[test]
    fn volatile_until_flush() {
        let mem = Arc::new(MemDisk::new(4).unwrap());
        let d = CrashDisk::new(mem.clone());
        d.write(1, &blk(1)).unwrap();
        let mut r = blk(0);
        d.read(1, &mut r).unwrap();
        assert_eq!(r, blk(1));
        mem.read(1, &mut r).unwrap();
        assert_eq!(r, blk(0));
        d.flush().unwrap();
        mem.read(1, &mut r).unwrap();
        assert_eq!(r, blk(1));
        assert_eq!((d.op_count(), d.write_count(), d.flush_count()), (2, 1, 1));
    }

    #[test]
    fn crash_keeps_subset_and_tears_multiblock_writes() {
        let mem = Arc::new(MemDisk::new(4).unwrap());
        let d = CrashDisk::new(mem.clone());
        let mut two = blk(2);
        two.extend_from_slice(&blk(3));
        d.write(0, &two).unwrap();
        d.write(2, &blk(4)).unwrap();
        assert_eq!(d.pending_count(), 3);
        d.crash(&|i| i == 1).unwrap();
        let mut r = vec![0u8; 4 * BLOCK_SIZE];
        d.read(0, &mut r).unwrap();
        assert_eq!(&r[..BLOCK_SIZE], &blk(0)[..]);
        assert_eq!(&r[BLOCK_SIZE..2 * BLOCK_SIZE], &blk(3)[..]);
        assert_eq!(&r[2 * BLOCK_SIZE..3 * BLOCK_SIZE], &blk(0)[..]);
    }

    #[test]
    fn crash_in_any_order() {
        let mem = Arc::new(MemDisk::new(2).unwrap());
        let d = CrashDisk::new(mem);
        d.write(0, &blk(1)).unwrap();
        d.write(0, &blk(2)).unwrap();
        d.crash_in_order(&[1, 0]).unwrap();
        let mut r = blk(0);
        d.read(0, &mut r).unwrap();
        assert_eq!(r, blk(1), "the older write landed last");
    }

    #[test]
    fn power_cut_after_n_ops() {
        let mem = Arc::new(MemDisk::new(2).unwrap());
        let d = CrashDisk::new(mem);
        d.crash_after_ops(2).unwrap();
        d.write(0, &blk(1)).unwrap();
        d.flush().unwrap();
        assert!(d.is_dead());
        assert_eq!(d.write(1, &blk(2)).unwrap_err().kind(), ErrorKind::Io);
        assert_eq!(d.flush().unwrap_err().kind(), ErrorKind::Io);
        let mut r = blk(0);
        assert_eq!(d.read(0, &mut r).unwrap_err().kind(), ErrorKind::Io);
        d.crash(&|_| true).unwrap();
        d.read(0, &mut r).unwrap();
        assert_eq!(r, blk(1));
    }
}
