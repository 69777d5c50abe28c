//! The store's root: what the owner keeps (in its superblock) to find and
//! verify the store. Layout in `docs/format.md`, "StoreRoot":
//! `magic "MDLS" | version u8 | type u8 | half u8 | reserved u8 |
//! salt [16] | start ChainPos | tail ChainPos` (a `ChainPos` is a
//! sequence number, little endian, and a MAC). The owner's superblock
//! authenticates it; the checks here refuse bytes no version of this code
//! writes, and the journal chain the root names is checked when the store
//! opens.

use crate::crypto::ChainPos;
use crate::{ensure, Error, ErrorKind, Result};

/// What the owner keeps (in its superblock) to find and verify the store:
/// the journal key salt, the journal's start and its last trusted tail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreRoot {
    pub(super) salt: [u8; 16],
    /// Which half of the journal region the chain lives in (0 or 1).
    pub(super) half: u8,
    /// The journal chain's first trusted position.
    pub(super) start: ChainPos,
    /// The journal chain's last trusted position.
    pub(super) tail: ChainPos,
}

const ROOT_MAGIC: [u8; 4] = *b"MDLS";
const ROOT_VERSION: u8 = 1;
const ROOT_TYPE: u8 = 1;

impl StoreRoot {
    /// Bytes of an encoded root.
    pub const ENCODED_LEN: usize = 8 + 16 + 2 * ChainPos::ENCODED_LEN;

    /// `magic "MDLS" | version u8 | type u8 | half u8 | reserved u8 |
    /// salt [16] | start ChainPos | tail ChainPos`.
    pub fn emit(&self, out: &mut [u8]) -> Result<()> {
        ensure!(
            out.len() == Self::ENCODED_LEN,
            InvalidArgument,
            "store root buffer size"
        );
        let (h, rest) = out.split_at_mut(8);
        h.copy_from_slice(&[
            ROOT_MAGIC[0],
            ROOT_MAGIC[1],
            ROOT_MAGIC[2],
            ROOT_MAGIC[3],
            ROOT_VERSION,
            ROOT_TYPE,
            self.half,
            0,
        ]);
        let (salt, rest) = rest.split_at_mut(16);
        salt.copy_from_slice(&self.salt);
        let (s, t) = rest.split_at_mut(ChainPos::ENCODED_LEN);
        s.copy_from_slice(&self.start.emit());
        t.copy_from_slice(&self.tail.emit());
        Ok(())
    }

    /// Which half of the journal region the journal's chain is in (0 or 1);
    /// it changes when the journal moves to a new key.
    pub fn journal_half(&self) -> u8 {
        self.half
    }

    /// The encoded root as a fixed-size array ([`Self::emit`]).
    pub fn emit_array(&self) -> Result<[u8; Self::ENCODED_LEN]> {
        let mut b = [0u8; Self::ENCODED_LEN];
        self.emit(&mut b)?;
        Ok(b)
    }

    /// Parses a root written by [`Self::emit`].
    pub fn parse(b: &[u8]) -> Result<Self> {
        ensure!(b.len() == Self::ENCODED_LEN, Corrupted, "store root length");
        let (h, rest) = b.split_at(8);
        ensure!(
            h.get(..4) == Some(&ROOT_MAGIC[..]),
            Corrupted,
            "bad store root magic"
        );
        ensure!(
            h.get(4) == Some(&ROOT_VERSION),
            Corrupted,
            "unknown store root version"
        );
        ensure!(h.get(5) == Some(&ROOT_TYPE), Corrupted, "not a store root");
        let half = h.get(6).copied().unwrap_or(u8::MAX);
        ensure!(half <= 1, Corrupted, "store root journal half");
        ensure!(h.get(7) == Some(&0), Corrupted, "store root reserved byte");
        let (salt, rest) = rest.split_at(16);
        let (s, t) = rest.split_at(ChainPos::ENCODED_LEN);
        let start = ChainPos::parse(s)?;
        let tail = ChainPos::parse(t)?;
        ensure!(
            tail.seq >= start.seq,
            Corrupted,
            "store root tail before start"
        );
        Ok(Self {
            salt: salt
                .try_into()
                .map_err(|_| Error::new(ErrorKind::Corrupted, "salt"))?,
            half,
            start,
            tail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::MAC_LEN;

    fn sample() -> StoreRoot {
        StoreRoot {
            salt: [0x5a; 16],
            half: 1,
            start: ChainPos {
                seq: 7,
                mac: [0x11; MAC_LEN],
            },
            tail: ChainPos {
                seq: 9,
                mac: [0x22; MAC_LEN],
            },
        }
    }

    #[test]
    fn round_trip() {
        let r = sample();
        let b = r.emit_array().unwrap();
        assert_eq!(StoreRoot::parse(&b).unwrap(), r);
        assert_eq!(r.journal_half(), 1);
        let mut short = [0u8; StoreRoot::ENCODED_LEN - 1];
        assert!(r.emit(&mut short).is_err());
    }

    #[test]
    fn every_flipped_byte_is_refused_or_reads_as_another_root() {
        let r = sample();
        let b = r.emit_array().unwrap();
        let mut refused = 0;
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut c = b;
                c[i] ^= 1 << bit;
                match StoreRoot::parse(&c) {
                    Err(e) => {
                        assert_eq!(e.kind(), ErrorKind::Corrupted, "byte {i} bit {bit}");
                        refused += 1;
                    }
                    Ok(p) => assert_ne!(p, r, "byte {i} bit {bit} changed nothing"),
                }
            }
        }
        // At least every bit of the magic, version, type and reserved
        // bytes, and 7 of the 8 bits of `half` (only 0 and 1 are valid).
        assert!(refused >= 8 * 8 + 7, "{refused} refused");
    }

    #[test]
    fn wrong_lengths_and_a_tail_before_the_start_are_refused() {
        let b = sample().emit_array().unwrap();
        for n in [0, 1, StoreRoot::ENCODED_LEN - 1] {
            assert!(StoreRoot::parse(&b[..n]).is_err(), "{n} bytes");
        }
        let mut long = [0u8; StoreRoot::ENCODED_LEN + 1];
        long[..StoreRoot::ENCODED_LEN].copy_from_slice(&b);
        assert!(StoreRoot::parse(&long).is_err());
        let mut r = sample();
        r.tail.seq = 6;
        let e = StoreRoot::parse(&r.emit_array().unwrap()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupted);
    }
}
