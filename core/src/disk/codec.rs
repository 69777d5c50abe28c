//! Little-endian field readers and writers with length checks (no panics).

use crate::{Error, ErrorKind, Result};

fn short() -> Error {
    Error::new(ErrorKind::Corrupted, "structure shorter than its fields")
}

/// Writes little-endian fields into a slice, front to back.
pub(crate) struct Writer<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(out: &'a mut [u8]) -> Self {
        Self { out, pos: 0 }
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) -> Result<()> {
        let end = self.pos.checked_add(b.len()).ok_or(short())?;
        self.out
            .get_mut(self.pos..end)
            .ok_or(Error::new(
                ErrorKind::InvalidArgument,
                "output buffer too small",
            ))?
            .copy_from_slice(b);
        self.pos = end;
        Ok(())
    }

    pub(crate) fn u16(&mut self, v: u16) -> Result<()> {
        self.bytes(&v.to_le_bytes())
    }

    pub(crate) fn u32(&mut self, v: u32) -> Result<()> {
        self.bytes(&v.to_le_bytes())
    }

    pub(crate) fn u64(&mut self, v: u64) -> Result<()> {
        self.bytes(&v.to_le_bytes())
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }
}

/// Reads little-endian fields from a slice, front to back.
pub(crate) struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Self { b, pos: 0 }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(short())?;
        let s = self.b.get(self.pos..end).ok_or(short())?;
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}
