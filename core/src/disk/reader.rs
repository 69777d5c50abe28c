//! Reads that fetch and decrypt without holding the disk.
//!
//! A read has two halves. Resolving each LBA (write buffer, forward map,
//! index) needs the disk's state and runs under `&mut MlsDisk`
//! ([`super::MlsDisk::plan_read`]); it is short: a few memory lookups and,
//! on an index cache miss, a metadata read. Fetching the ciphertext and
//! authenticating it is the expensive half and needs nothing but the device,
//! the crypto provider and the disk's UUID: a [`DataReader`] does it through
//! `&self`, so a platform can run many reads at once on several CPUs while
//! writes, syncs and the cleaner hold the disk.
//!
//! # Why a plan may go stale, and why that is safe
//!
//! Between planning and fetching, the disk may move on: a write may give
//! the LBA a newer version, the cleaner may move the block, and after the
//! next sync the segment it sat in may be reused for other data. The fetch
//! then reads either the old ciphertext (still intact: a segment is reused
//! only after a sync, never under a read that started before it) or bytes
//! that were written since. Each data block is sealed under its own random
//! key with the LBA in the associated data, and the plan carries that key
//! and MAC: anything but the planned ciphertext fails authentication. So a
//! stale fetch returns either the version that was current when the read
//! was planned (a read that raced with a write may return either version,
//! as on any disk) or [`crate::ErrorKind::Integrity`]. The platform then
//! repeats the read under the disk ([`super::MlsDisk::read`]), which cannot
//! race; an integrity error there is a real attack or corruption. A fetch
//! never returns wrong data.

use alloc::sync::Arc;
use alloc::vec::Vec;

use super::{data_aad, BlockRecord, Counted, ZERO_IV};
use crate::bio::{BlockSet, BLOCK_SIZE};
use crate::platform::Parallel;
use crate::{Error, ErrorKind, Result};

/// One contiguous device read: `count` blocks at device block `dev_block`
/// into buffer blocks `buf_block..`, records `first..first + count` of the
/// plan.
#[derive(Clone, Copy, Debug)]
struct Run {
    buf_block: usize,
    dev_block: u64,
    first: usize,
    count: usize,
}

/// What a read still has to fetch from the device, made by
/// [`super::MlsDisk::plan_read`]. Holds the blocks' keys (wiped on drop).
#[derive(Default)]
pub struct ReadPlan {
    blocks: Vec<(u64, BlockRecord)>,
    runs: Vec<Run>,
}

impl ReadPlan {
    /// Reserves room for `n` blocks.
    pub(super) fn with_capacity(n: usize) -> Result<Self> {
        let mut p = Self::default();
        p.blocks.try_reserve_exact(n)?;
        Ok(p)
    }

    /// Adds buffer block `buf_block` = `lba`, stored at device block
    /// `dev_block` under `rec`; joins the previous run when contiguous in
    /// the buffer and on the device.
    pub(super) fn push(
        &mut self,
        buf_block: usize,
        dev_block: u64,
        lba: u64,
        rec: BlockRecord,
    ) -> Result<()> {
        let first = self.blocks.len();
        self.blocks.try_reserve(1)?;
        self.blocks.push((lba, rec));
        if let Some(r) = self.runs.last_mut() {
            let next_buf = r.buf_block + r.count;
            let next_dev = r.dev_block + r.count as u64;
            if next_buf == buf_block && next_dev == dev_block {
                r.count += 1;
                return Ok(());
            }
        }
        self.runs.try_reserve(1)?;
        self.runs.push(Run {
            buf_block,
            dev_block,
            first,
            count: 1,
        });
        Ok(())
    }

    /// Blocks the plan reads from the device.
    pub fn device_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Device reads the plan makes (contiguous blocks are read together).
    pub fn device_reads(&self) -> usize {
        self.runs.len()
    }

    /// Whether nothing is left to fetch (every block came from the write
    /// buffer or was unmapped).
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

/// Fetches and authenticates planned reads; cheap to clone, `Send + Sync`.
/// See the module documentation.
pub struct DataReader<D> {
    pub(super) dev: Arc<Counted<D>>,
    pub(super) crypto: crate::CryptoRef,
    pub(super) uuid: [u8; 16],
    /// The disk's runner for bulk crypto, if it has one: a long fetch is
    /// split into parts that read and decrypt on several CPUs at once.
    pub(super) parallel: Option<Arc<dyn Parallel>>,
}

impl<D> Clone for DataReader<D> {
    fn clone(&self) -> Self {
        Self {
            dev: self.dev.clone(),
            crypto: self.crypto.clone(),
            uuid: self.uuid,
            parallel: self.parallel.clone(),
        }
    }
}

/// Blocks per part below which a fetch is not split (a part's read and
/// decryption must be worth a job: 128 KiB).
pub(super) const MIN_BLOCKS_PER_PART: usize = 32;

impl<D: BlockSet> DataReader<D> {
    /// Reads and decrypts the blocks of `plan` into `buf` (the buffer the
    /// plan was made for; the blocks the plan does not name were filled by
    /// `plan_read` and are left alone). On error the blocks of the plan
    /// hold no plaintext: they are zeroed.
    pub fn fetch(&self, plan: &ReadPlan, buf: &mut [u8]) -> Result<()> {
        let r = self.fetch_inner(plan, buf);
        if r.is_err() {
            for run in &plan.runs {
                let s = run.buf_block * BLOCK_SIZE;
                if let Some(b) = buf.get_mut(s..s + run.count * BLOCK_SIZE) {
                    b.fill(0);
                }
            }
        }
        r
    }

    fn fetch_inner(&self, plan: &ReadPlan, buf: &mut [u8]) -> Result<()> {
        let parts = self
            .parallel
            .as_ref()
            .map_or(1, |p| p.width())
            .min(plan.blocks.len() / MIN_BLOCKS_PER_PART);
        match self.parallel.as_deref() {
            Some(p) if parts > 1 => self.fetch_parts(p, plan, buf, parts),
            _ => self.fetch_runs(&plan.runs, &plan.blocks, 0, buf),
        }
    }

    /// Reads and decrypts `runs` (records in `blocks`) into `buf`, which
    /// starts at buffer block `base` of the request.
    fn fetch_runs(
        &self,
        runs: &[Run],
        blocks: &[(u64, BlockRecord)],
        base: usize,
        buf: &mut [u8],
    ) -> Result<()> {
        self.read_runs(runs, base, buf)?;
        for run in runs {
            let s = run
                .buf_block
                .checked_sub(base)
                .ok_or(Error::new(ErrorKind::InvalidState, "read plan part"))?
                * BLOCK_SIZE;
            let dst = buf
                .get_mut(s..s + run.count * BLOCK_SIZE)
                .ok_or(Error::new(ErrorKind::InvalidArgument, "read plan buffer"))?;
            let recs = blocks
                .get(run.first..run.first + run.count)
                .ok_or(Error::new(ErrorKind::InvalidState, "read plan"))?;
            for ((lba, rec), blk) in recs.iter().zip(dst.chunks_exact_mut(BLOCK_SIZE)) {
                let aad = data_aad(&self.uuid, *lba);
                self.crypto
                    .aead_open(&rec.key, &ZERO_IV, &aad, blk, &rec.mac)
                    .map_err(|_| {
                        Error::new(ErrorKind::Integrity, "data block failed authentication")
                    })?;
            }
        }
        Ok(())
    }

    /// [`Self::fetch_runs`] in `parts` parts of about the same number of
    /// blocks (a run longer than that is cut), each reading and decrypting
    /// its own slice of `buf` as one job of `p`: the parts' device reads
    /// are in flight together and their decryption runs on several CPUs.
    /// The first error of a part is the fetch's error.
    fn fetch_parts(
        &self,
        p: &dyn Parallel,
        plan: &ReadPlan,
        buf: &mut [u8],
        parts: usize,
    ) -> Result<()> {
        let per = plan.blocks.len().div_ceil(parts);
        // The runs cut at every multiple of `per` blocks of the plan, then
        // grouped by part: `cuts[k]..cuts[k + 1]` are the pieces of part k.
        let mut pieces: Vec<Run> = Vec::new();
        pieces.try_reserve_exact(plan.runs.len() + parts)?;
        let mut cuts: Vec<usize> = Vec::new();
        cuts.try_reserve_exact(parts + 1)?;
        cuts.push(0);
        for run in &plan.runs {
            let mut r = *run;
            while r.count > 0 {
                // Records `0..first` are in earlier pieces: this piece
                // belongs to part `first / per` and ends at its boundary.
                let end = (r.first / per + 1) * per;
                let n = r.count.min(end - r.first);
                if r.first % per == 0 && r.first > 0 {
                    cuts.push(pieces.len());
                }
                pieces.push(Run { count: n, ..r });
                r.buf_block += n;
                r.dev_block += n as u64;
                r.first += n;
                r.count -= n;
            }
        }
        cuts.push(pieces.len());
        let bad = || Error::new(ErrorKind::InvalidState, "read plan part");
        let n = cuts.len() - 1;
        let mut results: Vec<Result<()>> = crate::fallible::filled_vec(n, Ok(()))?;
        let mut closures = Vec::new();
        closures.try_reserve_exact(n)?;
        let mut rest = buf;
        let mut at = 0usize;
        for (w, r) in cuts.windows(2).zip(results.iter_mut()) {
            let (&a, &b) = (w.first().ok_or_else(bad)?, w.get(1).ok_or_else(bad)?);
            let mine = pieces.get(a..b).ok_or_else(bad)?;
            let (first, last) = (mine.first().ok_or_else(bad)?, mine.last().ok_or_else(bad)?);
            let (start, end) = (first.buf_block, last.buf_block + last.count);
            let skip = (start.checked_sub(at).ok_or_else(bad)?) * BLOCK_SIZE;
            let (_, tail) = rest.split_at_mut_checked(skip).ok_or_else(bad)?;
            let (slice, tail) = tail
                .split_at_mut_checked((end - start) * BLOCK_SIZE)
                .ok_or_else(bad)?;
            rest = tail;
            at = end;
            let blocks = &plan.blocks;
            closures.push(move || *r = self.fetch_runs(mine, blocks, start, slice));
        }
        crate::platform::run_each(p, &mut closures)?;
        drop(closures);
        results.into_iter().collect()
    }

    /// Reads every run of `runs` into its place in `buf` (which starts at
    /// buffer block `base`), all at once ([`BlockSet::read_ranges`]: the
    /// device may keep them all in flight). Runs are in buffer order and
    /// do not overlap ([`ReadPlan::push`]), so the buffer splits into their
    /// slices front to back.
    fn read_runs(&self, runs: &[Run], base: usize, buf: &mut [u8]) -> Result<()> {
        let bad = || Error::new(ErrorKind::InvalidArgument, "read plan buffer");
        let at_of = |run: &Run| {
            run.buf_block
                .checked_sub(base)
                .map(|b| b * BLOCK_SIZE)
                .ok_or_else(bad)
        };
        if let [run] = runs {
            let s = at_of(run)?;
            let dst = buf.get_mut(s..s + run.count * BLOCK_SIZE).ok_or_else(bad)?;
            return self.dev.read(run.dev_block, dst);
        }
        let mut ranges: Vec<(u64, &mut [u8])> = Vec::new();
        ranges.try_reserve_exact(runs.len())?;
        let mut rest = buf;
        let mut at = 0;
        for run in runs {
            let skip = at_of(run)?.checked_sub(at).ok_or_else(bad)?;
            let len = run.count * BLOCK_SIZE;
            let (_, tail) = rest.split_at_mut_checked(skip).ok_or_else(bad)?;
            let (dst, tail) = tail.split_at_mut_checked(len).ok_or_else(bad)?;
            ranges.push((run.dev_block, dst));
            rest = tail;
            at += skip + len;
        }
        self.dev.read_ranges(&mut ranges)
    }
}
