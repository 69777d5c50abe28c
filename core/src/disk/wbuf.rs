//! The write buffer: the newest version of recently written blocks, in
//! memory, until they go to the data log as one sequential run.

use alloc::vec::Vec;

use crate::bio::BLOCK_SIZE;
use crate::vec_map::VecMap;
use crate::{Error, ErrorKind, Result};

pub(crate) struct WriteBuffer {
    cap: usize,
    lbas: Vec<u64>,
    data: Vec<u8>,
    slot: VecMap<u64, usize>,
}

fn range(i: usize) -> core::ops::Range<usize> {
    i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE
}

impl WriteBuffer {
    pub(crate) fn new(cap: usize) -> Result<Self> {
        let mut data = Vec::new();
        data.try_reserve_exact(cap.checked_mul(BLOCK_SIZE).ok_or(Error::oom())?)?;
        let mut lbas = Vec::new();
        lbas.try_reserve_exact(cap)?;
        // The slot map is bounded by `cap` too: reserved now, an insert
        // never allocates.
        let mut slot = VecMap::new();
        slot.try_reserve(cap)?;
        Ok(Self {
            cap,
            lbas,
            data,
            slot,
        })
    }

    /// Bytes held (data, LBAs and the slot map's entries, roughly).
    pub(crate) fn mem_bytes(&self) -> usize {
        self.data.capacity() + self.lbas.capacity() * 8 + self.slot.len() * 48
    }

    /// Blocks the buffer holds at most.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    pub(crate) fn len(&self) -> usize {
        self.lbas.len()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.lbas.len() >= self.cap
    }

    pub(crate) fn contains(&self, lba: u64) -> bool {
        self.slot.contains_key(&lba)
    }

    pub(crate) fn get(&self, lba: u64) -> Option<&[u8]> {
        let i = *self.slot.get(&lba)?;
        self.data.get(range(i))
    }

    /// Stores a block; the caller made room first unless `lba` is present.
    pub(crate) fn put(&mut self, lba: u64, block: &[u8]) -> Result<()> {
        if let Some(&i) = self.slot.get(&lba) {
            self.data
                .get_mut(range(i))
                .ok_or(Error::new(ErrorKind::InvalidState, "write buffer slot"))?
                .copy_from_slice(block);
            return Ok(());
        }
        if self.is_full() {
            return Err(Error::new(ErrorKind::InvalidState, "write buffer full"));
        }
        self.slot.insert(lba, self.lbas.len())?;
        self.lbas.push(lba);
        self.data.extend_from_slice(block);
        Ok(())
    }

    /// Drops the buffered version of `lba`, if any.
    pub(crate) fn remove(&mut self, lba: u64) -> Result<bool> {
        let Some(i) = self.slot.remove(&lba) else {
            return Ok(false);
        };
        let last = self.lbas.len() - 1;
        if i != last {
            self.data.copy_within(range(last), i * BLOCK_SIZE);
            let moved = *self
                .lbas
                .get(last)
                .ok_or(Error::new(ErrorKind::InvalidState, "write buffer"))?;
            if let Some(l) = self.lbas.get_mut(i) {
                *l = moved;
            }
            // `moved` is held: this replaces its slot, no allocation.
            self.slot.insert(moved, i)?;
        }
        self.lbas.pop();
        self.data.truncate(last * BLOCK_SIZE);
        Ok(true)
    }

    /// The buffered LBAs and block data (in the same order), for the
    /// flush, which seals them elsewhere: the buffer stays intact until
    /// it is cleared.
    pub(crate) fn parts(&self) -> (&[u64], &[u8]) {
        (&self.lbas, &self.data)
    }

    /// Keeps the first `keep` slots and drops the others (after a flush
    /// of the buffer's tail).
    pub(crate) fn truncate(&mut self, keep: usize) {
        if keep >= self.lbas.len() {
            return;
        }
        // One pass over the slot map, not a removal (and a shift of the
        // map's tail) per dropped LBA; a whole flush empties it.
        if keep == 0 {
            self.slot.clear();
        } else {
            self.slot.retain(|_, i| *i < keep);
        }
        self.lbas.truncate(keep);
        self.data.truncate(keep * BLOCK_SIZE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_keeps_the_first_slots() {
        let mut w = WriteBuffer::new(4).unwrap();
        for (i, l) in [9u64, 3, 7, 5].iter().enumerate() {
            w.put(*l, &[i as u8; BLOCK_SIZE]).unwrap();
        }
        w.truncate(2);
        assert_eq!(w.len(), 2);
        assert_eq!(w.parts().0, &[9, 3]);
        assert!(w.contains(3) && !w.contains(7) && !w.contains(5));
        assert_eq!(w.get(3).unwrap(), &[1; BLOCK_SIZE]);
        // The dropped slots are free again.
        w.put(7, &[8; BLOCK_SIZE]).unwrap();
        assert_eq!(w.get(7).unwrap(), &[8; BLOCK_SIZE]);
        w.truncate(5);
        assert_eq!(w.len(), 3);
        w.truncate(0);
        assert_eq!(w.len(), 0);
        assert!(!w.contains(9));
    }

    #[test]
    fn put_overwrite_remove() {
        let mut w = WriteBuffer::new(3).unwrap();
        w.put(5, &[1; BLOCK_SIZE]).unwrap();
        w.put(6, &[2; BLOCK_SIZE]).unwrap();
        w.put(7, &[3; BLOCK_SIZE]).unwrap();
        assert!(w.is_full());
        w.put(5, &[4; BLOCK_SIZE]).unwrap();
        assert!(w.put(8, &[0; BLOCK_SIZE]).is_err());
        assert!(w.remove(5).unwrap());
        assert!(!w.remove(5).unwrap());
        assert_eq!(w.get(7).unwrap()[0], 3);
        assert_eq!(w.get(6).unwrap()[0], 2);
        assert_eq!(w.len(), 2);
        let (l, d) = w.parts();
        assert_eq!(l, &[7, 6]);
        assert_eq!(d.len(), 2 * BLOCK_SIZE);
    }
}
