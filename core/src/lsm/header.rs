//! The tree header: the first [`TreeHeader::LEN`] bytes of the user state
//! the tree commits with its store (the caller's own user state follows).
//! It names the table manifest and the tree's counters; the store
//! authenticates and commits it with everything else, so a header that
//! parses is the one the last commit wrote, and the checks here only
//! refuse bytes that no version of this code writes.
//!
//! Layout (little endian), version 2:
//!
//! | offset | bytes | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `MLSMTREE` |
//! | 8 | 2 | version (2) |
//! | 10 | 2 | value size of the tree's records |
//! | 12 | 4 | manifest blocks |
//! | 16 | 8 | next table sequence number |
//! | 24 | 8 | next WAL generation |
//! | 32 | 8 | the manifest log's key ([`super::LogStore::log_key`]) |
//! | 40 | 4 | tables the manifest lists |
//! | 44 | 4 | reserved, zero |
//!
//! Version 1 (tables found by reading every footer) is refused as
//! `Unsupported`.

use alloc::vec::Vec;

use crate::codec::{get_u16, get_u32, get_u64, put};
use crate::{ensure, Error, ErrorKind, Result};

const MAGIC: [u8; 8] = *b"MLSMTREE";
/// Version 2: the header names the table manifest.
const VERSION: u16 = 2;

/// The tree's header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeHeader {
    /// Bytes of a record's value.
    pub value_size: u16,
    /// Blocks of the manifest log.
    pub manifest_blocks: u32,
    /// The next table sequence number.
    pub next_seq: u64,
    /// The next WAL generation.
    pub next_gen: u64,
    /// The manifest log's key.
    pub manifest_key: u64,
    /// Tables the manifest lists.
    pub tables: u32,
}

impl TreeHeader {
    /// Bytes of an emitted header.
    pub const LEN: usize = 48;

    /// The header followed by `user_state`, in a new vector.
    pub fn emit(&self, user_state: &[u8]) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        v.try_reserve_exact(Self::LEN.saturating_add(user_state.len()))?;
        v.resize(Self::LEN, 0);
        put(&mut v, 0, &MAGIC)?;
        put(&mut v, 8, &VERSION.to_le_bytes())?;
        put(&mut v, 10, &self.value_size.to_le_bytes())?;
        put(&mut v, 12, &self.manifest_blocks.to_le_bytes())?;
        put(&mut v, 16, &self.next_seq.to_le_bytes())?;
        put(&mut v, 24, &self.next_gen.to_le_bytes())?;
        put(&mut v, 32, &self.manifest_key.to_le_bytes())?;
        put(&mut v, 40, &self.tables.to_le_bytes())?;
        v.extend_from_slice(user_state);
        Ok(v)
    }

    /// Parses what [`Self::emit`] wrote: the header and the caller's user
    /// state after it.
    pub fn parse(b: &[u8]) -> Result<(Self, &[u8])> {
        let (h, rest) = b
            .split_at_checked(Self::LEN)
            .ok_or(Error::new(ErrorKind::Corrupted, "lsm: no tree header"))?;
        ensure!(
            h.get(..8) == Some(&MAGIC[..]),
            Corrupted,
            "lsm: bad tree magic"
        );
        ensure!(
            get_u16(h, 8)? == VERSION,
            Unsupported,
            "lsm: unknown tree version"
        );
        ensure!(
            get_u32(h, 44)? == 0,
            Corrupted,
            "lsm: reserved header bytes"
        );
        let th = Self {
            value_size: get_u16(h, 10)?,
            manifest_blocks: get_u32(h, 12)?,
            next_seq: get_u64(h, 16)?,
            next_gen: get_u64(h, 24)?,
            manifest_key: get_u64(h, 32)?,
            tables: get_u32(h, 40)?,
        };
        Ok((th, rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TreeHeader {
        TreeHeader {
            value_size: 24,
            manifest_blocks: 3,
            next_seq: 0x0102_0304_0506_0708,
            next_gen: 77,
            manifest_key: 0xdead_beef_0000_0011,
            tables: 271,
        }
    }

    #[test]
    fn round_trip_keeps_the_fields_and_the_user_state() {
        let h = sample();
        let b = h.emit(b"user state").unwrap();
        assert_eq!(b.len(), TreeHeader::LEN + 10);
        let (p, rest) = TreeHeader::parse(&b).unwrap();
        assert_eq!(p, h);
        assert_eq!(rest, b"user state");
        let bare = h.emit(&[]).unwrap();
        let (p, rest) = TreeHeader::parse(&bare).unwrap();
        assert_eq!((p, rest.len()), (h, 0));
    }

    #[test]
    fn every_flipped_byte_is_refused_or_reads_as_another_header() {
        let h = sample();
        let b = h.emit(&[]).unwrap();
        let mut refused = 0;
        for i in 0..TreeHeader::LEN {
            for bit in 0..8 {
                let mut c = b.clone();
                c[i] ^= 1 << bit;
                match TreeHeader::parse(&c) {
                    Err(e) => {
                        let want = if (8..10).contains(&i) {
                            ErrorKind::Unsupported
                        } else {
                            ErrorKind::Corrupted
                        };
                        assert_eq!(e.kind(), want, "byte {i} bit {bit}");
                        assert!(!(10..44).contains(&i), "byte {i} of a field refused");
                        refused += 1;
                    }
                    Ok((p, _)) => {
                        assert_ne!(p, h, "byte {i} bit {bit} changed nothing");
                        assert!((10..44).contains(&i), "byte {i} bit {bit} accepted");
                    }
                }
            }
        }
        // Magic, version and reserved bytes: 8 + 2 + 4 bytes of 8 bits.
        assert_eq!(refused, 14 * 8);
    }

    #[test]
    fn short_input_and_version_1_are_refused() {
        let b = sample().emit(&[]).unwrap();
        for n in 0..TreeHeader::LEN {
            let e = TreeHeader::parse(&b[..n]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupted, "{n} bytes");
        }
        let mut v1 = b.clone();
        v1[8..10].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(
            TreeHeader::parse(&v1).unwrap_err().kind(),
            ErrorKind::Unsupported
        );
    }
}
