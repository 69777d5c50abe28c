//! A `BlockSet` over a file: `pread`/`pwrite`, flush = `fdatasync`, and
//! optionally `O_DIRECT` (page cache bypassed; buffers bounced through a
//! 4 KiB-aligned scratch buffer when the caller's are not aligned).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;

use mlsdisk_core::bio::{check_range, BlockSet, BLOCK_SIZE};
use mlsdisk_core::{Error, ErrorKind, Result};

/// A file of `nblocks` blocks.
pub struct FileDev {
    file: File,
    nblocks: u64,
    direct: bool,
    bounce: Mutex<Vec<u8>>,
}

fn io(_: std::io::Error) -> Error {
    Error::new(ErrorKind::Io, "file I/O failed")
}

/// The offset into `v` where a 4 KiB-aligned region starts.
fn aligned_start(v: &[u8]) -> usize {
    let p = v.as_ptr() as usize;
    (BLOCK_SIZE - p % BLOCK_SIZE) % BLOCK_SIZE
}

impl FileDev {
    /// Creates (or truncates) `path` to `nblocks` blocks.
    pub fn create(path: &Path, nblocks: u64, direct: bool) -> Result<Self> {
        {
            let f = File::create(path).map_err(io)?;
            f.set_len(nblocks * BLOCK_SIZE as u64).map_err(io)?;
        }
        Self::open(path, direct)
    }

    /// Opens an existing file; its size gives the block count.
    pub fn open(path: &Path, direct: bool) -> Result<Self> {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        let file = o.open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        Ok(Self {
            file,
            nblocks: len / BLOCK_SIZE as u64,
            direct,
            bounce: Mutex::new(Vec::new()),
        })
    }

    fn with_bounce<T>(&self, len: usize, f: impl FnOnce(&mut [u8]) -> Result<T>) -> Result<T> {
        let mut g = self
            .bounce
            .lock()
            .map_err(|_| Error::new(ErrorKind::Io, "lock"))?;
        if g.len() < len + BLOCK_SIZE {
            g.resize(len + BLOCK_SIZE, 0);
        }
        let s = aligned_start(&g);
        f(&mut g[s..s + len])
    }
}

impl BlockSet for FileDev {
    fn read(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self.nblocks, pos, buf.len())?;
        let off = pos * BLOCK_SIZE as u64;
        if self.direct && aligned_start(buf) != 0 {
            return self.with_bounce(buf.len(), |b| {
                self.file.read_exact_at(b, off).map_err(io)?;
                buf.copy_from_slice(b);
                Ok(())
            });
        }
        self.file.read_exact_at(buf, off).map_err(io)
    }

    fn write(&self, pos: u64, buf: &[u8]) -> Result<()> {
        check_range(self.nblocks, pos, buf.len())?;
        let off = pos * BLOCK_SIZE as u64;
        if self.direct && aligned_start(buf) != 0 {
            return self.with_bounce(buf.len(), |b| {
                b.copy_from_slice(buf);
                self.file.write_all_at(b, off).map_err(io)
            });
        }
        self.file.write_all_at(buf, off).map_err(io)
    }

    fn flush(&self) -> Result<()> {
        self.file.sync_data().map_err(io)
    }

    fn nblocks(&self) -> u64 {
        self.nblocks
    }
}
