//! Disk layout: where each region lives on the backing device, computed
//! from its size and the configuration.
//!
//! ```text
//!   block 0, 1        superblock slots A/B (AuthBlob)
//!   journal           MacChain ring of the log store (its metadata journal)
//!   chunks            chunk region of the log store (LSM WAL and tables)
//!   data              the data log: `nseg` segments of `seg_blocks` blocks
//!   (tail)            fewer than `seg_blocks` blocks left unused
//! ```
//!
//! # Over-provisioning
//!
//! The logical capacity is smaller than the data region so the segment
//! cleaner always finds a victim with at least one invalid block and has
//! room to move its valid blocks:
//!
//! `capacity = (nseg - RESERVE_SEGMENTS) * seg_blocks * (100 - op_percent) / 100`
//!
//! `RESERVE_SEGMENTS` (4) covers the open segment, the cleaner's destination
//! and the pigeonhole slack; `op_percent` (default 10) bounds the cleaning
//! cost: the greedy victim has at most `100 - op_percent` percent valid
//! blocks, so freeing one block moves at most `(100 - op) / op` blocks
//! (the cost-benefit cleaner stays within the same bound, see `segment`).
//!
//! # The index (chunk) region
//!
//! Sized for the shape the LSM-tree can take ([`IndexShape`]), with
//! `K = (total - 2 - journal) * (100 - op) / 100` keys (at least the
//! logical capacity) plus the segment metadata of a data region of
//! `total - 2 - journal` blocks (a summary entry per 12 blocks of each
//! segment, a usage entry per 12 segments: `meta::max_entries`), and `P(n)` the blocks of `n` records in tables: data
//! blocks of `floor(4072 / record)` records, an index block per 509 data
//! blocks, `bits` bloom bits per key in blocks of 32576 bits, a footer per
//! table, and a Merkle node of the log store per 71 blocks:
//!
//! ```text
//!   levels = 1 + the levels below L1 whose upper level's target < K
//!   core   = (levels + 1) * P(K)          every level may hold every key, plus
//!                                         one compaction's output
//!          + l0_tables * P(min(E, K))     L0 at the stall limit, and the
//!                                         memtable being flushed
//!   wal    = 2 * 3 * W                    two WAL generations of W blocks,
//!                                         each with up to two Merkle nodes
//!                                         rewritten per block (a sync each)
//!   index  = max(1024, 5/4 * min(core + wal, 8/5 * core))
//! ```
//!
//! with the shape fitted to the disk first ([`IndexShape::fit`]: memtables
//! of at most `K / 8` entries, a WAL of at most two memtables of blocks),
//! as the disk fits its LSM tuning at open.
//!
//! (`min` because the tree caps `W` at a sixteenth of the region.) The
//! last quarter covers whole chunks per log, the foreground reserve the
//! tree keeps when it starts a compaction, and the slack of its bounds.
//! A compaction's inputs stay pinned until the next commit; the tree only
//! starts one that fits in the chunks free now, and asks for a commit
//! otherwise (`DiskIndex::room_for`).

use crate::{bail, ensure, Cause, Error, ErrorKind, Result};

/// Segments kept out of the logical capacity (open segment, cleaner
/// destination, slack). See the module documentation.
pub const RESERVE_SEGMENTS: u32 = 4;
/// Blocks of the two superblock slots at the start of the device.
pub const SUPERBLOCK_BLOCKS: u64 = 2;

/// Sizing knobs of a new disk. Zero means "compute from the device size".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayoutConfig {
    /// Blocks per data segment (the unit of cleaning). Default 256 (1 MiB).
    pub seg_blocks: u32,
    /// Over-provisioning reserve of the data region, in percent (1..=50).
    pub op_percent: u8,
    /// Journal region size in blocks; 0 = `clamp(total / 1024, 128, 16384)`.
    pub journal_blocks: u64,
    /// Chunk (index) region size in blocks; 0 = sized for the index's
    /// shape (see the module documentation), what the CLI and the kernel
    /// module always use. An explicit size is for tests: one too small
    /// for the LSM configuration's space bounds (the foreground's room
    /// for a memtable, the work in progress and the next compaction) never
    /// admits a compaction, and writes to a full disk then end in
    /// `NoSpace` (`core/tests/disk_index_pace.rs`; nothing checks this at
    /// create).
    pub index_blocks: u64,
}

impl Default for LayoutConfig {
    fn default() -> Self {
        Self {
            seg_blocks: 256,
            op_percent: 10,
            journal_blocks: 0,
            index_blocks: 0,
        }
    }
}

/// The tuning of the index that the chunk region is sized for (see the
/// module documentation); the defaults are the LSM-tree's defaults with
/// the disk's 56-byte records, before the disk fits them to its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexShape {
    /// Bytes of one encoded record (key, flag and value).
    pub record_bytes: u64,
    /// Entries of a memtable (`E`).
    pub memtable_entries: u64,
    /// WAL blocks of a memtable (`W`).
    pub wal_max_blocks: u64,
    /// L0 tables at most: the stall limit plus the one being flushed.
    pub l0_tables: u64,
    /// Record target of L1.
    pub l1_max_records: u64,
    /// Size ratio between levels.
    pub level_ratio: u64,
    /// Bloom filter bits per key.
    pub bloom_bits_per_key: u64,
    /// Records per table.
    pub table_max_records: u64,
}

impl Default for IndexShape {
    fn default() -> Self {
        Self {
            record_bytes: 8 + 1 + 56,
            memtable_entries: 32 * 1024,
            wal_max_blocks: 2048,
            l0_tables: 2 * 4 + 1,
            l1_max_records: 256 * 1024,
            level_ratio: 10,
            bloom_bits_per_key: 10,
            table_max_records: 64 * 1024,
        }
    }
}

/// Payload bytes of an LSM block (a block less its 24-byte header).
const LSM_PAYLOAD: u64 = 4096 - 24;
/// Index entries per LSM index block.
const LSM_INDEX_ENTRIES: u64 = LSM_PAYLOAD / 8;
/// Entries of a Merkle node of the log store, less one (a bound of the
/// nodes above `n` blocks is `n / 71` plus one per level).
const NODE_SPAN: u64 = 71;

impl IndexShape {
    /// Blocks of `n` records in tables, with the log store's nodes.
    fn table_blocks(&self, n: u64) -> u64 {
        let rpb = (LSM_PAYLOAD / self.record_bytes.max(1)).max(1);
        let data = n.div_ceil(rpb);
        let index = data.div_ceil(LSM_INDEX_ENTRIES);
        let bloom = n
            .saturating_mul(self.bloom_bits_per_key)
            .div_ceil(LSM_PAYLOAD * 8);
        let tables = n.div_ceil(self.table_max_records.max(1)).max(1);
        let b = data + index + bloom + tables;
        b + b.div_ceil(NODE_SPAN) + 2
    }

    /// The shape fitted to an index of at most `keys` keys: memtables of
    /// at most an eighth of the keys (at least 256 entries; a larger one
    /// only makes L0 tables that each hold every key), and a WAL of at
    /// most two memtables' worth of full blocks (at least 8).
    pub fn fit(&self, keys: u64) -> Self {
        let rpb = (LSM_PAYLOAD / self.record_bytes.max(1)).max(1);
        let e = self.memtable_entries.min((keys / 8).max(256));
        let w = self
            .wal_max_blocks
            .min(e.div_ceil(rpb).saturating_mul(2).max(8));
        Self {
            memtable_entries: e,
            wal_max_blocks: w,
            ..*self
        }
    }

    /// The chunk region, in blocks, for `keys` keys (module documentation),
    /// with the shape fitted to them ([`IndexShape::fit`]).
    pub fn index_blocks(&self, keys: u64) -> u64 {
        let fitted = self.fit(keys);
        fitted.index_blocks_of_fitted(keys)
    }

    fn index_blocks_of_fitted(&self, keys: u64) -> u64 {
        let mut levels = 1u64;
        let mut target = self.l1_max_records.max(1);
        while target < keys && levels < 6 {
            levels += 1;
            target = target.saturating_mul(self.level_ratio.max(2));
        }
        let core = (levels + 1)
            .saturating_mul(self.table_blocks(keys))
            .saturating_add(
                self.l0_tables
                    .saturating_mul(self.table_blocks(self.memtable_entries.min(keys))),
            );
        let wal = self.wal_max_blocks.saturating_mul(6);
        let with_wal = core.saturating_add(wal).min(core.saturating_mul(8) / 5);
        (with_wal.saturating_mul(5) / 4).max(1024)
    }
}

/// The regions of a disk, in blocks of the backing device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Blocks of the backing device when the disk was made.
    pub total_blocks: u64,
    /// First block of the journal region.
    pub journal_start: u64,
    /// Blocks of the journal region.
    pub journal_len: u64,
    /// First block of the chunk region.
    pub chunk_start: u64,
    /// Blocks of the chunk region.
    pub chunk_len: u64,
    /// First block of the data region.
    pub data_start: u64,
    /// Blocks per segment.
    pub seg_blocks: u32,
    /// Segments in the data region.
    pub nseg: u32,
    /// Logical capacity in blocks (what the user sees).
    pub capacity: u64,
    /// Over-provisioning reserve in percent.
    pub op_percent: u8,
}

/// Encoded size of a [`Geometry`].
pub const GEOMETRY_LEN: usize = 8 * 7 + 4 + 4 + 8;

impl Geometry {
    /// The layout of a new disk on a device of `total` blocks, its index
    /// region sized for the default [`IndexShape`].
    pub fn compute(total: u64, cfg: &LayoutConfig) -> Result<Self> {
        Self::compute_for(total, cfg, &IndexShape::default())
    }

    /// Keys the index of a disk of `total` blocks may hold at most: the
    /// capacity it would have without an index region.
    pub fn max_keys(total: u64, cfg: &LayoutConfig) -> u64 {
        let journal_len = Self::journal_len(total, cfg);
        total
            .saturating_sub(SUPERBLOCK_BLOCKS + journal_len)
            .saturating_mul(u64::from(100 - cfg.op_percent.min(100)))
            / 100
    }

    /// Entries the index of a disk of `total` blocks may hold at most:
    /// [`Geometry::max_keys`] records and the segment metadata of a data
    /// region as large as the device (usage table and summaries).
    pub fn max_index_entries(total: u64, cfg: &LayoutConfig) -> u64 {
        let data = total.saturating_sub(SUPERBLOCK_BLOCKS + Self::journal_len(total, cfg));
        Self::max_keys(total, cfg).saturating_add(super::meta::max_entries(data, cfg.seg_blocks))
    }

    fn journal_len(total: u64, cfg: &LayoutConfig) -> u64 {
        match cfg.journal_blocks {
            0 => (total / 1024).clamp(128, 16384),
            n => n,
        }
    }

    /// [`Geometry::compute`] with the index region sized for `shape`.
    pub fn compute_for(total: u64, cfg: &LayoutConfig, shape: &IndexShape) -> Result<Self> {
        ensure!(
            cfg.seg_blocks >= 4 && cfg.seg_blocks <= 65536,
            InvalidArgument,
            "segment size must be 4..=65536 blocks"
        );
        ensure!(
            (1..=50).contains(&cfg.op_percent),
            InvalidArgument,
            "over-provisioning must be 1..=50 percent"
        );
        let journal_len = Self::journal_len(total, cfg);
        let chunk_len = match cfg.index_blocks {
            0 => shape.index_blocks(Self::max_index_entries(total, cfg)),
            n => n,
        };
        let journal_start = SUPERBLOCK_BLOCKS;
        let chunk_start = journal_start
            .checked_add(journal_len)
            .ok_or(Error::new(ErrorKind::InvalidArgument, "journal too large"))?;
        let data_start = chunk_start
            .checked_add(chunk_len)
            .ok_or(Error::new(ErrorKind::InvalidArgument, "index too large"))?;
        let Some(data_len) = total.checked_sub(data_start) else {
            bail!(NoSpace, "device too small for the metadata regions");
        };
        let nseg = u32::try_from(data_len / u64::from(cfg.seg_blocks))
            .map_err(|_| Error::new(ErrorKind::InvalidArgument, "too many segments"))?;
        ensure!(
            nseg > RESERVE_SEGMENTS + 1,
            NoSpace,
            "device too small: fewer than 6 data segments"
        );
        let capacity = u64::from(nseg - RESERVE_SEGMENTS)
            * u64::from(cfg.seg_blocks)
            * u64::from(100 - cfg.op_percent)
            / 100;
        ensure!(
            capacity < u64::from(u32::MAX),
            InvalidArgument,
            "logical capacity above 2^32 - 1 blocks"
        );
        let g = Self {
            total_blocks: total,
            journal_start,
            journal_len,
            chunk_start,
            chunk_len,
            data_start,
            seg_blocks: cfg.seg_blocks,
            nseg,
            capacity,
            op_percent: cfg.op_percent,
        };
        g.validate(total)?;
        Ok(g)
    }

    /// Blocks of the data region in whole segments.
    pub fn data_blocks(&self) -> u64 {
        u64::from(self.nseg) * u64::from(self.seg_blocks)
    }

    /// Checks that the regions are ordered, fit in a device of `dev_blocks`
    /// blocks, and that the capacity follows the over-provisioning rule.
    pub fn validate(&self, dev_blocks: u64) -> Result<()> {
        let bad = |m| Err(Error::new(ErrorKind::Corrupted, m));
        if self.seg_blocks < 4 || self.seg_blocks > 65536 || !(1..=50).contains(&self.op_percent) {
            return bad("geometry: bad segment size or reserve");
        }
        if self.journal_start != SUPERBLOCK_BLOCKS
            || self.journal_len == 0
            || self.chunk_len == 0
            || self.journal_start.checked_add(self.journal_len) != Some(self.chunk_start)
            || self.chunk_start.checked_add(self.chunk_len) != Some(self.data_start)
        {
            return bad("geometry: regions out of order");
        }
        match self.data_start.checked_add(self.data_blocks()) {
            Some(end) if end <= self.total_blocks => {}
            _ => return bad("geometry: data region past the end"),
        }
        if self.nseg <= RESERVE_SEGMENTS + 1 {
            return bad("geometry: too few segments");
        }
        let cap = u64::from(self.nseg - RESERVE_SEGMENTS)
            * u64::from(self.seg_blocks)
            * u64::from(100 - self.op_percent)
            / 100;
        if cap != self.capacity {
            return bad("geometry: capacity does not follow the reserve rule");
        }
        if self.total_blocks > dev_blocks {
            return Err(Error::new(
                ErrorKind::Corrupted,
                "backing device is smaller than the disk (truncated?)",
            )
            .with_cause(Cause::Truncated));
        }
        Ok(())
    }

    /// Little-endian encoding, [`GEOMETRY_LEN`] bytes.
    pub fn emit(&self, out: &mut [u8]) -> Result<()> {
        let out = out
            .get_mut(..GEOMETRY_LEN)
            .ok_or(Error::new(ErrorKind::InvalidArgument, "geometry buffer"))?;
        let mut w = crate::codec::Writer::new(out);
        w.u64(self.total_blocks)?;
        w.u64(self.journal_start)?;
        w.u64(self.journal_len)?;
        w.u64(self.chunk_start)?;
        w.u64(self.chunk_len)?;
        w.u64(self.data_start)?;
        w.u32(self.seg_blocks)?;
        w.u32(self.nseg)?;
        w.u64(self.capacity)?;
        w.u64(u64::from(self.op_percent))?;
        Ok(())
    }

    /// Parses an encoding made by [`Geometry::emit`] (not validated).
    pub fn parse(b: &[u8]) -> Result<Self> {
        let mut r = crate::codec::Reader::new(b);
        let g = Self {
            total_blocks: r.u64()?,
            journal_start: r.u64()?,
            journal_len: r.u64()?,
            chunk_start: r.u64()?,
            chunk_len: r.u64()?,
            data_start: r.u64()?,
            seg_blocks: r.u32()?,
            nseg: r.u32()?,
            capacity: r.u64()?,
            op_percent: u8::try_from(r.u64()?)
                .map_err(|_| Error::new(ErrorKind::Corrupted, "geometry: reserve"))?,
        };
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_of_1gib() {
        let g = Geometry::compute(262_144, &LayoutConfig::default()).unwrap();
        assert_eq!(g.journal_start, 2);
        assert_eq!(g.journal_len, 256);
        let keys = Geometry::max_index_entries(262_144, &LayoutConfig::default());
        assert!(keys >= g.capacity + g.data_blocks() / 12);
        assert_eq!(g.chunk_len, IndexShape::default().index_blocks(keys));
        assert!(g.capacity < g.data_blocks());
        assert!(g.data_start + g.data_blocks() <= 262_144);
        g.validate(262_144).unwrap();
        let mut b = [0u8; GEOMETRY_LEN];
        g.emit(&mut b).unwrap();
        assert_eq!(Geometry::parse(&b).unwrap(), g);
    }

    #[test]
    fn index_region_fits_the_tree_shape() {
        let shape = IndexShape::default();
        let mut last = 0;
        for total in [1u64 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 24] {
            let cfg = LayoutConfig::default();
            let g = Geometry::compute(total, &cfg).unwrap();
            let keys = Geometry::max_index_entries(total, &cfg);
            let fit = shape.fit(keys);
            assert!(keys >= g.capacity, "{total}");
            // Room for every level, one compaction's output and L0.
            let floor = 2 * fit.table_blocks(keys)
                + fit.l0_tables * fit.table_blocks(fit.memtable_entries.min(keys));
            assert!(g.chunk_len > floor, "{total}: {} <= {floor}", g.chunk_len);
            assert!(g.chunk_len >= last, "{total}: the region shrank");
            last = g.chunk_len;
            // The fitted memtable never exceeds an eighth of the keys
            // (beyond the 256-entry floor), nor the configured one.
            assert!(fit.memtable_entries <= (keys / 8).max(256));
            assert!(fit.memtable_entries <= shape.memtable_entries);
        }
    }

    #[test]
    fn too_small_and_bad_config() {
        assert_eq!(
            Geometry::compute(1000, &LayoutConfig::default())
                .unwrap_err()
                .kind(),
            ErrorKind::NoSpace
        );
        let c = LayoutConfig {
            op_percent: 0,
            ..LayoutConfig::default()
        };
        assert!(Geometry::compute(1 << 20, &c).is_err());
        let c = LayoutConfig {
            seg_blocks: 1,
            ..LayoutConfig::default()
        };
        assert!(Geometry::compute(1 << 20, &c).is_err());
    }

    #[test]
    fn validate_rejects_tampered_fields() {
        let g = Geometry::compute(1 << 18, &LayoutConfig::default()).unwrap();
        let mut b = [0u8; GEOMETRY_LEN];
        g.emit(&mut b).unwrap();
        for i in 0..GEOMETRY_LEN {
            let mut c = b;
            c[i] ^= 0x40;
            let ok = Geometry::parse(&c).and_then(|d| d.validate(1 << 18));
            assert!(ok.is_err(), "byte {i}");
        }
        // A truncated device is refused.
        assert!(g.validate((1 << 18) - 1).is_err());
    }
}
