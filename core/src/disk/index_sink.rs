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
use crate::Result;

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
        for (l, rec) in recs {
            // The old version (looked up in the index: no forward map in
            // memory) loses its place in its segment's count.
            match self.index.get(l)? {
                Some(old) => self.segs.invalidate(old.hba)?,
                None => *self.mapped += 1,
            }
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

    /// Stores the summary entries of the run of `head` at `hba`.
    pub(crate) fn put_summary(&mut self, head: Head, hba: u64, lbas: &[u32]) -> Result<()> {
        for (k, p) in self.segs.record_run(head, hba, lbas)? {
            self.index.put(k, meta::to_record(&p)?)?;
        }
        Ok(())
    }
}
