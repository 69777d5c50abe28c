//! The table manifest: what `open` needs of every live table, in a few
//! blocks, so that open reads no table footer.
//!
//! The manifest is one sealed log of the store (tag [`TAG_MANIFEST`]),
//! rewritten (a new log, the old one deleted) in the transaction of every
//! commit that changed the set of tables. The tree's header (in the
//! store's user state, committed in the same record) names it: its log,
//! its length in blocks and its number of tables. Both change in one store
//! commit, so after a crash the header and the manifest are both of the
//! old commit or both of the new one.
//!
//! Every block starts with the common header (`format`): kind 6
//! (manifest), `count` = the block's index in the log, the tree's value
//! size, `owner` = the manifest log's key. The payloads (4072 bytes each)
//! make one byte stream:
//!
//! ```text
//!   0..4    tables u32        4..8  reserved (0)
//!   then one entry per table (L0 newest first, then each level by key):
//!   0..8    log key u64 (the store's id of the table's log)
//!   8..16   seq u64           16..24  records u64     24..32  tombstones u64
//!   32..40  min key u64       40..48  max key u64
//!   48..52  data blocks u32   52..56  index blocks u32  56..60  bloom blocks u32
//!   60      level u8          61      bloom probes u8   62..64  reserved (0)
//!   64..    index directory: the last key of each index block (u64 each)
//!   then    FNV-1a 64 of every stream byte before it, u64
//!   then    zeros to the end of the last block
//! ```
//!
//! The store encrypts and authenticates the blocks; the checksum and the
//! checks here catch our own bugs and format mismatches (any changed byte
//! is refused), never replace the MAC.

use alloc::vec::Vec;

use super::format::{self, BlockKind, Header, HEADER_LEN};
use super::table::TableInfo;
use super::TAG_BASE;
use crate::bio::BLOCK_SIZE;
use crate::codec::{self, get_u32, get_u64, get_u8, put};
use crate::{ensure, Error, ErrorKind, Result};

/// The tag of the manifest log.
pub const TAG_MANIFEST: u64 = TAG_BASE | 0xFE;
/// The fixed part of an entry (before its index directory).
pub const ENTRY_FIXED: usize = 64;
/// Bytes of the stream that are not entries: the table count and the
/// checksum.
const STREAM_FIXED: usize = 16;
/// The most blocks of one manifest (the block index is a `u16`).
pub const MAX_BLOCKS: usize = u16::MAX as usize;

/// The encoded size of `info`'s entry.
pub fn entry_len(info: &TableInfo) -> usize {
    ENTRY_FIXED.saturating_add(info.index_dir.len().saturating_mul(8))
}

/// The blocks of a manifest whose entries take `entry_bytes` in all.
pub fn blocks_for(entry_bytes: usize) -> usize {
    entry_bytes
        .saturating_add(STREAM_FIXED)
        .div_ceil(format::PAYLOAD_LEN)
}

fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

const FNV_START: u64 = 0xCBF2_9CE4_8422_2325;

/// Encodes the manifest of `tables` (log key, table) into whole blocks,
/// owned by the manifest log of key `owner`; returns the blocks.
pub fn emit<'a>(
    owner: u64,
    value_size: usize,
    tables: impl Iterator<Item = (u64, &'a TableInfo)> + Clone,
) -> Result<Vec<u8>> {
    let mut n: u32 = 0;
    let mut bytes = STREAM_FIXED;
    for (_, t) in tables.clone() {
        n = n
            .checked_add(1)
            .ok_or(Error::new(ErrorKind::InvalidArgument, "manifest: tables"))?;
        bytes = bytes.saturating_add(entry_len(t));
    }
    let mut s = Vec::new();
    s.try_reserve_exact(bytes)?;
    s.extend_from_slice(&n.to_le_bytes());
    s.extend_from_slice(&[0; 4]);
    for (key, t) in tables {
        ensure!(
            t.index_dir.len() == t.n_index as usize,
            InvalidArgument,
            "manifest: index directory size"
        );
        for v in [key, t.seq, t.records, t.tombstones, t.min_key, t.max_key] {
            s.extend_from_slice(&v.to_le_bytes());
        }
        for v in [t.n_data, t.n_index, t.n_bloom] {
            s.extend_from_slice(&v.to_le_bytes());
        }
        s.extend_from_slice(&[t.level, t.bloom_k, 0, 0]);
        for k in &t.index_dir {
            s.extend_from_slice(&k.to_le_bytes());
        }
    }
    let sum = fnv1a(FNV_START, &s);
    s.extend_from_slice(&sum.to_le_bytes());
    let nblocks = s.len().div_ceil(format::PAYLOAD_LEN);
    ensure!(
        nblocks <= MAX_BLOCKS,
        InvalidArgument,
        "manifest: too many tables"
    );
    let mut out = Vec::new();
    out.try_reserve_exact(nblocks * BLOCK_SIZE)?;
    out.resize(nblocks * BLOCK_SIZE, 0);
    for (i, (blk, chunk)) in out
        .chunks_exact_mut(BLOCK_SIZE)
        .zip(s.chunks(format::PAYLOAD_LEN))
        .enumerate()
    {
        Header {
            kind: BlockKind::Manifest,
            count: i as u16,
            value_size: value_size as u16,
            owner,
        }
        .emit(blk)?;
        put(blk, HEADER_LEN, chunk)?;
    }
    Ok(out)
}

/// Decodes a manifest: `blocks` are the whole manifest log of key
/// `owner`, which the tree's header says holds `tables` tables. Calls `f`
/// with each entry's log key and table, in order. Anything that does not
/// match (a block of another log or out of place, a count, a reserved
/// byte, the checksum, a table's own checks) is `Corrupted`.
pub fn parse(
    blocks: &[u8],
    owner: u64,
    value_size: usize,
    tables: u32,
    f: &mut dyn FnMut(u64, TableInfo) -> Result<()>,
) -> Result<()> {
    ensure!(
        !blocks.is_empty() && blocks.len() % BLOCK_SIZE == 0,
        Corrupted,
        "manifest: length"
    );
    let nblocks = blocks.len() / BLOCK_SIZE;
    ensure!(nblocks <= MAX_BLOCKS, Corrupted, "manifest: length");
    let mut s = Vec::new();
    s.try_reserve_exact(nblocks * format::PAYLOAD_LEN)?;
    for (i, blk) in blocks.chunks_exact(BLOCK_SIZE).enumerate() {
        let h = Header::expect(blk, BlockKind::Manifest, value_size, owner)?;
        ensure!(
            usize::from(h.count) == i,
            Corrupted,
            "manifest: block out of place"
        );
        let payload = blk
            .get(HEADER_LEN..)
            .ok_or(Error::new(ErrorKind::Corrupted, "manifest: block"))?;
        s.extend_from_slice(payload);
    }
    ensure!(
        get_u32(&s, 0)? == tables && get_u32(&s, 4)? == 0,
        Corrupted,
        "manifest: table count differs from the tree header"
    );
    let mut off = 8usize;
    for _ in 0..tables {
        let field = |i: usize| get_u64(&s, off + 8 * i);
        let key = field(0)?;
        let n_index = get_u32(&s, off + 52)?;
        ensure!(
            n_index as usize <= super::table::MAX_INDEX_BLOCKS,
            Corrupted,
            "manifest: index block count"
        );
        ensure!(
            codec::get_u16(&s, off + 62)? == 0,
            Corrupted,
            "manifest: reserved bytes set"
        );
        let mut dir = Vec::new();
        dir.try_reserve_exact(n_index as usize)?;
        for j in 0..n_index as usize {
            dir.push(get_u64(&s, off + ENTRY_FIXED + 8 * j)?);
        }
        let info = TableInfo {
            seq: field(1)?,
            records: field(2)?,
            tombstones: field(3)?,
            min_key: field(4)?,
            max_key: field(5)?,
            n_data: get_u32(&s, off + 48)?,
            n_index,
            n_bloom: get_u32(&s, off + 56)?,
            level: get_u8(&s, off + 60)?,
            bloom_k: get_u8(&s, off + 61)?,
            index_dir: dir,
            value_size,
        };
        info.check(None)?;
        off = off.saturating_add(entry_len(&info));
        f(key, info)?;
    }
    let sum = get_u64(&s, off)?;
    let body = s
        .get(..off)
        .ok_or(Error::new(ErrorKind::Corrupted, "manifest: short"))?;
    ensure!(
        sum == fnv1a(FNV_START, body),
        Corrupted,
        "manifest: checksum"
    );
    let end = off + 8;
    ensure!(
        s.get(end..).is_some_and(|t| t.iter().all(|&b| b == 0))
            && end.div_ceil(format::PAYLOAD_LEN) == nblocks,
        Corrupted,
        "manifest: bytes after its end"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn table(seq: u64, level: u8, n_data: u32, lo: u64) -> TableInfo {
        let n_index = (n_data as usize).div_ceil(super::super::table::INDEX_ENTRIES);
        let hi = lo + u64::from(n_data) * 10 - 1;
        let mut dir = vec![];
        for j in 0..n_index {
            let last_block = ((j + 1) * super::super::table::INDEX_ENTRIES).min(n_data as usize);
            dir.push(lo + last_block as u64 * 10 - 1);
        }
        TableInfo {
            seq,
            level,
            records: u64::from(n_data) * 10,
            tombstones: 3,
            min_key: lo,
            max_key: hi,
            n_data,
            n_index: n_index as u32,
            n_bloom: 2,
            bloom_k: 7,
            index_dir: dir,
            value_size: 8,
        }
    }

    fn sample(n: usize) -> Vec<(u64, TableInfo)> {
        (0..n)
            .map(|i| {
                let nd = 1 + (i as u32 * 397) % 1500;
                (
                    100 + i as u64 * 3,
                    table(i as u64 + 1, (i % 7) as u8, nd, i as u64 * 100_000),
                )
            })
            .collect()
    }

    fn parse_all(b: &[u8], owner: u64, n: u32) -> Result<Vec<(u64, TableInfo)>> {
        let mut v = vec![];
        parse(b, owner, 8, n, &mut |k, t| {
            v.push((k, t));
            Ok(())
        })?;
        Ok(v)
    }

    #[test]
    fn round_trip() {
        for n in [0usize, 1, 2, 57, 300] {
            let ts = sample(n);
            let b = emit(42, 8, ts.iter().map(|(k, t)| (*k, t))).unwrap();
            let bytes: usize = ts.iter().map(|(_, t)| entry_len(t)).sum();
            assert_eq!(b.len(), blocks_for(bytes) * BLOCK_SIZE, "{n} tables");
            assert_eq!(parse_all(&b, 42, n as u32).unwrap(), ts, "{n} tables");
        }
        // 300 tables of this sample take several blocks.
        let ts = sample(300);
        let b = emit(42, 8, ts.iter().map(|(k, t)| (*k, t))).unwrap();
        assert!(b.len() / BLOCK_SIZE >= 5);
    }

    #[test]
    fn mismatches_are_refused() {
        let ts = sample(60);
        let b = emit(42, 8, ts.iter().map(|(k, t)| (*k, t))).unwrap();
        assert!(parse_all(&b, 43, 60).is_err(), "another owner");
        assert!(parse_all(&b, 42, 59).is_err(), "another count");
        assert!(parse(&b, 42, 16, 60, &mut |_, _| Ok(())).is_err());
        // A block dropped, swapped or added.
        assert!(parse_all(&b[BLOCK_SIZE..], 42, 60).is_err());
        let mut sw = b.clone();
        let (x, y) = sw.split_at_mut(BLOCK_SIZE);
        x.swap_with_slice(&mut y[..BLOCK_SIZE]);
        assert!(parse_all(&sw, 42, 60).is_err());
        let mut more = b.clone();
        more.extend_from_slice(&b[..BLOCK_SIZE]);
        assert!(parse_all(&more, 42, 60).is_err());
        assert!(parse_all(&[], 42, 0).is_err());
        // An entry that fails the table's own checks, checksum recomputed
        // by encoding it: refused.
        let mut bad = ts.clone();
        bad[5].1.min_key = bad[5].1.max_key + 1;
        let b = emit(42, 8, bad.iter().map(|(k, t)| (*k, t))).unwrap();
        assert!(parse_all(&b, 42, 60).is_err());
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let ts = sample(70);
        let b = emit(9, 8, ts.iter().map(|(k, t)| (*k, t))).unwrap();
        assert!(b.len() / BLOCK_SIZE >= 2);
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert!(parse_all(&c, 9, 70).is_err(), "flip at byte {i} accepted");
        }
    }
}
