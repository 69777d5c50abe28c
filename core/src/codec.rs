//! The byte codec helpers every on-disk structure uses: little-endian
//! fields read and written with length checks, never a panic. Two
//! styles: a cursor ([`Writer`], [`Reader`]) for structures read front to
//! back, and offset accessors ([`put`], [`get_u8`] ... [`get_u64`]) for
//! fixed layouts addressed by offset. Each structure's codec lives in its
//! own module as `emit` (into bytes) and `parse` (from bytes, checked).

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

/// Writes `bytes` at `off` of `buf`, with a length check.
pub fn put(buf: &mut [u8], off: usize, bytes: &[u8]) -> Result<()> {
    let end = off
        .checked_add(bytes.len())
        .ok_or(Error::new(ErrorKind::InvalidArgument, "offset overflow"))?;
    buf.get_mut(off..end)
        .ok_or(Error::new(ErrorKind::InvalidArgument, "write past buffer"))?
        .copy_from_slice(bytes);
    Ok(())
}

fn get_arr<const N: usize>(buf: &[u8], off: usize) -> Result<[u8; N]> {
    let end = off
        .checked_add(N)
        .ok_or(Error::new(ErrorKind::Corrupted, "offset overflow"))?;
    let s = buf.get(off..end).ok_or(Error::new(
        ErrorKind::Corrupted,
        "read past the end of a structure",
    ))?;
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    Ok(a)
}

/// Reads a byte at `off`.
pub fn get_u8(buf: &[u8], off: usize) -> Result<u8> {
    Ok(get_arr::<1>(buf, off)?[0])
}

/// Reads a little-endian u16 at `off`.
pub fn get_u16(buf: &[u8], off: usize) -> Result<u16> {
    get_arr(buf, off).map(u16::from_le_bytes)
}

/// Reads a little-endian u32 at `off`.
pub fn get_u32(buf: &[u8], off: usize) -> Result<u32> {
    get_arr(buf, off).map(u32::from_le_bytes)
}

/// Reads a little-endian u64 at `off`.
pub fn get_u64(buf: &[u8], off: usize) -> Result<u64> {
    get_arr(buf, off).map(u64::from_le_bytes)
}

/// Writes `val` into the field `range` of `buf`; the field must exist and
/// have exactly `val`'s length (for layouts that name their fields as
/// ranges).
pub fn put_field(buf: &mut [u8], range: core::ops::Range<usize>, val: &[u8]) -> Result<()> {
    buf.get_mut(range)
        .filter(|d| d.len() == val.len())
        .ok_or(Error::new(
            ErrorKind::InvalidArgument,
            "field range does not match its value",
        ))?
        .copy_from_slice(val);
    Ok(())
}
