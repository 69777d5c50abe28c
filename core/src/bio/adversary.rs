//! The attacker of the tests: the host, which can do anything to the disk.

use std::sync::Arc;
use std::vec::Vec;

use super::{BlockSet, MemDisk, BLOCK_SIZE};
use crate::{Error, ErrorKind, Result};

/// One block's contents as they were at some moment, to put back later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockVersion {
    /// The block it was read from.
    pub pos: u64,
    /// Its bytes then.
    pub data: Vec<u8>,
}

/// A whole disk image at some moment (for rollback attacks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image(Vec<u8>);

/// A handle over a shared [`MemDisk`] that tampers with it between the
/// operations of the code under test: reads and writes any block, flips
/// bytes, replays old versions of blocks, swaps blocks, rolls the whole image
/// back. Every change is durable at once (the memory disk has no cache).
#[derive(Clone, Debug)]
pub struct Adversary {
    disk: Arc<MemDisk>,
}

impl Adversary {
    /// An adversary over `disk` (the same `Arc` the code under test uses,
    /// possibly under other wrappers).
    pub fn new(disk: Arc<MemDisk>) -> Self {
        Self { disk }
    }

    /// The number of blocks of the disk.
    pub fn nblocks(&self) -> u64 {
        self.disk.nblocks()
    }

    /// A copy of block `pos`.
    pub fn read_block(&self, pos: u64) -> Result<Vec<u8>> {
        let mut v = crate::fallible::filled_vec(BLOCK_SIZE, 0)?;
        self.disk.read(pos, &mut v)?;
        Ok(v)
    }

    /// Overwrites block `pos` with `data` (one block).
    pub fn write_block(&self, pos: u64, data: &[u8]) -> Result<()> {
        self.disk.write(pos, data)
    }

    /// Applies `f` to the bytes of block `pos` and writes them back.
    pub fn modify(&self, pos: u64, f: &mut dyn FnMut(&mut [u8])) -> Result<()> {
        let mut b = self.read_block(pos)?;
        f(&mut b);
        self.write_block(pos, &b)
    }

    /// XORs byte `offset` of block `pos` with `mask` (0 is taken as 0xff).
    pub fn flip_byte(&self, pos: u64, offset: usize, mask: u8) -> Result<()> {
        let mask = if mask == 0 { 0xff } else { mask };
        let mut b = self.read_block(pos)?;
        let byte = b.get_mut(offset).ok_or(Error::new(
            ErrorKind::InvalidArgument,
            "offset past the block",
        ))?;
        *byte ^= mask;
        self.write_block(pos, &b)
    }

    /// Remembers block `pos` as it is now.
    pub fn snapshot_block(&self, pos: u64) -> Result<BlockVersion> {
        Ok(BlockVersion {
            pos,
            data: self.read_block(pos)?,
        })
    }

    /// Puts an old version of a block back where it was (replay).
    pub fn replay(&self, old: &BlockVersion) -> Result<()> {
        self.write_block(old.pos, &old.data)
    }

    /// Puts an old version of a block at another position (splice).
    pub fn replay_at(&self, old: &BlockVersion, pos: u64) -> Result<()> {
        self.write_block(pos, &old.data)
    }

    /// Copies block `from` over block `to`.
    pub fn copy_block(&self, from: u64, to: u64) -> Result<()> {
        let b = self.read_block(from)?;
        self.write_block(to, &b)
    }

    /// Exchanges blocks `a` and `b`.
    pub fn swap(&self, a: u64, b: u64) -> Result<()> {
        let ba = self.read_block(a)?;
        let bb = self.read_block(b)?;
        self.write_block(a, &bb)?;
        self.write_block(b, &ba)
    }

    /// The whole image as it is now.
    pub fn snapshot(&self) -> Result<Image> {
        Ok(Image(self.disk.snapshot()?))
    }

    /// Rolls the whole disk back to `image`.
    pub fn restore(&self, image: &Image) -> Result<()> {
        self.disk.restore(&image.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tamper_replay_swap_rollback() {
        let mem = Arc::new(MemDisk::new(3).unwrap());
        let adv = Adversary::new(mem.clone());
        mem.write(0, &vec![1u8; BLOCK_SIZE]).unwrap();
        mem.write(1, &vec![2u8; BLOCK_SIZE]).unwrap();
        let img = adv.snapshot().unwrap();
        let old = adv.snapshot_block(0).unwrap();
        adv.flip_byte(0, 5, 0x10).unwrap();
        assert_eq!(adv.read_block(0).unwrap()[5], 0x11);
        adv.replay(&old).unwrap();
        assert_eq!(adv.read_block(0).unwrap(), vec![1u8; BLOCK_SIZE]);
        adv.swap(0, 1).unwrap();
        assert_eq!(adv.read_block(0).unwrap(), vec![2u8; BLOCK_SIZE]);
        adv.copy_block(2, 1).unwrap();
        assert_eq!(adv.read_block(1).unwrap(), vec![0u8; BLOCK_SIZE]);
        adv.restore(&img).unwrap();
        assert_eq!(adv.read_block(1).unwrap(), vec![2u8; BLOCK_SIZE]);
        assert!(adv.flip_byte(0, BLOCK_SIZE, 1).is_err());
    }
}
