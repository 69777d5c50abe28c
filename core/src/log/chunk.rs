//! The chunk pool: which chunks of the chunk region are free.
//!
//! A bitmap in memory (one bit per chunk; 128 KiB for a million chunks). It is
//! never written to disk: at open it is rebuilt from the chunk lists of the
//! logs in the recovered state, so it cannot disagree with them.

use alloc::vec::Vec;

use crate::{ensure, Error, ErrorKind, Result};

/// A chunk index in the chunk region.
pub type ChunkId = u32;

#[derive(Clone, Debug)]
pub(crate) struct ChunkPool {
    /// Bit set = chunk in use.
    used: Vec<u64>,
    nchunks: u32,
    nfree: u32,
    /// Next-fit cursor.
    cursor: u32,
}

impl ChunkPool {
    /// A pool of `nchunks` free chunks.
    pub(crate) fn new(nchunks: u32) -> Result<Self> {
        let words = (nchunks as usize).div_ceil(64);
        let used = crate::fallible::filled_vec(words, 0)?;
        Ok(Self {
            used,
            nchunks,
            nfree: nchunks,
            cursor: 0,
        })
    }

    pub(crate) fn nchunks(&self) -> u32 {
        self.nchunks
    }

    pub(crate) fn nfree(&self) -> u32 {
        self.nfree
    }

    fn word(&mut self, c: ChunkId) -> Result<(&mut u64, u64)> {
        ensure!(c < self.nchunks, Corrupted, "chunk index out of range");
        let w = self
            .used
            .get_mut((c / 64) as usize)
            .ok_or(Error::new(ErrorKind::Corrupted, "chunk index out of range"))?;
        Ok((w, 1u64 << (c % 64)))
    }

    /// Whether `c` is in use.
    #[cfg(feature = "shared-store")]
    pub(crate) fn is_used(&self, c: ChunkId) -> Result<bool> {
        ensure!(c < self.nchunks, Corrupted, "chunk index out of range");
        let w = self
            .used
            .get((c / 64) as usize)
            .ok_or(Error::new(ErrorKind::Corrupted, "chunk index out of range"))?;
        Ok(*w & (1u64 << (c % 64)) != 0)
    }

    /// Marks `c` used; an error if it already is (two owners).
    pub(crate) fn claim(&mut self, c: ChunkId) -> Result<()> {
        let (w, bit) = self.word(c)?;
        ensure!(*w & bit == 0, Corrupted, "chunk owned twice");
        *w |= bit;
        self.nfree -= 1;
        Ok(())
    }

    /// Marks `c` free; an error if it already is.
    pub(crate) fn release(&mut self, c: ChunkId) -> Result<()> {
        let (w, bit) = self.word(c)?;
        ensure!(*w & bit != 0, InvalidState, "chunk freed twice");
        *w &= !bit;
        self.nfree += 1;
        Ok(())
    }

    /// Takes a free chunk.
    pub(crate) fn alloc(&mut self) -> Result<ChunkId> {
        ensure!(self.nfree > 0, NoSpace, "no free chunk in the log store");
        let words = self.used.len();
        let start = (self.cursor / 64) as usize;
        for i in 0..=words {
            let wi = (start + i) % words.max(1);
            let w = self.used.get(wi).copied().unwrap_or(u64::MAX);
            if w != u64::MAX {
                let bit = (!w).trailing_zeros();
                let c = (wi as u32) * 64 + bit;
                if c < self.nchunks {
                    self.claim(c)?;
                    self.cursor = c + 1;
                    if self.cursor >= self.nchunks {
                        self.cursor = 0;
                    }
                    return Ok(c);
                }
            }
        }
        Err(Error::new(
            ErrorKind::InvalidState,
            "free count disagrees with bitmap",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_release_claim() {
        let mut p = ChunkPool::new(130).unwrap();
        let mut got = Vec::new();
        for _ in 0..130 {
            got.push(p.alloc().unwrap());
        }
        got.sort();
        assert_eq!(got, (0..130).collect::<Vec<_>>());
        assert_eq!(p.alloc().unwrap_err().kind(), ErrorKind::NoSpace);
        p.release(77).unwrap();
        assert!(p.release(77).is_err());
        assert_eq!(p.alloc().unwrap(), 77);
        assert!(p.claim(5).is_err());
        assert!(p.claim(130).is_err());
    }
}
