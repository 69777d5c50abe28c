//! MlsDisk: the secure block device on top of the engine's layers.
//!
//! # Data path
//!
//! - `write` puts blocks into a write buffer (newest version per LBA). A full
//!   buffer, or `sync`, seals every buffered block with a **fresh random
//!   AES-GCM key** (the IV is then all zero: each key encrypts exactly one
//!   plaintext, once, so no (key, nonce) pair can repeat, across crashes
//!   and replays included; the AAD binds the disk UUID and the LBA, so a
//!   block moved to another LBA fails too), appends them to the data log as
//!   long sequential runs and records `LBA -> (hba, key, MAC)` in the index.
//! - `read` looks in the write buffer, then the index; a mapped block costs
//!   one device read (contiguous blocks are read together) and one
//!   authenticated decrypt; an unmapped or discarded block reads as zeros
//!   and is counted in [`DiskStats::unmapped_blocks_read`].
//! - The data log is a ring of segments. The segment cleaner picks the
//!   sealed segment with the fewest valid blocks, moves its valid blocks
//!   (ciphertext as is, so no re-encryption) to the head and points the
//!   index at the new place. A segment emptied by cleaning or overwrites is
//!   *pending* until the next sync: the last synced index may still point
//!   into it, and reusing it earlier would break recovery.
//! - The over-provisioning reserve (see [`layout`]) guarantees a victim with
//!   invalid blocks whenever free space runs low, so cleaning always makes
//!   progress; a write never blocks forever. When only pending space is
//!   left, the disk syncs on its own (counted in
//!   [`DiskStats::forced_syncs`]; [`DiskConfig::auto_sync`] = false turns
//!   this into an [`ErrorKind::NoSpace`] error asking the caller to sync).
//!
//! # Errors
//!
//! A request either is refused before it changes anything, or runs its
//! changes as steps that complete or stop the disk:
//!
//! - Refusals leave the disk usable: `InvalidArgument` (bad range or
//!   buffer), `NoSpace` from the checks made before a step starts (data
//!   space for a whole write-buffer flush, index room for its updates and
//!   the next sync, see [`DiskIndex::room_for`]), and `OutOfMemory` from
//!   the work between steps (planning a flush, buffering a block). With
//!   `auto_sync` off, `NoSpace` asks the caller to sync; `OutOfMemory` can
//!   simply be retried. A multi-block write or discard
//!   refused this way may have taken a prefix of itself (whole blocks in
//!   LBA order; discards in batches of [`DISCARD_BATCH`]); each such block
//!   reads as its old or new content and the next sync makes it durable.
//! - Steps (a flush's writes and index updates, a cleaner move, a commit,
//!   an unmap batch, index background work): any error inside one, of any
//!   kind, stops the disk ([`MlsDisk::failure`]); every later request
//!   fails, and reopening recovers the last sync (or the one in flight).
//!   A failed index (the tree marks itself failed) therefore always means
//!   a failed disk.
//! - The write buffer's plaintext is never modified: a flush seals into a
//!   separate buffer, and the buffer is emptied only after every index
//!   update of the flush succeeded.
//! - Device read errors and failed authentication of user data fail the
//!   read only (`Io` stops the disk, `Integrity` does not: the block is
//!   reported, the rest of the disk still reads). A read that runs out of
//!   memory fails alone too: it changes nothing but the index caches,
//!   which stay consistent.
//!
//! # Sync
//!
//! 1. flush the write buffer to the data log, flush the device (data
//!    durable before anything refers to it);
//! 2. commit the index with the user state (UUID, sync counter + 1, mapped
//!    count, a fresh nonce, the digest of the previous commit's state) in
//!    one log-store transaction;
//! 3. pending segments become free; the superblock gets the new store root;
//! 4. the rollback anchor is advanced to the new counter and the commit's
//!    digest (see [`anchor`] for the rule `open` applies).
//!
//! After a crash the index reopens to the last commit; validity and the
//! reverse map are rebuilt from it, so blocks written after that commit are
//! simply free space.
//!
//! # Memory
//!
//! The write buffer (`write_buffer_blocks` x 4 KiB, default 1 MiB), the
//! metadata write-combining buffer (`meta_write_buffer_blocks` x 4 KiB,
//! default 4 MiB), two segments of buffer for the cleaner (the victim's
//! read and the live blocks gathered for their write), and the segment
//! table: 11 bytes per segment (usage count, state, age), two segment
//! summaries and at most 2 MiB of the cleaner's dead-block hint
//! (`dead_blocks`). Nothing per block of the disk; the per-segment part is
//! about 11 KiB per GiB of data region with 1 MiB segments. The index
//! brings its own bound (memtables and block caches, see `lsm`).

pub mod anchor;
mod async_write;
pub mod block_anchor;
mod cleaner;
pub mod coalesce;
pub mod counted;
mod dead_blocks;
pub mod index;
mod index_sink;
pub mod layout;
mod lsm_index;
mod meta;
pub mod parallel_reads;
pub mod reader;
pub mod record;
mod segment;
pub mod state;
mod wbuf;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt::Write as _;

pub use anchor::{AnchorState, NoAnchor, RollbackAnchor};
#[cfg(feature = "std")]
pub use anchor::{FileAnchor, MemAnchor};
pub use block_anchor::BlockAnchor;
pub use counted::Counted;
pub use index::{DiskIndex, Room};
#[cfg(feature = "std")]
pub use index::{MemIndex, MemIndexStore};
pub use layout::{Geometry, LayoutConfig};
pub use parallel_reads::{EngineLock, ParallelReads, ReadDone, ReadPlanner};
pub use reader::{DataReader, ReadPlan};
pub use record::BlockRecord;
pub use segment::CleanerPolicy;

use crate::bio::{AlignedBuf, BlockSet, BLOCK_SIZE};
use crate::log::LogStoreConfig;
use crate::lsm::LsmConfig;
use crate::platform::{
    AeadKey, Crypto, Hash, Iv, Mac, Parallel, SecretBytes, Spawn, HASH_LEN, MAC_LEN,
};
use crate::{bail, ensure, Cause, CryptoRef, Error, ErrorKind, Result};
use index_sink::IndexSink;
use segment::{Head, Segments};

use state::UserState;
use wbuf::WriteBuffer;

/// Configuration of a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// Region sizes and over-provisioning (used by `create` only).
    pub layout: LayoutConfig,
    /// Length of the per-block data keys: 16 (AES-128-GCM) or 32.
    pub data_key_len: u8,
    /// Blocks held in the write buffer before they go to the data log.
    pub write_buffer_blocks: u32,
    /// Sync on its own when only space freed by a sync is left (see the
    /// module documentation). Otherwise such a write fails with NoSpace.
    pub auto_sync: bool,
    /// Segments the cleaner tries to free in one round before syncing.
    pub clean_batch_segments: u32,
    /// How the cleaner picks its victims (see [`CleanerPolicy`]).
    pub cleaner_policy: CleanerPolicy,
    /// The log store under the index (chunk size, key length); used by
    /// `create` only (the store keeps it in its journal).
    pub store: LogStoreConfig,
    /// Index compaction steps run after each write-buffer flush (the rest
    /// is left to [`MlsDisk::background_step`]).
    pub compact_steps_per_flush: u32,
    /// Tuning of the LSM-tree index (memtable, caches, levels). Its cache
    /// sizes are replaced by the split of [`Self::cache_budget_bytes`]
    /// unless that is 0.
    pub lsm: LsmConfig,
    /// The memory the disk may spend on caches, in bytes (default 64 MiB;
    /// [`DiskConfig::with_cache_budget`]). The disk splits it (see
    /// [`CacheSplit`]): a quarter for the index's pinned index and bloom
    /// blocks, a sixteenth for its index and bloom block cache, a quarter
    /// for the log store's cache of decrypted Merkle nodes, the rest
    /// (7/16) for its record (leaf) cache, which also uses the pinned
    /// quarter's room while the pinned blocks do not fill it
    /// ([`LsmConfig::lend_pinned_room`]: a fully written 4 GiB disk pins
    /// under 1 MiB of its 16) and the node quarter's room beyond the
    /// Merkle nodes the index's logs have ([`LsmConfig::node_cache_nodes`]:
    /// a 4 GiB working set's index has about 300 of its 3570). 0 keeps the cache sizes of
    /// `lsm` and the store's default node cache as they are. The rest of
    /// the disk's memory is a fixed part of at most 32 MiB that does not
    /// depend on the disk's size.
    pub cache_budget_bytes: u64,
    /// Metadata blocks (index and journal) buffered and combined into
    /// larger writes until the next flush (see [`coalesce`]).
    pub meta_write_buffer_blocks: u32,
}

impl Default for DiskConfig {
    fn default() -> Self {
        Self {
            layout: LayoutConfig::default(),
            data_key_len: 32,
            write_buffer_blocks: 256,
            auto_sync: true,
            clean_batch_segments: 32,
            cleaner_policy: CleanerPolicy::default(),
            store: LogStoreConfig {
                chunk_blocks: 64,
                ..LogStoreConfig::default()
            },
            compact_steps_per_flush: 2,
            // A larger record cache than the tree's default (32 MiB): every
            // random read looks up the index first, and the leaves of a
            // 1 GiB working set (about 4300 blocks) fit.
            lsm: LsmConfig {
                data_cache_blocks: 8192,
                ..LsmConfig::default()
            },
            meta_write_buffer_blocks: 1024,
            cache_budget_bytes: DEFAULT_CACHE_BUDGET,
        }
    }
}

/// The default of [`DiskConfig::cache_budget_bytes`]: 64 MiB.
pub const DEFAULT_CACHE_BUDGET: u64 = 64 << 20;

/// How [`DiskConfig::cache_budget_bytes`] is split, in entries of each
/// cache (each entry counted with its bookkeeping: a 4 KiB block and 64
/// bytes, a Merkle node at 4.6 KiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSplit {
    /// Pinned index and bloom blocks ([`LsmConfig::pinned_meta_blocks`]).
    pub pinned_meta_blocks: usize,
    /// Cached index and bloom blocks ([`LsmConfig::meta_cache_blocks`]).
    pub meta_cache_blocks: usize,
    /// Cached record (leaf) blocks ([`LsmConfig::data_cache_blocks`]).
    pub data_cache_blocks: usize,
    /// Decrypted Merkle nodes the log store keeps.
    pub node_cache_nodes: usize,
}

/// Bytes a cached block costs with its bookkeeping.
const CACHED_BLOCK_BYTES: u64 = BLOCK_SIZE as u64 + 64;
/// Bytes a cached Merkle node costs (about 4.5 KiB decrypted).
const CACHED_NODE_BYTES: u64 = 4700;

impl CacheSplit {
    /// The split of `bytes`: never more than `bytes` in all.
    ///
    /// A quarter goes to the Merkle nodes. Reading an index leaf needs the
    /// level-0 node above it (its address, key and MAC), and one 4.6 KiB
    /// node serves 72 leaves: a leaf whose node is cached costs one device
    /// read, one whose node is not costs two. So nodes are worth 72 times
    /// their size in leaves when the leaves do not fit; with a quarter of
    /// the default 64 MiB (3,570 nodes, 257k leaves: about 16M mapped
    /// blocks, a 64 GiB disk at one record per block) a lookup reads at
    /// most one index block besides its data block. (A thirty-second, as
    /// before, held 446 nodes: 2.41 device blocks per 4 KiB read on a
    /// 16 GiB working set.) The leaves get what is left, 7/16.
    pub fn of(bytes: u64) -> Self {
        let n = |part: u64, each: u64| usize::try_from(part / each).unwrap_or(usize::MAX);
        let pinned = bytes / 4;
        let meta = bytes / 16;
        let nodes = bytes / 4;
        let data = bytes - pinned - meta - nodes;
        Self {
            pinned_meta_blocks: n(pinned, CACHED_BLOCK_BYTES),
            meta_cache_blocks: n(meta, CACHED_BLOCK_BYTES),
            data_cache_blocks: n(data, CACHED_BLOCK_BYTES),
            node_cache_nodes: n(nodes, CACHED_NODE_BYTES),
        }
    }

    /// The bytes these caches take at most.
    pub fn bytes(&self) -> u64 {
        let blocks = self
            .pinned_meta_blocks
            .saturating_add(self.meta_cache_blocks)
            .saturating_add(self.data_cache_blocks) as u64;
        blocks
            .saturating_mul(CACHED_BLOCK_BYTES)
            .saturating_add((self.node_cache_nodes as u64).saturating_mul(CACHED_NODE_BYTES))
    }
}

impl DiskConfig {
    /// This configuration with a cache budget of `bytes` (0: the cache
    /// sizes of `lsm` as they are).
    pub fn with_cache_budget(mut self, bytes: u64) -> Self {
        self.cache_budget_bytes = bytes;
        self
    }

    /// The split of the cache budget, or `None` for a budget of 0.
    pub fn cache_split(&self) -> Option<CacheSplit> {
        (self.cache_budget_bytes > 0).then(|| CacheSplit::of(self.cache_budget_bytes))
    }

    /// The LSM tuning with the cache sizes of the budget (if any).
    pub fn lsm_with_budget(&self) -> LsmConfig {
        let mut l = self.lsm.clone();
        if let Some(c) = self.cache_split() {
            l.pinned_meta_blocks = c.pinned_meta_blocks;
            l.meta_cache_blocks = c.meta_cache_blocks;
            l.data_cache_blocks = c.data_cache_blocks;
            l.lend_pinned_room = true;
            l.node_cache_nodes = c.node_cache_nodes;
        }
        l
    }
}

/// Counters and state of a disk. All sizes in 4 KiB blocks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Logical capacity.
    pub logical_blocks: u64,
    /// Size of the backing device.
    pub physical_blocks: u64,
    /// Blocks of the data region (whole segments).
    pub data_region_blocks: u64,
    /// Logical blocks that hold data (not unmapped).
    pub mapped_blocks: u64,
    /// Data-log blocks writable without cleaning.
    pub free_blocks: u64,
    /// Data-log blocks freed by cleaning or overwrites, reusable after the
    /// next sync.
    pub pending_blocks: u64,
    /// Blocks written by the user.
    pub user_blocks_written: u64,
    /// Blocks read by the user.
    pub user_blocks_read: u64,
    /// Of those, blocks that were unmapped (returned as zeros).
    pub unmapped_blocks_read: u64,
    /// Mapped blocks unmapped by discard.
    pub discarded_blocks: u64,
    /// Blocks appended to the data log (user data and cleaner moves).
    pub data_blocks_written: u64,
    /// Blocks moved by the segment cleaner.
    pub cleaner_blocks_moved: u64,
    /// Segments cleaned.
    pub segments_cleaned: u64,
    /// Blocks of cleaned segments that the live check did not look up in
    /// the index, known dead from the in-memory hint (see the cleaner).
    pub cleaner_lookups_skipped: u64,
    /// Every block written to the backing device, metadata included.
    pub device_blocks_written: u64,
    /// Every block read from the backing device.
    pub device_blocks_read: u64,
    /// Device flushes.
    pub device_flushes: u64,
    /// The sync counter (number of syncs since the disk was made).
    pub sync_counter: u64,
    /// Syncs the disk made on its own to reuse cleaned space.
    pub forced_syncs: u64,
    /// Name of the rollback anchor ("none", "file", ...).
    pub anchor: &'static str,
    /// Whether whole-image rollback is detected (an anchor is in use).
    pub rollback_protected: bool,
    /// Memory held by the disk layer: write buffer, sealing buffer,
    /// cleaner scratch, segment table (its per-block maps grow with the
    /// blocks written, see `segment`). The index's memtables and caches
    /// come on top (bounded by `LsmConfig`).
    pub disk_memory_bytes: u64,
    /// The anchor held no state for this disk when it was opened, so the
    /// image was trusted on first use; true until the first sync that the
    /// anchor stored.
    pub anchor_tofu: bool,
    /// Flushed write buffers written to the device in the background (a
    /// disk with [`MlsDisk::set_async_writes`]).
    pub async_writes: u64,
    /// Reads that waited for such a write because their blocks were in it.
    pub reads_waited_for_writes: u64,
}

impl DiskStats {
    /// Device blocks written per user block written, times 1000.
    pub fn write_amplification_milli(&self) -> u64 {
        if self.user_blocks_written == 0 {
            return 0;
        }
        self.device_blocks_written.saturating_mul(1000) / self.user_blocks_written
    }

    /// A one-line status (what `dmsetup status` shows).
    pub fn status_line(&self, healthy: bool) -> String {
        let mut s = String::new();
        let wa = self.write_amplification_milli();
        let _ = write!(
            s,
            "{} sync={} logical={} mapped={} free={} pending={} wa={}.{:03} cleaned={} anchor={}{}",
            if healthy { "ok" } else { "failed" },
            self.sync_counter,
            self.logical_blocks,
            self.mapped_blocks,
            self.free_blocks,
            self.pending_blocks,
            wa / 1000,
            wa % 1000,
            self.segments_cleaned,
            self.anchor,
            if self.anchor_tofu { "(tofu)" } else { "" },
        );
        if !self.rollback_protected {
            s.push_str(" (unprotected against whole-image rollback)");
        }
        s
    }
}

/// Writes the superblock payload after each sync (the AuthBlob slots).
pub trait SuperblockSink: Send {
    /// Stores `payload` durably (older slot, then flush).
    fn write(&mut self, payload: &[u8]) -> Result<()>;
}

/// The secure disk. See the module documentation.
pub struct MlsDisk<D: BlockSet> {
    dev: Arc<Counted<D>>,
    crypto: CryptoRef,
    geo: Geometry,
    uuid: [u8; 16],
    cfg: DiskConfig,
    index: Box<dyn DiskIndex>,
    sb: Option<Box<dyn SuperblockSink>>,
    anchor: Box<dyn RollbackAnchor>,
    segs: Segments,
    wbuf: WriteBuffer,
    /// Where a flush seals the write buffer's blocks (never in place).
    /// Page-aligned, as the two cleaner buffers: a device that needs aligned
    /// memory (`O_DIRECT`) takes them without a bounce copy.
    sealed: AlignedBuf,
    /// The cleaner's read of a whole victim segment.
    scratch: AlignedBuf,
    /// The cleaner's gathered live blocks (at most a segment).
    moved: AlignedBuf,
    sync_counter: u64,
    /// Digest of the last committed user state (the next commit's `prev`).
    state_digest: Hash,
    mapped: u64,
    stats: DiskStats,
    broken: Option<Error>,
    /// Inside `sync`: space pressure may commit without `auto_sync`.
    in_sync: bool,
    /// Runs the sealing of a write buffer on several CPUs, if set.
    parallel: Option<Arc<dyn Parallel>>,
    /// Writes flushed buffers to the device in the background, if set
    /// (see [`Self::set_async_writes`]). Boxed: the kernel module keeps a
    /// disk on its stack while it opens one.
    writes: Option<Box<async_write::AsyncWrites>>,
}

impl<D: BlockSet> Drop for MlsDisk<D> {
    /// A disk dropped without a sync still waits for the flushed buffer
    /// in flight to the device: once the disk is gone, nothing may write
    /// to the device on its behalf (the same device may be opened again
    /// at once, and its next writes must not be overwritten by this one).
    fn drop(&mut self) {
        // The disk is gone: there is no one left to report an error to,
        // and whatever a failed write lost was not synced.
        let _ = self.wait_for_writes();
    }
}

const ZERO_IV: Iv = [0u8; 12];
const AAD_LABEL: &[u8; 12] = b"MLSD-DATA-v1";

fn data_aad(uuid: &[u8; 16], lba: u64) -> [u8; 36] {
    let mut a = [0u8; 36];
    let (l, rest) = a.split_at_mut(12);
    l.copy_from_slice(AAD_LABEL);
    let (u, b) = rest.split_at_mut(16);
    u.copy_from_slice(uuid);
    b.copy_from_slice(&lba.to_le_bytes());
    a
}

/// Errors of a request that leave the disk usable when raised outside a
/// step (see [`MlsDisk::guarded`]).
fn refusal(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::InvalidArgument | ErrorKind::NoSpace | ErrorKind::OutOfMemory
    )
}

/// Errors of a read that leave the disk usable: a block that failed
/// authentication (the read fails, the disk does not), and an allocation
/// failure (a read changes nothing but caches, which stay consistent).
fn read_refusal(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::Integrity | ErrorKind::OutOfMemory)
}

fn blocks_of(len: usize) -> Result<u64> {
    ensure!(
        len != 0 && len % BLOCK_SIZE == 0,
        InvalidArgument,
        "buffer is not a whole number of blocks"
    );
    Ok((len / BLOCK_SIZE) as u64)
}

/// The write buffer actually used on a disk of geometry `geo`: at most a
/// quarter of the over-provisioning space, so that a whole buffer can
/// always be made writable by cleaning before its flush starts (a larger
/// buffer could only be flushed in parts, and a failure between two parts
/// would leave a flush half done).
fn effective_wbuf_blocks(geo: &Geometry, configured: u32) -> usize {
    let op_space = geo.data_blocks().saturating_sub(geo.capacity);
    let cap = usize::try_from(op_space / 4).unwrap_or(usize::MAX).max(1);
    (configured as usize).min(cap).max(1)
}

/// A batch of index updates, for [`MlsDisk::index_updates`].
#[derive(Clone, Copy)]
enum Batch<'a> {
    /// `blocks` blocks appended to `head`; `old`: the usage entries of
    /// their old versions when looked up.
    Append {
        head: Head,
        blocks: u64,
        old: Option<&'a [u64]>,
    },
    /// `blocks` blocks unmapped.
    Unmap(u64),
}

/// Rounds of commit and compaction [`MlsDisk::ensure_index_room`] tries.
const ROOM_ATTEMPTS: u32 = 256;

/// Blocks unmapped per index-room check in a discard.
pub const DISCARD_BATCH: u64 = 1024;

// A batch is one range lookup in the index, which refuses wider ones.
const _: () = assert!(DISCARD_BATCH <= crate::lsm::MAX_RANGE);

/// Blocks per sealing job below which a write buffer is sealed on one CPU.
const MIN_BLOCKS_PER_JOB: usize = 16;

/// Seals the plaintext blocks `plain` (blocks of `lbas`, block `i` under
/// key `i` of `keys`) into `out` (same length), the MACs into `macs`; on
/// several CPUs when `parallel` is given and the run is long enough.
/// `plain` is never modified: the write buffer keeps serving reads of
/// those blocks until their index updates succeeded.
#[allow(clippy::too_many_arguments)]
fn seal_blocks(
    parallel: Option<&Arc<dyn Parallel>>,
    crypto: &dyn Crypto,
    uuid: &[u8; 16],
    lbas: &[u64],
    plain: &[u8],
    out: &mut [u8],
    keys: &[u8],
    klen: usize,
    macs: &mut [Mac],
) -> Result<()> {
    ensure!(
        plain.len() == out.len() && plain.len() == lbas.len() * BLOCK_SIZE,
        InvalidState,
        "sealing: buffer lengths differ"
    );
    let seal =
        |lbas: &[u64], plain: &[u8], out: &mut [u8], keys: &[u8], macs: &mut [Mac]| -> Result<()> {
            for ((((l, p), blk), kb), mac) in lbas
                .iter()
                .zip(plain.chunks_exact(BLOCK_SIZE))
                .zip(out.chunks_exact_mut(BLOCK_SIZE))
                .zip(keys.chunks_exact(klen))
                .zip(macs.iter_mut())
            {
                blk.copy_from_slice(p);
                let key = AeadKey::from_slice(kb)?;
                *mac = crypto.aead_seal(&key, &ZERO_IV, &data_aad(uuid, *l), blk)?;
            }
            Ok(())
        };
    let n = lbas.len();
    let width = parallel
        .map_or(1, |p| p.width())
        .min(n / MIN_BLOCKS_PER_JOB);
    let Some(p) = parallel.filter(|_| width > 1) else {
        return seal(lbas, plain, out, keys, macs);
    };
    let per = n.div_ceil(width);
    let mut results: Vec<Result<()>> = Vec::new();
    results.try_reserve_exact(width)?;
    results.resize(width, Ok(()));
    let mut closures = Vec::new();
    closures.try_reserve_exact(width)?;
    for (((((l, p), d), k), m), r) in lbas
        .chunks(per)
        .zip(plain.chunks(per * BLOCK_SIZE))
        .zip(out.chunks_mut(per * BLOCK_SIZE))
        .zip(keys.chunks(per * klen))
        .zip(macs.chunks_mut(per))
        .zip(results.iter_mut())
    {
        let seal = &seal;
        closures.push(move || *r = seal(l, p, d, k, m));
    }
    crate::platform::run_each(&**p, &mut closures)?;
    drop(closures);
    results.into_iter().collect()
}

impl<D: BlockSet> MlsDisk<D> {
    /// Puts a disk together from its parts; `fresh` = nothing mapped yet.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn assemble(
        dev: Arc<Counted<D>>,
        crypto: CryptoRef,
        geo: Geometry,
        uuid: [u8; 16],
        cfg: DiskConfig,
        index: Box<dyn DiskIndex>,
        sb: Option<Box<dyn SuperblockSink>>,
        anchor: Box<dyn RollbackAnchor>,
    ) -> Result<Self> {
        ensure!(
            cfg.data_key_len == 16 || cfg.data_key_len == 32,
            InvalidArgument,
            "data key length must be 16 or 32"
        );
        ensure!(
            cfg.write_buffer_blocks >= 1 && cfg.write_buffer_blocks <= 65536,
            InvalidArgument,
            "write buffer must be 1..=65536 blocks"
        );
        let segs = Segments::new(geo.nseg, geo.seg_blocks)?;
        let wbuf_blocks = effective_wbuf_blocks(&geo, cfg.write_buffer_blocks);
        let wbuf = WriteBuffer::new(wbuf_blocks)?;
        let sealed = AlignedBuf::zeroed(wbuf_blocks * BLOCK_SIZE)?;
        let scratch =
            AlignedBuf::zeroed(cleaner::CLEAN_GROUP * geo.seg_blocks as usize * BLOCK_SIZE)?;
        let moved = AlignedBuf::zeroed(geo.seg_blocks as usize * BLOCK_SIZE)?;
        let stats = DiskStats {
            logical_blocks: geo.capacity,
            physical_blocks: geo.total_blocks,
            data_region_blocks: geo.data_blocks(),
            anchor: anchor.kind(),
            rollback_protected: anchor.protects(),
            ..DiskStats::default()
        };
        Ok(Self {
            dev,
            crypto,
            geo,
            uuid,
            cfg,
            index,
            sb,
            anchor,
            segs,
            wbuf,
            sealed,
            moved,
            scratch,
            sync_counter: 0,
            state_digest: [0u8; HASH_LEN],
            mapped: 0,
            stats,
            broken: None,
            in_sync: false,
            parallel: None,
            writes: None,
        })
    }

    /// After the index is open: checks the user state and the anchor,
    /// rebuilds validity and the reverse map from the index.
    fn recover(&mut self) -> Result<()> {
        let us = UserState::parse(self.index.user_state())?;
        ensure!(
            us.uuid == self.uuid,
            Integrity,
            "index belongs to another disk"
        );
        let digest = us.digest(&*self.crypto)?;
        self.anchor.bind(&self.uuid, false)?;
        let rollback = |msg| Err(Error::new(ErrorKind::Rollback, msg).with_cause(Cause::Anchor));
        match self.anchor.read()? {
            // Nothing to compare with: trusted on first use.
            None => self.stats.anchor_tofu = self.anchor.protects(),
            Some(a) if us.sync_counter < a.counter => {
                return rollback("disk image is older than its rollback anchor")
            }
            Some(a) if us.sync_counter == a.counter && digest != a.digest => {
                return rollback(
                    "disk image is a fork: another commit with the counter of its rollback anchor",
                )
            }
            Some(a) if a.counter.checked_add(1) == Some(us.sync_counter) && us.prev != a.digest => {
                return rollback(
                    "disk image is a fork: one sync ahead of its rollback anchor, but not from the anchored commit",
                )
            }
            Some(a)
                if us.sync_counter == a.counter
                    || a.counter.checked_add(1) == Some(us.sync_counter) => {}
            Some(_) => {
                return rollback("disk image is more than one sync ahead of its rollback anchor")
            }
        }
        self.sync_counter = us.sync_counter;
        self.state_digest = digest;
        // The segment usage table of the commit (a few consecutive index
        // entries); no walk of the index.
        let mut sum = 0u64;
        for e in 0..meta::usage_entries(self.segs.nseg()) {
            if let Some(rec) = self.index.get(meta::USAGE_BASE + e)? {
                sum += self.segs.load_usage(e, &meta::from_record(&rec)?)?;
            }
        }
        ensure!(
            sum == us.mapped,
            Integrity,
            "segment usage table disagrees with the committed mapped count"
        );
        self.mapped = us.mapped;
        self.segs.settle_after_open();
        self.anchor.advance(self.sync_counter, &self.state_digest)?;
        self.refresh_stats();
        Ok(())
    }

    /// Creates a disk whose index is a [`MemIndex`] over `store` and which
    /// has no superblock (tests of the data path; geometry from `cfg`).
    #[cfg(feature = "std")]
    pub fn create_with_mem_index(
        dev: D,
        crypto: CryptoRef,
        cfg: DiskConfig,
        anchor: Box<dyn RollbackAnchor>,
        store: MemIndexStore,
    ) -> Result<Self> {
        let geo = Geometry::compute(dev.nblocks(), &cfg.layout)?;
        let mut uuid = [0u8; 16];
        crypto.fill_random(&mut uuid)?;
        let index = Box::new(MemIndex::open(store));
        let dev = Arc::new(Counted::new(dev));
        let mut d = Self::assemble(dev, crypto, geo, uuid, cfg, index, None, anchor)?;
        d.anchor.bind(&uuid, true)?;
        d.commit(false)?;
        Ok(d)
    }

    /// Opens a disk made by [`MlsDisk::create_with_mem_index`].
    #[cfg(feature = "std")]
    pub fn open_with_mem_index(
        dev: D,
        crypto: CryptoRef,
        cfg: DiskConfig,
        anchor: Box<dyn RollbackAnchor>,
        store: MemIndexStore,
    ) -> Result<Self> {
        let geo = Geometry::compute(dev.nblocks(), &cfg.layout)?;
        let index = Box::new(MemIndex::open(store));
        let uuid = UserState::parse(index.user_state())?.uuid;
        let dev = Arc::new(Counted::new(dev));
        let mut d = Self::assemble(dev, crypto, geo, uuid, cfg, index, None, anchor)?;
        d.recover()?;
        Ok(d)
    }

    /// Logical capacity in blocks.
    pub fn nblocks(&self) -> u64 {
        self.geo.capacity
    }

    /// The disk's geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// The disk's UUID.
    pub fn uuid(&self) -> [u8; 16] {
        self.uuid
    }

    /// Where the current version of `lba` lives on the backing device
    /// (`None`: unmapped or still in the write buffer). For tools and tests.
    pub fn locate(&mut self, lba: u64) -> Result<Option<u64>> {
        self.check_range(lba, 1)?;
        self.check_ok()?;
        if self.wbuf.contains(lba) {
            return Ok(None);
        }
        Ok(self.index.get(lba)?.map(|r| self.geo.data_start + r.hba))
    }

    /// The backing device (with its counters).
    pub fn device(&self) -> &Counted<D> {
        &self.dev
    }

    /// The error that stopped the disk, if one did. A stopped disk refuses
    /// every request; reopening recovers the last synced state.
    pub fn failure(&self) -> Option<Error> {
        self.broken
    }

    fn check_ok(&self) -> Result<()> {
        match self.broken {
            None => Ok(()),
            Some(_) => Err(Error::new(
                ErrorKind::InvalidState,
                "disk stopped after an earlier failure; reopen it",
            )),
        }
    }

    /// Runs a request `f`. An error stops the disk unless it is a refusal
    /// made before anything changed or between two complete steps:
    /// `InvalidArgument`, or `NoSpace` / `OutOfMemory` from the work that
    /// runs outside the steps (data space and index room checks, planning
    /// allocations, buffering a block). The same kinds raised inside a step
    /// have already stopped the disk through [`Self::critical`], so an
    /// allocation failure stops the disk only where it can have left memory
    /// and device out of step.
    fn guarded<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.check_ok()?;
        let r = f(self);
        if let Err(e) = r {
            if !refusal(e.kind()) {
                self.broken.get_or_insert(e);
            }
        }
        r
    }

    /// Runs a step that changes memory and device together (a flush's
    /// writes and index updates, a cleaner move, a commit, an unmap, index
    /// background work). Any error in it, whatever its kind, stops the
    /// disk: what is in memory may no longer match what the device and the
    /// index hold, and only a reopen (to the last sync) is safe.
    fn critical<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let r = f(self);
        if let Err(e) = r {
            self.broken.get_or_insert(e);
        }
        r
    }

    /// Index updates a batch stores before and with the next commit: a
    /// record per block, the distinct summary entries of the runs it
    /// appends, and the usage entries the next commit stores (those
    /// changed so far and the distinct ones the batch changes; an old
    /// version not looked up may change one more each).
    ///
    /// `reserve`: buffered user blocks whose flush the batch must leave
    /// room for (counted as a user append of that many blocks, old
    /// versions not looked up). A write acknowledged them on the promise
    /// that the next sync can flush them; whatever runs before that flush
    /// (the cleaner the flush itself runs, a discard) counts them too.
    fn index_updates(&self, b: Batch<'_>, reserve: u64) -> Result<u64> {
        let mut touched: Vec<u64> = Vec::new();
        let (mut blocks, mut summaries, mut unknown) = match b {
            Batch::Append { head, blocks, old } => {
                let s = self.segs.append_plan(head, blocks, &mut touched)?;
                let unknown = match old {
                    Some(o) => {
                        touched.try_reserve(o.len())?;
                        touched.extend_from_slice(o);
                        0
                    }
                    None => blocks,
                };
                (blocks, s, unknown)
            }
            Batch::Unmap(blocks) => (blocks, 0, blocks),
        };
        if reserve > 0 {
            let s = self.segs.append_plan(Head::User, reserve, &mut touched)?;
            summaries = summaries.saturating_add(s);
            blocks = blocks.saturating_add(reserve);
            unknown = unknown.saturating_add(reserve);
        }
        let usage = self
            .segs
            .usage_with(&mut touched)
            .saturating_add(unknown)
            .min(meta::usage_entries(self.geo.nseg));
        Ok(blocks.saturating_add(summaries).saturating_add(usage))
    }

    /// The usage entries of the old versions of the buffered blocks from
    /// slot `from` on (looked up in the index together, in one pass), for
    /// an exact count when room is tight. In no particular order.
    fn old_entries_of_wbuf(&mut self, from: usize) -> Result<Vec<u64>> {
        let (lbas, _) = self.wbuf.parts();
        let lbas = lbas.get(from..).unwrap_or(&[]);
        // The buffer holds each LBA once, in arrival order.
        let mut keys: Vec<u64> = Vec::new();
        keys.try_reserve_exact(lbas.len())?;
        keys.extend_from_slice(lbas);
        keys.sort_unstable();
        keys.dedup();
        let mut recs = Vec::new();
        self.index.get_sorted(&keys, &mut recs)?;
        let mut out: Vec<u64> = Vec::new();
        out.try_reserve_exact(recs.len())?;
        for r in recs.into_iter().flatten() {
            out.push(u64::from(self.segs.seg_of(r.hba) / meta::SEGS_PER_ENTRY));
        }
        Ok(out)
    }

    /// Makes sure the index updates of batch `b` (and of flushing
    /// `reserve` buffered blocks, see [`Self::index_updates`]) and a sync
    /// fit in the index
    /// (see [`DiskIndex::room_for`]), committing first when only a commit
    /// frees the room (or refusing with `NoSpace` when the disk may not
    /// commit on its own). Changes nothing but that commit.
    fn ensure_index_room(&mut self, b: Batch<'_>, reserve: u64) -> Result<()> {
        // A commit frees the chunks that installed compactions pinned, and
        // compaction merges what a long run of updates (a whole-disk
        // discard, say) left in L0; nothing else runs during one request,
        // so both are done here, alternately, until the batch fits or
        // neither helps.
        let can_commit = self.cfg.auto_sync || self.in_sync;
        let mut committed = false;
        for _ in 0..ROOM_ATTEMPTS {
            // Recounted each round: a commit stores (and clears) the
            // usage entries changed so far.
            let updates = self.index_updates(b, reserve)?;
            let room = match self.index.room_for(updates) {
                Ok(r) => Some(r),
                Err(e) if e.kind() == ErrorKind::NoSpace => None,
                Err(e) => return Err(e),
            };
            match room {
                Some(Room::Now) => return Ok(()),
                Some(Room::AfterCommit) if !can_commit => {
                    bail!(NoSpace, "index full until the next sync")
                }
                Some(Room::AfterCommit) if !committed => {
                    self.commit(true)?;
                    committed = true;
                }
                _ => {
                    if !self.critical(|d| d.index.background_step())? {
                        bail!(
                            NoSpace,
                            "index region full: the updates do not fit even after a commit"
                        );
                    }
                    committed = false;
                }
            }
        }
        bail!(NoSpace, "index full: commits and compaction made no room")
    }

    fn check_range(&self, lba: u64, nblocks: u64) -> Result<()> {
        match lba.checked_add(nblocks) {
            Some(end) if end <= self.geo.capacity => Ok(()),
            _ => Err(Error::new(
                ErrorKind::InvalidArgument,
                "request past the end of the disk",
            )),
        }
    }

    /// Reads `buf.len() / 4096` blocks starting at `lba`.
    pub fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<()> {
        let plan = self.plan_read(lba, buf)?;
        let r = self.reader().fetch(&plan, buf);
        if let Err(e) = r {
            // Never hand out a partly filled or unauthenticated buffer.
            buf.fill(0);
            if !read_refusal(e.kind()) {
                self.broken = Some(e);
            }
        }
        r
    }

    /// The first half of a read (see the `reader` module): fills the blocks of `buf`
    /// that come from the write buffer or are unmapped (zeros), and returns
    /// what is left to fetch from the device with [`DataReader::fetch`],
    /// which needs no access to the disk. On error `buf` is zeroed.
    pub fn plan_read(&mut self, lba: u64, buf: &mut [u8]) -> Result<ReadPlan> {
        let n = blocks_of(buf.len())?;
        self.check_range(lba, n)?;
        self.check_ok()?;
        let r = self.plan_read_inner(lba, buf);
        if let Err(e) = &r {
            buf.fill(0);
            if !read_refusal(e.kind()) {
                self.broken = Some(*e);
            }
        }
        r
    }

    /// A handle that fetches planned reads without the disk (see the `reader` module).
    pub fn reader(&self) -> DataReader<D> {
        DataReader {
            dev: self.dev.clone(),
            crypto: self.crypto.clone(),
            uuid: self.uuid,
            parallel: self.parallel.clone(),
        }
    }

    /// Seals write-buffer blocks, and fetches reads of at least
    /// 2 x 128 KiB from the device, on several CPUs through `parallel` (by
    /// default both run on the calling thread). Readers made by
    /// [`Self::reader`] before this call keep the runner they had.
    pub fn set_parallel(&mut self, parallel: Arc<dyn Parallel>) {
        self.parallel = Some(parallel);
    }

    /// Writes each flushed write buffer to the device on `spawn`'s threads
    /// and returns from the flush without waiting for it: the next requests
    /// fill the buffer meanwhile. At most one buffer is in flight; the next
    /// flush, a commit, the cleaner and a read of its blocks wait for it
    /// (see the `async_write` module). Costs a second sealing buffer.
    pub fn set_async_writes(&mut self, spawn: Arc<dyn Spawn>) -> Result<()>
    where
        D: 'static,
    {
        self.wait_for_writes()?;
        let dev: Arc<dyn BlockSet> = self.dev.clone();
        self.writes = Some(Box::new(async_write::AsyncWrites::new(spawn, dev)));
        Ok(())
    }

    /// Waits for the flushed buffer in flight to the device, if any. Its
    /// error, whatever its kind, stops the disk here: the blocks it carried
    /// are acknowledged and the index points at them, so no later sync may
    /// commit (a read that waits would otherwise pass an `OutOfMemory` on
    /// as a refusal that leaves the disk usable).
    fn wait_for_writes(&mut self) -> Result<()> {
        let r = match self.writes.as_mut() {
            Some(w) => w.wait(),
            None => Ok(()),
        };
        if let Err(e) = r {
            self.broken.get_or_insert(e);
        }
        r
    }

    fn plan_read_inner(&mut self, lba: u64, buf: &mut [u8]) -> Result<ReadPlan> {
        let n = buf.len() / BLOCK_SIZE;
        let mut plan = ReadPlan::with_capacity(n)?;
        // Blocks in the write buffer are copied; the others are looked up
        // in the index together (one pass over the tree for the run).
        let mut lbas: Vec<u64> = Vec::new();
        lbas.try_reserve_exact(n)?;
        for (i, blk) in buf.chunks_exact_mut(BLOCK_SIZE).enumerate() {
            let l = lba + i as u64;
            self.stats.user_blocks_read += 1;
            match self.wbuf.get(l) {
                Some(b) => blk.copy_from_slice(b),
                None => lbas.push(l),
            }
        }
        let mut recs: Vec<Option<BlockRecord>> = Vec::new();
        match lbas.as_slice() {
            [l] => {
                recs.try_reserve_exact(1)?;
                recs.push(self.index.get(*l)?);
            }
            ls => self.index.get_sorted(ls, &mut recs)?,
        }
        ensure!(
            recs.len() == lbas.len(),
            InvalidState,
            "index: a lookup per block"
        );
        // Blocks still on their way to the device are read after they
        // arrived.
        if let Some(w) = self.writes.as_mut() {
            let start = self.geo.data_start;
            if recs.iter().flatten().any(|r| w.covers(start + r.hba)) {
                w.reads_waited += 1;
                self.wait_for_writes()?;
            }
        }
        for (l, rec) in lbas.into_iter().zip(recs) {
            let i = (l - lba) as usize;
            match rec {
                None => {
                    if let Some(blk) = buf.get_mut(i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE) {
                        blk.fill(0);
                    }
                    self.stats.unmapped_blocks_read += 1;
                }
                Some(rec) => {
                    ensure!(
                        rec.hba < self.geo.data_blocks(),
                        Corrupted,
                        "index points past the data region"
                    );
                    plan.push(i, self.geo.data_start + rec.hba, l, rec)?;
                }
            }
        }
        Ok(plan)
    }

    /// Writes `buf.len() / 4096` blocks starting at `lba`. Durable after
    /// the next [`MlsDisk::sync`].
    ///
    /// A write that fails with `NoSpace` or `OutOfMemory` (the disk stays
    /// usable) may have taken a prefix of its blocks, in LBA order: each
    /// block of the request then reads as its old or its new content, and
    /// the next sync makes that durable, as with a failed write to a plain
    /// block device.
    /// Any other failure stops the disk.
    pub fn write(&mut self, lba: u64, buf: &[u8]) -> Result<()> {
        let n = blocks_of(buf.len())?;
        self.check_range(lba, n)?;
        self.guarded(|d| {
            // Acknowledge nothing the next sync could not commit: the
            // buffered blocks and these (up to a buffer's worth) must have
            // data space (cleaned for now, see `ensure_space`) and fit in
            // the index now, after a forced commit if need be. A refusal
            // here changes nothing but complete cleaner steps and commits.
            let buffered = (d.wbuf.len() as u64)
                .saturating_add(n)
                .min(d.wbuf.cap() as u64);
            d.ensure_space(buffered)?;
            // Room now, not only after a commit: the index's bound may
            // grow across the commit the flush would force, and a buffer
            // the next sync cannot flush would stay acknowledged.
            d.ensure_index_room(
                Batch::Append {
                    head: Head::User,
                    blocks: buffered,
                    old: None,
                },
                0,
            )?;
            for (i, blk) in buf.chunks_exact(BLOCK_SIZE).enumerate() {
                let l = lba + i as u64;
                if d.wbuf.is_full() && !d.wbuf.contains(l) {
                    d.flush_wbuf()?;
                    // The flush used room the check above counted for the
                    // rest of this write too: check the rest again (a
                    // refusal now leaves a prefix written, and an empty
                    // buffer).
                    let left = (n - i as u64).min(d.wbuf.cap() as u64);
                    d.ensure_space(left)?;
                    d.ensure_index_room(
                        Batch::Append {
                            head: Head::User,
                            blocks: left,
                            old: None,
                        },
                        0,
                    )?;
                }
                d.wbuf.put(l, blk)?;
                d.stats.user_blocks_written += 1;
            }
            Ok(())
        })
    }

    /// Unmaps `nblocks` blocks from `lba`: they read as zeros and their
    /// space goes to the cleaner. Durable after the next sync.
    ///
    /// Done in batches of [`DISCARD_BATCH`] blocks, each after its index
    /// room is checked: a discard that fails with `NoSpace` may have
    /// unmapped a prefix of its range (whole batches, in LBA order).
    pub fn discard(&mut self, lba: u64, nblocks: u64) -> Result<()> {
        if nblocks == 0 {
            return Ok(());
        }
        self.check_range(lba, nblocks)?;
        self.guarded(|d| {
            let end = lba + nblocks;
            let mut at = lba;
            let mut batch = DISCARD_BATCH;
            while at < end {
                let stop = end.min(at.saturating_add(batch));
                // The buffered blocks stay acknowledged: their flush keeps
                // its room (the unmapped ones leave the buffer, so this
                // counts more than the sync will need).
                let buffered = d.wbuf.len() as u64;
                match d.ensure_index_room(Batch::Unmap(stop - at), buffered) {
                    Ok(()) => {}
                    // A small index region (or memtable) cannot take a
                    // whole batch at once: smaller batches, down to one.
                    Err(e) if e.kind() == ErrorKind::NoSpace && stop - at > 1 => {
                        batch = ((stop - at) / 2).max(1);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                d.critical(|d| d.unmap(at, stop))?;
                at = stop;
            }
            Ok(())
        })
    }

    /// Unmaps `from..to` (room in the index already checked).
    ///
    /// The index is asked once for the mapped LBAs of the range
    /// ([`DiskIndex::range`]), not once per LBA: a discard of a mostly
    /// unmapped range (`mkfs`, `fstrim` of a big disk) costs little more
    /// than the blocks it unmaps.
    fn unmap(&mut self, from: u64, to: u64) -> Result<()> {
        if to.saturating_sub(from) > self.wbuf.len() as u64 {
            // Fewer buffered blocks than LBAs in the range: drop those of
            // the buffer that fall in it.
            let mut held: Vec<u64> = Vec::new();
            let (lbas, _) = self.wbuf.parts();
            held.try_reserve_exact(lbas.len())?;
            held.extend(lbas.iter().copied().filter(|l| (from..to).contains(l)));
            for l in held {
                self.wbuf.remove(l)?;
            }
        } else {
            for l in from..to {
                self.wbuf.remove(l)?;
            }
        }
        let mut mapped = Vec::new();
        self.index.range(from, to, &mut mapped)?;
        for (l, old) in &mapped {
            self.segs.invalidate(old.hba)?;
            self.index.delete(*l)?;
            self.mapped = self.mapped.checked_sub(1).ok_or(Error::new(
                ErrorKind::InvalidState,
                "mapped-block count below zero",
            ))?;
            self.stats.discarded_blocks += 1;
        }
        Ok(())
    }

    /// Makes every write and discard so far durable and irreversible (see
    /// the module documentation for the steps).
    pub fn sync(&mut self) -> Result<()> {
        self.guarded(|d| {
            d.in_sync = true;
            let r = d.flush_wbuf().and_then(|()| d.commit(false));
            d.in_sync = false;
            r
        })
    }

    /// Syncs and closes the disk.
    pub fn close(mut self) -> Result<()> {
        self.sync()
    }

    /// Statistics and state.
    pub fn stats(&mut self) -> DiskStats {
        self.refresh_stats();
        self.stats.clone()
    }

    /// The index's counters (block cache hits and misses, tables per
    /// level), if the index is an LSM tree.
    pub fn index_stats(&self) -> Option<crate::lsm::LsmStats> {
        self.index.lsm_stats()
    }

    /// The one-line status (health, counters, anchor).
    pub fn status_line(&mut self) -> String {
        let healthy = self.broken.is_none();
        self.stats().status_line(healthy)
    }

    /// One bounded unit of the index's background work (compaction); true
    /// if more is to do. The platform calls it when idle.
    pub fn background_step(&mut self) -> Result<bool> {
        self.guarded(|d| d.critical(|d| d.index.background_step()))
    }

    fn refresh_stats(&mut self) {
        let (r, w, f) = self.dev.counts();
        let s = &mut self.stats;
        s.mapped_blocks = self.mapped;
        s.free_blocks = self.segs.free_blocks();
        s.pending_blocks = self.segs.pending_blocks();
        s.device_blocks_read = r;
        s.device_blocks_written = w;
        s.device_flushes = f;
        s.sync_counter = self.sync_counter;
        s.disk_memory_bytes = (self.wbuf.mem_bytes()
            + self.sealed.capacity()
            + self.scratch.capacity()
            + self.moved.capacity()
            + self.writes.as_ref().map_or(0, |w| w.mem_bytes())
            + self.segs.mem_bytes()) as u64;
        if let Some(w) = &self.writes {
            s.async_writes = w.started;
            s.reads_waited_for_writes = w.reads_waited;
        }
    }

    /// Commits the index (data must already be on the device). Any error
    /// stops the disk (see [`Self::critical`]).
    fn commit(&mut self, forced: bool) -> Result<()> {
        self.critical(|d| d.commit_inner(forced))
    }

    fn commit_inner(&mut self, forced: bool) -> Result<()> {
        // The data the index points at must be on the device first.
        self.wait_for_writes()?;
        self.dev.flush()?;
        let next = self.sync_counter + 1;
        let us = UserState::next(
            &*self.crypto,
            self.uuid,
            next,
            self.mapped,
            self.state_digest,
        )?;
        let digest = us.digest(&*self.crypto)?;
        // The usage entries changed since the last commit go into this
        // one: the committed table always matches the committed index.
        for (e, p) in self.segs.dirty_payloads()? {
            self.index.put(meta::USAGE_BASE + e, meta::to_record(&p)?)?;
        }
        self.index.sync(&us.emit())?;
        self.segs.clear_dirty();
        self.sync_counter = next;
        self.state_digest = digest;
        self.segs.release_pending()?;
        if forced {
            self.stats.forced_syncs += 1;
        }
        if self.sb.is_some() {
            let payload = state::SuperPayload {
                uuid: self.uuid,
                geo: self.geo,
                data_key_len: self.cfg.data_key_len,
                sync_counter: next,
                root: self.index.root()?,
            }
            .emit()?;
            if let Some(sb) = self.sb.as_mut() {
                sb.write(&payload)?;
            }
        }
        self.anchor.advance(next, &digest)?;
        self.stats.anchor_tofu = false;
        Ok(())
    }

    /// Seals and appends the write buffer to the data log.
    ///
    /// In two phases. First, before anything changes, the checks that may
    /// refuse with `NoSpace`: data space for the whole buffer (cleaning and
    /// forced commits are complete steps of their own) and index room for
    /// its updates and the next sync. Then the writes and index updates,
    /// as one [`Self::critical`] step: the buffer's blocks are sealed into
    /// `sealed` (the buffered plaintext is never touched), and the buffer
    /// is emptied only after every index update succeeded. When the index
    /// cannot take the whole buffer at once, the buffer's tail goes in
    /// smaller batches, each a complete step: a `NoSpace` then leaves the
    /// rest buffered (readable, flushed by a later sync).
    fn flush_wbuf(&mut self) -> Result<()> {
        let mut left = self.wbuf.len() as u64;
        if left > 0 {
            self.ensure_space(left)?;
        }
        let steps = self.cfg.compact_steps_per_flush;
        // A small index may not take the whole buffer in one batch (its
        // bound grows with the batch, and a forced commit takes room of
        // its own): the buffer's tail in halves then, down to one block.
        let mut part = left;
        while left > 0 {
            let k = part.min(left);
            match self.ensure_flush_room(k) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NoSpace && k > 1 => {
                    part = (k / 2).max(1);
                    continue;
                }
                Err(e) => return Err(e),
            }
            // The flush's compaction steps go with its last part.
            let last = k == left;
            self.critical(|d| d.write_wbuf_tail(k, if last { steps } else { 0 }))?;
            left -= k;
            if last {
                return Ok(());
            }
        }
        self.critical(|d| {
            for _ in 0..steps {
                if !d.index.background_step()? {
                    break;
                }
            }
            Ok(())
        })
    }

    /// Index room for flushing the last `k` buffered blocks.
    fn ensure_flush_room(&mut self, k: u64) -> Result<()> {
        // The old versions are looked up only when the bound that counts
        // a usage entry for each of them does not fit now.
        let bound = self.index_updates(
            Batch::Append {
                head: Head::User,
                blocks: k,
                old: None,
            },
            0,
        )?;
        let from = self.wbuf.len().saturating_sub(k as usize);
        let old = match self.index.room_for(bound) {
            Ok(Room::Now) => None,
            Ok(Room::AfterCommit) => Some(self.old_entries_of_wbuf(from)?),
            Err(e) if e.kind() == ErrorKind::NoSpace => Some(self.old_entries_of_wbuf(from)?),
            Err(e) => return Err(e),
        };
        self.ensure_index_room(
            Batch::Append {
                head: Head::User,
                blocks: k,
                old: old.as_deref(),
            },
            0,
        )
    }

    /// The second phase of [`Self::flush_wbuf`] for the last `k` buffered
    /// blocks (space and room already made); they leave the buffer after
    /// every index update succeeded. `steps`: compaction steps to run
    /// after the index updates (the flush's last part).
    ///
    /// Every run of the tail is sealed first (into `sealed`, one after
    /// another); then the device writes of the runs go beside the index
    /// updates and the compaction steps, as two jobs of the parallel
    /// runner when the disk has one (the device's time, about half of a
    /// flush, then hides the index's), else one after the other. Nothing
    /// durable refers to the new blocks before the next commit, which
    /// comes after both jobs and a device flush.
    fn write_wbuf_tail(&mut self, k: u64, steps: u32) -> Result<()> {
        let from = self.wbuf.len().saturating_sub(k as usize);
        let mut recs: Vec<(u64, BlockRecord)> = Vec::new();
        recs.try_reserve_exact(k as usize)?;
        let mut runs: Vec<(u64, usize, usize)> = Vec::new();
        let mut summaries = Vec::new();
        let mut lbas: Vec<u32> = Vec::new();
        let mut done = 0u64;
        while done < k {
            let (hba, run) = self.segs.alloc_run(Head::User, k - done)?;
            ensure!(run > 0, InvalidState, "data log: empty run");
            runs.try_reserve(1)?;
            self.seal_run(
                from + done as usize,
                run as usize,
                hba,
                done as usize,
                &mut recs,
            )?;
            runs.push((hba, done as usize, run as usize));
            // The run's validity and summary now, while its segment is
            // its head's last: the next run may close the segment, and a
            // segment closed with no valid block goes to the free list
            // at the next commit.
            lbas.clear();
            lbas.try_reserve(run as usize)?;
            for (l, rec) in recs.get(done as usize..).unwrap_or_default() {
                self.segs.add_valid(rec.hba)?;
                lbas.push(
                    u32::try_from(*l).map_err(|_| Error::new(ErrorKind::InvalidState, "LBA"))?,
                );
            }
            let entries = self.segs.record_run(Head::User, hba, &lbas)?;
            summaries.try_reserve(entries.len())?;
            summaries.extend(entries);
            done += run;
        }
        self.store_runs(&runs, recs, summaries, steps)?;
        self.stats.data_blocks_written += k;
        self.wbuf.truncate(from);
        Ok(())
    }

    /// Seals buffer slots `first..first + count`, the new content of data
    /// blocks `hba..hba + count`, into `sealed` from block `at` on, and
    /// pushes their index records to `recs`.
    fn seal_run(
        &mut self,
        first: usize,
        count: usize,
        hba: u64,
        at: usize,
        recs: &mut Vec<(u64, BlockRecord)>,
    ) -> Result<()> {
        let range = || Error::new(ErrorKind::InvalidState, "write buffer range");
        let (lbas, plain) = self.wbuf.parts();
        let lbas = lbas.get(first..first + count).ok_or_else(range)?;
        let plain = plain
            .get(first * BLOCK_SIZE..(first + count) * BLOCK_SIZE)
            .ok_or_else(range)?;
        let out = self
            .sealed
            .as_mut_slice()
            .get_mut(at * BLOCK_SIZE..(at + count) * BLOCK_SIZE)
            .ok_or_else(range)?;
        // One call to the RNG for every key of the run (wiped when dropped,
        // on every path out of here).
        let klen = usize::from(self.cfg.data_key_len);
        let mut keys = SecretBytes::default();
        keys.0.try_reserve_exact(count * klen)?;
        keys.0.resize(count * klen, 0);
        self.crypto.fill_random(&mut keys.0)?;
        let mut macs: Vec<Mac> = Vec::new();
        macs.try_reserve_exact(count)?;
        macs.resize(count, [0u8; MAC_LEN]);
        seal_blocks(
            self.parallel.as_ref(),
            &*self.crypto,
            &self.uuid,
            lbas,
            plain,
            out,
            &keys.0,
            klen,
            &mut macs,
        )?;
        for (k, ((l, kb), mac)) in lbas
            .iter()
            .zip(keys.0.chunks_exact(klen))
            .zip(macs)
            .enumerate()
        {
            recs.push((
                *l,
                BlockRecord {
                    hba: hba + k as u64,
                    key: AeadKey::from_slice(kb)?,
                    mac,
                },
            ));
        }
        Ok(())
    }

    /// Writes the sealed runs (`(hba, first block in sealed, blocks)`) to
    /// the data log and, beside that, records their blocks `recs` and
    /// summary entries in the index (with validity and mapped count), then
    /// runs `steps` compaction steps. See [`Self::write_wbuf_tail`].
    fn store_runs(
        &mut self,
        runs: &[(u64, usize, usize)],
        recs: Vec<(u64, BlockRecord)>,
        summaries: Vec<(u64, meta::Payload)>,
        steps: u32,
    ) -> Result<()> {
        let data_start = self.geo.data_start;
        if let Some(w) = self.writes.as_mut() {
            // The sealed buffer goes with its write; the next flush seals
            // into the previous write's buffer, once that write is done.
            let mut at_dev = Vec::new();
            at_dev.try_reserve_exact(runs.len())?;
            at_dev.extend(runs.iter().map(|&(hba, at, n)| (data_start + hba, at, n)));
            let next = w.start(core::mem::take(&mut self.sealed), at_dev)?;
            self.sealed = next;
            return IndexSink {
                index: &mut self.index,
                segs: &mut self.segs,
                mapped: &mut self.mapped,
            }
            .record(recs, summaries, steps);
        }
        let dev = &self.dev;
        let sealed = self.sealed.as_slice();
        let mut written: Result<()> = Ok(());
        let mut write_job = || {
            written = runs.iter().try_for_each(|&(hba, at, n)| {
                let blocks = sealed
                    .get(at * BLOCK_SIZE..(at + n) * BLOCK_SIZE)
                    .ok_or(Error::new(ErrorKind::InvalidState, "sealed range"))?;
                dev.write(data_start + hba, blocks)
            });
        };
        let mut sink = IndexSink {
            index: &mut self.index,
            segs: &mut self.segs,
            mapped: &mut self.mapped,
        };
        let mut indexed: Result<()> = Ok(());
        let mut updates = Some((recs, summaries));
        let mut index_job = || {
            indexed = match updates.take() {
                Some((r, s)) => sink.record(r, s, steps),
                None => Err(Error::new(
                    ErrorKind::InvalidState,
                    "flush: index job ran twice",
                )),
            }
        };
        match self.parallel.as_ref().filter(|p| p.width() > 1) {
            // The index job first: a runner runs the first job on the
            // calling thread (the kernel's, in its no-I/O scope: the
            // index job allocates).
            Some(p) => p.run(&mut [&mut index_job, &mut write_job]),
            None => {
                write_job();
                if written.is_ok() {
                    index_job();
                }
            }
        }
        written?;
        indexed
    }

    /// Stores the summary entries of the run of `head` at `hba`.
    fn put_summary(&mut self, head: Head, hba: u64, lbas: &[u32]) -> Result<()> {
        IndexSink {
            index: &mut self.index,
            segs: &mut self.segs,
            mapped: &mut self.mapped,
        }
        .put_summary(head, hba, lbas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bio::MemDisk;
    use crate::platform::StdCrypto;

    /// The exact count of a tight flush names, for every buffered block
    /// that has an old version, the usage entry of the segment holding it
    /// (and nothing for blocks never written): from any slot on.
    #[test]
    fn old_entries_of_wbuf_names_the_usage_entry_of_every_old_version() {
        let cfg = DiskConfig {
            layout: LayoutConfig {
                seg_blocks: 8,
                op_percent: 10,
                journal_blocks: 64,
                index_blocks: 520,
            },
            write_buffer_blocks: 8,
            clean_batch_segments: 2,
            meta_write_buffer_blocks: 8,
            cache_budget_bytes: 0,
            ..DiskConfig::default()
        };
        let dev = Arc::new(MemDisk::new(2 + 64 + 520 + 64 * 8).unwrap());
        let mut d = MlsDisk::create_with_mem_index(
            dev,
            Arc::new(StdCrypto),
            cfg,
            Box::new(NoAnchor),
            MemIndexStore::new(),
        )
        .unwrap();
        let blk = [0x5au8; BLOCK_SIZE];
        // 240 blocks over 30 segments: three usage entries (12 segments
        // each).
        for l in 0..240 {
            d.write(l, &blk).unwrap();
        }
        d.sync().unwrap();
        let buffered = [150u64, 3, 77, 239, 300, 100];
        for l in buffered {
            d.write(l, &blk).unwrap();
        }
        assert_eq!(d.wbuf.len(), buffered.len());
        for from in [0usize, 2, 5] {
            let mut want: Vec<u64> = Vec::new();
            for l in &buffered[from..] {
                if let Some(r) = d.index.get(*l).unwrap() {
                    want.push(u64::from(d.segs.seg_of(r.hba) / meta::SEGS_PER_ENTRY));
                }
            }
            let mut got = d.old_entries_of_wbuf(from).unwrap();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "from slot {from}");
        }
        let mut all = d.old_entries_of_wbuf(0).unwrap();
        all.sort_unstable();
        all.dedup();
        assert!(all.len() >= 2, "{all:?}: the writes span one entry only");
    }
}
