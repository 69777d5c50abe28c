//! A bounded LRU cache of checked table blocks.
//!
//! Keyed by (table sequence number, block position). A block enters the
//! cache only after its check passed, or as written by the tree itself
//! ([`BlockCache::insert`], a table being built), so a hit needs no
//! re-check. At most `max(capacity, 1)` blocks of 4 KiB are held (one is
//! always kept as the buffer a miss is read into, so capacity 0 still
//! works, uncached).
//!
//! A hit and a miss each cost O(1): the entries live in slots, found
//! through an open-addressing hash index (linear probing, kept at most
//! half full, deletions by backward shift, so no tombstones), and linked in
//! a doubly linked list from the most to the least recently used, so the
//! victim of a miss is the list's tail. The order is exact LRU, as with
//! the sorted vector and its scan of ticks this replaced (a miss scanned
//! every entry and moved half the vector twice). Only the per-table
//! operations (dropping a deleted table's blocks, asking whether a table
//! has any) scan the slots; they run once per compaction, not per lookup.
//!
//! Memory: one slot (48 bytes and a 4 KiB buffer) per block held, and
//! 4 bytes per hash bucket, with at most 4 buckets per slot (the index
//! doubles when it would be more than half full). Slots, buffers and the
//! index grow as blocks are cached, never past the capacity, and every
//! allocation is fallible: a failed one is an error (`OutOfMemory`) that
//! leaves the cache consistent, never an abort. A slot freed by a dropped
//! table keeps its buffer for the next miss.

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::format::BlockKind;
use super::table::{BlockFetch, BlockSource};
use crate::bio::BLOCK_SIZE;
use crate::{Error, ErrorKind, Result};

type Key = (u64, u64);

/// No slot: an empty hash bucket, or the end of a list.
const NIL: u32 = u32::MAX;

/// Buckets of the smallest hash index.
const MIN_BUCKETS: usize = 16;

struct Slot {
    key: Key,
    /// One block.
    data: Box<[u8]>,
    /// Towards the most recently used (LRU list), or unused (free list).
    prev: u32,
    /// Towards the least recently used (LRU list), or the next free slot.
    next: u32,
    /// Whether the slot holds a cached block (else it is on the free list).
    live: bool,
}

/// An LRU cache of blocks.
pub struct BlockCache {
    cap: usize,
    /// The capacity asked for (`cap` is at least 1).
    limit: usize,
    slots: Vec<Slot>,
    /// The hash index: slot numbers, `NIL` for an empty bucket; a power of
    /// two long (or empty before the first entry).
    buckets: Vec<u32>,
    /// Live slots.
    len: usize,
    /// Slots with a block buffer: the live ones and the free ones (a bare
    /// slot has none). At most `cap`.
    buffers: usize,
    /// Most recently used live slot.
    head: u32,
    /// Least recently used live slot (the next victim).
    tail: u32,
    /// First slot of the free list (slots with a buffer and no block).
    free: u32,
    /// First slot of the bare list (slots without a buffer, after
    /// [`Self::set_limit`] lowered the capacity).
    bare: u32,
    hits: u64,
    misses: u64,
    /// The block after the last one the previous miss of
    /// [`Self::get_or_load_ahead`] loaded: a miss there is a sequential
    /// scan, which reads ahead even into a full cache.
    seq_next: Option<Key>,
    /// Blocks [`Self::insert_prefetched`] cached that no lookup fetched
    /// yet: each was counted as a miss when cached, so its fetch is not
    /// counted again as a hit.
    prefetched: u64,
}

/// Blocks a sequential scan reads per miss, at least (the leaves of a
/// stream of sequential reads: measured under the bench's device model,
/// 32 instead of the random read-ahead's 8 took seq-read from 0.90x to
/// 0.95x of CryptDisk on an 8 GiB working set).
pub const SEQ_AHEAD: u64 = 32;

fn oom() -> Error {
    Error::new(ErrorKind::OutOfMemory, "block cache")
}

fn vanished() -> Error {
    Error::new(ErrorKind::InvalidState, "cache: entry vanished")
}

/// A well-mixed 64-bit hash of a key (the table's sequence number and the
/// block's position; neither is chosen by the device).
fn hash(key: Key) -> u64 {
    let mut h = key.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ key.1;
    h = (h ^ (h >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
    h ^ (h >> 32)
}

/// A zeroed block buffer, or `OutOfMemory`.
fn new_buffer() -> Result<Box<[u8]>> {
    let mut v: Vec<u8> = Vec::new();
    v.try_reserve_exact(BLOCK_SIZE).map_err(|_| oom())?;
    v.resize(BLOCK_SIZE, 0);
    Ok(v.into_boxed_slice())
}

impl BlockCache {
    /// A cache of at most `max(cap, 1)` blocks.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            limit: cap,
            slots: Vec::new(),
            buckets: Vec::new(),
            len: 0,
            buffers: 0,
            head: NIL,
            tail: NIL,
            free: NIL,
            bare: NIL,
            hits: 0,
            misses: 0,
            seq_next: None,
            prefetched: 0,
        }
    }

    fn slot(&self, s: u32) -> Result<&Slot> {
        self.slots.get(s as usize).ok_or_else(vanished)
    }

    fn slot_mut(&mut self, s: u32) -> Result<&mut Slot> {
        self.slots.get_mut(s as usize).ok_or_else(vanished)
    }

    fn mask(&self) -> usize {
        self.buckets.len().wrapping_sub(1)
    }

    /// The bucket a key's probe starts at.
    fn home(&self, key: Key) -> usize {
        (hash(key) as usize) & self.mask()
    }

    /// The bucket holding `key`'s slot, and the slot.
    fn find(&self, key: Key) -> Option<(usize, u32)> {
        if self.buckets.is_empty() {
            return None;
        }
        let mut i = self.home(key);
        // The index is at most half full: a probe meets an empty bucket.
        for _ in 0..self.buckets.len() {
            let s = *self.buckets.get(i)?;
            if s == NIL {
                return None;
            }
            if self.slots.get(s as usize).is_some_and(|e| e.key == key) {
                return Some((i, s));
            }
            i = (i + 1) & self.mask();
        }
        None
    }

    /// Puts slot `s` (holding `key`, not indexed yet) into the hash index,
    /// which has room.
    fn index_put(&mut self, key: Key, s: u32) -> Result<()> {
        let mut i = self.home(key);
        for _ in 0..self.buckets.len() {
            let b = self.buckets.get_mut(i).ok_or_else(vanished)?;
            if *b == NIL {
                *b = s;
                return Ok(());
            }
            i = (i + 1) & self.mask();
        }
        Err(Error::new(
            ErrorKind::InvalidState,
            "cache: hash index full",
        ))
    }

    /// Empties bucket `i` and shifts back the entries of its probe run
    /// that would no longer be found past the gap.
    fn index_remove_at(&mut self, mut i: usize) -> Result<()> {
        let mask = self.mask();
        let mut j = i;
        for _ in 0..self.buckets.len() {
            j = (j + 1) & mask;
            let s = *self.buckets.get(j).ok_or_else(vanished)?;
            if s == NIL {
                break;
            }
            let k = self.home(self.slot(s)?.key);
            // Whether `k` lies cyclically in (i, j]: then the entry at `j`
            // is still reachable from its home and stays.
            let stays = if i <= j {
                i < k && k <= j
            } else {
                i < k || k <= j
            };
            if !stays {
                *self.buckets.get_mut(i).ok_or_else(vanished)? = s;
                i = j;
            }
        }
        *self.buckets.get_mut(i).ok_or_else(vanished)? = NIL;
        Ok(())
    }

    /// Makes the hash index big enough for `n` entries at most half full
    /// (rebuilt twice as large when not).
    fn reserve_index(&mut self, n: usize) -> Result<()> {
        let want = n.checked_mul(2).ok_or_else(oom)?.max(MIN_BUCKETS);
        if self.buckets.len() >= want {
            return Ok(());
        }
        let size = want.checked_next_power_of_two().ok_or_else(oom)?;
        let mut fresh: Vec<u32> = Vec::new();
        fresh.try_reserve_exact(size).map_err(|_| oom())?;
        fresh.resize(size, NIL);
        self.buckets = fresh;
        for s in 0..self.slots.len() {
            let e = self.slots.get(s).ok_or_else(vanished)?;
            if e.live {
                let key = e.key;
                self.index_put(key, s as u32)?;
            }
        }
        Ok(())
    }

    /// Takes live slot `s` out of the LRU list.
    fn unlink(&mut self, s: u32) -> Result<()> {
        let (p, n) = {
            let e = self.slot(s)?;
            (e.prev, e.next)
        };
        if p == NIL {
            self.head = n;
        } else {
            self.slot_mut(p)?.next = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.slot_mut(n)?.prev = p;
        }
        Ok(())
    }

    /// Links slot `s` as the most recently used.
    fn push_front(&mut self, s: u32) -> Result<()> {
        let old = self.head;
        {
            let e = self.slot_mut(s)?;
            e.prev = NIL;
            e.next = old;
        }
        if old == NIL {
            self.tail = s;
        } else {
            self.slot_mut(old)?.prev = s;
        }
        self.head = s;
        Ok(())
    }

    /// Marks live slot `s` the most recently used.
    fn touch(&mut self, s: u32) -> Result<()> {
        if self.head != s {
            self.unlink(s)?;
            self.push_front(s)?;
        }
        Ok(())
    }

    /// Drops the block of live slot `s` (indexed at bucket `at`): the slot
    /// goes to the free list with its buffer.
    fn evict(&mut self, at: usize, s: u32) -> Result<()> {
        self.index_remove_at(at)?;
        self.unlink(s)?;
        let free = self.free;
        let e = self.slot_mut(s)?;
        e.live = false;
        e.next = free;
        e.prev = NIL;
        self.free = s;
        self.len = self.len.saturating_sub(1);
        Ok(())
    }

    /// A slot, not live and off every list, whose buffer a new entry can
    /// fill: a free one, else (while under capacity) a bare one given a
    /// new buffer or a new one, else the least recently used entry's,
    /// evicted. An error (no memory) changes nothing.
    fn take_slot(&mut self) -> Result<u32> {
        // `buffers` is `len` plus the free slots: with none free and the
        // capacity reached, every buffer is a live entry's.
        if self.free == NIL && self.buffers >= self.cap {
            let victim = self.tail;
            let key = self.slot(victim)?.key;
            let (at, _) = self.find(key).ok_or_else(vanished)?;
            self.evict(at, victim)?;
        }
        if self.free != NIL {
            let s = self.free;
            self.free = self.slot(s)?.next;
            return Ok(s);
        }
        if self.bare != NIL {
            let s = self.bare;
            let data = new_buffer()?;
            let e = self.slot_mut(s)?;
            e.data = data;
            self.bare = e.next;
            self.buffers += 1;
            return Ok(s);
        }
        if self.slots.len() == self.slots.capacity() {
            let grow = self
                .slots
                .len()
                .max(MIN_BUCKETS)
                .min(self.cap.saturating_sub(self.slots.len()));
            self.slots
                .try_reserve_exact(grow.max(1))
                .map_err(|_| oom())?;
        }
        let data = new_buffer()?;
        let s = u32::try_from(self.slots.len()).map_err(|_| oom())?;
        if s == NIL {
            return Err(oom());
        }
        self.slots.push(Slot {
            key: (0, 0),
            data,
            prev: NIL,
            next: NIL,
            live: false,
        });
        self.buffers += 1;
        Ok(s)
    }

    /// Makes the cache hold at most `max(limit, 1)` blocks from now on.
    /// Lowering it frees the buffers of free slots and then evicts the
    /// least recently used blocks beyond it, freeing theirs, so the memory
    /// held shrinks with it; raising it lets the cache grow as misses come.
    /// The slot records (48 bytes each) stay, as bare slots. The tree lends
    /// the data cache the room its pinned set does not use this way
    /// (`LsmTree::lend_pinned_room`).
    pub fn set_limit(&mut self, limit: usize) -> Result<()> {
        self.limit = limit;
        self.cap = limit.max(1);
        while self.buffers > self.cap && self.free != NIL {
            let s = self.free;
            self.free = self.slot(s)?.next;
            self.make_bare(s)?;
        }
        while self.buffers > self.cap && self.tail != NIL {
            let victim = self.tail;
            let key = self.slot(victim)?.key;
            let (at, _) = self.find(key).ok_or_else(vanished)?;
            self.evict(at, victim)?;
            // `evict` put it first on the free list.
            self.free = self.slot(victim)?.next;
            self.make_bare(victim)?;
        }
        Ok(())
    }

    /// Frees the buffer of slot `s` (off every list) and puts it on the
    /// bare list.
    fn make_bare(&mut self, s: u32) -> Result<()> {
        let bare = self.bare;
        let e = self.slot_mut(s)?;
        e.data = Box::default();
        e.next = bare;
        e.prev = NIL;
        self.bare = s;
        self.buffers = self.buffers.saturating_sub(1);
        Ok(())
    }

    /// Block buffers allocated (live and free slots).
    #[cfg(test)]
    fn buffers_held(&self) -> usize {
        self.slots.iter().filter(|e| !e.data.is_empty()).count()
    }

    /// The most blocks the cache holds now ([`Self::set_limit`]).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Gives back a slot from [`Self::take_slot`] that got no block.
    fn untake(&mut self, s: u32) -> Result<()> {
        let free = self.free;
        self.slot_mut(s)?.next = free;
        self.free = s;
        Ok(())
    }

    /// Makes slot `s` (from [`Self::take_slot`], its buffer filled) the
    /// live, most recently used entry of `key`; the index has room.
    fn admit(&mut self, key: Key, s: u32) -> Result<()> {
        {
            let e = self.slot_mut(s)?;
            e.key = key;
            e.live = true;
        }
        self.index_put(key, s)?;
        self.push_front(s)?;
        self.len += 1;
        Ok(())
    }

    /// Blocks held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no block is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether block `pos` of `table` is held, or there is room to load it
    /// without evicting anything (never, for a capacity of 0).
    pub fn holds_or_has_room(&self, table: u64, pos: u64) -> bool {
        self.holds(table, pos) || self.len < self.limit
    }

    /// Whether block `pos` of `table` is held.
    pub fn holds(&self, table: u64, pos: u64) -> bool {
        self.find((table, pos)).is_some()
    }

    /// Blocks held.
    pub fn blocks(&self) -> usize {
        self.len
    }

    /// (hits, misses) so far.
    pub fn counters(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    /// Whether any block of table `table` is held (a scan of the slots).
    pub fn holds_table(&self, table: u64) -> bool {
        self.slots.iter().any(|e| e.live && e.key.0 == table)
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
        if let Some((_, s)) = self.find(key) {
            self.slot_mut(s)?.data.copy_from_slice(block);
            return self.touch(s);
        }
        self.reserve_index(self.len + 1)?;
        let s = self.take_slot()?;
        self.slot_mut(s)?.data.copy_from_slice(block);
        self.admit(key, s)
    }

    /// Drops every block of table `table` (a scan of the slots).
    pub fn remove_table(&mut self, table: u64) {
        for s in 0..self.slots.len() {
            let key = match self.slots.get(s) {
                Some(e) if e.live && e.key.0 == table => e.key,
                _ => continue,
            };
            let Some((at, s)) = self.find(key) else {
                continue;
            };
            if self.evict(at, s).is_err() {
                // Unreachable with consistent links; start afresh rather
                // than keep a half-unlinked entry.
                self.clear();
                return;
            }
        }
    }

    /// Drops everything, and the memory with it.
    pub fn clear(&mut self) {
        self.slots = Vec::new();
        self.buckets = Vec::new();
        self.len = 0;
        self.buffers = 0;
        self.head = NIL;
        self.tail = NIL;
        self.free = NIL;
        self.bare = NIL;
    }

    /// Block `pos` of table `table`, as [`Self::get_or_load_ahead`] gives
    /// it with no blocks needed after it (the tests of read-ahead).
    #[cfg(test)]
    pub fn get_or_load_ahead(
        &mut self,
        table: u64,
        pos: u64,
        end: u64,
        ahead: u64,
        src: &dyn BlockSource,
        check: &dyn Fn(&[u8]) -> Result<()>,
    ) -> Result<&[u8]> {
        self.get_or_load_run(table, pos, end, 1, ahead, src, check)
    }

    /// Block `pos` of table `table`, as [`Self::get_or_load`] gives it. On a
    /// miss, the blocks after `pos` that are not cached yet are read in the
    /// same request, not past `end` and never more than half the cache:
    /// - the `need` blocks from `pos` the caller will read now (a lookup of
    ///   a run of keys that spans them), even into a full cache: they
    ///   would each cost a request of their own a moment later;
    /// - up to `ahead` blocks in all, read ahead, when the cache has room
    ///   for them without evicting anything (it is filling up, as after an
    ///   open: a cold cache warms several blocks per device request), or
    ///   when the miss is at the block right after the last one the
    ///   previous miss loaded (a sequential scan, such as the lookups of a
    ///   stream of sequential reads): then the least recently used blocks
    ///   make room.
    ///
    /// Otherwise (a full cache, a random miss of one block) it reads the
    /// one block, so random lookups do not flush the cache. A later block
    /// that fails its check is only left out; `pos`'s decides, as in
    /// [`Self::get_or_load`].
    #[allow(clippy::too_many_arguments)]
    pub fn get_or_load_run(
        &mut self,
        table: u64,
        pos: u64,
        end: u64,
        need: u64,
        ahead: u64,
        src: &dyn BlockSource,
        check: &dyn Fn(&[u8]) -> Result<()>,
    ) -> Result<&[u8]> {
        if !self.holds(table, pos) {
            let sequential = self.seq_next == Some((table, pos));
            let half = |n: u64| (n as usize).saturating_add(1) <= self.limit / 2;
            let want = |n: u64| {
                let needed = n < need && half(n);
                let ahead = if sequential {
                    // A read-ahead of 1 (none) stays none.
                    let seq = if ahead > 1 { ahead.max(SEQ_AHEAD) } else { 1 };
                    n < seq && half(n)
                } else {
                    n < ahead && self.len.saturating_add(n as usize + 1) <= self.limit
                };
                needed || ahead
            };
            let mut n = 1u64;
            while pos.saturating_add(n) < end && want(n) && !self.holds(table, pos + n) {
                n += 1;
            }
            self.seq_next = Some((table, pos.saturating_add(1)));
            if n > 1 && self.load_run(table, pos, n, src, check)? {
                // `pos` was read for this lookup: a miss.
                self.misses += 1;
                self.seq_next = Some((table, pos.saturating_add(n)));
                let (_, s) = self.find((table, pos)).ok_or_else(vanished)?;
                return Ok(&self.slot(s)?.data);
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

    /// Blocks a batch read ahead of a lookup ([`Self::insert_prefetched`])
    /// may take at most: half the cache, so that none of them is evicted
    /// before the lookup fetches it.
    pub fn prefetch_room(&self) -> usize {
        self.limit / 2
    }

    /// Caches block `pos` of table `table` (checked by the caller), read in
    /// a batch ahead of a lookup that fetches it next
    /// (`LsmTree::get_sorted`). It counts as the miss that fetch would have
    /// been, and that fetch's hit is not counted (until
    /// [`Self::end_prefetch`]), so the hit rate stays what the lookups
    /// alone would have had.
    pub fn insert_prefetched(&mut self, table: u64, pos: u64, blk: &[u8]) -> Result<()> {
        self.insert(table, pos, blk)?;
        if self.holds(table, pos) {
            self.misses += 1;
            self.prefetched += 1;
        }
        Ok(())
    }

    /// Makes the fetches since `at` (what [`Self::counters`] gave then) a
    /// read-ahead of a lookup that fetches the same blocks next: their hits
    /// are dropped, their misses kept, and that many of the next hits are
    /// not counted (until [`Self::end_prefetch`]), as for
    /// [`Self::insert_prefetched`].
    pub fn count_as_prefetch(&mut self, at: (u64, u64)) {
        let loaded = self.misses.saturating_sub(at.1);
        self.hits = at.0.min(self.hits);
        self.prefetched = self.prefetched.saturating_add(loaded);
    }

    /// The lookup the blocks were read ahead for is done: later hits count.
    pub fn end_prefetch(&mut self) {
        self.prefetched = 0;
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
        if let Some((_, s)) = self.find(key) {
            if self.prefetched > 0 {
                self.prefetched -= 1;
            } else {
                self.hits += 1;
            }
            self.touch(s)?;
            return Ok(&self.slot(s)?.data);
        }
        self.misses += 1;
        self.reserve_index(self.len + 1)?;
        let s = self.take_slot()?;
        let filled = {
            let e = self.slot_mut(s)?;
            src.read_block(pos, &mut e.data)
                .and_then(|()| check(&e.data))
        };
        if let Err(e) = filled {
            self.untake(s)?;
            return Err(e);
        }
        self.admit(key, s)?;
        Ok(&self.slot(s)?.data)
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
    /// With `Some(floor)`, the data cache uses the pinned set's free room
    /// ([`super::LsmConfig::lend_pinned_room`]): a block pinned here takes
    /// one block of room back from it, down to `floor`.
    pub data_floor: Option<usize>,
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
        self.fetch_data_run(pos, n_data, 1, check)
    }

    fn fetch_data_run(
        &mut self,
        pos: u64,
        n_data: u64,
        need: u64,
        check: &dyn Fn(&[u8]) -> Result<()>,
    ) -> Result<&[u8]> {
        self.data.get_or_load_run(
            self.table,
            pos,
            n_data,
            need,
            self.read_ahead,
            self.src,
            check,
        )
    }

    fn fetch(
        &mut self,
        pos: u64,
        kind: BlockKind,
        check: &dyn Fn(&[u8]) -> Result<()>,
    ) -> Result<&[u8]> {
        let cache = match kind {
            BlockKind::Data => &mut *self.data,
            _ if self.pinned.holds_or_has_room(self.table, pos) => {
                if let Some(floor) = self.data_floor {
                    let l = self.data.limit();
                    if l > floor && !self.pinned.holds(self.table, pos) {
                        self.data.set_limit(l - 1)?;
                    }
                }
                &mut *self.pinned
            }
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

    #[test]
    fn a_full_cache_reads_ahead_for_a_sequential_scan_only() {
        let reqs = Cell::new(0);
        let src = Requests((0..=255u8).map(|i| vec![i; BLOCK_SIZE]).collect(), &reqs);
        let ok = |_: &[u8]| Ok(());
        let mut c = BlockCache::new(80);
        // Fill it: blocks 0..80 of table 1, one at a time.
        for p in 0..80 {
            c.get_or_load(1, p, &src, &ok).unwrap();
        }
        assert_eq!((c.len(), reqs.get()), (80, 80));
        // A random miss into the full cache: one block.
        c.get_or_load_ahead(2, 100, 256, 8, &src, &ok).unwrap();
        assert_eq!(reqs.get(), 81);
        assert!(c.holds(2, 100) && !c.holds(2, 101));
        // The next block is a scan: SEQ_AHEAD blocks in one request (more
        // than the random read-ahead), the least recently used evicted,
        // the cache no larger.
        let run = SEQ_AHEAD;
        assert!(run > 8);
        assert_eq!(
            c.get_or_load_ahead(2, 101, 256, 8, &src, &ok).unwrap()[0],
            101
        );
        assert_eq!((reqs.get(), c.len()), (82, 80));
        assert!((101..101 + run).all(|p| c.holds(2, p)) && !c.holds(2, 101 + run));
        // Hits up to the end of the run, then the scan goes on: again.
        for p in 102..101 + run {
            c.get_or_load_ahead(2, p, 256, 8, &src, &ok).unwrap();
        }
        assert_eq!(reqs.get(), 82);
        c.get_or_load_ahead(2, 101 + run, 256, 8, &src, &ok)
            .unwrap();
        assert_eq!(reqs.get(), 83);
        assert!((101 + run..101 + 2 * run).all(|p| c.holds(2, p)));
        // Not the next block (a gap of one, another table): one block each.
        c.get_or_load_ahead(2, 102 + 2 * run, 256, 8, &src, &ok)
            .unwrap();
        c.get_or_load_ahead(3, 103 + 2 * run, 256, 8, &src, &ok)
            .unwrap();
        assert_eq!(reqs.get(), 85);
        assert!(!c.holds(2, 103 + 2 * run) && !c.holds(3, 104 + 2 * run));
        // A scan never takes more than half the cache in one request.
        let mut small = BlockCache::new(6);
        for p in 0..6 {
            small.get_or_load(9, p, &src, &ok).unwrap();
        }
        small.get_or_load_ahead(2, 80, 100, 8, &src, &ok).unwrap();
        small.get_or_load_ahead(2, 81, 100, 8, &src, &ok).unwrap();
        assert!((81..84).all(|p| small.holds(2, p)) && !small.holds(2, 84));
        assert_eq!(small.len(), 6);
    }

    /// The blocks a lookup needs now (`need`) come in one request even
    /// into a full cache, and on a random miss nothing more is read.
    #[test]
    fn the_blocks_a_lookup_needs_come_in_one_request() {
        let reqs = Cell::new(0);
        let src = Requests((0..=255u8).map(|i| vec![i; BLOCK_SIZE]).collect(), &reqs);
        let ok = |_: &[u8]| Ok(());
        let mut c = BlockCache::new(40);
        for p in 0..40 {
            c.get_or_load(1, p, &src, &ok).unwrap();
        }
        assert_eq!(reqs.get(), 40);
        // Three blocks needed: one request, then hits.
        c.get_or_load_run(2, 50, 256, 3, 8, &src, &ok).unwrap();
        assert_eq!((reqs.get(), c.len()), (41, 40));
        assert!((50..53).all(|p| c.holds(2, p)) && !c.holds(2, 53));
        for p in 51..53 {
            c.get_or_load_run(2, p, 256, 53 - p, 8, &src, &ok).unwrap();
        }
        assert_eq!(reqs.get(), 41);
        assert_eq!(c.counters(), (2, 41));
        // Not past the table's end, nor over a block cached already.
        c.get_or_load_run(2, 253, 256, 10, 8, &src, &ok).unwrap();
        assert_eq!(reqs.get(), 42);
        assert!((253..256).all(|p| c.holds(2, p)));
        c.get_or_load_run(2, 60, 256, 10, 8, &src, &ok).unwrap();
        c.get_or_load_run(2, 58, 256, 10, 8, &src, &ok).unwrap();
        assert_eq!(reqs.get(), 44);
        assert!(c.holds(2, 58) && c.holds(2, 59) && c.holds(2, 69) && !c.holds(2, 70));
        // At most half the cache.
        c.get_or_load_run(3, 0, 256, 100, 8, &src, &ok).unwrap();
        assert!((0..20).all(|p| c.holds(3, p)) && !c.holds(3, 20));
        assert_eq!(c.len(), 40);
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

    /// A source whose block `pos` of table `t` starts with `t * 64 + pos`
    /// (as a byte), and fails its reads of positions that are multiples of
    /// 13 (odd tables only).
    struct Keyed(u64);
    impl BlockSource for Keyed {
        fn read_block(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
            if self.0 % 2 == 1 && pos % 13 == 0 {
                return Err(Error::new(ErrorKind::Io, "bad read"));
            }
            buf.fill(0);
            buf[0] = (self.0 * 64 + pos) as u8;
            Ok(())
        }
    }

    /// The cache against a plain model of LRU (a list of (key, first
    /// byte, tick) scanned for everything) over random lookups, inserts,
    /// failed reads and checks, and dropped tables: the same hits and
    /// misses, blocks held, and bytes served after every step. Catches a
    /// lost entry in the hash index (a bad backward shift), a wrong victim
    /// or a broken link in the LRU list.
    #[test]
    fn matches_a_model_lru_over_random_operations() {
        for (round, cap) in [0usize, 1, 2, 3, 17, 64, 200].into_iter().enumerate() {
            let mut seed = 0x2545_f491_4f6c_dd1du64 ^ round as u64;
            let mut rnd = move |n: u64| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed % n
            };
            let mut c = BlockCache::new(cap);
            let mut model: Vec<((u64, u64), u8, u64)> = Vec::new();
            let (mut hits, mut misses, mut tick) = (0u64, 0u64, 0u64);
            let ok = |_: &[u8]| Ok(());
            let no = |_: &[u8]| Err(Error::new(ErrorKind::Corrupted, "bad"));
            for step in 0..6000u32 {
                tick += 1;
                let key = (rnd(4), rnd(64));
                let at = model.iter().position(|e| e.0 == key);
                let op = rnd(100);
                if op < 70 {
                    let bad_check = rnd(20) == 0;
                    let check: &dyn Fn(&[u8]) -> Result<()> = if bad_check { &no } else { &ok };
                    let got = c
                        .get_or_load(key.0, key.1, &Keyed(key.0), check)
                        .map(|b| b[0]);
                    match at {
                        Some(i) => {
                            hits += 1;
                            model[i].2 = tick;
                            assert_eq!(got.unwrap(), model[i].1, "hit at step {step}");
                        }
                        None => {
                            misses += 1;
                            if model.len() >= cap.max(1) {
                                let lru = (0..model.len()).min_by_key(|&i| model[i].2).unwrap();
                                model.remove(lru);
                            }
                            let fails = bad_check || (key.0 % 2 == 1 && key.1 % 13 == 0);
                            if fails {
                                assert!(got.is_err(), "step {step}");
                            } else {
                                let b = (key.0 * 64 + key.1) as u8;
                                assert_eq!(got.unwrap(), b, "miss at step {step}");
                                model.push((key, b, tick));
                            }
                        }
                    }
                } else if op < 95 {
                    let b = 200 + rnd(50) as u8;
                    c.insert(key.0, key.1, &[b; BLOCK_SIZE]).unwrap();
                    if cap > 0 {
                        match at {
                            Some(i) => model[i] = (key, b, tick),
                            None => {
                                if model.len() >= cap {
                                    let lru = (0..model.len()).min_by_key(|&i| model[i].2).unwrap();
                                    model.remove(lru);
                                }
                                model.push((key, b, tick));
                            }
                        }
                    }
                } else {
                    c.remove_table(key.0);
                    model.retain(|e| e.0 .0 != key.0);
                }
                assert_eq!(c.len(), model.len(), "step {step}");
                assert_eq!(c.counters(), (hits, misses), "step {step}");
                if step % 97 == 0 {
                    for t in 0..4 {
                        assert_eq!(c.holds_table(t), model.iter().any(|e| e.0 .0 == t));
                        for p in 0..64 {
                            let held = model.iter().any(|e| e.0 == (t, p));
                            assert_eq!(c.holds(t, p), held, "({t}, {p}) at step {step}");
                        }
                    }
                }
            }
        }
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

    /// Lowering the limit evicts the least recently used blocks and frees
    /// the buffers beyond it (free slots' first); the cache then never
    /// holds more, and raising the limit again lets it grow, bare slots
    /// getting new buffers. The LRU order survives.
    #[test]
    fn set_limit_shrinks_the_cache_and_its_memory() {
        let reads = Cell::new(0);
        let src = Counting((0..10u8).map(|i| vec![i; BLOCK_SIZE]).collect(), &reads);
        let ok = |_: &[u8]| Ok(());
        let mut c = BlockCache::new(7);
        for p in 0..6 {
            c.get_or_load(7, p, &src, &ok).unwrap();
        }
        // Block 0 becomes the most recently used.
        c.get_or_load(7, 0, &src, &ok).unwrap();
        c.insert(8, 0, &[9u8; BLOCK_SIZE]).unwrap();
        c.remove_table(8);
        // 6 live blocks and a free slot with its buffer.
        assert_eq!((c.len(), c.buffers_held()), (6, 7));
        c.set_limit(3).unwrap();
        assert_eq!((c.len(), c.buffers_held(), c.limit()), (3, 3, 3));
        // The three most recently used stay: 4, 5, 0.
        let r = reads.get();
        for p in [4, 5, 0] {
            assert_eq!(c.get_or_load(7, p, &src, &ok).unwrap()[0], p as u8);
        }
        assert_eq!(reads.get(), r);
        for p in 6..10 {
            c.get_or_load(7, p, &src, &ok).unwrap();
            assert!(c.len() <= 3 && c.buffers_held() <= 3);
        }
        c.set_limit(5).unwrap();
        for p in 0..5 {
            c.get_or_load(7, p, &src, &ok).unwrap();
        }
        assert_eq!((c.len(), c.buffers_held()), (5, 5));
        // Down to nothing but the one block a miss needs.
        c.set_limit(0).unwrap();
        assert_eq!((c.len(), c.buffers_held()), (1, 1));
        assert_eq!(c.get_or_load(7, 9, &src, &ok).unwrap()[0], 9);
        assert_eq!((c.len(), c.buffers_held()), (1, 1));
    }
}
