//! Flushed write buffers on their way to the device while the disk goes on.
//!
//! Without a runner a flush writes its sealed blocks to the data log and
//! returns when the device has them, all inside the caller's request (and
//! the platform's engine lock). With one ([`MlsDisk::set_async_writes`]),
//! the flush hands its sealed buffer to a [`Spawn`] runner and returns;
//! the next requests fill the emptied write buffer, and the next flush
//! seals into a second buffer, while the device writes the first.
//!
//! What keeps this safe: nothing may read, move or commit the blocks of a
//! write still in flight, so every path that would waits for it first
//! ([`AsyncWrites::wait`]): the next flush (at most one write is in flight,
//! and its buffer is the next one's), every commit (the index must never
//! durably point at blocks the device does not have yet: the commit's
//! device flush comes after the write), the cleaner (a victim may hold the
//! blocks), and a read whose index records point into the write. A write
//! that failed fails whoever waits for it, which stops the disk, as a
//! failed flush always did: the blocks it carried had been acknowledged as
//! buffered, and the last sync's state is what a reopen finds.
//!
//! [`MlsDisk::set_async_writes`]: super::MlsDisk::set_async_writes

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::bio::{AlignedBuf, BlockSet, BLOCK_SIZE};
use crate::platform::{Pending, Spawn};
use crate::{Error, ErrorKind, Result};

/// A sealed buffer and where its runs go: `(device block, first block in
/// the buffer, blocks)`.
struct Sealed {
    buf: AlignedBuf,
    runs: Vec<(u64, usize, usize)>,
}

impl Sealed {
    fn write_to(&self, dev: &dyn BlockSet) -> Result<()> {
        for &(pos, at, n) in &self.runs {
            let blocks = self
                .buf
                .as_slice()
                .get(at * BLOCK_SIZE..(at + n) * BLOCK_SIZE)
                .ok_or(Error::new(ErrorKind::InvalidState, "sealed range"))?;
            dev.write(pos, blocks)?;
        }
        Ok(())
    }

    fn covers(&self, pos: u64) -> bool {
        self.runs
            .iter()
            .any(|&(p, _, n)| pos >= p && pos - p < n as u64)
    }
}

/// The write in flight.
struct InFlight {
    sealed: Arc<Sealed>,
    pending: Box<dyn Pending>,
}

/// The asynchronous device writes of one disk (see the module
/// documentation).
pub(crate) struct AsyncWrites {
    spawn: Arc<dyn Spawn>,
    dev: Arc<dyn BlockSet>,
    in_flight: Option<InFlight>,
    /// The buffer of the last write waited for: the next flush seals into
    /// it.
    spare: Option<AlignedBuf>,
    /// Reads that waited for a write in flight (their blocks were in it).
    pub(crate) reads_waited: u64,
    /// Writes handed to the runner.
    pub(crate) started: u64,
}

impl AsyncWrites {
    pub(crate) fn new(spawn: Arc<dyn Spawn>, dev: Arc<dyn BlockSet>) -> Self {
        Self {
            spawn,
            dev,
            in_flight: None,
            spare: None,
            reads_waited: 0,
            started: 0,
        }
    }

    /// Whether device block `pos` is being written.
    pub(crate) fn covers(&self, pos: u64) -> bool {
        self.in_flight
            .as_ref()
            .is_some_and(|w| w.sealed.covers(pos))
    }

    /// Waits for the write in flight, if any, and gives its result; its
    /// buffer becomes the spare.
    pub(crate) fn wait(&mut self) -> Result<()> {
        let Some(w) = self.in_flight.take() else {
            return Ok(());
        };
        let r = w.pending.wait();
        // The job has returned and dropped its handle on the buffer.
        if let Ok(s) = Arc::try_unwrap(w.sealed) {
            self.spare = Some(s.buf);
        }
        r
    }

    /// Waits for the write in flight, then starts writing `runs` of `buf`
    /// and returns the buffer the next flush seals into (the previous
    /// write's, or a new one of the same size).
    pub(crate) fn start(
        &mut self,
        buf: AlignedBuf,
        runs: Vec<(u64, usize, usize)>,
    ) -> Result<AlignedBuf> {
        self.wait()?;
        let next = match self.spare.take() {
            Some(b) if b.len() == buf.len() => b,
            _ => AlignedBuf::zeroed(buf.len())?,
        };
        let sealed = Arc::new(Sealed { buf, runs });
        let job = sealed.clone();
        let dev = self.dev.clone();
        let pending = self.spawn.spawn(Box::new(move || job.write_to(&*dev)))?;
        self.in_flight = Some(InFlight { sealed, pending });
        self.started += 1;
        Ok(next)
    }

    /// Bytes of the buffers held here (the spare, and the one in flight).
    pub(crate) fn mem_bytes(&self) -> usize {
        self.spare.as_ref().map_or(0, |b| b.capacity())
            + self
                .in_flight
                .as_ref()
                .map_or(0, |w| w.sealed.buf.capacity())
    }
}
