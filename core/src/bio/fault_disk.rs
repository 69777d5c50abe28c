//! A test device that fails chosen I/Os.

use std::sync::{Mutex, MutexGuard};

use super::BlockSet;
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
    failed: u64,
}

/// A device that passes I/O through to `inner` but fails chosen reads,
/// writes or flushes with [`ErrorKind::Io`] (a failed write writes nothing).
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
        self.inner.write(pos, buf)
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
    use crate::bio::{MemDisk, BLOCK_SIZE};

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
}
