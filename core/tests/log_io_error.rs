//! TxLogStore with a failing device: every injected read, write or flush
//! error comes back as an error (no panic), and the store reopens afterwards
//! to the last committed state or the state of the commit that failed.

mod log_util;

use std::sync::Arc;

use log_util::*;
use mlsdisk_core::bio::{FaultDisk, IoKind, MemDisk};
use mlsdisk_core::log::StoreRoot;
use mlsdisk_core::{ErrorKind, Result};

type D = Arc<FaultDisk<Arc<MemDisk>>>;

/// Runs a small workload; returns (last committed model, its root, the
/// model of a commit that failed, if any) and the first error.
fn run(h: &mut Harness<D>) -> (Model, StoreRoot, Option<Model>, Result<()>) {
    let mut last = (h.committed.clone(), h.store.root());
    let mut failed_commit = None;
    let r = (|| -> Result<()> {
        let mut buf = vec![0u8; 4096];
        for round in 0..4u32 {
            h.begin()?;
            let l = h.create(u64::from(round % TAGS as u32))?;
            h.append(l, round, 3 + round as usize * 4)?;
            for id in h.live_logs() {
                if h.view().logs[&id.0].blocks.is_empty() {
                    continue;
                }
                // Reads inside the transaction, committed and own data.
                h.store.read(id, 0, &mut buf)?;
            }
            if round == 2 {
                let first = h.live_logs()[0];
                h.delete(first)?;
            }
            let mut m = h.tx.clone().unwrap();
            m.user_state = vec![round as u8];
            failed_commit = Some(m);
            h.commit(&[round as u8])?;
            failed_commit = None;
            last = (h.committed.clone(), h.store.root());
        }
        Ok(())
    })();
    (last.0, last.1, failed_commit, r)
}

#[test]
fn every_io_error_is_an_error_and_the_store_reopens() {
    let mut total_cases = 0;
    for kind in [IoKind::Read, IoKind::Write, IoKind::Flush] {
        for sticky in [false, true] {
            let step = if long() || kind == IoKind::Flush {
                1
            } else {
                4
            };
            let mut nth = 0u64;
            loop {
                let mem = Arc::new(MemDisk::new(DISK_BLOCKS).unwrap());
                let disk: D = Arc::new(FaultDisk::new(mem));
                let store = format(&disk);
                disk.fail_nth(kind, nth, sticky).unwrap();
                let mut h = Harness::new(store, Model::default());
                let (model, root, in_flight, r) = run(&mut h);
                let hit = disk.failed_count() > 0;
                if !hit {
                    r.unwrap();
                    break;
                }
                total_cases += 1;
                let e = r.expect_err("an injected fault was swallowed");
                assert!(
                    matches!(e.kind(), ErrorKind::Io | ErrorKind::InvalidState),
                    "{kind:?} #{nth}: {e:?}"
                );
                // The running store: abort works, and (unless a commit broke
                // it) it can go on once the device heals.
                h.abort();
                disk.heal().unwrap();
                if h.store.begin().is_ok() {
                    h.store.abort();
                }
                drop(h);
                let s =
                    open(&disk, &root).unwrap_or_else(|e| panic!("{kind:?} #{nth}: reopen: {e:?}"));
                let ok = check(&s, &model, true).is_ok()
                    || in_flight
                        .as_ref()
                        .is_some_and(|m| check(&s, m, true).is_ok());
                assert!(
                    ok,
                    "{kind:?} #{nth} sticky {sticky}: {:?}",
                    check(&s, &model, true)
                );
                nth += step;
            }
        }
    }
    eprintln!("log_io_error: {total_cases} injected-fault runs");
    assert!(total_cases > 10);
}

#[test]
fn a_failed_read_does_not_disturb_the_transaction() {
    let mem = Arc::new(MemDisk::new(DISK_BLOCKS).unwrap());
    let disk: D = Arc::new(FaultDisk::new(mem));
    let mut h = Harness::new(format(&disk), Model::default());
    h.begin().unwrap();
    let l = h.create(0).unwrap();
    h.append(l, 1, 3).unwrap();
    disk.fail_nth(IoKind::Read, 0, false).unwrap();
    let mut buf = vec![0u8; 4096];
    assert_eq!(
        h.store.read(l, 1, &mut buf).unwrap_err().kind(),
        ErrorKind::Io
    );
    h.commit(b"ok").unwrap();
    let s = open(&disk, &h.store.root()).unwrap();
    check(&s, &h.committed, true).unwrap();
}

#[test]
fn a_failed_append_fails_the_transaction_until_aborted() {
    let mem = Arc::new(MemDisk::new(DISK_BLOCKS).unwrap());
    let disk: D = Arc::new(FaultDisk::new(mem));
    let mut h = Harness::new(format(&disk), Model::default());
    h.begin().unwrap();
    let l = h.create(0).unwrap();
    disk.fail_nth(IoKind::Write, 1, false).unwrap();
    assert!(h.append(l, 1, 3).is_err());
    let e = h.store.commit(b"x").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState);
    h.abort();
    h.begin().unwrap();
    let l = h.create(0).unwrap();
    h.append(l, 1, 3).unwrap();
    h.commit(b"y").unwrap();
    let s = open(&disk, &h.store.root()).unwrap();
    check(&s, &h.committed, true).unwrap();
}
