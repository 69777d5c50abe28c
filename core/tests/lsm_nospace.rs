//! A store too small for the tree: updates end with a clear error (never a
//! panic or a hang), and the disk reopens to its last synced state.

mod lsm_util;

use std::collections::BTreeMap;
use std::sync::Arc;

use lsm_util::*;
use mlsdisk_core::bio::{BlockRange, MemDisk};
use mlsdisk_core::log::TxLogStore;
use mlsdisk_core::lsm::TxLsmTree;
use mlsdisk_core::ErrorKind;

#[test]
fn full_store_fails_cleanly() {
    // 24 chunks of 8 blocks: room for a few small tables only.
    let chunks = 24 * u64::from(CHUNK_BLOCKS);
    let mem = Arc::new(MemDisk::new(JOURNAL + chunks).unwrap());
    let regions = || {
        (
            BlockRange::new(mem.clone(), 0, JOURNAL).unwrap(),
            BlockRange::new(mem.clone(), JOURNAL, chunks).unwrap(),
        )
    };
    let (j, c) = regions();
    let store = TxLogStore::format(j, c, crypto(), KEY, store_cfg()).unwrap();
    let mut t = TxLsmTree::<_, Val>::format(store, lsm_cfg()).unwrap();
    let mut root = t.store().root();
    let mut model = BTreeMap::new();
    let mut synced = BTreeMap::new();
    let mut err = None;
    for i in 0..100_000u64 {
        let r = (|| {
            t.put(i, Val(i))?;
            model.insert(i, i);
            t.compact_step()?;
            if i % 10 == 9 {
                t.sync(b"")?;
                root = t.store().root();
                synced = model.clone();
            }
            Ok::<(), mlsdisk_core::Error>(())
        })();
        if let Err(e) = r {
            err = Some(e);
            break;
        }
    }
    let e = err.expect("a full store must fail");
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e:?}");
    // The tree refuses further updates rather than losing them.
    assert!(t.put(1, Val(1)).is_err());
    drop(t);
    let (j, c) = regions();
    let store = TxLogStore::open(j, c, crypto(), KEY, &root).unwrap();
    let mut t = TxLsmTree::<_, Val>::open(store, lsm_cfg()).unwrap();
    let keys = synced.keys().max().map_or(0, |k| k + 1);
    compare(&mut t, &synced, keys).unwrap();
    eprintln!("store full after {} synced keys", synced.len());
}
