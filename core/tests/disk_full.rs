//! A full disk under endless random overwrites keeps working (cleaning,
//! never blocking), discard frees space, requests past the end fail
//! cleanly, and without auto-sync the disk says NoSpace until a sync.

mod disk_common;

use disk_common::*;
use mlsdisk_core::bio::BLOCK_SIZE;
use mlsdisk_core::disk::DiskConfig;
use mlsdisk_core::ErrorKind;
use proptest::test_runner::{Config, RngAlgorithm, TestRng};

fn verify_all(h: &mut Harness, model: &[u64]) {
    let mut b = vec![0u8; BLOCK_SIZE];
    for (l, &t) in model.iter().enumerate() {
        h.disk().read(l as u64, &mut b).unwrap();
        assert!(check(&b, l as u64, t), "lba {l} want {t}");
    }
}

fn endless_overwrites_of_a_full_disk_keep_working_on(backend: Backend) {
    let _ = (
        Config::default(),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let mut h = Harness::new(backend, small_cfg());
    let cap = h.disk().nblocks();
    let mut model = vec![0u64; cap as usize];
    let mut tag = 1;
    h.disk().write(0, &blocks(0, cap, tag)).unwrap();
    model.iter_mut().for_each(|t| *t = tag);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let rounds = if long() { 200 } else { 30 };
    for r in 0..rounds {
        for _ in 0..cap {
            tag += 1;
            let l = rng.below(cap);
            let n = (1 + rng.below(3)).min(cap - l);
            h.disk().write(l, &blocks(l, n, tag)).unwrap();
            for i in 0..n {
                model[(l + i) as usize] = tag;
            }
        }
        if r % 7 == 6 {
            h.disk().sync().unwrap();
        }
    }
    verify_all(&mut h, &model);
    let st = h.disk().stats();
    assert!(st.segments_cleaned > 0 && st.forced_syncs > 0, "{st:?}");
    assert_eq!(st.mapped_blocks, cap);
    h.close_and_reopen().unwrap();
    verify_all(&mut h, &model);
}

fn discard_reads_zeros_frees_space_and_is_durable_on(backend: Backend) {
    let mut h = Harness::new(backend, small_cfg());
    let cap = h.disk().nblocks();
    h.disk().write(0, &blocks(0, cap, 5)).unwrap();
    h.disk().sync().unwrap();
    let before = h.disk().stats();
    h.disk().discard(10, 20).unwrap();
    h.disk().discard(0, 0).unwrap();
    let mut b = vec![0xffu8; 20 * BLOCK_SIZE];
    h.disk().read(10, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    let st = h.disk().stats();
    assert_eq!(st.discarded_blocks, 20);
    assert_eq!(st.mapped_blocks, cap - 20);
    assert_eq!(st.unmapped_blocks_read - before.unmapped_blocks_read, 20);
    // Discard of buffered (unflushed) data too.
    h.disk().write(40, &blocks(40, 1, 9)).unwrap();
    h.disk().discard(40, 1).unwrap();
    let mut one = vec![1u8; BLOCK_SIZE];
    h.disk().read(40, &mut one).unwrap();
    assert!(one.iter().all(|&x| x == 0));
    h.disk().sync().unwrap();
    h.close_and_reopen().unwrap();
    let mut b = vec![0u8; BLOCK_SIZE];
    for l in 0..cap {
        h.disk().read(l, &mut b).unwrap();
        let want = if (10..30).contains(&l) || l == 40 {
            0
        } else {
            5
        };
        assert!(check(&b, l, want), "lba {l}");
    }
    assert_eq!(h.disk().stats().mapped_blocks, cap - 21);
    // Discard everything: the whole data log becomes free after a sync.
    h.disk().discard(0, cap).unwrap();
    h.disk().sync().unwrap();
    let st = h.disk().stats();
    assert_eq!(st.mapped_blocks, 0);
    assert_eq!(st.free_blocks, st.data_region_blocks);
}

fn bad_requests_fail_cleanly_on(backend: Backend) {
    let mut h = Harness::new(backend, small_cfg());
    let cap = h.disk().nblocks();
    let mut b = vec![0u8; BLOCK_SIZE];
    let k = |r: mlsdisk_core::Result<()>| r.unwrap_err().kind();
    assert_eq!(k(h.disk().read(cap, &mut b)), ErrorKind::InvalidArgument);
    assert_eq!(k(h.disk().write(cap, &b)), ErrorKind::InvalidArgument);
    assert_eq!(k(h.disk().write(u64::MAX, &b)), ErrorKind::InvalidArgument);
    assert_eq!(k(h.disk().discard(cap - 1, 2)), ErrorKind::InvalidArgument);
    assert_eq!(k(h.disk().write(0, &b[..100])), ErrorKind::InvalidArgument);
    assert_eq!(k(h.disk().read(0, &mut [])), ErrorKind::InvalidArgument);
    // The disk still works.
    h.disk().write(cap - 1, &blocks(cap - 1, 1, 3)).unwrap();
    h.disk().read(cap - 1, &mut b).unwrap();
    assert!(check(&b, cap - 1, 3));
    assert!(h.disk().failure().is_none());
}

fn without_auto_sync_a_full_log_says_nospace_until_sync_on(backend: Backend) {
    let cfg = DiskConfig {
        auto_sync: false,
        ..small_cfg()
    };
    let mut h = Harness::new(backend, cfg);
    let cap = h.disk().nblocks();
    h.disk().write(0, &blocks(0, cap, 1)).unwrap();
    h.disk().sync().unwrap();
    let mut tag = 1;
    let mut hit = false;
    for _ in 0..20 {
        tag += 1;
        match h.disk().write(0, &blocks(0, cap, tag)) {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::NoSpace, "{e:?}");
                hit = true;
                break;
            }
        }
    }
    assert!(hit, "expected NoSpace without syncs");
    assert!(h.disk().failure().is_none());
    // Sync frees the pending space; writes between syncs work again.
    h.disk().sync().unwrap();
    for l in (0..cap).step_by(8) {
        let n = 8.min(cap - l);
        h.disk().write(l, &blocks(l, n, 99)).unwrap();
        h.disk().sync().unwrap();
    }
    let mut b = vec![0u8; BLOCK_SIZE];
    for l in 0..cap {
        h.disk().read(l, &mut b).unwrap();
        assert!(check(&b, l, 99));
    }
}

fn status_line_reports_anchor_state_on(backend: Backend) {
    let mut h = Harness::with(backend, small_cfg(), SMALL_TOTAL, false);
    let s = h.disk().status_line();
    assert!(
        s.contains("unprotected against whole-image rollback"),
        "{s}"
    );
    assert!(!h.disk().stats().rollback_protected);
    let mut h = Harness::new(backend, small_cfg());
    let s = h.disk().status_line();
    assert!(!s.contains("unprotected"), "{s}");
    assert!(s.starts_with("ok "), "{s}");
}

#[test]
fn endless_overwrites_of_a_full_disk_keep_working_mem_index() {
    endless_overwrites_of_a_full_disk_keep_working_on(Backend::MemIndex);
}

#[test]
fn endless_overwrites_of_a_full_disk_keep_working_lsm_index() {
    endless_overwrites_of_a_full_disk_keep_working_on(Backend::Lsm);
}

#[test]
fn discard_reads_zeros_frees_space_and_is_durable_mem_index() {
    discard_reads_zeros_frees_space_and_is_durable_on(Backend::MemIndex);
}

#[test]
fn discard_reads_zeros_frees_space_and_is_durable_lsm_index() {
    discard_reads_zeros_frees_space_and_is_durable_on(Backend::Lsm);
}

#[test]
fn bad_requests_fail_cleanly_mem_index() {
    bad_requests_fail_cleanly_on(Backend::MemIndex);
}

#[test]
fn bad_requests_fail_cleanly_lsm_index() {
    bad_requests_fail_cleanly_on(Backend::Lsm);
}

#[test]
fn without_auto_sync_a_full_log_says_nospace_until_sync_mem_index() {
    without_auto_sync_a_full_log_says_nospace_until_sync_on(Backend::MemIndex);
}

#[test]
fn without_auto_sync_a_full_log_says_nospace_until_sync_lsm_index() {
    without_auto_sync_a_full_log_says_nospace_until_sync_on(Backend::Lsm);
}

#[test]
fn status_line_reports_anchor_state_mem_index() {
    status_line_reports_anchor_state_on(Backend::MemIndex);
}

#[test]
fn status_line_reports_anchor_state_lsm_index() {
    status_line_reports_anchor_state_on(Backend::Lsm);
}

/// The cleaner's dead-block hint (`disk/dead_blocks.rs`). On a disk whose
/// every segment was opened since it was created, each block of a victim is
/// either moved (live) or skipped as known dead, never looked up in vain:
/// skipped + moved = cleaned segments x segment size. After a crash and
/// after a clean reopen nothing is tracked until a segment is opened again,
/// so victims written before are checked in the index as before (skipped +
/// moved stays at most the victims' blocks), and every block reads back as
/// the model says throughout (a hint that called a live block dead would
/// lose it, and the live check's count would fail the clean).
fn dead_block_hint_skips_exactly_the_dead_blocks_on(backend: Backend) {
    let mut h = Harness::new(backend, small_cfg());
    let seg = u64::from(h.geometry().seg_blocks);
    let cap = h.disk().nblocks();
    let mut model = vec![0u64; cap as usize];
    let mut tag = 1;
    h.disk().write(0, &blocks(0, cap, tag)).unwrap();
    model.iter_mut().for_each(|t| *t = tag);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut churn = |h: &mut Harness, model: &mut Vec<u64>, tag: &mut u64, rounds: u64| {
        for i in 0..rounds * cap {
            let l = rng.below(cap);
            if i % 13 == 0 {
                h.disk().discard(l, 1).unwrap();
                model[l as usize] = 0;
            } else {
                *tag += 1;
                h.disk().write(l, &blocks(l, 1, *tag)).unwrap();
                model[l as usize] = *tag;
            }
        }
    };
    churn(&mut h, &mut model, &mut tag, 8);
    verify_all(&mut h, &model);
    let st = h.disk().stats();
    assert!(st.segments_cleaned > 4, "{st:?}");
    assert!(st.cleaner_lookups_skipped > 0, "{st:?}");
    assert_eq!(
        st.cleaner_lookups_skipped + st.cleaner_blocks_moved,
        st.segments_cleaned * seg,
        "since create every victim block is moved or known dead: {st:?}"
    );
    for reopen in [Harness::crash_and_reopen, Harness::close_and_reopen] {
        h.disk().sync().unwrap();
        reopen(&mut h).unwrap();
        verify_all(&mut h, &model);
        churn(&mut h, &mut model, &mut tag, 4);
        verify_all(&mut h, &model);
        let st = h.disk().stats();
        assert!(st.segments_cleaned > 0, "{st:?}");
        assert!(
            st.cleaner_lookups_skipped + st.cleaner_blocks_moved <= st.segments_cleaned * seg,
            "{st:?}"
        );
    }
}

#[test]
fn dead_block_hint_skips_exactly_the_dead_blocks_mem_index() {
    dead_block_hint_skips_exactly_the_dead_blocks_on(Backend::MemIndex);
}

#[test]
fn dead_block_hint_skips_exactly_the_dead_blocks_lsm_index() {
    dead_block_hint_skips_exactly_the_dead_blocks_on(Backend::Lsm);
}
