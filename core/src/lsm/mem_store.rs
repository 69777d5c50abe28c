//! An in-memory [`LogStore`] with transactions, for unit tests of the tree
//! before (and besides) the real store: committed state + the open
//! transaction's copy; `crash` drops the transaction.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::store::LogStore;
use crate::bio::BLOCK_SIZE;
use crate::{bail, ensure, Result};

#[derive(Clone, Default)]
struct Log {
    tag: u64,
    blocks: Vec<u8>,
    sealed: bool,
}

#[derive(Clone, Default)]
struct State {
    logs: BTreeMap<u64, Log>,
    next_id: u64,
    user_state: Vec<u8>,
}

/// A store in memory.
#[derive(Clone, Default)]
pub struct MemStore {
    committed: State,
    tx: Option<State>,
    /// Fail the Nth mutating call from now (1 = the next), for error tests.
    pub fail_in: Option<u32>,
    /// Commits made.
    pub commits: u64,
    /// With `Some(capacity)`, the store acts as if it had a node cache of
    /// that many nodes ([`LogStore::node_cache_need`] answers the nodes of
    /// its logs, `set_node_cache_capacity` sets this).
    pub node_cache: Option<usize>,
}

impl MemStore {
    /// The store as it would be after a crash now.
    pub fn crashed(&self) -> Self {
        Self {
            committed: self.committed.clone(),
            tx: None,
            fail_in: None,
            commits: self.commits,
            node_cache: self.node_cache,
        }
    }

    fn cur(&self) -> &State {
        self.tx.as_ref().unwrap_or(&self.committed)
    }

    fn tick(&mut self) -> Result<()> {
        if let Some(n) = self.fail_in.as_mut() {
            *n -= 1;
            if *n == 0 {
                self.fail_in = None;
                bail!(Io, "mem store: injected failure");
            }
        }
        Ok(())
    }

    fn txm(&mut self) -> Result<&mut State> {
        self.tick()?;
        match self.tx.as_mut() {
            Some(t) => Ok(t),
            None => bail!(InvalidState, "no transaction"),
        }
    }

    /// The number of committed logs with `tag`.
    pub fn logs_with_tag_count(&self, tag: u64) -> usize {
        self.committed
            .logs
            .values()
            .filter(|l| l.tag == tag)
            .count()
    }

    /// Committed blocks of all WAL logs.
    pub fn wal_blocks(&self) -> u64 {
        self.committed
            .logs
            .values()
            .filter(|l| l.tag == super::TAG_WAL)
            .map(|l| (l.blocks.len() / BLOCK_SIZE) as u64)
            .sum()
    }

    /// Zeroes the last block of the `n`th log with `tag` (committed).
    pub fn smash_last_block(&mut self, tag: u64, n: usize) {
        let log = self
            .committed
            .logs
            .values_mut()
            .filter(|l| l.tag == tag)
            .nth(n)
            .unwrap();
        let len = log.blocks.len();
        log.blocks[len - BLOCK_SIZE..].fill(0);
    }

    /// Removes the `n`th log with `tag` (committed).
    pub fn remove_log(&mut self, tag: u64, n: usize) {
        let id = *self
            .committed
            .logs
            .iter()
            .filter(|(_, l)| l.tag == tag)
            .nth(n)
            .unwrap()
            .0;
        self.committed.logs.remove(&id);
    }

    /// Flips a byte of block `pos` of the `n`th log with `tag` (committed).
    pub fn tamper(&mut self, tag: u64, n: usize, pos: usize, byte: usize) {
        let log = self
            .committed
            .logs
            .values_mut()
            .filter(|l| l.tag == tag)
            .nth(n)
            .unwrap();
        log.blocks[pos * BLOCK_SIZE + byte] ^= 0x01;
    }
}

impl LogStore for MemStore {
    type LogId = u64;
    fn begin(&mut self) -> Result<()> {
        self.tick()?;
        ensure!(self.tx.is_none(), InvalidState, "tx active");
        self.tx = Some(self.committed.clone());
        Ok(())
    }
    fn create_log(&mut self, tag: u64) -> Result<u64> {
        let t = self.txm()?;
        let id = t.next_id;
        t.next_id += 1;
        t.logs.insert(
            id,
            Log {
                tag,
                ..Log::default()
            },
        );
        Ok(id)
    }
    fn append(&mut self, log: u64, blocks: &[u8]) -> Result<()> {
        let t = self.txm()?;
        ensure!(
            blocks.len() % BLOCK_SIZE == 0 && !blocks.is_empty(),
            InvalidArgument,
            "len"
        );
        match t.logs.get_mut(&log) {
            Some(l) if !l.sealed => l.blocks.extend_from_slice(blocks),
            _ => bail!(InvalidArgument, "append to a missing or sealed log"),
        }
        Ok(())
    }
    fn seal(&mut self, log: u64) -> Result<()> {
        let t = self.txm()?;
        match t.logs.get_mut(&log) {
            Some(l) => l.sealed = true,
            None => bail!(NotFound, "no log"),
        }
        Ok(())
    }
    fn delete_log(&mut self, log: u64) -> Result<()> {
        let t = self.txm()?;
        ensure!(t.logs.remove(&log).is_some(), NotFound, "no log");
        Ok(())
    }
    fn commit(&mut self, user_state: &[u8]) -> Result<()> {
        self.tick()?;
        let Some(mut t) = self.tx.take() else {
            bail!(InvalidState, "no transaction");
        };
        t.user_state = user_state.to_vec();
        self.committed = t;
        self.commits += 1;
        Ok(())
    }
    fn abort(&mut self) {
        self.tx = None;
    }
    fn read(&self, log: u64, pos: u64, buf: &mut [u8]) -> Result<()> {
        let Some(l) = self.cur().logs.get(&log) else {
            bail!(NotFound, "no log");
        };
        let start = pos as usize * BLOCK_SIZE;
        match l.blocks.get(start..start + buf.len()) {
            Some(b) => buf.copy_from_slice(b),
            None => bail!(InvalidArgument, "read past the log"),
        }
        Ok(())
    }
    fn node_cache_need(&self) -> Option<u64> {
        self.node_cache?;
        let nodes = |st: &State| -> u64 {
            st.logs
                .values()
                .map(|l| crate::crypto::crypto_log::nodes_of((l.blocks.len() / BLOCK_SIZE) as u64))
                .sum()
        };
        Some(nodes(&self.committed) + self.tx.as_ref().map_or(0, nodes))
    }
    fn set_node_cache_capacity(&mut self, nodes: usize) {
        if self.node_cache.is_some() {
            self.node_cache = Some(nodes);
        }
    }
    fn log_len(&self, log: u64) -> Result<u64> {
        match self.cur().logs.get(&log) {
            Some(l) => Ok((l.blocks.len() / BLOCK_SIZE) as u64),
            None => bail!(NotFound, "no log"),
        }
    }
    fn logs_with_tag(&self, tag: u64) -> Result<Vec<u64>> {
        Ok(self
            .cur()
            .logs
            .iter()
            .filter(|(_, l)| l.tag == tag)
            .map(|(id, _)| *id)
            .collect())
    }
    fn user_state(&self) -> &[u8] {
        &self.committed.user_state
    }
    fn log_key(&self, log: u64) -> u64 {
        log
    }
}
