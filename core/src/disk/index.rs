//! The logical block table as the disk sees it: the few calls it needs of
//! the index, so the data path does not depend on how the index is built.
//!
//! The real index is the transactional LSM-tree of the `lsm` layer; a
//! [`MemIndex`] (std) keeps the same semantics in memory, with a shared
//! "durable" copy that `sync` replaces, for tests of the data path alone.

use alloc::vec::Vec;

use super::record::BlockRecord;
use crate::Result;

/// The answer of [`DiskIndex::room_for`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Room {
    /// The updates fit in the space free now.
    Now,
    /// They fit only after the next commit frees pinned space.
    AfterCommit,
}

/// The index of an [`super::MlsDisk`]: LBA -> [`BlockRecord`], transactional.
///
/// `sync` makes every `put`/`delete` so far durable together with
/// `user_state`, atomically; after a crash the index reopens to the state of
/// the last `sync` that returned (or the one in flight).
pub trait DiskIndex: Send {
    /// The record of `lba`, if mapped.
    fn get(&mut self, lba: u64) -> Result<Option<BlockRecord>>;
    /// The records of `lbas` (strictly ascending, else `InvalidArgument`)
    /// into `out`, one per LBA, as `get` gives each. The LSM tree answers
    /// them in one pass; by default this is one `get` each.
    fn get_sorted(&mut self, lbas: &[u64], out: &mut Vec<Option<BlockRecord>>) -> Result<()> {
        crate::ensure!(
            crate::lsm::strictly_ascending(lbas),
            InvalidArgument,
            "index: get_sorted wants strictly ascending LBAs"
        );
        out.clear();
        out.try_reserve_exact(lbas.len())?;
        for &l in lbas {
            out.push(self.get(l)?);
        }
        Ok(())
    }
    /// The mapped LBAs of `from..to` with their records, ascending, into
    /// `out`. The LSM tree scans each of its tables once for the range
    /// (no lookup per LBA; at most [`crate::lsm::MAX_RANGE`] LBAs wide);
    /// by default this is one `get` each.
    fn range(&mut self, from: u64, to: u64, out: &mut Vec<(u64, BlockRecord)>) -> Result<()> {
        out.clear();
        for l in from..to {
            if let Some(r) = self.get(l)? {
                out.try_reserve(1)?;
                out.push((l, r));
            }
        }
        Ok(())
    }
    /// Maps `lba` to `rec`.
    fn put(&mut self, lba: u64, rec: BlockRecord) -> Result<()>;
    /// Unmaps `lba`.
    fn delete(&mut self, lba: u64) -> Result<()>;
    /// Makes everything so far durable, atomically with `user_state`.
    fn sync(&mut self, user_state: &[u8]) -> Result<()>;
    /// The user state of the last sync (recovered at open).
    fn user_state(&self) -> &[u8];
    /// Every live entry, in key order.
    fn for_each(&mut self, f: &mut dyn FnMut(u64, &BlockRecord) -> Result<()>) -> Result<()>;
    /// One bounded unit of background work; true if more is to do.
    fn background_step(&mut self) -> Result<bool> {
        Ok(false)
    }
    /// Whether `updates` more `put`/`delete` calls, the background work
    /// they may trigger and one `sync` after them fit in the index's space
    /// as it is now. The disk asks before it changes anything, so a full
    /// index surfaces as `NoSpace` before a request, never in its middle.
    ///
    /// `Ok(Room::Now)`: they fit. `Ok(Room::AfterCommit)`: they fit only
    /// once space pinned until the next commit is freed; the disk commits
    /// (or refuses the request) and asks again. `Err(NoSpace)`: they do not
    /// fit even then. Nothing is changed by the call itself.
    fn room_for(&mut self, updates: u64) -> Result<Room> {
        let _ = updates;
        Ok(Room::Now)
    }
    /// The encoded root of the index's store, kept in the superblock
    /// (empty when the index needs none).
    fn root(&self) -> Result<Vec<u8>> {
        Ok(Vec::new())
    }
    /// The LSM tree's counters (block cache hits and misses, tables per
    /// level), if the index is one.
    fn lsm_stats(&self) -> Option<crate::lsm::LsmStats> {
        None
    }
}

#[cfg(feature = "std")]
pub use mem::{MemIndex, MemIndexStore};

#[cfg(feature = "std")]
mod mem {
    use super::*;
    use alloc::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    type State = (BTreeMap<u64, BlockRecord>, Vec<u8>);

    /// The "durable" side of a [`MemIndex`]: what the last sync stored.
    /// Clones share it, so a test can drop a disk (a crash) and reopen.
    #[derive(Clone, Default)]
    pub struct MemIndexStore(Arc<Mutex<State>>);

    impl MemIndexStore {
        /// An empty store.
        pub fn new() -> Self {
            Self::default()
        }
    }

    /// An in-memory [`DiskIndex`] whose syncs copy it into a [`MemIndexStore`].
    pub struct MemIndex {
        live: BTreeMap<u64, BlockRecord>,
        user_state: Vec<u8>,
        store: MemIndexStore,
    }

    impl MemIndex {
        /// Opens the state of the last sync of `store`.
        pub fn open(store: MemIndexStore) -> Self {
            let (live, user_state) = store.0.lock().map(|g| g.clone()).unwrap_or_default();
            Self {
                live,
                user_state,
                store,
            }
        }
    }

    impl DiskIndex for MemIndex {
        fn get(&mut self, lba: u64) -> Result<Option<BlockRecord>> {
            Ok(self.live.get(&lba).cloned())
        }
        fn put(&mut self, lba: u64, rec: BlockRecord) -> Result<()> {
            self.live.insert(lba, rec);
            Ok(())
        }
        fn delete(&mut self, lba: u64) -> Result<()> {
            self.live.remove(&lba);
            Ok(())
        }
        fn sync(&mut self, user_state: &[u8]) -> Result<()> {
            self.user_state = user_state.to_vec();
            if let Ok(mut g) = self.store.0.lock() {
                *g = (self.live.clone(), self.user_state.clone());
            }
            Ok(())
        }
        fn user_state(&self) -> &[u8] {
            &self.user_state
        }
        fn for_each(&mut self, f: &mut dyn FnMut(u64, &BlockRecord) -> Result<()>) -> Result<()> {
            for (k, v) in &self.live {
                f(*k, v)?;
            }
            Ok(())
        }
    }
}
