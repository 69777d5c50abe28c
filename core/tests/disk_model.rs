//! Model-based randomized test of the disk: random mixes of write, read,
//! sync, discard, crash and reopen over a tiny address space (so cleaning
//! and forced syncs happen constantly), checked against an in-memory model.
//!
//! The same runs on a disk with a parallel runner that runs each batch of
//! jobs in reverse order (a flush's index updates before its device
//! writes): the flush's two jobs must not depend on each other.
//!
//! After a crash the disk must open to the state of the last sync exactly,
//! unless the disk made a sync on its own since (space pressure; counted in
//! `forced_syncs`): then each block must hold its synced value or one of the
//! values written since.

mod disk_common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use disk_common::*;
use mlsdisk_core::bio::BLOCK_SIZE;
use mlsdisk_core::platform::{Spawn, StdSpawn};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Write { lba: u64, n: u64 },
    Read { lba: u64, n: u64 },
    Discard { lba: u64, n: u64 },
    Sync,
    Crash,
    Reopen,
}

fn op(cap: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0..cap, 1..6u64).prop_map(|(lba, n)| Op::Write { lba, n }),
        5 => (0..cap, 1..6u64).prop_map(|(lba, n)| Op::Read { lba, n }),
        2 => (0..cap, 1..8u64).prop_map(|(lba, n)| Op::Discard { lba, n }),
        2 => Just(Op::Sync),
        1 => Just(Op::Crash),
        1 => Just(Op::Reopen),
    ]
}

/// What each LBA holds: 0 = zeros (unmapped), otherwise a version tag.
#[derive(Default, Clone)]
struct Model {
    live: BTreeMap<u64, u64>,
    synced: BTreeMap<u64, u64>,
    /// Values written since the last sync, per LBA (0 for discards).
    since: BTreeMap<u64, BTreeSet<u64>>,
}

/// A runner two jobs wide that runs each batch in reverse order on the
/// calling thread, counting the batches of two jobs (with this test's
/// small write buffer, only a flush's device writes and index updates).
#[derive(Default)]
struct Reversed(AtomicU64);

impl mlsdisk_core::platform::Parallel for Reversed {
    fn width(&self) -> usize {
        2
    }
    fn run(&self, jobs: &mut [mlsdisk_core::platform::Job<'_>]) {
        if jobs.len() == 2 {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        for job in jobs.iter_mut().rev() {
            job();
        }
    }
}

fn run(ops: Vec<Op>, backend: Backend) -> Result<(), TestCaseError> {
    run_with(ops, backend, None, None)
}

fn run_with(
    ops: Vec<Op>,
    backend: Backend,
    runner: Option<Arc<Reversed>>,
    spawn: Option<Arc<dyn Spawn>>,
) -> Result<(), TestCaseError> {
    let mut h = Harness::new(backend, small_cfg());
    let set_runner = |h: &mut Harness| {
        if let Some(r) = &runner {
            h.disk().set_parallel(r.clone());
        }
        if let Some(s) = &spawn {
            h.disk()
                .set_async_writes(s.clone())
                .expect("nothing in flight on a new disk");
        }
    };
    set_runner(&mut h);
    let cap = h.disk().nblocks();
    let mut m = Model::default();
    let mut tag = 0u64;
    let mut forced_at_sync = 0u64;
    for op in ops {
        match op {
            Op::Write { lba, n } => {
                let n = n.min(cap - lba);
                let mut buf = vec![0u8; n as usize * BLOCK_SIZE];
                for i in 0..n {
                    tag += 1;
                    fill(
                        &mut buf[i as usize * BLOCK_SIZE..][..BLOCK_SIZE],
                        lba + i,
                        tag,
                    );
                    m.live.insert(lba + i, tag);
                    m.since.entry(lba + i).or_default().insert(tag);
                }
                h.disk().write(lba, &buf).map_err(|e| fail(e, "write"))?;
            }
            Op::Read { lba, n } => {
                let n = n.min(cap - lba);
                let mut buf = vec![0u8; n as usize * BLOCK_SIZE];
                h.disk().read(lba, &mut buf).map_err(|e| fail(e, "read"))?;
                for i in 0..n {
                    let want = m.live.get(&(lba + i)).copied().unwrap_or(0);
                    let got = &buf[i as usize * BLOCK_SIZE..][..BLOCK_SIZE];
                    prop_assert!(
                        check(got, lba + i, want),
                        "lba {} want tag {}",
                        lba + i,
                        want
                    );
                }
            }
            Op::Discard { lba, n } => {
                let n = n.min(cap - lba);
                h.disk().discard(lba, n).map_err(|e| fail(e, "discard"))?;
                for l in lba..lba + n {
                    m.live.remove(&l);
                    m.since.entry(l).or_default().insert(0);
                }
            }
            Op::Sync => {
                h.disk().sync().map_err(|e| fail(e, "sync"))?;
                m.synced = m.live.clone();
                m.since.clear();
                forced_at_sync = h.disk().stats().forced_syncs;
            }
            Op::Reopen => {
                h.close_and_reopen().map_err(|e| fail(e, "reopen"))?;
                set_runner(&mut h);
                m.synced = m.live.clone();
                m.since.clear();
                forced_at_sync = 0;
            }
            Op::Crash => {
                let forced = h.disk().stats().forced_syncs > forced_at_sync;
                // Keep a pseudo-random subset of the unflushed writes.
                let salt = tag;
                h.crash_and_reopen_keep(&move |i| (i as u64 ^ salt).count_ones() % 2 == 0)
                    .map_err(|e| fail(e, "crash reopen"))?;
                set_runner(&mut h);
                // Read everything back and settle the model.
                let mut buf = vec![0u8; BLOCK_SIZE];
                let mut now = BTreeMap::new();
                for l in 0..cap {
                    h.disk()
                        .read(l, &mut buf)
                        .map_err(|e| fail(e, "read after crash"))?;
                    let synced = m.synced.get(&l).copied().unwrap_or(0);
                    let got = if check(&buf, l, synced) {
                        synced
                    } else if forced {
                        let cands = m.since.get(&l).cloned().unwrap_or_default();
                        let hit = cands.iter().copied().find(|&t| check(&buf, l, t));
                        prop_assert!(
                            hit.is_some(),
                            "lba {} after crash: not synced nor written",
                            l
                        );
                        hit.unwrap_or(0)
                    } else {
                        prop_assert!(false, "lba {} after crash: want synced tag {}", l, synced);
                        0
                    };
                    if got != 0 {
                        now.insert(l, got);
                    }
                }
                m.live = now.clone();
                m.synced = now;
                m.since.clear();
                forced_at_sync = 0;
            }
        }
    }
    // Final: reopen cleanly and compare everything.
    h.close_and_reopen().map_err(|e| fail(e, "final reopen"))?;
    let mut buf = vec![0u8; BLOCK_SIZE];
    for l in 0..cap {
        h.disk()
            .read(l, &mut buf)
            .map_err(|e| fail(e, "final read"))?;
        let want = m.live.get(&l).copied().unwrap_or(0);
        prop_assert!(check(&buf, l, want), "final lba {} want {}", l, want);
    }
    let st = h.disk().stats();
    prop_assert_eq!(st.mapped_blocks, m.live.len() as u64);
    Ok(())
}

fn fail(e: mlsdisk_core::Error, what: &str) -> TestCaseError {
    TestCaseError::fail(format!("{what}: {e:?}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(128), ..ProptestConfig::default() })]

    #[test]
    fn model_mem_index(ops in proptest::collection::vec(op(small_cap()), 1..300)) {
        run(ops, Backend::MemIndex)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(48), ..ProptestConfig::default() })]

    #[test]
    fn model_lsm_index(ops in proptest::collection::vec(op(small_cap()), 1..300)) {
        run(ops, Backend::Lsm)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(48), ..ProptestConfig::default() })]

    #[test]
    fn model_lsm_index_flush_jobs_in_reverse(ops in proptest::collection::vec(op(small_cap()), 1..300)) {
        run_with(ops, Backend::Lsm, Some(Arc::new(Reversed::default())), None)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(48), ..ProptestConfig::default() })]

    /// Flushed buffers reach the device only when the disk waits for them
    /// (`Lazy`): a read, cleaner move or commit that did not wait would
    /// find the old device content.
    #[test]
    fn model_lsm_index_async_writes_as_late_as_allowed(ops in proptest::collection::vec(op(small_cap()), 1..300)) {
        run_with(ops, Backend::Lsm, None, Some(Arc::new(Lazy::default())))?;
    }

    /// The same on threads, with the flush's jobs in reverse order.
    #[test]
    fn model_mem_index_async_writes_on_threads(ops in proptest::collection::vec(op(small_cap()), 1..300)) {
        run_with(ops, Backend::MemIndex, Some(Arc::new(Reversed::default())), Some(Arc::new(StdSpawn)))?;
    }
}

/// The lazy runner above does get the flushes (the proptest cannot tell: a
/// case may never flush).
#[test]
fn flushes_go_to_the_async_runner_when_the_disk_has_one() {
    let lazy = Arc::new(Lazy::default());
    let mut rng = Rng(0x7654_3210_fedc_ba98);
    let cap = small_cap();
    let ops: Vec<Op> = (0..400)
        .map(|i| match i % 40 {
            39 => Op::Sync,
            19 => Op::Crash,
            _ if i % 3 == 0 => Op::Read {
                lba: rng.below(cap - 4),
                n: 1 + rng.below(4),
            },
            _ => Op::Write {
                lba: rng.below(cap - 4),
                n: 1 + rng.below(4),
            },
        })
        .collect();
    let r = run_with(ops, Backend::Lsm, None, Some(lazy.clone()));
    assert!(r.is_ok(), "{r:?}");
    let started = lazy.started.load(Ordering::Relaxed);
    assert!(started >= 50, "{started} asynchronous writes");
}

/// The reversed runner above does get the flush's two jobs (the proptest
/// cannot tell: a case may never flush).
#[test]
fn a_flush_hands_its_device_writes_and_index_updates_to_the_runner() {
    let runner = Arc::new(Reversed::default());
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let cap = small_cap();
    let ops: Vec<Op> = (0..400)
        .map(|i| match i % 40 {
            39 => Op::Sync,
            _ => Op::Write {
                lba: rng.below(cap - 4),
                n: 1 + rng.below(4),
            },
        })
        .collect();
    let r = run_with(ops, Backend::Lsm, Some(runner.clone()), None);
    assert!(r.is_ok(), "{r:?}");
    let batches = runner.0.load(Ordering::Relaxed);
    assert!(batches >= 50, "{batches} two-job batches");
}
