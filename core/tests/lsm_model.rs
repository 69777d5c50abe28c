//! Model test: random put/delete/get/sync/compact_step/crash/reopen over a
//! tiny key space on a real store behind a CrashDisk, against a BTreeMap.
//! After a crash (which keeps a random subset of the unflushed writes) the
//! tree holds exactly the last synced state and its user state.

mod lsm_util;

use std::collections::BTreeMap;
use std::sync::Arc;

use lsm_util::*;
use mlsdisk_core::bio::{CrashDisk, MemDisk};
use proptest::prelude::*;

type Dev = Arc<CrashDisk<Arc<MemDisk>>>;

#[derive(Clone, Debug)]
enum Op {
    Put(u64, u64),
    Del(u64),
    Get(u64),
    /// `get_sorted` of the keys `from, from + step, ...` below 24.
    GetSorted(u64, u64),
    /// `range(from, to)`.
    Range(u64, u64),
    Sync,
    Compact(u8),
    Crash(u64),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0..24u64, any::<u64>()).prop_map(|(k, v)| Op::Put(k, v)),
        3 => (0..24u64).prop_map(Op::Del),
        4 => (0..24u64).prop_map(Op::Get),
        2 => (0..24u64, 1..5u64).prop_map(|(f, s)| Op::GetSorted(f, s)),
        2 => (0..26u64, 0..26u64).prop_map(|(f, t)| Op::Range(f, t)),
        2 => Just(Op::Sync),
        3 => (1..6u8).prop_map(Op::Compact),
        1 => any::<u64>().prop_map(Op::Crash),
        1 => Just(Op::Reopen),
    ]
}

fn cases() -> u32 {
    if long() {
        512
    } else {
        24
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]
    #[test]
    fn model(ops in proptest::collection::vec(op(), 1..120)) {
        let (mem, mut root) = fresh_disk();
        let dev: Dev = Arc::new(CrashDisk::new(mem));
        let mut t = open(&dev, &root, lsm_cfg()).unwrap();
        let mut cur: BTreeMap<u64, u64> = BTreeMap::new();
        let mut synced = cur.clone();
        let mut nsync = 0u64;
        for op in ops {
            match op {
                Op::Put(k, v) => { t.put(k, Val(v)).unwrap(); cur.insert(k, v); }
                Op::Del(k) => { t.delete(k).unwrap(); cur.remove(&k); }
                Op::Get(k) => prop_assert_eq!(t.get(k).unwrap().map(|v| v.0), cur.get(&k).copied()),
                Op::GetSorted(from, step) => {
                    let ks: Vec<u64> = (from..24).step_by(step as usize).collect();
                    let mut out = Vec::new();
                    t.get_sorted(&ks, &mut out).unwrap();
                    let got: Vec<Option<u64>> = out.iter().map(|v| v.as_ref().map(|v| v.0)).collect();
                    let want: Vec<Option<u64>> = ks.iter().map(|k| cur.get(k).copied()).collect();
                    prop_assert_eq!(got, want);
                }
                Op::Range(from, to) => {
                    let mut out = Vec::new();
                    t.range(from, to, &mut out).unwrap();
                    let got: Vec<(u64, u64)> = out.iter().map(|(k, v)| (*k, v.0)).collect();
                    let want: Vec<(u64, u64)> = if from < to {
                        cur.range(from..to).map(|(k, v)| (*k, *v)).collect()
                    } else {
                        Vec::new()
                    };
                    prop_assert_eq!(got, want);
                }
                Op::Sync => {
                    nsync += 1;
                    t.sync(&nsync.to_le_bytes()).unwrap();
                    root = t.store().root();
                    synced = cur.clone();
                }
                Op::Compact(n) => { for _ in 0..n { t.compact_step().unwrap(); } }
                Op::Crash(seed) => {
                    drop(t);
                    dev.crash(&|i| (seed >> (i % 64)) & 1 == 1).unwrap();
                    t = open(&dev, &root, lsm_cfg()).unwrap();
                    cur = synced.clone();
                    if nsync > 0 {
                        prop_assert_eq!(t.user_state(), &nsync.to_le_bytes()[..]);
                    }
                    compare(&mut t, &cur, 24).unwrap();
                }
                Op::Reopen => {
                    // A clean close without sync: unsynced updates are dropped.
                    drop(t);
                    dev.crash_keep_all().unwrap();
                    t = open(&dev, &root, lsm_cfg()).unwrap();
                    cur = synced.clone();
                }
            }
        }
        compare(&mut t, &cur, 24).unwrap();
        drop(t);
        dev.crash(&|_| false).unwrap();
        let mut t = open(&dev, &root, lsm_cfg()).unwrap();
        compare(&mut t, &synced, 24).unwrap();
    }
}
