//! The memtable: an ordered map from key to record (or tombstone) whose
//! growth is fallible.
//!
//! `BTreeMap::insert` aborts when it cannot allocate a node; the kernel
//! cannot afford that, so the memtable is a two-level sorted structure of
//! its own: a sorted vector of chunks, each a sorted vector of at most
//! [`CHUNK`] entries. A lookup is two binary searches; an insert moves at
//! most [`CHUNK`] entries within a chunk, and a full chunk splits in two
//! (moving chunk pointers in the outer vector, a few hundred for a memtable
//! of 32 Ki entries).
//!
//! Every allocation an insert may need is made by [`MemTable::reserve_one`]
//! (one spare chunk, one more slot in the outer vector); after it returns
//! Ok, the next [`MemTable::insert`] cannot fail. `insert` calls it itself,
//! so a failed insert changes nothing.

use alloc::vec::Vec;
use core::mem;

use crate::Result;

/// Entries per chunk at most.
pub const CHUNK: usize = 64;

type Chunk<V> = Vec<(u64, Option<V>)>;

/// An ordered map `u64 -> Option<V>` (`None` is a tombstone).
pub struct MemTable<V> {
    /// Non-empty chunks, ascending; every key of a chunk is below every key
    /// of the next one.
    chunks: Vec<Chunk<V>>,
    /// An empty chunk with room for [`CHUNK`] entries (or none yet).
    spare: Chunk<V>,
    len: usize,
}

impl<V> Default for MemTable<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> MemTable<V> {
    /// An empty memtable (allocates nothing).
    pub const fn new() -> Self {
        Self {
            chunks: Vec::new(),
            spare: Vec::new(),
            len: 0,
        }
    }

    /// Distinct keys held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no key is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunk that holds `key` or where it would go.
    fn chunk_of(&self, key: u64) -> usize {
        let i = self
            .chunks
            .partition_point(|c| c.last().is_some_and(|(k, _)| *k < key));
        i.min(self.chunks.len().saturating_sub(1))
    }

    /// The record of `key`.
    pub fn get(&self, key: &u64) -> Option<&Option<V>> {
        let c = self.chunks.get(self.chunk_of(*key))?;
        let i = c.binary_search_by_key(key, |e| e.0).ok()?;
        c.get(i).map(|e| &e.1)
    }

    /// Whether `key` is held.
    pub fn contains_key(&self, key: &u64) -> bool {
        self.get(key).is_some()
    }

    /// Makes every allocation the next [`Self::insert`] may need.
    pub fn reserve_one(&mut self) -> Result<()> {
        if self.spare.capacity() < CHUNK {
            self.spare.try_reserve_exact(CHUNK)?;
        }
        self.chunks.try_reserve(1)?;
        Ok(())
    }

    /// Sets `key` to `v`. On error (out of memory) nothing changed.
    pub fn insert(&mut self, key: u64, v: Option<V>) -> Result<()> {
        self.reserve_one()?;
        if self.chunks.is_empty() {
            let mut c = mem::take(&mut self.spare);
            c.push((key, v));
            self.chunks.push(c);
            self.len = 1;
            return Ok(());
        }
        let ci = self.chunk_of(key);
        let Some(c) = self.chunks.get_mut(ci) else {
            return Ok(());
        };
        let at = match c.binary_search_by_key(&key, |e| e.0) {
            Ok(i) => {
                if let Some(e) = c.get_mut(i) {
                    e.1 = v;
                }
                return Ok(());
            }
            Err(i) => i,
        };
        if c.len() < CHUNK {
            // Chunks are made with room for CHUNK entries: no allocation.
            c.insert(at, (key, v));
        } else {
            // Split: the upper half moves into the spare chunk.
            let mut hi = mem::take(&mut self.spare);
            hi.extend(c.drain(CHUNK / 2..));
            if at <= CHUNK / 2 {
                c.insert(at, (key, v));
            } else {
                hi.insert(at - CHUNK / 2, (key, v));
            }
            self.chunks.insert(ci + 1, hi);
        }
        self.len += 1;
        Ok(())
    }

    /// The entry of the smallest key.
    pub fn first_key_value(&self) -> Option<(&u64, &Option<V>)> {
        self.chunks
            .first()
            .and_then(|c| c.first())
            .map(|(k, v)| (k, v))
    }

    /// The entry of the largest key.
    pub fn last_key_value(&self) -> Option<(&u64, &Option<V>)> {
        self.chunks
            .last()
            .and_then(|c| c.last())
            .map(|(k, v)| (k, v))
    }

    /// The entry of the smallest key above `after` (of the smallest key if
    /// `after` is None).
    pub fn next_after(&self, after: Option<u64>) -> Option<(&u64, &Option<V>)> {
        let Some(a) = after else {
            return self.first_key_value();
        };
        if a == u64::MAX {
            return None;
        }
        let key = a + 1;
        let ci = self
            .chunks
            .partition_point(|c| c.last().is_some_and(|(k, _)| *k < key));
        let c = self.chunks.get(ci)?;
        let i = c.partition_point(|e| e.0 < key);
        c.get(i).map(|(k, v)| (k, v))
    }

    /// Every entry, ascending by key.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Option<V>)> {
        self.chunks.iter().flatten().map(|(k, v)| (k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;

    #[test]
    fn matches_a_btreemap() {
        let mut m: MemTable<u32> = MemTable::new();
        let mut r: BTreeMap<u64, Option<u32>> = BTreeMap::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..5000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Keys from a small range (overwrites) and at the ends.
            let k = match i % 7 {
                0 => u64::MAX - (x % 3),
                1 => x % 3,
                _ => x % 1500,
            };
            let v = if i % 5 == 0 { None } else { Some(i) };
            m.insert(k, v).unwrap();
            r.insert(k, v);
            assert_eq!(m.len(), r.len());
        }
        assert!(m.iter().eq(r.iter()));
        assert!(!m.is_empty());
        assert_eq!(m.first_key_value(), r.first_key_value());
        assert_eq!(m.last_key_value(), r.last_key_value());
        for k in (0..1600).chain([u64::MAX - 3, u64::MAX - 1, u64::MAX]) {
            assert_eq!(m.get(&k), r.get(&k), "key {k}");
            let want = if k == u64::MAX {
                None
            } else {
                r.range(k + 1..).next()
            };
            assert_eq!(m.next_after(Some(k)), want, "after {k}");
        }
        assert_eq!(m.next_after(None), r.iter().next());
        // Every chunk is within bounds and non-empty.
        assert!(m.chunks.iter().all(|c| !c.is_empty() && c.len() <= CHUNK));
    }
}
