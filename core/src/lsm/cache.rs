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
    /// Counts lookups the bloom filter answered.
    pub bloom_negatives: &'a mut u64,
}

impl BlockFetch for CachedFetch<'_> {
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
