//! A memory disk that records its reads, for the tests that count device
//! requests (a scattered read is one `read_ranges` call, not many reads).
#![allow(dead_code)]

use std::sync::Mutex;

use mlsdisk_core::bio::{BlockSet, MemDisk, BLOCK_SIZE};

/// A device that records every read as its list of (device block,
/// blocks), `true` for a `read_ranges` call (which it serves one range
/// after another, as the default does), and can flip a byte.
pub struct ReadLog {
    pub mem: MemDisk,
    pub reads: Mutex<Vec<ReadCall>>,
}

/// One read of [`ReadLog`]: whether it was a `read_ranges` call, and its
/// (device block, blocks) ranges.
pub type ReadCall = (bool, Vec<(u64, usize)>);

impl BlockSet for ReadLog {
    fn read(&self, pos: u64, buf: &mut [u8]) -> mlsdisk_core::Result<()> {
        self.reads
            .lock()
            .unwrap()
            .push((false, vec![(pos, buf.len() / BLOCK_SIZE)]));
        self.mem.read(pos, buf)
    }
    fn write(&self, pos: u64, buf: &[u8]) -> mlsdisk_core::Result<()> {
        self.mem.write(pos, buf)
    }
    fn flush(&self) -> mlsdisk_core::Result<()> {
        self.mem.flush()
    }
    fn nblocks(&self) -> u64 {
        self.mem.nblocks()
    }
    fn read_ranges(&self, ranges: &mut [(u64, &mut [u8])]) -> mlsdisk_core::Result<()> {
        self.reads.lock().unwrap().push((
            true,
            ranges
                .iter()
                .map(|(p, b)| (*p, b.len() / BLOCK_SIZE))
                .collect(),
        ));
        for (pos, buf) in ranges.iter_mut() {
            self.mem.read(*pos, buf)?;
        }
        Ok(())
    }
}

impl ReadLog {
    pub fn new(nblocks: u64) -> Self {
        Self {
            mem: MemDisk::new(nblocks).unwrap(),
            reads: Mutex::new(Vec::new()),
        }
    }

    /// Forgets the reads so far.
    pub fn clear(&self) {
        self.reads.lock().unwrap().clear();
    }

    /// The number of ranges of each `read_ranges` call so far.
    pub fn ranged_calls(&self) -> Vec<usize> {
        self.batches().iter().map(Vec::len).collect()
    }

    /// The (device block, blocks) ranges of each `read_ranges` call so far.
    pub fn batches(&self) -> Vec<Vec<(u64, usize)>> {
        self.reads
            .lock()
            .unwrap()
            .iter()
            .filter(|(ranged, _)| *ranged)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// The number of plain `read` calls so far.
    pub fn plain_reads(&self) -> usize {
        self.reads
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| !*r)
            .count()
    }

    /// Flips a bit of device block `block`.
    pub fn flip(&self, block: u64) {
        let mut b = vec![0u8; BLOCK_SIZE];
        self.mem.read(block, &mut b).unwrap();
        b[100] ^= 0x01;
        self.mem.write(block, &b).unwrap();
    }
}
