//! `TxLogStore`: many append-only logs inside atomic transactions.

use crate::vec_map::VecMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use super::chunk::{ChunkId, ChunkPool};
use super::record::{self, Encoder, Header, Kind, LogFields, Record};
use super::root::StoreRoot;
use crate::bio::{BlockRange, BlockSet, BLOCK_SIZE};
use crate::crypto::crypto_log::FANOUT;
use crate::crypto::crypto_log::{nodes_of, read_located, LocatedBlock, NodeCache};
use crate::crypto::{mac_chain, BlockAlloc, CryptoLog, MacChain};
use crate::platform::{kdf_key, AeadKey};
use crate::{bail, ensure, CryptoRef, Error, ErrorKind, Result};

/// The name of a log in the store. Ids are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogId(pub u64);

/// Parameters of a store. `chunk_blocks` and `key_len` are fixed at format
/// (kept in every journal record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogStoreConfig {
    /// Blocks per chunk (the unit of space a log takes from the region).
    pub chunk_blocks: u32,
    /// AES key length for the per-block keys of the logs: 16 or 32.
    pub key_len: usize,
    /// A commit writes a full snapshot instead of a delta at least every this
    /// many commits (and whenever the journal is more than half full). A
    /// run-time policy, not kept on disk: after `open` the default applies
    /// until [`TxLogStore::set_snapshot_every`].
    pub snapshot_every: u32,
}

impl Default for LogStoreConfig {
    fn default() -> Self {
        Self {
            chunk_blocks: 256,
            key_len: 32,
            snapshot_every: 256,
        }
    }
}

/// Space statistics of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreStats {
    /// Chunks in the chunk region.
    pub chunks_total: u32,
    /// Chunks owned by a log (committed or in the running transaction).
    pub chunks_used: u32,
    /// Chunks free for new appends.
    pub chunks_free: u32,
    /// Blocks per chunk.
    pub chunk_blocks: u32,
    /// Live logs (as of the last commit).
    pub logs: usize,
    /// Commit counter of the last commit.
    pub commit_count: u64,
    /// Free blocks of the journal ring.
    pub journal_free_blocks: u64,
    /// Chunks of logs the running transaction deleted: still used (the
    /// last commit references them), free only once it commits.
    pub chunks_pinned: u32,
}

/// One log's state.
#[derive(Debug)]
pub(super) struct LogState {
    pub(super) tag: u64,
    pub(super) sealed: bool,
    pub(super) log: CryptoLog,
    /// The chunks the log's blocks (data and nodes) live in, in order.
    pub(super) chunks: Vec<ChunkId>,
    /// Blocks handed out so far inside `chunks`.
    pub(super) alloc_pos: u64,
    /// Commit counter of the commit that last changed the log (memory only:
    /// concurrent transactions compare it to detect conflicts).
    pub(super) version: u64,
}

impl LogState {
    fn try_clone(&self) -> Result<Self> {
        let mut chunks = Vec::new();
        chunks.try_reserve_exact(self.chunks.len())?;
        chunks.extend_from_slice(&self.chunks);
        Ok(Self {
            tag: self.tag,
            sealed: self.sealed,
            log: self.log.try_clone()?,
            chunks,
            alloc_pos: self.alloc_pos,
            version: self.version,
        })
    }
}

/// A running transaction: copies of the logs it touched (`None` =
/// deleted), the version each copied log had when it was copied, the chunks
/// it took and the chunks it frees at commit.
pub(super) struct Tx {
    pub(super) logs: VecMap<u64, Option<LogState>>,
    /// Log id -> the committed version the copy was made from (logs the
    /// transaction created are not here).
    pub(super) base: VecMap<u64, u64>,
    pub(super) new_chunks: Vec<ChunkId>,
    pub(super) freed: Vec<ChunkId>,
    pub(super) next_log_id: u64,
    pub(super) failed: bool,
}

impl Tx {
    pub(super) fn new(next_log_id: u64) -> Self {
        Self {
            logs: VecMap::new(),
            base: VecMap::new(),
            new_chunks: Vec::new(),
            freed: Vec::new(),
            next_log_id,
            failed: false,
        }
    }

    /// Deletes log `id`, whose copy the transaction holds (made with
    /// [`tx_log`]). Its chunks become free when the transaction commits.
    pub(super) fn delete(&mut self, id: u64) -> Result<()> {
        let st = self
            .logs
            .get_mut(&id)
            .and_then(|s| s.as_mut())
            .ok_or(Error::new(ErrorKind::NotFound, "log was deleted"))?;
        let chunks = core::mem::take(&mut st.chunks);
        if let Err(e) = self.freed.try_reserve(chunks.len()) {
            st.chunks = chunks;
            return Err(e.into());
        }
        self.freed.extend_from_slice(&chunks);
        // `id` is held: replacing its value allocates nothing.
        self.logs.insert(id, None)?;
        Ok(())
    }

    /// Appends whole blocks to log `id`, whose copy the transaction holds,
    /// taking new chunks with `take`. A failure marks the transaction failed.
    pub(super) fn append<B: BlockSet + ?Sized>(
        &mut self,
        id: u64,
        blocks: &[u8],
        region: &B,
        chunk_blocks: u32,
        take: &mut dyn FnMut() -> Result<ChunkId>,
    ) -> Result<()> {
        let Tx {
            logs,
            new_chunks,
            failed,
            ..
        } = self;
        let st = logs
            .get_mut(&id)
            .and_then(|s| s.as_mut())
            .ok_or(Error::new(ErrorKind::NotFound, "log was deleted"))?;
        ensure!(!st.sealed, InvalidState, "log is sealed");
        let LogState {
            log,
            chunks,
            alloc_pos,
            ..
        } = st;
        let mut alloc = LogAlloc {
            take,
            chunks,
            alloc_pos,
            new_chunks,
            chunk_blocks: u64::from(chunk_blocks),
        };
        let r = log.append(region, &mut alloc, blocks);
        if r.is_err() {
            *failed = true;
        }
        r
    }

    /// First half of a commit: writes the partial tree nodes of the logs the
    /// transaction appended to, then flushes the chunk region so that every
    /// block a new root names is durable. Touches only the transaction's
    /// copies and chunks, never the committed state.
    pub(super) fn write_nodes<B: BlockSet + ?Sized>(
        &mut self,
        region: &B,
        chunk_blocks: u32,
        take: &mut dyn FnMut() -> Result<ChunkId>,
    ) -> Result<()> {
        let Tx {
            logs, new_chunks, ..
        } = self;
        let mut wrote = false;
        for st in logs.values_mut().flatten() {
            if !st.log.is_dirty() {
                continue;
            }
            let LogState {
                log,
                chunks,
                alloc_pos,
                ..
            } = st;
            let mut alloc = LogAlloc {
                take: &mut *take,
                chunks,
                alloc_pos,
                new_chunks: &mut *new_chunks,
                chunk_blocks: u64::from(chunk_blocks),
            };
            log.flush(region, &mut alloc)?;
            wrote = true;
        }
        if wrote || !self.new_chunks.is_empty() {
            // Every block a root names must be durable before the journal
            // record that names it.
            region.flush()?;
        }
        Ok(())
    }
}

/// What a commit writes to the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Plan {
    Delta,
    Snapshot,
    /// A snapshot as the first record of a new chain under a new key.
    Rotate,
}

/// Hands out the blocks of one log's chunks, taking chunks from the pool.
struct LogAlloc<'a> {
    take: &'a mut dyn FnMut() -> Result<ChunkId>,
    chunks: &'a mut Vec<ChunkId>,
    alloc_pos: &'a mut u64,
    new_chunks: &'a mut Vec<ChunkId>,
    chunk_blocks: u64,
}

impl BlockAlloc for LogAlloc<'_> {
    fn alloc_block(&mut self) -> Result<u64> {
        let cap = (self.chunks.len() as u64).saturating_mul(self.chunk_blocks);
        if *self.alloc_pos >= cap {
            self.chunks.try_reserve(1)?;
            self.new_chunks.try_reserve(1)?;
            let c = (self.take)()?;
            self.chunks.push(c);
            self.new_chunks.push(c);
        }
        let idx = usize::try_from(*self.alloc_pos / self.chunk_blocks)
            .map_err(|_| Error::new(ErrorKind::InvalidState, "log too long"))?;
        let c = self
            .chunks
            .get(idx)
            .ok_or(Error::new(ErrorKind::InvalidState, "chunk list too short"))?;
        let addr = u64::from(*c) * self.chunk_blocks + *self.alloc_pos % self.chunk_blocks;
        *self.alloc_pos += 1;
        Ok(addr)
    }
}

/// See [`TxLogStore::chunks_bound`].
pub fn chunks_bound(chunk_blocks: u64, logs: u64, blocks: u64, flushes: u64) -> u64 {
    let fan = FANOUT as u64;
    // Levels of nodes of a log of `blocks` blocks (at least one).
    let mut levels = 1u64;
    let mut span = fan;
    while span < blocks {
        levels += 1;
        span = span.saturating_mul(fan);
    }
    let mut nodes = 0u64;
    let mut width = blocks;
    for _ in 0..levels {
        width = width.div_ceil(fan);
        nodes = nodes.saturating_add(width);
    }
    let per_log = logs.saturating_mul(levels);
    let total = blocks
        .saturating_add(nodes)
        .saturating_add(per_log)
        .saturating_add(flushes.saturating_mul(levels));
    total.div_ceil(chunk_blocks.max(1)).saturating_add(logs)
}

/// Many append-only logs in chunks of a region, changed only inside atomic
/// transactions. See the module documentation of [`crate::log`].
pub struct TxLogStore<D: BlockSet> {
    crypto: CryptoRef,
    chain: MacChain<BlockRange<Arc<BlockRange<D>>>>,
    /// The journal region; the chain lives in one half of it and moves to
    /// the other half, under a new key, when the key has been used enough.
    journal: Arc<BlockRange<D>>,
    /// Blocks of each half (the chain's ring size).
    ring_blocks: u64,
    half: u8,
    /// Chain keys are derived from this (itself derived from the root key)
    /// with each chain's random salt.
    journal_base: AeadKey,
    /// Rotate to a new chain key once the chain has written this many blocks.
    rotate_after: u64,
    /// The chunk region (shared with a `SharedLogStore`'s
    /// transactions, which append outside the state lock).
    pub(super) chunks: Arc<BlockRange<D>>,
    salt: [u8; 16],
    pub(super) cfg: LogStoreConfig,
    pub(super) logs: VecMap<u64, LogState>,
    /// The chunk pool. Inside a `SharedLogStore` the pool lives under its
    /// own lock and this one is an empty placeholder, never used.
    pub(super) pool: ChunkPool,
    /// Chunks in the chunk region (what the journal records carry).
    nchunks: u32,
    pub(super) next_log_id: u64,
    pub(super) counter: u64,
    since_snapshot: u32,
    pub(super) user_state: Vec<u8>,
    tx: Option<Tx>,
    pub(super) broken: bool,
    /// Decrypted tree nodes of every log (interior mutability so that `read`
    /// stays `&self`; the store is `Send`, not `Sync`: the owner serialises).
    cache: RefCell<NodeCache>,
    /// `logs_with_tag` could not allocate its answer: refuse the next commit.
    list_failed: Cell<bool>,
}

/// Tree nodes the store keeps decrypted by default (about 4.5 KiB each).
pub const DEFAULT_NODE_CACHE: usize = 256;

const JOURNAL_BASE_LABEL: &[u8] = b"mlsdisk/log-store/journal-base";
const JOURNAL_KEY_LABEL: &[u8] = b"mlsdisk/log-store/journal";
/// Smallest journal region accepted.
pub const MIN_JOURNAL_BLOCKS: u64 = 8;

/// Chain blocks written under one journal key before the store moves to a
/// new key: 2^30 random 96-bit IVs per key (collision chance below 2^-37).
pub const DEFAULT_ROTATE_AFTER: u64 = 1 << 30;

fn journal_base_key(crypto: &dyn crate::platform::Crypto, root_key: &[u8]) -> Result<AeadKey> {
    kdf_key(crypto, root_key, JOURNAL_BASE_LABEL, b"", 32)
}

fn half_range<D: BlockSet>(
    journal: &Arc<BlockRange<D>>,
    half: u8,
) -> Result<BlockRange<Arc<BlockRange<D>>>> {
    let len = journal.nblocks() / 2;
    BlockRange::new(journal.clone(), u64::from(half) * len, len)
}

fn nchunks_of(chunks: u64, cfg: &LogStoreConfig) -> Result<u32> {
    ensure!(cfg.chunk_blocks > 0, InvalidArgument, "chunk size is zero");
    u32::try_from(chunks / u64::from(cfg.chunk_blocks))
        .map_err(|_| Error::new(ErrorKind::InvalidArgument, "too many chunks"))
}

impl<D: BlockSet> TxLogStore<D> {
    /// Makes a new, empty store: writes the first snapshot to the journal.
    pub fn format(
        journal: BlockRange<D>,
        chunks: BlockRange<D>,
        crypto: CryptoRef,
        root_key: &[u8],
        cfg: LogStoreConfig,
    ) -> Result<Self> {
        ensure!(
            cfg.key_len == 16 || cfg.key_len == 32,
            InvalidArgument,
            "key length must be 16 or 32"
        );
        ensure!(
            cfg.snapshot_every > 0,
            InvalidArgument,
            "snapshot_every is zero"
        );
        let nchunks = nchunks_of(chunks.nblocks(), &cfg)?;
        ensure!(
            nchunks > 0,
            InvalidArgument,
            "chunk region smaller than a chunk"
        );
        ensure!(
            journal.nblocks() >= MIN_JOURNAL_BLOCKS,
            InvalidArgument,
            "journal region too small"
        );
        let journal = Arc::new(journal);
        let ring_blocks = journal.nblocks() / 2;
        let journal_base = journal_base_key(&*crypto, root_key)?;
        let mut salt = [0u8; 16];
        crypto.fill_random(&mut salt)?;
        let key = kdf_key(
            &*crypto,
            journal_base.as_bytes(),
            JOURNAL_KEY_LABEL,
            &salt,
            32,
        )?;
        let chain = MacChain::create(half_range(&journal, 0)?, crypto.clone(), key)?;
        let mut store = Self {
            crypto,
            chain,
            journal,
            ring_blocks,
            half: 0,
            journal_base,
            rotate_after: DEFAULT_ROTATE_AFTER,
            chunks: Arc::new(chunks),
            salt,
            cfg,
            logs: VecMap::new(),
            pool: ChunkPool::new(nchunks)?,
            nchunks,
            next_log_id: 0,
            counter: 0,
            since_snapshot: 0,
            user_state: Vec::new(),
            tx: None,
            broken: false,
            cache: RefCell::new(NodeCache::new(DEFAULT_NODE_CACHE)),
            list_failed: Cell::new(false),
        };
        let rec = store.snapshot_record(None, 0, &[])?;
        store.chain.append(&rec)?;
        store.chain.commit()?;
        Ok(store)
    }

    /// Opens a store and recovers the state of its last committed
    /// transaction (which may be newer than `root`'s tail if a commit reached
    /// the journal but the owner did not record the new root).
    pub fn open(
        journal: BlockRange<D>,
        chunks: BlockRange<D>,
        crypto: CryptoRef,
        root_key: &[u8],
        root: &StoreRoot,
    ) -> Result<Self> {
        ensure!(
            journal.nblocks() >= MIN_JOURNAL_BLOCKS,
            InvalidArgument,
            "journal region too small"
        );
        let journal = Arc::new(journal);
        let ring_blocks = journal.nblocks() / 2;
        let journal_base = journal_base_key(&*crypto, root_key)?;
        let key = kdf_key(
            &*crypto,
            journal_base.as_bytes(),
            JOURNAL_KEY_LABEL,
            &root.salt,
            32,
        )?;
        let region = half_range(&journal, root.half)?;
        let (chain, records) = MacChain::open(region, crypto.clone(), key, root.start, root.tail)?;
        let mut recs = records.iter();
        let first = record::parse(recs.next().ok_or(Error::new(
            ErrorKind::Corrupted,
            "journal holds no snapshot",
        ))?)?;
        ensure!(
            first.header.kind == Kind::Snapshot,
            Corrupted,
            "journal does not start with a snapshot"
        );
        let h = &first.header;
        let cfg = LogStoreConfig {
            chunk_blocks: h.chunk_blocks,
            key_len: usize::from(h.key_len),
            snapshot_every: LogStoreConfig::default().snapshot_every,
        };
        let nchunks = nchunks_of(chunks.nblocks(), &cfg)?;
        ensure!(
            nchunks == h.nchunks,
            InvalidArgument,
            "chunk region size differs from the formatted one"
        );
        let mut store = Self {
            crypto,
            chain,
            journal,
            ring_blocks,
            half: root.half,
            journal_base,
            rotate_after: DEFAULT_ROTATE_AFTER,
            chunks: Arc::new(chunks),
            salt: root.salt,
            cfg,
            logs: VecMap::new(),
            pool: ChunkPool::new(nchunks)?,
            nchunks,
            next_log_id: 0,
            counter: h.counter,
            since_snapshot: 0,
            user_state: Vec::new(),
            tx: None,
            broken: false,
            cache: RefCell::new(NodeCache::new(DEFAULT_NODE_CACHE)),
            list_failed: Cell::new(false),
        };
        store.apply(first, true)?;
        for r in recs {
            store.apply(record::parse(r)?, false)?;
        }
        for st in store.logs.values() {
            let cap = (st.chunks.len() as u64).saturating_mul(u64::from(cfg.chunk_blocks));
            ensure!(
                st.alloc_pos <= cap,
                Corrupted,
                "log allocation past its chunks"
            );
            for &c in &st.chunks {
                store.pool.claim(c)?;
            }
        }
        Ok(store)
    }

    /// Replays one journal record onto the in-memory state.
    fn apply(&mut self, rec: Record, first: bool) -> Result<()> {
        let h = &rec.header;
        if !first {
            ensure!(
                Some(h.counter) == self.counter.checked_add(1),
                Corrupted,
                "journal commit counters are not consecutive"
            );
            ensure!(
                h.chunk_blocks == self.cfg.chunk_blocks
                    && usize::from(h.key_len) == self.cfg.key_len
                    && h.nchunks == self.nchunks,
                Corrupted,
                "journal record geometry differs"
            );
        }
        ensure!(
            h.next_log_id >= self.next_log_id,
            Corrupted,
            "log ids went back"
        );
        if h.kind == Kind::Snapshot {
            self.logs.clear();
            self.since_snapshot = 0;
        } else {
            self.since_snapshot = self.since_snapshot.saturating_add(1);
        }
        for id in &rec.deletes {
            ensure!(
                self.logs.remove(id).is_some(),
                Corrupted,
                "journal deletes an unknown log"
            );
        }
        for e in rec.logs {
            ensure!(
                e.id < h.next_log_id,
                Corrupted,
                "log id beyond the id counter"
            );
            let log = CryptoLog::open(self.crypto.clone(), self.cfg.key_len, e.root)?;
            match self.logs.get_mut(&e.id) {
                Some(st) => {
                    ensure!(st.tag == e.tag, Corrupted, "log tag changed");
                    ensure!(
                        st.chunks.len() + e.new_chunks.len() == e.chunks_total as usize,
                        Corrupted,
                        "journal chunk count mismatch"
                    );
                    st.chunks.try_reserve(e.new_chunks.len())?;
                    st.chunks.extend_from_slice(&e.new_chunks);
                    st.sealed = e.sealed;
                    st.alloc_pos = e.alloc_pos;
                    st.log = log;
                    st.version = h.counter;
                }
                None => {
                    ensure!(
                        e.new_chunks.len() == e.chunks_total as usize,
                        Corrupted,
                        "journal chunk count mismatch"
                    );
                    self.logs.insert(
                        e.id,
                        LogState {
                            tag: e.tag,
                            sealed: e.sealed,
                            log,
                            chunks: e.new_chunks,
                            alloc_pos: e.alloc_pos,
                            version: h.counter,
                        },
                    )?;
                }
            }
        }
        self.next_log_id = h.next_log_id;
        self.counter = h.counter;
        self.user_state = rec.user_state;
        Ok(())
    }

    /// The crypto provider the store was made with.
    #[cfg(feature = "shared-store")]
    pub(super) fn crypto(&self) -> CryptoRef {
        self.crypto.clone()
    }

    pub(super) fn check_usable(&self) -> Result<()> {
        ensure!(
            !self.broken,
            InvalidState,
            "log store failed during a commit; reopen it"
        );
        Ok(())
    }

    /// Starts a transaction. Only one runs at a time.
    pub fn begin(&mut self) -> Result<()> {
        self.check_usable()?;
        ensure!(
            self.tx.is_none(),
            InvalidState,
            "a transaction is already active"
        );
        self.tx = Some(Tx::new(self.next_log_id));
        Ok(())
    }

    /// Whether a transaction is active.
    pub fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    fn tx_mut(&mut self) -> Result<&mut Tx> {
        self.check_usable()?;
        self.tx
            .as_mut()
            .ok_or(Error::new(ErrorKind::InvalidState, "no active transaction"))
    }

    /// Creates an empty log with a tag (a number the owner chooses).
    pub fn create_log(&mut self, tag: u64) -> Result<LogId> {
        let log = CryptoLog::new(self.crypto.clone(), self.cfg.key_len)?;
        let tx = self.tx_mut()?;
        tx.logs.try_reserve(1)?;
        let id = tx.next_log_id;
        tx.next_log_id = id
            .checked_add(1)
            .ok_or(Error::new(ErrorKind::NoSpace, "log ids exhausted"))?;
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
        Ok(LogId(id))
    }

    /// Appends whole blocks to a log that is not sealed.
    pub fn append(&mut self, log: LogId, blocks: &[u8]) -> Result<()> {
        ensure!(
            !blocks.is_empty() && blocks.len() % BLOCK_SIZE == 0,
            InvalidArgument,
            "append needs whole blocks"
        );
        self.check_usable()?;
        let Self {
            tx,
            logs,
            pool,
            chunks,
            cfg,
            ..
        } = self;
        let tx = tx
            .as_mut()
            .ok_or(Error::new(ErrorKind::InvalidState, "no active transaction"))?;
        tx_log(tx, logs, log.0)?;
        tx.append(log.0, blocks, &**chunks, cfg.chunk_blocks, &mut || {
            pool.alloc()
        })
    }

    /// Seals a log: no more appends.
    pub fn seal(&mut self, log: LogId) -> Result<()> {
        let Self { tx, logs, .. } = self;
        let tx = tx
            .as_mut()
            .ok_or(Error::new(ErrorKind::InvalidState, "no active transaction"))?;
        tx_log(tx, logs, log.0)?.sealed = true;
        Ok(())
    }

    /// Deletes a log. Its chunks become free when the transaction commits.
    pub fn delete_log(&mut self, log: LogId) -> Result<()> {
        self.check_usable()?;
        let Self { tx, logs, .. } = self;
        let tx = tx
            .as_mut()
            .ok_or(Error::new(ErrorKind::InvalidState, "no active transaction"))?;
        tx_log(tx, logs, log.0)?;
        tx.delete(log.0)
    }

    /// Drops the running transaction's changes (no-op without one).
    pub fn abort(&mut self) {
        self.list_failed.set(false);
        if let Some(tx) = self.tx.take() {
            for c in tx.new_chunks {
                if self.pool.release(c).is_err() {
                    self.broken = true;
                }
            }
        }
    }

    /// Commits the running transaction atomically with `user_state`: all its
    /// changes are durable on return. On an error before the journal write
    /// the transaction stays active (abort it); on an error during the
    /// journal write the store must be reopened (the commit may or may not
    /// have reached the disk).
    pub fn commit(&mut self, user_state: &[u8]) -> Result<()> {
        self.check_usable()?;
        let mut tx = self
            .tx
            .take()
            .ok_or(Error::new(ErrorKind::InvalidState, "no active transaction"))?;
        if tx.failed || self.list_failed.get() {
            tx.failed = true;
            self.tx = Some(tx);
            bail!(
                InvalidState,
                "an operation of the transaction failed; abort it"
            );
        }
        let prepared = self.prepare_commit(&mut tx, user_state);
        let (rec, plan, new_user_state) = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.tx = Some(tx);
                return Err(e);
            }
        };
        if let Err(e) = self.reserve_install(&tx) {
            self.tx = Some(tx);
            return Err(e);
        }
        if let Err(e) = self.write_record(&rec, plan) {
            self.tx = Some(tx);
            return Err(e);
        }
        let freed = self.install(tx, new_user_state);
        self.release_all(&freed)
    }

    /// Gives the chunks of logs a commit deleted back to the pool (an error
    /// means the pool disagrees with the state: the store is then broken).
    fn release_all(&mut self, freed: &[ChunkId]) -> Result<()> {
        for &c in freed {
            if let Err(e) = self.pool.release(c) {
                self.broken = true;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Writes a commit record to the journal. On an error of a rotation
    /// nothing the owner's root names changed (the transaction can be
    /// aborted); on an error of an append the commit may or may not have
    /// reached the disk and the store is marked broken.
    pub(super) fn write_record(&mut self, rec: &[u8], plan: Plan) -> Result<()> {
        if plan == Plan::Rotate {
            // A new chain under a new key in the other half, starting with
            // a snapshot. The current chain is left intact: until the owner
            // records the new root, its old root still opens the old state.
            // So a failure here changes nothing the owner's root names.
            self.rotate(rec)
        } else if let Err(e) = self.append_record(rec, plan == Plan::Snapshot) {
            // The commit may or may not have reached the disk.
            self.broken = true;
            Err(e)
        } else {
            Ok(())
        }
    }

    /// Moves the journal to a new chain (new salt, new key) in the other half
    /// of the journal region, with `snapshot` as its first record.
    fn rotate(&mut self, snapshot: &[u8]) -> Result<()> {
        let mut salt = [0u8; 16];
        self.crypto.fill_random(&mut salt)?;
        let key = kdf_key(
            &*self.crypto,
            self.journal_base.as_bytes(),
            JOURNAL_KEY_LABEL,
            &salt,
            32,
        )?;
        let other = 1 - self.half;
        let mut chain =
            MacChain::create(half_range(&self.journal, other)?, self.crypto.clone(), key)?;
        chain.append(snapshot)?;
        chain.commit()?;
        self.chain = chain;
        self.salt = salt;
        self.half = other;
        self.since_snapshot = 0;
        Ok(())
    }

    /// Appends one commit record to the chain (moving its start to it if it
    /// is a snapshot).
    fn append_record(&mut self, rec: &[u8], snapshot: bool) -> Result<()> {
        let start = self.chain.tail();
        self.chain.append(rec)?;
        self.chain.commit()?;
        if snapshot {
            self.chain.reset_start(start)?;
            self.since_snapshot = 0;
        } else {
            self.since_snapshot = self.since_snapshot.saturating_add(1);
        }
        Ok(())
    }

    /// Makes the room [`Self::install`] needs for the logs `tx` creates
    /// (before the journal write: out of memory then changes nothing).
    pub(super) fn reserve_install(&mut self, tx: &Tx) -> Result<()> {
        let new = tx
            .logs
            .iter()
            .filter(|(id, st)| st.is_some() && !self.logs.contains_key(id))
            .count();
        self.logs.try_reserve(new)
    }

    /// Makes a durable transaction the committed state in memory. Returns
    /// the chunks of the logs it deleted: the caller gives them back to the
    /// pool. Needs the room [`Self::reserve_install`] made (without it, out
    /// of memory marks the store broken).
    pub(super) fn install(&mut self, tx: Tx, new_user_state: Vec<u8>) -> Vec<ChunkId> {
        let version = self.counter.saturating_add(1);
        for (id, st) in tx.logs {
            match st {
                Some(mut st) => {
                    if st.sealed {
                        st.log.release_frontier();
                    }
                    st.version = version;
                    if self.logs.insert(id, st).is_err() {
                        self.broken = true;
                    }
                }
                None => {
                    self.logs.remove(&id);
                }
            }
        }
        self.next_log_id = tx.next_log_id;
        self.counter = version;
        self.user_state = new_user_state;
        tx.freed
    }

    /// Writes the logs' partial nodes, flushes the chunk region and encodes
    /// the journal record. Nothing here changes the committed state.
    fn prepare_commit(
        &mut self,
        tx: &mut Tx,
        user_state: &[u8],
    ) -> Result<(Vec<u8>, Plan, Vec<u8>)> {
        let Self {
            chunks, pool, cfg, ..
        } = self;
        tx.write_nodes(&**chunks, cfg.chunk_blocks, &mut || pool.alloc())?;
        self.plan_record(tx, user_state)
    }

    /// Second half of a commit: chooses delta, snapshot or rotation and
    /// encodes the record of `tx` against the committed state. Returns the
    /// record, the plan and a copy of `user_state`. Changes nothing.
    pub(super) fn plan_record(
        &self,
        tx: &Tx,
        user_state: &[u8],
    ) -> Result<(Vec<u8>, Plan, Vec<u8>)> {
        let mut us = Vec::new();
        us.try_reserve_exact(user_state.len())?;
        us.extend_from_slice(user_state);
        let mut plan = if self.chain.tail().seq >= self.rotate_after {
            Plan::Rotate
        } else if self.since_snapshot.saturating_add(1) >= self.cfg.snapshot_every
            || self.chain.free_blocks() < self.ring_blocks / 2
        {
            Plan::Snapshot
        } else {
            Plan::Delta
        };
        let mut rec = if plan == Plan::Delta {
            self.delta_record(tx, user_state)?
        } else {
            self.snapshot_record(Some(tx), self.next_counter()?, user_state)?
        };
        let blocks =
            |r: &[u8]| mac_chain::blocks_for(r.len().saturating_add(mac_chain::RECORD_HEADER_LEN));
        if plan != Plan::Rotate && blocks(&rec) > self.chain.free_blocks() {
            // No room left in this ring: start over in the other half, with
            // a snapshot, under a new key.
            if plan == Plan::Delta {
                rec = self.snapshot_record(Some(tx), self.next_counter()?, user_state)?;
            }
            plan = Plan::Rotate;
        }
        // A record the ring cannot take fails here, before the chain is
        // touched, so the transaction can still be aborted.
        let room = if plan == Plan::Rotate {
            self.ring_blocks
        } else {
            self.chain.free_blocks()
        };
        ensure!(blocks(&rec) <= room, NoSpace, "log store journal is full");
        Ok((rec, plan, us))
    }

    fn next_counter(&self) -> Result<u64> {
        self.counter
            .checked_add(1)
            .ok_or(Error::new(ErrorKind::NoSpace, "commit counter exhausted"))
    }

    fn header(&self, kind: Kind, counter: u64, next_log_id: u64) -> Header {
        Header {
            kind,
            key_len: self.cfg.key_len as u8,
            counter,
            next_log_id,
            chunk_blocks: self.cfg.chunk_blocks,
            nchunks: self.nchunks,
        }
    }

    /// A snapshot of the committed state with `tx` applied.
    fn snapshot_record(&self, tx: Option<&Tx>, counter: u64, user_state: &[u8]) -> Result<Vec<u8>> {
        let next = tx.map_or(self.next_log_id, |t| t.next_log_id);
        let mut enc = Encoder::new(&self.header(Kind::Snapshot, counter, next), user_state)?;
        let overlay = tx.map(|t| &t.logs);
        for (&id, st) in &self.logs {
            if overlay.is_some_and(|o| o.contains_key(&id)) {
                continue;
            }
            put_log(&mut enc, id, st, 0)?;
        }
        if let Some(o) = overlay {
            for (&id, st) in o {
                if let Some(st) = st {
                    put_log(&mut enc, id, st, 0)?;
                }
            }
        }
        enc.finish()
    }

    /// The changes of `tx` against the committed state.
    fn delta_record(&self, tx: &Tx, user_state: &[u8]) -> Result<Vec<u8>> {
        let mut enc = Encoder::new(
            &self.header(Kind::Delta, self.next_counter()?, tx.next_log_id),
            user_state,
        )?;
        for (&id, st) in &tx.logs {
            if st.is_none() && self.logs.contains_key(&id) {
                enc.delete(id)?;
            }
        }
        for (&id, st) in &tx.logs {
            if let Some(st) = st {
                let old = self.logs.get(&id).map_or(0, |s| s.chunks.len());
                put_log(&mut enc, id, st, old)?;
            }
        }
        enc.finish()
    }

    /// Reads whole blocks of a log from block `pos`: its committed contents,
    /// or, inside a transaction, as the transaction left it.
    pub fn read(&self, log: LogId, pos: u64, buf: &mut [u8]) -> Result<()> {
        self.check_usable()?;
        let st = self.view(log)?;
        match self.cache.try_borrow_mut() {
            Ok(mut c) => st.log.read_cached(&self.chunks, pos, buf, Some(&mut c)),
            Err(_) => st.log.read(&self.chunks, pos, buf),
        }
    }

    /// Reads block `pos` of log `log` for each `(log, pos)` of `blocks`
    /// (of any logs, in any order) into consecutive blocks of `buf`, in one
    /// batch of device reads all in flight at once where the device can;
    /// each block holds what [`Self::read`] gives. The first block that
    /// fails to verify is the error.
    pub fn read_scattered(&self, blocks: &[(LogId, u64)], buf: &mut [u8]) -> Result<()> {
        self.check_usable()?;
        ensure!(
            buf.len() == blocks.len() * BLOCK_SIZE,
            InvalidArgument,
            "scattered read: one block per position"
        );
        let mut at: Vec<(&LogState, LocatedBlock)> = Vec::new();
        at.try_reserve_exact(blocks.len())?;
        let mut addrs: Vec<u64> = Vec::new();
        addrs.try_reserve_exact(blocks.len())?;
        {
            let mut cache = self.cache.try_borrow_mut().ok();
            for &(log, pos) in blocks {
                let st = self.view(log)?;
                let b = st
                    .log
                    .locate_data(&self.chunks, pos, cache.as_deref_mut())?;
                addrs.push(b.addr());
                at.push((st, b));
            }
        }
        read_located(&self.chunks, &addrs, buf)?;
        for ((st, b), out) in at.iter().zip(buf.chunks_exact_mut(BLOCK_SIZE)) {
            st.log.open_located(b, out)?;
        }
        Ok(())
    }

    /// Sets how many decrypted tree nodes reads keep (0 disables the cache).
    pub fn set_node_cache(&mut self, nodes: usize) {
        *self.cache.get_mut() = NodeCache::new(nodes);
    }

    /// Changes how many decrypted tree nodes reads keep, keeping the
    /// nodes cached now (evicting down to `nodes`, level-0 nodes first).
    pub fn set_node_cache_capacity(&mut self, nodes: usize) {
        self.cache.get_mut().set_capacity(nodes);
    }

    /// The node cache's capacity and the nodes it holds now.
    pub fn node_cache_size(&self) -> (usize, usize) {
        self.cache
            .try_borrow()
            .map_or((0, 0), |c| (c.capacity(), c.len()))
    }

    /// The tree nodes of every log, committed or created by the running
    /// transaction ([`crate::crypto::crypto_log::nodes_of`] of each
    /// length): the most nodes a read of the logs there are now can put in
    /// the node cache. O(logs), no I/O.
    pub fn tree_nodes(&self) -> u64 {
        let mut n = 0u64;
        for st in self.logs.values() {
            n = n.saturating_add(nodes_of(st.log.nblocks()));
        }
        if let Some(tx) = &self.tx {
            // A log the transaction changed counts once more (its
            // committed version may still be cached): an upper bound.
            for st in tx.logs.values().flatten() {
                n = n.saturating_add(nodes_of(st.log.nblocks()));
            }
        }
        n
    }

    /// Node cache hits and misses so far.
    pub fn node_cache_stats(&self) -> (u64, u64) {
        self.cache.try_borrow().map_or((0, 0), |c| c.hits_misses())
    }

    fn view(&self, log: LogId) -> Result<&LogState> {
        if let Some(tx) = &self.tx {
            if let Some(v) = tx.logs.get(&log.0) {
                return v
                    .as_ref()
                    .ok_or(Error::new(ErrorKind::NotFound, "log was deleted"));
            }
        }
        self.logs
            .get(&log.0)
            .ok_or(Error::new(ErrorKind::NotFound, "no such log"))
    }

    /// Number of blocks of a log.
    pub fn log_len(&self, log: LogId) -> Result<u64> {
        Ok(self.view(log)?.log.nblocks())
    }

    /// The tag a log was created with.
    pub fn log_tag(&self, log: LogId) -> Result<u64> {
        Ok(self.view(log)?.tag)
    }

    /// Whether a log is sealed.
    pub fn is_sealed(&self, log: LogId) -> Result<bool> {
        Ok(self.view(log)?.sealed)
    }

    /// The logs with `tag`, in id order (the transaction's view).
    ///
    /// If memory for the list cannot be had, the list is empty and a
    /// following `commit` fails (so a caller never acts on a partial list
    /// unknowingly); [`Self::try_logs_with_tag`] reports it directly.
    pub fn logs_with_tag(&self, tag: u64) -> Vec<LogId> {
        match self.try_logs_with_tag(tag) {
            Ok(v) => v,
            Err(_) => {
                self.list_failed.set(true);
                Vec::new()
            }
        }
    }

    /// The logs with `tag`, in id order (the transaction's view).
    pub fn try_logs_with_tag(&self, tag: u64) -> Result<Vec<LogId>> {
        let overlay = self.tx.as_ref().map(|t| &t.logs);
        let mut ids: Vec<LogId> = Vec::new();
        for (&id, st) in &self.logs {
            if overlay.is_some_and(|o| o.contains_key(&id)) {
                continue;
            }
            if st.tag == tag {
                ids.try_reserve(1)?;
                ids.push(LogId(id));
            }
        }
        if let Some(o) = overlay {
            for (&id, st) in o {
                if st.as_ref().is_some_and(|s| s.tag == tag) {
                    ids.try_reserve(1)?;
                    ids.push(LogId(id));
                }
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// The user state of the last commit.
    pub fn user_state(&self) -> &[u8] {
        &self.user_state
    }

    /// The commit counter of the last commit (0 = the format).
    pub fn commit_count(&self) -> u64 {
        self.counter
    }

    /// What the owner keeps to reopen the store. Record it after every
    /// commit, before the next one (a snapshot commit frees journal space
    /// that an older root still points into).
    pub fn root(&self) -> StoreRoot {
        StoreRoot {
            salt: self.salt,
            half: self.half,
            start: self.chain.start(),
            tail: self.chain.tail(),
        }
    }

    /// Space statistics.
    pub fn stats(&self) -> StoreStats {
        let total = self.pool.nchunks();
        let free = self.pool.nfree();
        StoreStats {
            chunks_total: total,
            chunks_used: total - free,
            chunks_free: free,
            chunk_blocks: self.cfg.chunk_blocks,
            logs: self.logs.len(),
            commit_count: self.counter,
            journal_free_blocks: self.chain.free_blocks(),
            chunks_pinned: self
                .tx
                .as_ref()
                .map_or(0, |t| u32::try_from(t.freed.len()).unwrap_or(u32::MAX)),
        }
    }

    /// An upper bound of the chunks that `logs` logs take for `blocks` more
    /// data blocks in all, committed `flushes` times while being appended
    /// to: the data blocks, the full Merkle nodes above them (a node per
    /// [`FANOUT`] entries at each level, plus a partial one per level and
    /// log), the partial nodes of the rightmost path that each commit
    /// writes again (one per level), and a partly used chunk per log.
    pub fn chunks_bound(&self, logs: u64, blocks: u64, flushes: u64) -> u64 {
        chunks_bound(u64::from(self.cfg.chunk_blocks), logs, blocks, flushes)
    }

    /// The configuration the store was formatted with.
    pub fn config(&self) -> LogStoreConfig {
        self.cfg
    }

    /// Overrides after how many chain blocks the journal moves to a new key
    /// (default [`DEFAULT_ROTATE_AFTER`]; tests use small values).
    pub fn set_rotate_after(&mut self, blocks: u64) {
        self.rotate_after = blocks.max(1);
    }

    /// Overrides how often a snapshot is written (not persisted).
    pub fn set_snapshot_every(&mut self, n: u32) {
        self.cfg.snapshot_every = n.max(1);
    }
}

fn put_log(enc: &mut Encoder, id: u64, st: &LogState, old_chunks: usize) -> Result<()> {
    let root = st.log.last_root();
    let new = st
        .chunks
        .get(old_chunks..)
        .ok_or(Error::new(ErrorKind::InvalidState, "log lost chunks"))?;
    enc.log(&LogFields {
        id,
        tag: st.tag,
        sealed: st.sealed,
        alloc_pos: st.alloc_pos,
        root,
        chunks_total: st.chunks.len(),
        new_chunks: new,
    })
}

/// The transaction's copy of log `id`, made on first touch (recording the
/// version it was made from).
pub(super) fn tx_log<'a>(
    tx: &'a mut Tx,
    logs: &VecMap<u64, LogState>,
    id: u64,
) -> Result<&'a mut LogState> {
    if !tx.logs.contains_key(&id) {
        let st = logs
            .get(&id)
            .ok_or(Error::new(ErrorKind::NotFound, "no such log"))?;
        let copy = st.try_clone()?;
        // Both maps' room first: out of memory leaves the transaction as
        // it was.
        tx.logs.try_reserve(1)?;
        tx.base.try_reserve(1)?;
        tx.base.insert(id, st.version)?;
        tx.logs.insert(id, Some(copy))?;
    }
    tx.logs
        .get_mut(&id)
        .ok_or(Error::new(ErrorKind::InvalidState, "log copy"))?
        .as_mut()
        .ok_or(Error::new(ErrorKind::NotFound, "log was deleted"))
}

/// Fuzzing only: writes `records` (one commit each) into a fresh MAC chain
/// in the first half of `journal`, under the journal key that
/// [`TxLogStore::open`] derives from `root_key` and a fixed salt, and
/// returns the root that opens it. This is how the fuzz targets reach the
/// record decoder and the replay behind the chain's authentication.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_seal_journal<D: BlockSet>(
    journal: BlockRange<D>,
    crypto: CryptoRef,
    root_key: &[u8],
    records: &[&[u8]],
) -> Result<StoreRoot> {
    let journal = Arc::new(journal);
    let base = journal_base_key(&*crypto, root_key)?;
    let salt = [0x5a; 16];
    let key = kdf_key(&*crypto, base.as_bytes(), JOURNAL_KEY_LABEL, &salt, 32)?;
    let mut chain = MacChain::create(half_range(&journal, 0)?, crypto, key)?;
    let start = chain.start();
    let mut tail = start;
    for r in records {
        chain.append(r)?;
        tail = chain.commit()?;
    }
    Ok(StoreRoot {
        salt,
        half: 0,
        start,
        tail,
    })
}
