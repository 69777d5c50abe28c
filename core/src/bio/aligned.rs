//! `AlignedBuf`: a heap buffer whose bytes start on a page boundary.
//!
//! Built without unsafe code: the vector is allocated one page larger than
//! asked and the buffer is its page-aligned window. A device that needs
//! aligned memory (a file opened with `O_DIRECT`) then takes it as it is,
//! with no bounce copy; any other device does not care.

use alloc::vec::Vec;

use crate::{Error, ErrorKind, Result};

/// The alignment: a page (covers 512-byte and 4 KiB logical sectors).
pub const PAGE_ALIGN: usize = 4096;

/// A zeroed buffer of a fixed length, page-aligned (see the module
/// documentation).
#[derive(Debug, Default)]
pub struct AlignedBuf {
    buf: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    /// An empty buffer (no allocation).
    pub const fn new() -> Self {
        Self {
            buf: Vec::new(),
            off: 0,
            len: 0,
        }
    }

    /// A zeroed buffer of `len` bytes; the allocation is fallible.
    pub fn zeroed(len: usize) -> Result<Self> {
        let mut b = Self::new();
        b.resize(len)?;
        Ok(b)
    }

    /// Makes the buffer `len` bytes long. Bytes kept from before keep their
    /// value only if the buffer did not have to grow; new bytes read as
    /// zero on growth. Growing allocates (fallibly) a new vector.
    pub fn resize(&mut self, len: usize) -> Result<()> {
        if self.buf.len().saturating_sub(self.off) < len {
            let total = len.checked_add(PAGE_ALIGN).ok_or(Error::new(
                ErrorKind::InvalidArgument,
                "aligned buffer too large",
            ))?;
            let buf = crate::fallible::filled_vec(total, 0)?;
            let addr = buf.as_ptr() as usize;
            self.off = (PAGE_ALIGN - addr % PAGE_ALIGN) % PAGE_ALIGN;
            self.buf = buf;
        }
        self.len = len;
        Ok(())
    }

    /// The buffer.
    pub fn as_slice(&self) -> &[u8] {
        self.buf
            .get(self.off..self.off.saturating_add(self.len))
            .unwrap_or_default()
    }

    /// The buffer, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let end = self.off.saturating_add(self.len);
        self.buf.get_mut(self.off..end).unwrap_or_default()
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes allocated (for memory accounting).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// Whether `buf` starts on a page boundary and is whole pages long.
pub fn is_page_aligned(buf: &[u8]) -> bool {
    buf.as_ptr() as usize % PAGE_ALIGN == 0 && buf.len() % PAGE_ALIGN == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_grows_keeping_alignment() {
        let mut b = AlignedBuf::zeroed(3 * 4096).unwrap();
        assert!(is_page_aligned(b.as_slice()));
        assert_eq!(b.len(), 3 * 4096);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[5] = 7;
        // Shrinking keeps the allocation and the bytes.
        b.resize(4096).unwrap();
        assert_eq!(b.as_slice()[5], 7);
        assert!(is_page_aligned(b.as_slice()));
        // Growing past the allocation: a new, zeroed, aligned buffer.
        b.resize(64 * 4096).unwrap();
        assert!(is_page_aligned(b.as_slice()));
        assert_eq!(b.as_mut_slice().len(), 64 * 4096);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        assert!(b.capacity() >= 65 * 4096);
        // Not a multiple of a page: aligned start, not "page aligned".
        b.resize(100).unwrap();
        assert!(!is_page_aligned(b.as_slice()));
        assert_eq!(b.as_slice().as_ptr() as usize % PAGE_ALIGN, 0);
        assert!(AlignedBuf::new().is_empty());
        assert_eq!(
            AlignedBuf::zeroed(usize::MAX).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }
}
