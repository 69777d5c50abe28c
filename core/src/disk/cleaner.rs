//! The segment cleaner: makes room in the data log by moving the valid
//! blocks of mostly invalid segments to the cleaner's head.
//!
//! - `MlsDisk::ensure_space` decides when and how much to clean (before
//!   a write-buffer flush, in rounds of one sync each) and checks the index
//!   room of every move before it starts.
//! - `MlsDisk::clean` moves a group of up to [`CLEAN_GROUP`] victims: one
//!   live check of their blocks in the index (blocks the in-memory hint
//!   `DeadBlocks` knows dead are skipped: a tracked victim costs a lookup
//!   per live block only), one scattered read of the runs of their
//!   segments that hold live blocks (the dead runs longer than
//!   [`READ_GAP_BLOCKS`] are not read), the live blocks written in LBA
//!   order as ciphertext (no re-encryption: the AAD binds the LBA, not
//!   the place), the index pointed at the new places. Each move is one
//!   complete step.

use alloc::vec::Vec;

use super::dead_blocks::DeadBlocks;
use super::segment::{Head, Segments, NO_LBA};
use super::{meta, Batch, BlockRecord, MlsDisk, Room};
use crate::bio::{BlockSet, BLOCK_SIZE};
use crate::{bail, ensure, Error, ErrorKind, Result};

/// Victims the cleaner moves together ([`MlsDisk::clean`]): their segments
/// are read in one scattered read, their blocks looked up in one pass. The
/// cleaner's scratch buffer holds this many segments.
pub(super) const CLEAN_GROUP: usize = 4;

/// Dead blocks between two live ones of a victim that the cleaner reads
/// rather than splitting the read in two (64 KiB: about what one more
/// device request costs in transfer time).
const READ_GAP_BLOCKS: u64 = 16;

impl<D: BlockSet> MlsDisk<D> {
    /// Blocks the cleaner tries to free per round (one sync per round).
    fn clean_batch_blocks(&self) -> u64 {
        let seg = u64::from(self.geo.seg_blocks);
        let op_space = self.geo.data_blocks() - self.geo.capacity;
        (u64::from(self.cfg.clean_batch_segments.max(1)) * seg).min(op_space / 4)
    }

    /// Makes `need` blocks writable, keeping one segment in reserve for the
    /// cleaner. Cleaning starts when free space falls under
    /// `need + segment + batch` and runs in rounds of one sync each (moved
    /// and emptied segments are reusable only after a sync). Every round
    /// frees at least one block or the call returns, so it never loops
    /// without progress.
    ///
    /// Each cleaner move is a complete step (blocks copied, index and
    /// validity updated); its index room is checked before it starts,
    /// together with the room of flushing `need` user blocks: those are
    /// buffered (or about to be) and acknowledged on the promise that the
    /// next sync flushes them, so the cleaner never takes their room. When
    /// the index has no room for a move and `need` blocks fit already, the
    /// cleaner stops there. A
    /// `NoSpace` from here comes before any step started, or between two
    /// complete ones: the disk stays consistent and usable.
    pub(super) fn ensure_space(&mut self, need: u64) -> Result<()> {
        let seg = u64::from(self.geo.seg_blocks);
        let batch = self.clean_batch_blocks();
        let mut stalled = false;
        loop {
            let user = |s: &Segments| s.free_for(Head::User);
            if user(&self.segs) >= need + seg + batch {
                return Ok(());
            }
            let goal = need + seg + 2 * batch;
            // The most valid blocks a cost-benefit victim may have: what
            // the over-provisioning guarantees of the greedy one.
            let max_valid = (u64::from(self.geo.seg_blocks)
                * u64::from(100 - self.geo.op_percent.min(100))
                / 100) as u32;
            let mut index_full = false;
            let mut moved = 0u32;
            let mut group: Vec<(u32, u32)> = Vec::new();
            let mut entries: Vec<u64> = Vec::new();
            group.try_reserve_exact(CLEAN_GROUP)?;
            entries.try_reserve_exact(CLEAN_GROUP)?;
            while user(&self.segs) + self.segs.pending_blocks() < goal {
                // Up to `CLEAN_GROUP` victims, as many as the goal needs
                // (each frees what it does not hold valid), all of whose
                // valid blocks fit the cleaner's free space and, with the
                // `need` buffered blocks, the index's room now.
                group.clear();
                entries.clear();
                let mut valid = 0u64;
                let mut gain = 0u64;
                while group.len() < CLEAN_GROUP
                    && user(&self.segs) + self.segs.pending_blocks() + gain < goal
                {
                    let Some((v, n)) =
                        self.segs
                            .pick_victim_except(self.cfg.cleaner_policy, max_valid, &group)
                    else {
                        break;
                    };
                    if valid + u64::from(n) > self.segs.free_for(Head::Cleaner) {
                        break;
                    }
                    // Every old version is in the group's segments.
                    entries.push(u64::from(v / meta::SEGS_PER_ENTRY));
                    let updates = self.index_updates(
                        Batch::Append {
                            head: Head::Cleaner,
                            blocks: valid + u64::from(n),
                            old: Some(&entries),
                        },
                        need,
                    )?;
                    match self.index.room_for(updates) {
                        Ok(Room::Now) => {}
                        Ok(Room::AfterCommit) => {
                            index_full = true;
                            break;
                        }
                        // Not even after a commit: what is left is to
                        // stop (below) or refuse.
                        Err(e) if e.kind() == ErrorKind::NoSpace => {
                            index_full = true;
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                    group.push((v, n));
                    valid += u64::from(n);
                    gain += seg - u64::from(n).min(seg);
                }
                if group.is_empty() {
                    break;
                }
                self.critical(|d| d.clean(&group))?;
                moved += group.len() as u32;
                if index_full {
                    break;
                }
            }
            let enough_now = user(&self.segs) >= need + seg;
            if index_full && enough_now {
                // More cleaning would take index room the buffered blocks
                // need; they fit already.
                return Ok(());
            }
            if self.segs.pending_blocks() == 0 && !index_full {
                if enough_now {
                    return Ok(());
                }
                bail!(NoSpace, "data log full: no segment can be cleaned");
            }
            if !self.cfg.auto_sync && !self.in_sync {
                if enough_now {
                    return Ok(());
                }
                bail!(NoSpace, "data log full until the next sync");
            }
            // The index asked for a commit before the cleaner could move
            // anything, twice in a row: the commit did not free its room,
            // and committing again would not either.
            if index_full && moved == 0 {
                if stalled {
                    bail!(
                        NoSpace,
                        "index full: cleaning needs room a commit does not free"
                    );
                }
                stalled = true;
            } else {
                stalled = false;
            }
            self.commit(true)?;
        }
    }

    /// Moves the valid blocks of the victims `group` (`(segment, valid)`,
    /// at most [`CLEAN_GROUP`], distinct) to the head of the cleaner's log.
    ///
    /// One live check for the whole group (two index passes), one
    /// scattered read of its segments' live runs (`read_ranges`: in flight
    /// at once; only the runs that hold live blocks, with dead gaps of at
    /// most [`READ_GAP_BLOCKS`] read across), then the live blocks in LBA
    /// order, written in runs as long as the cleaner's head segment allows.
    /// Cleaning one victim at a time waited for a 1 MiB read and a shorter
    /// write per victim and looked up each victim's keys apart; on a fully
    /// written 4 GiB disk the victims' I/O was a quarter of the wall time
    /// of steady random writes (docs/design.md, "Cleaning").
    ///
    /// The live check runs before the reads, on this thread. Running a
    /// victim's read on a worker beside its check was tried and measured:
    /// no gain (steady 256 KiB overwrites of a full 1 GiB disk, 3
    /// interleaved runs, median 112.0 vs 109.8 MiB/s), because there the
    /// live check's index lookups, not the read, were the cost.
    fn clean(&mut self, group: &[(u32, u32)]) -> Result<()> {
        // A victim may hold blocks of a flush still on its way to the
        // device.
        self.wait_for_writes()?;
        let seg = u64::from(self.geo.seg_blocks);
        let seg_bytes = self.geo.seg_blocks as usize * BLOCK_SIZE;
        let mut vs: Vec<u32> = Vec::new();
        vs.try_reserve_exact(group.len())?;
        vs.extend(group.iter().map(|&(v, _)| v));
        vs.sort_unstable();
        ensure!(
            vs.len() <= CLEAN_GROUP && vs.windows(2).all(|w| w.first() < w.get(1)),
            InvalidState,
            "cleaner: a group's victims must be distinct and at most CLEAN_GROUP"
        );
        let live = self.live_blocks(&vs)?;
        // Only the runs of the victims' blocks that hold live data (and
        // short gaps between them) are read, each at its place in the
        // scratch buffer.
        let runs = live_runs(&live, READ_GAP_BLOCKS)?;
        {
            let start = self.geo.data_start;
            let scratch = self
                .scratch
                .as_mut_slice()
                .get_mut(..vs.len() * seg_bytes)
                .ok_or(Error::new(ErrorKind::InvalidState, "cleaner scratch"))?;
            let bad = || Error::new(ErrorKind::InvalidState, "cleaner read run");
            let mut ranges: Vec<(u64, &mut [u8])> = Vec::new();
            ranges.try_reserve_exact(runs.len())?;
            let mut rest = scratch;
            let mut at = 0usize;
            for r in &runs {
                let v = vs.get(r.victim).ok_or_else(bad)?;
                ensure!(
                    r.off + r.blocks <= seg,
                    InvalidState,
                    "cleaner read run past its segment"
                );
                let from = (r.victim * seg as usize + r.off as usize) * BLOCK_SIZE;
                let (_, tail) = rest
                    .split_at_mut_checked(from.checked_sub(at).ok_or_else(bad)?)
                    .ok_or_else(bad)?;
                let (buf, tail) = tail
                    .split_at_mut_checked(r.blocks as usize * BLOCK_SIZE)
                    .ok_or_else(bad)?;
                rest = tail;
                at = from + buf.len();
                ranges.push((start + u64::from(*v) * seg + r.off, buf));
            }
            if !ranges.is_empty() {
                self.dev.read_ranges(&mut ranges)?;
            }
        }
        let mut rest = live.as_slice();
        let mut lbas: Vec<u32> = Vec::new();
        while !rest.is_empty() {
            let (hba, run) = self.segs.alloc_run(Head::Cleaner, rest.len() as u64)?;
            let (now, later) = rest
                .split_at_checked(run as usize)
                .ok_or(Error::new(ErrorKind::InvalidState, "cleaner run"))?;
            rest = later;
            lbas.clear();
            lbas.try_reserve(now.len())?;
            let out = self
                .moved
                .as_mut_slice()
                .get_mut(..now.len() * BLOCK_SIZE)
                .ok_or(Error::new(ErrorKind::InvalidState, "cleaner buffer"))?;
            for (k, b) in now.iter().enumerate() {
                let dst = out
                    .get_mut(k * BLOCK_SIZE..(k + 1) * BLOCK_SIZE)
                    .ok_or(Error::new(ErrorKind::InvalidState, "cleaner buffer"))?;
                let o = (b.victim * seg as usize + b.off as usize) * BLOCK_SIZE;
                let src = self
                    .scratch
                    .as_slice()
                    .get(o..o + BLOCK_SIZE)
                    .ok_or(Error::new(ErrorKind::InvalidState, "cleaner scratch"))?;
                dst.copy_from_slice(src);
                lbas.push(b.lba);
            }
            self.dev.write(self.geo.data_start + hba, out)?;
            self.stats.data_blocks_written += run;
            // The records were looked up by `live_blocks` in this step;
            // nothing else changed the index since.
            for (k, b) in now.iter().enumerate() {
                let v = vs
                    .get(b.victim)
                    .ok_or(Error::new(ErrorKind::InvalidState, "cleaner victim"))?;
                let old = u64::from(*v) * seg + b.off;
                ensure!(
                    b.rec.hba == old,
                    Corrupted,
                    "cleaner: index and segment summary disagree"
                );
                let mut rec = b.rec.clone();
                rec.hba = hba + k as u64;
                self.segs.invalidate(old)?;
                self.segs.add_valid(rec.hba)?;
                self.index.put(u64::from(b.lba), rec)?;
            }
            self.put_summary(Head::Cleaner, hba, &lbas)?;
            self.stats.cleaner_blocks_moved += run;
        }
        self.stats.segments_cleaned += vs.len() as u64;
        Ok(())
    }

    /// The blocks of the segments `vs` (ascending) that hold live data, in
    /// LBA order: read from the segments' summary entries and each checked
    /// in the index (the summary is a hint; the index decides). Each
    /// segment must hold as many as the usage table counts.
    fn live_blocks(&mut self, vs: &[u32]) -> Result<Vec<LiveBlock>> {
        let sb = self.geo.seg_blocks;
        let per = meta::BLOCKS_PER_ENTRY;
        // Blocks known dead need no lookup (a hint: see `DeadBlocks`);
        // per victim, empty when nothing is known.
        let mut dead: Vec<Vec<u64>> = Vec::new();
        dead.try_reserve_exact(vs.len())?;
        for v in vs {
            let mut d: Vec<u64> = Vec::new();
            if let Some(k) = self.segs.known_dead(*v) {
                d.try_reserve_exact(k.len())?;
                d.extend_from_slice(k);
            }
            dead.push(d);
        }
        let is_dead = |i: usize, off: u32| dead.get(i).is_some_and(|d| DeadBlocks::is_dead(d, off));
        // The summary entries not known all dead, looked up together
        // (their keys ascend with the segment, then the offset).
        let entries = sb.div_ceil(per) as usize;
        let mut keys: Vec<u64> = Vec::new();
        let mut firsts: Vec<(usize, u32)> = Vec::new();
        keys.try_reserve_exact(entries * vs.len())?;
        firsts.try_reserve_exact(entries * vs.len())?;
        for (i, v) in vs.iter().enumerate() {
            for first in (0..sb).step_by(per as usize) {
                let end = first.saturating_add(per).min(sb);
                if (first..end).all(|o| is_dead(i, o)) {
                    self.stats.cleaner_lookups_skipped += u64::from(end - first);
                    continue;
                }
                keys.push(meta::summary_key(*v, first, sb));
                firsts.push((i, first));
            }
        }
        let mut found = Vec::new();
        self.index.get_sorted(&keys, &mut found)?;
        // (LBA, victim, offset) of every block the summaries name and the
        // hint does not know dead.
        let mut cands: Vec<(u32, usize, u64)> = Vec::new();
        cands.try_reserve_exact(sb as usize * vs.len())?;
        for (&(i, first), rec) in firsts.iter().zip(found) {
            let Some(rec) = rec else { continue };
            let lbas = meta::unpack(&meta::from_record(&rec)?);
            for (k, l) in lbas.iter().enumerate() {
                let off = u64::from(first) + k as u64;
                if *l == NO_LBA || off >= u64::from(sb) || u64::from(*l) >= self.geo.capacity {
                    continue;
                }
                if is_dead(i, off as u32) {
                    self.stats.cleaner_lookups_skipped += 1;
                    continue;
                }
                cands.try_reserve(1)?;
                cands.push((*l, i, off));
            }
        }
        // Each LBA looked up once (the group may hold several versions of
        // one), all in one pass, in LBA order; the live blocks come out in
        // LBA order too. Moved in LBA order, nearby LBAs of the group land
        // next to each other. Under uniform random overwrites that makes
        // no measurable difference (a victim's live blocks are far apart
        // anyway): 1 GiB steady state, 3 alternated runs each, seq-read
        // 154 vs 153 MiB/s, rnd-read-32K 128 vs 130 (segment vs LBA
        // order, one victim at a time); it may help workloads whose
        // victims hold runs.
        cands.sort_unstable();
        let mut lbas: Vec<u64> = Vec::new();
        lbas.try_reserve_exact(cands.len())?;
        for (l, _, _) in &cands {
            if lbas.last() != Some(&u64::from(*l)) {
                lbas.push(u64::from(*l));
            }
        }
        let mut recs = Vec::new();
        self.index.get_sorted(&lbas, &mut recs)?;
        let mut live: Vec<LiveBlock> = Vec::new();
        let mut counts: Vec<u32> = crate::fallible::filled_vec(vs.len(), 0u32)?;
        let mut at = 0usize;
        for (l, i, off) in cands {
            while lbas.get(at).is_some_and(|&x| x < u64::from(l)) {
                at += 1;
            }
            let Some(v) = vs.get(i) else { continue };
            if let Some(Some(r)) = recs.get(at) {
                if r.hba == u64::from(*v) * u64::from(sb) + off {
                    live.try_reserve(1)?;
                    live.push(LiveBlock {
                        lba: l,
                        victim: i,
                        off,
                        rec: r.clone(),
                    });
                    if let Some(c) = counts.get_mut(i) {
                        *c += 1;
                    }
                }
            }
        }
        for (v, c) in vs.iter().zip(&counts) {
            ensure!(
                *c == self.segs.valid_in(*v),
                Corrupted,
                "cleaner: segment summary and usage table disagree"
            );
        }
        Ok(live)
    }
}

/// A live block of a cleaner group's victim.
struct LiveBlock {
    lba: u32,
    /// The victim's place in the group (ascending segments).
    victim: usize,
    /// The block's offset in its segment.
    off: u64,
    /// Its index record, as `live_blocks` looked it up.
    rec: BlockRecord,
}

/// A run of a victim's blocks the cleaner reads: `blocks` blocks from
/// offset `off` of the group's victim number `victim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ReadRun {
    victim: usize,
    off: u64,
    blocks: u64,
}

/// The runs that cover every live block of `live`, in victim then offset
/// order, distinct and ascending: blocks of one victim at most `gap`
/// blocks apart share a run (the dead blocks between them are read too).
fn live_runs(live: &[LiveBlock], gap: u64) -> Result<Vec<ReadRun>> {
    let mut at: Vec<(usize, u64)> = Vec::new();
    at.try_reserve_exact(live.len())?;
    at.extend(live.iter().map(|b| (b.victim, b.off)));
    at.sort_unstable();
    let mut runs: Vec<ReadRun> = Vec::new();
    for (victim, off) in at {
        if let Some(r) = runs.last_mut() {
            let end = r.off + r.blocks;
            if r.victim == victim && off < end {
                continue;
            }
            if r.victim == victim && off - end <= gap {
                r.blocks = off + 1 - r.off;
                continue;
            }
        }
        runs.try_reserve(1)?;
        runs.push(ReadRun {
            victim,
            off,
            blocks: 1,
        });
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::AeadKey;

    fn live(at: &[(usize, u64)]) -> Vec<LiveBlock> {
        at.iter()
            .enumerate()
            .map(|(i, &(victim, off))| LiveBlock {
                lba: i as u32,
                victim,
                off,
                rec: BlockRecord {
                    hba: 0,
                    key: AeadKey::from_slice(&[0u8; 32]).unwrap(),
                    mac: [0u8; 16],
                },
            })
            .collect()
    }

    fn run(victim: usize, off: u64, blocks: u64) -> ReadRun {
        ReadRun {
            victim,
            off,
            blocks,
        }
    }

    #[test]
    fn live_runs_merge_short_gaps_within_a_victim_only() {
        // Given in LBA order (not block order), one block twice.
        let l = live(&[
            (1, 3),
            (0, 10),
            (0, 0),
            (0, 4),
            (0, 21),
            (1, 0),
            (0, 22),
            (0, 4),
        ]);
        assert_eq!(
            live_runs(&l, 4).unwrap(),
            vec![run(0, 0, 5), run(0, 10, 1), run(0, 21, 2), run(1, 0, 4)]
        );
        // A gap of exactly `gap` dead blocks is read; one more is not.
        assert_eq!(
            live_runs(&l, 5).unwrap(),
            vec![run(0, 0, 11), run(0, 21, 2), run(1, 0, 4)]
        );
        assert_eq!(
            live_runs(&l, 0).unwrap(),
            vec![
                run(0, 0, 1),
                run(0, 4, 1),
                run(0, 10, 1),
                run(0, 21, 2),
                run(1, 0, 1),
                run(1, 3, 1),
            ]
        );
        assert_eq!(live_runs(&[], 16).unwrap(), vec![]);
    }
}
