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
//! blocks, so freeing one block moves at most `(100 - op) / op` blocks.

use crate::{bail, ensure, Error, ErrorKind, Result};

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
    /// Chunk (index) region size in blocks; 0 = `max(total * 6 / 100, 1024)`.
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
    /// The layout of a new disk on a device of `total` blocks.
    pub fn compute(total: u64, cfg: &LayoutConfig) -> Result<Self> {
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
        let journal_len = match cfg.journal_blocks {
            0 => (total / 1024).clamp(128, 16384),
            n => n,
        };
        let chunk_len = match cfg.index_blocks {
            0 => (total / 100 * 6).max(1024),
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
            bail!(
                Corrupted,
                "backing device is smaller than the disk (truncated?)"
            );
        }
        Ok(())
    }

    /// Little-endian encoding, [`GEOMETRY_LEN`] bytes.
    pub fn encode(&self, out: &mut [u8]) -> Result<()> {
        let out = out
            .get_mut(..GEOMETRY_LEN)
            .ok_or(Error::new(ErrorKind::InvalidArgument, "geometry buffer"))?;
        let mut w = super::codec::Writer::new(out);
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

    /// Parses an encoding made by [`Geometry::encode`] (not validated).
    pub fn decode(b: &[u8]) -> Result<Self> {
        let mut r = super::codec::Reader::new(b);
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
        assert_eq!(g.chunk_len, 262_144 / 100 * 6);
        assert!(g.capacity < g.data_blocks());
        assert!(g.data_start + g.data_blocks() <= 262_144);
        g.validate(262_144).unwrap();
        let mut b = [0u8; GEOMETRY_LEN];
        g.encode(&mut b).unwrap();
        assert_eq!(Geometry::decode(&b).unwrap(), g);
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
        g.encode(&mut b).unwrap();
        for i in 0..GEOMETRY_LEN {
            let mut c = b;
            c[i] ^= 0x40;
            let ok = Geometry::decode(&c).and_then(|d| d.validate(1 << 18));
            assert!(ok.is_err(), "byte {i}");
        }
        // A truncated device is refused.
        assert!(g.validate((1 << 18) - 1).is_err());
    }
}
