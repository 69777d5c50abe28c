//! Crash at every write/flush boundary of a scripted workload: the tree
//! reopens to exactly the last synced state (or, when the crash hit a sync,
//! possibly the one being made), for several subsets of the unflushed writes.

mod lsm_util;

use std::collections::BTreeMap;
use std::sync::Arc;

use lsm_util::*;
use mlsdisk_core::bio::{BlockSet, CrashDisk, MemDisk};
use mlsdisk_core::log::StoreRoot;
use mlsdisk_core::lsm::TxLsmTree;
use mlsdisk_core::Result;

type Dev = Arc<CrashDisk<Arc<MemDisk>>>;

/// What the workload got to before the power went off.
struct Progress {
    /// (sync number, model) of the last sync that returned.
    synced: (u64, BTreeMap<u64, u64>),
    /// The sync that was in flight when the power went off, if any.
    in_flight: Option<(u64, BTreeMap<u64, u64>)>,
    root: StoreRoot,
}

/// Which keys the workload updates.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keys {
    /// Random keys of 40, a fifth of the updates deletes.
    Random,
    /// Keys `0, 1, 2, ...` in order, no deletes: the tables overlap
    /// nothing below them, so compactions move them down a level.
    InOrder,
}

impl Keys {
    /// Keys `compare` checks.
    fn span(self) -> u64 {
        match self {
            Keys::Random => 40,
            Keys::InOrder => steps() + 10,
        }
    }
}

/// The workload: updates, compaction steps, a sync every 9 operations.
/// Stops at the first error.
fn workload<D: BlockSet>(
    t: &mut TxLsmTree<D, Val>,
    p: &mut Progress,
    steps: u64,
    keys: Keys,
) -> Result<()> {
    let mut rng = Rng(0x5eed);
    let mut cur = p.synced.1.clone();
    let mut nsync = p.synced.0;
    for i in 0..steps {
        let k = match keys {
            Keys::Random => rng.below(40),
            Keys::InOrder => i,
        };
        if keys == Keys::Random && rng.below(5) == 0 {
            t.delete(k)?;
            cur.remove(&k);
        } else {
            t.put(k, Val(i))?;
            cur.insert(k, i);
        }
        if i % 3 == 0 {
            t.compact_step()?;
        }
        if i % 9 == 8 {
            nsync += 1;
            p.in_flight = Some((nsync, cur.clone()));
            t.sync(&nsync.to_le_bytes())?;
            p.in_flight = None;
            p.synced = (nsync, cur.clone());
            p.root = t.store().root();
        }
    }
    Ok(())
}

fn steps() -> u64 {
    if long() {
        300
    } else {
        60
    }
}

#[test]
fn crash_at_every_io() {
    crash_at_every_io_of(Keys::Random);
}

/// The same with keys written in order, where compactions move tables
/// down a level without rewriting them (only the manifest changes): a
/// crash anywhere around a move still opens to the last synced state.
#[test]
fn crash_at_every_io_while_tables_move_down() {
    crash_at_every_io_of(Keys::InOrder);
}

fn crash_at_every_io_of(keys: Keys) {
    // A first run counts the device writes and flushes of the workload.
    let (mem, root) = fresh_disk();
    let dev: Dev = Arc::new(CrashDisk::new(mem));
    let mut t = open(&dev, &root, lsm_cfg()).unwrap();
    let mut p = Progress {
        synced: (0, BTreeMap::new()),
        in_flight: None,
        root,
    };
    let base = dev.op_count();
    workload(&mut t, &mut p, steps(), keys).unwrap();
    let total = dev.op_count() - base;
    if keys == Keys::InOrder {
        let st = t.stats();
        assert!(st.moves > 0, "no table moved: {st:?}");
    }
    assert!(total > 50, "workload did {total} ops");
    // Fast mode: about 30 crash points spread over the run (a different
    // spread each run would hide regressions, so it is fixed).
    let stride = if long() { 1 } else { (total / 30).max(1) };
    let mut cases = 0;
    let mut in_flight_cases = 0;
    for n in (0..=total).step_by(stride as usize) {
        let subsets = if long() {
            0..3u64
        } else {
            (n % 3)..(n % 3 + 1)
        };
        for subset in subsets {
            let (mem, root) = fresh_disk();
            let dev: Dev = Arc::new(CrashDisk::new(mem));
            let mut t = open(&dev, &root, lsm_cfg()).unwrap();
            let mut p = Progress {
                synced: (0, BTreeMap::new()),
                in_flight: None,
                root,
            };
            dev.crash_after_ops(n).unwrap();
            let r = workload(&mut t, &mut p, steps(), keys);
            assert!(r.is_err() || n == total, "n={n}: workload survived");
            drop(t);
            match subset {
                0 => dev.crash(&|_| false).unwrap(),
                1 => dev.crash(&|_| true).unwrap(),
                _ => dev.crash(&|i| (i * 7 + n as usize) % 3 != 0).unwrap(),
            }
            let mut t = open(&dev, &p.root, lsm_cfg())
                .unwrap_or_else(|e| panic!("n={n} subset={subset}: open failed: {e:?}"));
            let us = t.user_state().to_vec();
            let nsync = if us.is_empty() {
                0
            } else {
                u64::from_le_bytes(us.as_slice().try_into().unwrap())
            };
            let model = if nsync == p.synced.0 {
                &p.synced.1
            } else {
                match &p.in_flight {
                    Some((s, m)) if *s == nsync => {
                        in_flight_cases += 1;
                        m
                    }
                    _ => panic!("n={n}: opened to sync {nsync}, last synced {}", p.synced.0),
                }
            };
            compare(&mut t, model, keys.span()).unwrap();
            // The reopened tree keeps working.
            t.put(1000, Val(1)).unwrap();
            while t.compact_step().unwrap() {}
            t.sync(b"after").unwrap();
            assert_eq!(t.get(1000).unwrap(), Some(Val(1)));
            cases += 1;
        }
    }
    eprintln!("crash cases: {cases} ({total} ops, stride {stride}), in-flight sync recovered: {in_flight_cases}");
}
