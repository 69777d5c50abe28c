//! A bounded LRU cache of checked table blocks.
//!
//! Keyed by (table sequence number, block position). A block enters the
//! cache only after its check passed, or as written by the tree itself
//! ([`BlockCache::insert`], a table being built), so a hit needs no
//! re-check. At most
//! `max(capacity, 1)` blocks of 4 KiB are held (one is always kept as the
//! buffer a miss is read into, so capacity 0 still works, uncached).
//! Entries are a vector sorted by key (a hit is a binary search); the
//! least recently used entry is found by a scan of the ticks, on a miss
//! only (which reads and checks a block, far costlier). The vector is
//! reserved with `try_reserve`, so a full cache or a failed allocation is
//! an error (`OutOfMemory`), never an abort.

use alloc::vec::Vec;

use super::format::BlockKind;
use super::table::{BlockFetch, BlockSource};
use crate::bio::BLOCK_SIZE;
use crate::{Error, ErrorKind, Result};

type Key = (u64, u64);

struct Entry {
    key: Key,
    tick: u64,
    data: Vec<u8>,
}

/// An LRU cache of blocks.
pub struct BlockCache {
    cap: usize,
    /// The capacity asked for (`cap` is at least 1).
    limit: usize,
    tick: u64,
    /// Sorted by key.
    map: Vec<Entry>,
    hits: u64,
    misses: u64,
}

impl BlockCache {
    /// A cache of at most `max(cap, 1)` blocks.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            limit: cap,
            tick: 0,
            map: Vec::new(),
            hits: 0,
            misses: 0,
        }
    }

    /// A block buffer for a new entry: the least recently used entry's,
    /// taken out of the cache when it is full (`at`, the new entry's
    /// place, moves down if the taken entry was before it), else a newly
    /// reserved one.
    fn free_buffer(&mut self, at: &mut usize) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        if self.map.len() >= self.cap {
            let lru = self
                .map
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.tick)
                .map(|(i, _)| i);
            if let Some(i) = lru {
                data = self.map.remove(i).data;
                if i < *at {
                    *at -= 1;
                }
            }
        }
        if data.len() != BLOCK_SIZE {
            data.clear();
            data.try_reserve_exact(BLOCK_SIZE)?;
            data.resize(BLOCK_SIZE, 0);
        }
        Ok(data)
    }

    /// Blocks held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no block is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn find(&self, key: Key) -> core::result::Result<usize, usize> {
        self.map.binary_search_by_key(&key, |e| e.key)
    }

    /// Whether block `pos` of `table` is held, or there is room to load it
    /// without evicting anything (never, for a capacity of 0).
    pub fn holds_or_has_room(&self, table: u64, pos: u64) -> bool {
        self.find((table, pos)).is_ok() || self.map.len() < self.limit
    }

    /// Whether block `pos` of `table` is held.
    pub fn holds(&self, table: u64, pos: u64) -> bool {
        self.find((table, pos)).is_ok()
    }

    /// Blocks held.
    pub fn blocks(&self) -> usize {
        self.map.len()
    }

    /// (hits, misses) so far.
    pub fn counters(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    /// Whether any block of table `table` is held.
    pub fn holds_table(&self, table: u64) -> bool {
        let i = self.map.partition_point(|e| e.key.0 < table);
        self.map.get(i).is_some_and(|e| e.key.0 == table)
    }

    /// Puts block `pos` of `table` in the cache as the most recently used
    /// (evicting the least recently used when full): a block the caller
    /// wrote itself, so it needs no check. A block already held is
    /// replaced. Best effort: when the entry cannot be allocated nothing
    /// is cached and the error is returned (the cache stays consistent;
    /// callers may ignore it).
    pub fn insert(&mut self, table: u64, pos: u64, block: &[u8]) -> Result<()> {
        if self.limit == 0 || block.len() != BLOCK_SIZE {
            return Ok(());
        }
        let key = (table, pos);
        self.tick += 1;
        let tick = self.tick;
        let mut at = match self.find(key) {
            Ok(i) => {
                if let Some(e) = self.map.get_mut(i) {
                    e.data.copy_from_slice(block);
                    e.tick = tick;
                }
                return Ok(());
            }
            Err(i) => i,
        };
        let mut data = self.free_buffer(&mut at)?;
        self.map.try_reserve(1)?;
        data.copy_from_slice(block);
        self.map.insert(at, Entry { key, tick, data });
        Ok(())
    }

    /// Drops every block of table `table`.
    pub fn remove_table(&mut self, table: u64) {
        let lo = self.map.partition_point(|e| e.key.0 < table);
        let hi = self.map.partition_point(|e| e.key.0 <= table);
        if lo < hi {
            self.map.drain(lo..hi);
        }
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// [`Self::get_or_load`] for block `pos` of a run of blocks of the
    /// same kind that ends before block `end` (a table's data blocks). On a
    /// miss, while the cache has room for them without evicting anything
    /// (it is filling up, as after an open), the blocks after `pos` that are
    /// not cached yet are read in the same request, up to `ahead` blocks
    /// in all and not past `end`, checked with `check` and cached
    /// too: a cold cache warms several blocks per device request. A later
    /// block that fails its check is only left out; `pos`'s decides, as in
    /// [`Self::get_or_load`]. A full cache reads one block, as before.
    #[allow(clippy::too_many_arguments)]
    pub fn get_or_load_ahead(
        &mut self,
        table: u64,
        pos: u64,
        end: u64,
        ahead: u64,
        src: &dyn BlockSource,
        check: &dyn Fn(&[u8]) -> Result<()>,
    ) -> Result<&[u8]> {
        if self.find((table, pos)).is_err() {
            let mut n = 1u64;
            while n < ahead
                && pos.saturating_add(n) < end
                && self.map.len().saturating_add(n as usize + 1) <= self.limit
                && !self.holds(table, pos + n)
            {
                n += 1;
            }
            if n > 1 && self.load_run(table, pos, n, src, check)? {
                // `pos` was read for this lookup: a miss.
                self.misses += 1;
                let i = self
                    .find((table, pos))
                    .map_err(|_| Error::new(ErrorKind::InvalidState, "cache: entry vanished"))?;
                return self
                    .map
                    .get(i)
                    .map(|e| e.data.as_slice())
                    .ok_or(Error::new(ErrorKind::InvalidState, "cache: entry vanished"));
            }
        }
        self.get_or_load(table, pos, src, check)
    }

    /// Reads blocks `pos..pos + n` of `table` in one request and caches
    /// those that pass `check`; `pos` must pass it. Whether `pos` is cached
    /// now (a failed allocation or read caches nothing and is no error: the
    /// caller then reads `pos` alone).
    fn load_run(
        &mut self,
        table: u64,
        pos: u64,
        n: u64,
        src: &dyn BlockSource,
        check: &dyn Fn(&[u8]) -> Result<()>,
    ) -> Result<bool> {
        let mut buf: Vec<u8> = Vec::new();
        if buf.try_reserve_exact(n as usize * BLOCK_SIZE).is_err() {
            return Ok(false);
        }
        buf.resize(n as usize * BLOCK_SIZE, 0);
        if src.read_blocks(pos, &mut buf).is_err() {
            // A block read ahead may be what failed (a device error, a
            // block that does not verify): the caller reads `pos` alone,
            // so the lookup fails only if its own block does.
            return Ok(false);
        }
        for (k, blk) in buf.chunks_exact(BLOCK_SIZE).enumerate().rev() {
            match check(blk) {
                Ok(()) => {
                    // Best effort (an allocation failure caches less);
                    // `pos` last, as the most recently used.
                    let _ = self.insert(table, pos + k as u64, blk);
                }
                Err(e) if k == 0 => return Err(e),
                Err(_) => {}
            }
        }
        Ok(self.holds(table, pos))
    }

    /// Block `pos` of table `table`: from the cache, or read from `src`,
    /// checked with `check` and cached. A failed read, check or allocation
    /// caches nothing (an evicted block stays evicted).
    pub fn get_or_load(
        &mut self,
        table: u64,
        pos: u64,
        src: &dyn BlockSource,
        check: &dyn Fn(&[u8]) -> Result<()>,
    ) -> Result<&[u8]> {
        let key = (table, pos);
        self.tick += 1;
        let tick = self.tick;
        let at = match self.find(key) {
            Ok(i) => {
                self.hits += 1;
                let e = self
                    .map
                    .get_mut(i)
                    .ok_or(Error::new(ErrorKind::InvalidState, "cache: entry vanished"))?;
                e.tick = tick;
                return Ok(e.data.as_slice());
            }
            Err(i) => i,
        };
        self.misses += 1;
        let mut at = at;
        let mut data = self.free_buffer(&mut at)?;
        self.map.try_reserve(1)?;
        src.read_block(pos, &mut data)?;
        check(&data)?;
        self.map.insert(at, Entry { key, tick, data });
        self.map
            .get(at)
            .map(|e| e.data.as_slice())
            .ok_or(Error::new(ErrorKind::InvalidState, "cache: entry vanished"))
    }
}

/// A [`BlockFetch`] for one table: data blocks through the data cache;
/// index blocks, and bloom blocks when the table's filter is used, in the
/// pinned set while it has room (a block loaded there stays until its
/// table is deleted), else through the meta cache.
pub struct CachedFetch<'a> {
    /// The table's sequence number.
    pub table: u64,
    /// Where its blocks come from.
    pub src: &'a dyn BlockSource,
    /// Cache of index and bloom blocks that the pinned set has no room for.
    pub meta: &'a mut BlockCache,
    /// The pinned index and bloom blocks (never evicted).
    pub pinned: &'a mut BlockCache,
    /// Whether the lookup checks the table's bloom filter.
    pub use_bloom: bool,
    /// Cache of data blocks.
    pub data: &'a mut BlockCache,
    /// Data blocks read in one request on a miss while the data cache
    /// fills ([`BlockCache::get_or_load_ahead`]).
    pub read_ahead: u64,
    /// Counts lookups the bloom filter answered.
    pub bloom_negatives: &'a mut u64,
}

impl BlockFetch for CachedFetch<'_> {
    fn fetch_data(
        &mut self,
        pos: u64,
        n_data: u64,
        check: &dyn Fn(&[u8]) -> Result<()>,
    ) -> Result<&[u8]> {
        self.data
            .get_or_load_ahead(self.table, pos, n_data, self.read_ahead, self.src, check)
    }

    fn fetch(
        &mut self,
        pos: u64,
        kind: BlockKind,
        check: &dyn Fn(&[u8]) -> Result<()>,
    ) -> Result<&[u8]> {
        let cache = match kind {
            BlockKind::Data => &mut *self.data,
            _ if self.pinned.holds_or_has_room(self.table, pos) => &mut *self.pinned,
            _ => &mut *self.meta,
        };
        cache.get_or_load(self.table, pos, self.src, check)
    }

    fn bloom_negative(&mut self) {
        *self.bloom_negatives += 1;
    }

    fn use_bloom(&self) -> bool {
        self.use_bloom
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use core::cell::Cell;

    struct Counting<'a>(Vec<Vec<u8>>, &'a Cell<u32>);
    impl BlockSource for Counting<'_> {
        fn read_block(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
            self.1.set(self.1.get() + 1);
            self.0.read_block(pos, buf)
        }
    }

    #[test]
    fn inserted_blocks_are_hits_and_obey_the_bound() {
        let reads = Cell::new(0);
        let src = Counting((0..10u8).map(|i| vec![i; BLOCK_SIZE]).collect(), &reads);
        let ok = |_: &[u8]| Ok(());
        let mut c = BlockCache::new(2);
        assert!(!c.holds_table(5));
        c.insert(5, 1, &[0xaa; BLOCK_SIZE]).unwrap();
        assert!(c.holds_table(5) && !c.holds_table(4) && !c.holds_table(6));
        // Served from the cache, not the source.
        assert_eq!(c.get_or_load(5, 1, &src, &ok).unwrap()[0], 0xaa);
        assert_eq!(reads.get(), 0);
        // Replacing keeps one entry; a third block evicts the LRU one.
        c.insert(5, 1, &[0xbb; BLOCK_SIZE]).unwrap();
        c.insert(6, 0, &[0xcc; BLOCK_SIZE]).unwrap();
        assert_eq!(c.len(), 2);
        c.insert(6, 1, &[0xdd; BLOCK_SIZE]).unwrap();
        assert_eq!(c.len(), 2);
        assert!(!c.holds(5, 1) && c.holds(6, 0) && c.holds(6, 1));
        // A wrong-sized block and a capacity-0 cache store nothing.
        c.insert(7, 0, &[1u8; 10]).unwrap();
        assert!(!c.holds_table(7));
        let mut z = BlockCache::new(0);
        z.insert(1, 0, &[1u8; BLOCK_SIZE]).unwrap();
        assert!(z.is_empty());
    }

    /// Counts requests: a run of blocks is one.
    struct Requests<'a>(Vec<Vec<u8>>, &'a Cell<u32>);
    impl BlockSource for Requests<'_> {
        fn read_block(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
            self.read_blocks(pos, buf)
        }
        fn read_blocks(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
            self.1.set(self.1.get() + 1);
            for (i, b) in buf.chunks_exact_mut(BLOCK_SIZE).enumerate() {
                self.0.read_block(pos + i as u64, b)?;
            }
            Ok(())
        }
    }

    #[test]
    fn a_filling_cache_reads_ahead_and_a_full_one_does_not() {
        let reqs = Cell::new(0);
        let src = Requests((0..40u8).map(|i| vec![i; BLOCK_SIZE]).collect(), &reqs);
        let ok = |_: &[u8]| Ok(());
        let mut c = BlockCache::new(20);
        // A miss reads `ahead` blocks in one request.
        assert_eq!(c.get_or_load_ahead(1, 0, 20, 8, &src, &ok).unwrap()[0], 0);
        assert_eq!((reqs.get(), c.len()), (1, 8));
        assert_eq!(c.counters(), (0, 1));
        // The blocks read ahead are hits.
        assert_eq!(c.get_or_load_ahead(1, 5, 20, 8, &src, &ok).unwrap()[0], 5);
        assert_eq!((reqs.get(), c.counters()), (1, (1, 1)));
        // Not past `end`, and not over a block already cached.
        assert_eq!(c.get_or_load_ahead(1, 17, 20, 8, &src, &ok).unwrap()[0], 17);
        assert_eq!((reqs.get(), c.len()), (2, 11));
        assert_eq!(c.get_or_load_ahead(1, 12, 20, 8, &src, &ok).unwrap()[0], 12);
        assert_eq!((reqs.get(), c.len()), (3, 16));
        assert!(c.holds(1, 16) && !c.holds(1, 8));
        // Room for fewer than `ahead` more: only as many as fit.
        c.get_or_load_ahead(2, 0, 40, 8, &src, &ok).unwrap();
        assert_eq!((reqs.get(), c.len()), (4, 20));
        assert!(c.holds(2, 3) && !c.holds(2, 4));
        // A full cache reads the one block it needs.
        c.get_or_load_ahead(2, 30, 40, 8, &src, &ok).unwrap();
        assert_eq!((reqs.get(), c.len()), (5, 20));
        assert!(c.holds(2, 30) && !c.holds(2, 31));
        assert_eq!(c.counters(), (1, 5));
    }

    /// Fails every read that reaches block `bad`.
    struct FailsAt<'a>(Requests<'a>, u64);
    impl BlockSource for FailsAt<'_> {
        fn read_block(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
            self.read_blocks(pos, buf)
        }
        fn read_blocks(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
            let n = (buf.len() / BLOCK_SIZE) as u64;
            if (pos..pos + n).contains(&self.1) {
                self.0 .1.set(self.0 .1.get() + 1);
                return Err(Error::new(ErrorKind::Integrity, "bad block"));
            }
            self.0.read_blocks(pos, buf)
        }
    }

    #[test]
    fn a_read_ahead_that_fails_falls_back_to_the_one_block() {
        let reqs = Cell::new(0);
        let src = FailsAt(
            Requests((0..10u8).map(|i| vec![i; BLOCK_SIZE]).collect(), &reqs),
            4,
        );
        let ok = |_: &[u8]| Ok(());
        let mut c = BlockCache::new(16);
        // Block 4 is bad: the run 0..8 fails, block 0 alone is read.
        assert_eq!(c.get_or_load_ahead(1, 0, 10, 8, &src, &ok).unwrap()[0], 0);
        assert_eq!(reqs.get(), 2);
        assert!(c.holds(1, 0) && !c.holds(1, 1));
        // Block 4 itself still fails.
        assert!(c.get_or_load_ahead(1, 4, 10, 8, &src, &ok).is_err());
    }

    #[test]
    fn a_block_read_ahead_that_fails_its_check_is_left_out() {
        let reqs = Cell::new(0);
        let src = Requests((0..10u8).map(|i| vec![i; BLOCK_SIZE]).collect(), &reqs);
        let not3 = |b: &[u8]| {
            if b[0] == 3 {
                Err(Error::new(ErrorKind::Corrupted, "bad"))
            } else {
                Ok(())
            }
        };
        let mut c = BlockCache::new(16);
        c.get_or_load_ahead(1, 0, 10, 8, &src, &not3).unwrap();
        assert!(c.holds(1, 2) && !c.holds(1, 3) && c.holds(1, 4));
        // The block asked for decides: its failed check is the error, and
        // nothing of that request stays for it.
        let mut d = BlockCache::new(16);
        assert!(d.get_or_load_ahead(1, 3, 10, 8, &src, &not3).is_err());
        assert!(!d.holds(1, 3));
    }

    #[test]
    fn lru_order_and_bound() {
        let reads = Cell::new(0);
        let src = Counting((0..10u8).map(|i| vec![i; BLOCK_SIZE]).collect(), &reads);
        let ok = |_: &[u8]| Ok(());
        let mut c = BlockCache::new(3);
        for p in [0, 1, 2, 0, 3] {
            let b = c.get_or_load(7, p, &src, &ok).unwrap();
            assert_eq!(b[0], p as u8);
        }
        // 1 was least recently used and got evicted; 0, 2, 3 stay.
        assert_eq!(c.len(), 3);
        assert_eq!(reads.get(), 4);
        c.get_or_load(7, 0, &src, &ok).unwrap();
        c.get_or_load(7, 2, &src, &ok).unwrap();
        assert_eq!(reads.get(), 4);
        c.get_or_load(7, 1, &src, &ok).unwrap();
        assert_eq!(reads.get(), 5);
        assert_eq!(c.counters(), (3, 5));
        c.remove_table(7);
        assert!(c.is_empty());
        // A failed check caches nothing.
        let bad = |_: &[u8]| Err(Error::new(ErrorKind::Corrupted, "x"));
        assert!(c.get_or_load(7, 1, &src, &bad).is_err());
        assert!(c.is_empty());
        // Capacity 0 behaves as 1.
        let mut c = BlockCache::new(0);
        assert_eq!(c.get_or_load(1, 4, &src, &ok).unwrap()[0], 4);
        assert_eq!(c.get_or_load(1, 5, &src, &ok).unwrap()[0], 5);
        assert_eq!(c.len(), 1);
    }
}
