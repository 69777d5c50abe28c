//! [`PagedMap`]: a `u32` array over a large index range whose memory
//! follows the entries that are set, not the range.
//!
//! The segment table keeps two per-block maps (LBA -> data block, data
//! block -> LBA). As plain arrays they cost 8 bytes per block of the disk
//! from `create` on, written or not (2 GiB for a 1 TiB disk). Here the range
//! is cut into pages of [`PAGE_ENTRIES`] entries; a page exists only while it
//! holds a set entry, so a fresh or sparsely written disk costs the page
//! directory (10 bytes per 4 KiB page, 0.25 % of the range) and a page per
//! written region. Allocation is fallible: `set` returns `OutOfMemory`
//! instead of aborting.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::{Error, ErrorKind, Result};

/// Entries per page (4 KiB of `u32`).
pub const PAGE_ENTRIES: usize = 1024;

/// The value of an entry that is not set.
pub const EMPTY: u32 = u32::MAX;

type Page = Box<[u32; PAGE_ENTRIES]>;

/// A sparse `u32` array of fixed length; unset entries read [`EMPTY`].
pub(crate) struct PagedMap {
    len: u64,
    pages: Vec<Option<Page>>,
    /// Per page, its entries that are not [`EMPTY`].
    live: Vec<u16>,
    resident: usize,
}

fn split(i: u64) -> (usize, usize) {
    let p = (i / PAGE_ENTRIES as u64) as usize;
    (p, (i % PAGE_ENTRIES as u64) as usize)
}

impl PagedMap {
    /// A map of `len` entries, all [`EMPTY`]; only the page directory is
    /// allocated.
    pub(crate) fn new(len: u64) -> Result<Self> {
        let n = usize::try_from(len.div_ceil(PAGE_ENTRIES as u64)).map_err(|_| Error::oom())?;
        let mut pages = Vec::new();
        pages.try_reserve_exact(n)?;
        pages.resize_with(n, || None);
        let mut live = Vec::new();
        live.try_reserve_exact(n)?;
        live.resize(n, 0);
        Ok(Self {
            len,
            pages,
            live,
            resident: 0,
        })
    }

    /// The entry at `i` ([`EMPTY`] when unset), or `None` past the end.
    pub(crate) fn get(&self, i: u64) -> Option<u32> {
        if i >= self.len {
            return None;
        }
        let (p, o) = split(i);
        match self.pages.get(p)? {
            None => Some(EMPTY),
            Some(page) => page.get(o).copied(),
        }
    }

    /// Sets the entry at `i` (to [`EMPTY`] to clear it): allocates its page
    /// if needed, frees it when its last entry is cleared.
    pub(crate) fn set(&mut self, i: u64, v: u32) -> Result<()> {
        if i >= self.len {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "paged map: index past the end",
            ));
        }
        let (p, o) = split(i);
        let bad = || Error::new(ErrorKind::InvalidState, "paged map: page");
        let slot = self.pages.get_mut(p).ok_or_else(bad)?;
        let live = self.live.get_mut(p).ok_or_else(bad)?;
        if slot.is_none() {
            if v == EMPTY {
                return Ok(());
            }
            let mut s = Vec::new();
            s.try_reserve_exact(PAGE_ENTRIES)?;
            s.resize(PAGE_ENTRIES, EMPTY);
            let page: Page = s.into_boxed_slice().try_into().map_err(|_| bad())?;
            *slot = Some(page);
            *live = 0;
            self.resident += 1;
        }
        let page = slot.as_mut().ok_or_else(bad)?;
        let e = page.get_mut(o).ok_or_else(bad)?;
        match (*e == EMPTY, v == EMPTY) {
            (true, false) => *live += 1,
            (false, true) => *live = live.saturating_sub(1),
            _ => {}
        }
        *e = v;
        if *live == 0 {
            *slot = None;
            self.resident -= 1;
        }
        Ok(())
    }

    /// Bytes held: the directory and the resident pages.
    pub(crate) fn bytes(&self) -> usize {
        self.pages.capacity() * core::mem::size_of::<Option<Page>>()
            + self.live.capacity() * 2
            + self.resident * PAGE_ENTRIES * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_clear_and_pages_follow_entries() {
        let len = 10 * PAGE_ENTRIES as u64 + 7;
        let mut m = PagedMap::new(len).unwrap();
        let empty = m.bytes();
        assert!(empty < 256, "{empty}");
        assert_eq!(m.get(0), Some(EMPTY));
        assert_eq!(m.get(len - 1), Some(EMPTY));
        assert_eq!(m.get(len), None);
        assert!(m.set(len, 1).is_err());
        m.set(5, 50).unwrap();
        m.set(len - 1, 9).unwrap();
        m.set(PAGE_ENTRIES as u64 * 3, 3).unwrap();
        assert_eq!(m.get(5), Some(50));
        assert_eq!(m.get(len - 1), Some(9));
        assert_eq!(m.get(6), Some(EMPTY));
        assert_eq!(m.resident, 3);
        m.set(5, 51).unwrap();
        assert_eq!(m.get(5), Some(51));
        m.set(5, EMPTY).unwrap();
        assert_eq!(m.resident, 2);
        m.set(7, EMPTY).unwrap();
        assert_eq!(m.resident, 2, "clearing an unset entry allocates nothing");
        m.set(len - 1, EMPTY).unwrap();
        m.set(PAGE_ENTRIES as u64 * 3, EMPTY).unwrap();
        assert_eq!(m.resident, 0);
        assert_eq!(m.bytes(), empty);
    }

    #[test]
    fn a_terabyte_range_costs_its_directory_only() {
        // 1 TiB of 4 KiB blocks.
        let m = PagedMap::new(1 << 28).unwrap();
        assert!(m.bytes() <= (1 << 28) / 1024 * 10, "{}", m.bytes());
    }
}
