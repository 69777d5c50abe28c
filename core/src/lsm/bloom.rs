//! A blocked bloom filter: each key hashes to one 4 KiB block of the filter
//! and sets `k` bits inside it, so a lookup reads (or finds cached) exactly
//! one filter block. Integer arithmetic only.
//!
//! Block layout: the common header (kind Bloom, count = probes `k`, owner =
//! table sequence number) followed by a [`BITS`]-bit array, bit `i` at byte
//! `24 + i / 8`, mask `1 << (i % 8)`.

use alloc::vec::Vec;

use super::format::{BlockKind, Header, HEADER_LEN, PAYLOAD_LEN};
use crate::bio::BLOCK_SIZE;
use crate::{Error, ErrorKind, Result};

/// The filter bits in one block.
pub const BITS: u32 = (PAYLOAD_LEN * 8) as u32;

/// A 64-bit mixer (the finaliser of SplitMix64).
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The number of probes for `bits_per_key` bits per key (about ln 2 times
/// the bits per key, 1..=16).
pub fn probes(bits_per_key: u32) -> u8 {
    let k = (u64::from(bits_per_key) * 69 + 50) / 100;
    k.clamp(1, 16) as u8
}

/// The number of filter blocks for `records` keys at `bits_per_key`.
pub fn blocks_for(records: u64, bits_per_key: u32) -> u32 {
    if bits_per_key == 0 || records == 0 {
        return 0;
    }
    let bits = records.saturating_mul(u64::from(bits_per_key));
    let n = bits.div_ceil(u64::from(BITS));
    u32::try_from(n).unwrap_or(u32::MAX).max(1)
}

/// Which of `nblocks` filter blocks holds `key`, and its bit positions
/// generator `(h1, h2)`.
fn locate(key: u64, nblocks: u32) -> (u32, u32, u32) {
    let h = mix(key);
    let block = (((h >> 32) * u64::from(nblocks)) >> 32) as u32;
    let h1 = h as u32;
    let h2 = (mix(h) as u32) | 1;
    (block, h1, h2)
}

fn bit(h1: u32, h2: u32, i: u32) -> u32 {
    h1.wrapping_add(i.wrapping_mul(h2)) % BITS
}

/// Which filter block of `nblocks` a key's bits live in.
pub fn block_of(key: u64, nblocks: u32) -> u32 {
    locate(key, nblocks).0
}

/// Whether `key` may be in the set, given its filter block (already checked
/// with [`check_block`]).
pub fn may_contain(block: &[u8], key: u64, nblocks: u32, k: u8) -> bool {
    let (_, h1, h2) = locate(key, nblocks);
    let bits = block.get(HEADER_LEN..).unwrap_or_default();
    (0..u32::from(k)).all(|i| {
        let b = bit(h1, h2, i);
        bits.get((b / 8) as usize)
            .is_some_and(|byte| byte & (1 << (b % 8)) != 0)
    })
}

/// Checks a filter block's header.
pub fn check_block(block: &[u8], value_size: usize, owner: u64, k: u8) -> Result<()> {
    let h = Header::expect(block, BlockKind::Bloom, value_size, owner)?;
    if h.count != u16::from(k) {
        return Err(Error::new(ErrorKind::Corrupted, "bloom block: probe count"));
    }
    Ok(())
}

/// A filter being built: all its blocks' bit arrays in memory.
pub struct BloomBuilder {
    nblocks: u32,
    k: u8,
    bits: Vec<u8>,
}

impl BloomBuilder {
    /// A filter of `nblocks` blocks with `k` probes.
    pub fn new(nblocks: u32, k: u8) -> Result<Self> {
        let len = (nblocks as usize)
            .checked_mul(PAYLOAD_LEN)
            .ok_or(Error::oom())?;
        let mut bits = Vec::new();
        bits.try_reserve_exact(len)?;
        bits.resize(len, 0);
        Ok(Self { nblocks, k, bits })
    }

    /// The number of filter blocks.
    pub fn nblocks(&self) -> u32 {
        self.nblocks
    }

    /// The number of probes.
    pub fn k(&self) -> u8 {
        self.k
    }

    /// Adds a key.
    pub fn add(&mut self, key: u64) {
        if self.nblocks == 0 {
            return;
        }
        let (blk, h1, h2) = locate(key, self.nblocks);
        let base = blk as usize * PAYLOAD_LEN;
        for i in 0..u32::from(self.k) {
            let b = bit(h1, h2, i);
            if let Some(byte) = self.bits.get_mut(base + (b / 8) as usize) {
                *byte |= 1 << (b % 8);
            }
        }
    }

    /// Writes filter block `i` (header and bits) into `out`.
    pub fn emit_block(&self, i: u32, value_size: u16, owner: u64, out: &mut [u8]) -> Result<()> {
        let start = i as usize * PAYLOAD_LEN;
        let src = self
            .bits
            .get(start..start + PAYLOAD_LEN)
            .ok_or(Error::new(ErrorKind::InvalidArgument, "bloom block index"))?;
        let out = out
            .get_mut(..BLOCK_SIZE)
            .ok_or(Error::new(ErrorKind::InvalidArgument, "block too short"))?;
        Header {
            kind: BlockKind::Bloom,
            count: u16::from(self.k),
            value_size,
            owner,
        }
        .emit(out)?;
        crate::codec::put(out, HEADER_LEN, src)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let n = 5000u64;
        let nb = blocks_for(n, 10);
        assert_eq!(nb, 2);
        let k = probes(10);
        assert_eq!(k, 7);
        let mut b = BloomBuilder::new(nb, k).unwrap();
        for i in 0..n {
            b.add(i * 7);
        }
        let blocks: Vec<Vec<u8>> = (0..nb)
            .map(|i| {
                let mut v = vec![0u8; BLOCK_SIZE];
                b.emit_block(i, 8, 3, &mut v).unwrap();
                check_block(&v, 8, 3, k).unwrap();
                v
            })
            .collect();
        let test = |key: u64| {
            let blk = &blocks[block_of(key, nb) as usize];
            may_contain(blk, key, nb, k)
        };
        for i in 0..n {
            assert!(test(i * 7));
        }
        let fp = (0..20000u64).filter(|&i| test(i * 7 + 3)).count();
        // ~1% expected at 10 bits per key (blocked: slightly more).
        assert!(fp < 600, "false positives {fp}");
        assert!(check_block(&blocks[0], 8, 4, k).is_err());
        assert!(check_block(&blocks[0], 8, 3, k + 1).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(blocks_for(0, 10), 0);
        assert_eq!(blocks_for(10, 0), 0);
        assert_eq!(blocks_for(1, 10), 1);
        assert_eq!(probes(0), 1);
        assert_eq!(probes(100), 16);
    }
}
