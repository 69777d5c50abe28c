//! I/O errors of the backing device surface as errors (no panic, no wrong
//! data); after the device heals, a reopen gives the last synced state.

mod lsm_util;

use std::collections::BTreeMap;
use std::sync::Arc;

use lsm_util::*;
use mlsdisk_core::bio::{FaultDisk, IoKind, MemDisk};

type Dev = Arc<FaultDisk<Arc<MemDisk>>>;

#[test]
fn failing_reads_writes_and_flushes() {
    let mut cases = 0;
    let mut errors = 0;
    for kind in [IoKind::Write, IoKind::Flush, IoKind::Read] {
        for nth in (0..60u64).step_by(if long() { 1 } else { 15 }) {
            let (mem, mut root) = fresh_disk();
            let dev: Dev = Arc::new(FaultDisk::new(mem));
            let mut t = open(&dev, &root, lsm_cfg()).unwrap();
            let mut cur = BTreeMap::new();
            let mut synced = BTreeMap::new();
            let mut in_flight = None;
            dev.fail_nth(kind, nth, false).unwrap();
            let mut failed = false;
            for i in 0..150u64 {
                let k = (i * 13) % 37;
                let r = (|| {
                    t.put(k, Val(i))?;
                    cur.insert(k, i);
                    if i % 2 == 0 {
                        t.compact_step()?;
                    }
                    if i % 3 == 0 {
                        let v = t.get((i * 7) % 37)?;
                        assert_eq!(v.map(|v| v.0), cur.get(&((i * 7) % 37)).copied());
                    }
                    if i % 10 == 9 {
                        in_flight = Some(cur.clone());
                        t.sync(b"s")?;
                        in_flight = None;
                        root = t.store().root();
                        synced = cur.clone();
                    }
                    Ok::<(), mlsdisk_core::Error>(())
                })();
                if r.is_err() {
                    failed = true;
                    break;
                }
            }
            drop(t);
            dev.heal().unwrap();
            if failed {
                errors += 1;
            }
            // A failed sync may or may not have committed; either state is
            // fine, nothing else is.
            let mut t = open(&dev, &root, lsm_cfg()).unwrap();
            let got = contents(&mut t).unwrap();
            assert!(
                got == synced || Some(&got) == in_flight.as_ref(),
                "{kind:?} {nth}: reopened to an unsynced state"
            );
            cases += 1;
        }
    }
    eprintln!("io-error cases: {cases}, {errors} with an error surfaced");
    assert!(errors > 0);
}
