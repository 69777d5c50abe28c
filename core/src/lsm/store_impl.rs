//! [`LogStore`] for the real transactional log store.

use alloc::vec::Vec;

use super::store::{LogStore, StoreSpace};
use crate::bio::BlockSet;
use crate::log::{LogId, TxLogStore};
use crate::Result;

impl<D: BlockSet> LogStore for TxLogStore<D> {
    type LogId = LogId;
    fn begin(&mut self) -> Result<()> {
        TxLogStore::begin(self)
    }
    fn create_log(&mut self, tag: u64) -> Result<LogId> {
        TxLogStore::create_log(self, tag)
    }
    fn append(&mut self, log: LogId, blocks: &[u8]) -> Result<()> {
        TxLogStore::append(self, log, blocks)
    }
    fn seal(&mut self, log: LogId) -> Result<()> {
        TxLogStore::seal(self, log)
    }
    fn delete_log(&mut self, log: LogId) -> Result<()> {
        TxLogStore::delete_log(self, log)
    }
    fn commit(&mut self, user_state: &[u8]) -> Result<()> {
        TxLogStore::commit(self, user_state)
    }
    fn abort(&mut self) {
        TxLogStore::abort(self)
    }
    fn read(&self, log: LogId, pos: u64, buf: &mut [u8]) -> Result<()> {
        TxLogStore::read(self, log, pos, buf)
    }
    fn read_scattered(&self, blocks: &[(LogId, u64)], buf: &mut [u8]) -> Result<()> {
        TxLogStore::read_scattered(self, blocks, buf)
    }
    fn log_len(&self, log: LogId) -> Result<u64> {
        TxLogStore::log_len(self, log)
    }
    fn logs_with_tag(&self, tag: u64) -> Result<Vec<LogId>> {
        TxLogStore::try_logs_with_tag(self, tag)
    }
    fn user_state(&self) -> &[u8] {
        TxLogStore::user_state(self)
    }
    fn log_key(&self, log: LogId) -> u64 {
        log.0
    }
    fn space(&self) -> Option<StoreSpace> {
        let s = self.stats();
        Some(StoreSpace {
            total: u64::from(s.chunks_total),
            free: u64::from(s.chunks_free),
            pinned: u64::from(s.chunks_pinned),
        })
    }
    fn chunks_bound(&self, logs: u64, blocks: u64, flushes: u64) -> u64 {
        TxLogStore::chunks_bound(self, logs, blocks, flushes)
    }
    fn node_cache_need(&self) -> Option<u64> {
        Some(self.tree_nodes())
    }
    fn set_node_cache_capacity(&mut self, nodes: usize) {
        TxLogStore::set_node_cache_capacity(self, nodes)
    }
}
