//! I/O errors of the backing device surface as errors (never wrong data,
//! never a panic or a hang); the disk stops, and reopening it recovers the
//! last synced state.

mod disk_common;

use disk_common::*;
use mlsdisk_core::bio::{IoKind, BLOCK_SIZE};
use mlsdisk_core::ErrorKind;

fn synced(backend: Backend) -> (Harness, u64) {
    let mut h = Harness::new(backend, small_cfg());
    let cap = h.disk().nblocks();
    h.disk().write(0, &blocks(0, cap, 1)).unwrap();
    h.disk().sync().unwrap();
    (h, cap)
}

fn verify(h: &mut Harness, cap: u64, ok: impl Fn(u64, &[u8]) -> bool) {
    let mut b = vec![0u8; BLOCK_SIZE];
    for l in 0..cap {
        h.disk().read(l, &mut b).unwrap();
        assert!(ok(l, &b), "lba {l}");
    }
}

fn fault_case(backend: Backend, kind: IoKind, nth: u64) {
    let (mut h, cap) = synced(backend);
    h.fault.fail_nth(kind, nth, true).unwrap();
    // A workload that reads, writes and syncs until the fault hits.
    let mut err = None;
    let mut b = vec![0u8; BLOCK_SIZE];
    'outer: for round in 0..200u64 {
        for l in 0..cap {
            let r = h
                .disk()
                .write(l, &blocks(l, 1, 2 + round % 4))
                .and_then(|()| h.disk().read((l * 7) % cap, &mut b));
            if let Err(e) = r {
                err = Some(e);
                break 'outer;
            }
        }
        if let Err(e) = h.disk().sync() {
            err = Some(e);
            break;
        }
    }
    let e = err.expect("the fault must surface");
    assert_eq!(e.kind(), ErrorKind::Io, "{e:?}");
    // The stopped disk refuses further requests instead of guessing.
    if h.disk().failure().is_some() {
        assert!(h.disk().write(0, &blocks(0, 1, 9)).is_err());
        assert!(h.disk().sync().is_err());
    }
    // Reopen on a healed device: every block holds one whole synced version.
    h.crash_and_reopen().unwrap();
    verify(&mut h, cap, |l, b| (1..6).any(|t| check(b, l, t)));
}

fn read_write_and_flush_faults_surface_and_recover_on(backend: Backend) {
    let n = if long() { 60 } else { 16 };
    for nth in 0..n {
        for kind in [IoKind::Read, IoKind::Write, IoKind::Flush] {
            fault_case(backend, kind, nth);
        }
    }
}

fn single_read_fault_is_an_error_not_zeros_on(backend: Backend) {
    let (mut h, _) = synced(backend);
    h.fault.fail_nth(IoKind::Read, 0, false).unwrap();
    let mut b = vec![0x77u8; BLOCK_SIZE];
    let e = h.disk().read(3, &mut b).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(b.iter().all(|&x| x == 0), "no partial data on error");
}

#[test]
fn read_write_and_flush_faults_surface_and_recover_mem_index() {
    read_write_and_flush_faults_surface_and_recover_on(Backend::MemIndex);
}

#[test]
fn read_write_and_flush_faults_surface_and_recover_lsm_index() {
    read_write_and_flush_faults_surface_and_recover_on(Backend::Lsm);
}

#[test]
fn single_read_fault_is_an_error_not_zeros_mem_index() {
    single_read_fault_is_an_error_not_zeros_on(Backend::MemIndex);
}

#[test]
fn single_read_fault_is_an_error_not_zeros_lsm_index() {
    single_read_fault_is_an_error_not_zeros_on(Backend::Lsm);
}
