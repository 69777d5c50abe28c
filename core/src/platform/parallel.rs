//! Running borrowed jobs on several CPUs at once.
//!
//! The engine's bulk crypto (sealing a write buffer's blocks before they go
//! to the data log) splits into independent jobs. A [`Parallel`] runner
//! takes a slice of jobs that borrow the caller's buffers, runs each
//! exactly once, possibly several at a time on different CPUs, and returns
//! only when every job has returned, so the borrows end before the call
//! does (a scoped fork-join).
//!
//! - [`Serial`] runs them one after another on the calling thread (the
//!   default; what a platform without workers gets).
//! - [`StdParallel`] (feature `std`) runs them on scoped threads.
//! - The kernel module queues each job as a work item on an unbound
//!   workqueue and waits on a completion; it needs `unsafe` to hand the
//!   borrowed closures to the workers, justified by that wait (see
//!   `linux/`).
//!
//! Jobs must not panic (the engine's never do) and report failures through
//! what they borrow; a runner reports none of its own.

/// One job: called exactly once by [`Parallel::run`].
pub type Job<'a> = &'a mut (dyn FnMut() + Send);

/// A fork-join runner. See the module documentation.
pub trait Parallel: Send + Sync {
    /// How many jobs are worth running at once (the CPUs it may use).
    fn width(&self) -> usize;
    /// Runs every job of `jobs` exactly once, possibly concurrently, and
    /// returns when all of them have returned.
    fn run(&self, jobs: &mut [Job<'_>]);
}

/// Runs each closure of `closures` exactly once through `p` and returns
/// when all of them have returned. `OutOfMemory`, before any ran, if the
/// list of jobs cannot be allocated.
pub(crate) fn run_each<F: FnMut() + Send>(
    p: &dyn Parallel,
    closures: &mut [F],
) -> crate::Result<()> {
    let mut jobs: alloc::vec::Vec<Job<'_>> = alloc::vec::Vec::new();
    jobs.try_reserve_exact(closures.len())?;
    for c in closures.iter_mut() {
        jobs.push(c);
    }
    p.run(&mut jobs);
    Ok(())
}

/// Runs the jobs one after another on the caller's thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct Serial;

impl Parallel for Serial {
    fn width(&self) -> usize {
        1
    }
    fn run(&self, jobs: &mut [Job<'_>]) {
        for job in jobs.iter_mut() {
            job();
        }
    }
}

/// Runs jobs on `width` scoped threads (the caller's thread is one).
#[cfg(feature = "std")]
#[derive(Clone, Copy, Debug)]
pub struct StdParallel {
    width: usize,
}

#[cfg(feature = "std")]
impl StdParallel {
    /// A runner for `width` threads at once (at least one).
    pub fn new(width: usize) -> Self {
        Self {
            width: width.max(1),
        }
    }

    /// A runner as wide as the machine's available parallelism.
    pub fn available() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

#[cfg(feature = "std")]
impl Parallel for StdParallel {
    fn width(&self) -> usize {
        self.width
    }
    fn run(&self, jobs: &mut [Job<'_>]) {
        let per = jobs.len().div_ceil(self.width).max(1);
        std::thread::scope(|s| {
            let mut groups = jobs.chunks_mut(per);
            // The caller's thread takes the first group itself.
            let first = groups.next();
            for group in groups {
                s.spawn(move || {
                    for job in group.iter_mut() {
                        job();
                    }
                });
            }
            if let Some(group) = first {
                for job in group.iter_mut() {
                    job();
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::vec::Vec;

    fn runs_every_job_once(p: &dyn Parallel) {
        let mut outs = [0u32; 13];
        let calls = AtomicUsize::new(0);
        {
            let mut closures: Vec<_> = outs
                .iter_mut()
                .enumerate()
                .map(|(i, o)| {
                    let calls = &calls;
                    move || {
                        *o += i as u32 + 1;
                        calls.fetch_add(1, Ordering::SeqCst);
                    }
                })
                .collect();
            let mut jobs: Vec<Job<'_>> = closures
                .iter_mut()
                .map(|c| c as &mut (dyn FnMut() + Send))
                .collect();
            p.run(&mut jobs);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 13);
        for (i, o) in outs.iter().enumerate() {
            assert_eq!(*o, i as u32 + 1);
        }
    }

    #[test]
    fn serial_runs_every_job_once() {
        runs_every_job_once(&Serial);
    }

    #[test]
    fn std_parallel_runs_every_job_once_on_several_threads() {
        for w in [1, 2, 3, 8, 20] {
            runs_every_job_once(&StdParallel::new(w));
        }
        // Two jobs that each wait for the other prove they ran at once.
        let flags = [AtomicUsize::new(0), AtomicUsize::new(0)];
        let wait_for = |me: usize| {
            let f = &flags;
            move || {
                f[me].store(1, Ordering::SeqCst);
                let t0 = std::time::Instant::now();
                while f[1 - me].load(Ordering::SeqCst) == 0 {
                    assert!(t0.elapsed().as_secs() < 10, "jobs did not run concurrently");
                    std::thread::yield_now();
                }
            }
        };
        let (mut a, mut b) = (wait_for(0), wait_for(1));
        let mut jobs: [Job<'_>; 2] = [&mut a, &mut b];
        StdParallel::new(2).run(&mut jobs);
    }
}
