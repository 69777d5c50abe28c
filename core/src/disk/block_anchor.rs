//! [`BlockAnchor`]: the rollback anchor on a small block device the guest
//! trusts (no_std, so the kernel module uses it too).
//!
//! # What it assumes
//!
//! The anchor device is **outside the host's reach**: a vTPM NV index
//! exposed as a block device, a disk the host cannot write (or whose writes
//! another trusted party checks), a range of trusted storage. The anchor
//! only moves the problem there: if the host can put back an older copy of
//! the anchor device together with an older copy of the disk image, the
//! pair is consistent and the rollback goes unnoticed, exactly as without
//! an anchor. Nothing is gained then; the anchor is worth what its device's
//! protection is worth.
//!
//! What it does protect against even on such a device: another disk's
//! anchor, an anchor made with another root key, a damaged or edited
//! anchor (all refused with an error naming the anchor), and a lost write
//! (every `advance` flushes before it returns).
//!
//! # On the device
//!
//! Blocks 0 and 1 of the device (a [`crate::bio::BlockRange`] makes a range
//! of a larger device into one) hold an [`AuthBlob`] whose payload is
//! [`PAYLOAD_LEN`] bytes:
//!
//! | bytes  | field |
//! |--------|-------|
//! | 0..8   | magic `MLSDANCH` |
//! | 8      | format version (2; version 1, a counter only, is `Unsupported`) |
//! | 9..16  | zero |
//! | 16..32 | the disk's UUID |
//! | 32..40 | the sync counter, u64 LE |
//! | 40..72 | the commit's digest ([`crate::disk::state::UserState::digest`]) |
//!
//! The blob's root key is `kdf(kdf(root key, "mlsdisk/anchor/base/v1", ""),
//! "mlsdisk/anchor/v1", uuid)`: bound to the disk's root key *and* UUID, so
//! the anchor of another disk does not even authenticate
//! ([`ErrorKind::WrongKey`]); the UUID inside is checked as well. The
//! superblock's key derivation uses another label, so a superblock copied
//! onto the anchor device does not open either.
//!
//! # Protocol
//!
//! - [`RollbackAnchor::bind`] with `fresh` (the disk is being created)
//!   writes a new anchor for the new UUID with the genesis state (counter
//!   0, digest all zeros) over whatever the device held: `create` formats.
//! - `read` opens the blob: the state, or `None` if blocks 0 and 1 are
//!   all zeros (a device never used as an anchor: the first `advance`
//!   starts it, so an existing disk can be put under an anchor by zeroing
//!   the device's first 8 KiB). Any other content that is not this disk's
//!   anchor is an error.
//! - `advance(c, d)` reads the stored state and, if `c` is higher, writes
//!   `(c, d)` to the older slot and flushes. It never lowers the counter
//!   and never replaces a state by another of the same counter (see
//!   [`super::anchor::must_store`]).
//!
//! The state lives on the device only: every call reads it back (two block
//! reads per sync, cheap next to a sync's own I/O), so two disks wrongly
//! given the same anchor device fail at the next sync instead of
//! overwriting each other unnoticed.
//!
//! # The A/B slots and torn writes
//!
//! An `advance` torn by a crash leaves the other slot, one counter lower,
//! in place; the blob opens at that one. The disk accepts an image one
//! commit ahead of the anchor whose `prev` digest is the anchored one, so
//! this is the same one-sync window as a crash between the disk's commit
//! and `advance`. For the same reason, damage to only
//! the newest slot reads as the previous counter: on the trusted device
//! that assumption covers, this allows nothing a crash does not; damage to
//! both slots is an error.

use alloc::vec::Vec;

use super::anchor::{must_store, AnchorState, RollbackAnchor};
use crate::bio::{BlockSet, BLOCK_SIZE};
use crate::crypto::AuthBlob;
use crate::platform::{kdf, wipe, Hash, HASH_LEN};
use crate::{Cause, CryptoRef, Error, ErrorKind, Result};

/// Blocks the anchor uses at the start of its device.
pub const ANCHOR_BLOCKS: u64 = 2;
/// Length of the anchor's payload.
pub const PAYLOAD_LEN: usize = 40 + HASH_LEN;
/// Magic bytes at the start of the payload.
pub const PAYLOAD_MAGIC: [u8; 8] = *b"MLSDANCH";
/// Format version of the payload.
pub const PAYLOAD_VERSION: u8 = 2;

const LABEL_BASE: &[u8] = b"mlsdisk/anchor/base/v1";
const LABEL_BIND: &[u8] = b"mlsdisk/anchor/v1";

/// The prefix of every message of an error that concerns the anchor (so a
/// caller can tell them from the backing device's, see [`is_anchor_error`]).
pub const MSG_PREFIX: &str = "rollback anchor";

/// Whether `e` concerns the rollback anchor rather than the disk image: an
/// error of an anchor or the disk's `Rollback` against its anchor (older,
/// forked, or too far ahead). Reads the error's [`Cause::Anchor`], never
/// its message.
pub fn is_anchor_error(e: &Error) -> bool {
    e.cause() == Cause::Anchor
}

/// An error of the anchor ([`Cause::Anchor`]).
fn err(kind: ErrorKind, msg: &'static str) -> Error {
    Error::new(kind, msg).with_cause(Cause::Anchor)
}

/// Maps an error of the blob or the device to one that names the anchor.
fn name_it(e: Error) -> Error {
    match e.kind() {
        ErrorKind::Io => err(ErrorKind::Io, "rollback anchor device I/O failed"),
        ErrorKind::WrongKey => err(
            ErrorKind::WrongKey,
            "rollback anchor belongs to another disk (or another root key)",
        ),
        ErrorKind::Integrity => err(
            ErrorKind::Integrity,
            "rollback anchor fails authentication (tampered or damaged)",
        ),
        ErrorKind::Corrupted => err(
            ErrorKind::Corrupted,
            "rollback anchor device holds no anchor and is not blank",
        ),
        ErrorKind::OutOfMemory => e,
        _ => err(e.kind(), "rollback anchor: unexpected error"),
    }
}

/// Which disk an anchor is bound to.
struct Bound {
    uuid: [u8; 16],
    /// The blob's root key for this disk.
    key: Hash,
}

/// The last committed state (counter and digest) on a trusted block
/// device. See the module documentation.
pub struct BlockAnchor<B: BlockSet> {
    dev: B,
    crypto: CryptoRef,
    /// `kdf(root key, LABEL_BASE)`: the root key itself is not kept.
    base: Hash,
    bound: Option<Bound>,
}

impl<B: BlockSet> Drop for BlockAnchor<B> {
    fn drop(&mut self) {
        wipe(&mut self.base);
        if let Some(b) = self.bound.as_mut() {
            wipe(&mut b.key);
        }
    }
}

impl<B: BlockSet> core::fmt::Debug for BlockAnchor<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BlockAnchor")
            .field("nblocks", &self.dev.nblocks())
            .field("bound", &self.bound.is_some())
            .finish()
    }
}

fn emit(uuid: &[u8; 16], st: &AnchorState) -> [u8; PAYLOAD_LEN] {
    let mut p = [0u8; PAYLOAD_LEN];
    let (magic, rest) = p.split_at_mut(8);
    magic.copy_from_slice(&PAYLOAD_MAGIC);
    let (head, rest) = rest.split_at_mut(8);
    if let Some(v) = head.first_mut() {
        *v = PAYLOAD_VERSION;
    }
    let (u, rest) = rest.split_at_mut(16);
    u.copy_from_slice(uuid);
    let (c, d) = rest.split_at_mut(8);
    c.copy_from_slice(&st.counter.to_le_bytes());
    d.copy_from_slice(&st.digest);
    p
}

pub(crate) fn parse(p: &[u8], uuid: &[u8; 16]) -> Result<AnchorState> {
    let bad = || err(ErrorKind::Corrupted, "rollback anchor payload is malformed");
    if p.get(..8) != Some(&PAYLOAD_MAGIC[..]) {
        return Err(bad());
    }
    match p.get(8) {
        Some(&PAYLOAD_VERSION) => {}
        Some(&1) => {
            return Err(err(
                ErrorKind::Unsupported,
                "rollback anchor has the first format (a counter only); create the disk anew",
            ))
        }
        _ => return Err(bad()),
    }
    if p.len() != PAYLOAD_LEN || !p.get(9..16).is_some_and(|z| z.iter().all(|&b| b == 0)) {
        return Err(bad());
    }
    if p.get(16..32) != Some(&uuid[..]) {
        return Err(err(
            ErrorKind::WrongKey,
            "rollback anchor belongs to another disk (UUID differs)",
        ));
    }
    let c: [u8; 8] = p
        .get(32..40)
        .and_then(|c| c.try_into().ok())
        .ok_or_else(bad)?;
    let digest: Hash = p
        .get(40..PAYLOAD_LEN)
        .and_then(|d| d.try_into().ok())
        .ok_or_else(bad)?;
    Ok(AnchorState {
        counter: u64::from_le_bytes(c),
        digest,
    })
}

impl<B: BlockSet> BlockAnchor<B> {
    /// An anchor on `dev` (blocks 0 and 1) for a disk with `root_key`.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` if the device has fewer than [`ANCHOR_BLOCKS`]
    /// blocks or the key is empty.
    pub fn new(dev: B, crypto: CryptoRef, root_key: &[u8]) -> Result<Self> {
        if dev.nblocks() < ANCHOR_BLOCKS {
            return Err(err(
                ErrorKind::InvalidArgument,
                "rollback anchor device is too small (needs 2 blocks of 4 KiB)",
            ));
        }
        if root_key.is_empty() {
            return Err(err(
                ErrorKind::InvalidArgument,
                "rollback anchor: empty key",
            ));
        }
        let base = kdf(&*crypto, root_key, LABEL_BASE, &[])?;
        Ok(Self {
            dev,
            crypto,
            base,
            bound: None,
        })
    }

    /// The device underneath.
    pub fn device(&self) -> &B {
        &self.dev
    }

    fn bound(&self) -> Result<&Bound> {
        self.bound.as_ref().ok_or(err(
            ErrorKind::InvalidState,
            "rollback anchor used before it was bound to a disk",
        ))
    }

    /// Whether blocks 0 and 1 are all zeros.
    fn blank(&self) -> Result<bool> {
        let mut buf = Vec::new();
        buf.try_reserve_exact(ANCHOR_BLOCKS as usize * BLOCK_SIZE)?;
        buf.resize(ANCHOR_BLOCKS as usize * BLOCK_SIZE, 0);
        self.dev.read(0, &mut buf).map_err(name_it)?;
        Ok(buf.iter().all(|&b| b == 0))
    }

    /// The blob and its state, or `None` on a blank device.
    fn open(&self) -> Result<Option<(AuthBlob<&B>, AnchorState)>> {
        let b = self.bound()?;
        match AuthBlob::open(&self.dev, 0, self.crypto.clone(), &b.key) {
            Ok((blob, payload)) => {
                let c = parse(&payload, &b.uuid)?;
                Ok(Some((blob, c)))
            }
            Err(e) if e.kind() == ErrorKind::Corrupted && self.blank()? => Ok(None),
            Err(e) => Err(name_it(e)),
        }
    }

    /// Writes a new anchor with `st` over both slots, and flushes.
    fn start(&self, st: &AnchorState) -> Result<()> {
        let b = self.bound()?;
        AuthBlob::create(
            &self.dev,
            0,
            self.crypto.clone(),
            &b.key,
            &emit(&b.uuid, st),
        )
        .map(|_| ())
        .map_err(name_it)
    }
}

impl<B: BlockSet> RollbackAnchor for BlockAnchor<B> {
    fn kind(&self) -> &'static str {
        "dev"
    }

    fn bind(&mut self, uuid: &[u8; 16], fresh: bool) -> Result<()> {
        let key = kdf(&*self.crypto, &self.base, LABEL_BIND, uuid)?;
        if let Some(old) = self.bound.as_mut() {
            wipe(&mut old.key);
        }
        self.bound = Some(Bound { uuid: *uuid, key });
        if fresh {
            self.start(&AnchorState::genesis())?;
        }
        Ok(())
    }

    fn read(&self) -> Result<Option<AnchorState>> {
        Ok(self.open()?.map(|(_, st)| st))
    }

    fn advance(&self, counter: u64, digest: &Hash) -> Result<()> {
        let next = AnchorState {
            counter,
            digest: *digest,
        };
        match self.open()? {
            None => self.start(&next),
            Some((_, cur)) if !must_store(Some(&cur), &next)? => Ok(()),
            Some((mut blob, _)) => {
                let b = self.bound()?;
                blob.write(&emit(&b.uuid, &next)).map_err(name_it)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip_and_checks() {
        let u = [3u8; 16];
        let st = AnchorState {
            counter: 0x0102_0304_0506_0708,
            digest: [0x5e; HASH_LEN],
        };
        let p = emit(&u, &st);
        assert_eq!(parse(&p, &u).unwrap(), st);
        assert_eq!(
            parse(&p, &[4u8; 16]).unwrap_err().kind(),
            ErrorKind::WrongKey
        );
        for i in 0..PAYLOAD_LEN {
            let mut q = p;
            q[i] ^= 0x40;
            let r = parse(&q, &u);
            match i {
                8 => assert_eq!(r.unwrap_err().kind(), ErrorKind::Corrupted, "version"),
                0..16 => assert_eq!(r.unwrap_err().kind(), ErrorKind::Corrupted, "byte {i}"),
                16..32 => assert_eq!(r.unwrap_err().kind(), ErrorKind::WrongKey, "byte {i}"),
                // Counter and digest parse to another state (the blob's
                // MAC is what refuses an edit on the device).
                _ => assert_ne!(r.unwrap(), st, "byte {i}"),
            }
        }
        assert!(parse(&p[..PAYLOAD_LEN - 1], &u).is_err());
        let mut v1 = p;
        v1[8] = 1;
        assert_eq!(
            parse(&v1[..40], &u).unwrap_err().kind(),
            ErrorKind::Unsupported
        );
    }
}
