//! Exhaustive crash points for small workloads: the power is cut after
//! every possible number of device writes/flushes, a chosen subset of the
//! unflushed writes survives (none, all, every other, a pseudo-random set,
//! reordered), and the disk must open to exactly the state of the last
//! sync that returned, or of the one in flight (docs/security.md: consistency and atomicity).

mod disk_common;

use std::collections::BTreeMap;

use disk_common::*;
use mlsdisk_core::bio::BLOCK_SIZE;
use mlsdisk_core::disk::DiskConfig;

#[derive(Clone, Copy, Debug)]
enum Step {
    Write(u64, u64, u64),
    Discard(u64, u64),
    Sync,
}

type State = BTreeMap<u64, u64>;

/// The synced states of a workload: `states[k]` after the k-th sync
/// (`states[0]` = the empty disk).
fn states(steps: &[Step]) -> Vec<State> {
    let mut cur = State::new();
    let mut out = vec![cur.clone()];
    for s in steps {
        match *s {
            Step::Write(l, n, t) => (l..l + n).for_each(|x| {
                cur.insert(x, t);
            }),
            Step::Discard(l, n) => (l..l + n).for_each(|x| {
                cur.remove(&x);
            }),
            Step::Sync => out.push(cur.clone()),
        }
    }
    out
}

/// Runs the steps until one fails; returns how many syncs returned Ok.
fn run(h: &mut Harness, steps: &[Step]) -> usize {
    let mut synced = 0;
    for s in steps {
        let r = match *s {
            Step::Write(l, n, t) => h.disk().write(l, &blocks(l, n, t)),
            Step::Discard(l, n) => h.disk().discard(l, n),
            Step::Sync => h.disk().sync().map(|()| synced += 1),
        };
        if r.is_err() {
            break;
        }
    }
    synced
}

fn matches(h: &mut Harness, st: &State, cap: u64) -> bool {
    let mut b = vec![0u8; BLOCK_SIZE];
    (0..cap)
        .all(|l| h.disk().read(l, &mut b).is_ok() && check(&b, l, st.get(&l).copied().unwrap_or(0)))
}

fn crash_all_points(backend: Backend, cfg: DiskConfig, steps: &[Step]) -> usize {
    let want = states(steps);
    // Dry run: how many ops the workload takes after create.
    let mut h = Harness::new(backend, cfg.clone());
    let base = h.crash.op_count();
    assert_eq!(run(&mut h, steps), want.len() - 1);
    let total = h.crash.op_count();
    let mut cases = 0;
    let selectors: [(&str, &dyn Fn(usize) -> bool); 4] = [
        ("none", &|_| false),
        ("all", &|_| true),
        ("odd", &|i| i % 2 == 1),
        ("hash", &|i| {
            (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 63 == 1
        }),
    ];
    for n in 0..=(total - base) {
        for (name, keep) in selectors.iter() {
            let mut h = Harness::new(backend, cfg.clone());
            let cap = h.disk().nblocks();
            h.crash.crash_after_ops(n).unwrap();
            let synced = run(&mut h, steps);
            h.crash_and_reopen_keep(*keep)
                .unwrap_or_else(|e| panic!("crash after {n} ops ({name}): open failed: {e:?}"));
            let ok_last = matches(&mut h, &want[synced], cap);
            let ok_next =
                !ok_last && synced + 1 < want.len() && matches(&mut h, &want[synced + 1], cap);
            assert!(
                ok_last || ok_next,
                "crash after {n} ops ({name}): state is neither sync {synced} nor {}",
                synced + 1
            );
            // The recovered disk keeps working.
            h.disk().write(0, &blocks(0, 1, 77)).unwrap();
            h.disk().sync().unwrap();
            cases += 1;
        }
    }
    cases
}

fn workload() -> Vec<Step> {
    vec![
        Step::Write(0, 6, 1),
        Step::Sync,
        Step::Write(3, 6, 2),
        Step::Discard(0, 2),
        Step::Write(20, 3, 3),
        Step::Sync,
        Step::Write(0, 12, 4),
        Step::Write(5, 1, 5),
        Step::Sync,
    ]
}

#[test]
fn every_crash_point_opens_to_a_synced_state_mem_index() {
    let n = crash_all_points(Backend::MemIndex, small_cfg(), &workload());
    eprintln!("crash cases (mem index): {n}");
    assert!(n > 20);
}

#[test]
fn crash_points_with_cleaning_and_forced_syncs_mem_index() {
    cleaning_crashes(Backend::MemIndex);
}

#[test]
fn crash_points_with_cleaning_and_forced_syncs_lsm_index() {
    cleaning_crashes(Backend::Lsm);
}

fn cleaning_crashes(backend: Backend) {
    // Overwrite the whole small disk a few times: the cleaner runs and the
    // disk syncs on its own; every crash point must still open to some
    // whole synced state (a forced sync is a sync).
    let cap = small_cap();
    let mut steps = vec![];
    let rounds = if long() { 6 } else { 3 };
    for t in 1..=rounds {
        steps.push(Step::Write(0, cap, t));
        steps.push(Step::Sync);
    }
    let want = states(&steps);
    let mut h = Harness::new(backend, small_cfg());
    let base = h.crash.op_count();
    run(&mut h, &steps);
    let total = h.crash.op_count();
    let step = if long() { 1 } else { 4 };
    let mut cases = 0;
    for n in (0..=(total - base)).step_by(step) {
        cases += 1;
        let mut h = Harness::new(backend, small_cfg());
        h.crash.crash_after_ops(n).unwrap();
        let synced = run(&mut h, &steps);
        h.crash_and_reopen_keep(&|i| i % 3 != 0).unwrap();
        // Each block holds one of the written versions (a forced sync may
        // have committed part of a round), never garbage.
        let mut b = vec![0u8; BLOCK_SIZE];
        for l in 0..cap {
            h.disk().read(l, &mut b).unwrap();
            assert!(
                (0..=rounds).any(|t| check(&b, l, t)),
                "crash after {n}: lba {l} holds no written version"
            );
        }
        let _ = (synced, &want);
    }
    eprintln!(
        "crash cases with cleaning: {cases} of {} points",
        total - base + 1
    );
}

#[test]
fn every_crash_point_opens_to_a_synced_state_lsm_index() {
    let n = crash_all_points(Backend::Lsm, small_cfg(), &workload());
    eprintln!("crash cases (lsm index): {n}");
    assert!(n > 100);
}

#[test]
fn crash_during_create_never_opens_to_garbage() {
    use mlsdisk_core::bio::{CrashDisk, MemDisk};
    use mlsdisk_core::disk::{MlsDisk, NoAnchor};
    use mlsdisk_core::ErrorKind;
    use std::sync::Arc;
    let fresh = || Arc::new(CrashDisk::new(Arc::new(MemDisk::new(SMALL_TOTAL).unwrap())));
    let dry = fresh();
    MlsDisk::create(dry.clone(), crypto(), &KEY, small_cfg(), Box::new(NoAnchor)).unwrap();
    let total = dry.op_count();
    let mut cases = 0;
    for n in 0..=total {
        for keep_all in [false, true] {
            let dev = fresh();
            dev.crash_after_ops(n).unwrap();
            let created =
                MlsDisk::create(dev.clone(), crypto(), &KEY, small_cfg(), Box::new(NoAnchor))
                    .is_ok();
            dev.crash(&|_| keep_all).unwrap();
            match MlsDisk::open(dev.clone(), crypto(), &KEY, small_cfg(), Box::new(NoAnchor)) {
                Ok(mut d) => {
                    // Only a finished create opens, and then as an empty disk.
                    let mut b = vec![1u8; BLOCK_SIZE];
                    for l in 0..d.nblocks() {
                        d.read(l, &mut b).unwrap();
                        assert!(b.iter().all(|&x| x == 0), "op {n}: lba {l} not empty");
                    }
                }
                Err(e) => {
                    assert!(!created, "op {n}: a created disk must open: {e:?}");
                    assert!(
                        matches!(e.kind(), ErrorKind::Corrupted | ErrorKind::Integrity),
                        "op {n}: {e:?}"
                    );
                }
            }
            // Creating again over the wreck works.
            MlsDisk::create(dev.clone(), crypto(), &KEY, small_cfg(), Box::new(NoAnchor)).unwrap();
            cases += 1;
        }
    }
    eprintln!("crash-during-create cases: {cases}");
}
