//! The index side of a write-buffer flush: recording sealed runs in the
//! index (the new records, the old versions' validity, the mapped count,
//! the runs' segment summaries) and the compaction steps that follow. It
//! borrows only what it changes, so a flush can run it beside its device
//! writes (see `MlsDisk::store_runs`).

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::index::DiskIndex;
use super::meta;
use super::record::BlockRecord;
use super::segment::{Head, Segments};
use crate::{ensure, Result};

/// The parts of a disk a flush's index updates change.
pub(crate) struct IndexSink<'a> {
    pub(crate) index: &'a mut Box<dyn DiskIndex>,
    pub(crate) segs: &'a mut Segments,
    pub(crate) mapped: &'a mut u64,
}

impl IndexSink<'_> {
    /// Records the user blocks `recs` (counted valid already; the old
    /// versions' validity and the mapped count change here) and the summary entries of their runs
    /// (`summaries`, from `Segments::record_run`), then runs up to `steps`
    /// compaction steps.
    pub(crate) fn record(
        &mut self,
        recs: Vec<(u64, BlockRecord)>,
        summaries: Vec<(u64, meta::Payload)>,
        steps: u32,
    ) -> Result<()> {
        // The old versions (looked up in the index: no forward map in
        // memory) lose their places in their segments' counts. The buffer
        // holds each LBA once, so all are looked up before any is put, in
        // one pass over the tree, in LBA order.
        for old in self.old_versions(&recs)? {
            match old {
                Some(old) => self.segs.invalidate(old.hba)?,
                None => *self.mapped += 1,
            }
        }
        for (l, rec) in recs {
            self.index.put(l, rec)?;
        }
        for (k, p) in summaries {
            self.index.put(k, meta::to_record(&p)?)?;
        }
        for _ in 0..steps {
            if !self.index.background_step()? {
                break;
            }
        }
        Ok(())
    }

    /// The index records of the LBAs of `recs` (distinct), in LBA order.
    fn old_versions(&mut self, recs: &[(u64, BlockRecord)]) -> Result<Vec<Option<BlockRecord>>> {
        let mut olds: Vec<Option<BlockRecord>> = Vec::new();
        if let [(l, _)] = recs {
            olds.try_reserve_exact(1)?;
            olds.push(self.index.get(*l)?);
            return Ok(olds);
        }
        let mut lbas: Vec<u64> = Vec::new();
        lbas.try_reserve_exact(recs.len())?;
        lbas.extend(recs.iter().map(|(l, _)| *l));
        lbas.sort_unstable();
        self.index.get_sorted(&lbas, &mut olds)?;
        ensure!(
            olds.len() == recs.len(),
            InvalidState,
            "index: a lookup per block"
        );
        Ok(olds)
    }

    /// Stores the summary entries of the run of `head` at `hba`.
    pub(crate) fn put_summary(&mut self, head: Head, hba: u64, lbas: &[u32]) -> Result<()> {
        for (k, p) in self.segs.record_run(head, hba, lbas)? {
            self.index.put(k, meta::to_record(&p)?)?;
        }
        Ok(())
    }
}
