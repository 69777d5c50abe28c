//! TxLogStore crash tests: a scripted workload, crashed at every write and
//! flush boundary with several subsets of the unflushed writes persisted.
//! Reopening from the owner's last root must give exactly the last committed
//! state, or the state of the commit that was in flight.

mod log_util;

use std::collections::BTreeSet;
use std::sync::Arc;

use log_util::*;
use mlsdisk_core::bio::{BlockSet, CrashDisk, MemDisk};
use mlsdisk_core::log::StoreRoot;
use mlsdisk_core::Result;

enum Event {
    BeforeCommit,
    AfterCommit,
}

type Hook<'a, D> = &'a mut dyn FnMut(Event, &Harness<D>);

fn commit<D: BlockSet + Clone>(h: &mut Harness<D>, us: &[u8], hook: Hook<'_, D>) -> Result<()> {
    hook(Event::BeforeCommit, h);
    h.commit(us)?;
    hook(Event::AfterCommit, h);
    Ok(())
}

/// Creates, appends across chunk boundaries, seals, aborts, deletes, reuses
/// freed chunks, commits empty transactions; with `snapshot_every = 3` and a
/// 16-block journal it takes snapshots and wraps the journal ring.
fn workload<D: BlockSet + Clone>(h: &mut Harness<D>, hook: Hook<'_, D>) -> Result<()> {
    h.begin()?;
    let a = h.create(0)?;
    h.append(a, 1, 5)?;
    let b = h.create(1)?;
    h.append(b, 2, 3)?;
    commit(h, b"c1", hook)?;

    h.begin()?;
    h.append(a, 3, 12)?;
    h.seal(b)?;
    commit(h, b"c2", hook)?;

    h.begin()?;
    let c = h.create(2)?;
    h.append(c, 4, 2)?;
    h.abort();

    h.begin()?;
    h.delete(b)?;
    let d = h.create(1)?;
    h.append(d, 5, 9)?;
    commit(h, b"c3", hook)?;

    h.begin()?;
    h.append(a, 6, 1)?;
    commit(h, b"c4", hook)?;

    h.begin()?;
    h.append(d, 7, 1)?;
    h.seal(d)?;
    h.delete(a)?;
    commit(h, b"c5", hook)?;

    h.begin()?;
    let e = h.create(0)?;
    h.append(e, 8, 20)?;
    commit(h, b"c6", hook)?;

    for i in 0..4u8 {
        h.begin()?;
        if i % 2 == 0 {
            h.append(e, 9 + u32::from(i), 1)?;
        }
        commit(h, &[b'x', i], hook)?;
    }
    Ok(())
}

struct State {
    model: Model,
    root: StoreRoot,
    /// Op count when its commit was called and when it returned.
    begin: usize,
    end: usize,
}

/// Subsets of `m` unflushed writes to persist (deduplicated).
fn subsets(m: usize, seed: u64) -> Vec<Vec<bool>> {
    let mut out: BTreeSet<Vec<bool>> = BTreeSet::new();
    out.insert(vec![false; m]);
    out.insert(vec![true; m]);
    out.insert((0..m).map(|i| i % 2 == 1).collect());
    out.insert((0..m).map(|i| i % 2 == 0).collect());
    out.insert((0..m).map(|i| i < m / 2).collect());
    let rounds = if long() { 16 } else { 3 };
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    for _ in 0..rounds {
        out.insert(
            (0..m)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x & 1 == 1
                })
                .collect(),
        );
    }
    out.into_iter().collect()
}

#[test]
fn crash_at_every_write_and_flush() {
    let rec = Recorder::new(DISK_BLOCKS);
    let store = format(&rec);
    let base = rec.disk.snapshot().unwrap();
    rec.ops.lock().unwrap().clear();
    let mut states = vec![State {
        model: Model::default(),
        root: store.root(),
        begin: 0,
        end: 0,
    }];
    let mut h = Harness::new(store, Model::default());
    let mut begin = 0;
    workload(&mut h, &mut |ev, h: &Harness<Arc<Recorder>>| match ev {
        Event::BeforeCommit => begin = rec.op_count(),
        Event::AfterCommit => states.push(State {
            model: h.committed.clone(),
            root: h.store.root(),
            begin,
            end: rec.op_count(),
        }),
    })
    .unwrap();
    let ops = rec.ops.lock().unwrap().clone();
    let n_ops = ops.len();
    let (mut points, mut cases, mut in_flight_seen) = (0, 0, 0);
    let mut full_checked = BTreeSet::new();
    for n in 0..=n_ops {
        let k = states.iter().rposition(|s| s.end <= n).unwrap();
        let mut cands = vec![k];
        if states.get(k + 1).is_some_and(|s| n > s.begin) {
            cands.push(k + 1);
        }
        let pending = ops[..n]
            .iter()
            .rev()
            .take_while(|o| matches!(o, Op::Write(..)))
            .count();
        points += 1;
        for (v, keep) in subsets(pending, n as u64).into_iter().enumerate() {
            // Every other subset lands in reverse order.
            let img = crash_image_ordered(&base, &ops, n, &|i| keep[i], v % 2 == 1);
            let disk = Arc::new(MemDisk::new(DISK_BLOCKS).unwrap());
            disk.restore(&img).unwrap();
            let s = open(&disk, &states[k].root).unwrap_or_else(|e| {
                panic!("crash at op {n}/{n_ops} subset {keep:?}: open failed: {e:?}")
            });
            let got = cands
                .iter()
                .copied()
                .find(|&c| check(&s, &states[c].model, false).is_ok())
                .unwrap_or_else(|| {
                    panic!(
                        "crash at op {n}/{n_ops} subset {keep:?}: state is neither commit {k} nor the in-flight one: {:?}",
                        check(&s, &states[k].model, false)
                    )
                });
            if long() || full_checked.insert((got, pending)) {
                check(&s, &states[got].model, true).unwrap();
            }
            if got != k {
                in_flight_seen += 1;
            }
            cases += 1;
            // The recovered store keeps working: one more commit, reopen.
            if v == 0 {
                let mut h = Harness::new(s, states[got].model.clone());
                h.begin().unwrap();
                let l = h.create(2).unwrap();
                h.append(l, 99, 2).unwrap();
                h.commit(b"after").unwrap();
                let s = open(&disk, &h.store.root()).unwrap();
                check(&s, &h.committed, true).unwrap();
            }
        }
    }
    eprintln!(
        "log_crash: {points} crash points, {cases} crash images, {in_flight_seen} recovered the in-flight commit, {} commits",
        states.len() - 1
    );
    assert!(in_flight_seen > 0);
    // The journal moved to a new key (and half) during the workload.
    let halves: BTreeSet<u8> = states.iter().map(|s| s.root.journal_half()).collect();
    assert_eq!(halves.len(), 2, "no key rotation in the workload");
}

#[test]
fn crash_disk_power_cut_during_the_workload() {
    // The same workload on a CrashDisk whose power is cut after n ops: the
    // store sees I/O errors from then on, as a real machine would not; then
    // the crash keeps a subset of the unflushed writes.
    let total = {
        let rec = Recorder::new(DISK_BLOCKS);
        let store = format(&rec);
        rec.ops.lock().unwrap().clear();
        let mut h = Harness::new(store, Model::default());
        workload(&mut h, &mut |_, _| {}).unwrap();
        // Flushes count as one op each in CrashDisk, as here; a multi-block
        // write counts once there but per block here, so this is an upper bound.
        rec.op_count() as u64
    };
    let step = if long() { 1 } else { 3 };
    let mut points = 0;
    for n in (0..total).step_by(step) {
        let cd = Arc::new(CrashDisk::new(Arc::new(MemDisk::new(DISK_BLOCKS).unwrap())));
        let store = format(&cd);
        cd.crash_after_ops(n).unwrap();
        let mut last: (Model, StoreRoot) = (Model::default(), store.root());
        let mut in_flight: Option<Model> = None;
        let mut h = Harness::new(store, Model::default());
        let r = workload(
            &mut h,
            &mut |ev, h: &Harness<Arc<CrashDisk<Arc<MemDisk>>>>| match ev {
                Event::BeforeCommit => {
                    let mut m = h.tx.clone().unwrap();
                    m.user_state.clear();
                    in_flight = Some(m);
                }
                Event::AfterCommit => {
                    last = (h.committed.clone(), h.store.root());
                    in_flight = None;
                }
            },
        );
        // A failed commit: its model's user state was not known; take it
        // from the harness's transaction.
        let flight = in_flight.map(|mut m| {
            m.user_state = Vec::new();
            m
        });
        drop(h);
        let seed = n;
        cd.crash(&move |i| (i as u64 ^ seed) % 3 != 0).unwrap();
        let s =
            open(&cd, &last.1).unwrap_or_else(|e| panic!("power cut at {n}: open: {e:?} ({r:?})"));
        let ok = check(&s, &last.0, true).is_ok()
            || flight.as_ref().is_some_and(|m| {
                // The in-flight commit's user state is whatever it carried.
                let mut m = m.clone();
                m.user_state = s.user_state().to_vec();
                check(&s, &m, true).is_ok()
            });
        assert!(ok, "power cut at op {n}: {:?}", check(&s, &last.0, true));
        points += 1;
    }
    eprintln!("log_crash (CrashDisk power cut): {points} crash points of {total}");
}

#[test]
fn second_crash_during_the_first_commit_after_recovery() {
    // Crash the workload at several points (keeping some unflushed writes),
    // recover, then crash again at every op of the first commit after the
    // recovery: the journal continues after a torn tail, so its blocks and
    // the torn ones interleave. Each reopen gives the recovered state or the
    // recovered state plus that commit.
    let rec = Recorder::new(DISK_BLOCKS);
    let store = format(&rec);
    let base = rec.disk.snapshot().unwrap();
    rec.ops.lock().unwrap().clear();
    let mut states = vec![(Model::default(), store.root(), 0usize)];
    let mut h = Harness::new(store, Model::default());
    workload(&mut h, &mut |ev, h: &Harness<Arc<Recorder>>| {
        if let Event::AfterCommit = ev {
            states.push((h.committed.clone(), h.store.root(), rec.op_count()));
        }
    })
    .unwrap();
    let ops = rec.ops.lock().unwrap().clone();
    let step = if long() { 1 } else { 8 };
    let (mut firsts, mut seconds) = (0, 0);
    for n in (1..ops.len()).step_by(step) {
        let k = states.iter().rposition(|s| s.2 <= n).unwrap();
        let img1 = crash_image(&base, &ops, n, &|i| i % 3 != 1);
        // Recover, and run one commit on a recording disk.
        let rec2 = Recorder::new(DISK_BLOCKS);
        rec2.disk.restore(&img1).unwrap();
        let s = open(&rec2, &states[k].1).unwrap();
        let recovered = if check(&s, &states[k].0, true).is_ok() {
            states[k].0.clone()
        } else {
            states[k + 1].0.clone()
        };
        check(&s, &recovered, true).unwrap();
        let root1 = s.root();
        rec2.ops.lock().unwrap().clear();
        let mut h = Harness::new(s, recovered.clone());
        h.begin().unwrap();
        let l = h.create(1).unwrap();
        h.append(l, 77, 3).unwrap();
        if let Some(&first) = recovered.logs.keys().next() {
            h.delete(mlsdisk_core::log::LogId(first)).unwrap();
        }
        h.commit(b"second").unwrap();
        let after = h.committed.clone();
        let root2 = h.store.root();
        drop(h);
        firsts += 1;
        let ops2 = rec2.ops.lock().unwrap().clone();
        for m in 0..=ops2.len() {
            for keep in [false, true] {
                let img2 = crash_image(&img1, &ops2, m, &|_| keep);
                let disk = Arc::new(MemDisk::new(DISK_BLOCKS).unwrap());
                disk.restore(&img2).unwrap();
                // The owner has the new root only once the commit returned.
                let root = if m == ops2.len() { &root2 } else { &root1 };
                let s = open(&disk, root)
                    .unwrap_or_else(|e| panic!("first crash {n}, second {m}: {e:?}"));
                assert!(
                    check(&s, &recovered, false).is_ok() || check(&s, &after, false).is_ok(),
                    "first crash {n}, second {m}: {:?}",
                    check(&s, &recovered, false)
                );
                seconds += 1;
            }
        }
    }
    eprintln!(
        "log_crash (second crash after recovery): {firsts} first crashes, {seconds} second crashes"
    );
}
