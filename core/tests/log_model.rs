//! TxLogStore against a model: random operations over a few logs, with
//! commits, aborts, crashes (a random subset of unflushed writes persisted)
//! and clean reopens. After every step the store must agree with the model;
//! chunk accounting must survive reopen and abort unchanged (no leaks).

mod log_util;

use std::sync::Arc;

use log_util::*;
use mlsdisk_core::bio::{CrashDisk, MemDisk};
use mlsdisk_core::log::{LogId, StoreRoot, StoreStats};
use mlsdisk_core::ErrorKind;
use proptest::prelude::*;

type D = Arc<CrashDisk<Arc<MemDisk>>>;

#[derive(Clone, Debug)]
enum Op {
    Begin,
    Create(u64),
    Append(u8, u32, usize),
    Seal(u8),
    Delete(u8),
    Read(u8, u16),
    Commit(u8),
    Abort,
    Crash(u64),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Begin),
        2 => (0..TAGS).prop_map(Op::Create),
        5 => (any::<u8>(), any::<u32>(), 1usize..7).prop_map(|(l, s, n)| Op::Append(l, s, n)),
        1 => any::<u8>().prop_map(Op::Seal),
        1 => any::<u8>().prop_map(Op::Delete),
        2 => (any::<u8>(), any::<u16>()).prop_map(|(l, p)| Op::Read(l, p)),
        3 => any::<u8>().prop_map(Op::Commit),
        1 => Just(Op::Abort),
        1 => any::<u64>().prop_map(Op::Crash),
        1 => Just(Op::Reopen),
    ]
}

fn pick(h: &Harness<D>, sel: u8) -> Option<LogId> {
    let logs = h.live_logs();
    if logs.is_empty() {
        None
    } else {
        Some(logs[sel as usize % logs.len()])
    }
}

fn chunk_stats(s: &StoreStats) -> (u32, u32, usize, u64) {
    (s.chunks_used, s.chunks_free, s.logs, s.commit_count)
}

fn run(ops: Vec<Op>) {
    let cd: D = Arc::new(CrashDisk::new(Arc::new(MemDisk::new(DISK_BLOCKS).unwrap())));
    let mut h = Harness::new(format(&cd), Model::default());
    let mut root: StoreRoot = h.store.root();
    let mut stats = chunk_stats(&h.store.stats());
    let mut buf = vec![0u8; 4096];
    for (i, op) in ops.into_iter().enumerate() {
        let in_tx = h.tx.is_some();
        let ctx = format!("step {i}: {op:?}");
        match op {
            Op::Begin => {
                let r = h.begin();
                assert_eq!(r.is_ok(), !in_tx, "{ctx}");
            }
            Op::Create(tag) => {
                if in_tx {
                    h.create(tag).unwrap();
                } else {
                    assert_eq!(
                        h.store.create_log(tag).unwrap_err().kind(),
                        ErrorKind::InvalidState
                    );
                }
            }
            Op::Append(sel, seed, n) => {
                let Some(id) = pick(&h, sel) else { continue };
                if !in_tx {
                    assert!(h.store.append(id, &vec![0; 4096]).is_err(), "{ctx}");
                    continue;
                }
                if h.view().logs[&id.0].sealed {
                    let e = h.store.append(id, &vec![0; 4096]).unwrap_err();
                    assert_eq!(e.kind(), ErrorKind::InvalidState, "{ctx}");
                    continue;
                }
                match h.append(id, seed, n) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NoSpace => {
                        h.abort();
                        assert_eq!(chunk_stats(&h.store.stats()), stats, "{ctx}: abort leaked");
                    }
                    Err(e) => panic!("{ctx}: {e:?}"),
                }
            }
            Op::Seal(sel) => {
                let Some(id) = pick(&h, sel) else { continue };
                if in_tx {
                    h.seal(id).unwrap();
                }
            }
            Op::Delete(sel) => {
                let Some(id) = pick(&h, sel) else { continue };
                if in_tx {
                    h.delete(id).unwrap();
                    assert_eq!(h.store.log_len(id).unwrap_err().kind(), ErrorKind::NotFound);
                }
            }
            Op::Read(sel, p) => {
                let Some(id) = pick(&h, sel) else { continue };
                let l = &h.view().logs[&id.0];
                if l.blocks.is_empty() {
                    assert!(h.store.read(id, 0, &mut buf).is_err());
                    continue;
                }
                let p = p as usize % l.blocks.len();
                h.store.read(id, p as u64, &mut buf).unwrap();
                assert!(buf == content(l.blocks[p], p), "{ctx}: wrong data");
            }
            Op::Commit(b) => {
                if !in_tx {
                    assert!(h.store.commit(&[b]).is_err());
                    continue;
                }
                h.commit(&[b; 3]).unwrap();
                root = h.store.root();
                stats = chunk_stats(&h.store.stats());
            }
            Op::Abort => {
                h.abort();
                assert_eq!(chunk_stats(&h.store.stats()), stats, "{ctx}: abort leaked");
            }
            Op::Crash(seed) => {
                let committed = h.committed.clone();
                drop(h);
                cd.crash(&move |i| (seed >> (i % 64)) & 1 == 1).unwrap();
                h = Harness::new(open(&cd, &root).unwrap(), committed);
                assert_eq!(chunk_stats(&h.store.stats()), stats, "{ctx}: reopen stats");
            }
            Op::Reopen => {
                let committed = h.committed.clone();
                drop(h);
                h = Harness::new(open(&cd, &root).unwrap(), committed);
                assert_eq!(chunk_stats(&h.store.stats()), stats, "{ctx}: reopen stats");
            }
        }
        if let Err(e) = check(&h.store, h.view(), false) {
            panic!("{ctx}: {e}");
        }
    }
    // Finally: a clean reopen shows exactly the committed model.
    let committed = h.committed.clone();
    drop(h);
    let s = open(&cd, &root).unwrap();
    check(&s, &committed, true).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if long() { 512 } else { 48 },
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops);
    }
}
