//! The userspace [`SyncPlatform`]: `std::sync` locks and condition
//! variables, one `std::thread` per background job.

use std::sync::PoisonError;

use super::sync::{Condvar, LockClass, Mutex, MutexGuard, SyncPlatform};
use crate::{Error, ErrorKind, Result};

/// Locks, condition variables and workers from `std`.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdSync;

/// A `std::sync::Mutex` behind the [`Mutex`] trait.
#[derive(Debug, Default)]
pub struct StdMutex<T>(std::sync::Mutex<T>);

impl<T: Send> Mutex<T> for StdMutex<T> {
    type Guard<'a>
        = std::sync::MutexGuard<'a, T>
    where
        Self: 'a;

    fn new(value: T, _class: LockClass) -> Result<Self> {
        Ok(Self(std::sync::Mutex::new(value)))
    }

    fn lock(&self) -> Self::Guard<'_> {
        // A panicking test thread poisons the lock; the engine's state is
        // still consistent (it never panics itself), so take it anyway.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A `std::sync::Condvar` behind the [`Condvar`] trait.
#[derive(Debug, Default)]
pub struct StdCondvar(std::sync::Condvar);

impl Condvar<StdSync> for StdCondvar {
    fn new(_class: LockClass) -> Result<Self> {
        Ok(Self(std::sync::Condvar::new()))
    }

    fn wait<'a, T: Send>(&self, guard: MutexGuard<'a, StdSync, T>) -> MutexGuard<'a, StdSync, T>
    where
        StdMutex<T>: 'a,
    {
        self.0.wait(guard).unwrap_or_else(PoisonError::into_inner)
    }

    fn notify_one(&self) {
        self.0.notify_one();
    }

    fn notify_all(&self) {
        self.0.notify_all();
    }
}

impl SyncPlatform for StdSync {
    type Mutex<T: Send> = StdMutex<T>;
    type Condvar = StdCondvar;

    fn spawn<F>(&self, job: F) -> Result<()>
    where
        F: FnOnce() + Send + 'static,
    {
        std::thread::Builder::new()
            .name("mlsdisk-worker".into())
            .spawn(job)
            .map(|_| ())
            .map_err(|_| Error::new(ErrorKind::OutOfMemory, "cannot start a worker thread"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::{PageBuf, Task, PAGE_SIZE};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use std::vec::Vec;

    type M<T> = <StdSync as SyncPlatform>::Mutex<T>;
    type C = <StdSync as SyncPlatform>::Condvar;

    /// Four threads each add 1 many times under the lock, with a read and a
    /// write separated by a yield: without mutual exclusion updates get lost.
    #[test]
    fn lock_excludes_across_threads() {
        let m = Arc::new(M::<u64>::new(0, LockClass::Other).unwrap());
        let inside = Arc::new(AtomicUsize::new(0));
        let mut hs = Vec::new();
        for _ in 0..4 {
            let (m, inside) = (m.clone(), inside.clone());
            hs.push(std::thread::spawn(move || {
                for _ in 0..500 {
                    let mut g = m.lock();
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                    let v = *g;
                    std::thread::yield_now();
                    *g = v + 1;
                    inside.fetch_sub(1, Ordering::SeqCst);
                }
            }));
        }
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(*m.lock(), 2000);
    }

    /// A waiter sleeps until another thread sets the flag and notifies; it
    /// must not see the flag unset after waking for the last time.
    #[test]
    fn condvar_wakes_waiter() {
        let pair = Arc::new((
            M::<bool>::new(false, LockClass::Other).unwrap(),
            C::new(LockClass::Other).unwrap(),
        ));
        let woke = Arc::new(AtomicBool::new(false));
        let (p2, w2) = (pair.clone(), woke.clone());
        let waiter = std::thread::spawn(move || {
            let (m, cv) = &*p2;
            let mut g = m.lock();
            while !*g {
                g = cv.wait(g);
            }
            w2.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !woke.load(Ordering::SeqCst),
            "waiter returned before notify"
        );
        {
            let (m, cv) = &*pair;
            *m.lock() = true;
            cv.notify_all();
        }
        waiter.join().unwrap();
        assert!(woke.load(Ordering::SeqCst));
    }

    #[test]
    fn worker_runs_job_and_task_returns_result() {
        let ran = Arc::new(AtomicBool::new(false));
        let r2 = ran.clone();
        let main = std::thread::current().id();
        let t = Task::spawn(&StdSync, move || {
            r2.store(true, Ordering::SeqCst);
            (std::thread::current().id() != main, 41 + 1)
        })
        .unwrap();
        let (other_thread, v) = t.join().unwrap();
        assert!(other_thread, "job ran on the caller's thread");
        assert_eq!(v, 42);
        assert!(ran.load(Ordering::SeqCst));

        // Plain spawn: the job runs without anyone joining it.
        let flag = Arc::new((
            M::<u32>::new(0, LockClass::Other).unwrap(),
            C::new(LockClass::Other).unwrap(),
        ));
        let f2 = flag.clone();
        StdSync
            .spawn(move || {
                *f2.0.lock() = 7;
                f2.1.notify_all();
            })
            .unwrap();
        let mut g = flag.0.lock();
        while *g == 0 {
            g = flag.1.wait(g);
        }
        assert_eq!(*g, 7);
    }

    /// A job that panics still completes its task, with an error.
    #[test]
    fn panicking_job_gives_error_not_hang() {
        let t = Task::<StdSync, u32>::spawn(&StdSync, || panic!("test job panics")).unwrap();
        let e = t.join().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidState);
    }

    #[test]
    fn page_buf_is_page_aligned() {
        for n in [1usize, 2, 3, 5, 17, 64] {
            // Interleave small allocations so the allocator's cursor moves.
            let _noise = vec![0u8; 24 * n];
            let mut b = PageBuf::new(n).unwrap();
            assert_eq!(b.len(), n * PAGE_SIZE);
            assert_eq!(b.npages(), n);
            assert_eq!(b.as_ptr() as usize % PAGE_SIZE, 0, "{n} pages misaligned");
            assert!(b.iter().all(|&x| x == 0));
            b[PAGE_SIZE * n - 1] = 9;
            assert_eq!(b.page(n - 1).unwrap()[PAGE_SIZE - 1], 9);
            assert!(b.page(n).is_none());
        }
        assert_eq!(PageBuf::new(0).unwrap().len(), 0);
        assert!(PageBuf::new(usize::MAX).is_err());
    }
}
