//! A [`Parallel`] runner on a persistent thread pool (rayon's), for the
//! userspace tools, and a [`Spawn`] runner on a persistent thread
//! ([`PoolSpawn`], for background device writes): the engine's jobs (sealing a write buffer's parts,
//! fetching a long read's parts) run on threads that already exist, as the
//! kernel module's run on its workqueue, instead of threads spawned for
//! each call ([`mlsdisk_core::platform::StdParallel`]).
//!
//! One caller at a time has the pool: a call made while another one runs
//! its jobs runs its own on its own thread. Many callers at once (16
//! readers, say) are parallel already, and queueing all their jobs for
//! the pool's few threads made reads at queue depth 16 slower, not faster
//! (measured: see `mlsdisk-bench --threads`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use mlsdisk_core::platform::{Job, OwnedJob, Parallel, Pending, Spawn};

/// Readers of a `FileDisk`'s scattered reads (`FileDisk::set_readers`):
/// as many as the file reads at once without them.
pub const FILE_READERS: usize = 8;

/// Runs jobs on a pool of `width` worker threads and the caller's.
pub struct PoolParallel {
    pool: rayon::ThreadPool,
    width: usize,
    /// A call is running jobs on the pool.
    busy: AtomicBool,
}

impl PoolParallel {
    /// A runner `width` jobs wide (at least one).
    pub fn new(width: usize) -> mlsdisk_core::Result<Self> {
        let width = width.max(1);
        let pool = threads(width, "mlsdisk-par")?;
        Ok(Self {
            pool,
            width,
            busy: AtomicBool::new(false),
        })
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
        if rest.is_empty() || self.busy.swap(true, Ordering::Acquire) {
            // One job, or the pool is another caller's: all on this thread.
            first();
            for job in rest.iter_mut() {
                job();
            }
            return;
        }
        // The caller runs the first job itself while the pool takes the
        // others; `in_place_scope` returns when every one has returned.
        self.pool.in_place_scope(|s| {
            for job in rest.iter_mut() {
                s.spawn(move |_| job());
            }
            first();
        });
        self.busy.store(false, Ordering::Release);
    }
}

/// Runs owned jobs one after another on a persistent thread of its own
/// (a thread started per job, as `StdSpawn` does, costs a new stack per
/// flush).
pub struct PoolSpawn {
    pool: rayon::ThreadPool,
}

impl PoolSpawn {
    /// A runner with one worker thread.
    pub fn new() -> mlsdisk_core::Result<Self> {
        Ok(Self {
            pool: threads(1, "mlsdisk-write")?,
        })
    }
}

/// A rayon pool of `n` threads named `name-<i>`.
fn threads(n: usize, name: &'static str) -> mlsdisk_core::Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(move |i| format!("{name}-{i}"))
        .build()
        .map_err(|_| {
            mlsdisk_core::Error::new(
                mlsdisk_core::ErrorKind::OutOfMemory,
                "thread pool: cannot start its threads",
            )
        })
}

/// The result of a job on [`PoolSpawn`]'s thread, when it comes.
struct Sent(mpsc::Receiver<mlsdisk_core::Result<()>>);

impl Spawn for PoolSpawn {
    fn spawn(&self, job: OwnedJob) -> mlsdisk_core::Result<Box<dyn Pending>> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.pool.spawn(move || {
            // The call consumes the job: what it owned is dropped before
            // the result is sent.
            let r = job();
            let _ = tx.send(r);
        });
        Ok(Box::new(Sent(rx)))
    }
}

impl Pending for Sent {
    fn wait(self: Box<Self>) -> mlsdisk_core::Result<()> {
        self.0.recv().unwrap_or(Err(mlsdisk_core::Error::new(
            mlsdisk_core::ErrorKind::Io,
            "write thread: job lost",
        )))
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

    /// While one call's jobs hold the pool, another call runs its jobs on
    /// its own thread; once the first call is done, the pool is free again.
    #[test]
    fn a_second_caller_runs_its_jobs_itself_while_the_pool_is_busy() {
        let p = PoolParallel::new(2).unwrap();
        let release = AtomicUsize::new(0);
        let holding = AtomicUsize::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut hold = || {
                    holding.fetch_add(1, Ordering::SeqCst);
                    let t0 = Instant::now();
                    while release.load(Ordering::SeqCst) == 0
                        && t0.elapsed() < Duration::from_secs(10)
                    {
                        std::thread::yield_now();
                    }
                };
                let mut other = || {};
                p.run(&mut [&mut hold, &mut other]);
            });
            let t0 = Instant::now();
            while holding.load(Ordering::SeqCst) == 0 && t0.elapsed() < Duration::from_secs(10) {
                std::thread::yield_now();
            }
            let me = std::thread::current().id();
            let mut ids = Vec::new();
            let (mut a, mut b) = (None, None);
            let mut ja = || a = Some(std::thread::current().id());
            let mut jb = || b = Some(std::thread::current().id());
            p.run(&mut [&mut ja, &mut jb]);
            ids.extend([a, b]);
            release.store(1, Ordering::SeqCst);
            assert_eq!(ids, [Some(me), Some(me)], "the busy pool took the jobs");
        });
        // Free again: the two jobs of a call run on two threads.
        let (mut a, mut b) = (None, None);
        let mut ja = || a = Some(std::thread::current().id());
        let mut jb = || {
            std::thread::sleep(Duration::from_millis(20));
            b = Some(std::thread::current().id());
        };
        p.run(&mut [&mut ja, &mut jb]);
        assert!(a.is_some() && b.is_some() && a != b, "{a:?} {b:?}");
    }

    /// A spawned job runs on the pool's thread, not the caller's, while
    /// the caller goes on; its result (and an error) comes back at `wait`,
    /// after the job dropped what it owned.
    #[test]
    fn a_spawned_job_runs_on_the_write_thread_and_its_result_comes_back() {
        let p = PoolSpawn::new().unwrap();
        let owned = std::sync::Arc::new(());
        let held = owned.clone();
        let go = std::sync::Arc::new(AtomicUsize::new(0));
        let seen = go.clone();
        let me = std::thread::current().id();
        let (tx, rx) = mpsc::channel();
        let pending = p
            .spawn(Box::new(move || {
                let t0 = Instant::now();
                while seen.load(Ordering::SeqCst) == 0 && t0.elapsed() < Duration::from_secs(10) {
                    std::thread::yield_now();
                }
                let _keep = &held;
                let _ = tx.send(std::thread::current().id());
                Err(mlsdisk_core::Error::new(
                    mlsdisk_core::ErrorKind::Io,
                    "device",
                ))
            }))
            .unwrap();
        // The caller was not held up by the job, which waits for it.
        go.store(1, Ordering::SeqCst);
        let e = pending.wait().unwrap_err();
        assert_eq!(e.kind(), mlsdisk_core::ErrorKind::Io);
        assert_ne!(rx.recv().unwrap(), me);
        assert_eq!(std::sync::Arc::strong_count(&owned), 1);
        assert!(p.spawn(Box::new(|| Ok(()))).unwrap().wait().is_ok());
    }
}
