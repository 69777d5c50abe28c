//! [`LsmTree`]: memtables, WAL, tables, flush and compaction, on a store.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::mem;

use super::cache::{BlockCache, CachedFetch};
use super::format::{self, BlockKind, Header};
use super::header::TreeHeader;
use super::manifest::{self, TAG_MANIFEST};
use super::merge::{Ctx, MemRef, MemTable, Merger, Source};
use super::store::{LogSource, LogStore};
use super::table::{TableBuilder, TableInfo, MAX_DATA_BLOCKS};
use super::wal::{self, WalBuf};
use super::{table_tag, LsmConfig, LsmStats, LsmValue, MAX_LEVELS, TAG_WAL};
use crate::bio::BLOCK_SIZE;
use crate::{bail, ensure, Error, ErrorKind, Result};

/// The answer of [`LsmTree::space_for`]: what the tree may take from its
/// store before and with the next commit, and what the store has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpaceCheck {
    /// Chunks the tree may still take (an upper bound).
    pub need: u64,
    /// Chunks free now.
    pub free: u64,
    /// Chunks the next commit frees.
    pub pinned: u64,
    /// A due compaction waits for a commit to free chunks: the tree wants
    /// one before more updates (else L0 only grows).
    pub commit_wanted: bool,
}

impl SpaceCheck {
    /// Whether `need` fits in the chunks free now (and no compaction
    /// waits for a commit).
    pub fn fits_now(&self) -> bool {
        self.need <= self.free && !self.commit_wanted
    }
    /// Whether `need` fits once the next commit frees the pinned chunks.
    pub fn fits_after_commit(&self) -> bool {
        self.need <= self.free.saturating_add(self.pinned)
    }
}

/// Table sequence numbers and WAL generations read at open must be below
/// this (2^63): they only grow by one, so honest ones never get near it.
const COUNTER_LIMIT: u64 = 1 << 63;

/// Updates stall (compaction runs inside `put`) when L0 holds this many
/// times `l0_max_tables` tables.
pub const L0_STALL_FACTOR: usize = 2;

/// Levels of Merkle nodes of a table's log at most (a table has fewer than
/// 72^3 blocks).
const LOG_NODE_LEVELS: u64 = 3;
/// Keys [`LsmTree::range`] covers at most in one call (bounds its memory:
/// a slot of a value per key).
pub const MAX_RANGE: u64 = 1 << 16;
/// Data blocks one scattered read of `LsmTree::get_sorted`'s read-ahead
/// takes at most (a 1 MiB buffer beside the caches; the device gets them
/// all at once).
const PREFETCH_BATCH: usize = 256;
/// Pinned blocks one background step loads after an open.
const PIN_STEP_BLOCKS: usize = 64;

/// The fetcher of table `$t`'s blocks from `$src` through the tree's
/// caches (a macro, not a method: the caller holds `$t` borrowed from the
/// tree's levels while the caches are borrowed mutably).
macro_rules! table_fetch {
    ($tree:ident, $t:ident, $src:expr, $use_bloom:expr) => {
        CachedFetch {
            table: $t.info.seq,
            src: $src,
            meta: &mut $tree.meta_cache,
            data: &mut $tree.data_cache,
            read_ahead: $tree.cfg.read_ahead_blocks,
            pinned: &mut $tree.pinned,
            data_floor: if $tree.cfg.lend_pinned_room {
                Some($tree.cfg.data_cache_blocks.saturating_add($tree.nodes_lent))
            } else {
                None
            },
            use_bloom: $use_bloom,
            bloom_negatives: &mut $tree.stats.bloom_negatives,
        }
    };
}

#[derive(Clone)]
struct Table<Id> {
    id: Id,
    info: TableInfo,
}

struct Imm<Id, V> {
    map: MemTable<V>,
    wal: Option<Id>,
}

struct Output<Id> {
    builder: TableBuilder,
    log: Option<Id>,
    /// The table's sequence number.
    seq: u64,
    /// Blocks appended to its log so far.
    blocks: u64,
}

/// A flush (of the immutable memtable into L0) or a compaction, in progress.
struct Job<Id, V> {
    merger: Merger<Id, V>,
    out_level: u8,
    drop_tombstones: bool,
    /// (level, seq) of the input tables, removed when the job ends.
    inputs: Vec<(u8, u64)>,
    out: Option<Output<Id>>,
    outputs: Vec<Table<Id>>,
    /// Input records not yet consumed (sizes the bloom filters).
    remaining: u64,
    /// Keys in the job's key range: it writes at most this many records.
    span: u64,
    /// The data blocks it writes go into the data cache (see
    /// [`append_block`]): a memtable flush (the keys just written), or a
    /// compaction some of whose inputs had data blocks cached (what was
    /// warm stays warm instead of being read back after the compaction).
    warm: bool,
}

/// A transactional LSM-tree over a [`LogStore`]; see the module docs.
pub struct LsmTree<S: LogStore, V: LsmValue> {
    store: S,
    cfg: LsmConfig,
    in_tx: bool,
    poisoned: bool,
    mem: MemTable<V>,
    mem_gen: u64,
    mem_wal: Option<S::LogId>,
    /// Blocks in the mutable memtable's WAL log.
    mem_wal_blocks: u64,
    wal: WalBuf,
    imm: Option<Imm<S::LogId, V>>,
    /// L0 newest first; deeper levels ascending by key.
    levels: Vec<Vec<Table<S::LogId>>>,
    flush: Option<Job<S::LogId, V>>,
    job: Option<Job<S::LogId, V>>,
    next_seq: u64,
    next_gen: u64,
    compact_ptr: [u64; MAX_LEVELS],
    meta_cache: BlockCache,
    data_cache: BlockCache,
    /// Index blocks of every table and bloom blocks of the tables whose
    /// filters lookups use, never evicted (up to
    /// [`LsmConfig::pinned_meta_blocks`]; loaded at open and on first use).
    /// Boxed: the tree is built on the stack before it is boxed
    /// (`empty_boxed`), and the kernel's frame limit is 4 KiB.
    pinned: Box<BlockCache>,
    /// The room of the store's node cache share that its logs cannot use,
    /// lent to the data cache, one block per node
    /// ([`LsmConfig::node_cache_nodes`]).
    nodes_lent: usize,
    user_state: Vec<u8>,
    stats: LsmStats,
    /// A compaction was due but did not fit in the free chunks: only a
    /// commit (which frees the pinned chunks) lets it start.
    waits_for_commit: bool,
    /// Pinned blocks are still to load after an open ([`Self::pin_step`]).
    pins_pending: bool,
    /// Logs finished since the last commit (sealed tables, frozen WALs):
    /// the commit writes the last Merkle nodes of each.
    unflushed_logs: u64,
    /// The batch the caller announced last ([`Self::expect_batch`]).
    batch: u64,
    /// The manifest log of the last commit (or of the running
    /// transaction, once `sync` rewrote it), its blocks and tables.
    manifest: Option<S::LogId>,
    manifest_blocks: u32,
    manifest_tables: u32,
    /// The table set changed since the manifest was written: the next
    /// sync writes a new one.
    manifest_dirty: bool,
    /// The manifest entries of the live tables, in bytes.
    manifest_bytes: usize,
}

fn check_value_size<V: LsmValue>() -> Result<()> {
    ensure!(
        V::SIZE >= 1 && V::SIZE <= format::MAX_VALUE_SIZE,
        InvalidArgument,
        "lsm: value size out of range"
    );
    Ok(())
}

fn level_u8(l: usize) -> u8 {
    l as u8
}

impl<S: LogStore, V: LsmValue> LsmTree<S, V> {
    /// An empty tree on the heap, in a frame of its own. Every check and
    /// fallible allocation comes first; the tree itself is then built
    /// straight into the box, so the frame holds one copy of it, not a
    /// `Result` and a moved copy (the tree is about 2 KiB and the kernel's
    /// frame limit is 4 KiB).
    #[inline(never)]
    fn empty_boxed(store: S, cfg: LsmConfig) -> Result<Box<Self>> {
        cfg.check()?;
        check_value_size::<V>()?;
        let max_records =
            (MAX_DATA_BLOCKS as u64).saturating_mul(format::records_per_block(V::SIZE) as u64);
        ensure!(
            cfg.table_max_records <= max_records,
            InvalidArgument,
            "lsm config: table_max_records too large for one table"
        );
        let mut levels = Vec::new();
        levels.try_reserve_exact(MAX_LEVELS)?;
        levels.resize_with(MAX_LEVELS, Vec::new);
        let wal = WalBuf::new(V::SIZE)?;
        Ok(Box::new(Self {
            wal,
            meta_cache: BlockCache::new(cfg.meta_cache_blocks),
            // With nothing pinned yet, the data cache may use the pinned
            // set's room too (`lend_pinned_room`).
            data_cache: BlockCache::new(if cfg.lend_pinned_room {
                cfg.data_cache_blocks.saturating_add(cfg.pinned_meta_blocks)
            } else {
                cfg.data_cache_blocks
            }),
            pinned: Box::new(BlockCache::new(cfg.pinned_meta_blocks)),
            nodes_lent: 0,
            store,
            cfg,
            in_tx: false,
            poisoned: false,
            mem: MemTable::new(),
            mem_gen: 0,
            mem_wal: None,
            mem_wal_blocks: 0,
            imm: None,
            levels,
            flush: None,
            job: None,
            next_seq: 1,
            next_gen: 1,
            compact_ptr: [0; MAX_LEVELS],
            user_state: Vec::new(),
            stats: LsmStats {
                chunks_free_low: u64::MAX,
                ..LsmStats::default()
            },
            waits_for_commit: false,
            pins_pending: false,
            unflushed_logs: 0,
            batch: 0,
            manifest: None,
            manifest_blocks: 0,
            manifest_tables: 0,
            manifest_dirty: true,
            manifest_bytes: 0,
        }))
    }

    /// Creates an empty tree in a fresh store (which must hold no log of the
    /// tree's tags) and commits it, with an empty user state.
    pub fn format(store: S, cfg: LsmConfig) -> Result<Self> {
        Self::format_boxed(store, cfg).map(|t| *t)
    }

    /// [`LsmTree::format`], the tree on the heap: the tree is large (about
    /// 2 KiB), and building it in place keeps it out of the callers' stack
    /// frames (the kernel's stacks are 16 KiB).
    #[inline(never)]
    pub fn format_boxed(store: S, cfg: LsmConfig) -> Result<Box<Self>> {
        let mut t = Self::empty_boxed(store, cfg)?;
        ensure!(
            t.store.logs_with_tag(TAG_WAL)?.is_empty(),
            InvalidState,
            "lsm: store already holds a tree"
        );
        for l in 0..MAX_LEVELS {
            ensure!(
                t.store.logs_with_tag(table_tag(level_u8(l)))?.is_empty(),
                InvalidState,
                "lsm: store already holds a tree"
            );
        }
        ensure!(
            t.store.logs_with_tag(TAG_MANIFEST)?.is_empty(),
            InvalidState,
            "lsm: store already holds a tree"
        );
        t.mem_gen = t.next_gen;
        t.next_gen += 1;
        t.sync(&[])?;
        t.size_node_cache();
        Ok(t)
    }

    /// Opens the tree of the store's last commit: reads its table manifest
    /// (never a table's footer), replays the WALs into the memtables, and
    /// deletes orphan logs (of a flush or compaction that was in progress)
    /// in the next transaction.
    pub fn open(store: S, cfg: LsmConfig) -> Result<Self> {
        Self::open_boxed(store, cfg).map(|t| *t)
    }

    /// [`LsmTree::open`], the tree on the heap (see [`LsmTree::format_boxed`]).
    #[inline(never)]
    pub fn open_boxed(store: S, cfg: LsmConfig) -> Result<Box<Self>> {
        let mut t = Self::empty_boxed(store, cfg)?;
        let h = t.parse_header()?;
        t.next_seq = h.next_seq;
        t.next_gen = h.next_gen;
        let mut orphans = Vec::new();
        let mut buf = Vec::new();
        buf.try_reserve_exact(BLOCK_SIZE)?;
        buf.resize(BLOCK_SIZE, 0);
        t.load_manifest(&h, &mut orphans)?;
        t.sort_and_check_levels()?;
        t.manifest_dirty = false;
        t.recount_manifest();
        // The pinned index and bloom blocks load on first use (a lookup
        // pins what it reads while there is room), not here: open reads
        // nothing per table. Background steps load them.
        t.pins_pending = true;
        // WALs: at most two generations (immutable + mutable memtable).
        let mut wals: Vec<(u64, S::LogId)> = Vec::new();
        for id in t.store.logs_with_tag(TAG_WAL)? {
            let len = t.store.log_len(id)?;
            if len == 0 {
                orphans.try_reserve(1)?;
                orphans.push(id);
                continue;
            }
            t.store.read(id, 0, &mut buf)?;
            let gen = Header::parse(&buf)?.owner;
            wals.try_reserve(1)?;
            wals.push((gen, id));
        }
        sort_small_by_key(&mut wals, |w| w.0);
        ensure!(wals.len() <= 2, Corrupted, "lsm: more than two WALs");
        ensure!(
            wals.windows(2)
                .all(|w| w.first().map(|a| a.0) != w.get(1).map(|b| b.0)),
            Corrupted,
            "lsm: two WALs of one generation"
        );
        let n = wals.len();
        for (i, (gen, id)) in wals.into_iter().enumerate() {
            let mut map = MemTable::new();
            let blocks = t.replay(id, gen, &mut map, &mut buf)?;
            t.next_gen = t.next_gen.max(gen.saturating_add(1));
            if i + 1 < n {
                t.imm = Some(Imm { map, wal: Some(id) });
            } else {
                t.mem = map;
                t.mem_wal = Some(id);
                t.mem_gen = gen;
                t.mem_wal_blocks = blocks;
            }
        }
        // The counters come from the disk: one step per flush or table can
        // never reach 2^63, and below it every later `+= 1` is safe.
        ensure!(
            t.next_seq < COUNTER_LIMIT && t.next_gen < COUNTER_LIMIT,
            Corrupted,
            "lsm: table or WAL counter out of range"
        );
        if t.mem_wal.is_none() {
            t.mem_gen = t.next_gen;
            t.next_gen += 1;
        }
        if !orphans.is_empty() {
            t.guarded(|t| {
                t.ensure_tx()?;
                for id in orphans {
                    t.store.delete_log(id)?;
                }
                Ok(())
            })?;
        }
        t.size_node_cache();
        Ok(t)
    }

    fn parse_header(&mut self) -> Result<TreeHeader> {
        let (th, rest) = TreeHeader::parse(self.store.user_state())?;
        ensure!(
            usize::from(th.value_size) == V::SIZE,
            InvalidArgument,
            "lsm: tree has another value size"
        );
        let mut us = Vec::new();
        us.try_reserve_exact(rest.len())?;
        us.extend_from_slice(rest);
        self.user_state = us;
        Ok(th)
    }

    /// Reads the manifest the header names and installs its tables, each
    /// matched with its log (by key, among the logs of its level's tag, of
    /// the length the manifest says). Logs of the tree's table and
    /// manifest tags that the manifest does not name are orphans.
    fn load_manifest(&mut self, h: &TreeHeader, orphans: &mut Vec<S::LogId>) -> Result<()> {
        let mut found = None;
        for id in self.store.logs_with_tag(TAG_MANIFEST)? {
            if self.store.log_key(id) == h.manifest_key && found.is_none() {
                found = Some(id);
            } else {
                orphans.try_reserve(1)?;
                orphans.push(id);
            }
        }
        let mid = found.ok_or(Error::new(
            ErrorKind::Corrupted,
            "lsm: the manifest log is missing",
        ))?;
        let nblocks = h.manifest_blocks as usize;
        ensure!(
            (1..=manifest::MAX_BLOCKS).contains(&nblocks)
                && self.store.log_len(mid)? == nblocks as u64,
            Corrupted,
            "lsm: manifest length differs from the tree header"
        );
        let mut mbuf = Vec::new();
        mbuf.try_reserve_exact(nblocks * BLOCK_SIZE)?;
        mbuf.resize(nblocks * BLOCK_SIZE, 0);
        self.store.read(mid, 0, &mut mbuf)?;
        let mut entries: Vec<(u64, TableInfo)> = Vec::new();
        manifest::parse(&mbuf, h.manifest_key, V::SIZE, h.tables, &mut |k, info| {
            entries.try_reserve(1)?;
            entries.push((k, info));
            Ok(())
        })?;
        drop(mbuf);
        // The logs of each level's tag, by key; a slot is taken once.
        let mut logs: Vec<Vec<(u64, S::LogId, bool)>> = Vec::new();
        logs.try_reserve_exact(MAX_LEVELS)?;
        for l in 0..MAX_LEVELS {
            let ids = self.store.logs_with_tag(table_tag(level_u8(l)))?;
            let mut v = Vec::new();
            v.try_reserve_exact(ids.len())?;
            v.extend(
                ids.into_iter()
                    .map(|id| (self.store.log_key(id), id, false)),
            );
            v.sort_unstable_by_key(|e| e.0);
            logs.push(v);
        }
        for (key, info) in entries {
            let l = usize::from(info.level);
            // A table moved down without a rewrite (`move_down`) keeps the
            // tag of the level it was written at: this level or one above.
            let slot = logs
                .get_mut(..=l)
                .and_then(|up| {
                    up.iter_mut().rev().find_map(|v| {
                        let i = v.binary_search_by_key(&key, |e| e.0).ok()?;
                        v.get_mut(i)
                    })
                })
                .ok_or(Error::new(
                    ErrorKind::Corrupted,
                    "lsm: a table of the manifest has no log",
                ))?;
            ensure!(!slot.2, Corrupted, "lsm: two tables of one log");
            slot.2 = true;
            let id = slot.1;
            ensure!(
                self.store.log_len(id)? == info.total_blocks(),
                Corrupted,
                "lsm: table length differs from its log"
            );
            self.next_seq = self.next_seq.max(info.seq.saturating_add(1));
            let lv = self
                .levels
                .get_mut(l)
                .ok_or(Error::new(ErrorKind::Corrupted, "lsm: level"))?;
            lv.try_reserve(1)?;
            lv.push(Table { id, info });
        }
        for (_, id, used) in logs.into_iter().flatten() {
            if !used {
                orphans.try_reserve(1)?;
                orphans.push(id);
            }
        }
        self.manifest = Some(mid);
        self.manifest_blocks = h.manifest_blocks;
        self.manifest_tables = h.tables;
        Ok(())
    }

    /// Writes the manifest of the current tables into a new log (deleting
    /// the previous one) in the running transaction.
    fn write_manifest(&mut self) -> Result<()> {
        let id = self.store.create_log(TAG_MANIFEST)?;
        let key = self.store.log_key(id);
        let store = &self.store;
        let tables = self
            .levels
            .iter()
            .flatten()
            .map(|t| (store.log_key(t.id), &t.info));
        let n = tables.clone().count();
        let blocks = manifest::emit(key, V::SIZE, tables)?;
        self.store.append(id, &blocks)?;
        self.store.seal(id)?;
        if let Some(old) = self.manifest.replace(id) {
            self.store.delete_log(old)?;
        }
        self.manifest_blocks = u32::try_from(blocks.len() / BLOCK_SIZE)
            .map_err(|_| Error::new(ErrorKind::InvalidState, "lsm: manifest size"))?;
        self.manifest_tables =
            u32::try_from(n).map_err(|_| Error::new(ErrorKind::InvalidState, "lsm: tables"))?;
        self.manifest_dirty = false;
        self.unflushed_logs = self.unflushed_logs.saturating_add(1);
        Ok(())
    }

    /// The table set changed: the next sync writes a new manifest.
    fn recount_manifest(&mut self) {
        self.manifest_bytes = self
            .levels
            .iter()
            .flatten()
            .map(|t| manifest::entry_len(&t.info))
            .sum();
    }

    fn tables_changed(&mut self) {
        self.manifest_dirty = true;
        self.recount_manifest();
        self.size_node_cache();
    }

    /// With [`LsmConfig::lend_pinned_room`] and a node cache share
    /// ([`LsmConfig::node_cache_nodes`]), caps the store's node cache at
    /// the nodes its logs have now (`LogStore::node_cache_need`) and lends
    /// the rest of the share to the data cache, one block per node (a
    /// cached node takes about 4.6 KiB, a block 4.1 KiB). Run when the
    /// tables change (after an open, a flush, a compaction or a move): the
    /// logs a lookup reads are the installed tables', whose nodes the
    /// bound counts. The cache that shrinks does so first, so that the
    /// two never hold more than their two shares together.
    fn size_node_cache(&mut self) {
        let share = self.cfg.node_cache_nodes;
        if !self.cfg.lend_pinned_room || share == 0 {
            return;
        }
        let Some(need) = self.store.node_cache_need() else {
            return;
        };
        let cap = usize::try_from(need).unwrap_or(usize::MAX).min(share);
        let lent = share.saturating_sub(cap);
        if lent < self.nodes_lent {
            // The node cache grows: the data cache gives its room back.
            self.nodes_lent = lent;
            self.lend_pinned_room(0);
            self.store.set_node_cache_capacity(cap);
        } else {
            self.store.set_node_cache_capacity(cap);
            self.nodes_lent = lent;
            self.lend_pinned_room(0);
        }
    }

    fn sort_and_check_levels(&mut self) -> Result<()> {
        for (l, lv) in self.levels.iter_mut().enumerate() {
            if l == 0 {
                sort_small_by_key(lv, |t| core::cmp::Reverse(t.info.seq));
            } else {
                sort_small_by_key(lv, |t| t.info.min_key);
                ensure!(
                    lv.windows(2).all(|w| match (w.first(), w.get(1)) {
                        (Some(a), Some(b)) => a.info.max_key < b.info.min_key,
                        _ => true,
                    }),
                    Corrupted,
                    "lsm: overlapping tables in a level"
                );
            }
        }
        let mut seqs: Vec<u64> = Vec::new();
        for lv in &self.levels {
            seqs.try_reserve(lv.len())?;
            seqs.extend(lv.iter().map(|t| t.info.seq));
        }
        seqs.sort_unstable();
        ensure!(
            seqs.windows(2).all(|w| w.first() != w.get(1)),
            Corrupted,
            "lsm: two tables with one sequence number"
        );
        Ok(())
    }

    /// Replays a WAL log into `map`; returns its length in blocks.
    fn replay(
        &mut self,
        id: S::LogId,
        gen: u64,
        map: &mut MemTable<V>,
        buf: &mut [u8],
    ) -> Result<u64> {
        let len = self.store.log_len(id)?;
        for pos in 0..len {
            self.store.read(id, pos, buf)?;
            let g = wal::parse_block::<V>(buf, V::SIZE, &mut |k, v| map.insert(k, v))?;
            ensure!(g == gen, Corrupted, "lsm: WAL block of another generation");
        }
        Ok(len)
    }

    fn header(&self, user_state: &[u8]) -> Result<Vec<u8>> {
        let manifest_key = self
            .manifest
            .map(|m| self.store.log_key(m))
            .ok_or(Error::new(
                ErrorKind::InvalidState,
                "lsm: no manifest to name",
            ))?;
        TreeHeader {
            value_size: u16::try_from(V::SIZE)
                .map_err(|_| Error::new(ErrorKind::InvalidArgument, "lsm: value size"))?,
            manifest_blocks: self.manifest_blocks,
            next_seq: self.next_seq,
            next_gen: self.next_gen,
            manifest_key,
            tables: self.manifest_tables,
        }
        .emit(user_state)
    }

    /// Runs a mutating operation; on error, aborts the store transaction and
    /// poisons the tree.
    fn guarded<T>(&mut self, op: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.check_alive()?;
        match op(self) {
            Ok(t) => Ok(t),
            Err(e) => {
                if self.in_tx {
                    self.store.abort();
                    self.in_tx = false;
                }
                self.poisoned = true;
                self.meta_cache.clear();
                self.data_cache.clear();
                self.pinned.clear();
                self.lend_pinned_room(0);
                Err(e)
            }
        }
    }

    fn check_alive(&self) -> Result<()> {
        ensure!(
            !self.poisoned,
            InvalidState,
            "lsm: an earlier store update failed; reopen the tree"
        );
        Ok(())
    }

    fn ensure_tx(&mut self) -> Result<()> {
        if !self.in_tx {
            self.store.begin()?;
            self.in_tx = true;
        }
        Ok(())
    }

    /// Appends the buffered WAL block (if any) to the mutable memtable's WAL.
    fn append_wal(&mut self) -> Result<()> {
        if self.wal.is_empty() {
            return Ok(());
        }
        self.ensure_tx()?;
        let id = match self.mem_wal {
            Some(id) => id,
            None => {
                let id = self.store.create_log(TAG_WAL)?;
                self.mem_wal = Some(id);
                id
            }
        };
        let blk = self.wal.block(self.mem_gen)?;
        self.store.append(id, blk)?;
        self.mem_wal_blocks += 1;
        self.wal.clear();
        self.stats.wal_blocks += 1;
        Ok(())
    }

    /// The value of `key`, if it has one.
    pub fn get(&mut self, key: u64) -> Result<Option<V>> {
        self.check_alive()?;
        if let Some(v) = self.mem.get(&key) {
            return Ok(v.clone());
        }
        if let Some(v) = self.imm.as_ref().and_then(|i| i.map.get(&key)) {
            return Ok(v.clone());
        }
        // The deepest level skips the bloom filters (see `use_bloom`): a
        // lookup that reaches it reads one data block whether the key is
        // there or not, its index block being pinned. L0 keeps them: its
        // tables overlap.
        let deepest = self.levels.iter().rposition(|lv| !lv.is_empty());
        for (l, lv) in self.levels.iter().enumerate() {
            let cands: &[Table<S::LogId>] = if l == 0 {
                lv
            } else {
                let i = lv.partition_point(|t| t.info.max_key < key);
                lv.get(i..i + 1).unwrap_or_default()
            };
            for t in cands {
                if !t.info.overlaps(key, key) {
                    continue;
                }
                let src = LogSource {
                    store: &self.store,
                    log: t.id,
                };
                let mut f = table_fetch!(self, t, &src, l == 0 || Some(l) != deepest);
                if let Some(r) = t.info.get::<V>(key, &mut f)? {
                    return Ok(r);
                }
            }
        }
        Ok(None)
    }

    /// The values of `keys` (strictly ascending, else `InvalidArgument`)
    /// into `out`, one per key, each as [`Self::get`] gives it, in one pass
    /// over the tree: each table is asked once for all the keys still
    /// unresolved in its range ([`TableInfo::get_sorted`]), so keys that
    /// share a data block share its search. For the runs of LBAs of a read
    /// or a write-buffer flush.
    pub fn get_sorted(&mut self, keys: &[u64], out: &mut Vec<Option<V>>) -> Result<()> {
        self.check_alive()?;
        ensure!(
            strictly_ascending(keys),
            InvalidArgument,
            "lsm: get_sorted wants strictly ascending keys"
        );
        out.clear();
        out.try_reserve_exact(keys.len())?;
        // The keys no memtable answers, as indexes into `keys`.
        let mut open: Vec<usize> = Vec::new();
        open.try_reserve_exact(keys.len())?;
        for (i, k) in keys.iter().enumerate() {
            let v = self
                .mem
                .get(k)
                .or_else(|| self.imm.as_ref().and_then(|m| m.map.get(k)));
            match v {
                Some(v) => out.push(v.clone()),
                None => {
                    out.push(None);
                    open.push(i);
                }
            }
        }
        let mut sub: Vec<u64> = Vec::new();
        sub.try_reserve_exact(open.len())?;
        let mut done: Vec<bool> = crate::fallible::filled_vec(keys.len(), false)?;
        let deepest = self.levels.iter().rposition(|lv| !lv.is_empty());
        for l in 0..self.levels.len() {
            if open.is_empty() {
                break;
            }
            // Not in L0: its tables are few and recent (mostly cached), and
            // a read-ahead before each of them measured no gain.
            if l > 0 {
                self.prefetch(l, keys, &open, Some(l) != deepest)?;
            }
            let Some(lv) = self.levels.get(l) else { break };
            // L0's tables overlap: each is asked for every open key, newest
            // first (as `get` does). Below, each open key has one table.
            let mut rest: &[usize] = &open;
            let mut t_at = 0usize;
            while !rest.is_empty() {
                let (t, n) = if l == 0 {
                    match lv.get(t_at) {
                        Some(t) => (t, rest.len()),
                        None => break,
                    }
                } else {
                    let first = rest
                        .first()
                        .and_then(|&j| keys.get(j))
                        .copied()
                        .unwrap_or(u64::MAX);
                    let i = lv.partition_point(|t| t.info.max_key < first);
                    let Some(t) = lv.get(i) else { break };
                    let n = rest
                        .partition_point(|&j| keys.get(j).is_some_and(|&k| k <= t.info.max_key));
                    (t, n)
                };
                let (these, later) = rest.split_at(n);
                if l == 0 {
                    t_at += 1;
                } else {
                    rest = later;
                }
                if !these
                    .iter()
                    .any(|&j| keys.get(j).is_some_and(|&k| t.info.overlaps(k, k)))
                {
                    continue;
                }
                sub.clear();
                sub.extend(these.iter().filter_map(|&j| keys.get(j).copied()));
                let src = LogSource {
                    store: &self.store,
                    log: t.id,
                };
                let mut f = table_fetch!(self, t, &src, l == 0 || Some(l) != deepest);
                t.info.get_sorted::<V>(&sub, &mut f, &mut |i, v| {
                    let j = *these
                        .get(i)
                        .ok_or(Error::new(ErrorKind::InvalidState, "lsm: get_sorted index"))?;
                    *out.get_mut(j)
                        .ok_or(Error::new(ErrorKind::InvalidState, "lsm: get_sorted index"))? = v;
                    *done
                        .get_mut(j)
                        .ok_or(Error::new(ErrorKind::InvalidState, "lsm: get_sorted index"))? =
                        true;
                    Ok(())
                })?;
                if l == 0 {
                    // Newer tables answer first: drop what this one did.
                    open.retain(|&j| !done.get(j).copied().unwrap_or(true));
                    rest = &open;
                }
            }
            open.retain(|&j| !done.get(j).copied().unwrap_or(true));
            self.data_cache.end_prefetch();
            self.meta_cache.end_prefetch();
            self.pinned.end_prefetch();
        }
        Ok(())
    }

    /// Before the lookups of [`Self::get_sorted`] in level `l` (1 or
    /// below: one table per key), reads the data blocks those lookups
    /// would otherwise read one at a time, each a device request waited
    /// for: the blocks of keys far apart ([`TableInfo::data_blocks_for`])
    /// that the data cache lacks, of all the level's tables, up to half
    /// the cache, in scattered reads of the store of [`PREFETCH_BATCH`]
    /// blocks (each all in flight at once, on a device that can). They go
    /// into the data cache, where the lookups find them. Best effort, like
    /// a read-ahead: a failed allocation of the buffer or a failed batch
    /// read stops it, a block that fails its check is left out, and the
    /// lookups then read those blocks, and fail on them, as they would
    /// have. (The bloom probes and index searches that name the blocks are
    /// the lookups' own, done early: their errors are the lookups'
    /// errors.) `open` indexes the keys (of `keys`, ascending) no newer
    /// level answered.
    fn prefetch(&mut self, l: usize, keys: &[u64], open: &[usize], use_bloom: bool) -> Result<()> {
        let room = self.data_cache.prefetch_room();
        if room < 2 || open.len() < 2 {
            return Ok(());
        }
        // The probes and index searches below are the lookups' own, done
        // early: the statistics count them once, as the lookups'.
        let counted = (
            self.meta_cache.counters(),
            self.pinned.counters(),
            self.stats.bloom_negatives,
        );
        let want = self.data_blocks_to_prefetch(l, keys, open, use_bloom, room);
        self.meta_cache.count_as_prefetch(counted.0);
        self.pinned.count_as_prefetch(counted.1);
        self.stats.bloom_negatives = counted.2;
        let want = want?;
        let Some(lv) = self.levels.get(l) else {
            return Ok(());
        };
        // One block alone is read as well by its lookup.
        if want.len() < 2 {
            return Ok(());
        }
        // In batches of at most `PREFETCH_BATCH` blocks: the buffer is
        // memory beside the caches.
        let n = want.len().min(PREFETCH_BATCH);
        let mut at: Vec<(S::LogId, u64)> = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        if at.try_reserve_exact(n).is_err() || buf.try_reserve_exact(n * BLOCK_SIZE).is_err() {
            return Ok(());
        }
        for part in want.chunks(PREFETCH_BATCH) {
            at.clear();
            at.extend(part.iter().map(|&(id, _, b)| (id, b)));
            buf.resize(part.len() * BLOCK_SIZE, 0);
            if self.store.read_scattered(&at, &mut buf).is_err() {
                return Ok(());
            }
            for (&(_, i, b), blk) in part.iter().zip(buf.chunks_exact(BLOCK_SIZE)) {
                let Some(t) = lv.get(i) else { continue };
                if t.info.check_data(blk).is_ok() {
                    self.data_cache.insert_prefetched(t.info.seq, b, blk)?;
                }
            }
        }
        Ok(())
    }

    /// The data blocks [`Self::prefetch`] reads for level `l`, as (table's
    /// log, table's place in the level, block), at most `room`: those of
    /// keys far apart the data cache lacks.
    fn data_blocks_to_prefetch(
        &mut self,
        l: usize,
        keys: &[u64],
        open: &[usize],
        use_bloom: bool,
        room: usize,
    ) -> Result<Vec<(S::LogId, usize, u64)>> {
        let mut want: Vec<(S::LogId, usize, u64)> = Vec::new();
        let Some(lv) = self.levels.get(l) else {
            return Ok(want);
        };
        let mut sub: Vec<u64> = Vec::new();
        sub.try_reserve_exact(open.len())?;
        let mut blocks: Vec<u64> = Vec::new();
        let mut rest = open;
        'tables: while let Some(&j0) = rest.first() {
            let first = keys.get(j0).copied().unwrap_or(u64::MAX);
            let i = lv.partition_point(|t| t.info.max_key < first);
            let Some(t) = lv.get(i) else { break };
            let n = rest.partition_point(|&j| keys.get(j).is_some_and(|&k| k <= t.info.max_key));
            let (these, later) = rest.split_at(n);
            rest = later;
            sub.clear();
            sub.extend(these.iter().filter_map(|&j| keys.get(j).copied()));
            blocks.clear();
            {
                let src = LogSource {
                    store: &self.store,
                    log: t.id,
                };
                let mut f = table_fetch!(self, t, &src, use_bloom);
                t.info.data_blocks_for(&sub, &mut f, &mut blocks)?;
            }
            for &b in &blocks {
                if self.data_cache.holds(t.info.seq, b) {
                    continue;
                }
                if want.len() >= room {
                    break 'tables;
                }
                want.try_reserve(1)?;
                want.push((t.id, i, b));
            }
        }
        Ok(want)
    }

    /// Every live key of `from..to` with its value, ascending, into `out`
    /// (each as [`Self::get`] gives it; keys without a value or whose
    /// newest record is a tombstone are left out). At most [`MAX_RANGE`]
    /// keys wide, else `InvalidArgument`.
    ///
    /// Each source is scanned once for the range, newest first (memtables,
    /// L0 newest first, then the levels' tables that overlap it), and the
    /// first record of a key wins. No bloom probe and no lookup per key: an
    /// unmapped range costs a data block of each table whose keys span it
    /// (for a discard, where most of a range is usually unmapped).
    pub fn range(&mut self, from: u64, to: u64, out: &mut Vec<(u64, V)>) -> Result<()> {
        self.check_alive()?;
        out.clear();
        let width = to.saturating_sub(from);
        ensure!(
            width <= MAX_RANGE,
            InvalidArgument,
            "lsm: range wider than MAX_RANGE keys"
        );
        if width == 0 {
            return Ok(());
        }
        // The newest record of each key seen so far, by offset from `from`.
        let mut seen: Vec<Option<Option<V>>> = Vec::new();
        seen.try_reserve_exact(width as usize)?;
        seen.resize_with(width as usize, || None);
        let mut first = |k: u64, v: &Option<V>| -> Result<()> {
            let slot = k
                .checked_sub(from)
                .and_then(|o| seen.get_mut(o as usize))
                .ok_or(Error::new(
                    ErrorKind::Corrupted,
                    "lsm: range record out of range",
                ))?;
            if slot.is_none() {
                *slot = Some(v.clone());
            }
            Ok(())
        };
        for m in core::iter::once(&self.mem).chain(self.imm.as_ref().map(|i| &i.map)) {
            let mut after = from.checked_sub(1);
            while let Some((&k, v)) = m.next_after(after) {
                if k >= to {
                    break;
                }
                first(k, v)?;
                after = Some(k);
            }
        }
        for (l, lv) in self.levels.iter().enumerate() {
            // L0's tables overlap (newest first); below, the tables of a
            // level hold disjoint key ranges in order.
            let start = if l == 0 {
                0
            } else {
                lv.partition_point(|t| t.info.max_key < from)
            };
            for t in lv.get(start..).unwrap_or_default() {
                if l > 0 && t.info.min_key >= to {
                    break;
                }
                let src = LogSource {
                    store: &self.store,
                    log: t.id,
                };
                let mut f = table_fetch!(self, t, &src, false);
                t.info
                    .range::<V>(from, to, &mut f, &mut |k, v| first(k, &v))?;
            }
        }
        out.try_reserve_exact(seen.iter().filter(|s| matches!(s, Some(Some(_)))).count())?;
        for (k, s) in (from..to).zip(seen) {
            if let Some(Some(v)) = s {
                out.push((k, v));
            }
        }
        Ok(())
    }

    /// Sets the value of `key` (in the memtable and the WAL buffer).
    pub fn put(&mut self, key: u64, v: V) -> Result<()> {
        self.update(key, Some(v))
    }

    /// Deletes `key` (a tombstone).
    pub fn delete(&mut self, key: u64) -> Result<()> {
        self.update(key, None)
    }

    fn update(&mut self, key: u64, v: Option<V>) -> Result<()> {
        self.check_alive()?;
        // A WAL block or a freeze that would not fit is refused before
        // anything changes (the tree stays usable; a commit makes room).
        let appends = self.wal.will_fill();
        let grows = usize::from(!self.mem.contains_key(&key));
        let freezes = self.mem.len().saturating_add(grows) >= self.cfg.memtable_entries
            || self.mem_wal_blocks.saturating_add(u64::from(appends)) >= self.cfg.wal_max_blocks;
        if freezes || appends {
            if let Some(sp) = self.store.space() {
                // What the update itself writes (a WAL block: at most one
                // new chunk; on a freeze, first the rest of the previous
                // memtable's flush), and what a commit after it writes.
                let mut need = 1u64.saturating_add(self.commit_chunks());
                if freezes {
                    need = need.saturating_add(self.flush_chunks());
                }
                ensure!(
                    need <= sp.free,
                    NoSpace,
                    "lsm: the store has no room for this update until the next commit"
                );
            }
        }
        // The memtable's room first: an insert that cannot fail after the
        // WAL took the update (out of memory here changes nothing).
        self.mem.reserve_one()?;
        self.guarded(|t| {
            t.wal.push(key, v.as_ref())?;
            if t.wal.is_full() {
                t.append_wal()?;
            }
            t.mem.insert(key, v)?;
            if t.mem.len() >= t.cfg.memtable_entries || t.mem_wal_blocks >= t.cfg.wal_max_blocks {
                t.freeze()?;
            }
            Ok(())
        })
    }

    /// Turns the mutable memtable into the immutable one (finishing the
    /// flush of the previous one first).
    fn freeze(&mut self) -> Result<()> {
        while self.imm.is_some() {
            self.flush_step(usize::MAX)?;
        }
        // Write stall: if the caller has not run compaction for a while,
        // L0 (which every lookup searches) must not grow without bound.
        let stall = self.cfg.l0_max_tables.saturating_mul(L0_STALL_FACTOR);
        while self.levels.first().map_or(0, Vec::len) >= stall {
            // A compaction that does not fit now is not started: L0 stays
            // over the limit until a commit makes room.
            if self.job.is_none() && !self.plan_if_fits()? {
                break;
            }
            self.stats.stalls += 1;
            self.compaction_step(usize::MAX)?;
        }
        self.append_wal()?;
        if self.mem_wal.is_some() {
            self.unflushed_logs = self.unflushed_logs.saturating_add(1);
        }
        let map = mem::take(&mut self.mem);
        self.imm = Some(Imm {
            map,
            wal: self.mem_wal.take(),
        });
        self.mem_gen = self.next_gen;
        self.next_gen += 1;
        self.mem_wal_blocks = 0;
        Ok(())
    }

    /// Makes every update so far durable, atomically with `user_state`
    /// (one store commit).
    pub fn sync(&mut self, user_state: &[u8]) -> Result<()> {
        let mut us = Vec::new();
        us.try_reserve_exact(user_state.len())?;
        us.extend_from_slice(user_state);
        self.guarded(|t| {
            t.ensure_tx()?;
            t.append_wal()?;
            if t.manifest_dirty || t.manifest.is_none() {
                t.write_manifest()?;
            }
            let h = t.header(user_state)?;
            // Free space is lowest just before a commit (a transaction only
            // takes chunks; its deleted logs' chunks come back at commit).
            if let Some(sp) = t.store.space() {
                if sp.free < t.stats.chunks_free_low {
                    t.stats.chunks_free_low = sp.free;
                    t.stats.chunks_pinned_at_low = sp.pinned;
                }
                t.stats.chunks_pinned_high = t.stats.chunks_pinned_high.max(sp.pinned);
                t.stats.chunks_total = sp.total;
            }
            t.store.commit(&h)?;
            t.in_tx = false;
            t.waits_for_commit = false;
            t.unflushed_logs = 0;
            t.stats.syncs += 1;
            Ok(())
        })?;
        self.user_state = us;
        Ok(())
    }

    /// The caller's user state as of the last sync (or open).
    pub fn user_state(&self) -> &[u8] {
        &self.user_state
    }

    /// The store underneath.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Gives the store back, dropping everything not synced.
    pub fn into_store(mut self) -> S {
        if self.in_tx {
            self.store.abort();
        }
        self.store
    }

    /// The configuration.
    pub fn config(&self) -> &LsmConfig {
        &self.cfg
    }

    /// Calls `f` for every live entry, in key order.
    pub fn for_each(&mut self, f: &mut dyn FnMut(u64, &V) -> Result<()>) -> Result<()> {
        self.check_alive()?;
        let mut sources = Vec::new();
        sources.try_reserve(3 + self.levels.iter().map(Vec::len).sum::<usize>())?;
        sources.push(Source::Mem {
            which: MemRef::Mutable,
            last: None,
        });
        sources.push(Source::Mem {
            which: MemRef::Imm,
            last: None,
        });
        for (l, lv) in self.levels.iter().enumerate() {
            if l == 0 {
                for t in lv {
                    sources.push(Source::tables(single(t)?)?);
                }
            } else if !lv.is_empty() {
                sources.push(Source::tables(tables_of(lv.iter())?)?);
            }
        }
        let mut m = Merger::<S::LogId, V>::new(sources)?;
        let ctx = Ctx {
            store: &self.store,
            mem: &self.mem,
            imm: self.imm.as_ref().map(|i| &i.map),
        };
        while let Some((k, v)) = m.next(&ctx)? {
            if let Some(v) = v {
                f(k, &v)?;
            }
        }
        Ok(())
    }

    /// Runs one bounded unit of background work: a step of the flush of the
    /// immutable memtable, else a step of a compaction (planning one if
    /// needed), else, after an open, loading some of the pinned index and
    /// bloom blocks ([`LsmConfig::pinned_meta_blocks`]). Returns whether more work remains. The work becomes durable
    /// with the next [`Self::sync`].
    pub fn compact_step(&mut self) -> Result<bool> {
        self.guarded(|t| {
            let budget = t.cfg.step_records;
            if t.imm.is_some() {
                t.flush_step(budget)?;
            } else {
                t.compaction_step(budget)?;
            }
            let more = t.imm.is_some()
                || t.job.is_some()
                || (t.compaction_needed() && !t.waits_for_commit);
            // Idle otherwise: warm the pinned set an open left cold.
            Ok(more || t.pin_step())
        })
    }

    /// Plans the next compaction if one is due and its output fits in the
    /// free chunks (see [`Self::space_for`]); true if a job is planned.
    /// A due compaction that does not fit sets `waits_for_commit`.
    fn plan_if_fits(&mut self) -> Result<bool> {
        if self.job.is_some() {
            return Ok(true);
        }
        // Tables that need no rewrite go down first (each move ends a due
        // compaction or brings the level below it closer to one; tables
        // only go down, so this ends).
        while self.move_down()? {}
        let ptr = self.compact_ptr;
        let Some(job) = self.plan_compaction()? else {
            return Ok(false);
        };
        if let Some(c) = self.gate(self.job_chunks(Some(&job), job.remaining)) {
            if !c.fits_now() {
                self.compact_ptr = ptr;
                self.waits_for_commit = true;
                return Ok(false);
            }
        }
        self.job = Some(job);
        Ok(true)
    }

    /// One step of the current compaction (planning one if none runs and
    /// it fits).
    fn compaction_step(&mut self, budget: usize) -> Result<()> {
        if self.job.is_none() {
            self.plan_if_fits()?;
        }
        if let Some(mut job) = self.job.take() {
            self.stats.compact_steps += 1;
            if self.run_job(&mut job, budget)? {
                self.install_compaction(job)?;
            } else {
                self.job = Some(job);
            }
        }
        Ok(())
    }

    /// Whether [`Self::compact_step`] has work to do (a memtable to flush,
    /// a compaction in progress or due). Cheap: no I/O.
    pub fn needs_compaction(&self) -> bool {
        !self.poisoned && (self.imm.is_some() || self.job.is_some() || self.compaction_needed())
    }

    fn flush_step(&mut self, budget: usize) -> Result<()> {
        if self.flush.is_none() {
            self.flush = Some(self.plan_flush()?);
        }
        let Some(mut job) = self.flush.take() else {
            return Ok(());
        };
        self.stats.compact_steps += 1;
        if !self.run_job(&mut job, budget)? {
            self.flush = Some(job);
            return Ok(());
        }
        // Done: the tables go to L0 (newest first), the WAL goes away.
        self.seal_outputs(&job)?;
        let imm = self.imm.take().ok_or(Error::new(
            ErrorKind::InvalidState,
            "lsm: flush without memtable",
        ))?;
        if let Some(w) = imm.wal {
            self.store.delete_log(w)?;
        }
        let l0 = self
            .levels
            .get_mut(0)
            .ok_or(Error::new(ErrorKind::InvalidState, "lsm: no L0"))?;
        l0.try_reserve(job.outputs.len())?;
        for t in job.outputs {
            l0.insert(0, t);
        }
        sort_small_by_key(l0, |t| core::cmp::Reverse(t.info.seq));
        self.stats.flushes += 1;
        self.tables_changed();
        self.pin_new_tables();
        Ok(())
    }

    fn plan_flush(&self) -> Result<Job<S::LogId, V>> {
        let imm = self
            .imm
            .as_ref()
            .ok_or(Error::new(ErrorKind::InvalidState, "lsm: nothing to flush"))?;
        let lo = imm.map.first_key_value().map_or(0, |(k, _)| *k);
        let hi = imm.map.last_key_value().map_or(0, |(k, _)| *k);
        let mut sources = Vec::new();
        sources.try_reserve(1)?;
        sources.push(Source::Mem {
            which: MemRef::Imm,
            last: None,
        });
        Ok(Job {
            merger: Merger::new(sources)?,
            out_level: 0,
            drop_tombstones: !self.any_table_overlaps(0, lo, hi, &[]),
            inputs: Vec::new(),
            out: None,
            outputs: Vec::new(),
            remaining: imm.map.len() as u64,
            span: hi.saturating_sub(lo).saturating_add(1),
            warm: true,
        })
    }

    /// Whether a table at a level >= `from`, other than `except`, meets
    /// `[lo, hi]`.
    fn any_table_overlaps(&self, from: usize, lo: u64, hi: u64, except: &[(u8, u64)]) -> bool {
        self.levels.iter().enumerate().skip(from).any(|(l, lv)| {
            lv.iter()
                .any(|t| t.info.overlaps(lo, hi) && !except.contains(&(level_u8(l), t.info.seq)))
        })
    }

    fn level_target(&self, l: usize) -> u64 {
        let mut t = self.cfg.l1_max_records;
        for _ in 1..l {
            t = t.saturating_mul(self.cfg.level_ratio);
        }
        t
    }

    fn level_records(&self, l: usize) -> u64 {
        self.levels
            .get(l)
            .map_or(0, |lv| lv.iter().map(|t| t.info.records).sum())
    }

    fn compaction_needed(&self) -> bool {
        self.levels.first().map_or(0, Vec::len) >= self.cfg.l0_max_tables
            || (1..MAX_LEVELS - 1).any(|l| self.level_records(l) > self.level_target(l))
    }

    fn plan_compaction(&mut self) -> Result<Option<Job<S::LogId, V>>> {
        let mut sources = Vec::new();
        let mut inputs = Vec::new();
        let (from, lo, hi);
        let l0 = self.levels.first().map(Vec::as_slice).unwrap_or_default();
        if l0.len() >= self.cfg.l0_max_tables {
            from = 0;
            lo = l0.iter().map(|t| t.info.min_key).min().unwrap_or(0);
            hi = l0.iter().map(|t| t.info.max_key).max().unwrap_or(0);
            sources.try_reserve(l0.len() + 1)?;
            inputs.try_reserve(l0.len())?;
            for t in l0 {
                sources.push(Source::tables(single(t)?)?);
                inputs.push((0u8, t.info.seq));
            }
        } else {
            let Some(l) =
                (1..MAX_LEVELS - 1).find(|&l| self.level_records(l) > self.level_target(l))
            else {
                return Ok(None);
            };
            let lv = self.levels.get(l).map(Vec::as_slice).unwrap_or_default();
            let ptr = self.compact_ptr.get(l).copied().unwrap_or(0);
            let Some(t) = lv
                .iter()
                .find(|t| t.info.min_key > ptr)
                .or_else(|| lv.first())
            else {
                return Ok(None);
            };
            from = l;
            lo = t.info.min_key;
            hi = t.info.max_key;
            if let Some(p) = self.compact_ptr.get_mut(l) {
                *p = hi;
            }
            sources.try_reserve(2)?;
            sources.push(Source::tables(single(t)?)?);
            inputs.try_reserve(1)?;
            inputs.push((level_u8(l), t.info.seq));
        }
        let out_level = from + 1;
        let next_level = self
            .levels
            .get(out_level)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut next: Vec<&Table<S::LogId>> = Vec::new();
        next.try_reserve_exact(
            next_level
                .iter()
                .filter(|t| t.info.overlaps(lo, hi))
                .count(),
        )?;
        next.extend(next_level.iter().filter(|t| t.info.overlaps(lo, hi)));
        // The job's key range grows to the overlapped tables of the next level.
        let lo = next.iter().map(|t| t.info.min_key).fold(lo, u64::min);
        let hi = next.iter().map(|t| t.info.max_key).fold(hi, u64::max);
        inputs.try_reserve(next.len())?;
        for t in &next {
            inputs.push((level_u8(out_level), t.info.seq));
        }
        if !next.is_empty() {
            sources.push(Source::tables(tables_of(next.iter().copied())?)?);
        }
        let remaining = self
            .levels
            .iter()
            .enumerate()
            .flat_map(|(l, lv)| lv.iter().map(move |t| (l, t)))
            .filter(|(l, t)| inputs.contains(&(level_u8(*l), t.info.seq)))
            .map(|(_, t)| t.info.records)
            .sum();
        let warm = inputs
            .iter()
            .any(|(_, seq)| self.data_cache.holds_table(*seq));
        Ok(Some(Job {
            merger: Merger::new(sources)?,
            out_level: level_u8(out_level),
            drop_tombstones: !self.any_table_overlaps(out_level, lo, hi, &inputs),
            inputs,
            out: None,
            outputs: Vec::new(),
            remaining,
            span: hi.saturating_sub(lo).saturating_add(1),
            warm,
        }))
    }

    /// Does the compaction that is due as a move when it would only copy
    /// its inputs: they overlap no table of the level below (nor, from L0,
    /// each other), so the merge would write the same records in the same
    /// order. The tables change level without a block being written; only
    /// the manifest of the next commit records it (a moved table's log
    /// keeps the tag of the level it was written at, and open looks for it
    /// at that level or above: `load_manifest`). Tables under half of
    /// `table_max_records` are merged as before, so a level never holds
    /// many small tables (each takes at least one chunk of the store).
    /// Refused, as a compaction is, when the commit's manifest would not
    /// fit in the free chunks. True if tables moved.
    fn move_down(&mut self) -> Result<bool> {
        let half = (self.cfg.table_max_records / 2).max(1);
        let l0 = self.levels.first().map(Vec::as_slice).unwrap_or_default();
        let from = if l0.len() >= self.cfg.l0_max_tables {
            0
        } else {
            match (1..MAX_LEVELS - 1).find(|&l| self.level_records(l) > self.level_target(l)) {
                Some(l) => l,
                None => return Ok(false),
            }
        };
        let lv = self.levels.get(from).map(Vec::as_slice).unwrap_or_default();
        let below = self
            .levels
            .get(from + 1)
            .map(Vec::as_slice)
            .unwrap_or_default();
        // The inputs of the compaction `plan_compaction` would plan: all of
        // L0, or the table after the level's pointer.
        let picked: &[Table<S::LogId>] = if from == 0 {
            lv
        } else {
            let ptr = self.compact_ptr.get(from).copied().unwrap_or(0);
            let i = lv.iter().position(|t| t.info.min_key > ptr).unwrap_or(0);
            lv.get(i..i + 1).unwrap_or_default()
        };
        if picked.is_empty()
            || picked.iter().any(|t| {
                t.info.records < half
                    || below
                        .iter()
                        .any(|b| b.info.overlaps(t.info.min_key, t.info.max_key))
            })
        {
            return Ok(false);
        }
        // L0 tables may overlap one another (then the merge keeps the
        // newest version of a key: not a move).
        let mut spans: Vec<(u64, u64, u64)> = Vec::new();
        spans.try_reserve_exact(picked.len())?;
        spans.extend(
            picked
                .iter()
                .map(|t| (t.info.min_key, t.info.max_key, t.info.seq)),
        );
        sort_small_by_key(&mut spans, |s| s.0);
        if spans.windows(2).any(|w| match w {
            [a, b] => a.1 >= b.0,
            _ => false,
        }) {
            return Ok(false);
        }
        let manifest = if self.manifest_may_change() {
            0
        } else {
            self.manifest_chunks(0)
        };
        if self.gate(manifest).is_some_and(|c| !c.fits_now()) {
            return Ok(false);
        }
        self.ensure_tx()?;
        let to = from + 1;
        let mut moved = Vec::new();
        moved.try_reserve_exact(spans.len())?;
        self.levels
            .get_mut(to)
            .ok_or(Error::new(ErrorKind::InvalidState, "lsm: level"))?
            .try_reserve(spans.len())?;
        let lv = self
            .levels
            .get_mut(from)
            .ok_or(Error::new(ErrorKind::InvalidState, "lsm: level"))?;
        for (_, _, seq) in &spans {
            let Some(i) = lv.iter().position(|t| t.info.seq == *seq) else {
                bail!(InvalidState, "lsm: moved table vanished");
            };
            let mut t = lv.remove(i);
            t.info.level = level_u8(to);
            moved.push(t);
        }
        if from > 0 {
            if let (Some(p), Some(last)) = (self.compact_ptr.get_mut(from), spans.last()) {
                *p = last.1;
            }
        }
        let n = moved.len() as u64;
        let dst = self
            .levels
            .get_mut(to)
            .ok_or(Error::new(ErrorKind::InvalidState, "lsm: level"))?;
        dst.extend(moved);
        sort_small_by_key(dst, |t| t.info.min_key);
        self.stats.moves = self.stats.moves.saturating_add(n);
        self.tables_changed();
        self.pin_new_tables();
        Ok(true)
    }

    /// Merges up to `budget` records of a job into its outputs; true when the
    /// job has consumed all its input (and its last table is sealed).
    fn run_job(&mut self, job: &mut Job<S::LogId, V>, budget: usize) -> Result<bool> {
        self.ensure_tx()?;
        for _ in 0..budget {
            let rec = {
                let ctx = Ctx {
                    store: &self.store,
                    mem: &self.mem,
                    imm: self.imm.as_ref().map(|i| &i.map),
                };
                job.merger.next(&ctx)?
            };
            let Some((key, val)) = rec else {
                self.finish_output(job)?;
                return Ok(true);
            };
            job.remaining = job.remaining.saturating_sub(1);
            if val.is_none() && job.drop_tombstones {
                continue;
            }
            if job.out.is_none() {
                let expected = job
                    .remaining
                    .saturating_add(1)
                    .min(self.cfg.table_max_records);
                let seq = self.next_seq;
                self.next_seq += 1;
                job.out = Some(Output {
                    builder: TableBuilder::new(
                        V::SIZE,
                        seq,
                        job.out_level,
                        expected,
                        self.cfg.bloom_bits_per_key,
                    )?,
                    log: None,
                    seq,
                    blocks: 0,
                });
            }
            let full = {
                let out = job
                    .out
                    .as_mut()
                    .ok_or(Error::new(ErrorKind::InvalidState, "lsm: no output"))?;
                let mut sink = OutSink {
                    store: &mut self.store,
                    log: &mut out.log,
                    level: job.out_level,
                    seq: out.seq,
                    blocks: &mut out.blocks,
                    cache: job.warm.then_some(&mut self.data_cache),
                };
                out.builder
                    .add(key, val.as_ref(), &mut |blk: &[u8]| sink.append(blk))?;
                out.builder.records() >= self.cfg.table_max_records
            };
            self.stats.records_written += 1;
            if full {
                self.finish_output(job)?;
            }
        }
        Ok(false)
    }

    fn finish_output(&mut self, job: &mut Job<S::LogId, V>) -> Result<()> {
        let Some(out) = job.out.take() else {
            return Ok(());
        };
        let Output {
            builder,
            mut log,
            seq,
            mut blocks,
        } = out;
        let mut sink = OutSink {
            store: &mut self.store,
            log: &mut log,
            level: job.out_level,
            seq,
            blocks: &mut blocks,
            cache: job.warm.then_some(&mut self.data_cache),
        };
        let info = builder.finish(&mut |blk: &[u8]| sink.append(blk))?;
        if let (Some(info), Some(id)) = (info, log) {
            job.outputs.try_reserve(1)?;
            job.outputs.push(Table { id, info });
        }
        Ok(())
    }

    /// Writes the footers of a finished job's outputs and seals them: only
    /// now (in the transaction that also drops the inputs) do they become
    /// tables that `open` loads.
    fn seal_outputs(&mut self, job: &Job<S::LogId, V>) -> Result<()> {
        let mut blk = Vec::new();
        blk.try_reserve_exact(BLOCK_SIZE)?;
        blk.resize(BLOCK_SIZE, 0);
        for t in &job.outputs {
            t.info.emit_footer(&mut blk)?;
            self.store.append(t.id, &blk)?;
            self.store.seal(t.id)?;
            self.unflushed_logs = self.unflushed_logs.saturating_add(1);
        }
        Ok(())
    }

    fn install_compaction(&mut self, job: Job<S::LogId, V>) -> Result<()> {
        self.seal_outputs(&job)?;
        for (l, seq) in &job.inputs {
            let lv = self
                .levels
                .get_mut(usize::from(*l))
                .ok_or(Error::new(ErrorKind::InvalidState, "lsm: level"))?;
            let Some(i) = lv.iter().position(|t| t.info.seq == *seq) else {
                bail!(InvalidState, "lsm: compaction input vanished");
            };
            let t = lv.remove(i);
            self.store.delete_log(t.id)?;
            self.meta_cache.remove_table(*seq);
            self.data_cache.remove_table(*seq);
            self.pinned.remove_table(*seq);
        }
        self.lend_pinned_room(0);
        let lv = self
            .levels
            .get_mut(usize::from(job.out_level))
            .ok_or(Error::new(ErrorKind::InvalidState, "lsm: level"))?;
        lv.try_reserve(job.outputs.len())?;
        lv.extend(job.outputs);
        sort_small_by_key(lv, |t| t.info.min_key);
        self.stats.compactions += 1;
        self.tables_changed();
        self.pin_new_tables();
        Ok(())
    }

    /// Loads the blocks a lookup needs to find its data block into the
    /// pinned set, while it has room: first the index blocks of every
    /// table, then the bloom blocks of every level whose filters lookups
    /// use (all but the deepest; L0 always). Blocks already pinned cost
    /// nothing. At most `limit` blocks are read (and never more than
    /// `pinned_meta_blocks` are held); true when nothing is left to load
    /// (or no room is left), false when `limit` stopped it.
    fn load_pinned(&mut self, limit: usize) -> Result<bool> {
        let mut loaded = 0;
        let deepest = self.levels.iter().rposition(|lv| !lv.is_empty());
        for blooms in [false, true] {
            for (l, lv) in self.levels.iter().enumerate() {
                if blooms && l != 0 && Some(l) == deepest {
                    continue;
                }
                for t in lv {
                    let info = &t.info;
                    let src = LogSource {
                        store: &self.store,
                        log: t.id,
                    };
                    let index_start = u64::from(info.n_data);
                    let bloom_start = index_start + u64::from(info.n_index);
                    let (start, count) = if blooms {
                        (bloom_start, info.n_bloom)
                    } else {
                        (index_start, info.n_index)
                    };
                    for i in 0..count {
                        let pos = start + u64::from(i);
                        if self.pinned.holds(info.seq, pos) {
                            continue;
                        }
                        if loaded >= limit || !self.pinned.holds_or_has_room(info.seq, pos) {
                            return Ok(loaded < limit);
                        }
                        loaded += 1;
                        // The data cache gives the block's room back first.
                        Self::lend_room(
                            &self.cfg,
                            &self.pinned,
                            &mut self.data_cache,
                            self.nodes_lent,
                            1,
                        );
                        let (vs, seq, k) = (info.value_size, info.seq, info.bloom_k);
                        let j = i as usize;
                        let check = |blk: &[u8]| {
                            if blooms {
                                super::bloom::check_block(blk, vs, seq, k)
                            } else {
                                info.check_index(j, blk)
                            }
                        };
                        self.pinned.get_or_load(info.seq, pos, &src, &check)?;
                    }
                }
            }
        }
        Ok(true)
    }

    /// Pins the blocks of tables a flush or compaction just installed (and
    /// the filters of a level that stopped being the deepest). Best effort:
    /// a block that cannot be read now is left out, and the lookup that
    /// needs it reads it (and reports the error) itself.
    fn pin_new_tables(&mut self) {
        let _ = self.load_pinned(usize::MAX);
    }

    /// With [`LsmConfig::lend_pinned_room`], lets the data cache use the
    /// pinned set's room that its blocks do not fill: the data cache's
    /// limit becomes `data_cache_blocks` plus the pinned set's free room.
    /// Run whenever the pinned set changes (a table installed or deleted),
    /// so the two caches together stay within their two sizes.
    fn lend_pinned_room(&mut self, extra: usize) {
        Self::lend_room(
            &self.cfg,
            &self.pinned,
            &mut self.data_cache,
            self.nodes_lent,
            extra,
        );
    }

    /// [`Self::lend_pinned_room`] on the tree's parts, keeping the room of
    /// `extra` more pinned blocks back (about to be loaded); `nodes_lent`
    /// blocks of the node cache's share are lent too
    /// ([`Self::size_node_cache`]).
    fn lend_room(
        cfg: &LsmConfig,
        pinned: &BlockCache,
        data: &mut BlockCache,
        nodes_lent: usize,
        extra: usize,
    ) {
        if !cfg.lend_pinned_room {
            return;
        }
        let spare = cfg
            .pinned_meta_blocks
            .saturating_sub(pinned.blocks().saturating_add(extra));
        let limit = cfg
            .data_cache_blocks
            .saturating_add(nodes_lent)
            .saturating_add(spare);
        if limit != data.limit() && data.set_limit(limit).is_err() {
            // Only a broken cache errs: start it afresh (it can then only
            // shrink its own empty state, which cannot fail).
            data.clear();
            let _ = data.set_limit(limit);
        }
    }

    /// Loads up to [`PIN_STEP_BLOCKS`] pinned blocks after an open (best
    /// effort: a block that cannot be read now is left to the lookup that
    /// needs it, which reports the error); true while more are to load.
    fn pin_step(&mut self) -> bool {
        if self.pins_pending {
            self.pins_pending = matches!(self.load_pinned(PIN_STEP_BLOCKS), Ok(false));
        }
        self.pins_pending
    }

    /// Whether a due compaction waits for a commit to free chunks.
    pub fn waits_for_commit(&self) -> bool {
        self.waits_for_commit
    }

    /// Whether `updates` more updates, the memtable flushes and WAL blocks
    /// they can cause, the work in progress, any compaction the tree may
    /// start meanwhile and one sync fit in the store's free chunks: `need`
    /// is a conservative bound of the chunks all that may take before and
    /// with the next commit (see the module documentation, "Space").
    /// Cheap (no I/O, no allocation) and changes nothing. A store without
    /// a limit answers `need = 0`.
    pub fn space_for(&self, updates: u64) -> SpaceCheck {
        let Some(sp) = self.store.space() else {
            return SpaceCheck::default();
        };
        let mut need = self
            .obligations()
            .saturating_add(self.foreground_chunks(updates));
        if updates > self.reserve_updates() {
            // More updates than the compaction gate keeps room for (see
            // `expect_batch`): count
            // every compaction that may start, each rewriting at most the
            // whole tree, one per level.
            let all = self
                .levels
                .iter()
                .flatten()
                .map(|t| t.info.records)
                .sum::<u64>()
                .saturating_add(self.mem.len() as u64)
                .saturating_add(self.imm.as_ref().map_or(0, |i| i.map.len() as u64))
                .saturating_add(updates);
            need = need.saturating_add(
                self.job_chunks(None, all)
                    .saturating_mul(MAX_LEVELS as u64 - 1),
            );
        }
        SpaceCheck {
            need,
            free: sp.free,
            pinned: sp.pinned,
            commit_wanted: self.waits_for_commit && sp.pinned > 0,
        }
    }

    /// The space check of starting work of `extra` chunks now: the work in
    /// progress, the extra, and the foreground reserve (the updates of
    /// [`Self::reserve_updates`]). `None` for a store without a limit.
    fn gate(&self, extra: u64) -> Option<SpaceCheck> {
        let sp = self.store.space()?;
        Some(SpaceCheck {
            need: self
                .obligations()
                .saturating_add(extra)
                .saturating_add(self.foreground_chunks(self.reserve_updates())),
            free: sp.free,
            pinned: sp.pinned,
            commit_wanted: false,
        })
    }

    /// Updates the compaction gate keeps room for: a whole memtable, or
    /// the batch announced last with [`Self::expect_batch`].
    fn reserve_updates(&self) -> u64 {
        (self.cfg.memtable_entries as u64).max(self.batch)
    }

    /// Announces a batch of `updates` updates (asked for with
    /// [`Self::space_for`]): until the next announcement the tree starts a
    /// compaction only if it leaves room for such a batch, so that
    /// `space_for` need not count the compactions the tree may start
    /// during it. Changes no data; a later, smaller batch lowers it again
    /// (one huge batch does not starve compaction for good).
    pub fn expect_batch(&mut self, updates: u64) {
        self.batch = updates;
    }

    /// Chunks the work in progress may still take: the rest of the flush
    /// of the immutable memtable and of the running compaction.
    fn obligations(&self) -> u64 {
        let flush = self.flush_chunks();
        let job = self
            .job
            .as_ref()
            .map_or(0, |j| self.job_chunks(Some(j), j.remaining));
        flush
            .saturating_add(job)
            .saturating_add(self.commit_chunks())
    }

    /// Chunks a commit now may take: the WAL block it appends with its
    /// nodes, and the nodes of the logs finished since the last commit and
    /// of the outputs of running jobs (a table's log has at most three
    /// levels of nodes).
    fn commit_chunks(&self) -> u64 {
        let open = |j: &Option<Job<S::LogId, V>>| {
            j.as_ref()
                .map_or(0, |j| j.outputs.len() as u64 + u64::from(j.out.is_some()))
        };
        let n = self
            .unflushed_logs
            .saturating_add(open(&self.flush))
            .saturating_add(open(&self.job));
        self.store
            .chunks_bound(1, 1, 1)
            .saturating_add(
                self.store
                    .chunks_bound(n, 0, n.saturating_mul(LOG_NODE_LEVELS)),
            )
            .saturating_add(if self.manifest_may_change() {
                self.manifest_chunks(0)
            } else {
                0
            })
    }

    /// Whether the next commit may write a manifest: the table set changed
    /// since the last one, or a flush or compaction may install tables
    /// before it. (A freeze the foreground causes is counted with it, in
    /// [`Self::foreground_chunks`].)
    fn manifest_may_change(&self) -> bool {
        self.manifest_dirty
            || self.manifest.is_none()
            || self.imm.is_some()
            || self.flush.is_some()
            || self.job.is_some()
    }

    /// Chunks the manifest a commit writes may take: the entries of the
    /// live tables, of every table the running flush and compaction may
    /// still install (their outputs so far, one per `table_max_records`
    /// input records left, one more each) and of `extra` more tables.
    fn manifest_chunks(&self, extra: u64) -> u64 {
        let rpb = format::records_per_block(V::SIZE).max(1) as u64;
        let tmr = self.cfg.table_max_records.max(1);
        let index = tmr
            .div_ceil(rpb)
            .saturating_add(1)
            .div_ceil(super::table::INDEX_ENTRIES as u64);
        let per_table = (manifest::ENTRY_FIXED as u64).saturating_add(index.saturating_mul(8));
        let new = |j: Option<&Job<S::LogId, V>>, input: u64| {
            j.map_or(0, |j| j.outputs.len() as u64)
                .saturating_add(input.div_ceil(tmr))
                .saturating_add(1)
        };
        let flush = match (&self.flush, &self.imm) {
            (Some(j), _) => new(Some(j), j.remaining),
            (None, Some(i)) => new(None, i.map.len() as u64),
            (None, None) => 0,
        };
        let job = self.job.as_ref().map_or(0, |j| new(Some(j), j.remaining));
        let tables = flush.saturating_add(job).saturating_add(extra);
        let bytes = (self.manifest_bytes as u64).saturating_add(tables.saturating_mul(per_table));
        let blocks = usize::try_from(bytes).map_or(u64::MAX, |b| manifest::blocks_for(b) as u64);
        self.store.chunks_bound(1, blocks, 1)
    }

    /// Chunks the rest of the flush of the immutable memtable may take.
    fn flush_chunks(&self) -> u64 {
        match (&self.flush, &self.imm) {
            (Some(j), _) => self.job_chunks(Some(j), j.remaining),
            (None, Some(i)) => self.job_chunks(None, i.map.len() as u64),
            (None, None) => 0,
        }
    }

    /// Chunks the foreground may take for `updates` updates and one sync:
    /// their WAL blocks (with the block a sync appends and the one
    /// buffered now, in a new WAL log per freeze) and the flush of every
    /// memtable they may freeze.
    fn foreground_chunks(&self, updates: u64) -> u64 {
        let rpb = format::records_per_block(V::SIZE).max(1) as u64;
        let e = (self.cfg.memtable_entries as u64).max(1);
        let w = self.cfg.wal_max_blocks.max(1);
        let mut wal = updates.div_ceil(rpb).saturating_add(2);
        let freezes = if (self.mem.len() as u64).saturating_add(updates) < e
            && self.mem_wal_blocks.saturating_add(wal) < w
        {
            0
        } else {
            // Between two freezes: a whole memtable of updates, or a whole
            // WAL (all but one block full).
            let per = e.min((w - 1).saturating_mul(rpb)).max(1);
            1 + updates / per
        };
        wal = wal.saturating_add(freezes);
        let wal = self.store.chunks_bound(freezes + 1, wal, 1);
        // Each freeze finishes a WAL log: the commit writes its nodes (as
        // `commit_chunks` counts for the logs finished so far), so the
        // bound after the freeze stays within the bound before it.
        let finished = self
            .store
            .chunks_bound(freezes, 0, freezes.saturating_mul(LOG_NODE_LEVELS));
        let flush = self.job_chunks(None, e);
        // The flushes of those freezes change the tables: the commit
        // writes a manifest with their outputs.
        // (What the commit's own manifest bound, in `commit_chunks`,
        // already counts is not counted twice.)
        let manifest = if freezes > 0 {
            let tmr = self.cfg.table_max_records.max(1);
            let all =
                self.manifest_chunks(freezes.saturating_mul(e.div_ceil(tmr).saturating_add(1)));
            if self.manifest_may_change() {
                all.saturating_sub(self.manifest_chunks(0))
            } else {
                all
            }
        } else {
            0
        };
        wal.saturating_add(flush.saturating_mul(freezes))
            .saturating_add(manifest)
            .saturating_add(finished)
    }

    /// Chunks a flush or compaction may still take to write `records`
    /// more input records (of `job`, if it runs): its tables (data, index,
    /// bloom and footer blocks, one more table than the records fill, in
    /// case the open one was sized for a whole table), the footers of the
    /// outputs it finished, and the store's overhead with a commit per
    /// step.
    fn job_chunks(&self, job: Option<&Job<S::LogId, V>>, input: u64) -> u64 {
        // A job writes at most one record per key of its range.
        let records = job.map_or(input, |j| input.min(j.span));
        let rpb = format::records_per_block(V::SIZE).max(1) as u64;
        let tmr = self.cfg.table_max_records.max(1);
        let mut tables = records.div_ceil(tmr).saturating_add(1);
        let data = records.div_ceil(rpb).saturating_add(tables);
        let index = data
            .div_ceil(super::table::INDEX_ENTRIES as u64)
            .saturating_add(tables);
        // Bloom filters are sized for the input records still to come.
        let bloom = u64::from(super::bloom::blocks_for(
            input.saturating_add(1).min(tmr),
            self.cfg.bloom_bits_per_key,
        ))
        .saturating_mul(tables);
        let mut blocks = data
            .saturating_add(index)
            .saturating_add(bloom)
            .saturating_add(tables);
        let mut flushes = input
            .div_ceil(self.cfg.step_records.max(1) as u64)
            .saturating_add(1);
        if let Some(j) = job {
            if let Some(o) = &j.out {
                blocks = blocks.saturating_add(o.builder.bloom_blocks());
            }
            // Finished outputs: a footer each, and their last nodes at
            // the commit.
            let done = j.outputs.len() as u64;
            blocks = blocks.saturating_add(done);
            tables = tables.saturating_add(done);
            flushes = flushes.saturating_add(done.saturating_mul(LOG_NODE_LEVELS));
        }
        // Every output's last nodes at the commit after it is sealed.
        flushes = flushes.saturating_add(tables.saturating_mul(LOG_NODE_LEVELS));
        self.store.chunks_bound(tables, blocks, flushes)
    }

    /// Counters and sizes.
    pub fn stats(&self) -> LsmStats {
        let mut s = self.stats.clone();
        s.memtable_entries = self.mem.len();
        s.imm_entries = self.imm.as_ref().map_or(0, |i| i.map.len());
        for (l, lv) in self.levels.iter().enumerate() {
            if let Some(n) = s.tables.get_mut(l) {
                *n = lv.len() as u32;
            }
            if let Some(r) = s.records.get_mut(l) {
                *r = lv.iter().map(|t| t.info.records).sum();
            }
        }
        let (h1, m1) = self.meta_cache.counters();
        let (h2, m2) = self.data_cache.counters();
        let (h3, m3) = self.pinned.counters();
        s.cache_hits = h1 + h2 + h3;
        s.cache_misses = m1 + m2 + m3;
        s.data_cache_hits = h2;
        s.data_cache_misses = m2;
        s.pinned_blocks = self.pinned.blocks() as u64;
        s.data_blocks_cached = self.data_cache.blocks() as u64;
        s.data_cache_limit = self.data_cache.limit() as u64;
        s.node_blocks_lent = self.nodes_lent as u64;
        s
    }
}

/// Where a job's output table is written: its log (created on the first
/// block), and for a warm job ([`Job::warm`]) the data cache too.
struct OutSink<'a, S: LogStore> {
    store: &'a mut S,
    log: &'a mut Option<S::LogId>,
    level: u8,
    seq: u64,
    /// Blocks appended to the log so far (the next block's position).
    blocks: &'a mut u64,
    cache: Option<&'a mut BlockCache>,
}

impl<S: LogStore> OutSink<'_, S> {
    /// Appends `blk` to the table's log. A data block of a warm job also
    /// goes into the data cache, as the block a lookup would read back
    /// (the table's data blocks come first, so its position is the count
    /// of blocks before it); best effort: a cache entry that cannot be
    /// allocated is skipped, the table is written all the same.
    fn append(&mut self, blk: &[u8]) -> Result<()> {
        let id = match *self.log {
            Some(id) => id,
            None => {
                let id = self.store.create_log(table_tag(self.level))?;
                *self.log = Some(id);
                id
            }
        };
        self.store.append(id, blk)?;
        let pos = *self.blocks;
        *self.blocks = pos.saturating_add(1);
        if let Some(c) = self.cache.as_deref_mut() {
            if Header::parse(blk).is_ok_and(|h| h.kind == BlockKind::Data) {
                let _ = c.insert(self.seq, pos, blk);
            }
        }
        Ok(())
    }
}

/// Sorts `v` by `key` in place: an insertion sort (stable), with no scratch
/// on the stack. The library's sorts keep up to about 4 KiB of scratch in
/// their stack frame, too much under the kernel's 16 KiB stacks; the lists
/// sorted here (the tables of a level, the WALs) are short.
/// Whether `keys` ascend strictly (no key twice).
pub fn strictly_ascending(keys: &[u64]) -> bool {
    keys.iter().zip(keys.iter().skip(1)).all(|(a, b)| a < b)
}

fn sort_small_by_key<T, K: Ord>(v: &mut [T], key: impl Fn(&T) -> K) {
    for i in 1..v.len() {
        let mut j = i;
        while j > 0 {
            let (a, b) = v.split_at_mut(j);
            match (a.last_mut(), b.first_mut()) {
                (Some(x), Some(y)) if key(x) > key(y) => core::mem::swap(x, y),
                _ => break,
            }
            j -= 1;
        }
    }
}

fn single<Id: Copy>(t: &Table<Id>) -> Result<Vec<(Id, TableInfo)>> {
    tables_of(core::iter::once(t))
}

fn tables_of<'a, Id: Copy + 'a>(
    ts: impl Iterator<Item = &'a Table<Id>>,
) -> Result<Vec<(Id, TableInfo)>> {
    let mut v = Vec::new();
    for t in ts {
        v.try_reserve(1)?;
        v.push((t.id, t.info.try_clone()?));
    }
    Ok(v)
}
