//! The block header and record encoding shared by every LSM block.
//!
//! Every block the tree writes (table data, index, bloom, footer, WAL and
//! manifest blocks) is exactly [`BLOCK_SIZE`] bytes and starts with a 24-byte header:
//!
//! ```text
//!   0..4    magic  b"MLSM"
//!   4       format version (1)
//!   5       kind   (1 data, 2 index, 3 bloom, 4 footer, 5 wal, 6 manifest)
//!   6..8    count  u16: records / entries in this block (kind-specific)
//!   8..10   value size u16 (LsmValue::SIZE of the tree that wrote it)
//!   10..16  reserved, zero
//!   16..24  owner  u64: the table's sequence number, the WAL generation, or
//!                       the manifest log's key
//! ```
//!
//! A record (in data and WAL blocks) is `key u64 | flag u8 | value`, where the
//! flag is 0 for a tombstone (value bytes all zero) and 1 for a value. All
//! integers are little-endian. Unused bytes of a block are zero.
//!
//! The blocks are stored in logs of the `TxLogStore`, which encrypts and
//! authenticates them (integrity and freshness come from its Merkle tree);
//! the checks here catch format mismatches and our own bugs, never replace
//! the MAC.

use crate::bio::BLOCK_SIZE;
use crate::codec::{get_u16, get_u64, get_u8, put};
use crate::{bail, ensure, Error, ErrorKind, Result};

/// Magic bytes at the start of every LSM block.
pub const MAGIC: [u8; 4] = *b"MLSM";
/// The LSM block format version this code writes and reads.
pub const VERSION: u8 = 1;
/// The length of the common block header.
pub const HEADER_LEN: usize = 24;
/// The bytes of a block after its header.
pub const PAYLOAD_LEN: usize = BLOCK_SIZE - HEADER_LEN;

/// The kind of an LSM block (byte 5 of the header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BlockKind {
    /// Sorted records of a table.
    Data = 1,
    /// The last key of each data block of a table.
    Index = 2,
    /// A part of a table's blocked bloom filter.
    Bloom = 3,
    /// The last block of a table: its metadata.
    Footer = 4,
    /// Records of the write-ahead log.
    Wal = 5,
    /// A part of the table manifest (see `manifest`).
    Manifest = 6,
}

impl TryFrom<u8> for BlockKind {
    type Error = Error;
    fn try_from(b: u8) -> Result<Self> {
        Ok(match b {
            1 => Self::Data,
            2 => Self::Index,
            3 => Self::Bloom,
            4 => Self::Footer,
            5 => Self::Wal,
            6 => Self::Manifest,
            _ => bail!(Corrupted, "lsm block: unknown kind"),
        })
    }
}

/// The parsed common header of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// What the block holds.
    pub kind: BlockKind,
    /// Records or entries in the block.
    pub count: u16,
    /// The value size of the tree that wrote it.
    pub value_size: u16,
    /// Table sequence number or WAL generation.
    pub owner: u64,
}

impl Header {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `block`.
    pub fn emit(&self, block: &mut [u8]) -> Result<()> {
        let h = block
            .get_mut(..HEADER_LEN)
            .ok_or(Error::new(ErrorKind::InvalidArgument, "block too short"))?;
        h.fill(0);
        put(h, 0, &MAGIC)?;
        put(h, 4, &[VERSION, self.kind as u8])?;
        put(h, 6, &self.count.to_le_bytes())?;
        put(h, 8, &self.value_size.to_le_bytes())?;
        put(h, 16, &self.owner.to_le_bytes())?;
        Ok(())
    }

    /// Parses and checks the header of a whole block.
    pub fn parse(block: &[u8]) -> Result<Self> {
        ensure!(
            block.len() == BLOCK_SIZE,
            Corrupted,
            "lsm block: bad length"
        );
        ensure!(
            block.get(0..4) == Some(&MAGIC[..]),
            Corrupted,
            "lsm block: bad magic"
        );
        match block.get(4) {
            Some(&VERSION) => {}
            _ => bail!(Unsupported, "lsm block: unknown format version"),
        }
        let kind = BlockKind::try_from(get_u8(block, 5)?)?;
        ensure!(
            block.get(10..16).is_some_and(|r| r.iter().all(|&b| b == 0)),
            Corrupted,
            "lsm block: reserved header bytes set"
        );
        Ok(Self {
            kind,
            count: get_u16(block, 6)?,
            value_size: get_u16(block, 8)?,
            owner: get_u64(block, 16)?,
        })
    }

    /// Parses the header and checks its kind, value size and owner.
    pub fn expect(block: &[u8], kind: BlockKind, value_size: usize, owner: u64) -> Result<Self> {
        let h = Self::parse(block)?;
        ensure!(h.kind == kind, Corrupted, "lsm block: unexpected kind");
        ensure!(
            usize::from(h.value_size) == value_size,
            Corrupted,
            "lsm block: value size differs"
        );
        ensure!(h.owner == owner, Corrupted, "lsm block: belongs elsewhere");
        Ok(h)
    }
}

/// The encoded length of one record with values of `value_size` bytes.
pub const fn record_len(value_size: usize) -> usize {
    8 + 1 + value_size
}

/// How many records of `value_size` fit in one block.
pub const fn records_per_block(value_size: usize) -> usize {
    PAYLOAD_LEN / record_len(value_size)
}

/// The largest value size a tree accepts (at least 8 records per block).
pub const MAX_VALUE_SIZE: usize = PAYLOAD_LEN / 8 - 9;

/// Flag byte of a tombstone record.
pub const FLAG_TOMBSTONE: u8 = 0;
/// Flag byte of a value record.
pub const FLAG_VALUE: u8 = 1;

/// Checks the `count` records of a data or WAL block: flags valid, tombstone
/// values zero, unused tail zero, and (if `sorted`) keys strictly ascending.
pub fn check_records(block: &[u8], count: usize, value_size: usize, sorted: bool) -> Result<()> {
    let rl = record_len(value_size);
    ensure!(
        count <= records_per_block(value_size),
        Corrupted,
        "lsm block: too many records"
    );
    let used = count * rl;
    let payload = block
        .get(HEADER_LEN..)
        .ok_or(Error::new(ErrorKind::Corrupted, "lsm block: too short"))?;
    let (recs, tail) = payload
        .split_at_checked(used)
        .ok_or(Error::new(ErrorKind::Corrupted, "lsm block: too short"))?;
    ensure!(
        tail.iter().all(|&b| b == 0),
        Corrupted,
        "lsm block: unused bytes set"
    );
    let mut prev: Option<u64> = None;
    for r in recs.chunks_exact(rl) {
        let key = get_u64(r, 0)?;
        let flag = get_u8(r, 8)?;
        let val = r.get(9..).unwrap_or_default();
        match flag {
            FLAG_VALUE => {}
            FLAG_TOMBSTONE => ensure!(
                val.iter().all(|&b| b == 0),
                Corrupted,
                "lsm block: tombstone with a value"
            ),
            _ => bail!(Corrupted, "lsm block: bad record flag"),
        }
        if sorted {
            if let Some(p) = prev {
                ensure!(key > p, Corrupted, "lsm block: keys out of order");
            }
            prev = Some(key);
        }
    }
    Ok(())
}

/// The key and the raw record (flag + value bytes) of record `i` of a block
/// whose records were checked with [`check_records`].
pub fn record_at(block: &[u8], i: usize, value_size: usize) -> Result<(u64, u8, &[u8])> {
    let rl = record_len(value_size);
    let off = i
        .checked_mul(rl)
        .and_then(|o| o.checked_add(HEADER_LEN))
        .ok_or(Error::new(ErrorKind::Corrupted, "record offset overflow"))?;
    let r = block.get(off..off + rl).ok_or(Error::new(
        ErrorKind::Corrupted,
        "lsm block: record past end",
    ))?;
    let key = get_u64(r, 0)?;
    let flag = get_u8(r, 8)?;
    let val = r.get(9..).unwrap_or_default();
    Ok((key, flag, val))
}

/// Encodes a value into its bytes; `None` writes a tombstone.
pub type Encoder<'a> = Option<&'a dyn Fn(&mut [u8])>;

/// Writes record `i` into a block (header not touched).
pub fn emit_record(
    block: &mut [u8],
    i: usize,
    value_size: usize,
    key: u64,
    encode: Encoder<'_>,
) -> Result<()> {
    let rl = record_len(value_size);
    let off = i
        .checked_mul(rl)
        .and_then(|o| o.checked_add(HEADER_LEN))
        .ok_or(Error::new(
            ErrorKind::InvalidArgument,
            "record offset overflow",
        ))?;
    let r = block
        .get_mut(off..off + rl)
        .ok_or(Error::new(ErrorKind::InvalidArgument, "record past block"))?;
    put(r, 0, &key.to_le_bytes())?;
    let (flag, val) = r
        .split_at_mut_checked(9)
        .ok_or(Error::new(ErrorKind::InvalidArgument, "record too short"))?;
    match encode {
        Some(enc) => {
            put(flag, 8, &[FLAG_VALUE])?;
            val.fill(0);
            enc(val);
        }
        None => {
            put(flag, 8, &[FLAG_TOMBSTONE])?;
            val.fill(0);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn header_round_trip_and_flips() {
        let h = Header {
            kind: BlockKind::Index,
            count: 77,
            value_size: 56,
            owner: 0x1122_3344_5566_7788,
        };
        let mut b = vec![0u8; BLOCK_SIZE];
        h.emit(&mut b).unwrap();
        assert_eq!(Header::parse(&b).unwrap(), h);
        assert!(Header::expect(&b, BlockKind::Index, 56, h.owner).is_ok());
        assert!(Header::expect(&b, BlockKind::Data, 56, h.owner).is_err());
        assert!(Header::expect(&b, BlockKind::Index, 48, h.owner).is_err());
        assert!(Header::expect(&b, BlockKind::Index, 56, 1).is_err());
        // Every single-byte change of the header is either rejected or shows
        // up as a different header (count/size/owner are checked by callers).
        for i in 0..HEADER_LEN {
            let mut c = b.clone();
            c[i] ^= 0x40;
            match Header::parse(&c) {
                Err(_) => {}
                Ok(p) => assert_ne!(p, h, "flip at {i} unnoticed"),
            }
        }
        assert!(Header::parse(&b[..100]).is_err());
    }

    #[test]
    fn records_round_trip() {
        let vs = 5;
        let mut b = vec![0u8; BLOCK_SIZE];
        let enc = |o: &mut [u8]| o.copy_from_slice(&[1, 2, 3, 4, 5]);
        emit_record(&mut b, 0, vs, 10, Some(&enc)).unwrap();
        emit_record(&mut b, 1, vs, 11, None).unwrap();
        check_records(&b, 2, vs, true).unwrap();
        assert_eq!(record_at(&b, 0, vs).unwrap(), (10, 1, &[1, 2, 3, 4, 5][..]));
        assert_eq!(record_at(&b, 1, vs).unwrap(), (11, 0, &[0; 5][..]));
        // Out of order, bad flag, tombstone value, tail bytes: all rejected.
        let mut c = b.clone();
        emit_record(&mut c, 1, vs, 9, None).unwrap();
        assert!(check_records(&c, 2, vs, true).is_err());
        assert!(check_records(&c, 2, vs, false).is_ok());
        let mut c = b.clone();
        c[HEADER_LEN + 8] = 7;
        assert!(check_records(&c, 2, vs, true).is_err());
        let mut c = b.clone();
        c[HEADER_LEN + record_len(vs) + 10] = 1;
        assert!(check_records(&c, 2, vs, true).is_err());
        let mut c = b.clone();
        c[BLOCK_SIZE - 1] = 1;
        assert!(check_records(&c, 2, vs, true).is_err());
        assert!(check_records(&b, records_per_block(vs) + 1, vs, true).is_err());
    }
}
