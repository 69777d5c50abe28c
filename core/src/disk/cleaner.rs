//! The segment cleaner: makes room in the data log by moving the valid
//! blocks of mostly invalid segments to the cleaner's head.
//!
//! - `MlsDisk::ensure_space` decides when and how much to clean (before
//!   a write-buffer flush, in rounds of one sync each) and checks the index
//!   room of every move before it starts.
//! - `MlsDisk::clean` moves one victim: a live check of its blocks in the
//!   index (blocks the in-memory hint `DeadBlocks` knows dead are skipped:
//!   a tracked victim costs a lookup per live block only), one read of the
//!   whole segment, the live blocks written as
//!   ciphertext (no re-encryption: the AAD binds the LBA, not the place),
//!   the index pointed at the new places. Each move is one complete step.

use alloc::vec::Vec;

use super::dead_blocks::DeadBlocks;
use super::segment::{Head, Segments, NO_LBA};
use super::{meta, Batch, BlockRecord, MlsDisk, Room};
use crate::bio::{BlockSet, BLOCK_SIZE};
use crate::{bail, ensure, Error, ErrorKind, Result};

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
            while user(&self.segs) + self.segs.pending_blocks() < goal {
                match self.segs.pick_victim(self.cfg.cleaner_policy, max_valid) {
                    Some((v, valid)) if u64::from(valid) <= self.segs.free_for(Head::Cleaner) => {
                        // Every old version is in segment `v`.
                        let updates = self.index_updates(
                            Batch::Append {
                                head: Head::Cleaner,
                                blocks: u64::from(valid),
                                old: Some(&[u64::from(v / meta::SEGS_PER_ENTRY)]),
                            },
                            need,
                        )?;
                        match self.index.room_for(updates) {
                            Ok(Room::Now) => {}
                            Ok(Room::AfterCommit) => {
                                index_full = true;
                                break;
                            }
                            // Not even after a commit: what is left is
                            // to stop (below) or refuse.
                            Err(e) if e.kind() == ErrorKind::NoSpace => {
                                index_full = true;
                                break;
                            }
                            Err(e) => return Err(e),
                        }
                        self.critical(|d| d.clean(v))?;
                        moved += 1;
                    }
                    _ => break,
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

    /// Moves the valid blocks of segment `v` to the head of the data log.
    ///
    /// The live check runs before the victim's read, on this thread. Running
    /// the read on a worker beside the check was tried and measured: no
    /// gain (steady 256 KiB overwrites of a full 1 GiB disk, 3 interleaved
    /// runs, median 112.0 vs 109.8 MiB/s; identical under the throttled
    /// device model), because the live check's index lookups, not the
    /// read, are the cost. It was taken out again.
    fn clean(&mut self, v: u32) -> Result<()> {
        // The victim may hold blocks of a flush still on its way to the
        // device.
        self.wait_for_writes()?;
        let seg = u64::from(self.geo.seg_blocks);
        let base = u64::from(v) * seg;
        let live = self.live_blocks(v)?;
        self.dev
            .read(self.geo.data_start + base, self.scratch.as_mut_slice())?;
        let mut rest = live.as_slice();
        let mut lbas: Vec<u32> = Vec::new();
        while !rest.is_empty() {
            let (hba, run) = self.segs.alloc_run(Head::Cleaner, rest.len() as u64)?;
            let (now, later) = rest.split_at(run as usize);
            rest = later;
            lbas.clear();
            lbas.try_reserve(now.len())?;
            let out = self
                .moved
                .as_mut_slice()
                .get_mut(..now.len() * BLOCK_SIZE)
                .ok_or(Error::new(ErrorKind::InvalidState, "cleaner buffer"))?;
            for (k, (off, l, _)) in now.iter().enumerate() {
                let dst = out
                    .get_mut(k * BLOCK_SIZE..(k + 1) * BLOCK_SIZE)
                    .ok_or(Error::new(ErrorKind::InvalidState, "cleaner buffer"))?;
                let o = *off as usize * BLOCK_SIZE;
                let b = self
                    .scratch
                    .as_slice()
                    .get(o..o + BLOCK_SIZE)
                    .ok_or(Error::new(ErrorKind::InvalidState, "cleaner scratch"))?;
                dst.copy_from_slice(b);
                lbas.push(*l);
            }
            self.dev.write(self.geo.data_start + hba, out)?;
            self.stats.data_blocks_written += run;
            // The records were looked up by `live_blocks` in this step;
            // nothing else changed the index since.
            for (k, (off, l, rec)) in now.iter().enumerate() {
                let old = base + off;
                ensure!(
                    rec.hba == old,
                    Corrupted,
                    "cleaner: index and segment summary disagree"
                );
                let mut rec = rec.clone();
                rec.hba = hba + k as u64;
                self.segs.invalidate(old)?;
                self.segs.add_valid(rec.hba)?;
                self.index.put(u64::from(*l), rec)?;
            }
            self.put_summary(Head::Cleaner, hba, &lbas)?;
            self.stats.cleaner_blocks_moved += run;
        }
        self.stats.segments_cleaned += 1;
        Ok(())
    }

    /// The blocks of segment `v` that hold live data, (offset, LBA, index
    /// record): read from the segment's summary entries and each checked in
    /// the index (the summary is a hint; the index decides). There must be
    /// as many as the usage table counts. In LBA order.
    fn live_blocks(&mut self, v: u32) -> Result<Vec<(u64, u32, BlockRecord)>> {
        let sb = self.geo.seg_blocks;
        let base = u64::from(v) * u64::from(sb);
        let mut live: Vec<(u64, u32, BlockRecord)> = Vec::new();
        live.try_reserve(self.segs.valid_in(v) as usize)?;
        let per = meta::BLOCKS_PER_ENTRY;
        // Blocks known dead need no lookup (a hint: see `DeadBlocks`).
        let mut dead: Vec<u64> = Vec::new();
        let known = match self.segs.known_dead(v) {
            Some(d) => {
                dead.try_reserve_exact(d.len())?;
                dead.extend_from_slice(d);
                true
            }
            None => false,
        };
        let is_dead = |off: u32| known && DeadBlocks::is_dead(&dead, off);
        // The summary entries not known all dead, looked up together (their
        // keys ascend with the offset).
        let mut keys: Vec<u64> = Vec::new();
        let mut firsts: Vec<u32> = Vec::new();
        let entries = sb.div_ceil(per) as usize;
        keys.try_reserve_exact(entries)?;
        firsts.try_reserve_exact(entries)?;
        for first in (0..sb).step_by(per as usize) {
            let end = first.saturating_add(per).min(sb);
            if (first..end).all(is_dead) {
                self.stats.cleaner_lookups_skipped += u64::from(end - first);
                continue;
            }
            keys.push(meta::summary_key(v, first, sb));
            firsts.push(first);
        }
        let mut found = Vec::new();
        self.index.get_sorted(&keys, &mut found)?;
        // (LBA, offset) of every block the summary names and the hint does
        // not know dead.
        let mut cands: Vec<(u32, u64)> = Vec::new();
        cands.try_reserve_exact(sb as usize)?;
        for (first, rec) in firsts.iter().zip(found) {
            let Some(rec) = rec else { continue };
            let lbas = meta::unpack(&meta::from_record(&rec)?);
            for (i, l) in lbas.iter().enumerate() {
                let off = u64::from(*first) + i as u64;
                if *l == NO_LBA || off >= u64::from(sb) || u64::from(*l) >= self.geo.capacity {
                    continue;
                }
                if is_dead(off as u32) {
                    self.stats.cleaner_lookups_skipped += 1;
                    continue;
                }
                cands.try_reserve(1)?;
                cands.push((*l, off));
            }
        }
        // Each LBA looked up once (a segment may hold several versions of
        // one), all in one pass, in LBA order; `live` comes out in LBA
        // order too. Moved in LBA order, nearby LBAs of one victim land
        // next to each other. Under uniform random overwrites that makes
        // no measurable difference (a victim's live blocks are far apart
        // anyway): 1 GiB steady state, 3 alternated runs each, seq-read
        // 154 vs 153 MiB/s, rnd-read-32K 128 vs 130 (segment vs LBA
        // order); it may help workloads whose victims hold runs.
        cands.sort_unstable();
        let mut lbas: Vec<u64> = Vec::new();
        lbas.try_reserve_exact(cands.len())?;
        for (l, _) in &cands {
            if lbas.last() != Some(&u64::from(*l)) {
                lbas.push(u64::from(*l));
            }
        }
        let mut recs = Vec::new();
        self.index.get_sorted(&lbas, &mut recs)?;
        let mut at = 0usize;
        for (l, off) in cands {
            while lbas.get(at).is_some_and(|&x| x < u64::from(l)) {
                at += 1;
            }
            if let Some(Some(r)) = recs.get(at) {
                if r.hba == base + off {
                    live.try_reserve(1)?;
                    live.push((off, l, r.clone()));
                }
            }
        }
        ensure!(
            live.len() as u64 == u64::from(self.segs.valid_in(v)),
            Corrupted,
            "cleaner: segment summary and usage table disagree"
        );
        Ok(live)
    }
}
