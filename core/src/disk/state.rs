//! The disk's two small metadata records: the superblock payload (inside
//! the authenticated A/B blob) and the user state (committed atomically
//! with the index at every sync).
//!
//! Superblock payload (little-endian):
//!
//! ```text
//!   0..8     magic "MLSDSUPR"
//!   8..10    format version (1)
//!   10..12   type (1 = superblock payload)
//!   12..16   flags (0)
//!   16..32   disk UUID
//!   32..104  geometry (see layout.rs: 7 x u64, 2 x u32, u64, u64 reserve)
//!   104..105 data key length (16 or 32)
//!   105..112 zero
//!   112..120 sync counter at the time of writing
//!   120..122 store root length n
//!   122..    store root (n bytes, opaque to the disk)
//! ```
//!
//! User state (in the index's commit record):
//!
//! ```text
//!   0..8     magic "MLSDUSER"
//!   8..10    format version (3; versions 1 and 2 are Unsupported)
//!   10..12   type (2 = user state)
//!   12..16   zero
//!   16..32   disk UUID (binds the index to this superblock)
//!   32..40   sync counter
//!   40..48   mapped logical blocks
//!   48..64   nonce: fresh random bytes of this commit
//!   64..96   prev: digest of the previous commit's user state (zeros for
//!            the disk's first commit)
//! ```
//!
//! The commit's digest is `SHA-256("MLSD-USER-DIGEST-v2" || the 96 bytes)`
//! ([`UserState::digest`]): the nonce makes the digests of two different
//! commits differ even when their counters are equal, and `prev` chains
//! every commit to the one before it. The rollback anchor keeps the last
//! commit's counter and digest (see [`super::anchor`]).

use alloc::vec::Vec;

use super::layout::{Geometry, GEOMETRY_LEN};
use crate::codec::{Reader, Writer};
use crate::platform::{Crypto, Hash, HASH_LEN};
use crate::{bail, ensure, Error, ErrorKind, Result};

/// The on-disk format version written by this code.
pub const FORMAT_VERSION: u16 = 1;
const SB_MAGIC: &[u8; 8] = b"MLSDSUPR";
const US_MAGIC: &[u8; 8] = b"MLSDUSER";
const TYPE_SB: u16 = 1;
const TYPE_US: u16 = 2;
/// The user-state format version written by this code (1: no nonce and
/// no chain; 2: segment state not in the index; both refused).
pub const USER_STATE_VERSION: u16 = 3;
/// Length of a commit's nonce.
pub const NONCE_LEN: usize = 16;
const DIGEST_LABEL: &[u8] = b"MLSD-USER-DIGEST-v2";
/// Largest store root the superblock carries.
pub const MAX_ROOT: usize = 2048;

/// What the superblock says about the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuperPayload {
    /// The disk's UUID.
    pub uuid: [u8; 16],
    /// Regions and capacity.
    pub geo: Geometry,
    /// Length of per-block data keys (16 or 32).
    pub data_key_len: u8,
    /// Sync counter when this payload was written.
    pub sync_counter: u64,
    /// The encoded root of the log store.
    pub root: Vec<u8>,
}

impl SuperPayload {
    /// Encodes the payload.
    pub fn emit(&self) -> Result<Vec<u8>> {
        ensure!(
            self.root.len() <= MAX_ROOT,
            InvalidArgument,
            "store root too long"
        );
        let len = 122 + self.root.len();
        let mut out = Vec::new();
        out.try_reserve_exact(len)?;
        out.resize(len, 0);
        let mut w = Writer::new(&mut out);
        w.bytes(SB_MAGIC)?;
        w.u16(FORMAT_VERSION)?;
        w.u16(TYPE_SB)?;
        w.u32(0)?;
        w.bytes(&self.uuid)?;
        let mut g = [0u8; GEOMETRY_LEN];
        self.geo.emit(&mut g)?;
        w.bytes(&g)?;
        w.bytes(&[self.data_key_len, 0, 0, 0, 0, 0, 0, 0])?;
        w.u64(self.sync_counter)?;
        w.u16(self.root.len() as u16)?;
        w.bytes(&self.root)?;
        debug_assert_eq!(w.pos(), len);
        Ok(out)
    }

    /// Parses and checks a payload (geometry validated against a device of
    /// `dev_blocks` blocks).
    pub fn parse(b: &[u8], dev_blocks: u64) -> Result<Self> {
        let mut r = Reader::new(b);
        ensure!(r.bytes(8)? == SB_MAGIC, Corrupted, "superblock: bad magic");
        let ver = r.u16()?;
        if ver != FORMAT_VERSION {
            bail!(Unsupported, "superblock: unknown format version");
        }
        ensure!(r.u16()? == TYPE_SB, Corrupted, "superblock: bad type");
        ensure!(r.u32()? == 0, Unsupported, "superblock: unknown flags");
        let uuid = r.array::<16>()?;
        let geo = Geometry::parse(r.bytes(GEOMETRY_LEN)?)?;
        geo.validate(dev_blocks)?;
        let [data_key_len, pad @ ..] = r.array::<8>()?;
        ensure!(
            (data_key_len == 16 || data_key_len == 32) && pad.iter().all(|&x| x == 0),
            Corrupted,
            "superblock: bad key length"
        );
        let sync_counter = r.u64()?;
        let n = r.u16()? as usize;
        ensure!(n <= MAX_ROOT, Corrupted, "superblock: root too long");
        let rb = r.bytes(n)?;
        let mut root = Vec::new();
        root.try_reserve_exact(n)?;
        root.extend_from_slice(rb);
        Ok(Self {
            uuid,
            geo,
            data_key_len,
            sync_counter,
            root,
        })
    }
}

/// The disk's part of each index commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserState {
    /// The disk's UUID.
    pub uuid: [u8; 16],
    /// Number of syncs so far.
    pub sync_counter: u64,
    /// Mapped logical blocks at the commit.
    pub mapped: u64,
    /// Fresh random bytes of this commit.
    pub nonce: [u8; NONCE_LEN],
    /// Digest of the previous commit's user state (zeros for the first).
    pub prev: Hash,
}

/// Encoded size of a [`UserState`].
pub const USER_STATE_LEN: usize = 64 + HASH_LEN;

impl UserState {
    /// The state of the commit after the one whose digest is `prev`, with a
    /// fresh nonce from `crypto`.
    pub fn next(
        crypto: &dyn Crypto,
        uuid: [u8; 16],
        sync_counter: u64,
        mapped: u64,
        prev: Hash,
    ) -> Result<Self> {
        let mut nonce = [0u8; NONCE_LEN];
        crypto.fill_random(&mut nonce)?;
        Ok(Self {
            uuid,
            sync_counter,
            mapped,
            nonce,
            prev,
        })
    }

    /// The commit's digest: SHA-256 over a label and the encoded state.
    pub fn digest(&self, crypto: &dyn Crypto) -> Result<Hash> {
        crypto.sha256(&[DIGEST_LABEL, &self.emit()])
    }

    /// Encodes the user state.
    pub fn emit(&self) -> [u8; USER_STATE_LEN] {
        let mut out = [0u8; USER_STATE_LEN];
        let mut w = Writer::new(&mut out);
        // The buffer has exactly the right length: these cannot fail.
        let _ = w.bytes(US_MAGIC);
        let _ = w.u16(USER_STATE_VERSION);
        let _ = w.u16(TYPE_US);
        let _ = w.u32(0);
        let _ = w.bytes(&self.uuid);
        let _ = w.u64(self.sync_counter);
        let _ = w.u64(self.mapped);
        let _ = w.bytes(&self.nonce);
        let _ = w.bytes(&self.prev);
        out
    }

    /// Parses a user state. A state of another format version is
    /// `Unsupported`.
    pub fn parse(b: &[u8]) -> Result<Self> {
        let mut r = Reader::new(b);
        ensure!(r.bytes(8)? == US_MAGIC, Corrupted, "user state: bad magic");
        if r.u16()? != USER_STATE_VERSION {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "user state: unknown format version (this code reads version 3)",
            ));
        }
        ensure!(
            b.len() == USER_STATE_LEN,
            Corrupted,
            "user state: bad length"
        );
        ensure!(r.u16()? == TYPE_US, Corrupted, "user state: bad type");
        ensure!(r.u32()? == 0, Corrupted, "user state: reserved bits");
        Ok(Self {
            uuid: r.array()?,
            sync_counter: r.u64()?,
            mapped: r.u64()?,
            nonce: r.array()?,
            prev: r.array()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::layout::LayoutConfig;

    fn payload() -> SuperPayload {
        SuperPayload {
            uuid: [9; 16],
            geo: Geometry::compute(1 << 16, &LayoutConfig::default()).unwrap(),
            data_key_len: 16,
            sync_counter: 42,
            root: vec![1, 2, 3, 4, 5],
        }
    }

    #[test]
    fn superblock_round_trip_and_flips() {
        let p = payload();
        let b = p.emit().unwrap();
        assert_eq!(SuperPayload::parse(&b, 1 << 16).unwrap(), p);
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            if let Ok(d) = SuperPayload::parse(&c, 1 << 16) {
                // Only the opaque fields may change without a parse error;
                // the AuthBlob MAC is what catches those.
                assert_ne!(d, p, "byte {i}");
                assert!(i >= 16, "byte {i}");
            }
        }
        assert!(SuperPayload::parse(&b[..b.len() - 1], 1 << 16).is_err());
        assert!(SuperPayload::parse(&b, (1 << 16) - 1).is_err());
    }

    fn user_state() -> UserState {
        UserState {
            uuid: [3; 16],
            sync_counter: 7,
            mapped: 99,
            nonce: [0x4e; NONCE_LEN],
            prev: [0x9f; HASH_LEN],
        }
    }

    #[test]
    fn user_state_round_trip_and_flips() {
        let u = user_state();
        let b = u.emit();
        assert_eq!(UserState::parse(&b).unwrap(), u);
        for i in 0..b.len() {
            let mut c = b;
            c[i] ^= 1;
            if let Ok(d) = UserState::parse(&c) {
                assert_ne!(d, u);
                assert!(i >= 16);
            }
        }
        assert!(UserState::parse(&b[..USER_STATE_LEN - 1]).is_err());
        assert!(UserState::parse(&[]).is_err());
    }

    #[test]
    fn user_state_of_the_first_format_is_unsupported() {
        // Version 1: 48 bytes, no nonce and no chain.
        let mut v1 = [0u8; 48];
        v1[..8].copy_from_slice(US_MAGIC);
        v1[8..10].copy_from_slice(&1u16.to_le_bytes());
        v1[10..12].copy_from_slice(&TYPE_US.to_le_bytes());
        let e = UserState::parse(&v1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        let mut b = user_state().emit();
        b[8..10].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(
            UserState::parse(&b).unwrap_err().kind(),
            ErrorKind::Unsupported
        );
    }

    #[test]
    fn digest_names_the_commit() {
        let c = crate::platform::StdCrypto;
        let u = user_state();
        let d = u.digest(&c).unwrap();
        assert_eq!(d, u.digest(&c).unwrap());
        // Any other field, the nonce and prev included, gives another one.
        let mut others = [u; 5];
        others[0].sync_counter += 1;
        others[1].mapped += 1;
        others[2].nonce[0] ^= 1;
        others[3].prev[31] ^= 1;
        others[4].uuid[0] ^= 1;
        for o in others {
            assert_ne!(o.digest(&c).unwrap(), d, "{o:?}");
        }
        // Two commits after the same state with the same counter differ.
        let a = UserState::next(&c, u.uuid, 8, 5, d).unwrap();
        let b = UserState::next(&c, u.uuid, 8, 5, d).unwrap();
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.digest(&c).unwrap(), b.digest(&c).unwrap());
        assert_eq!((a.prev, a.sync_counter), (d, 8));
    }
}
