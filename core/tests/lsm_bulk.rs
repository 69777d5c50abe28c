//! A bigger workload with medium limits: multi-block tables, several
//! levels, cache evictions, frequent syncs; checked against a model, then
//! after a reopen.

mod lsm_util;

use std::collections::BTreeMap;

use lsm_util::*;
use mlsdisk_core::lsm::LsmConfig;

fn cfg() -> LsmConfig {
    let mut c = LsmConfig::default();
    c.memtable_entries = 700;
    c.wal_max_blocks = 40;
    c.meta_cache_blocks = 16;
    c.data_cache_blocks = 8;
    c.l0_max_tables = 3;
    c.l1_max_records = 3000;
    c.level_ratio = 4;
    c.table_max_records = 1500;
    c.step_records = 300;
    c
}

#[test]
fn bulk_random_updates() {
    let (ops, keys) = if long() {
        (300_000u64, 60_000u64)
    } else {
        (24_000, 6_000)
    };
    let (mem, root) = fresh_disk();
    let mut t = open(&mem, &root, cfg()).unwrap();
    let mut model = BTreeMap::new();
    let mut rng = Rng(0xb01c);
    for i in 0..ops {
        let k = rng.below(keys);
        match rng.below(10) {
            0 => {
                t.delete(k).unwrap();
                model.remove(&k);
            }
            1 => assert_eq!(t.get(k).unwrap().map(|v| v.0), model.get(&k).copied()),
            _ => {
                t.put(k, Val(i)).unwrap();
                model.insert(k, i);
            }
        }
        if i % 8 == 0 {
            t.compact_step().unwrap();
        }
        if i % 1000 == 999 {
            t.sync(b"bulk").unwrap();
        }
    }
    t.sync(b"bulk").unwrap();
    let st = t.stats();
    eprintln!("{st:?}");
    assert!(st.tables.iter().filter(|&&n| n > 0).count() >= 2, "{st:?}");
    compare(&mut t, &model, keys).unwrap();
    let root = t.store().root();
    drop(t);
    let mut t = open(&mem, &root, cfg()).unwrap();
    compare(&mut t, &model, keys).unwrap();
    while t.compact_step().unwrap() {}
    compare(&mut t, &model, keys).unwrap();
}
