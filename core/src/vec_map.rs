//! [`VecMap`]: an ordered map whose growth is fallible.
//!
//! `BTreeMap::insert` aborts the program when a node cannot be allocated,
//! which the kernel cannot afford. The engine's small maps (the log
//! store's logs and their transaction copies, a write buffer's slots, the
//! node cache) are sorted vectors instead: lookups are binary searches, an
//! insert reserves with `try_reserve` first and fails with `OutOfMemory`
//! having changed nothing. Inserts move the entries above the new one, so
//! this is for maps of up to a few thousand entries (the LSM memtable has
//! its own chunked structure, `lsm::memtable`).

use alloc::vec::Vec;

use crate::Result;

/// A map sorted by key; see the module documentation.
#[derive(Debug, Clone)]
pub struct VecMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<K: Ord, V> VecMap<K, V> {
    /// An empty map (allocates nothing).
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    fn find(&self, k: &K) -> core::result::Result<usize, usize> {
        self.entries.binary_search_by(|e| e.0.cmp(k))
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of `k`.
    pub fn get(&self, k: &K) -> Option<&V> {
        let i = self.find(k).ok()?;
        self.entries.get(i).map(|e| &e.1)
    }

    /// The value of `k`, mutable.
    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let i = self.find(k).ok()?;
        self.entries.get_mut(i).map(|e| &mut e.1)
    }

    /// Whether `k` is held.
    pub fn contains_key(&self, k: &K) -> bool {
        self.find(k).is_ok()
    }

    /// Makes room for `n` more entries.
    pub fn try_reserve(&mut self, n: usize) -> Result<()> {
        self.entries.try_reserve(n)?;
        Ok(())
    }

    /// Sets `k` to `v`; returns the old value. Out of memory changes
    /// nothing (and cannot happen when `k` is held, or after a
    /// [`Self::try_reserve`] of room).
    pub fn insert(&mut self, k: K, v: V) -> Result<Option<V>> {
        match self.find(&k) {
            Ok(i) => Ok(self
                .entries
                .get_mut(i)
                .map(|e| core::mem::replace(&mut e.1, v))),
            Err(i) => {
                self.entries.try_reserve(1)?;
                self.entries.insert(i, (k, v));
                Ok(None)
            }
        }
    }

    /// The value of `k`, inserting `make()` first if `k` is not held.
    pub fn get_or_insert_with(&mut self, k: K, make: impl FnOnce() -> V) -> Result<&mut V> {
        let i = match self.find(&k) {
            Ok(i) => i,
            Err(i) => {
                self.entries.try_reserve(1)?;
                self.entries.insert(i, (k, make()));
                i
            }
        };
        self.entries
            .get_mut(i)
            .map(|e| &mut e.1)
            .ok_or(crate::Error::new(
                crate::ErrorKind::InvalidState,
                "vec map: entry vanished",
            ))
    }

    /// Removes `k`; returns its value.
    pub fn remove(&mut self, k: &K) -> Option<V> {
        let i = self.find(k).ok()?;
        Some(self.entries.remove(i).1)
    }

    /// Drops every entry (keeps the memory).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Keeps the entries for which `f` holds.
    pub fn retain(&mut self, mut f: impl FnMut(&K, &mut V) -> bool) {
        self.entries.retain_mut(|e| f(&e.0, &mut e.1));
    }

    /// The entries, ascending by key.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + ExactSizeIterator {
        self.entries.iter().map(|e| (&e.0, &e.1))
    }

    /// The entries, ascending by key, values mutable.
    pub fn iter_mut(&mut self) -> impl DoubleEndedIterator<Item = (&K, &mut V)> {
        self.entries.iter_mut().map(|e| (&e.0, &mut e.1))
    }

    /// The keys, ascending.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> {
        self.entries.iter().map(|e| &e.0)
    }

    /// The values, by ascending key.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> {
        self.entries.iter().map(|e| &e.1)
    }

    /// The values, by ascending key, mutable.
    pub fn values_mut(&mut self) -> impl DoubleEndedIterator<Item = &mut V> {
        self.entries.iter_mut().map(|e| &mut e.1)
    }
}

impl<'a, K, V> IntoIterator for &'a VecMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter =
        core::iter::Map<core::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|e| (&e.0, &e.1))
    }
}

impl<K, V> IntoIterator for VecMap<K, V> {
    type Item = (K, V);
    type IntoIter = alloc::vec::IntoIter<(K, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;

    #[test]
    fn matches_a_btreemap() {
        let mut m: VecMap<u64, u32> = VecMap::new();
        let mut r: BTreeMap<u64, u32> = BTreeMap::new();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for i in 0..3000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = x % 400;
            match i % 4 {
                0 => assert_eq!(m.remove(&k), r.remove(&k)),
                1 => {
                    let a = *m.get_or_insert_with(k, || i).unwrap();
                    let b = *r.entry(k).or_insert(i);
                    assert_eq!(a, b);
                }
                _ => assert_eq!(m.insert(k, i).unwrap(), r.insert(k, i)),
            }
            assert_eq!(m.len(), r.len());
            assert_eq!(m.get(&k), r.get(&k));
        }
        assert!(m.iter().eq(r.iter()));
        m.retain(|k, _| k % 2 == 0);
        r.retain(|k, _| k % 2 == 0);
        assert!(m.iter().eq(r.iter()));
        assert!((&m).into_iter().eq(r.iter()));
        assert!(m.keys().eq(r.keys()) && m.values().eq(r.values()));
        assert!(m.into_iter().eq(r.into_iter()));
    }
}
