//! A versioned, authenticated blob in two slots (A/B): the root of trust on
//! the untrusted disk (superblock-like).
//!
//! # What it guarantees
//!
//! [`AuthBlob::open`] returns the payload of the newest slot that verifies
//! under the root key, so a torn or failed write of one slot never loses the
//! other: [`AuthBlob::write`] always writes the *older* slot, with the
//! version number one above the newest, and flushes. A slot verifies only at
//! its own block address (copying or swapping slots is detected), only with
//! its own header, and only if both its key check and its AES-GCM tag
//! verify. Errors tell the cases apart:
//!
//! - [`ErrorKind::WrongKey`]: no slot verifies, and in every slot that parses
//!   both the key check and the tag fail — the key is not this blob's (or the
//!   slot's salt was tampered with, which cannot be told apart);
//! - [`ErrorKind::Integrity`]: a slot parses and passes one check but not the
//!   other (tampered), and no slot verifies;
//! - [`ErrorKind::Corrupted`]: no slot even parses (no blob here).
//!
//! # What it does not guarantee
//!
//! Freshness against whole-image rollback: the host can put back both slots
//! as they were at an earlier version, or an older version of the newest slot
//! when the other slot holds an even older one, and the blob opens at that
//! older version. Replaying an older version of one slot while the other
//! slot is newer changes nothing (the newer wins). Detecting rollback is the
//! job of the trusted anchor, which keeps the newest version elsewhere (see
//! `docs/security.md`, promise 6); [`AuthBlob::version`] is what it compares.
//!
//! # Keys and nonces
//!
//! The root key never keys a cipher. A blob key is derived once,
//! `K = HKDF(root, "mlsdisk/authblob/v1")`; each write draws a fresh random
//! 256-bit salt and derives from `K` and that salt a fresh AES-256 key for
//! that one slot write, plus a key-check key. A sealing key is thus used for
//! exactly one plaintext (whatever crashes or replays happen), and the IV is
//! random as well. The key check is `HMAC(K_check(salt), "key check")`; it
//! depends only on the key and the salt, so open can tell a wrong key from a
//! tampered slot.
//!
//! Layout: `docs/format.md`, section "AuthBlob slot".

use alloc::vec::Vec;

use crate::bio::{BlockSet, BLOCK_SIZE};
use crate::codec::put_field;
use crate::platform::{kdf, kdf_key, wipe, Crypto, Hash, Iv, Mac, IV_LEN};
use crate::{ensure, CryptoRef, Error, ErrorKind, Result};

/// Magic bytes at the start of a slot.
pub const MAGIC: [u8; 4] = *b"MDAB";
/// The format version of slots.
pub const FORMAT_VERSION: u8 = 1;
/// The structure type byte of slots.
pub const SLOT_TYPE: u8 = 0x01;
/// Length of a slot's header.
pub const HEADER_LEN: usize = 128;
/// The largest payload a blob holds (3968 bytes).
pub const MAX_PAYLOAD: usize = BLOCK_SIZE - HEADER_LEN;
// The brief promises at least 3 KiB of payload.
const _: () = assert!(MAX_PAYLOAD >= 3 * 1024);

/// Length of the per-write salt.
pub const SALT_LEN: usize = 32;

const LABEL_BLOB: &[u8] = b"mlsdisk/authblob/v1";
const LABEL_SEAL: &[u8] = b"seal";
const LABEL_CHECK: &[u8] = b"check";
const CHECK_MSG: &[u8] = b"mlsdisk authblob key check";

/// Byte ranges of a slot's header.
mod field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    pub const TYPE: usize = 5;
    pub const RESERVED0: Range<usize> = 6..8;
    pub const BLOB_VERSION: Range<usize> = 8..16;
    pub const LEN: Range<usize> = 16..20;
    pub const RESERVED1: Range<usize> = 20..24;
    pub const SALT: Range<usize> = 24..56;
    /// What the tag covers besides the block address: all of the above.
    pub const AUTH: Range<usize> = 0..56;
    pub const CHECK: Range<usize> = 56..88;
    pub const IV: Range<usize> = 88..100;
    pub const MAC: Range<usize> = 100..116;
    pub const RESERVED2: Range<usize> = 116..128;
}

/// A versioned, authenticated blob in blocks `pos` and `pos + 1` of a device.
/// See the module documentation.
pub struct AuthBlob<D> {
    disk: D,
    pos: u64,
    crypto: CryptoRef,
    /// The blob key `K` (derived from the root key).
    key: Hash,
    version: u64,
    /// The slot (0 = A, 1 = B) holding `version`.
    newest: u64,
}

impl<D> Drop for AuthBlob<D> {
    fn drop(&mut self) {
        wipe(&mut self.key);
    }
}

impl<D> core::fmt::Debug for AuthBlob<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AuthBlob")
            .field("pos", &self.pos)
            .field("version", &self.version)
            .field("newest", &self.newest)
            .finish()
    }
}

/// What one slot turned out to be.
enum Slot {
    /// Does not parse (bad magic, version, type, length).
    Unparsed,
    /// Parses, but neither the key check nor the tag verifies.
    WrongKey,
    /// Parses, and exactly one of key check and tag verifies.
    Tampered,
    /// Authentic.
    Valid { version: u64, payload: Vec<u8> },
}

fn corrupted(msg: &'static str) -> Error {
    Error::new(ErrorKind::Corrupted, msg)
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl<D: BlockSet> AuthBlob<D> {
    /// The largest payload a blob holds.
    pub const MAX_PAYLOAD: usize = MAX_PAYLOAD;

    /// Creates a blob at blocks `pos`, `pos + 1` holding `payload`: writes it
    /// to both slots (versions 1 and 2, so that one damaged slot never loses
    /// it) and flushes.
    pub fn create(
        disk: D,
        pos: u64,
        crypto: CryptoRef,
        root_key: &[u8],
        payload: &[u8],
    ) -> Result<Self> {
        let mut blob = Self::new(disk, pos, crypto, root_key)?;
        blob.write_slot(0, 1, payload)?;
        blob.write_slot(1, 2, payload)?;
        blob.disk.flush()?;
        blob.version = 2;
        blob.newest = 1;
        Ok(blob)
    }

    /// Opens the blob at blocks `pos`, `pos + 1` and returns it with the
    /// payload of its newest authentic slot.
    pub fn open(disk: D, pos: u64, crypto: CryptoRef, root_key: &[u8]) -> Result<(Self, Vec<u8>)> {
        let mut blob = Self::new(disk, pos, crypto, root_key)?;
        let mut best: Option<(u64, u64, Vec<u8>)> = None;
        let (mut tampered, mut wrong_key) = (false, false);
        let mut block = crate::fallible::filled_vec(BLOCK_SIZE, 0)?;
        for slot in 0..2u64 {
            blob.disk.read(pos + slot, &mut block)?;
            match blob.check_slot(slot, &mut block)? {
                Slot::Unparsed => {}
                Slot::WrongKey => wrong_key = true,
                Slot::Tampered => tampered = true,
                Slot::Valid { version, payload } => {
                    if best.as_ref().is_none_or(|(v, _, _)| version > *v) {
                        best = Some((version, slot, payload));
                    }
                }
            }
        }
        match best {
            Some((version, slot, payload)) => {
                blob.version = version;
                blob.newest = slot;
                Ok((blob, payload))
            }
            None if tampered => Err(Error::new(
                ErrorKind::Integrity,
                "no authentic blob slot: tampered",
            )),
            None if wrong_key => Err(Error::new(
                ErrorKind::WrongKey,
                "the key does not open this blob",
            )),
            None => Err(corrupted("no blob slot found")),
        }
    }

    fn new(disk: D, pos: u64, crypto: CryptoRef, root_key: &[u8]) -> Result<Self> {
        ensure!(
            pos.checked_add(2).is_some_and(|e| e <= disk.nblocks()),
            InvalidArgument,
            "blob slots past the end of the device"
        );
        ensure!(!root_key.is_empty(), InvalidArgument, "empty root key");
        let key = kdf(&*crypto, root_key, LABEL_BLOB, &[])?;
        Ok(Self {
            disk,
            pos,
            crypto,
            key,
            version: 0,
            newest: 0,
        })
    }

    /// Writes `payload` as the next version to the older slot, then flushes.
    /// On error the blob still opens at the current version.
    pub fn write(&mut self, payload: &[u8]) -> Result<()> {
        let version = self
            .version
            .checked_add(1)
            .ok_or(Error::new(ErrorKind::NoSpace, "blob version exhausted"))?;
        let slot = 1 - self.newest;
        self.write_slot(slot, version, payload)?;
        self.disk.flush()?;
        self.version = version;
        self.newest = slot;
        Ok(())
    }

    /// Writes `payload` to both slots: first as the next version to the
    /// older slot ([`Self::write`]), then as the version after it to the
    /// other slot. On an error of the first write the blob still opens at
    /// the current version; of the second, at the new one.
    ///
    /// For an owner whose previous payload may name state it has since
    /// abandoned (the disk: its log store's journal moves to a new chain in
    /// the other half of its region, and the old chain still opens, at the
    /// commit before the move). With [`Self::write`] alone, a damaged newest
    /// slot makes open fall back to that payload, and open cannot tell it
    /// from the newest; after `write_both` returned, both slots hold the new
    /// payload.
    pub fn write_both(&mut self, payload: &[u8]) -> Result<()> {
        self.write(payload)?;
        self.write(payload)
    }

    /// The version of the newest slot (what a rollback anchor compares).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The slot (0 = A at `pos`, 1 = B at `pos + 1`) holding the newest version.
    pub fn newest_slot(&self) -> u64 {
        self.newest
    }

    /// The device underneath.
    pub fn disk(&self) -> &D {
        &self.disk
    }

    fn keys(&self, salt: &[u8]) -> Result<(crate::platform::AeadKey, Hash)> {
        let c: &dyn Crypto = &*self.crypto;
        let seal = kdf_key(c, &self.key, LABEL_SEAL, salt, 32)?;
        let mut ck = kdf(c, &self.key, LABEL_CHECK, salt)?;
        let check = c.hmac_sha256(&ck, &[CHECK_MSG]);
        wipe(&mut ck);
        Ok((seal, check?))
    }

    fn aad(&self, slot: u64, auth: &[u8]) -> Result<[u8; 64]> {
        let mut a = [0u8; 64];
        let (h, addr) = a.split_at_mut(56);
        h.copy_from_slice(auth.get(..56).ok_or(corrupted("slot header"))?);
        let at = self
            .pos
            .checked_add(slot)
            .ok_or(corrupted("slot address"))?;
        addr.get_mut(..8)
            .ok_or(corrupted("slot address"))?
            .copy_from_slice(&at.to_le_bytes());
        Ok(a)
    }

    fn write_slot(&self, slot: u64, version: u64, payload: &[u8]) -> Result<()> {
        ensure!(
            payload.len() <= MAX_PAYLOAD,
            InvalidArgument,
            "blob payload too large"
        );
        let mut block = crate::fallible::filled_vec(BLOCK_SIZE, 0)?;
        let (header, body) = block
            .split_at_mut_checked(HEADER_LEN)
            .ok_or(corrupted("slot"))?;
        put_field(header, field::MAGIC, &MAGIC)?;
        put_field(
            header,
            field::VERSION..field::VERSION + 1,
            &[FORMAT_VERSION],
        )?;
        put_field(header, field::TYPE..field::TYPE + 1, &[SLOT_TYPE])?;
        put_field(header, field::BLOB_VERSION, &version.to_le_bytes())?;
        put_field(header, field::LEN, &(payload.len() as u32).to_le_bytes())?;
        let mut salt = [0u8; SALT_LEN];
        self.crypto.fill_random(&mut salt)?;
        put_field(header, field::SALT, &salt)?;
        let (seal, check) = self.keys(&salt)?;
        put_field(header, field::CHECK, &check)?;
        let mut iv: Iv = [0; IV_LEN];
        self.crypto.fill_random(&mut iv)?;
        put_field(header, field::IV, &iv)?;
        body.get_mut(..payload.len())
            .ok_or(corrupted("slot"))?
            .copy_from_slice(payload);
        let aad = self.aad(slot, header.get(field::AUTH).ok_or(corrupted("slot"))?)?;
        let mac = self.crypto.aead_seal(&seal, &iv, &aad, body)?;
        put_field(header, field::MAC, &mac)?;
        let at = self
            .pos
            .checked_add(slot)
            .ok_or(corrupted("slot address"))?;
        self.disk.write(at, &block)
    }

    /// Parses and verifies slot `slot` read into `block` (decrypting it in
    /// place).
    fn check_slot(&self, slot: u64, block: &mut [u8]) -> Result<Slot> {
        let Some((header, body)) = block.split_at_mut_checked(HEADER_LEN) else {
            return Ok(Slot::Unparsed);
        };
        let zero =
            |r: core::ops::Range<usize>| header.get(r).is_some_and(|b| b.iter().all(|&x| x == 0));
        let len = header
            .get(field::LEN)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .map_or(usize::MAX, |l| l as usize);
        if header.get(field::MAGIC) != Some(&MAGIC[..])
            || header.get(field::VERSION) != Some(&FORMAT_VERSION)
            || header.get(field::TYPE) != Some(&SLOT_TYPE)
            || !zero(field::RESERVED0)
            || !zero(field::RESERVED1)
            || !zero(field::RESERVED2)
            || len > MAX_PAYLOAD
        {
            return Ok(Slot::Unparsed);
        }
        let get = |r: core::ops::Range<usize>| header.get(r).ok_or(corrupted("slot header"));
        let version = u64::from_le_bytes(
            get(field::BLOB_VERSION)?
                .try_into()
                .map_err(|_| corrupted("slot header"))?,
        );
        let (seal, check) = self.keys(get(field::SALT)?)?;
        let check_ok = ct_eq(&check, get(field::CHECK)?);
        let iv: Iv = get(field::IV)?
            .try_into()
            .map_err(|_| corrupted("slot header"))?;
        let mac: Mac = get(field::MAC)?
            .try_into()
            .map_err(|_| corrupted("slot header"))?;
        let aad = self.aad(slot, get(field::AUTH)?)?;
        let tag_ok = self.crypto.aead_open(&seal, &iv, &aad, body, &mac).is_ok();
        Ok(match (check_ok, tag_ok) {
            (true, true) => {
                let data = body.get(..len).ok_or(corrupted("slot payload"))?;
                let mut payload = Vec::new();
                payload.try_reserve_exact(len)?;
                payload.extend_from_slice(data);
                Slot::Valid { version, payload }
            }
            (false, false) => Slot::WrongKey,
            _ => Slot::Tampered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::{HASH_LEN, MAC_LEN};

    #[test]
    fn layout_constants() {
        assert_eq!(field::RESERVED2.end, HEADER_LEN);
        assert_eq!(field::CHECK.len(), HASH_LEN);
        assert_eq!(field::MAC.len(), MAC_LEN);
        assert_eq!(field::SALT.len(), SALT_LEN);
    }
}
