//! What the tree needs of the store underneath: [`LogStore`], the
//! transactional log store's API as the tree uses it (implemented by
//! [`crate::log::TxLogStore`] in `store_impl.rs`, and by an in-memory
//! store for tests), the store's [`StoreSpace`], and [`LogSource`], a
//! log read as a table's blocks. The lsm layer's lower boundary: nothing
//! here knows about tables or levels.

use alloc::vec::Vec;

use super::table::BlockSource;
use crate::bio::BLOCK_SIZE;
use crate::Result;

/// What the tree needs of its store: the transactional log store's API
/// (see [`crate::log::TxLogStore`], which implements it). At most one
/// transaction is open at a time; reads see committed data and the open
/// transaction's own changes.
pub trait LogStore {
    /// Names a log.
    type LogId: Copy + Eq + core::fmt::Debug;
    /// Starts a transaction.
    fn begin(&mut self) -> Result<()>;
    /// Creates an empty log with `tag`.
    fn create_log(&mut self, tag: u64) -> Result<Self::LogId>;
    /// Appends whole blocks to an unsealed log.
    fn append(&mut self, log: Self::LogId, blocks: &[u8]) -> Result<()>;
    /// Seals a log (no more appends).
    fn seal(&mut self, log: Self::LogId) -> Result<()>;
    /// Deletes a log.
    fn delete_log(&mut self, log: Self::LogId) -> Result<()>;
    /// Commits the transaction with `user_state`, durably.
    fn commit(&mut self, user_state: &[u8]) -> Result<()>;
    /// Drops the transaction's changes.
    fn abort(&mut self);
    /// Reads blocks of a log from block `pos`.
    fn read(&self, log: Self::LogId, pos: u64, buf: &mut [u8]) -> Result<()>;
    /// Reads block `pos` of log `log` for each `(log, pos)` of `blocks`
    /// into consecutive blocks of `buf`; a store that can reads them in
    /// one batch of device requests, all in flight at once (the default
    /// reads them one by one).
    fn read_scattered(&self, blocks: &[(Self::LogId, u64)], buf: &mut [u8]) -> Result<()> {
        for (&(log, pos), b) in blocks.iter().zip(buf.chunks_exact_mut(BLOCK_SIZE)) {
            self.read(log, pos, b)?;
        }
        Ok(())
    }
    /// The length of a log in blocks.
    fn log_len(&self, log: Self::LogId) -> Result<u64>;
    /// The logs with `tag`.
    fn logs_with_tag(&self, tag: u64) -> Result<Vec<Self::LogId>>;
    /// A number naming `log` among the store's logs (unique while it
    /// lives): what the manifest stores to find a table's log again.
    fn log_key(&self, log: Self::LogId) -> u64;
    /// The user state of the last commit.
    fn user_state(&self) -> &[u8];
    /// The store's space in chunks, or `None` if it has no limit (then
    /// the tree never counts space).
    fn space(&self) -> Option<StoreSpace> {
        None
    }
    /// An upper bound of the chunks that `logs` logs take for `blocks`
    /// more blocks in all, committed `flushes` times while appended to
    /// (see [`crate::log::TxLogStore::chunks_bound`]).
    fn chunks_bound(&self, logs: u64, blocks: u64, flushes: u64) -> u64 {
        let _ = (logs, blocks, flushes);
        0
    }
    /// The most entries the store's node cache can use for the logs there
    /// are now (see [`crate::log::TxLogStore::tree_nodes`]), or `None` if
    /// it has no node cache the tree may size (the default).
    fn node_cache_need(&self) -> Option<u64> {
        None
    }
    /// Sets the capacity of the store's node cache, in nodes (a store
    /// without one ignores it).
    fn set_node_cache_capacity(&mut self, nodes: usize) {
        let _ = nodes;
    }
}

/// The space of a store, in chunks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreSpace {
    /// Chunks of the region.
    pub total: u64,
    /// Chunks free now.
    pub free: u64,
    /// Chunks of logs the running transaction deleted: used until it
    /// commits, free after.
    pub pinned: u64,
}

/// "Block `pos` of log `log`" for the table reader.
pub struct LogSource<'a, S: LogStore> {
    /// The store.
    pub store: &'a S,
    /// The log.
    pub log: S::LogId,
}

impl<S: LogStore> BlockSource for LogSource<'_, S> {
    fn read_block(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        self.store.read(self.log, pos, buf)
    }
    fn read_blocks(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        // The store reads consecutive blocks in one device request.
        self.store.read(self.log, pos, buf)
    }
}
