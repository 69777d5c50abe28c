//! Unit and model tests of the tree over the in-memory store.

use alloc::collections::BTreeMap;

use proptest::prelude::*;

use super::mem_store::MemStore;
use super::store::LogStore;
use super::tests::TestVal;
use super::{table_tag, LsmConfig, LsmTree, TAG_MANIFEST, TAG_WAL};
use crate::ErrorKind;

type Tree = LsmTree<MemStore, TestVal>;

fn contents(t: &mut Tree) -> BTreeMap<u64, u64> {
    let mut m = BTreeMap::new();
    t.for_each(&mut |k, v| {
        m.insert(k, v.0);
        Ok(())
    })
    .unwrap();
    m
}

fn check(t: &mut Tree, model: &BTreeMap<u64, u64>, keys: u64) {
    for k in 0..keys {
        assert_eq!(
            t.get(k).unwrap().map(|v| v.0),
            model.get(&k).copied(),
            "key {k}"
        );
    }
    let ks: alloc::vec::Vec<u64> = (0..keys).collect();
    let mut out = alloc::vec::Vec::new();
    let mut out_r = alloc::vec::Vec::new();
    t.get_sorted(&ks, &mut out).unwrap();
    for (k, v) in ks.iter().zip(&out) {
        assert_eq!(
            v.as_ref().map(|v| v.0),
            model.get(k).copied(),
            "get_sorted, key {k}"
        );
    }
    for w in [1u64, 13, keys.clamp(1, super::MAX_RANGE)] {
        let mut from = 0;
        while from < keys {
            let to = (from + w).min(keys);
            t.range(from, to, &mut out_r).unwrap();
            let got: alloc::vec::Vec<(u64, u64)> = out_r.iter().map(|(k, v)| (*k, v.0)).collect();
            let want: alloc::vec::Vec<(u64, u64)> =
                model.range(from..to).map(|(k, v)| (*k, *v)).collect();
            assert_eq!(got, want, "range {from}..{to}");
            from = to;
        }
    }
    assert_eq!(&contents(t), model);
}

#[test]
fn range_refuses_a_range_too_wide_and_the_tree_stays_usable() {
    let mut t = Tree::format(MemStore::default(), LsmConfig::tiny()).unwrap();
    t.put(5, TestVal(50)).unwrap();
    t.put(super::MAX_RANGE + 9, TestVal(90)).unwrap();
    let mut out = alloc::vec::Vec::new();
    let e = t.range(0, super::MAX_RANGE + 10, &mut out).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    t.range(0, super::MAX_RANGE, &mut out).unwrap();
    assert_eq!(out, [(5, TestVal(50))]);
    t.range(9, 3, &mut out).unwrap();
    assert!(out.is_empty());
    t.range(u64::MAX - 1, u64::MAX, &mut out).unwrap();
    assert!(out.is_empty());
    t.put(6, TestVal(60)).unwrap();
    assert_eq!(t.get(6).unwrap(), Some(TestVal(60)));
}

#[test]
fn get_sorted_refuses_keys_out_of_order_and_the_tree_stays_usable() {
    let mut t = Tree::format(MemStore::default(), LsmConfig::tiny()).unwrap();
    t.put(5, TestVal(50)).unwrap();
    let mut out = alloc::vec::Vec::new();
    for bad in [&[3u64, 2][..], &[4, 4], &[1, 7, 6]] {
        let e = t.get_sorted(bad, &mut out).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}");
    }
    t.get_sorted(&[4, 5, 6], &mut out).unwrap();
    assert_eq!(out, [None, Some(TestVal(50)), None]);
    t.put(6, TestVal(60)).unwrap();
    assert_eq!(t.get(6).unwrap(), Some(TestVal(60)));
}

#[test]
fn put_get_sync_reopen() {
    let mut t = Tree::format(MemStore::default(), LsmConfig::tiny()).unwrap();
    let mut model = BTreeMap::new();
    for i in 0..500u64 {
        let k = (i * 37) % 101;
        if i % 7 == 3 {
            t.delete(k).unwrap();
            model.remove(&k);
        } else {
            t.put(k, TestVal(i)).unwrap();
            model.insert(k, i);
        }
        if i % 3 == 0 {
            t.compact_step().unwrap();
        }
    }
    check(&mut t, &model, 110);
    assert!(t.needs_compaction());
    while t.compact_step().unwrap() {}
    assert!(!t.needs_compaction());
    check(&mut t, &model, 110);
    let st = t.stats();
    assert!(st.flushes > 5 && st.compactions > 2, "{st:?}");
    assert!(
        st.tables[0] < 2 && st.tables.iter().skip(2).any(|&n| n > 0),
        "{st:?}"
    );
    t.sync(b"hello").unwrap();
    let s = t.into_store();
    let mut t = Tree::open(s, LsmConfig::tiny()).unwrap();
    assert_eq!(t.user_state(), b"hello");
    check(&mut t, &model, 110);
}

#[test]
fn unsynced_updates_vanish_at_crash() {
    let mut t = Tree::format(MemStore::default(), LsmConfig::tiny()).unwrap();
    for k in 0..20 {
        t.put(k, TestVal(k)).unwrap();
    }
    t.sync(b"one").unwrap();
    for k in 0..40 {
        t.put(k, TestVal(k + 100)).unwrap();
        t.compact_step().unwrap();
    }
    let s = t.store().crashed();
    let mut t = Tree::open(s, LsmConfig::tiny()).unwrap();
    assert_eq!(t.user_state(), b"one");
    let model: BTreeMap<u64, u64> = (0..20).map(|k| (k, k)).collect();
    check(&mut t, &model, 45);
}

#[test]
fn store_failure_poisons() {
    let mut t = Tree::format(MemStore::default(), LsmConfig::tiny()).unwrap();
    for k in 0..5 {
        t.put(k, TestVal(k)).unwrap();
    }
    t.sync(b"a").unwrap();
    let mut s = t.into_store();
    s.fail_in = Some(2);
    let mut t = Tree::open(s, LsmConfig::tiny()).unwrap();
    let mut failed = false;
    for k in 0..100 {
        if t.put(k, TestVal(9)).is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed);
    assert_eq!(t.get(1).unwrap_err().kind(), ErrorKind::InvalidState);
    assert!(t.sync(b"b").is_err());
    let s = t.into_store();
    let mut t = Tree::open(s, LsmConfig::tiny()).unwrap();
    assert_eq!(t.user_state(), b"a");
    let model: BTreeMap<u64, u64> = (0..5).map(|k| (k, k)).collect();
    check(&mut t, &model, 10);
}

#[test]
fn tampered_table_or_wal_fails() {
    let cfg = LsmConfig::tiny();
    let mut t = Tree::format(MemStore::default(), cfg.clone()).unwrap();
    for k in 0..30 {
        t.put(k, TestVal(k)).unwrap();
    }
    while t.compact_step().unwrap() {}
    t.put(99, TestVal(99)).unwrap();
    t.sync(b"x").unwrap();
    let s = t.into_store();
    let tables = s.logs_with_tag_count(table_tag(1)) + s.logs_with_tag_count(table_tag(0));
    assert!(tables > 0);
    // The WAL: a flipped record flag byte -> open fails.
    let mut s2 = s.clone();
    s2.tamper(TAG_WAL, 0, 0, 24 + 8);
    assert!(Tree::open(s2, cfg.clone()).is_err());
    // A table data block: a flipped header byte -> open or get fails.
    for lvl in 0..3u8 {
        if s.logs_with_tag_count(table_tag(lvl)) == 0 {
            continue;
        }
        for byte in [0usize, 5, 17, 4095] {
            let mut s2 = s.clone();
            s2.tamper(table_tag(lvl), 0, 0, byte);
            if let Ok(mut t) = Tree::open(s2, cfg.clone()) {
                let errs = (0..30).filter(|&k| t.get(k).is_err()).count();
                assert!(errs > 0, "level {lvl} byte {byte}");
                for k in 0..30 {
                    if let Ok(v) = t.get(k) {
                        assert_eq!(v, Some(TestVal(k)));
                    }
                }
            }
        }
    }
}

/// Open reads the manifest, one log per commit that changed the tables:
/// any flipped byte of it makes open fail (never a tree with other
/// tables), a missing table log or manifest too; and open needs no table
/// footer (a destroyed footer does not stop it).
#[test]
fn manifest_tampering_fails_open_and_footers_are_not_read() {
    let cfg = LsmConfig::tiny();
    let mut t = Tree::format(MemStore::default(), cfg.clone()).unwrap();
    let mut model = BTreeMap::new();
    for k in 0..200 {
        t.put(k % 70, TestVal(k)).unwrap();
        model.insert(k % 70, k);
        t.compact_step().unwrap();
    }
    t.sync(b"x").unwrap();
    let s = t.into_store();
    assert_eq!(s.logs_with_tag_count(TAG_MANIFEST), 1, "one manifest log");
    let mut t = Tree::open(s.clone(), cfg.clone()).unwrap();
    check(&mut t, &model, 80);
    let st = t.stats();
    let ntables: u32 = st.tables.iter().sum();
    assert!(ntables >= 3, "{st:?}");
    drop(t);
    for byte in (0..64).chain([100, 500, 4095]) {
        let mut s2 = s.clone();
        s2.tamper(TAG_MANIFEST, 0, 0, byte);
        assert!(
            Tree::open(s2, cfg.clone()).is_err(),
            "manifest byte {byte} flipped, open succeeded"
        );
    }
    // Every table's footer (its last block) destroyed: open reads none.
    let mut s2 = s.clone();
    for lvl in 0..7u8 {
        for n in 0..s.logs_with_tag_count(table_tag(lvl)) {
            s2.smash_last_block(table_tag(lvl), n);
        }
    }
    let mut t = Tree::open(s2, cfg.clone()).unwrap();
    check(&mut t, &model, 80);
    drop(t);
    // A table's log gone: the manifest names it, open fails.
    let mut s2 = s.clone();
    let lvl = (0..7u8)
        .find(|&l| s.logs_with_tag_count(table_tag(l)) > 0)
        .unwrap();
    s2.remove_log(table_tag(lvl), 0);
    assert!(Tree::open(s2, cfg.clone()).is_err());
    let mut s2 = s.clone();
    s2.remove_log(TAG_MANIFEST, 0);
    assert!(Tree::open(s2, cfg).is_err());
}

#[derive(Clone, Debug)]
enum Op {
    Put(u64, u64),
    Del(u64),
    Get(u64),
    Sync,
    Compact(u8),
    Crash,
    ForEach,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0..24u64, any::<u64>()).prop_map(|(k, v)| Op::Put(k, v)),
        3 => (0..24u64).prop_map(Op::Del),
        4 => (0..24u64).prop_map(Op::Get),
        2 => Just(Op::Sync),
        3 => (1..6u8).prop_map(Op::Compact),
        1 => Just(Op::Crash),
        1 => Just(Op::ForEach),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn model(ops in proptest::collection::vec(op(), 1..160)) {
        let cfg = LsmConfig::tiny();
        let mut t = Tree::format(MemStore::default(), cfg.clone()).unwrap();
        let mut cur: BTreeMap<u64, u64> = BTreeMap::new();
        let mut synced = cur.clone();
        let mut nsync = 0u64;
        for op in ops {
            match op {
                Op::Put(k, v) => { t.put(k, TestVal(v)).unwrap(); cur.insert(k, v); }
                Op::Del(k) => { t.delete(k).unwrap(); cur.remove(&k); }
                Op::Get(k) => prop_assert_eq!(t.get(k).unwrap().map(|v| v.0), cur.get(&k).copied()),
                Op::Sync => {
                    nsync += 1;
                    t.sync(&nsync.to_le_bytes()).unwrap();
                    synced = cur.clone();
                }
                Op::Compact(n) => { for _ in 0..n { t.compact_step().unwrap(); } }
                Op::Crash => {
                    let s = t.store().crashed();
                    t = Tree::open(s, cfg.clone()).unwrap();
                    cur = synced.clone();
                    if nsync == 0 {
                        prop_assert!(t.user_state().is_empty());
                    } else {
                        prop_assert_eq!(t.user_state(), &nsync.to_le_bytes()[..]);
                    }
                }
                Op::ForEach => prop_assert_eq!(contents(&mut t), cur.clone()),
            }
        }
        check(&mut t, &cur, 24);
        let s = t.store().crashed();
        let mut t = Tree::open(s, cfg).unwrap();
        check(&mut t, &synced, 24);
    }
}

/// All logs of the tree's tags, for leak checks.
fn tree_logs(s: &MemStore) -> usize {
    (0..7u8)
        .map(|l| s.logs_with_tag_count(table_tag(l)))
        .sum::<usize>()
        + s.logs_with_tag_count(TAG_WAL)
}

#[test]
fn no_leaked_logs_after_compaction() {
    let cfg = LsmConfig::tiny();
    let mut t = Tree::format(MemStore::default(), cfg.clone()).unwrap();
    for i in 0..2000u64 {
        t.put(i % 50, TestVal(i)).unwrap();
        if i % 2 == 0 {
            t.compact_step().unwrap();
        }
        if i % 97 == 0 {
            t.sync(b"").unwrap();
        }
    }
    while t.compact_step().unwrap() {}
    t.sync(b"").unwrap();
    let st = t.stats();
    let tables: u32 = st.tables.iter().sum();
    let s = t.into_store();
    // tables + at most two WALs
    assert!(
        tree_logs(&s) <= tables as usize + 2,
        "{} logs, {st:?}",
        tree_logs(&s)
    );
    // A sync in the middle of a flush or compaction commits output logs
    // without footers: open deletes them (with the next sync).
    let mut t = Tree::open(s, cfg.clone()).unwrap();
    // Scattered keys, written between the syncs: their tables overlap the
    // ones below, so compactions rewrite them (keys in order would only
    // move tables down, with no output to orphan).
    let key = |n: u64| 1000 + (n * 97) % 300;
    let mut orphans_seen = false;
    for i in 0..50u64 {
        for j in 0..6 {
            t.put(key(i * 6 + j), TestVal(i * 6 + j)).unwrap();
        }
        for _ in 0..(i % 5 + 1) {
            t.compact_step().unwrap();
        }
        t.sync(b"mid").unwrap();
        let s = t.into_store();
        let before = tree_logs(&s);
        t = Tree::open(s, cfg.clone()).unwrap();
        t.sync(b"mid").unwrap();
        let st = t.stats();
        let tables: u32 = st.tables.iter().sum();
        let after = tree_logs(t.store());
        assert!(after <= tables as usize + 2, "{after} logs, {st:?}");
        orphans_seen |= after < before;
    }
    assert!(orphans_seen);
    let model: BTreeMap<u64, u64> = (0..50)
        .map(|k| (k, 1950 + k))
        .chain((0..300).map(|i| (key(i), i)))
        .collect();
    check(&mut t, &model, 1300);
}

/// A failure of the Nth store call, for every N of a workload: the call
/// returns the error, the tree refuses further work, and a reopen gives the
/// last synced state (or the one whose commit failed, if it got through).
#[test]
fn store_failure_at_every_call() {
    let cfg = LsmConfig::tiny();
    let mut cases = 0;
    for n in 1..400u32 {
        let mut t = Tree::format(MemStore::default(), cfg.clone()).unwrap();
        let mut s = t.into_store();
        s.fail_in = Some(n);
        t = Tree::open(s, cfg.clone()).unwrap();
        let mut cur = BTreeMap::new();
        let mut synced = BTreeMap::new();
        let mut in_flight = None;
        let mut failed = false;
        for i in 0..120u64 {
            let k = (i * 11) % 29;
            let r = (|| {
                if i % 6 == 5 {
                    t.delete(k)?;
                    cur.remove(&k);
                } else {
                    t.put(k, TestVal(i))?;
                    cur.insert(k, i);
                }
                if i % 2 == 0 {
                    t.compact_step()?;
                }
                if i % 10 == 9 {
                    in_flight = Some(cur.clone());
                    t.sync(b"s")?;
                    in_flight = None;
                    synced = cur.clone();
                }
                Ok::<(), crate::Error>(())
            })();
            if r.is_err() {
                failed = true;
                assert_eq!(
                    t.put(1, TestVal(1)).unwrap_err().kind(),
                    ErrorKind::InvalidState
                );
                break;
            }
        }
        let s = t.store().crashed();
        let mut t = Tree::open(s, cfg.clone()).unwrap();
        let got = contents(&mut t);
        assert!(
            got == synced || Some(&got) == in_flight.as_ref(),
            "n={n}: reopened to an unsynced state"
        );
        cases += 1;
        if !failed {
            break;
        }
    }
    eprintln!("store failure points: {cases}");
    assert!(cases > 50, "{cases}");
}

/// The configuration may change between opens (a smaller memtable than the
/// replayed WAL holds is frozen at the next update).
#[test]
fn config_change_between_opens() {
    let mut big = LsmConfig::tiny();
    big.memtable_entries = 64;
    let mut t = Tree::format(MemStore::default(), big).unwrap();
    let model: BTreeMap<u64, u64> = (0..50).map(|k| (k, k + 7)).collect();
    for (k, v) in &model {
        t.put(*k, TestVal(*v)).unwrap();
    }
    t.sync(b"").unwrap();
    let mut t = Tree::open(t.into_store(), LsmConfig::tiny()).unwrap();
    assert_eq!(t.stats().memtable_entries, 50);
    t.put(3, TestVal(10)).unwrap();
    let mut model = model;
    model.insert(3, 10);
    while t.compact_step().unwrap() {}
    check(&mut t, &model, 60);
    t.sync(b"").unwrap();
    let mut t = Tree::open(t.into_store(), LsmConfig::tiny()).unwrap();
    check(&mut t, &model, 60);
}

/// A sync per update appends a partly filled WAL block each time: the WAL
/// still stays bounded (the memtable freezes after `wal_max_blocks`).
#[test]
fn wal_bounded_under_frequent_syncs() {
    let cfg = LsmConfig::tiny();
    let mut t = Tree::format(MemStore::default(), cfg.clone()).unwrap();
    for i in 0..200u64 {
        t.put(i % 3, TestVal(i)).unwrap();
        t.sync(b"").unwrap();
        t.compact_step().unwrap();
        let s = t.store();
        let wal_blocks: u64 = s.wal_blocks();
        assert!(
            wal_blocks <= 2 * cfg.wal_max_blocks,
            "{wal_blocks} WAL blocks"
        );
    }
    let model: BTreeMap<u64, u64> = [(0, 198), (1, 199), (2, 197)].into_iter().collect();
    let mut t = Tree::open(t.into_store(), cfg).unwrap();
    check(&mut t, &model, 5);
}

#[test]
fn bloom_filters_and_cache_answer_lookups() {
    let mut cfg = LsmConfig::tiny();
    cfg.meta_cache_blocks = 64;
    cfg.data_cache_blocks = 64;
    let mut t = Tree::format(MemStore::default(), cfg).unwrap();
    for k in 0..64u64 {
        t.put(k * 2, TestVal(k)).unwrap();
    }
    while t.compact_step().unwrap() {}
    for _ in 0..2 {
        for k in 0..128u64 {
            let want = (k % 2 == 0).then_some(TestVal(k / 2));
            assert_eq!(t.get(k).unwrap(), want);
        }
    }
    let st = t.stats();
    assert!(st.bloom_negatives > 32, "{st:?}");
    assert!(st.cache_hits > st.cache_misses, "{st:?}");
}

/// A caller that never runs `compact_step`: updates stall to compact, so
/// L0 stays bounded and the contents stay right.
#[test]
fn without_compact_steps_l0_stays_bounded() {
    let cfg = LsmConfig::tiny();
    let mut t = Tree::format(MemStore::default(), cfg.clone()).unwrap();
    let mut model = BTreeMap::new();
    for i in 0..3000u64 {
        let k = (i * 7919) % 500;
        t.put(k, TestVal(i)).unwrap();
        model.insert(k, i);
        assert!(t.stats().tables[0] as usize <= 2 * cfg.l0_max_tables);
    }
    let st = t.stats();
    assert!(st.stalls > 0, "{st:?}");
    check(&mut t, &model, 500);
}

/// The data blocks a flush or a warm compaction writes go into the data
/// cache: right after the tree was built, every lookup finds its data
/// block there (no store read). After a reopen the cache is cold, and the
/// same lookups read every data block, so the first check can fail.
#[test]
fn written_tables_stay_in_the_data_cache() {
    let mut cfg = LsmConfig::tiny();
    cfg.data_cache_blocks = 4096;
    cfg.pinned_meta_blocks = 4096;
    let mut t = Tree::format(MemStore::default(), cfg.clone()).unwrap();
    let mut model = BTreeMap::new();
    for i in 0..2000u64 {
        let k = (i * 7919) % 600;
        t.put(k, TestVal(i)).unwrap();
        model.insert(k, i);
        t.compact_step().unwrap();
    }
    while t.compact_step().unwrap() {}
    let st = t.stats();
    assert!(st.compactions > 10, "{st:?}");
    let lookups = |t: &mut Tree| {
        let before = t.stats().data_cache_misses;
        for k in 0..600u64 {
            assert_eq!(t.get(k).unwrap().map(|v| v.0), model.get(&k).copied());
        }
        t.stats().data_cache_misses - before
    };
    assert_eq!(lookups(&mut t), 0, "{:?}", t.stats());
    t.sync(b"").unwrap();
    let mut t = Tree::open(t.into_store(), cfg).unwrap();
    assert!(lookups(&mut t) > 10, "{:?}", t.stats());
}

/// Keys written in order fill tables that overlap nothing below them: the
/// due compactions become moves, so every record is written into a table
/// once (by its flush) instead of once per level. The moved tables' logs
/// keep the tag of the level they were written at, and a reopen (after
/// syncs at every point of the fill) still finds every table. Random keys
/// after that still compact (their tables overlap), and the contents stay
/// right throughout.
#[test]
fn keys_in_order_move_tables_down_without_rewriting_them() {
    let cfg = LsmConfig::tiny();
    let mut t = Tree::format(MemStore::default(), cfg.clone()).unwrap();
    let mut model = BTreeMap::new();
    let n = 600u64;
    for k in 0..n {
        t.put(k, TestVal(k)).unwrap();
        model.insert(k, k);
        t.compact_step().unwrap();
        if k % 41 == 0 {
            t.sync(b"fill").unwrap();
            t = Tree::open(t.into_store(), cfg.clone()).unwrap();
        }
    }
    while t.compact_step().unwrap() {}
    let st = t.stats();
    let deep = st.tables.iter().skip(2).sum::<u32>();
    assert!(st.moves > 10 && deep > 0, "{st:?}");
    // Every record written once by a flush; the compactions that are
    // left merged at most the last few small tables.
    assert!(
        st.records_written < n + n / 4,
        "{} records written for {n} keys: {st:?}",
        st.records_written
    );
    check(&mut t, &model, n + 10);
    t.sync(b"filled").unwrap();
    let mut t = Tree::open(t.into_store(), cfg.clone()).unwrap();
    check(&mut t, &model, n + 10);
    let before = t.stats();
    for i in 0..400u64 {
        let k = (i * 7919) % n;
        t.put(k, TestVal(n + i)).unwrap();
        model.insert(k, n + i);
        t.compact_step().unwrap();
    }
    while t.compact_step().unwrap() {}
    let st = t.stats();
    assert!(st.compactions > before.compactions, "{st:?}");
    check(&mut t, &model, n + 10);
    t.sync(b"mixed").unwrap();
    let s = t.into_store();
    let tables = {
        let mut t = Tree::open(s, cfg.clone()).unwrap();
        check(&mut t, &model, n + 10);
        t.sync(b"again").unwrap();
        let tables: u32 = t.stats().tables.iter().sum();
        (tables, tree_logs(t.store()))
    };
    // No log leaked by the moves (tables + at most two WALs).
    assert!(tables.1 <= tables.0 as usize + 2, "{tables:?}");
}

/// 3000 updates of 900 keys, each followed by a compaction step, with a
/// lookup every seventh; `after` runs after each put, step and lookup
/// (with what was just done), and the model follows the updates.
fn churn(t: &mut Tree, model: &mut BTreeMap<u64, u64>, mut after: impl FnMut(&Tree, &str)) {
    for i in 0..3000u64 {
        let k = (i * 7919) % 900;
        t.put(k, TestVal(i)).unwrap();
        model.insert(k, i);
        after(t, "put");
        t.compact_step().unwrap();
        after(t, "compaction step");
        if i % 7 == 0 {
            let q = (i * 104_729) % 900;
            assert_eq!(t.get(q).unwrap().map(|v| v.0), model.get(&q).copied());
            after(t, "get");
        }
    }
}

/// With `lend_pinned_room`, the data cache holds more than
/// `data_cache_blocks` while the pinned set does not fill its room, and
/// gives that room back block by block as tables are pinned: after every
/// update, compaction step and lookup, pinned and data blocks together
/// stay within `pinned_meta_blocks + data_cache_blocks`. Without it the
/// data cache never holds more than its own size. The contents stay right
/// either way, also after a reopen.
#[test]
fn the_data_cache_uses_the_room_the_pinned_set_leaves() {
    for lend in [true, false] {
        let mut cfg = LsmConfig::tiny();
        cfg.data_cache_blocks = 8;
        cfg.pinned_meta_blocks = 48;
        cfg.lend_pinned_room = lend;
        let total = (cfg.data_cache_blocks + cfg.pinned_meta_blocks) as u64;
        let within = |t: &Tree, at: &str| {
            let st = t.stats();
            if lend {
                assert!(
                    st.pinned_blocks + st.data_blocks_cached <= total,
                    "{at}: {} pinned + {} data > {total}",
                    st.pinned_blocks,
                    st.data_blocks_cached
                );
            } else {
                assert!(st.data_blocks_cached <= 8, "{at}: {st:?}");
            }
        };
        let mut t = Tree::format(MemStore::default(), cfg.clone()).unwrap();
        let mut model = BTreeMap::new();
        let mut most = 0u64;
        let mut most_pinned = 0u64;
        churn(&mut t, &mut model, |t, at| {
            within(t, at);
            let st = t.stats();
            most = most.max(st.data_blocks_cached);
            most_pinned = most_pinned.max(st.pinned_blocks);
        });
        while t.compact_step().unwrap() {}
        for k in 0..900u64 {
            assert_eq!(t.get(k).unwrap().map(|v| v.0), model.get(&k).copied());
            within(&t, "lookup");
            most = most.max(t.stats().data_blocks_cached);
        }
        assert!(most_pinned > 8, "the test wants tables that pin blocks");
        if lend {
            assert!(most > 8, "the data cache never used the pinned room");
        }
        t.sync(b"").unwrap();
        let mut t = Tree::open(t.into_store(), cfg).unwrap();
        check(&mut t, &model, 900);
        within(&t, "reopened");
    }
}

/// With a node cache share (`node_cache_nodes`) and `lend_pinned_room`,
/// the tree caps the store's node cache at the nodes its logs have and
/// lends the rest of the share to the data cache: after every update,
/// compaction step and lookup the node cache's capacity, the data cache's
/// limit and the pinned blocks stay within the three shares together; the
/// data cache's limit goes beyond its own share plus the pinned room; the
/// node cache's capacity follows the tree as it grows (never above the
/// share, never below what the logs had at the last install). A share
/// smaller than the logs' nodes lends nothing. Contents stay right, also
/// after a reopen.
#[test]
fn the_data_cache_uses_the_room_the_node_cache_leaves() {
    for share in [64usize, 4] {
        let mut cfg = LsmConfig::tiny();
        cfg.data_cache_blocks = 8;
        cfg.pinned_meta_blocks = 16;
        cfg.lend_pinned_room = true;
        cfg.node_cache_nodes = share;
        let total = (cfg.data_cache_blocks + cfg.pinned_meta_blocks + share) as u64;
        let within = |t: &Tree, at: &str| -> (u64, u64) {
            let st = t.stats();
            let cap = t.store().node_cache.expect("a node cache") as u64;
            assert_eq!(cap, share as u64 - st.node_blocks_lent, "{at}: {st:?}");
            assert!(
                cap + st.data_cache_limit + st.pinned_blocks <= total,
                "{at}: {cap} nodes + {} data + {} pinned > {total}",
                st.data_cache_limit,
                st.pinned_blocks
            );
            assert!(st.data_blocks_cached <= st.data_cache_limit, "{at}: {st:?}");
            (cap, st.data_cache_limit)
        };
        let mut store = MemStore::default();
        store.node_cache = Some(share);
        let mut t = Tree::format(store, cfg.clone()).unwrap();
        let (first_cap, _) = within(&t, "format");
        let mut model = BTreeMap::new();
        let (mut most_cap, mut most_limit) = (0u64, 0u64);
        churn(&mut t, &mut model, |t, at| {
            let (cap, limit) = within(t, at);
            most_cap = most_cap.max(cap);
            most_limit = most_limit.max(limit);
        });
        while t.compact_step().unwrap() {}
        let (cap, _) = within(&t, "compacted");
        let need = t.store().node_cache_need().unwrap();
        assert!(
            cap == share as u64 || cap + 8 >= need,
            "the node cache ({cap}) holds far fewer than the logs' {need} nodes"
        );
        check(&mut t, &model, 900);
        within(&t, "lookups");
        if share == 64 {
            assert!(
                first_cap < most_cap,
                "the node cache's capacity never grew with the tree: {first_cap}"
            );
            assert!(
                most_limit > (cfg.data_cache_blocks + cfg.pinned_meta_blocks) as u64,
                "the data cache never used the node cache's room: {most_limit}"
            );
        } else {
            assert_eq!(most_cap, share as u64, "a small share is all used");
        }
        t.sync(b"").unwrap();
        let mut t = Tree::open(t.into_store(), cfg).unwrap();
        check(&mut t, &model, 900);
        within(&t, "reopened");
    }
}
