//! Attacks on the structures of the disk: every tampered, replayed,
//! swapped or moved block gives an error, never wrong or stale data.

mod disk_common;

use disk_common::*;
use mlsdisk_core::bio::BLOCK_SIZE;
use mlsdisk_core::ErrorKind;

const N: u64 = 24;

fn setup(backend: Backend) -> Harness {
    let mut h = Harness::new(backend, small_cfg());
    h.disk().write(0, &blocks(0, N, 1)).unwrap();
    h.disk().sync().unwrap();
    h
}

/// Reads every block of 0..N: Ok blocks must hold `tag`; returns the LBAs
/// that failed (with Integrity).
fn sweep(h: &mut Harness, tag: impl Fn(u64) -> u64) -> Vec<u64> {
    let mut bad = vec![];
    let mut b = vec![0u8; BLOCK_SIZE];
    for l in 0..N {
        match h.disk().read(l, &mut b) {
            Ok(()) => assert!(check(&b, l, tag(l)), "lba {l}: wrong data returned"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Integrity, "lba {l}: {e:?}");
                assert!(
                    b.iter().all(|&x| x == 0),
                    "failed read left data in the buffer"
                );
                bad.push(l);
            }
        }
    }
    bad
}

fn data_block_flip_is_detected_at_every_offset_class_on(backend: Backend) {
    let mut h = setup(backend);
    let adv = h.adversary();
    for (i, off) in [0usize, 1, 100, 2048, 4095].into_iter().enumerate() {
        let l = i as u64 * 3;
        let pos = h.disk().locate(l).unwrap().unwrap();
        adv.flip_byte(pos, off, 0x01).unwrap();
        let bad = sweep(&mut h, |_| 1);
        assert!(bad.contains(&l));
        adv.flip_byte(pos, off, 0x01).unwrap();
    }
    assert!(sweep(&mut h, |_| 1).is_empty());
}

fn data_block_swap_and_move_are_detected_on(backend: Backend) {
    let mut h = setup(backend);
    let adv = h.adversary();
    let a = h.disk().locate(2).unwrap().unwrap();
    let b = h.disk().locate(9).unwrap().unwrap();
    adv.swap(a, b).unwrap();
    assert_eq!(sweep(&mut h, |_| 1), vec![2, 9]);
    adv.swap(a, b).unwrap();
    // Copy block of LBA 4 over LBA 5's place: 5 fails, 4 still reads.
    let c = h.disk().locate(4).unwrap().unwrap();
    let d = h.disk().locate(5).unwrap().unwrap();
    let keep = adv.snapshot_block(d).unwrap();
    adv.copy_block(c, d).unwrap();
    assert_eq!(sweep(&mut h, |_| 1), vec![5]);
    adv.replay(&keep).unwrap();
    assert!(sweep(&mut h, |_| 1).is_empty());
}

fn data_block_replay_of_an_old_version_is_detected_on(backend: Backend) {
    let mut h = setup(backend);
    let adv = h.adversary();
    // Version 1 of LBA 7 lives at p1; overwrite LBA 7 (tag 2) and clean
    // enough that p1 gets reused; then put the old ciphertext back where
    // the index now points.
    let p1 = h.disk().locate(7).unwrap().unwrap();
    let old = adv.snapshot_block(p1).unwrap();
    h.disk().write(7, &blocks(7, 1, 2)).unwrap();
    h.disk().sync().unwrap();
    let p2 = h.disk().locate(7).unwrap().unwrap();
    assert_ne!(p1, p2);
    adv.replay_at(&old, p2).unwrap();
    let bad = sweep(&mut h, |l| if l == 7 { 2 } else { 1 });
    assert_eq!(bad, vec![7]);
    // Replaying every old block of the data region at once: same result.
    let snap = adv.snapshot().unwrap();
    h.disk().write(0, &blocks(0, N, 3)).unwrap();
    h.disk().sync().unwrap();
    adv.restore(&snap).unwrap();
    let bad = sweep(&mut h, |_| 3);
    assert_eq!(bad.len() as u64, N);
}

fn zeroed_data_block_is_not_read_as_zeros_on(backend: Backend) {
    let mut h = setup(backend);
    let adv = h.adversary();
    let p = h.disk().locate(3).unwrap().unwrap();
    adv.write_block(p, &vec![0u8; BLOCK_SIZE]).unwrap();
    assert_eq!(sweep(&mut h, |_| 1), vec![3]);
}

#[test]
fn data_block_flip_is_detected_at_every_offset_class_mem_index() {
    data_block_flip_is_detected_at_every_offset_class_on(Backend::MemIndex);
}

#[test]
fn data_block_flip_is_detected_at_every_offset_class_lsm_index() {
    data_block_flip_is_detected_at_every_offset_class_on(Backend::Lsm);
}

#[test]
fn data_block_swap_and_move_are_detected_mem_index() {
    data_block_swap_and_move_are_detected_on(Backend::MemIndex);
}

#[test]
fn data_block_swap_and_move_are_detected_lsm_index() {
    data_block_swap_and_move_are_detected_on(Backend::Lsm);
}

#[test]
fn data_block_replay_of_an_old_version_is_detected_mem_index() {
    data_block_replay_of_an_old_version_is_detected_on(Backend::MemIndex);
}

#[test]
fn data_block_replay_of_an_old_version_is_detected_lsm_index() {
    data_block_replay_of_an_old_version_is_detected_on(Backend::Lsm);
}

#[test]
fn zeroed_data_block_is_not_read_as_zeros_mem_index() {
    zeroed_data_block_is_not_read_as_zeros_on(Backend::MemIndex);
}

#[test]
fn zeroed_data_block_is_not_read_as_zeros_lsm_index() {
    zeroed_data_block_is_not_read_as_zeros_on(Backend::Lsm);
}
