//! Rollback anchors: the committed state, kept outside the host's reach.
//!
//! Every sync commits a user state (see [`super::state::UserState`]) with
//! the sync counter, a fresh random nonce and the digest of the previous
//! commit's state, atomically with the index. Its digest
//! ([`super::state::UserState::digest`]) names that commit: two different
//! commits never share it, not even with the same counter. After every
//! sync the disk calls [`RollbackAnchor::advance`] with the new counter and
//! digest; the anchor keeps the pair ([`AnchorState`]) where the host cannot
//! write.
//!
//! # The open rule
//!
//! `open` reads the anchor and compares it with the image's user state:
//!
//! | anchor | image | result |
//! |---|---|---|
//! | unset | any | trusted on first use (the status line says `(tofu)` until the first anchored sync) |
//! | `(c, d)` | counter `< c` | `Rollback` (an older image) |
//! | `(c, d)` | counter `c`, digest `d` | opens (the anchored state) |
//! | `(c, d)` | counter `c`, another digest | `Rollback` (a forked image) |
//! | `(c, d)` | counter `c + 1`, `prev == d` | opens (the sync that was in flight when the anchor was not yet advanced) |
//! | `(c, d)` | counter `c + 1`, another `prev` | `Rollback` (its history does not pass through the anchored state) |
//! | `(c, d)` | counter `> c + 1` | `Rollback` (more than the one sync in flight ahead) |
//!
//! Then the anchor is advanced to the image's state. The counter alone is
//! not enough: a host that keeps the image of a sync whose anchor write it
//! stopped, boots the previous image (dropping an in-flight sync is
//! allowed), lets the user sync once more and then puts the kept image
//! back would present the same counter as the anchor; the digest tells the
//! two apart.
//!
//! Before any `read` or `advance` the disk calls [`RollbackAnchor::bind`]
//! with its UUID (and whether it is being created). A fresh bind stores the
//! genesis state ([`AnchorState::genesis`]: counter 0, digest all zeros,
//! which is what the first commit names as its `prev`); an anchor of
//! another disk is an error.
//!
//! Implementations: [`NoAnchor`] (no protection; the disk reports
//! "unprotected against whole-image rollback"), [`MemAnchor`] (shared
//! memory for tests, `std`), [`FileAnchor`] (a file on storage the guest
//! trusts, `std`), [`super::BlockAnchor`] (authenticated, on a small block
//! device the guest trusts; no_std, used by the kernel module). A vTPM NV
//! index or an attestation service fit the same trait.
//!
//! Every anchor assumes that its storage is outside the host's reach: a
//! host that can roll the anchor back together with the disk image defeats
//! it.

use crate::platform::{Hash, HASH_LEN};
use crate::{Cause, Error, ErrorKind, Result};

/// What an anchor holds for its disk: the last anchored commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnchorState {
    /// The commit's sync counter.
    pub counter: u64,
    /// The commit's digest (see [`super::state::UserState::digest`]).
    pub digest: Hash,
}

impl AnchorState {
    /// The state a fresh bind stores: before the disk's first commit.
    pub const fn genesis() -> Self {
        Self {
            counter: 0,
            digest: [0u8; HASH_LEN],
        }
    }
}

/// Whether an anchor holding `cur` must store `next`: `Ok(true)` to store,
/// `Ok(false)` if it holds `next` already; an error if it holds a newer
/// state or another state with the same counter (another copy of the disk
/// advanced it). The rule every implementation applies in `advance`.
pub fn must_store(cur: Option<&AnchorState>, next: &AnchorState) -> Result<bool> {
    match cur {
        None => Ok(true),
        Some(c) if next.counter > c.counter => Ok(true),
        Some(c) if c == next => Ok(false),
        Some(_) => Err(Error::new(ErrorKind::Rollback, "rollback anchor holds a newer or another state than this disk's (another copy of the disk synced)").with_cause(Cause::Anchor)),
    }
}

/// A trusted store of the last committed state. See the module
/// documentation.
pub trait RollbackAnchor: Send + Sync {
    /// A short name for status lines ("none", "memory", "file", "dev").
    fn kind(&self) -> &'static str;
    /// Ties the anchor to the disk with `uuid`; the disk calls it once,
    /// before any `read` or `advance`. `fresh`: the disk is being created;
    /// the anchor stores [`AnchorState::genesis`] for it, replacing an
    /// earlier disk's. Otherwise an anchor of another disk is an error (at
    /// `bind` or at `read`).
    fn bind(&mut self, uuid: &[u8; 16], fresh: bool) -> Result<()>;
    /// The last state stored, or `None` if the anchor holds none yet.
    fn read(&self) -> Result<Option<AnchorState>>;
    /// Stores the commit `counter` with `digest` durably (see
    /// [`must_store`]: never lowers the stored counter, and never replaces
    /// a state by another of the same counter).
    fn advance(&self, counter: u64, digest: &Hash) -> Result<()>;
    /// Whether this anchor protects against whole-image rollback.
    fn protects(&self) -> bool {
        true
    }
}

/// No anchor: whole-image rollback is not detected, and the disk says so.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoAnchor;

impl RollbackAnchor for NoAnchor {
    fn kind(&self) -> &'static str {
        "none"
    }
    fn bind(&mut self, _uuid: &[u8; 16], _fresh: bool) -> Result<()> {
        Ok(())
    }
    fn read(&self) -> Result<Option<AnchorState>> {
        Ok(None)
    }
    fn advance(&self, _counter: u64, _digest: &Hash) -> Result<()> {
        Ok(())
    }
    fn protects(&self) -> bool {
        false
    }
}

#[cfg(feature = "std")]
fn other_disk() -> Error {
    Error::new(
        ErrorKind::WrongKey,
        "rollback anchor belongs to another disk (UUID differs)",
    )
    .with_cause(Cause::Anchor)
}

#[cfg(feature = "std")]
fn unbound() -> Error {
    Error::new(
        ErrorKind::InvalidState,
        "rollback anchor used before it was bound to a disk",
    )
    .with_cause(Cause::Anchor)
}

#[cfg(feature = "std")]
pub use mem::MemAnchor;

#[cfg(feature = "std")]
mod mem {
    use super::{must_store, other_disk, unbound, AnchorState, RollbackAnchor};
    use crate::platform::Hash;
    use crate::Result;
    use std::sync::{Arc, Mutex};

    /// What a [`MemAnchor`] holds: the UUID of its disk and the state.
    type Slot = Option<([u8; 16], AnchorState)>;

    /// An anchor in memory; clones share it (tests reopen a disk with a
    /// clone). A handle that was never bound can still `read` (tests
    /// inspect the anchor with it), without the UUID check.
    #[derive(Clone, Debug, Default)]
    pub struct MemAnchor {
        slot: Arc<Mutex<Slot>>,
        bound: Option<[u8; 16]>,
    }

    impl MemAnchor {
        /// A fresh anchor that holds nothing.
        pub fn new() -> Self {
            Self::default()
        }

        fn with<T>(&self, f: impl FnOnce(&mut Slot) -> T) -> T {
            let mut g = match self.slot.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            f(&mut g)
        }

        /// Replaces the stored state (tests of a lost or forged anchor);
        /// the UUID stays (or is all zeros if none was stored).
        pub fn force(&self, state: Option<AnchorState>) {
            self.with(|s| {
                let uuid = s.map(|(u, _)| u).unwrap_or_default();
                *s = state.map(|st| (uuid, st));
            })
        }
    }

    impl RollbackAnchor for MemAnchor {
        fn kind(&self) -> &'static str {
            "memory"
        }
        fn bind(&mut self, uuid: &[u8; 16], fresh: bool) -> Result<()> {
            self.bound = Some(*uuid);
            self.with(|s| match s {
                _ if fresh => {
                    *s = Some((*uuid, AnchorState::genesis()));
                    Ok(())
                }
                Some((u, _)) if u != uuid => Err(other_disk()),
                _ => Ok(()),
            })
        }
        fn read(&self) -> Result<Option<AnchorState>> {
            self.with(|s| match (s.as_ref(), self.bound) {
                (Some((u, _)), Some(b)) if *u != b => Err(other_disk()),
                (st, _) => Ok(st.map(|(_, st)| *st)),
            })
        }
        fn advance(&self, counter: u64, digest: &Hash) -> Result<()> {
            let uuid = self.bound.ok_or_else(unbound)?;
            let next = AnchorState {
                counter,
                digest: *digest,
            };
            self.with(|s| {
                let cur = match s.as_ref() {
                    Some((u, _)) if *u != uuid => return Err(other_disk()),
                    Some((_, st)) => Some(st),
                    None => None,
                };
                if must_store(cur, &next)? {
                    *s = Some((uuid, next));
                }
                Ok(())
            })
        }
    }
}

#[cfg(feature = "std")]
pub use file::FileAnchor;

#[cfg(feature = "std")]
mod file {
    use super::{must_store, other_disk, unbound, AnchorState, RollbackAnchor};
    use crate::platform::Hash;
    use crate::{Cause, Error, ErrorKind, Result};
    use std::fs;
    use std::io::Write;
    use std::path::PathBuf;

    const MAGIC: &[u8; 8] = b"MLSDANC2";
    const MAGIC_V1: &[u8; 8] = b"MLSDANC1";
    /// UUID, counter and digest.
    const BODY: usize = 16 + 8 + 32;
    /// Magic, body and the body's complement.
    pub(super) const FILE_LEN: usize = 8 + 2 * BODY;

    /// The anchor in a file on trusted storage (120 bytes): magic
    /// `MLSDANC2`, the disk's UUID (16 bytes), the counter (u64 LE), the
    /// digest (32 bytes), then the bitwise complement of those 56 bytes (a
    /// torn or edited file is an error, not a zero). Updated by writing a
    /// temporary file, syncing it and renaming it over the old one. A file
    /// of the first format (`MLSDANC1`, a counter only) is `Unsupported`.
    #[derive(Debug)]
    pub struct FileAnchor {
        path: PathBuf,
        bound: Option<[u8; 16]>,
    }

    impl FileAnchor {
        /// An anchor kept in `path` (created by a fresh bind or the first
        /// `advance`).
        pub fn new(path: impl Into<PathBuf>) -> Self {
            Self {
                path: path.into(),
                bound: None,
            }
        }

        /// The file's UUID and state, or `None` if there is no file.
        fn load(&self) -> Result<Option<([u8; 16], AnchorState)>> {
            let b = match fs::read(&self.path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(_) => return Err(io()),
            };
            if b.get(..8) == Some(&MAGIC_V1[..]) {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "rollback anchor file has the first format (a counter only); start a new one",
                )
                .with_cause(Cause::Anchor));
            }
            parse(&b).map(Some)
        }

        fn store(&self, uuid: &[u8; 16], st: &AnchorState) -> Result<()> {
            let b = emit(uuid, st);
            let mut tmp = self.path.clone().into_os_string();
            tmp.push(".tmp");
            let mut f = fs::File::create(&tmp).map_err(|_| io())?;
            f.write_all(&b).map_err(|_| io())?;
            f.sync_all().map_err(|_| io())?;
            fs::rename(&tmp, &self.path).map_err(|_| io())?;
            if let Some(dir) = self.path.parent() {
                if let Ok(d) = fs::File::open(if dir.as_os_str().is_empty() {
                    std::path::Path::new(".")
                } else {
                    dir
                }) {
                    let _ = d.sync_all();
                }
            }
            Ok(())
        }
    }

    fn io() -> Error {
        Error::new(ErrorKind::Io, "rollback anchor file I/O failed").with_cause(Cause::Anchor)
    }

    pub(super) fn emit(uuid: &[u8; 16], st: &AnchorState) -> [u8; FILE_LEN] {
        let mut b = [0u8; FILE_LEN];
        let (magic, rest) = b.split_at_mut(8);
        magic.copy_from_slice(MAGIC);
        let (body, check) = rest.split_at_mut(BODY);
        let (u, rest) = body.split_at_mut(16);
        u.copy_from_slice(uuid);
        let (c, d) = rest.split_at_mut(8);
        c.copy_from_slice(&st.counter.to_le_bytes());
        d.copy_from_slice(&st.digest);
        for (k, v) in check.iter_mut().zip(body.iter()) {
            *k = !*v;
        }
        b
    }

    pub(super) fn parse(b: &[u8]) -> Result<([u8; 16], AnchorState)> {
        let bad = || {
            Error::new(ErrorKind::Corrupted, "rollback anchor file is malformed")
                .with_cause(Cause::Anchor)
        };
        if b.len() != FILE_LEN || b.get(..8) != Some(&MAGIC[..]) {
            return Err(bad());
        }
        let body = b.get(8..8 + BODY).ok_or_else(bad)?;
        let check = b.get(8 + BODY..).ok_or_else(bad)?;
        if body.iter().zip(check).any(|(v, k)| *v != !*k) {
            return Err(bad());
        }
        let uuid: [u8; 16] = body
            .get(..16)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(bad)?;
        let counter: [u8; 8] = body
            .get(16..24)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(bad)?;
        let digest: Hash = body
            .get(24..)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(bad)?;
        Ok((
            uuid,
            AnchorState {
                counter: u64::from_le_bytes(counter),
                digest,
            },
        ))
    }

    impl RollbackAnchor for FileAnchor {
        fn kind(&self) -> &'static str {
            "file"
        }

        fn bind(&mut self, uuid: &[u8; 16], fresh: bool) -> Result<()> {
            self.bound = Some(*uuid);
            if fresh {
                self.store(uuid, &AnchorState::genesis())?;
            }
            Ok(())
        }

        fn read(&self) -> Result<Option<AnchorState>> {
            let uuid = self.bound.ok_or_else(unbound)?;
            match self.load()? {
                Some((u, _)) if u != uuid => Err(other_disk()),
                st => Ok(st.map(|(_, st)| st)),
            }
        }

        fn advance(&self, counter: u64, digest: &Hash) -> Result<()> {
            let next = AnchorState {
                counter,
                digest: *digest,
            };
            if must_store(self.read()?.as_ref(), &next)? {
                let uuid = self.bound.ok_or_else(unbound)?;
                self.store(&uuid, &next)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: [u8; 16] = [7; 16];

    fn st(counter: u64, d: u8) -> AnchorState {
        AnchorState {
            counter,
            digest: [d; HASH_LEN],
        }
    }

    #[test]
    fn must_store_never_lowers_nor_replaces_a_state_of_the_same_counter() {
        assert!(must_store(None, &st(0, 0)).unwrap());
        assert!(must_store(Some(&st(3, 1)), &st(4, 2)).unwrap());
        assert!(!must_store(Some(&st(3, 1)), &st(3, 1)).unwrap());
        for next in [st(3, 2), st(2, 1), st(0, 0)] {
            let e = must_store(Some(&st(3, 1)), &next).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Rollback, "{next:?}");
        }
    }

    #[test]
    fn mem_anchor_is_monotonic_shared_and_bound() {
        let mut a = MemAnchor::new();
        assert_eq!(a.read().unwrap(), None);
        assert_eq!(
            a.advance(1, &[1; HASH_LEN]).unwrap_err().kind(),
            ErrorKind::InvalidState
        );
        a.bind(&U, false).unwrap();
        a.advance(3, &[3; HASH_LEN]).unwrap();
        let b = a.clone();
        assert!(b.advance(2, &[2; HASH_LEN]).is_err());
        assert!(b.advance(3, &[9; HASH_LEN]).is_err());
        b.advance(3, &[3; HASH_LEN]).unwrap();
        assert_eq!(a.read().unwrap(), Some(st(3, 3)));
        let c = MemAnchor::new();
        c.force(Some(st(5, 5)));
        assert_eq!(c.read().unwrap(), Some(st(5, 5)));
        // Another disk's UUID: refused unless fresh.
        let mut other = a.clone();
        assert_eq!(
            other.bind(&[8; 16], false).unwrap_err().kind(),
            ErrorKind::WrongKey
        );
        assert_eq!(a.read().unwrap(), Some(st(3, 3)));
        other.bind(&[8; 16], true).unwrap();
        assert_eq!(other.read().unwrap(), Some(AnchorState::genesis()));
        assert_eq!(a.read().unwrap_err().kind(), ErrorKind::WrongKey);
        assert!(NoAnchor.read().unwrap().is_none());
        assert!(!NoAnchor.protects());
    }

    #[test]
    fn file_anchor_payload_round_trip_and_every_flip() {
        let s = st(0x0102_0304_0506_0708, 0xab);
        let b = file::emit(&U, &s);
        assert_eq!(file::parse(&b).unwrap(), (U, s));
        for i in 0..b.len() {
            for bit in [0x01u8, 0x80] {
                let mut c = b;
                c[i] ^= bit;
                assert_eq!(
                    file::parse(&c).unwrap_err().kind(),
                    ErrorKind::Corrupted,
                    "byte {i}"
                );
            }
        }
        assert!(file::parse(&b[..file::FILE_LEN - 1]).is_err());
    }

    #[test]
    fn file_anchor_round_trip_binding_and_corruption() {
        let dir = std::env::temp_dir().join(format!("mlsd-anchor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("anchor");
        let _ = std::fs::remove_file(&p);
        let mut a = FileAnchor::new(&p);
        assert_eq!(a.read().unwrap_err().kind(), ErrorKind::InvalidState);
        a.bind(&U, false).unwrap();
        assert_eq!(a.read().unwrap(), None);
        a.advance(5, &[5; HASH_LEN]).unwrap();
        assert!(a.advance(4, &[4; HASH_LEN]).is_err());
        assert!(a.advance(5, &[6; HASH_LEN]).is_err());
        let mut b = FileAnchor::new(&p);
        b.bind(&U, false).unwrap();
        assert_eq!(b.read().unwrap(), Some(st(5, 5)));
        // Another disk's file.
        let mut other = FileAnchor::new(&p);
        other.bind(&[1; 16], false).unwrap();
        assert_eq!(other.read().unwrap_err().kind(), ErrorKind::WrongKey);
        assert_eq!(
            other.advance(9, &[9; HASH_LEN]).unwrap_err().kind(),
            ErrorKind::WrongKey
        );
        // A fresh bind starts over.
        other.bind(&[1; 16], true).unwrap();
        assert_eq!(other.read().unwrap(), Some(AnchorState::genesis()));
        a.bind(&U, true).unwrap();
        a.advance(5, &[5; HASH_LEN]).unwrap();
        let mut raw = std::fs::read(&p).unwrap();
        raw[9] ^= 1;
        std::fs::write(&p, &raw).unwrap();
        assert_eq!(a.read().unwrap_err().kind(), ErrorKind::Corrupted);
        // The first format is refused as such.
        let mut v1 = b"MLSDANC1".to_vec();
        v1.extend_from_slice(&5u64.to_le_bytes());
        v1.extend_from_slice(&(!5u64).to_le_bytes());
        std::fs::write(&p, &v1).unwrap();
        assert_eq!(a.read().unwrap_err().kind(), ErrorKind::Unsupported);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
