//! A write-combining layer for the metadata regions.
//!
//! The log store below the index writes one 4 KiB block at a time (WAL
//! blocks, table blocks, Merkle nodes, journal blocks). On a device that
//! charges per request that is the dominant cost of a sync, so the disk
//! puts this layer between the store and the device: writes stay in memory
//! until the next flush (or until `cap` blocks are buffered) and then go
//! out in block order, one request per run of contiguous blocks (of at
//! most 1 MiB, from one page-aligned buffer). Reads see the buffered
//! blocks.
//!
//! This keeps the [`BlockSet`] contract: a write is durable only after a
//! later flush returns, and until then a crash may keep any subset of the
//! unflushed writes (here: none of the buffered ones, or the runs drained
//! before the crash). Memory: `cap` blocks plus 16 bytes per slot, and
//! during a drain a buffer of up to 1 MiB.
//!
//! The core has no lock of its own (`no_std`, no `unsafe`), so the buffer
//! is made of atomics: always memory-safe, and exact as long as writes and
//! flushes are not issued concurrently with each other, which the disk
//! guarantees (it is single-threaded per instance). The block contents are
//! stored and loaded `Relaxed` (plain moves; a sequentially consistent
//! store is a locked instruction, 512 per block: 5.5 % of the CPU samples
//! of a fill and steady 256 KiB overwrites of a 2 GiB disk, 1.1 % since): a block copied word by word is never
//! atomic as a whole anyway, whatever the ordering of each word, and the
//! slot tags keep their ordering.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};

use crate::bio::{check_range, AlignedBuf, BlockSet, BLOCK_SIZE};
use crate::{Error, ErrorKind, Result};

const WORDS: usize = BLOCK_SIZE / 8;

/// The most blocks one drained request carries (1 MiB): the drain's
/// buffer is at most this long, whatever the buffer's capacity.
const DRAIN_BLOCKS: usize = 256;

/// `D` with buffered, combined writes (see the module documentation).
pub struct Coalesce<D> {
    inner: D,
    /// Block contents, `WORDS` words per slot.
    words: Vec<AtomicU64>,
    /// Per slot: block number + 1 (0 = empty).
    tags: Vec<AtomicU64>,
    used: AtomicUsize,
}

impl<D: BlockSet> Coalesce<D> {
    /// Wraps `inner` with a buffer of `cap` blocks (at least 1).
    pub fn new(inner: D, cap: usize) -> Result<Self> {
        let cap = cap.max(1);
        let mut words = Vec::new();
        words.try_reserve_exact(cap.checked_mul(WORDS).ok_or(Error::oom())?)?;
        words.resize_with(cap * WORDS, || AtomicU64::new(0));
        let mut tags = Vec::new();
        tags.try_reserve_exact(cap)?;
        tags.resize_with(cap, || AtomicU64::new(0));
        Ok(Self {
            inner,
            words,
            tags,
            used: AtomicUsize::new(0),
        })
    }

    /// The device underneath.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    fn slot_of(&self, pos: u64) -> Option<usize> {
        let n = self.used.load(SeqCst);
        self.tags
            .iter()
            .take(n)
            .position(|t| t.load(SeqCst) == pos + 1)
    }

    fn slot_words(&self, slot: usize) -> Result<&[AtomicU64]> {
        self.words
            .get(slot * WORDS..(slot + 1) * WORDS)
            .ok_or(Error::new(ErrorKind::InvalidState, "coalesce slot"))
    }

    fn store(&self, slot: usize, data: &[u8]) -> Result<()> {
        for (w, c) in self.slot_words(slot)?.iter().zip(data.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            w.store(u64::from_le_bytes(b), Relaxed);
        }
        Ok(())
    }

    fn load(&self, slot: usize, out: &mut [u8]) -> Result<()> {
        for (w, c) in self.slot_words(slot)?.iter().zip(out.chunks_exact_mut(8)) {
            c.copy_from_slice(&w.load(Relaxed).to_le_bytes());
        }
        Ok(())
    }

    /// Writes every buffered block to the device, contiguous runs as one
    /// request each, and empties the buffer. On error the buffer is kept.
    fn drain(&self) -> Result<()> {
        let n = self.used.load(SeqCst);
        if n == 0 {
            return Ok(());
        }
        let mut order: Vec<(u64, usize)> = Vec::new();
        order.try_reserve_exact(n)?;
        for (slot, t) in self.tags.iter().take(n).enumerate() {
            let tag = t.load(SeqCst);
            if tag != 0 {
                order.push((tag - 1, slot));
            }
        }
        order.sort_unstable();
        // Page-aligned (a device opened with `O_DIRECT` takes it as it
        // is) and at most `DRAIN_BLOCKS` long: a longer run goes out in
        // requests of that many blocks.
        let mut run = AlignedBuf::zeroed(n.min(DRAIN_BLOCKS) * BLOCK_SIZE)?;
        let mut rest = order.as_slice();
        while let Some(((start, _), _)) = rest.split_first() {
            let len = rest
                .iter()
                .enumerate()
                .take(DRAIN_BLOCKS)
                .take_while(|(i, (p, _))| *p == start + *i as u64)
                .count();
            let (now, later) = rest.split_at(len);
            rest = later;
            let out = run
                .as_mut_slice()
                .get_mut(..len * BLOCK_SIZE)
                .ok_or(Error::new(ErrorKind::InvalidState, "coalesce run"))?;
            for ((_, slot), blk) in now.iter().zip(out.chunks_exact_mut(BLOCK_SIZE)) {
                self.load(*slot, blk)?;
            }
            self.inner.write(*start, out)?;
        }
        for t in self.tags.iter().take(n) {
            t.store(0, SeqCst);
        }
        self.used.store(0, SeqCst);
        Ok(())
    }
}

impl<D: BlockSet> BlockSet for Coalesce<D> {
    fn read(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self.inner.nblocks(), pos, buf.len())?;
        if self.used.load(SeqCst) == 0 {
            return self.inner.read(pos, buf);
        }
        // Unbuffered blocks are read in runs; buffered ones copied.
        let mut i = 0usize;
        let n = buf.len() / BLOCK_SIZE;
        while i < n {
            let p = pos + i as u64;
            if let Some(slot) = self.slot_of(p) {
                let blk = buf
                    .get_mut(i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE)
                    .ok_or(Error::new(ErrorKind::InvalidState, "coalesce read"))?;
                self.load(slot, blk)?;
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < n && self.slot_of(pos + j as u64).is_none() {
                j += 1;
            }
            let span = buf
                .get_mut(i * BLOCK_SIZE..j * BLOCK_SIZE)
                .ok_or(Error::new(ErrorKind::InvalidState, "coalesce read"))?;
            self.inner.read(p, span)?;
            i = j;
        }
        Ok(())
    }

    fn read_ranges(&self, ranges: &mut [(u64, &mut [u8])]) -> Result<()> {
        for (pos, buf) in ranges.iter() {
            check_range(self.inner.nblocks(), *pos, buf.len())?;
        }
        if self.used.load(SeqCst) == 0 {
            return self.inner.read_ranges(ranges);
        }
        // A range with a buffered block is read as by `read` (its buffered
        // blocks copied); all the others go below together, in one call.
        let mut below: Vec<(u64, &mut [u8])> = Vec::new();
        below.try_reserve_exact(ranges.len())?;
        for (pos, buf) in ranges.iter_mut() {
            let n = (buf.len() / BLOCK_SIZE) as u64;
            if (0..n).any(|i| self.slot_of(*pos + i).is_some()) {
                self.read(*pos, buf)?;
            } else {
                below.push((*pos, &mut **buf));
            }
        }
        if below.is_empty() {
            return Ok(());
        }
        self.inner.read_ranges(&mut below)
    }

    fn write(&self, pos: u64, buf: &[u8]) -> Result<()> {
        check_range(self.inner.nblocks(), pos, buf.len())?;
        for (i, blk) in buf.chunks_exact(BLOCK_SIZE).enumerate() {
            let p = pos + i as u64;
            let slot = match self.slot_of(p) {
                Some(s) => s,
                None => {
                    if self.used.load(SeqCst) >= self.tags.len() {
                        self.drain()?;
                    }
                    let s = self.used.load(SeqCst);
                    self.tags
                        .get(s)
                        .ok_or(Error::new(ErrorKind::InvalidState, "coalesce slot"))?
                        .store(p + 1, SeqCst);
                    self.used.store(s + 1, SeqCst);
                    s
                }
            };
            self.store(slot, blk)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.drain()?;
        self.inner.flush()
    }

    fn nblocks(&self) -> u64 {
        self.inner.nblocks()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bio::MemDisk;
    use alloc::sync::Arc;

    #[test]
    fn buffers_until_flush_and_reads_through() {
        let mem = Arc::new(MemDisk::new(16).unwrap());
        let c = Coalesce::new(mem.clone(), 4).unwrap();
        let a = vec![1u8; 2 * BLOCK_SIZE];
        c.write(3, &a).unwrap();
        let mut r = vec![0u8; 4 * BLOCK_SIZE];
        mem.read(2, &mut r).unwrap();
        assert!(r.iter().all(|&x| x == 0), "nothing reached the device yet");
        c.read(2, &mut r).unwrap();
        assert!(r[..BLOCK_SIZE].iter().all(|&x| x == 0));
        assert!(r[BLOCK_SIZE..3 * BLOCK_SIZE].iter().all(|&x| x == 1));
        // Overwrite in place, then overflow the buffer: it drains.
        c.write(3, &vec![2u8; BLOCK_SIZE]).unwrap();
        c.write(10, &vec![3u8; 3 * BLOCK_SIZE]).unwrap();
        c.flush().unwrap();
        let mut one = vec![0u8; BLOCK_SIZE];
        for (p, v) in [(3u64, 2u8), (4, 1), (10, 3), (12, 3)] {
            mem.read(p, &mut one).unwrap();
            assert!(one.iter().all(|&x| x == v), "block {p}");
        }
        assert!(c.read(15, &mut r).is_err());
    }

    /// A device that counts `read_ranges` calls and their ranges, and
    /// records each write's place, length and alignment.
    struct Batches {
        mem: MemDisk,
        calls: AtomicUsize,
        ranges: AtomicUsize,
        writes: std::sync::Mutex<Vec<(u64, usize, bool)>>,
    }
    impl Batches {
        fn new(blocks: u64) -> Self {
            Self {
                mem: MemDisk::new(blocks).unwrap(),
                calls: AtomicUsize::new(0),
                ranges: AtomicUsize::new(0),
                writes: std::sync::Mutex::new(Vec::new()),
            }
        }
    }
    impl Batches {
        /// (calls, ranges) since the last look, and starts again.
        fn take(&self) -> (usize, usize) {
            (self.calls.swap(0, SeqCst), self.ranges.swap(0, SeqCst))
        }
    }
    impl BlockSet for Batches {
        fn read(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
            self.mem.read(pos, buf)
        }
        fn read_ranges(&self, ranges: &mut [(u64, &mut [u8])]) -> Result<()> {
            self.calls.fetch_add(1, SeqCst);
            self.ranges.fetch_add(ranges.len(), SeqCst);
            for (p, b) in ranges.iter_mut() {
                self.mem.read(*p, b)?;
            }
            Ok(())
        }
        fn write(&self, pos: u64, buf: &[u8]) -> Result<()> {
            let aligned = crate::bio::is_page_aligned(buf);
            self.writes
                .lock()
                .unwrap()
                .push((pos, buf.len() / BLOCK_SIZE, aligned));
            self.mem.write(pos, buf)
        }
        fn flush(&self) -> Result<()> {
            Ok(())
        }
        fn nblocks(&self) -> u64 {
            self.mem.nblocks()
        }
    }

    /// A scattered read with blocks buffered: the ranges that hold one see
    /// the buffered data; all the others still go below in one call (the
    /// index's scattered reads happen while index writes are buffered).
    #[test]
    fn read_ranges_sees_the_buffer_and_sends_the_rest_below_at_once() {
        let dev = Batches::new(32);
        for p in 0..32u64 {
            dev.mem.write(p, &vec![p as u8; BLOCK_SIZE]).unwrap();
        }
        let c = Coalesce::new(&dev, 8).unwrap();
        c.write(5, &vec![0xaa; BLOCK_SIZE]).unwrap();
        c.write(20, &vec![0xbb; 2 * BLOCK_SIZE]).unwrap();
        let (mut a, mut b, mut d, mut e) = (
            vec![0u8; 2 * BLOCK_SIZE],
            vec![0u8; BLOCK_SIZE],
            vec![0u8; 3 * BLOCK_SIZE],
            vec![0u8; BLOCK_SIZE],
        );
        let mut ranges: Vec<(u64, &mut [u8])> =
            vec![(4, &mut a), (9, &mut b), (19, &mut d), (30, &mut e)];
        c.read_ranges(&mut ranges).unwrap();
        let blocks = |v: &[u8]| -> Vec<u8> { v.chunks_exact(BLOCK_SIZE).map(|b| b[0]).collect() };
        assert_eq!(blocks(&a), [4, 0xaa]);
        assert_eq!(blocks(&b), [9]);
        assert_eq!(blocks(&d), [19, 0xbb, 0xbb]);
        assert_eq!(blocks(&e), [30]);
        // The two ranges without a buffered block, in one call.
        assert_eq!(dev.take(), (1, 2));
        // Nothing buffered: the whole batch goes below as it is.
        c.flush().unwrap();
        let mut ranges: Vec<(u64, &mut [u8])> = vec![(4, &mut a), (19, &mut d)];
        c.read_ranges(&mut ranges).unwrap();
        assert_eq!(dev.take(), (1, 2));
        assert_eq!(blocks(&a), [4, 0xaa]);
        // Out of range: refused before anything is read.
        let mut ranges: Vec<(u64, &mut [u8])> = vec![(4, &mut a), (31, &mut d)];
        assert!(c.read_ranges(&mut ranges).is_err());
        assert_eq!(dev.take(), (0, 0));
    }

    /// A drain sends each contiguous run in page-aligned requests of at
    /// most `DRAIN_BLOCKS` blocks, in block order, with the right contents.
    #[test]
    fn drain_writes_runs_in_bounded_aligned_requests() {
        let dev = Batches::new(1024);
        let c = Coalesce::new(&dev, 1024).unwrap();
        let long = DRAIN_BLOCKS * 2 + 88;
        let data: Vec<u8> = (0..long * BLOCK_SIZE)
            .map(|i| (i / BLOCK_SIZE) as u8)
            .collect();
        // The single block first: the drain sorts by block number.
        c.write(900, &vec![0xcc; BLOCK_SIZE]).unwrap();
        c.write(10, &data).unwrap();
        assert!(
            dev.writes.lock().unwrap().is_empty(),
            "buffered until the flush"
        );
        c.flush().unwrap();
        let log = dev.writes.lock().unwrap().clone();
        let d = DRAIN_BLOCKS as u64;
        assert_eq!(
            log,
            [
                (10, DRAIN_BLOCKS, true),
                (10 + d, DRAIN_BLOCKS, true),
                (10 + 2 * d, 88, true),
                (900, 1, true)
            ]
        );
        let mut back = vec![0u8; long * BLOCK_SIZE];
        dev.mem.read(10, &mut back).unwrap();
        assert!(back == data, "the drained run's contents");
        let mut one = vec![0u8; BLOCK_SIZE];
        dev.mem.read(900, &mut one).unwrap();
        assert!(one.iter().all(|&x| x == 0xcc));
    }
}
