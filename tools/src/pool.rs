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

    #[test]
    fn runs_every_job_exactly_once_and_borrows_end_with_the_call() {
        let p = PoolParallel::new(3).unwrap();
        for n in [0usize, 1, 2, 7] {
            let mut outs = vec![0u64; n];
            let calls = AtomicUsize::new(0);
            let mut closures: Vec<_> = outs
                .iter_mut()
                .enumerate()
                .map(|(i, o)| {
                    let calls = &calls;
                    move || {
                        *o += i as u64 + 1;
                        calls.fetch_add(1, Ordering::SeqCst);
                    }
                })
                .collect();
            let mut jobs: Vec<Job<'_>> = closures
                .iter_mut()
                .map(|c| c as &mut (dyn FnMut() + Send))
                .collect();
            p.run(&mut jobs);
            drop(jobs);
            drop(closures);
            assert_eq!(calls.load(Ordering::SeqCst), n);
            let want: Vec<u64> = (1..=n as u64).collect();
            assert_eq!(outs, want);
        }
        assert_eq!(p.width(), 3);
    }
}
