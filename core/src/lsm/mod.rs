//! The transactional LSM-tree: the index of the disk, keyed by LBA (`u64`).
//!
//! [`TxLsmTree`] maps `u64` keys to fixed-size values ([`LsmValue`]) on top
//! of the transactional log store ([`crate::log::TxLogStore`]):
//!
//! ```text
//!   put/delete --> memtable (BTreeMap) + WAL block buffer --(full block)--> WAL log
//!                      | full: freeze
//!                  immutable memtable --(compact_step: flush)--> L0 table
//!   L0 tables (overlapping, newest first) --(compact_step)--> L1 .. L6
//!                                        (each level sorted, non-overlapping)
//! ```
//!
//! - **Transactions.** Every change to the store (WAL blocks, table blocks,
//!   sealing, deleting inputs of a flush or compaction) goes into one open
//!   store transaction; [`TxLsmTree::sync`] commits it together with the
//!   caller's `user_state` (one `TxLogStore::commit`). After a crash, `open`
//!   sees exactly the last commit: its tables (listed by the manifest of
//!   that commit), and the WALs of its memtables, which it replays. Table
//!   logs the manifest does not name (a flush or compaction in progress at
//!   a sync) are orphans and are deleted at open.
//! - **Lookups** ([`TxLsmTree::get`]): memtable, immutable memtable, the L0
//!   tables newest first, then one table per deeper level; in each table the
//!   bloom filter block (skipped in the deepest level), the index block,
//!   one data block. Index and bloom blocks are pinned in memory
//!   ([`LsmConfig::pinned_meta_blocks`], loaded on first use and when a
//!   flush or compaction installs a table, never at open), so once loaded
//!   and while they fit a lookup reads at most one block, its data block, through a bounded
//!   LRU cache. The data blocks of the tables a flush writes, and those of
//!   a compaction some of whose inputs had data blocks cached, go into that
//!   cache as they are written (the disk's overwrites look up the keys just
//!   flushed or compacted; reading them back would cost a device read each).
//! - **Compaction** runs in bounded steps ([`TxLsmTree::compact_step`]): each
//!   step merges at most [`LsmConfig::step_records`] records. A flush of the
//!   immutable memtable goes first; then leveled compaction (all of L0 into
//!   L1 when L0 has [`LsmConfig::l0_max_tables`] tables; one table of Li into
//!   Li+1 when Li holds more than its target). A compaction that would only
//!   copy its inputs (they overlap nothing in the level below, nor, from L0,
//!   each other; each holds at least half of `table_max_records`) is a move
//!   instead: the tables change level in the manifest and no block is
//!   written, so keys written in order are not rewritten at every level
//!   (the disk's memtables also hold its segment metadata, above every LBA,
//!   so there its L0 tables overlap and the moves start at L1). Tombstones are
//!   dropped when no older table below can hold the key. If the mutable memtable fills while
//!   the immutable one is still being flushed, `put` finishes that flush
//!   first, and when L0 holds `2 * l0_max_tables` tables it compacts
//!   before going on (back-pressure: a caller that never runs
//!   `compact_step` gets slower updates, never unbounded L0 or memory).
//! - **Errors.** A failed read returns the error and changes nothing. A
//!   failed store write, seal, delete or commit aborts the store transaction
//!   and poisons the tree: every later call fails with `InvalidState` until it
//!   is reopened (which recovers the last commit). Nothing panics.
//!
//! # Space
//!
//! A store with a chunk limit ([`LogStore::space`]) is counted in chunks:
//! the running transaction only takes chunks, and the logs it deletes (a
//! flush's WAL, a compaction's inputs) stay *pinned* until it commits, as
//! the last commit still names them. [`TxLsmTree::space_for`]`(u)` bounds
//! what the tree may take before and with the next commit, from the
//! store's own per-log bound ([`LogStore::chunks_bound`]: data blocks,
//! Merkle nodes, nodes rewritten per commit, a partly used chunk per log):
//!
//! - the manifest the next commit rewrites (every live table and every
//!   table the running jobs may still install, a block of slack);
//! - the rest of the running flush and compaction: tables for at most
//!   `min(input records left, keys in the job's range)` records, one more
//!   table than they fill, bloom filters sized for the input, a commit per
//!   step;
//! - the foreground: the WAL blocks of `u` updates plus the one a sync
//!   appends and the one buffered, and a whole memtable's flush for every
//!   freeze they can cause (`1 + u / min(E, (W - 1) * records per block)`
//!   when the memtable or WAL may fill, else none);
//! - one commit: the WAL block it appends and the last nodes of every log
//!   finished since the last commit and of the running outputs;
//! - compactions the tree may start meanwhile: none while `u` is at most
//!   a memtable or the batch announced with [`TxLsmTree::expect_batch`],
//!   because the tree starts a compaction (in `compact_step` or in the
//!   write stall) only if its bound, the work in progress and the
//!   foreground of such a batch fit in the chunks free now; for a larger
//!   `u`, one rewrite of the whole tree per level.
//!
//! `need <= free` means the updates fit now; `need <= free + pinned` that
//! they fit after a commit. A due compaction that does not fit waits for a
//! commit ([`TxLsmTree::waits_for_commit`]): `space_for` then says that
//! the updates fit only after a commit (while chunks are pinned), and the
//! write stall lets L0 grow rather than start it. An update whose own WAL block or freeze does
//! not fit (with a commit after it) fails with `NoSpace` before it changes
//! anything, and the tree stays usable.
//!
//! # Memory bound
//!
//! With `E = memtable_entries`, `C = meta_cache_blocks + data_cache_blocks`,
//! `R = table_max_records`, `b = bloom_bits_per_key`, `L0 = l0_max_tables`:
//!
//! - memtables: at most `2 * E` entries (mutable + immutable), each
//!   `size_of::<(u64, Option<V>)>()` plus B-tree node overhead (about
//!   `16 + size_of::<V>() + 8` bytes amortised; ~100 bytes for a 56-byte
//!   value, so ~6.4 MiB for E = 32 Ki);
//! - block caches: at most `C` blocks of 4 KiB (plus ~64 bytes each of map
//!   entries), and at most `pinned_meta_blocks` pinned index and bloom
//!   blocks;
//! - while a commit writes the manifest (and while open reads it): the
//!   manifest, 88 bytes per table (the same order as the descriptors);
//! - one WAL block buffer (4 KiB); replay at open reads one block at a
//!   time (each memtable's WAL has at most `wal_max_blocks` blocks, and
//!   replay fills the same two memtables);
//! - one table builder at a time: one data block, 8 bytes per data block of
//!   index, and `ceil(R * b / 32576)` bloom blocks of 4 KiB;
//! - merge cursors: one 4 KiB block per merged source (at most L0 + 1 for
//!   a compaction, L0 + levels + 2 for `for_each`);
//! - per live table, its descriptor: ~120 bytes + 8 bytes per 509 data
//!   blocks (L0 holds fewer than `2 * L0` tables plus one flush's output).
//!   The only part that grows with the index size: ~120 bytes per `R` keys,
//!   i.e. ~0.002 bytes per mapped 4 KiB block at R = 64 Ki.
//!
//! # On disk
//!
//! Table, WAL and manifest block layouts are in `format`, `table`, `wal`
//! and `manifest` (and in `docs/format.md`). Logs of the store are found by
//! tag: tables of level `l` have tag [`table_tag`]`(l)`, WALs [`TAG_WAL`],
//! the table manifest [`TAG_MANIFEST`]; other users of the same store must
//! not use tags in `TAG_BASE ..= TAG_BASE | 0xFF`. The tree's own header
//! (48 bytes: magic `b"MLSMTREE"`, version, value size, next table
//! sequence number, next WAL generation, and the manifest's log key,
//! blocks and tables) is the first part of the store's `user_state`; the
//! caller's user state follows it.
//!
//! **Open** reads the header, the manifest (every live table's footer
//! fields, about 46 tables a block; rewritten in the transaction of each
//! commit that changed the table set, so it is atomic with it) and the
//! WALs: never a table block. Logs of the table tags the manifest does not
//! name are orphans of a flush or compaction in progress at the last
//! commit, deleted with the next one.
//!
//! # Nonces
//!
//! This layer does no encryption of its own: every block goes through the
//! store, whose logs encrypt each block under a fresh random key.

mod bloom;
mod cache;
mod format;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz_hooks;
mod header;
mod manifest;
mod memtable;
mod merge;
mod store;
mod store_impl;
mod table;
mod tree;
mod wal;

#[cfg(test)]
mod mem_store;
#[cfg(test)]
mod tree_tests;

pub use manifest::TAG_MANIFEST;
pub use store::{LogStore, StoreSpace};
pub use table::BlockSource;
pub use tree::{strictly_ascending, LsmTree, SpaceCheck, L0_STALL_FACTOR, MAX_RANGE};

/// The tree on the disk's transactional log store.
pub type TxLsmTree<D, V> = LsmTree<crate::log::TxLogStore<D>, V>;

use crate::Result;

/// A value stored in the tree: fixed-size, encoded into exactly `SIZE`
/// bytes.
pub trait LsmValue: Clone {
    /// The encoded size (at most [`MAX_VALUE_SIZE`]).
    const SIZE: usize;
    /// Encodes into `out` (exactly `SIZE` bytes, zeroed).
    fn emit(&self, out: &mut [u8]);
    /// Decodes `SIZE` bytes; an error for malformed bytes.
    fn parse(b: &[u8]) -> Result<Self>;
}

/// The largest [`LsmValue::SIZE`] the tree accepts.
pub const MAX_VALUE_SIZE: usize = format::MAX_VALUE_SIZE;

/// The top bits shared by every tag of the tree's logs (`"LSM"` in the top
/// three bytes).
pub const TAG_BASE: u64 = 0x4C53_4D00_0000_0000;
/// The tag of WAL logs.
pub const TAG_WAL: u64 = TAG_BASE | 0xFF;
/// Levels of the tree (L0 ..= L6).
pub const MAX_LEVELS: usize = 7;

/// The tag of the table logs of `level`.
pub const fn table_tag(level: u8) -> u64 {
    TAG_BASE | level as u64
}

/// Tuning of the tree. The defaults suit a disk index of a few GiB to TiB.
/// None of it is stored on disk: it may change between opens.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LsmConfig {
    /// Distinct keys in the mutable memtable before it is frozen (and the
    /// same again for the immutable one).
    pub memtable_entries: usize,
    /// WAL blocks of the mutable memtable before it is frozen. A sync
    /// appends a partly filled block, so frequent syncs fill the WAL faster
    /// than the memtable; this bounds the WAL and the replay at open.
    pub wal_max_blocks: u64,
    /// Cached index and bloom blocks (4 KiB each) beyond the pinned ones.
    pub meta_cache_blocks: usize,
    /// Index and bloom blocks pinned in memory (4 KiB each): the index
    /// blocks of every table and the bloom blocks of the filters lookups
    /// use (every level but the deepest), loaded on first use and when a
    /// table is installed (not at open, which stays constant-time), never
    /// evicted. While they fit, a lookup reads at most one
    /// block from the device: the data block of its key.
    pub pinned_meta_blocks: usize,
    /// Cached data blocks (4 KiB each).
    pub data_cache_blocks: usize,
    /// Whether the data cache may also use the pinned set's room while
    /// the pinned blocks do not fill it (`LsmTree::lend_pinned_room`):
    /// the two together never hold more than `pinned_meta_blocks +
    /// data_cache_blocks` blocks (between two lookups; one lookup that
    /// pins blocks gives the data cache's room back block by block). A
    /// disk with a cache budget turns it on.
    pub lend_pinned_room: bool,
    /// The store's node cache share, in nodes (0: the tree leaves the
    /// store's node cache alone). With [`Self::lend_pinned_room`], the
    /// tree caps the store's node cache at the nodes its logs have (a
    /// disk of a few GiB has a few hundred) and lends the rest of the
    /// share to the data cache, one block per node (`LsmTree::
    /// size_node_cache`); the store must have been given this share.
    pub node_cache_nodes: usize,
    /// Data blocks of a table read in one request on a data-cache miss
    /// while the cache has room (it is filling, as after an open): a cold
    /// cache warms that many leaves per device request; a sequential scan
    /// reads at least 32 (`SEQ_AHEAD`). 1 reads only the blocks a
    /// lookup needs (no read-ahead at all); at most 64.
    pub read_ahead_blocks: u64,
    /// Bloom filter bits per key (0: no filter).
    pub bloom_bits_per_key: u32,
    /// L0 tables that trigger a compaction into L1.
    pub l0_max_tables: usize,
    /// The record target of L1; each deeper level is `level_ratio` times
    /// larger.
    pub l1_max_records: u64,
    /// Size ratio between levels.
    pub level_ratio: u64,
    /// Records per table written by compaction.
    pub table_max_records: u64,
    /// Records merged per `compact_step`.
    pub step_records: usize,
}

impl Default for LsmConfig {
    fn default() -> Self {
        Self {
            memtable_entries: 32 * 1024,
            wal_max_blocks: 2048,
            meta_cache_blocks: 1024,
            data_cache_blocks: 512,
            read_ahead_blocks: 8,
            pinned_meta_blocks: 4096,
            lend_pinned_room: false,
            node_cache_nodes: 0,
            bloom_bits_per_key: 10,
            l0_max_tables: 4,
            l1_max_records: 256 * 1024,
            level_ratio: 10,
            table_max_records: 64 * 1024,
            step_records: 4096,
        }
    }
}

impl LsmConfig {
    /// A configuration with tiny limits, so that tests flush and compact all
    /// the time.
    pub fn tiny() -> Self {
        Self {
            memtable_entries: 8,
            wal_max_blocks: 3,
            meta_cache_blocks: 4,
            data_cache_blocks: 2,
            read_ahead_blocks: 8,
            pinned_meta_blocks: 4,
            lend_pinned_room: false,
            node_cache_nodes: 0,
            bloom_bits_per_key: 10,
            l0_max_tables: 2,
            l1_max_records: 16,
            level_ratio: 2,
            table_max_records: 12,
            step_records: 5,
        }
    }

    /// Checks the limits.
    pub fn check(&self) -> Result<()> {
        crate::ensure!(
            self.memtable_entries >= 1 && self.memtable_entries <= 1 << 24,
            InvalidArgument,
            "lsm config: memtable_entries out of range"
        );
        crate::ensure!(
            self.wal_max_blocks >= 1,
            InvalidArgument,
            "lsm config: wal_max_blocks must be positive"
        );
        crate::ensure!(
            (1..=64).contains(&self.read_ahead_blocks),
            InvalidArgument,
            "lsm config: read_ahead_blocks must be 1..=64"
        );
        crate::ensure!(
            self.l0_max_tables >= 1 && self.l0_max_tables <= 64,
            InvalidArgument,
            "lsm config: l0_max_tables out of range"
        );
        crate::ensure!(
            self.level_ratio >= 2 && self.l1_max_records >= 1,
            InvalidArgument,
            "lsm config: level sizes"
        );
        crate::ensure!(
            self.table_max_records >= 1 && self.table_max_records <= 1 << 24,
            InvalidArgument,
            "lsm config: table_max_records out of range"
        );
        crate::ensure!(
            self.bloom_bits_per_key <= 64,
            InvalidArgument,
            "lsm config: bloom_bits_per_key out of range"
        );
        crate::ensure!(
            self.step_records >= 1,
            InvalidArgument,
            "lsm config: step_records must be positive"
        );
        Ok(())
    }
}

/// Counters and sizes of a tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LsmStats {
    /// Entries of the mutable memtable.
    pub memtable_entries: usize,
    /// Entries of the immutable memtable (being flushed).
    pub imm_entries: usize,
    /// Tables per level.
    pub tables: [u32; MAX_LEVELS],
    /// Records per level.
    pub records: [u64; MAX_LEVELS],
    /// Memtables flushed into L0 tables.
    pub flushes: u64,
    /// Compactions finished.
    pub compactions: u64,
    /// Tables moved a level down without being rewritten (a due
    /// compaction whose inputs overlap nothing below).
    pub moves: u64,
    /// Compaction steps run.
    pub compact_steps: u64,
    /// Compactions run inside an update because L0 had too many tables
    /// (the caller did not call `compact_step` often enough).
    pub stalls: u64,
    /// Records written into tables (flushes and compactions).
    pub records_written: u64,
    /// WAL blocks appended.
    pub wal_blocks: u64,
    /// Syncs (store commits).
    pub syncs: u64,
    /// Table lookups answered "absent" by a bloom filter.
    pub bloom_negatives: u64,
    /// Block cache hits (pinned, index, bloom and data caches).
    pub cache_hits: u64,
    /// Block cache misses (each one block read from the store).
    pub cache_misses: u64,
    /// Of those, data block cache hits.
    pub data_cache_hits: u64,
    /// Data block cache misses.
    pub data_cache_misses: u64,
    /// Index and bloom blocks pinned in memory now.
    pub pinned_blocks: u64,
    /// Data blocks cached now, and the most the data cache may hold now
    /// (more than `data_cache_blocks` while it uses the pinned set's room:
    /// [`LsmConfig::lend_pinned_room`]).
    pub data_blocks_cached: u64,
    /// See [`Self::data_blocks_cached`].
    pub data_cache_limit: u64,
    /// Of that limit, the blocks the store's node cache lends (the part
    /// of its share its logs cannot use: [`LsmConfig::node_cache_nodes`]).
    pub node_blocks_lent: u64,
    /// Chunks of the store (0 for a store without a limit).
    pub chunks_total: u64,
    /// The fewest free chunks seen just before a commit (the worst point
    /// of each transaction); `u64::MAX` until one was seen.
    pub chunks_free_low: u64,
    /// Pinned chunks (freed by that commit) at that point.
    pub chunks_pinned_at_low: u64,
    /// The most pinned chunks seen just before a commit.
    pub chunks_pinned_high: u64,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A value of 8 bytes for tests.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct TestVal(pub u64);

    impl LsmValue for TestVal {
        const SIZE: usize = 8;
        fn emit(&self, out: &mut [u8]) {
            out.copy_from_slice(&self.0.to_le_bytes());
        }
        fn parse(b: &[u8]) -> Result<Self> {
            let a: [u8; 8] = b
                .try_into()
                .map_err(|_| crate::Error::new(crate::ErrorKind::Corrupted, "len"))?;
            Ok(Self(u64::from_le_bytes(a)))
        }
    }

    #[test]
    fn config_checks() {
        LsmConfig::default().check().unwrap();
        LsmConfig::tiny().check().unwrap();
        let mut c = LsmConfig::tiny();
        c.memtable_entries = 0;
        assert!(c.check().is_err());
        assert_eq!(table_tag(3), TAG_BASE | 3);
    }
}
