//! A disk in a file (userspace).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use std::sync::Arc;

use super::{check_range, is_page_aligned, AlignedBuf, BlockSet, BLOCK_SIZE};
use crate::platform::Parallel;
use crate::{Error, ErrorKind, Result};

/// `O_DIRECT` of Linux, which differs between architectures (the crate has
/// no `libc` dependency).
#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "x86")))]
const O_DIRECT: Option<i32> = Some(0o40000);
#[cfg(all(target_os = "linux", any(target_arch = "aarch64", target_arch = "arm")))]
const O_DIRECT: Option<i32> = Some(0o200000);
#[cfg(not(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm"
    )
)))]
const O_DIRECT: Option<i32> = None;

/// A [`BlockSet`] over a regular file or a block device node.
///
/// `flush` is `fdatasync`. With `direct`, the file is opened with `O_DIRECT`
/// (bypassing the page cache); a caller's buffer that is page-aligned
/// (an [`AlignedBuf`](super::AlignedBuf), as the engine's segment buffers
/// are) goes to the file as it is, any other through a page-aligned bounce
/// buffer. Each thread keeps its bounce buffer between requests (up to
/// 256 KiB), so a small request neither allocates nor zeroes one. The
/// engine's large requests (segments, the index's drained writes and merge
/// reads) use aligned buffers and never bounce; the per-thread limit keeps
/// sixteen request threads within 4 MiB of bounce memory (with a 4 MiB
/// limit, unaligned index writes left 2-4 MiB on every bench thread).
///
/// A scattered read ([`BlockSet::read_ranges`]) of several ranges reads
/// them at once: on the runner given to [`FileDisk::set_readers`] (threads
/// that persist between calls), else on threads started for the call.
pub struct FileDisk {
    file: File,
    nblocks: u64,
    direct: bool,
    readers: Option<Arc<dyn Parallel>>,
}

impl core::fmt::Debug for FileDisk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FileDisk")
            .field("file", &self.file)
            .field("nblocks", &self.nblocks)
            .field("direct", &self.direct)
            .field("readers", &self.readers.as_ref().map(|r| r.width()))
            .finish()
    }
}

fn io(msg: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |_| Error::new(ErrorKind::Io, msg)
}

impl FileDisk {
    /// Creates (or truncates) the file at `path` with `nblocks` zero blocks.
    pub fn create(path: &Path, nblocks: u64, direct: bool) -> Result<Self> {
        let bytes = nblocks
            .checked_mul(BLOCK_SIZE as u64)
            .ok_or(Error::new(ErrorKind::InvalidArgument, "disk too large"))?;
        let file = Self::options(direct)?
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io("cannot create the disk file"))?;
        file.set_len(bytes)
            .map_err(io("cannot set the disk file's size"))?;
        Ok(Self {
            file,
            nblocks,
            direct,
            readers: None,
        })
    }

    /// Opens an existing file or device; its size (rounded down to whole
    /// blocks) is the disk's size.
    pub fn open(path: &Path, direct: bool) -> Result<Self> {
        let mut file = Self::options(direct)?
            .open(path)
            .map_err(io("cannot open the disk file"))?;
        // A block device reports size 0 in its metadata: seek to the end.
        let bytes = std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0))
            .map_err(io("cannot size the disk file"))?;
        Ok(Self {
            file,
            nblocks: bytes / BLOCK_SIZE as u64,
            direct,
            readers: None,
        })
    }

    fn options(direct: bool) -> Result<OpenOptions> {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        if direct {
            let flag = O_DIRECT.ok_or(Error::new(
                ErrorKind::Unsupported,
                "O_DIRECT is not known on this platform",
            ))?;
            o.custom_flags(flag);
        }
        Ok(o)
    }

    /// Reads the ranges of a scattered read on `readers` (up to
    /// [`PARALLEL_READS`] jobs, as wide as the runner is), instead of on
    /// threads started for each call. On this project's test machine (a
    /// VM) starting and joining 7 threads cost 0.41 ms idle and 3.5 ms
    /// under load: as much as a 1 MiB read, or more.
    pub fn set_readers(&mut self, readers: Arc<dyn Parallel>) {
        self.readers = Some(readers);
    }

    /// Whether the file was opened with `O_DIRECT`.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    fn offset(pos: u64) -> Result<u64> {
        pos.checked_mul(BLOCK_SIZE as u64)
            .ok_or(Error::new(ErrorKind::InvalidArgument, "offset overflow"))
    }
}

/// The largest bounce buffer a thread keeps between requests; a larger
/// request gets a buffer of its own, freed when it is done.
const BOUNCE_KEEP: usize = 256 << 10;

std::thread_local! {
    static BOUNCE: core::cell::RefCell<AlignedBuf> = const { core::cell::RefCell::new(AlignedBuf::new()) };
}

/// Runs `f` on an aligned buffer of `len` bytes: this thread's bounce
/// buffer, or a buffer of its own when that one is busy (never, as `f`
/// does not recurse) or `len` is above [`BOUNCE_KEEP`].
fn with_bounce<T>(len: usize, f: impl FnOnce(&mut [u8]) -> Result<T>) -> Result<T> {
    let mut f = Some(f);
    if len <= BOUNCE_KEEP {
        let kept = BOUNCE.with(|b| {
            let mut b = b.try_borrow_mut().ok()?;
            let f = f.take()?;
            Some(b.resize(len).and_then(|()| f(b.as_mut_slice())))
        });
        if let Some(r) = kept {
            return r;
        }
    }
    let f = f.ok_or(Error::new(ErrorKind::InvalidState, "bounce buffer"))?;
    let mut own = AlignedBuf::zeroed(len)?;
    f(own.as_mut_slice())
}

/// [`FileDisk::read_ranges`] reads this many ranges or more on threads.
const PARALLEL_MIN: usize = 3;
/// At most this many threads read one [`FileDisk::read_ranges`] call.
const PARALLEL_READS: usize = 8;

fn read_each(d: &FileDisk, ranges: &mut [(u64, &mut [u8])]) -> Result<()> {
    for (pos, buf) in ranges.iter_mut() {
        d.read(*pos, buf)?;
    }
    Ok(())
}

impl BlockSet for FileDisk {
    fn read(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self.nblocks, pos, buf.len())?;
        let off = Self::offset(pos)?;
        if self.direct && !is_page_aligned(buf) {
            with_bounce(buf.len(), |aligned| {
                self.file
                    .read_exact_at(aligned, off)
                    .map_err(io("disk file read failed"))?;
                buf.copy_from_slice(aligned);
                Ok(())
            })
        } else {
            self.file
                .read_exact_at(buf, off)
                .map_err(io("disk file read failed"))
        }
    }

    fn write(&self, pos: u64, buf: &[u8]) -> Result<()> {
        check_range(self.nblocks, pos, buf.len())?;
        let off = Self::offset(pos)?;
        if self.direct && !is_page_aligned(buf) {
            with_bounce(buf.len(), |aligned| {
                aligned.copy_from_slice(buf);
                self.file
                    .write_all_at(aligned, off)
                    .map_err(io("disk file write failed"))
            })
        } else {
            self.file
                .write_all_at(buf, off)
                .map_err(io("disk file write failed"))
        }
    }

    /// Reads up to [`PARALLEL_READS`] ranges at once, the caller's thread
    /// among the readers, which take the ranges from a shared queue (a
    /// file has no asynchronous interface without a new dependency): on
    /// the runner of [`FileDisk::set_readers`], else on scoped threads
    /// started for the call. Fewer than [`PARALLEL_MIN`] ranges are read in
    /// turn on the caller's thread; so is everything when no thread can be
    /// started.
    fn read_ranges(&self, ranges: &mut [(u64, &mut [u8])]) -> Result<()> {
        for (pos, buf) in ranges.iter() {
            check_range(self.nblocks, *pos, buf.len())?;
        }
        if ranges.len() < PARALLEL_MIN {
            return read_each(self, ranges);
        }
        let readers = ranges.len().min(PARALLEL_READS);
        let queue = std::sync::Mutex::new(ranges.iter_mut());
        let work = || -> Result<()> {
            loop {
                let next = queue
                    .lock()
                    .map_err(|_| Error::new(ErrorKind::Io, "read queue poisoned"))?
                    .next();
                match next {
                    Some((pos, buf)) => self.read(*pos, buf)?,
                    None => return Ok(()),
                }
            }
        };
        if let Some(p) = self.readers.as_ref().filter(|p| p.width() > 1) {
            let n = readers.min(p.width());
            let mut results: std::vec::Vec<Result<()>> = std::vec::Vec::new();
            results.try_reserve_exact(n)?;
            results.resize_with(n, || Ok(()));
            let mut jobs = std::vec::Vec::new();
            jobs.try_reserve_exact(n)?;
            for r in results.iter_mut() {
                let work = &work;
                jobs.push(move || *r = work());
            }
            crate::platform::run_each(&**p, &mut jobs)?;
            drop(jobs);
            return results.into_iter().collect();
        }
        let helpers = readers - 1;
        std::thread::scope(|s| {
            // A thread that cannot be started is simply not there: the
            // others (at least the caller) drain the queue.
            let started: std::vec::Vec<_> = (0..helpers)
                .filter_map(|_| std::thread::Builder::new().spawn_scoped(s, work).ok())
                .collect();
            let mut r = work();
            for h in started {
                let x = h
                    .join()
                    .unwrap_or(Err(Error::new(ErrorKind::Io, "read thread failed")));
                if r.is_ok() {
                    r = x;
                }
            }
            r
        })
    }

    fn flush(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(io("disk file fdatasync failed"))
    }

    fn nblocks(&self) -> u64 {
        self.nblocks
    }
}
