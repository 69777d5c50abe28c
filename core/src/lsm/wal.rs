//! Write-ahead log blocks.
//!
//! The WAL of a memtable is a log of the store (tag [`super::TAG_WAL`]) of
//! whole blocks, each the common header (kind Wal, count = records, owner =
//! the WAL generation) followed by `count` records in the order they were
//! made (not sorted; a later record of a key wins). Blocks are appended when
//! full, and a partly filled one at each sync (a log is append-only, so the
//! next records start a new block).

use alloc::vec::Vec;

use super::format::{
    check_records, emit_record, record_at, records_per_block, BlockKind, Header, FLAG_VALUE,
};
use super::LsmValue;
use crate::bio::BLOCK_SIZE;
use crate::{ensure, Result};

/// The WAL block being filled.
pub struct WalBuf {
    block: Vec<u8>,
    count: usize,
    value_size: usize,
}

impl WalBuf {
    /// An empty buffer for values of `value_size` bytes.
    pub fn new(value_size: usize) -> Result<Self> {
        let mut block = Vec::new();
        block.try_reserve_exact(BLOCK_SIZE)?;
        block.resize(BLOCK_SIZE, 0);
        Ok(Self {
            block,
            count: 0,
            value_size,
        })
    }

    /// Whether no record is buffered.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the block is full.
    pub fn is_full(&self) -> bool {
        self.count >= records_per_block(self.value_size)
    }

    /// Whether one more record fills the block (so the update that adds
    /// it appends a WAL block).
    pub fn will_fill(&self) -> bool {
        self.count.saturating_add(1) >= records_per_block(self.value_size)
    }

    /// Adds a record (the buffer must not be full).
    pub fn push<V: LsmValue>(&mut self, key: u64, val: Option<&V>) -> Result<()> {
        ensure!(!self.is_full(), InvalidState, "wal: block full");
        let enc = val.map(|v| move |o: &mut [u8]| v.emit(o));
        emit_record(
            &mut self.block,
            self.count,
            self.value_size,
            key,
            enc.as_ref().map(|e| e as &dyn Fn(&mut [u8])),
        )?;
        self.count += 1;
        Ok(())
    }

    /// The finished block of generation `gen` (header written).
    pub fn block(&mut self, gen: u64) -> Result<&[u8]> {
        Header {
            kind: BlockKind::Wal,
            count: self.count as u16,
            value_size: self.value_size as u16,
            owner: gen,
        }
        .emit(&mut self.block)?;
        Ok(&self.block)
    }

    /// Empties the buffer.
    pub fn clear(&mut self) {
        self.block.fill(0);
        self.count = 0;
    }
}

/// Parses a WAL block: returns its generation and calls `f` for each record
/// in order.
pub fn parse_block<V: LsmValue>(
    block: &[u8],
    value_size: usize,
    f: &mut dyn FnMut(u64, Option<V>) -> Result<()>,
) -> Result<u64> {
    let h = Header::parse(block)?;
    ensure!(h.kind == BlockKind::Wal, Corrupted, "wal: not a wal block");
    ensure!(
        usize::from(h.value_size) == value_size,
        Corrupted,
        "wal: value size differs"
    );
    let count = usize::from(h.count);
    ensure!(count >= 1, Corrupted, "wal: empty block");
    check_records(block, count, value_size, false)?;
    for i in 0..count {
        let (k, flag, val) = record_at(block, i, value_size)?;
        let v = if flag == FLAG_VALUE {
            Some(V::parse(val)?)
        } else {
            None
        };
        f(k, v)?;
    }
    Ok(h.owner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::tests::TestVal;
    use alloc::vec;

    #[test]
    fn round_trip_and_flips() {
        let mut w = WalBuf::new(TestVal::SIZE).unwrap();
        let recs = vec![(5u64, Some(TestVal(1))), (3, None), (5, Some(TestVal(2)))];
        for (k, v) in &recs {
            w.push(*k, v.as_ref()).unwrap();
        }
        let blk = w.block(77).unwrap().to_vec();
        let mut got = Vec::new();
        let gen = parse_block::<TestVal>(&blk, TestVal::SIZE, &mut |k, v| {
            got.push((k, v));
            Ok(())
        })
        .unwrap();
        assert_eq!(gen, 77);
        assert_eq!(got, recs);
        // Structural bytes: header, flags, tail.
        for i in (0..24).chain([24 + 8, 24 + 17 + 8, 24 + 17 * 3, 4095]) {
            let mut b = blk.clone();
            b[i] ^= 0x20;
            let mut got2 = Vec::new();
            let r = parse_block::<TestVal>(&b, TestVal::SIZE, &mut |k, v| {
                got2.push((k, v));
                Ok(())
            });
            if let Ok(g) = r {
                assert!(g != 77 || got2 != recs, "flip at {i} unnoticed");
            }
        }
        w.clear();
        assert!(w.is_empty());
        let mut n = 0;
        while !w.is_full() {
            w.push::<TestVal>(n, None).unwrap();
            n += 1;
        }
        assert_eq!(n as usize, records_per_block(TestVal::SIZE));
        assert!(w.push::<TestVal>(n, None).is_err());
    }
}
