//! A disk in memory.

use std::sync::Mutex;
use std::vec::Vec;

use super::{check_range, BlockSet, BLOCK_SIZE};
use crate::{Error, ErrorKind, Result};

/// A `BlockSet` in memory. Writes are durable at once; flush does nothing.
#[derive(Debug)]
pub struct MemDisk {
    blocks: Mutex<Vec<u8>>,
    nblocks: u64,
}

impl MemDisk {
    /// A zeroed disk of `nblocks` blocks.
    pub fn new(nblocks: u64) -> Result<Self> {
        let bytes = usize::try_from(nblocks)
            .ok()
            .and_then(|n| n.checked_mul(BLOCK_SIZE))
            .ok_or(Error::new(ErrorKind::InvalidArgument, "disk too large"))?;
        let v = crate::fallible::filled_vec(bytes, 0)?;
        Ok(Self {
            blocks: Mutex::new(v),
            nblocks,
        })
    }

    /// A copy of the whole disk's bytes (for tests that snapshot an image).
    pub fn snapshot(&self) -> Result<Vec<u8>> {
        let g = self.lock()?;
        let mut v = Vec::new();
        v.try_reserve_exact(g.len())?;
        v.extend_from_slice(&g);
        Ok(v)
    }

    /// Replaces the whole disk's bytes with `image` (same size).
    pub fn restore(&self, image: &[u8]) -> Result<()> {
        let mut g = self.lock()?;
        if image.len() != g.len() {
            return Err(Error::new(ErrorKind::InvalidArgument, "image size differs"));
        }
        g.copy_from_slice(image);
        Ok(())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Vec<u8>>> {
        self.blocks
            .lock()
            .map_err(|_| Error::new(ErrorKind::Io, "memory disk lock poisoned"))
    }

    fn span(&self, pos: u64, len: usize) -> Result<core::ops::Range<usize>> {
        check_range(self.nblocks, pos, len)?;
        let off = usize::try_from(pos)
            .ok()
            .and_then(|p| p.checked_mul(BLOCK_SIZE))
            .ok_or(Error::new(ErrorKind::InvalidArgument, "offset overflow"))?;
        Ok(off..off + len)
    }
}

impl BlockSet for MemDisk {
    fn read(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        let span = self.span(pos, buf.len())?;
        let g = self.lock()?;
        let src = g
            .get(span)
            .ok_or(Error::new(ErrorKind::InvalidArgument, "range"))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write(&self, pos: u64, buf: &[u8]) -> Result<()> {
        let span = self.span(pos, buf.len())?;
        let mut g = self.lock()?;
        let dst = g
            .get_mut(span)
            .ok_or(Error::new(ErrorKind::InvalidArgument, "range"))?;
        dst.copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn nblocks(&self) -> u64 {
        self.nblocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_and_bounds() {
        let d = MemDisk::new(4).unwrap();
        let w = vec![7u8; 2 * BLOCK_SIZE];
        d.write(2, &w).unwrap();
        let mut r = vec![0u8; 2 * BLOCK_SIZE];
        d.read(2, &mut r).unwrap();
        assert_eq!(r, w);
        assert_eq!(
            d.read(3, &mut r).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert!(d.write(0, &[0u8; 100]).is_err());
    }
}
