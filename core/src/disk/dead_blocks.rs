//! `DeadBlocks`: which blocks of a segment are known to be dead, so the
//! cleaner's live check looks only the others up in the index.
//!
//! A hint kept in memory only, never stored. A segment is *tracked* from
//! the moment a head opens it empty until its slot is taken by another
//! segment; while tracked, every block of it that dies (its LBA
//! overwritten, unmapped or moved: [`DeadBlocks::mark`], called where the
//! segment usage count drops) sets its bit. What it guarantees: a set bit
//! means the block is dead in the current in-memory state, because a block
//! of a log-structured segment never comes back to life before the segment
//! is reopened empty, which clears the bits. A clear bit promises nothing
//! (a segment written before the disk was opened is never tracked); the
//! cleaner checks those blocks in the index as before, and its count check
//! against the usage table still catches any disagreement.
//!
//! Memory: at most [`DEAD_BLOCKS_BUDGET`] bytes whatever the disk size: a
//! direct-mapped table of `slots` entries (segment `s` uses slot
//! `s % slots`; a newly opened segment evicts the one in its slot), each a
//! 4-byte tag and one bit per block of a segment. Up to the budget every
//! segment has its own slot.

use alloc::vec::Vec;

use crate::fallible::filled_vec;
use crate::{Error, Result};

/// The most memory the hint takes (2 MiB: every segment of a 60 GiB data
/// region with the default 1 MiB segments has its own slot).
pub const DEAD_BLOCKS_BUDGET: usize = 2 << 20;

/// A slot that tracks no segment.
const UNTRACKED: u32 = u32::MAX;

pub(crate) struct DeadBlocks {
    seg_blocks: u32,
    /// 64-bit words of bits per segment.
    words: usize,
    /// Per slot: the tracked segment, or `UNTRACKED`.
    tag: Vec<u32>,
    /// Per slot, `words` words: bit `i` set = block `i` of the segment is
    /// dead.
    bits: Vec<u64>,
}

impl DeadBlocks {
    /// No segment tracked; `min(nseg, budget / slot size)` slots.
    pub(crate) fn new(nseg: u32, seg_blocks: u32, budget: usize) -> Result<Self> {
        let words = (seg_blocks as usize).div_ceil(64);
        let per_slot = 4 + 8 * words;
        let slots = (nseg as usize).min(budget / per_slot);
        let nbits = slots.checked_mul(words).ok_or_else(Error::oom)?;
        Ok(Self {
            seg_blocks,
            words,
            tag: filled_vec(slots, UNTRACKED)?,
            bits: filled_vec(nbits, 0)?,
        })
    }

    fn slot_of(&self, seg: u32) -> Option<usize> {
        match self.tag.len() {
            0 => None,
            n => Some(seg as usize % n),
        }
    }

    /// Segment `seg` was opened empty: track it from here, no block dead.
    pub(crate) fn track(&mut self, seg: u32) {
        let Some(slot) = self.slot_of(seg) else {
            return;
        };
        if let Some(t) = self.tag.get_mut(slot) {
            *t = seg;
        }
        let w = self.words;
        if let Some(b) = self.bits.get_mut(slot * w..slot * w + w) {
            b.fill(0);
        }
    }

    /// Block `off` of segment `seg` died (a no-op if `seg` is not tracked).
    pub(crate) fn mark(&mut self, seg: u32, off: u32) {
        if off >= self.seg_blocks {
            return;
        }
        let Some(slot) = self.slot_of(seg) else {
            return;
        };
        if self.tag.get(slot) != Some(&seg) {
            return;
        }
        let i = slot * self.words + off as usize / 64;
        if let Some(w) = self.bits.get_mut(i) {
            *w |= 1u64 << (off % 64);
        }
    }

    /// The dead bits of `seg` (bit `i` of word `i / 64`), if it is tracked.
    pub(crate) fn of(&self, seg: u32) -> Option<&[u64]> {
        let slot = self.slot_of(seg)?;
        if self.tag.get(slot) != Some(&seg) {
            return None;
        }
        self.bits.get(slot * self.words..(slot + 1) * self.words)
    }

    /// Whether block `off` is known dead in the bits `of` returned.
    pub(crate) fn is_dead(bits: &[u64], off: u32) -> bool {
        bits.get(off as usize / 64)
            .is_some_and(|w| w & (1u64 << (off % 64)) != 0)
    }

    /// Bytes held.
    pub(crate) fn mem_bytes(&self) -> usize {
        self.tag.capacity() * 4 + self.bits.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracked_segments_record_deaths_and_reopening_clears_them() {
        let mut d = DeadBlocks::new(10, 100, 1 << 20).unwrap();
        assert!(d.of(3).is_none(), "nothing is tracked before it is opened");
        d.mark(3, 5);
        d.track(3);
        assert!(
            !DeadBlocks::is_dead(d.of(3).unwrap(), 5),
            "a mark before tracking is lost"
        );
        d.mark(3, 5);
        d.mark(3, 99);
        d.mark(3, 100); // past the segment: ignored
        let b = d.of(3).unwrap();
        assert!(DeadBlocks::is_dead(b, 5) && DeadBlocks::is_dead(b, 99));
        assert_eq!((0..100).filter(|&o| DeadBlocks::is_dead(b, o)).count(), 2);
        d.track(3);
        assert!(!DeadBlocks::is_dead(d.of(3).unwrap(), 5), "reopened empty");
    }

    #[test]
    fn a_small_budget_shares_slots_and_evicts() {
        // 2 slots of 4 + 16 bytes for segments of 100 blocks.
        let mut d = DeadBlocks::new(10, 100, 40).unwrap();
        assert_eq!(d.mem_bytes(), 2 * 4 + 2 * 2 * 8);
        d.track(1);
        d.mark(1, 7);
        d.track(3); // same slot as 1: evicts it
        assert!(d.of(1).is_none());
        d.mark(1, 8); // not tracked any more: no effect on 3
        assert!(!DeadBlocks::is_dead(d.of(3).unwrap(), 8));
        d.track(2);
        d.mark(2, 0);
        assert!(DeadBlocks::is_dead(d.of(2).unwrap(), 0));
        assert!(d.of(3).is_some(), "another slot: untouched");
        // A zero budget tracks nothing and never fails.
        let mut z = DeadBlocks::new(10, 100, 0).unwrap();
        z.track(1);
        z.mark(1, 1);
        assert!(z.of(1).is_none());
    }
}
