//! Fuzzing entry points of the LSM block decoders (feature `fuzzing`):
//! reached through [`crate::fuzz_api`], never by the engine itself. The
//! value type is the caller's (the fuzz API uses the disk's block record),
//! so this layer does not depend on the disk above it.

use alloc::vec::Vec;

use super::format::{self, BlockKind, Header};
use super::table::{BlockFetch, TableBuilder, TableInfo};
use super::LsmValue;
use super::{bloom, wal};
use crate::bio::BLOCK_SIZE;
use crate::{ensure, Error, ErrorKind, Result};

/// Block `i` of `blocks` (whole 4 KiB blocks back to back).
fn block(blocks: &[u8], i: u64) -> Result<&[u8]> {
    usize::try_from(i)
        .ok()
        .and_then(|i| i.checked_mul(BLOCK_SIZE))
        .and_then(|s| blocks.get(s..s.checked_add(BLOCK_SIZE)?))
        .ok_or(Error::new(
            ErrorKind::InvalidArgument,
            "block past the table",
        ))
}

/// A fetcher over the fuzz input's blocks, without a cache.
struct Direct<'a> {
    blocks: &'a [u8],
}

impl BlockFetch for Direct<'_> {
    fn fetch(
        &mut self,
        pos: u64,
        _kind: BlockKind,
        check: &dyn Fn(&[u8]) -> Result<()>,
    ) -> Result<&[u8]> {
        let b = block(self.blocks, pos)?;
        check(b)?;
        Ok(b)
    }
}

/// Decodes a table: `bytes` are its blocks, the last one the footer. Parses
/// every block's header, checks the data and filter blocks against the
/// footer and looks up keys at and around the table's range and every data
/// block's first key. `Ok` if the footer parses.
pub(crate) fn table<Val: LsmValue>(bytes: &[u8]) -> Result<()> {
    let n = (bytes.len() / BLOCK_SIZE) as u64;
    ensure!(n >= 1, Corrupted, "fuzz: no footer");
    for i in 0..n {
        let _ = Header::parse(block(bytes, i)?);
    }
    let info = TableInfo::parse_footer(block(bytes, n - 1)?, Val::SIZE, n)?;
    let mut keys = Vec::new();
    keys.try_reserve(64)?;
    let (lo, hi) = (info.min_key, info.max_key);
    keys.extend_from_slice(&[
        lo,
        hi,
        lo.wrapping_sub(1),
        hi.wrapping_add(1),
        lo / 2 + hi / 2,
    ]);
    for i in 0..u64::from(info.n_data).min(n) {
        let b = block(bytes, i)?;
        if info.check_data(b).is_ok() {
            let count = TableInfo::data_count(b)?;
            if let Ok((k, _, _)) = format::record_at(b, 0, Val::SIZE) {
                if keys.len() < 64 {
                    keys.push(k);
                }
            }
            let _ = format::record_at(b, count.saturating_sub(1), Val::SIZE);
        }
    }
    let first_bloom = u64::from(info.n_data).saturating_add(u64::from(info.n_index));
    for i in first_bloom..n.min(first_bloom.saturating_add(u64::from(info.n_bloom))) {
        let b = block(bytes, i)?;
        if bloom::check_block(b, Val::SIZE, info.seq, info.bloom_k).is_ok() {
            let _ = bloom::may_contain(b, lo, info.n_bloom, info.bloom_k);
        }
    }
    let mut fetch = Direct { blocks: bytes };
    for k in keys {
        let _ = info.get::<Val>(k, &mut fetch);
    }
    Ok(())
}

/// Decodes one WAL block of a tree with values of type `Val`.
pub(crate) fn wal_block<Val: LsmValue>(b: &[u8]) -> Result<()> {
    let mut n = 0usize;
    wal::parse_block::<Val>(b, Val::SIZE, &mut |_, _| {
        n += 1;
        Ok(())
    })
    .map(|_| ())
}

/// A valid table of `records` consecutive keys from `first` (every fourth
/// a tombstone, the others `value(key)`), footer included, for the seed
/// corpus.
pub(crate) fn table_seed<Val: LsmValue>(
    first: u64,
    records: u64,
    bloom_bits: u32,
    value: &dyn Fn(u64) -> Result<Val>,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut b = TableBuilder::new(Val::SIZE, 7, 1, records, bloom_bits)?;
    let mut sink = |blk: &[u8]| -> Result<()> {
        out.try_reserve(blk.len())?;
        out.extend_from_slice(blk);
        Ok(())
    };
    for k in first..first.saturating_add(records) {
        let v = value(k)?;
        b.add(k, (k % 4 != 3).then_some(&v), &mut sink)?;
    }
    if let Some(info) = b.finish(&mut sink)? {
        let mut f = Vec::new();
        f.try_reserve_exact(BLOCK_SIZE)?;
        f.resize(BLOCK_SIZE, 0);
        info.emit_footer(&mut f)?;
        out.try_reserve(BLOCK_SIZE)?;
        out.extend_from_slice(&f);
    }
    Ok(out)
}

/// A valid WAL block of generation `gen` with `records` records from key
/// `first` (every third a tombstone, the others `value(key)`).
pub(crate) fn wal_seed<Val: LsmValue>(
    gen: u64,
    first: u64,
    records: u64,
    value: &dyn Fn(u64) -> Result<Val>,
) -> Result<Vec<u8>> {
    let mut w = wal::WalBuf::new(Val::SIZE)?;
    for k in first..first.saturating_add(records) {
        if w.is_full() {
            break;
        }
        let v = value(k)?;
        w.push(k, (k % 3 != 2).then_some(&v))?;
    }
    let b = w.block(gen)?;
    let mut out = Vec::new();
    out.try_reserve_exact(b.len())?;
    out.extend_from_slice(b);
    Ok(out)
}
