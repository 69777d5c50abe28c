//! Rollback anchors: a trusted, monotonic sync counter outside the host's
//! reach.
//!
//! The disk keeps a sync counter that grows by one at every sync and is
//! committed atomically with the index. A host that restores an old copy of
//! the whole image restores an old counter as well; only a counter kept
//! somewhere the host cannot write tells the two apart. After every sync the
//! disk calls [`RollbackAnchor::advance`] with the new counter; `open`
//! compares the image's counter with [`RollbackAnchor::read`] and fails with
//! [`ErrorKind::Rollback`] when the image is older.
//!
//! A crash between the commit and `advance` leaves the image one sync ahead
//! of the anchor: `open` accepts an image counter at or above the anchor and
//! brings the anchor up to it.
//!
//! Before any `read` or `advance` the disk calls [`RollbackAnchor::bind`]
//! with its UUID (and whether it is being created), so an anchor that keeps
//! one counter per disk can refuse another disk's.
//!
//! Implementations: [`NoAnchor`] (no protection; the disk reports
//! "unprotected against whole-image rollback"), [`MemAnchor`] (shared memory
//! counter for tests), [`FileAnchor`] (a file on storage the guest trusts,
//! `std`), [`super::BlockAnchor`] (authenticated, on a small block device
//! the guest trusts; no_std, used by the kernel module). A vTPM NV counter
//! or an attestation service fit the same trait.
//!
//! Every anchor assumes that its storage is outside the host's reach: a
//! host that can roll the anchor back together with the disk image defeats
//! it.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, ErrorKind, Result};

/// A trusted monotonic counter. See the module documentation.
pub trait RollbackAnchor: Send + Sync {
    /// A short name for status lines ("none", "memory", "file", "dev").
    fn kind(&self) -> &'static str;
    /// Ties the anchor to the disk with `uuid`; the disk calls it once,
    /// before any `read` or `advance`. `fresh`: the disk is being created,
    /// and an anchor of an earlier disk may be replaced; otherwise an
    /// anchor of another disk is an error (at `bind` or at `read`).
    ///
    /// The default keeps one counter whatever the disk (no binding).
    fn bind(&mut self, uuid: &[u8; 16], fresh: bool) -> Result<()> {
        let _ = (uuid, fresh);
        Ok(())
    }
    /// The last counter stored, or `None` if the anchor was never advanced.
    fn read(&self) -> Result<Option<u64>>;
    /// Stores `counter` durably. Never lowers the stored value.
    fn advance(&self, counter: u64) -> Result<()>;
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
    fn read(&self) -> Result<Option<u64>> {
        Ok(None)
    }
    fn advance(&self, _counter: u64) -> Result<()> {
        Ok(())
    }
    fn protects(&self) -> bool {
        false
    }
}

/// A counter in memory; clones share it (tests reopen a disk with a clone).
#[derive(Clone, Debug, Default)]
pub struct MemAnchor {
    value: Arc<AtomicU64>,
}

const UNSET: u64 = u64::MAX;

impl MemAnchor {
    /// A fresh anchor that was never advanced.
    pub fn new() -> Self {
        Self {
            value: Arc::new(AtomicU64::new(UNSET)),
        }
    }

    /// Sets the counter to any value (tests of a lost or forged anchor).
    pub fn force(&self, counter: Option<u64>) {
        self.value.store(counter.unwrap_or(UNSET), Ordering::SeqCst);
    }
}

impl RollbackAnchor for MemAnchor {
    fn kind(&self) -> &'static str {
        "memory"
    }
    fn read(&self) -> Result<Option<u64>> {
        Ok(match self.value.load(Ordering::SeqCst) {
            UNSET => None,
            v => Some(v),
        })
    }
    fn advance(&self, counter: u64) -> Result<()> {
        if counter == UNSET {
            return Err(Error::new(ErrorKind::InvalidArgument, "anchor counter"));
        }
        let mut cur = self.value.load(Ordering::SeqCst);
        loop {
            if cur != UNSET && cur >= counter {
                return Ok(());
            }
            match self
                .value
                .compare_exchange(cur, counter, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Ok(()),
                Err(v) => cur = v,
            }
        }
    }
}

#[cfg(feature = "std")]
pub use file::FileAnchor;

#[cfg(feature = "std")]
mod file {
    use super::RollbackAnchor;
    use crate::{Error, ErrorKind, Result};
    use std::fs;
    use std::io::Write;
    use std::path::PathBuf;

    const MAGIC: &[u8; 8] = b"MLSDANC1";

    /// A counter in a file on trusted storage: 8 bytes magic, the counter as
    /// u64 LE, and its bitwise complement (a torn or edited file is an
    /// error, not a zero). Updated by writing a temporary file, syncing it
    /// and renaming it over the old one.
    #[derive(Debug)]
    pub struct FileAnchor {
        path: PathBuf,
    }

    impl FileAnchor {
        /// An anchor kept in `path` (created at the first `advance`).
        pub fn new(path: impl Into<PathBuf>) -> Self {
            Self { path: path.into() }
        }
    }

    fn io() -> Error {
        Error::new(ErrorKind::Io, "rollback anchor file I/O failed")
    }

    impl RollbackAnchor for FileAnchor {
        fn kind(&self) -> &'static str {
            "file"
        }

        fn read(&self) -> Result<Option<u64>> {
            let b = match fs::read(&self.path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(_) => return Err(io()),
            };
            let bad = Error::new(ErrorKind::Corrupted, "rollback anchor file is malformed");
            if b.len() != 24 || b.get(..8) != Some(&MAGIC[..]) {
                return Err(bad);
            }
            let mut v = [0u8; 8];
            let mut n = [0u8; 8];
            v.copy_from_slice(b.get(8..16).ok_or(bad)?);
            n.copy_from_slice(b.get(16..24).ok_or(bad)?);
            let v = u64::from_le_bytes(v);
            if !v != u64::from_le_bytes(n) {
                return Err(bad);
            }
            Ok(Some(v))
        }

        fn advance(&self, counter: u64) -> Result<()> {
            if let Some(cur) = self.read()? {
                if cur >= counter {
                    return Ok(());
                }
            }
            let mut b = std::vec::Vec::with_capacity(24);
            b.extend_from_slice(MAGIC);
            b.extend_from_slice(&counter.to_le_bytes());
            b.extend_from_slice(&(!counter).to_le_bytes());
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_anchor_is_monotonic_and_shared() {
        let a = MemAnchor::new();
        assert_eq!(a.read().unwrap(), None);
        a.advance(3).unwrap();
        let b = a.clone();
        b.advance(2).unwrap();
        assert_eq!(a.read().unwrap(), Some(3));
        assert!(NoAnchor.read().unwrap().is_none());
        assert!(!NoAnchor.protects());
    }

    #[test]
    fn file_anchor_round_trip_and_corruption() {
        let dir = std::env::temp_dir().join(format!("mlsd-anchor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("anchor");
        let _ = std::fs::remove_file(&p);
        let a = FileAnchor::new(&p);
        assert_eq!(a.read().unwrap(), None);
        a.advance(5).unwrap();
        a.advance(4).unwrap();
        assert_eq!(FileAnchor::new(&p).read().unwrap(), Some(5));
        let mut b = std::fs::read(&p).unwrap();
        b[9] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert_eq!(a.read().unwrap_err().kind(), ErrorKind::Corrupted);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
