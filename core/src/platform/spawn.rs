//! Running one owned job on another thread and waiting for it later.
//!
//! Where [`super::Parallel`] runs borrowed jobs and returns when all of
//! them are done (fork-join), a [`Spawn`] runner takes a job that owns what
//! it needs, starts it, and returns at once with a [`Pending`] handle; the
//! caller waits for the job's result when it needs it, possibly much later
//! and from a different call. The engine uses it for the device write of a
//! flushed write buffer, so the next requests buffer while the previous
//! buffer is on its way to the device (see `disk::async_write`).
//!
//! - [`StdSpawn`] (feature `std`) runs each job on a thread of its own.
//! - A platform without workers simply gives the engine no runner: the
//!   engine then writes on the caller's thread, as before.
//!
//! Jobs must not panic (the engine's never do); a job's failure is its
//! `Err`, handed to whoever waits for it.

use alloc::boxed::Box;

use crate::Result;

/// A job that owns everything it touches, run once by a [`Spawn`] runner.
pub type OwnedJob = Box<dyn FnOnce() -> Result<()> + Send>;

/// Starts owned jobs on other threads. See the module documentation.
pub trait Spawn: Send + Sync {
    /// Starts `job` and returns without waiting for it. An `Err` means the
    /// job was not started (and was dropped without running).
    fn spawn(&self, job: OwnedJob) -> Result<Box<dyn Pending>>;
}

/// A started job. Dropping it without waiting lets the job run to its end
/// unobserved.
pub trait Pending: Send {
    /// Waits until the job has returned (and dropped what it owned) and
    /// gives its result.
    fn wait(self: Box<Self>) -> Result<()>;
}

/// Runs each job on a new `std` thread.
#[cfg(feature = "std")]
#[derive(Clone, Copy, Debug, Default)]
pub struct StdSpawn;

#[cfg(feature = "std")]
struct StdPending(std::thread::JoinHandle<Result<()>>);

#[cfg(feature = "std")]
impl Spawn for StdSpawn {
    fn spawn(&self, job: OwnedJob) -> Result<Box<dyn Pending>> {
        let handle = std::thread::Builder::new()
            .name("mlsdisk-write".into())
            .spawn(job)
            .map_err(|_| {
                crate::Error::new(crate::ErrorKind::OutOfMemory, "cannot start a thread")
            })?;
        Ok(Box::new(StdPending(handle)))
    }
}

#[cfg(feature = "std")]
impl Pending for StdPending {
    fn wait(self: Box<Self>) -> Result<()> {
        // The engine's jobs never panic; a panic is reported as an I/O
        // error rather than passed on.
        self.0.join().unwrap_or(Err(crate::Error::new(
            crate::ErrorKind::Io,
            "background write panicked",
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::sync::Arc;
    use core::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn a_spawned_job_runs_once_and_its_result_comes_back() {
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let p = StdSpawn
            .spawn(Box::new(move || {
                assert!(!r.swap(true, Ordering::SeqCst));
                Err(crate::Error::new(crate::ErrorKind::Io, "device"))
            }))
            .unwrap();
        let e = p.wait().unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Io);
        assert!(ran.load(Ordering::SeqCst));
        let ok = StdSpawn.spawn(Box::new(|| Ok(()))).unwrap();
        assert!(ok.wait().is_ok());
    }
}
