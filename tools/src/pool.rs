//! A [`Parallel`] runner on a persistent thread pool (rayon's), for the
//! userspace tools: the engine's jobs (sealing a write buffer's parts,
//! fetching a long read's parts) run on threads that already exist, as the
//! kernel module's run on its workqueue, instead of threads spawned for
//! each call ([`mlsdisk_core::platform::StdParallel`]).

use mlsdisk_core::platform::{Job, Parallel};

/// Runs jobs on a pool of `width - 1` worker threads plus the caller's.
pub struct PoolParallel {
    pool: rayon::ThreadPool,
    width: usize,
}

impl PoolParallel {
    /// A runner `width` jobs wide (at least one).
    pub fn new(width: usize) -> mlsdisk_core::Result<Self> {
        let width = width.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(width)
            .thread_name(|i| format!("mlsdisk-par-{i}"))
            .build()
            .map_err(|_| {
                mlsdisk_core::Error::new(
                    mlsdisk_core::ErrorKind::OutOfMemory,
                    "thread pool: cannot start its threads",
                )
            })?;
        Ok(Self { pool, width })
    }
}

impl Parallel for PoolParallel {
    fn width(&self) -> usize {
        self.width
    }

    fn run(&self, jobs: &mut [Job<'_>]) {
        let Some((first, rest)) = jobs.split_first_mut() else {
            return;
        };
        // The caller runs the first job itself while the pool takes the
        // others; `in_place_scope` returns when every one has returned.
        self.pool.in_place_scope(|s| {
            for job in rest.iter_mut() {
                s.spawn(move |_| job());
            }
            first();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    /// Three jobs on a pool three wide: each waits until all three have
    /// started (so they ran at once, not in turn) and bumps its own slot.
    #[test]
    fn runs_its_jobs_at_once_each_exactly_once() {
        let p = PoolParallel::new(3).unwrap();
        assert_eq!(p.width(), 3);
        let started = AtomicUsize::new(0);
        let mut slots = [0u32; 3];
        let mut closures: Vec<_> = slots
            .iter_mut()
            .map(|slot| {
                let started = &started;
                move || {
                    started.fetch_add(1, Ordering::SeqCst);
                    let t0 = Instant::now();
                    while started.load(Ordering::SeqCst) < 3
                        && t0.elapsed() < Duration::from_secs(10)
                    {
                        std::thread::yield_now();
                    }
                    *slot += u32::from(started.load(Ordering::SeqCst) == 3);
                }
            })
            .collect();
        let mut jobs: Vec<Job<'_>> = Vec::new();
        for c in closures.iter_mut() {
            jobs.push(c);
        }
        p.run(&mut jobs);
        drop(jobs);
        drop(closures);
        assert_eq!(slots, [1, 1, 1], "the jobs did not all run at once");
        // No jobs, and one job: nothing to hand out.
        p.run(&mut []);
        let mut ran = false;
        let mut one = || ran = true;
        p.run(&mut [&mut one]);
        assert!(ran);
    }
}
