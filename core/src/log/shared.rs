//! `SharedLogStore`: transactions from several threads at once.
//!
//! See "Concurrency" in the module doc of [`crate::log`] for the rules. In
//! short: each transaction ([`TxHandle`]) works on its own copies of the logs
//! it changes, outside any lock; a commit takes the state lock, checks for
//! conflicts (first committer wins), appends its record to the journal and
//! installs its copies. The chunk pool has its own short lock.

use crate::vec_map::VecMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::sync::atomic::{AtomicU64, Ordering};

use super::chunk::{ChunkId, ChunkPool};
use super::store::{tx_log, LogState, Tx};
use super::{LogId, StoreRoot, TxLogStore};
use crate::bio::{BlockRange, BlockSet, BLOCK_SIZE};
use crate::crypto::CryptoLog;
use crate::platform::{LockClass, Mutex, SyncPlatform};
use crate::{ensure, CryptoRef, Error, ErrorKind, Result};

/// What a successful commit reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitInfo {
    /// The commit counter of this commit: commits are numbered in the order
    /// their records went to the journal.
    pub counter: u64,
    /// The store's root right after this commit (what the owner records).
    pub root: StoreRoot,
}

/// Space and state statistics of a shared store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedStats {
    /// Chunks in the chunk region.
    pub chunks_total: u32,
    /// Chunks free in the pool.
    pub chunks_free: u32,
    /// Chunks owned by committed logs.
    pub chunks_committed: u32,
    /// Live logs as of the last commit.
    pub logs: usize,
    /// Commit counter of the last commit.
    pub commit_count: u64,
    /// Transactions begun and not yet committed or aborted.
    pub active: u64,
}

/// The state behind the state lock: the store (committed logs and journal)
/// and which transaction is appending to which committed log.
struct State<D: BlockSet> {
    store: TxLogStore<D>,
    /// Committed log id -> the transaction that holds its append right.
    appenders: VecMap<u64, u64>,
    active: u64,
}

/// A [`TxLogStore`] whose transactions run from several threads at once.
///
/// Made from a formatted or opened store ([`Self::new`]); the journal
/// format is unchanged, so a store written through it reopens with
/// [`TxLogStore::open`]. `P` provides the locks; nothing else of it is used.
///
/// Lock order: the state lock, then the pool lock; never the other way.
/// Neither is held while a transaction appends or reads blocks; the state
/// lock is held through a commit's journal write (the serialisation point).
pub struct SharedLogStore<D: BlockSet, P: SyncPlatform> {
    state: P::Mutex<State<D>>,
    pool: P::Mutex<ChunkPool>,
    chunks: Arc<BlockRange<D>>,
    crypto: CryptoRef,
    key_len: usize,
    chunk_blocks: u32,
    /// The next log id to hand out (ids of aborted transactions are skipped,
    /// never reused while the store is open).
    next_log_id: AtomicU64,
    next_tx_id: AtomicU64,
}

impl<D: BlockSet, P: SyncPlatform> SharedLogStore<D, P> {
    /// Shares `store`, which must have no running transaction. Its chunk
    /// pool moves under its own lock.
    pub fn new(mut store: TxLogStore<D>) -> Result<Self> {
        store.check_usable()?;
        ensure!(
            !store.in_transaction(),
            InvalidState,
            "the store has a running transaction"
        );
        let pool = core::mem::replace(&mut store.pool, ChunkPool::new(0)?);
        let chunks = store.chunks.clone();
        let crypto = store.crypto();
        let cfg = store.cfg;
        let next = store.next_log_id;
        Ok(Self {
            pool: P::Mutex::new(pool, LockClass::LogPool)?,
            state: P::Mutex::new(
                State {
                    store,
                    appenders: VecMap::new(),
                    active: 0,
                },
                LockClass::LogState,
            )?,
            chunks,
            crypto,
            key_len: cfg.key_len,
            chunk_blocks: cfg.chunk_blocks,
            next_log_id: AtomicU64::new(next),
            next_tx_id: AtomicU64::new(1),
        })
    }

    /// Starts a transaction. Any number may run at once, from any threads.
    pub fn begin(&self) -> Result<TxHandle<'_, D, P>> {
        let mut st = self.state.lock();
        st.store.check_usable()?;
        st.active = st.active.saturating_add(1);
        drop(st);
        Ok(TxHandle {
            store: self,
            id: self.next_tx_id.fetch_add(1, Ordering::Relaxed),
            tx: Some(Tx::new(self.next_log_id.load(Ordering::Relaxed))),
            appending: Vec::new(),
            reads: RefCell::new(VecMap::new()),
        })
    }

    /// The root to reopen the store with, as of the last commit.
    pub fn root(&self) -> StoreRoot {
        self.state.lock().store.root()
    }

    /// The commit counter of the last commit.
    pub fn commit_count(&self) -> u64 {
        self.state.lock().store.commit_count()
    }

    /// A copy of the user state of the last commit.
    pub fn user_state(&self) -> Result<Vec<u8>> {
        let st = self.state.lock();
        let us = st.store.user_state();
        let mut v = Vec::new();
        v.try_reserve_exact(us.len())?;
        v.extend_from_slice(us);
        Ok(v)
    }

    /// Space and state statistics.
    pub fn stats(&self) -> SharedStats {
        let st = self.state.lock();
        let committed: usize = st.store.logs.values().map(|l| l.chunks.len()).sum();
        let pool = self.pool.lock();
        SharedStats {
            chunks_total: pool.nchunks(),
            chunks_free: pool.nfree(),
            chunks_committed: u32::try_from(committed).unwrap_or(u32::MAX),
            logs: st.store.logs.len(),
            commit_count: st.store.commit_count(),
            active: st.active,
        }
    }

    /// Checks the chunk accounting: no chunk is owned by two committed logs,
    /// every committed chunk is marked used in the pool, and, when no
    /// transaction is running, nothing else is.
    pub fn check_chunks(&self) -> Result<()> {
        let st = self.state.lock();
        let pool = self.pool.lock();
        let mut seen = ChunkPool::new(pool.nchunks())?;
        for l in st.store.logs.values() {
            for &c in &l.chunks {
                seen.claim(c)?;
                ensure!(pool.is_used(c)?, Corrupted, "committed chunk is free");
            }
        }
        if st.active == 0 {
            ensure!(
                seen.nfree() == pool.nfree(),
                Corrupted,
                "chunks used by no committed log"
            );
        }
        Ok(())
    }

    fn take_chunk(&self) -> Result<ChunkId> {
        self.pool.lock().alloc()
    }
}

/// One transaction of a [`SharedLogStore`]. Dropping it aborts it.
///
/// Reads see the transaction's own changes; logs it has not changed are read
/// as of the latest commit (logs are append-only, so a block once read never
/// changes; a log deleted by a commit since reads as not found, or, if the
/// delete commits during the read, the read may fail with an integrity
/// error as the chunks get reused, never with other data).
pub struct TxHandle<'s, D: BlockSet, P: SyncPlatform> {
    store: &'s SharedLogStore<D, P>,
    id: u64,
    /// `None` once committed or aborted.
    tx: Option<Tx>,
    /// Committed logs whose append right this transaction holds.
    appending: Vec<u64>,
    /// Committed logs this transaction looked at without copying them, and
    /// the version it saw: they must be unchanged when it appends or
    /// commits, so what it read stays true (a `RefCell` so reads take
    /// `&self`; a handle is used by one thread at a time).
    reads: RefCell<VecMap<u64, u64>>,
}

fn conflict(msg: &'static str) -> Error {
    Error::new(ErrorKind::Conflict, msg)
}

impl<D: BlockSet, P: SyncPlatform> TxHandle<'_, D, P> {
    fn tx(&mut self) -> Result<&mut Tx> {
        self.tx
            .as_mut()
            .ok_or(Error::new(ErrorKind::InvalidState, "transaction has ended"))
    }

    /// Makes the transaction's copy of a committed log, if it has none.
    fn touch(&mut self, id: u64) -> Result<()> {
        let store = self.store;
        let tx = self.tx()?;
        if tx.logs.contains_key(&id) {
            return Ok(());
        }
        let st = store.state.lock();
        st.store.check_usable()?;
        tx_log(tx, &st.store.logs, id).map(|_| ())
    }

    /// Creates an empty log with a tag.
    pub fn create_log(&mut self, tag: u64) -> Result<LogId> {
        let log = CryptoLog::new(self.store.crypto.clone(), self.store.key_len)?;
        let id = self
            .store
            .next_log_id
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_add(1))
            .map_err(|_| Error::new(ErrorKind::NoSpace, "log ids exhausted"))?;
        let tx = self.tx()?;
        tx.logs.insert(
            id,
            Some(LogState {
                tag,
                sealed: false,
                log,
                chunks: Vec::new(),
                alloc_pos: 0,
                version: 0,
            }),
        )?;
        tx.next_log_id = tx.next_log_id.max(id.saturating_add(1));
        Ok(LogId(id))
    }

    /// Appends whole blocks to a log that is not sealed.
    ///
    /// Appending to a committed log takes its append right (two appenders
    /// would write the same blocks): if another running transaction holds
    /// it, or the log changed since this transaction copied it, this fails
    /// at once with [`ErrorKind::Conflict`] and the transaction should be
    /// aborted.
    pub fn append(&mut self, log: LogId, blocks: &[u8]) -> Result<()> {
        ensure!(
            !blocks.is_empty() && blocks.len() % BLOCK_SIZE == 0,
            InvalidArgument,
            "append needs whole blocks"
        );
        let (store, me, id) = (self.store, self.id, log.0);
        let tx = self
            .tx
            .as_mut()
            .ok_or(Error::new(ErrorKind::InvalidState, "transaction has ended"))?;
        let created_here = tx.logs.contains_key(&id) && !tx.base.contains_key(&id);
        if !created_here && !self.appending.contains(&id) {
            self.appending.try_reserve(1)?;
            let mut st = store.state.lock();
            st.store.check_usable()?;
            let State {
                store: inner,
                appenders,
                ..
            } = &mut *st;
            if let Some(&holder) = appenders.get(&id) {
                if holder != me {
                    tx.failed = true;
                    return Err(conflict("another transaction is appending to this log"));
                }
            }
            let seen = tx.base.get(&id).or(self.reads.get_mut().get(&id));
            if let Some(&base) = seen {
                let now = inner.logs.get(&id).map(|l| l.version);
                if now != Some(base) {
                    tx.failed = true;
                    return Err(conflict("log changed by another transaction"));
                }
            }
            appenders.try_reserve(1)?;
            tx_log(tx, &inner.logs, id)?;
            appenders.insert(id, me)?;
            self.appending.push(id);
        }
        tx.append(id, blocks, &*store.chunks, store.chunk_blocks, &mut || {
            store.take_chunk()
        })
    }

    /// Seals a log: no more appends.
    pub fn seal(&mut self, log: LogId) -> Result<()> {
        self.touch(log.0)?;
        let tx = self.tx()?;
        tx.logs
            .get_mut(&log.0)
            .and_then(|s| s.as_mut())
            .ok_or(Error::new(ErrorKind::NotFound, "log was deleted"))?
            .sealed = true;
        Ok(())
    }

    /// Deletes a log. Its chunks become free when the transaction commits.
    pub fn delete_log(&mut self, log: LogId) -> Result<()> {
        self.touch(log.0)?;
        self.tx()?.delete(log.0)
    }

    /// Runs `f` on the transaction's view of a log: its copy, or a reader
    /// over the latest committed root.
    fn with_log<R>(&self, log: LogId, f: impl FnOnce(&LogState) -> Result<R>) -> Result<R> {
        let tx = self
            .tx
            .as_ref()
            .ok_or(Error::new(ErrorKind::InvalidState, "transaction has ended"))?;
        if let Some(v) = tx.logs.get(&log.0) {
            return f(v
                .as_ref()
                .ok_or(Error::new(ErrorKind::NotFound, "log was deleted"))?);
        }
        let reader = {
            let st = self.store.state.lock();
            st.store.check_usable()?;
            let c = st
                .store
                .logs
                .get(&log.0)
                .ok_or(Error::new(ErrorKind::NotFound, "no such log"))?;
            if let Ok(mut reads) = self.reads.try_borrow_mut() {
                reads.get_or_insert_with(log.0, || c.version)?;
            }
            LogState {
                tag: c.tag,
                sealed: c.sealed,
                log: CryptoLog::open(
                    self.store.crypto.clone(),
                    self.store.key_len,
                    c.log.last_root().clone(),
                )?,
                chunks: Vec::new(),
                alloc_pos: c.alloc_pos,
                version: c.version,
            }
        };
        f(&reader)
    }

    /// Reads whole blocks of a log from block `pos`.
    pub fn read(&self, log: LogId, pos: u64, buf: &mut [u8]) -> Result<()> {
        let chunks = &*self.store.chunks;
        self.with_log(log, |l| l.log.read(chunks, pos, buf))
    }

    /// Number of blocks of a log.
    pub fn log_len(&self, log: LogId) -> Result<u64> {
        self.with_log(log, |l| Ok(l.log.nblocks()))
    }

    /// Whether a log is sealed.
    pub fn is_sealed(&self, log: LogId) -> Result<bool> {
        self.with_log(log, |l| Ok(l.sealed))
    }

    /// The tag a log was created with.
    pub fn log_tag(&self, log: LogId) -> Result<u64> {
        self.with_log(log, |l| Ok(l.tag))
    }

    /// The logs with `tag` in this transaction's view, in id order.
    pub fn logs_with_tag(&self, tag: u64) -> Result<Vec<LogId>> {
        let tx = self
            .tx
            .as_ref()
            .ok_or(Error::new(ErrorKind::InvalidState, "transaction has ended"))?;
        let mut ids: Vec<LogId> = Vec::new();
        {
            let st = self.store.state.lock();
            for (&id, l) in &st.store.logs {
                if l.tag == tag && !tx.logs.contains_key(&id) {
                    ids.try_reserve(1)?;
                    ids.push(LogId(id));
                }
            }
        }
        for (&id, l) in &tx.logs {
            if l.as_ref().is_some_and(|l| l.tag == tag) {
                ids.try_reserve(1)?;
                ids.push(LogId(id));
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Commits the transaction with `user_state` (`None` keeps the last
    /// commit's). See [`Self::commit_with`].
    pub fn commit(&mut self, user_state: Option<&[u8]>) -> Result<CommitInfo> {
        self.commit_with(user_state, |_| Ok(()))
    }

    /// Commits the transaction atomically and durably, then runs `after`
    /// (still under the state lock, so before any later commit: the place
    /// for the owner to record the new root).
    ///
    /// A transaction that changed, sealed or deleted a committed log that
    /// another transaction changed or deleted since this one copied it, or
    /// that deletes a log another running transaction is appending to,
    /// fails with [`ErrorKind::Conflict`]. On that and on any error before
    /// the journal write the transaction stays open: abort it. An error of
    /// the journal write leaves the store refusing every call (reopen it).
    /// An error of `after` is returned, but the commit stands.
    pub fn commit_with(
        &mut self,
        user_state: Option<&[u8]>,
        after: impl FnOnce(&CommitInfo) -> Result<()>,
    ) -> Result<CommitInfo> {
        let store = self.store;
        let me = self.id;
        let tx = self
            .tx
            .as_mut()
            .ok_or(Error::new(ErrorKind::InvalidState, "transaction has ended"))?;
        ensure!(
            !tx.failed,
            InvalidState,
            "an operation of the transaction failed; abort it"
        );
        // Outside the lock: only this transaction's copies and chunks.
        tx.write_nodes(&*store.chunks, store.chunk_blocks, &mut || {
            store.take_chunk()
        })?;
        let mut guard = store.state.lock();
        let st = &mut *guard;
        st.store.check_usable()?;
        for (&id, &base) in &tx.base {
            match st.store.logs.get(&id) {
                None => return Err(conflict("log deleted by another transaction")),
                Some(l) if l.version != base => {
                    return Err(conflict("log changed by another transaction"))
                }
                Some(_) => {}
            }
            let deleting = matches!(tx.logs.get(&id), Some(None));
            if deleting && st.appenders.get(&id).is_some_and(|&t| t != me) {
                return Err(conflict("another transaction is appending to this log"));
            }
        }
        for (&id, &seen) in self.reads.get_mut().iter() {
            if st.store.logs.get(&id).map(|l| l.version) != Some(seen) {
                return Err(conflict("a log this transaction read has changed"));
            }
        }
        tx.next_log_id = tx
            .next_log_id
            .max(store.next_log_id.load(Ordering::Relaxed))
            .max(st.store.next_log_id);
        let (rec, plan, us) = match user_state {
            Some(us) => st.store.plan_record(tx, us)?,
            None => {
                let cur = core::mem::take(&mut st.store.user_state);
                let r = st.store.plan_record(tx, &cur);
                st.store.user_state = cur;
                r?
            }
        };
        st.store.reserve_install(tx)?;
        st.store.write_record(&rec, plan)?;
        let tx = self
            .tx
            .take()
            .ok_or(Error::new(ErrorKind::InvalidState, "transaction has ended"))?;
        let freed = st.store.install(tx, us);
        for id in self.appending.drain(..) {
            st.appenders.remove(&id);
        }
        st.active = st.active.saturating_sub(1);
        {
            let mut pool = store.pool.lock();
            for c in freed {
                if let Err(e) = pool.release(c) {
                    st.store.broken = true;
                    return Err(e);
                }
            }
        }
        let info = CommitInfo {
            counter: st.store.commit_count(),
            root: st.store.root(),
        };
        after(&info)?;
        Ok(info)
    }

    /// Drops the transaction's changes and gives back its chunks.
    pub fn abort(mut self) {
        self.end();
    }

    fn end(&mut self) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        let mut st = self.store.state.lock();
        for id in self.appending.drain(..) {
            st.appenders.remove(&id);
        }
        st.active = st.active.saturating_sub(1);
        let mut pool = self.store.pool.lock();
        for c in tx.new_chunks {
            if pool.release(c).is_err() {
                st.store.broken = true;
            }
        }
    }
}

impl<D: BlockSet, P: SyncPlatform> Drop for TxHandle<'_, D, P> {
    fn drop(&mut self) {
        self.end();
    }
}

impl<D: BlockSet, P: SyncPlatform> core::fmt::Debug for TxHandle<'_, D, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "TxHandle({}, active: {})", self.id, self.tx.is_some())
    }
}
