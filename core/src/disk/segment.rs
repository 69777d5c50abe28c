//! Segment table: block validity, reverse mapping and segment states of the
//! data region.
//!
//! All of it lives in memory and is rebuilt at `open` from the index (which
//! is authenticated), so nothing here is trusted from the disk:
//! `rmap[hba]` is the LBA stored at data block `hba` or [`NO_LBA`];
//! `valid[seg]` counts the valid blocks of a segment. Memory: the two
//! per-block maps are [`PagedMap`]s, 4 bytes per *written* block (and its
//! 64 KiB page) rather than per block of the disk, plus 9 bytes per segment
//! (0.001 % of the data region with 1 MiB segments).
//!
//! States: `Free` (may be written), `Active` (the open segment of the data
//! log), `Used` (sealed), `Pending` (no valid block left, but the last synced
//! index may still point into it: reusable only after the next sync). The
//! `Pending` state is what keeps a crash after cleaning from losing data.

use alloc::vec::Vec;

use super::paged_map::{PagedMap, EMPTY};
use crate::{Error, ErrorKind, Result};

/// `rmap` value of a data block that holds no live LBA.
pub const NO_LBA: u32 = EMPTY;
/// `fwd` value of an unmapped LBA.
const NO_HBA: u32 = EMPTY;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SegState {
    Free,
    Active,
    Used,
    Pending,
}

pub(crate) struct Segments {
    seg_blocks: u32,
    rmap: PagedMap,
    /// Forward map: `fwd[lba]` is the data block of `lba` or `NO_HBA`. It
    /// spares the write path an index lookup per block (the index holds
    /// the same mapping plus key and MAC, and rebuilds this at open).
    fwd: PagedMap,
    valid: Vec<u32>,
    state: Vec<SegState>,
    free: Vec<u32>,
    npending: u32,
    /// The open segment and next offset of each head (user writes, cleaner
    /// moves): two heads keep the cleaner's moves from splitting the long
    /// runs of user writes (and separate cold moved data from hot data).
    active: [Option<(u32, u32)>; 2],
}

/// Which head of the data log a run goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Head {
    User = 0,
    Cleaner = 1,
}

fn internal(msg: &'static str) -> Error {
    Error::new(ErrorKind::InvalidState, msg)
}

impl Segments {
    /// An empty table (every segment free).
    pub(crate) fn new(nseg: u32, seg_blocks: u32, capacity: u64) -> Result<Self> {
        let total = u64::from(nseg) * u64::from(seg_blocks);
        if total >= u64::from(NO_HBA) || capacity >= u64::from(NO_LBA) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "data region or capacity above 2^32 - 1 blocks",
            ));
        }
        let fwd = PagedMap::new(capacity)?;
        let n = nseg as usize;
        let rmap = PagedMap::new(total)?;
        let mut valid = Vec::new();
        valid.try_reserve_exact(n)?;
        valid.resize(n, 0);
        let mut state = Vec::new();
        state.try_reserve_exact(n)?;
        state.resize(n, SegState::Free);
        let mut free = Vec::new();
        free.try_reserve_exact(n)?;
        // Popped from the back: segment 0 first.
        free.extend((0..nseg).rev());
        Ok(Self {
            seg_blocks,
            rmap,
            fwd,
            valid,
            state,
            free,
            npending: 0,
            active: [None, None],
        })
    }

    pub(crate) fn seg_of(&self, hba: u64) -> u32 {
        (hba / u64::from(self.seg_blocks)) as u32
    }

    pub(crate) fn lba_at(&self, hba: u64) -> u32 {
        self.rmap.get(hba).unwrap_or(NO_LBA)
    }

    /// The data block of `lba`, if mapped.
    pub(crate) fn hba_of(&self, lba: u64) -> Option<u64> {
        self.fwd.get(lba).filter(|&h| h != NO_HBA).map(u64::from)
    }

    /// Bytes held by the table: the per-block maps (they grow with the
    /// blocks written, not with the disk size) and the per-segment arrays.
    pub(crate) fn mem_bytes(&self) -> usize {
        self.fwd.bytes()
            + self.rmap.bytes()
            + self.valid.capacity() * 4
            + self.state.capacity() * core::mem::size_of::<SegState>()
            + self.free.capacity() * 4
    }

    pub(crate) fn valid_in(&self, seg: u32) -> u32 {
        self.valid.get(seg as usize).copied().unwrap_or(0)
    }

    /// Marks `hba` as holding `lba` (a new write or a moved block).
    pub(crate) fn set_valid(&mut self, hba: u64, lba: u32) -> Result<()> {
        let seg = self.seg_of(hba) as usize;
        let cur = self.rmap.get(hba).ok_or(Error::new(
            ErrorKind::Corrupted,
            "index points past the data region",
        ))?;
        if cur != NO_LBA {
            return Err(Error::new(
                ErrorKind::Corrupted,
                "two logical blocks map to one data block",
            ));
        }
        if lba == NO_LBA || self.fwd.get(u64::from(lba)).is_none() {
            return Err(Error::new(ErrorKind::Corrupted, "LBA past the capacity"));
        }
        self.rmap.set(hba, lba)?;
        self.fwd.set(u64::from(lba), hba as u32)?;
        let v = self.valid.get_mut(seg).ok_or(internal("segment"))?;
        *v += 1;
        Ok(())
    }

    /// Marks `hba` as no longer holding live data. A sealed segment whose
    /// last valid block goes becomes `Pending`.
    pub(crate) fn invalidate(&mut self, hba: u64) -> Result<()> {
        let seg = self.seg_of(hba) as usize;
        let lba = self
            .rmap
            .get(hba)
            .ok_or(internal("invalidate past the data region"))?;
        if lba == NO_LBA {
            return Err(internal("invalidate of a block that is not valid"));
        }
        self.rmap.set(hba, NO_LBA)?;
        if self
            .fwd
            .get(u64::from(lba))
            .is_some_and(|f| u64::from(f) == hba)
        {
            self.fwd.set(u64::from(lba), NO_HBA)?;
        }
        let v = self.valid.get_mut(seg).ok_or(internal("segment"))?;
        *v = v.saturating_sub(1);
        if *v == 0 {
            let st = self.state.get_mut(seg).ok_or(internal("segment"))?;
            if *st == SegState::Used {
                *st = SegState::Pending;
                self.npending += 1;
            }
        }
        Ok(())
    }

    /// After rebuilding validity at open: every segment with valid blocks is
    /// `Used`, the others `Free`.
    pub(crate) fn settle_after_open(&mut self) {
        self.free.clear();
        self.npending = 0;
        self.active = [None, None];
        for (i, (st, v)) in self
            .state
            .iter_mut()
            .zip(self.valid.iter())
            .enumerate()
            .rev()
        {
            if *v == 0 {
                *st = SegState::Free;
                self.free.push(i as u32);
            } else {
                *st = SegState::Used;
            }
        }
    }

    /// Blocks `head` may write now without cleaning.
    pub(crate) fn free_for(&self, head: Head) -> u64 {
        let rem = self
            .active
            .get(head as usize)
            .copied()
            .flatten()
            .map(|(_, off)| u64::from(self.seg_blocks - off))
            .unwrap_or(0);
        self.free.len() as u64 * u64::from(self.seg_blocks) + rem
    }

    /// Blocks that may be written now without cleaning (both heads).
    pub(crate) fn free_blocks(&self) -> u64 {
        let act: u64 = self
            .active
            .iter()
            .flatten()
            .map(|(_, off)| u64::from(self.seg_blocks - off))
            .sum();
        self.free.len() as u64 * u64::from(self.seg_blocks) + act
    }

    /// Blocks that the next sync turns free.
    pub(crate) fn pending_blocks(&self) -> u64 {
        u64::from(self.npending) * u64::from(self.seg_blocks)
    }

    /// The next run of contiguous free blocks of `head`, at most `max`
    /// long: `(first hba, length)`. Opens a new segment when needed.
    pub(crate) fn alloc_run(&mut self, head: Head, max: u64) -> Result<(u64, u64)> {
        let slot = self.active.get_mut(head as usize).ok_or(internal("head"))?;
        let (seg, off) = match *slot {
            Some((s, o)) if o < self.seg_blocks => (s, o),
            _ => {
                let s = self.free.pop().ok_or(Error::new(
                    ErrorKind::NoSpace,
                    "data log has no free segment",
                ))?;
                if let Some((o, _)) = slot.take() {
                    self.seal(o)?;
                }
                *self.state.get_mut(s as usize).ok_or(internal("segment"))? = SegState::Active;
                (s, 0)
            }
        };
        let n = max.min(u64::from(self.seg_blocks - off));
        if let Some(slot) = self.active.get_mut(head as usize) {
            *slot = Some((seg, off + n as u32));
        }
        Ok((
            u64::from(seg) * u64::from(self.seg_blocks) + u64::from(off),
            n,
        ))
    }

    fn seal(&mut self, s: u32) -> Result<()> {
        let v = self.valid_in(s);
        let st = self.state.get_mut(s as usize).ok_or(internal("segment"))?;
        if v == 0 {
            *st = SegState::Pending;
            self.npending += 1;
        } else {
            *st = SegState::Used;
        }
        Ok(())
    }

    /// Called after a successful sync: pending segments become free.
    pub(crate) fn release_pending(&mut self) -> Result<()> {
        if self.npending == 0 {
            return Ok(());
        }
        self.free.try_reserve(self.npending as usize)?;
        for (i, st) in self.state.iter_mut().enumerate().rev() {
            if *st == SegState::Pending {
                *st = SegState::Free;
                self.free.push(i as u32);
            }
        }
        self.npending = 0;
        Ok(())
    }

    /// The sealed segment with the fewest valid blocks, if it has at least
    /// one invalid block.
    pub(crate) fn pick_victim(&self) -> Option<(u32, u32)> {
        self.state
            .iter()
            .zip(self.valid.iter())
            .enumerate()
            .filter(|(_, (st, v))| **st == SegState::Used && **v < self.seg_blocks)
            .min_by_key(|(_, (_, v))| **v)
            .map(|(i, (_, v))| (i as u32, *v))
    }

    /// Counts of segments per state: (free, active, used, pending).
    #[cfg(test)]
    pub(crate) fn counts(&self) -> (u32, u32, u32, u32) {
        let mut c = (0, 0, 0, 0);
        for st in &self.state {
            match st {
                SegState::Free => c.0 += 1,
                SegState::Active => c.1 += 1,
                SegState::Used => c.2 += 1,
                SegState::Pending => c.3 += 1,
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_invalidate_pending_release() {
        let mut s = Segments::new(4, 4, 16).unwrap();
        assert_eq!(s.free_blocks(), 16);
        let (h, n) = s.alloc_run(Head::User, 3).unwrap();
        assert_eq!((h, n), (0, 3));
        for i in 0..3 {
            s.set_valid(i, i as u32).unwrap();
        }
        let (h, n) = s.alloc_run(Head::User, 3).unwrap();
        assert_eq!((h, n), (3, 1));
        s.set_valid(3, 9).unwrap();
        assert_eq!(s.hba_of(9), Some(3));
        assert_eq!(s.hba_of(8), None);
        let (h, _) = s.alloc_run(Head::User, 1).unwrap();
        assert_eq!(h, 4);
        assert!(s.set_valid(0, 5).is_err());
        // Segment 0 is sealed now; emptying it makes it pending, not free.
        for i in 0..4 {
            s.invalidate(i).unwrap();
        }
        assert_eq!(s.pending_blocks(), 4);
        assert_eq!(s.counts(), (2, 1, 0, 1));
        s.release_pending().unwrap();
        assert_eq!(s.counts(), (3, 1, 0, 0));
        assert!(s.invalidate(0).is_err());
    }

    #[test]
    fn victim_is_least_valid_sealed() {
        let mut s = Segments::new(4, 4, 16).unwrap();
        for i in 0..12u64 {
            let (h, _) = s.alloc_run(Head::User, 1).unwrap();
            s.set_valid(h, i as u32).unwrap();
        }
        s.alloc_run(Head::User, 1).unwrap(); // seals segment 2
        s.invalidate(5).unwrap();
        s.invalidate(6).unwrap();
        s.invalidate(0).unwrap();
        assert_eq!(s.pick_victim(), Some((1, 2)));
        assert_eq!(s.lba_at(4), 4);
        assert_eq!(s.lba_at(5), NO_LBA);
    }
}
