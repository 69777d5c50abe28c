//! A device model that charges time per request and per byte, like an SSD
//! with an IOPS cap (QEMU's `throttling.*` options do the same to a guest).
//!
//! Every request costs `per_io_ns + bytes * per_byte_ps / 1000`; a virtual
//! clock accumulates the cost and the caller sleeps whenever it runs ahead
//! of real time by more than a millisecond; it may also lag real time by a
//! few milliseconds, so the oversleep of one request is made up by the
//! next ones and sleep granularity does not distort the model.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use mlsdisk_core::bio::BlockSet;
use mlsdisk_core::Result;

const CREDIT: Duration = Duration::from_millis(3);

/// `D` slowed down by the device model.
pub struct Throttle<D> {
    inner: D,
    per_io_ns: u64,
    per_byte_ps: u64,
    clock: Mutex<Option<Instant>>,
}

impl<D: BlockSet> Throttle<D> {
    /// `iops` requests per second at most (0 = no per-request cost) and
    /// `mib_s` MiB/s of bandwidth (0 = no per-byte cost).
    pub fn new(inner: D, iops: u64, mib_s: u64) -> Self {
        let per_io_ns = 1_000_000_000u64.checked_div(iops).unwrap_or(0);
        let per_byte_ps = 1_000_000_000_000u64
            .checked_div(mib_s * 1024 * 1024)
            .unwrap_or(0);
        Self {
            inner,
            per_io_ns,
            per_byte_ps,
            clock: Mutex::new(None),
        }
    }

    fn charge(&self, bytes: usize) {
        let cost = self.per_io_ns + bytes as u64 * self.per_byte_ps / 1000;
        if cost == 0 {
            return;
        }
        let sleep = {
            let mut g = self.clock.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            // The virtual clock may lag real time by up to CREDIT, so the
            // oversleep of one request is paid back by the next ones
            // instead of being lost (timer slack in a VM is large).
            let floor = now.checked_sub(CREDIT).unwrap_or(now);
            let start = match *g {
                Some(t) if t > floor => t,
                _ => floor,
            };
            let due = start + Duration::from_nanos(cost);
            *g = Some(due);
            due.saturating_duration_since(now)
        };
        if sleep > Duration::from_millis(1) {
            std::thread::sleep(sleep);
        }
    }
}

impl<D: BlockSet> BlockSet for Throttle<D> {
    fn read(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        self.charge(buf.len());
        self.inner.read(pos, buf)
    }
    /// Charges every range as a request of its own (the model is one
    /// queue), then hands them to the device together.
    fn read_ranges(&self, ranges: &mut [(u64, &mut [u8])]) -> Result<()> {
        for (_, buf) in ranges.iter() {
            self.charge(buf.len());
        }
        self.inner.read_ranges(ranges)
    }
    fn write(&self, pos: u64, buf: &[u8]) -> Result<()> {
        self.charge(buf.len());
        self.inner.write(pos, buf)
    }
    fn flush(&self) -> Result<()> {
        self.charge(0);
        self.inner.flush()
    }
    fn nblocks(&self) -> u64 {
        self.inner.nblocks()
    }
}
