//! Segment table: valid-block counts, segment states and the summaries of
//! the open segments of the data region.
//!
//! Nothing per block lives here. The counts (`valid[seg]`) are the segment
//! usage table: loaded at open from the index (see `meta`), changed in
//! memory, and the entries of changed segments (tracked in `dirty`, a bit
//! per usage entry) are stored by the next commit. The reverse map lives
//! in the index as segment summaries; the table keeps the summary of the
//! open segment of each head (`summ`, 4 bytes per block of a segment) so
//! that writing a run can store its entries without reading them back.
//! Memory: 11 bytes per segment (0.001 % of the data region with 1 MiB
//! segments) plus a bit per 12 segments, two segment summaries and the
//! dead-block hint of the cleaner ([`DeadBlocks`], at most 2 MiB).
//!
//! Victims: [`CleanerPolicy::Greedy`] takes the sealed segment with the
//! fewest valid blocks; [`CleanerPolicy::CostBenefit`] (the LFS paper's
//! rule) weighs the space a segment frees against the cost of moving its
//! live blocks and against its age, `(1 - u) * age / (1 + u)`, so that a
//! cold segment is cleaned at a higher utilization than a hot one, whose
//! blocks may still die on their own. The age is kept in memory only (a
//! 16-bit stamp per segment, from a clock that ticks once per
//! `max(1, nseg / 4096)` segments the user head opens): a segment's age
//! is the time since either head opened it. Ages are capped at 32768
//! ticks (16 times the disk written over) before the clock could wrap. (Stamping the cleaner's segments with their victims' age
//! instead, as the LFS paper keeps each block's age, measured worse: it
//! cleaned the same moved blocks again and again.) After an open every
//! segment has the same age, so the first victims are greedy ones.
//!
//! States: `Free` (may be written), `Active` (the open segment of a head),
//! `Used` (sealed), `Pending` (no valid block left, but the last synced
//! index may still point into it: reusable only after the next sync). The
//! `Pending` state is what keeps a crash after cleaning from losing data.

use alloc::vec::Vec;

use super::dead_blocks::{DeadBlocks, DEAD_BLOCKS_BUDGET};
use super::meta::{self, NONE};
use crate::fallible::filled_vec;
use crate::{Error, ErrorKind, Result};

/// A summary slot that holds no LBA.
pub const NO_LBA: u32 = NONE;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SegState {
    Free,
    Active,
    Used,
    Pending,
}

pub(crate) struct Segments {
    seg_blocks: u32,
    valid: Vec<u32>,
    state: Vec<SegState>,
    free: Vec<u32>,
    npending: u32,
    /// Usage entries (of [`meta::SEGS_PER_ENTRY`] segments) changed since
    /// the last commit, a bit each.
    dirty: Vec<u64>,
    ndirty: u64,
    /// The open segment and next offset of each head (user writes, cleaner
    /// moves): two heads keep the cleaner's moves from splitting the long
    /// runs of user writes (and separate cold moved data from hot data).
    active: [Option<(u32, u32)>; 2],
    /// The summary (LBA per block) of each head's open segment.
    summ: [Vec<u32>; 2],
    /// Per segment: the clock when its data was written (see the module
    /// documentation).
    stamp: Vec<u16>,
    /// Ticks once per `tick_every` segments the user head opens.
    clock: u16,
    tick_every: u32,
    /// Segments the user head opened since the last tick.
    since_tick: u32,
    /// Which blocks of recently opened segments died (a hint for the
    /// cleaner's live check; see [`DeadBlocks`]).
    dead: DeadBlocks,
}

/// How the cleaner chooses its victim (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CleanerPolicy {
    /// The sealed segment with the fewest valid blocks.
    Greedy,
    /// The most free space per block moved, weighted by age.
    #[default]
    CostBenefit,
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

/// A run being recorded must be the last one handed out to its head.
fn ensure_run(active: Option<(u32, u32)>, seg: u32, first: u32, n: u32) -> Result<()> {
    match active {
        Some((s, next)) if s == seg && first.checked_add(n) == Some(next) => Ok(()),
        _ => Err(internal("summary of a run that is not the head's last")),
    }
}

impl Segments {
    /// An empty table (every segment free).
    pub(crate) fn new(nseg: u32, seg_blocks: u32) -> Result<Self> {
        let total = u64::from(nseg) * u64::from(seg_blocks);
        if total >= u64::from(NO_LBA) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "data region above 2^32 - 1 blocks",
            ));
        }
        let n = nseg as usize;
        let mut free = Vec::new();
        free.try_reserve_exact(n)?;
        // Popped from the back: segment 0 first.
        free.extend((0..nseg).rev());
        let words =
            usize::try_from(meta::usage_entries(nseg).div_ceil(64)).map_err(|_| Error::oom())?;
        Ok(Self {
            seg_blocks,
            valid: filled_vec(n, 0)?,
            state: filled_vec(n, SegState::Free)?,
            free,
            npending: 0,
            dirty: filled_vec(words, 0)?,
            ndirty: 0,
            active: [None, None],
            summ: [
                filled_vec(seg_blocks as usize, NO_LBA)?,
                filled_vec(seg_blocks as usize, NO_LBA)?,
            ],
            stamp: filled_vec(n, 0)?,
            clock: 0,
            tick_every: (nseg / 4096).max(1),
            since_tick: 0,
            dead: DeadBlocks::new(nseg, seg_blocks, DEAD_BLOCKS_BUDGET)?,
        })
    }

    pub(crate) fn seg_of(&self, hba: u64) -> u32 {
        (hba / u64::from(self.seg_blocks)) as u32
    }

    pub(crate) fn nseg(&self) -> u32 {
        self.valid.len() as u32
    }

    /// Bytes held by the table (per segment and the two summaries; nothing
    /// per block of the disk).
    pub(crate) fn mem_bytes(&self) -> usize {
        self.valid.capacity() * 4
            + self.state.capacity() * core::mem::size_of::<SegState>()
            + self.free.capacity() * 4
            + self.dirty.capacity() * 8
            + self.summ.iter().map(|s| s.capacity() * 4).sum::<usize>()
            + self.stamp.capacity() * 2
            + self.dead.mem_bytes()
    }

    pub(crate) fn valid_in(&self, seg: u32) -> u32 {
        self.valid.get(seg as usize).copied().unwrap_or(0)
    }

    fn mark_dirty(&mut self, seg: u32) {
        let e = seg / meta::SEGS_PER_ENTRY;
        if let Some(w) = self.dirty.get_mut((e / 64) as usize) {
            let bit = 1u64 << (e % 64);
            if *w & bit == 0 {
                *w |= bit;
                self.ndirty += 1;
            }
        }
    }

    /// Usage entries changed since the last commit.
    #[cfg(test)]
    pub(crate) fn dirty_entries(&self) -> u64 {
        self.ndirty
    }

    fn is_dirty(&self, e: u64) -> bool {
        usize::try_from(e / 64)
            .ok()
            .and_then(|w| self.dirty.get(w))
            .is_some_and(|w| w & (1u64 << (e % 64)) != 0)
    }

    /// What appending `n` blocks to `head` stores in the index besides
    /// their records, exactly as [`Self::alloc_run`] would place them: the
    /// distinct summary entries of the runs (the rest of the open segment
    /// first, then free segments from their start, in the order they are
    /// taken), and the usage entries of those segments are pushed to
    /// `entries`. Segments past the free list count as fresh ones.
    pub(crate) fn append_plan(&self, head: Head, n: u64, entries: &mut Vec<u64>) -> Result<u64> {
        let sb = self.seg_blocks.max(1);
        let per = meta::BLOCKS_PER_ENTRY;
        let mut left = n;
        let mut summaries = 0u64;
        let seg_entry = |s: u32| u64::from(s / meta::SEGS_PER_ENTRY);
        if let Some((s, off)) = self.active.get(head as usize).copied().flatten() {
            if off < sb && left > 0 {
                let k = left.min(u64::from(sb - off)) as u32;
                summaries += u64::from((off + k - 1) / per - off / per + 1);
                entries.try_reserve(1)?;
                entries.push(seg_entry(s));
                left -= u64::from(k);
            }
        }
        let mut free = self.free.iter().rev();
        while left > 0 {
            let k = left.min(u64::from(sb)) as u32;
            summaries += u64::from(k.div_ceil(per));
            if let Some(s) = free.next() {
                entries.try_reserve(1)?;
                entries.push(seg_entry(*s));
            }
            left -= u64::from(k);
        }
        Ok(summaries)
    }

    /// Usage entries the next commit stores if the entries in `touched`
    /// change too: those changed so far and the distinct new ones (sorts
    /// and dedups `touched`).
    pub(crate) fn usage_with(&self, touched: &mut Vec<u64>) -> u64 {
        touched.sort_unstable();
        touched.dedup();
        let new = touched.iter().filter(|e| !self.is_dirty(**e)).count() as u64;
        self.ndirty + new
    }

    /// The changed usage entries with their payloads (entry number,
    /// payload), in entry order.
    pub(crate) fn dirty_payloads(&self) -> Result<Vec<(u64, meta::Payload)>> {
        let mut out = Vec::new();
        out.try_reserve_exact(self.ndirty as usize)?;
        for (wi, w) in self.dirty.iter().enumerate() {
            let mut bits = *w;
            while bits != 0 {
                let b = u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                let e = wi as u64 * 64 + b;
                out.push((e, self.usage_payload(e)));
            }
        }
        Ok(out)
    }

    /// The payload of usage entry `e` (segments past the end count 0).
    pub(crate) fn usage_payload(&self, e: u64) -> meta::Payload {
        let mut vals = [0u32; 12];
        let first = e * u64::from(meta::SEGS_PER_ENTRY);
        for (i, v) in vals.iter_mut().enumerate() {
            *v = usize::try_from(first + i as u64)
                .ok()
                .and_then(|s| self.valid.get(s).copied())
                .unwrap_or(0);
        }
        meta::pack(&vals)
    }

    /// After a commit stored every dirty entry.
    pub(crate) fn clear_dirty(&mut self) {
        self.dirty.iter_mut().for_each(|w| *w = 0);
        self.ndirty = 0;
    }

    /// At open: the counts of usage entry `e` as committed. `Corrupted` if
    /// a count exceeds the segment size or a segment past the end counts.
    pub(crate) fn load_usage(&mut self, e: u64, p: &meta::Payload) -> Result<u64> {
        let mut sum = 0u64;
        let first = e * u64::from(meta::SEGS_PER_ENTRY);
        for (i, c) in meta::unpack(p).iter().enumerate() {
            let seg = first + i as u64;
            let slot = usize::try_from(seg)
                .ok()
                .and_then(|s| self.valid.get_mut(s));
            match slot {
                Some(v) if *c <= self.seg_blocks => *v = *c,
                None if *c == 0 => {}
                _ => {
                    return Err(Error::new(
                        ErrorKind::Corrupted,
                        "segment usage table: count out of range",
                    ))
                }
            }
            sum += u64::from(*c);
        }
        Ok(sum)
    }

    /// The blocks of `seg` known to be dead, if it is tracked (see
    /// [`DeadBlocks`]): bit `i` of word `i / 64` for block `i`.
    pub(crate) fn known_dead(&self, seg: u32) -> Option<&[u64]> {
        self.dead.of(seg)
    }

    /// Counts one more valid block at `hba` (a new write or a moved block).
    pub(crate) fn add_valid(&mut self, hba: u64) -> Result<()> {
        let seg = self.seg_of(hba);
        let sb = self.seg_blocks;
        let v = self.valid.get_mut(seg as usize).ok_or(Error::new(
            ErrorKind::Corrupted,
            "block past the data region",
        ))?;
        if *v >= sb {
            return Err(Error::new(
                ErrorKind::Corrupted,
                "segment usage: more valid blocks than the segment holds",
            ));
        }
        *v += 1;
        self.mark_dirty(seg);
        Ok(())
    }

    /// Counts one valid block less at `hba` (its LBA was overwritten,
    /// unmapped or moved). A sealed segment whose last valid block goes
    /// becomes `Pending`.
    pub(crate) fn invalidate(&mut self, hba: u64) -> Result<()> {
        let seg = self.seg_of(hba);
        let v = self.valid.get_mut(seg as usize).ok_or(Error::new(
            ErrorKind::Corrupted,
            "index points past the data region",
        ))?;
        if *v == 0 {
            return Err(Error::new(
                ErrorKind::Corrupted,
                "segment usage: a block of an empty segment is in use",
            ));
        }
        *v -= 1;
        let now = *v;
        self.mark_dirty(seg);
        self.dead
            .mark(seg, (hba % u64::from(self.seg_blocks.max(1))) as u32);
        if now == 0 {
            let st = self
                .state
                .get_mut(seg as usize)
                .ok_or(internal("segment"))?;
            if *st == SegState::Used {
                *st = SegState::Pending;
                self.npending += 1;
            }
        }
        Ok(())
    }

    /// After loading the usage table at open: every segment with valid
    /// blocks is `Used`, the others `Free`.
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
                if head == Head::User {
                    self.tick();
                }
                *self.stamp.get_mut(s as usize).ok_or(internal("segment"))? = self.clock;
                self.dead.track(s);
                if let Some(sm) = self.summ.get_mut(head as usize) {
                    sm.iter_mut().for_each(|l| *l = NO_LBA);
                }
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

    /// Notes that the run of `head` at `hba` (from [`Self::alloc_run`])
    /// holds `lbas`, and returns the summary entries covering it (key,
    /// payload), to be stored in the index.
    pub(crate) fn record_run(
        &mut self,
        head: Head,
        hba: u64,
        lbas: &[u32],
    ) -> Result<Vec<(u64, meta::Payload)>> {
        let sb = self.seg_blocks;
        let seg = self.seg_of(hba);
        let first = (hba % u64::from(sb)) as u32;
        let n = u32::try_from(lbas.len()).map_err(|_| internal("run"))?;
        ensure_run(
            self.active.get(head as usize).copied().flatten(),
            seg,
            first,
            n,
        )?;
        let sm = self.summ.get_mut(head as usize).ok_or(internal("head"))?;
        let slots = sm
            .get_mut(first as usize..(first + n) as usize)
            .ok_or(internal("run past the segment"))?;
        slots.copy_from_slice(lbas);
        let per = meta::BLOCKS_PER_ENTRY;
        let mut out = Vec::new();
        if n == 0 {
            return Ok(out);
        }
        let (e0, e1) = (first / per, (first + n - 1) / per);
        out.try_reserve_exact((e1 - e0 + 1) as usize)?;
        for e in e0..=e1 {
            let mut vals = [NO_LBA; 12];
            for (i, v) in vals.iter_mut().enumerate() {
                *v = sm.get((e * per) as usize + i).copied().unwrap_or(NO_LBA);
            }
            out.push((meta::summary_key(seg, e * per, sb), meta::pack(&vals)));
        }
        Ok(out)
    }

    /// Advances the age clock by one user segment; every 16384 ticks caps
    /// the ages at 32768, so no age reaches the 16-bit wrap (65536).
    fn tick(&mut self) {
        self.since_tick += 1;
        if self.since_tick < self.tick_every {
            return;
        }
        self.since_tick = 0;
        self.clock = self.clock.wrapping_add(1);
        if self.clock % 16384 == 0 {
            let oldest = self.clock.wrapping_sub(32768);
            for t in self.stamp.iter_mut() {
                if self.clock.wrapping_sub(*t) > 32768 {
                    *t = oldest;
                }
            }
        }
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

    /// The victim under `policy` among the sealed segments with at least
    /// one invalid block: (segment, valid blocks). Cost-benefit only picks
    /// among the segments with at most `max_valid` valid blocks (the bound
    /// the over-provisioning guarantees the greedy victim, see `layout`),
    /// so that every victim frees at least what the greedy one is
    /// guaranteed to; with none such it takes the greedy victim.
    #[cfg(test)]
    pub(crate) fn pick_victim(&self, policy: CleanerPolicy, max_valid: u32) -> Option<(u32, u32)> {
        self.pick_victim_except(policy, max_valid, &[])
    }

    /// As [`Self::pick_victim`], among the segments not in `chosen` (the
    /// victims of one cleaner group picked so far: `(segment, valid)`).
    pub(crate) fn pick_victim_except(
        &self,
        policy: CleanerPolicy,
        max_valid: u32,
        chosen: &[(u32, u32)],
    ) -> Option<(u32, u32)> {
        let sb = u64::from(self.seg_blocks);
        let candidates = || {
            self.state
                .iter()
                .zip(self.valid.iter().zip(self.stamp.iter()))
                .enumerate()
                .filter(|(_, (st, (v, _)))| **st == SegState::Used && **v < self.seg_blocks)
                .filter(|(i, _)| !chosen.iter().any(|&(c, _)| c as usize == *i))
        };
        let greedy = || {
            candidates()
                .min_by_key(|(_, (_, (v, _)))| **v)
                .map(|(i, (_, (v, _)))| (i as u32, *v))
        };
        match policy {
            CleanerPolicy::Greedy => greedy(),
            CleanerPolicy::CostBenefit => candidates()
                .filter(|(_, (_, (v, _)))| **v <= max_valid)
                .max_by_key(|(_, (_, (v, t)))| {
                    // (1 - u) * age / (1 + u) = (sb - v) * age / (sb + v),
                    // in integers (sb <= 2^16, age <= 2^16: no overflow);
                    // ties go to the fewer valid blocks.
                    let age = u64::from(self.clock.wrapping_sub(**t)) + 1;
                    let v = u64::from(**v);
                    ((sb - v) * age * 1024 / (sb + v), sb - v)
                })
                .map(|(i, (_, (v, _)))| (i as u32, *v))
                .or_else(greedy),
        }
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
        let mut s = Segments::new(4, 4).unwrap();
        assert_eq!(s.free_blocks(), 16);
        let (h, n) = s.alloc_run(Head::User, 3).unwrap();
        assert_eq!((h, n), (0, 3));
        for i in 0..3 {
            s.add_valid(i).unwrap();
        }
        let (h, n) = s.alloc_run(Head::User, 3).unwrap();
        assert_eq!((h, n), (3, 1));
        s.add_valid(3).unwrap();
        assert!(s.add_valid(0).is_err(), "a fifth block in a segment of 4");
        let (h, _) = s.alloc_run(Head::User, 1).unwrap();
        assert_eq!(h, 4);
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
        let mut s = Segments::new(4, 4).unwrap();
        for _ in 0..12u64 {
            let (h, _) = s.alloc_run(Head::User, 1).unwrap();
            s.add_valid(h).unwrap();
        }
        s.alloc_run(Head::User, 1).unwrap(); // seals segment 2
        s.invalidate(5).unwrap();
        s.invalidate(6).unwrap();
        s.invalidate(0).unwrap();
        assert_eq!(s.pick_victim(CleanerPolicy::Greedy, 4), Some((1, 2)));
    }

    #[test]
    fn ages_are_capped_before_the_clock_wraps() {
        let mut s = Segments::new(8, 4).unwrap();
        for k in 1..=200_000u32 {
            s.tick();
            let age = u32::from(s.clock.wrapping_sub(s.stamp[0]));
            assert!(age >= k.min(32768) && age <= 49152, "tick {k}: age {age}");
        }
        // A big disk ticks once per nseg / 4096 segments.
        let mut b = Segments::new(8192, 4).unwrap();
        b.tick();
        assert_eq!(b.clock, 0);
        b.tick();
        assert_eq!(b.clock, 1);
    }

    #[test]
    fn cost_benefit_prefers_an_older_segment_within_the_bound() {
        // Segments of 8 blocks; segment k is opened at clock k + 1.
        let mut s = Segments::new(6, 8).unwrap();
        for _ in 0..33u64 {
            let (h, _) = s.alloc_run(Head::User, 1).unwrap();
            s.add_valid(h).unwrap();
        }
        // Segment 0 (oldest) keeps 5 of 8, segment 3 (young) 4 of 8.
        for h in [0, 1, 2, 24, 25, 26, 27] {
            s.invalidate(h).unwrap();
        }
        assert_eq!(s.pick_victim(CleanerPolicy::Greedy, 8), Some((3, 4)));
        // (8 - 5) * 5 / 13 > (8 - 4) * 2 / 12: age wins.
        assert_eq!(s.pick_victim(CleanerPolicy::CostBenefit, 8), Some((0, 5)));
        // Segment 0 is above the bound: the best one within it.
        assert_eq!(s.pick_victim(CleanerPolicy::CostBenefit, 4), Some((3, 4)));
        // Nothing within the bound: the greedy victim.
        assert_eq!(s.pick_victim(CleanerPolicy::CostBenefit, 3), Some((3, 4)));
    }

    #[test]
    fn usage_entries_round_trip_and_track_changes() {
        let mut s = Segments::new(30, 8).unwrap();
        assert_eq!(s.dirty_entries(), 0);
        for _ in 0..20 {
            let (h, n) = s.alloc_run(Head::User, 1).unwrap();
            assert_eq!(n, 1);
            s.add_valid(h).unwrap();
        }
        // Blocks 0..20: segments 0, 1 (8 each) and 2 (4): entry 0 only.
        assert_eq!(s.dirty_entries(), 1);
        let (h, _) = s.alloc_run(Head::Cleaner, 1).unwrap();
        assert_eq!(s.seg_of(h), 3);
        s.add_valid(h).unwrap();
        let d = s.dirty_payloads().unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(meta::unpack(&d[0].1)[..4], [8, 8, 4, 1]);
        let mut t = Segments::new(30, 8).unwrap();
        let mut sum = 0;
        for e in 0..meta::usage_entries(30) {
            sum += t.load_usage(e, &s.usage_payload(e)).unwrap();
        }
        assert_eq!(sum, 21);
        t.settle_after_open();
        assert_eq!(t.counts(), (26, 0, 4, 0));
        assert_eq!(t.valid_in(2), 4);
        s.clear_dirty();
        assert_eq!(s.dirty_entries(), 0);
        // Counts above the segment size, or for segments past the end.
        let mut bad = [0u32; 12];
        bad[0] = 9;
        assert!(t.load_usage(0, &meta::pack(&bad)).is_err());
        let mut bad = [0u32; 12];
        bad[11] = 1; // segment 35 of 30
        assert!(t.load_usage(2, &meta::pack(&bad)).is_err());
    }

    #[test]
    fn append_plan_counts_what_the_runs_store() {
        // Segments of 30 blocks (3 summary entries, the last one partial),
        // 40 segments (4 usage entries); the head at various offsets.
        for start in [0u64, 1, 11, 12, 29, 30, 31, 59] {
            for n in [1u64, 2, 12, 13, 29, 30, 31, 61, 95] {
                let mut s = Segments::new(40, 30).unwrap();
                let mut lbas = 0u32;
                let mut left = start;
                while left > 0 {
                    let (h, k) = s.alloc_run(Head::User, left).unwrap();
                    let l: Vec<u32> = (lbas..lbas + k as u32).collect();
                    lbas += k as u32;
                    s.record_run(Head::User, h, &l).unwrap();
                    s.add_valid(h).unwrap();
                    left -= k;
                }
                s.clear_dirty();
                let mut planned = Vec::new();
                let summaries = s.append_plan(Head::User, n, &mut planned).unwrap();
                let usage = s.usage_with(&mut planned);
                let mut keys = Vec::new();
                let mut left = n;
                while left > 0 {
                    let (h, k) = s.alloc_run(Head::User, left).unwrap();
                    let l: Vec<u32> = (0..k as u32).collect();
                    for (key, _) in s.record_run(Head::User, h, &l).unwrap() {
                        keys.push(key);
                    }
                    for b in h..h + k {
                        s.add_valid(b).unwrap();
                    }
                    left -= k;
                }
                keys.sort_unstable();
                keys.dedup();
                assert_eq!(summaries, keys.len() as u64, "start {start}, n {n}");
                assert_eq!(usage, s.dirty_entries(), "start {start}, n {n}");
            }
        }
    }

    #[test]
    fn summaries_cover_the_run_and_reset_with_a_new_segment() {
        let mut s = Segments::new(4, 16).unwrap();
        let (h, n) = s.alloc_run(Head::User, 10).unwrap();
        let lbas: Vec<u32> = (100..100 + n as u32).collect();
        let e = s.record_run(Head::User, h, &lbas).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, meta::summary_key(0, 0, 16));
        let (h, n) = s.alloc_run(Head::User, 4).unwrap();
        assert_eq!((h, n), (10, 4));
        let e = s.record_run(Head::User, h, &[1, 2, 3, 4]).unwrap();
        assert_eq!(e.len(), 2, "offsets 10..14 span entries 0 and 1");
        let first = meta::unpack(&e[0].1);
        assert_eq!(
            first[..12],
            [100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 1, 2]
        );
        let second = meta::unpack(&e[1].1);
        assert_eq!(second[..3], [3, 4, NO_LBA]);
        // Only the head's last run may be recorded.
        assert!(s.record_run(Head::User, 0, &[5]).is_err());
        assert!(s.record_run(Head::Cleaner, h, &[5]).is_err());
        // A new segment of the head starts an empty summary.
        s.alloc_run(Head::User, 2).unwrap();
        let (h, _) = s.alloc_run(Head::User, 1).unwrap();
        assert_eq!(s.seg_of(h), 1);
        let e = s.record_run(Head::User, h, &[9]).unwrap();
        assert_eq!(meta::unpack(&e[0].1)[..2], [9, NO_LBA]);
    }
}
