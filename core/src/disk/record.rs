//! `BlockRecord`: the index value for one logical block.
//!
//! Layout ([`BlockRecord::SIZE`] = 56 bytes, little-endian):
//!
//! ```text
//!   0..8    hba (bits 0..56) | key length in bytes (bits 56..64: 16 or 32)
//!   8..40   the block's AES-GCM key, zero-padded to 32 bytes
//!   40..56  the block's AES-GCM tag
//! ```
//!
//! `hba` counts blocks from the start of the data region. The record lives
//! only inside the encrypted, authenticated index, so it needs no magic of
//! its own; decode still rejects any non-canonical encoding.

use crate::platform::{AeadKey, Mac, MAC_LEN};
use crate::{Error, ErrorKind, Result};

/// Where a logical block lives and how to authenticate it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BlockRecord {
    /// Host block address, relative to the data region.
    pub hba: u64,
    /// The fresh key this version of the block was sealed with.
    pub key: AeadKey,
    /// The AES-GCM tag of the block.
    pub mac: Mac,
}

const HBA_MASK: u64 = (1 << 56) - 1;

impl BlockRecord {
    /// Encoded size in bytes.
    pub const SIZE: usize = 56;

    /// Writes the record into `out[..SIZE]`.
    pub fn emit_into(&self, out: &mut [u8]) -> Result<()> {
        let out = out
            .get_mut(..Self::SIZE)
            .ok_or(Error::new(ErrorKind::InvalidArgument, "record buffer"))?;
        if self.hba > HBA_MASK {
            return Err(Error::new(ErrorKind::InvalidArgument, "hba too large"));
        }
        let word = self.hba | ((self.key.len() as u64) << 56);
        out.fill(0);
        let (w, rest) = out.split_at_mut(8);
        w.copy_from_slice(&word.to_le_bytes());
        let (k, m) = rest.split_at_mut(32);
        k.get_mut(..self.key.len())
            .ok_or(Error::new(ErrorKind::InvalidArgument, "key length"))?
            .copy_from_slice(self.key.as_bytes());
        m.copy_from_slice(&self.mac);
        Ok(())
    }

    /// Parses a record written by [`BlockRecord::emit_into`].
    pub fn parse_from(b: &[u8]) -> Result<Self> {
        let bad = || Error::new(ErrorKind::Corrupted, "malformed block record");
        let b = b.get(..Self::SIZE).ok_or(bad())?;
        let (w, rest) = b.split_at(8);
        let (k, m) = rest.split_at(32);
        let mut word = [0u8; 8];
        word.copy_from_slice(w);
        let word = u64::from_le_bytes(word);
        let klen = usize::try_from(word >> 56).map_err(|_| bad())?;
        if klen != 16 && klen != 32 {
            return Err(bad());
        }
        let (key, pad) = k.split_at(klen);
        if pad.iter().any(|&x| x != 0) {
            return Err(bad());
        }
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(m);
        Ok(Self {
            hba: word & HBA_MASK,
            key: AeadKey::from_slice(key)?,
            mac,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_flips() {
        for klen in [16usize, 32] {
            let key: std::vec::Vec<u8> = (0..klen as u8).map(|x| x + 1).collect();
            let r = BlockRecord {
                hba: 0x00ab_cdef_1234,
                key: AeadKey::from_slice(&key).unwrap(),
                mac: [7; 16],
            };
            let mut b = [0u8; BlockRecord::SIZE];
            r.emit_into(&mut b).unwrap();
            assert_eq!(BlockRecord::parse_from(&b).unwrap(), r);
            for i in 0..BlockRecord::SIZE {
                let mut c = b;
                c[i] ^= 1;
                // Every flip either fails or decodes to a different record.
                if let Ok(d) = BlockRecord::parse_from(&c) {
                    assert_ne!(d, r, "byte {i}");
                }
            }
        }
        assert!(BlockRecord::parse_from(&[0u8; 10]).is_err());
        assert!(BlockRecord::parse_from(&[0u8; 56]).is_err());
    }
}
