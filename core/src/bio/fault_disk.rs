//! A test device that fails chosen I/Os.

use std::sync::{Mutex, MutexGuard};

use super::{BlockSet, BLOCK_SIZE};
use crate::{Error, ErrorKind, Result};

/// Which I/O of a kind fails: the `nth` (0-based, counted from when the plan
/// was set), and with `sticky` every one after it too.
#[derive(Clone, Copy, Debug, Default)]
struct Plan {
    at: Option<u64>,
    sticky: bool,
    seen: u64,
}

impl Plan {
    fn hit(&mut self) -> bool {
        let n = self.seen;
        self.seen = self.seen.saturating_add(1);
        match self.at {
            Some(at) if n == at => true,
            Some(at) if self.sticky && n > at => true,
            _ => false,
        }
    }
}

#[derive(Debug, Default)]
struct Plans {
    read: Plan,
    write: Plan,
    flush: Plan,
    /// Writes that land in part (see [`FaultDisk::tear_nth`]).
    torn: Plan,
    /// Blocks of a torn write that land.
    torn_keep: u64,
    failed: u64,
}

/// A device that passes I/O through to `inner` but fails chosen reads,
/// writes or flushes with [`ErrorKind::Io`] (a failed write writes nothing),
/// or tears chosen writes (their first blocks land, then the write fails).
#[derive(Debug)]
pub struct FaultDisk<D> {
    inner: D,
    plans: Mutex<Plans>,
}

/// The kind of I/O a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    /// `BlockSet::read`.
    Read,
    /// `BlockSet::write`.
    Write,
    /// `BlockSet::flush`.
    Flush,
}

impl<D: BlockSet> FaultDisk<D> {
    /// Wraps `inner` with no faults planned.
    pub fn new(inner: D) -> Self {
        Self {
            inner,
            plans: Mutex::new(Plans::default()),
        }
    }

    /// The device underneath.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    fn lock(&self) -> Result<MutexGuard<'_, Plans>> {
        self.plans
            .lock()
            .map_err(|_| Error::new(ErrorKind::Io, "fault disk lock poisoned"))
    }

    /// Fails the `nth` call of `kind` from now on (0 = the next one); with
    /// `sticky`, every call of that kind after it fails as well.
    pub fn fail_nth(&self, kind: IoKind, nth: u64, sticky: bool) -> Result<()> {
        let mut p = self.lock()?;
        let plan = match kind {
            IoKind::Read => &mut p.read,
            IoKind::Write => &mut p.write,
            IoKind::Flush => &mut p.flush,
        };
        *plan = Plan {
            at: Some(nth),
            sticky,
            seen: 0,
        };
        Ok(())
    }

    /// Tears the `nth` write call from now on (0 = the next one): its first
    /// `keep` blocks reach `inner` (all of them if it has fewer), then it
    /// fails with [`ErrorKind::Io`]. Counted apart from [`Self::fail_nth`]'s
    /// writes; with `sticky`, every write after it is torn as well.
    pub fn tear_nth(&self, nth: u64, keep: u64, sticky: bool) -> Result<()> {
        let mut p = self.lock()?;
        p.torn = Plan {
            at: Some(nth),
            sticky,
            seen: 0,
        };
        p.torn_keep = keep;
        Ok(())
    }

    /// Removes every planned fault.
    pub fn heal(&self) -> Result<()> {
        let mut p = self.lock()?;
        let failed = p.failed;
        *p = Plans {
            failed,
            ..Plans::default()
        };
        Ok(())
    }

    /// How many I/Os were failed so far.
    pub fn failed_count(&self) -> u64 {
        self.lock().map(|p| p.failed).unwrap_or(0)
    }

    fn check(&self, kind: IoKind) -> Result<()> {
        let mut p = self.lock()?;
        let hit = match kind {
            IoKind::Read => p.read.hit(),
            IoKind::Write => p.write.hit(),
            IoKind::Flush => p.flush.hit(),
        };
        if hit {
            p.failed += 1;
            return Err(Error::new(ErrorKind::Io, "fault disk: injected I/O error"));
        }
        Ok(())
    }
}

impl<D: BlockSet> BlockSet for FaultDisk<D> {
    fn read(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        self.check(IoKind::Read)?;
        self.inner.read(pos, buf)
    }
    fn write(&self, pos: u64, buf: &[u8]) -> Result<()> {
        self.check(IoKind::Write)?;
        let keep = {
            let mut p = self.lock()?;
            if p.torn.hit() {
                p.failed += 1;
                Some(p.torn_keep)
            } else {
                None
            }
        };
        let Some(keep) = keep else {
            return self.inner.write(pos, buf);
        };
        let len = usize::try_from(keep)
            .ok()
            .and_then(|k| k.checked_mul(BLOCK_SIZE))
            .unwrap_or(usize::MAX)
            .min(buf.len() / BLOCK_SIZE * BLOCK_SIZE);
        if let Some(part) = buf.get(..len).filter(|p| !p.is_empty()) {
            self.inner.write(pos, part)?;
        }
        Err(Error::new(ErrorKind::Io, "fault disk: injected torn write"))
    }
    fn flush(&self) -> Result<()> {
        self.check(IoKind::Flush)?;
        self.inner.flush()
    }
    fn nblocks(&self) -> u64 {
        self.inner.nblocks()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bio::MemDisk;

    #[test]
    fn fails_exactly_the_nth() {
        let d = FaultDisk::new(MemDisk::new(2).unwrap());
        let b = vec![1u8; BLOCK_SIZE];
        d.fail_nth(IoKind::Write, 1, false).unwrap();
        d.write(0, &b).unwrap();
        assert_eq!(d.write(1, &b).unwrap_err().kind(), ErrorKind::Io);
        d.write(1, &b).unwrap();
        d.fail_nth(IoKind::Flush, 0, true).unwrap();
        assert!(d.flush().is_err());
        assert!(d.flush().is_err());
        d.heal().unwrap();
        d.flush().unwrap();
        let mut r = vec![0u8; BLOCK_SIZE];
        d.fail_nth(IoKind::Read, 0, false).unwrap();
        assert!(d.read(0, &mut r).is_err());
        d.read(0, &mut r).unwrap();
        assert_eq!(r, b);
        assert_eq!(d.failed_count(), 4);
    }

    #[test]
    fn torn_write_lands_its_first_blocks_then_fails() {
        let d = FaultDisk::new(MemDisk::new(4).unwrap());
        let mut three = vec![1u8; BLOCK_SIZE];
        three.extend_from_slice(&[2u8; BLOCK_SIZE]);
        three.extend_from_slice(&[3u8; BLOCK_SIZE]);
        d.tear_nth(1, 2, false).unwrap();
        d.write(3, &[9u8; BLOCK_SIZE]).unwrap();
        assert_eq!(d.write(0, &three).unwrap_err().kind(), ErrorKind::Io);
        let mut r = vec![0u8; 4 * BLOCK_SIZE];
        d.read(0, &mut r).unwrap();
        assert!(r[..BLOCK_SIZE].iter().all(|&x| x == 1));
        assert!(r[BLOCK_SIZE..2 * BLOCK_SIZE].iter().all(|&x| x == 2));
        assert!(r[2 * BLOCK_SIZE..3 * BLOCK_SIZE].iter().all(|&x| x == 0));
        assert!(r[3 * BLOCK_SIZE..].iter().all(|&x| x == 9));
        // A torn single-block write lands and still fails; the next is whole.
        d.tear_nth(0, 1, false).unwrap();
        assert!(d.write(2, &three[..BLOCK_SIZE]).is_err());
        d.write(1, &three[2 * BLOCK_SIZE..]).unwrap();
        d.read(0, &mut r).unwrap();
        assert!(r[2 * BLOCK_SIZE..3 * BLOCK_SIZE].iter().all(|&x| x == 1));
        assert!(r[BLOCK_SIZE..2 * BLOCK_SIZE].iter().all(|&x| x == 3));
        assert_eq!(d.failed_count(), 2);
    }
}
