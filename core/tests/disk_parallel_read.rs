//! Reads split into a plan (under the disk) and a fetch (without it):
//! a stale plan never returns wrong data, and many readers on several
//! threads, racing a writer, the segment cleaner and syncs, always read a
//! version at least as new as the last write that completed before the
//! read was planned.

mod disk_common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use disk_common::*;
use mlsdisk_core::bio::BLOCK_SIZE;
use mlsdisk_core::ErrorKind;

/// A tiny deterministic generator for workloads.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The tag a block made by `fill(b, lba, tag)` carries, if it is one.
fn tag_of(b: &[u8], lba: u64) -> Option<u64> {
    if b.iter().all(|&x| x == 0) {
        return Some(0);
    }
    let first = u64::from_le_bytes(b[..8].try_into().unwrap());
    let tag = (first ^ lba) >> 20;
    check(b, lba, tag).then_some(tag)
}

#[test]
fn a_stale_plan_returns_the_planned_version_or_an_integrity_error() {
    let trials = if long() { 40 } else { 8 };
    let mut h = Harness::new(Backend::Lsm, small_cfg());
    let cap = h.disk().nblocks();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut tag = 1u64;
    h.disk().write(0, &blocks(0, cap, tag)).unwrap();
    h.disk().sync().unwrap();
    let mut model = vec![tag; cap as usize];
    let (mut same, mut detected, mut fresh) = (0, 0, 0);
    for trial in 0..trials {
        let lba = rng.below(cap - 4);
        let mut buf = vec![0u8; 4 * BLOCK_SIZE];
        let plan = h.disk().plan_read(lba, &mut buf).unwrap();
        let reader = h.disk().reader();
        let planned: Vec<u64> = (0..4).map(|i| model[(lba + i) as usize]).collect();
        // Churn: odd trials rewrite the whole disk several times with syncs
        // (the cleaner moves blocks, segments are reused); even trials
        // change nothing the plan names.
        if trial % 2 == 1 {
            for _ in 0..3 {
                for _ in 0..cap {
                    tag += 1;
                    let l = rng.below(cap);
                    h.disk().write(l, &blocks(l, 1, tag)).unwrap();
                    model[l as usize] = tag;
                }
                h.disk().sync().unwrap();
            }
        }
        match reader.fetch(&plan, &mut buf) {
            Ok(()) => {
                for (i, b) in buf.chunks_exact(BLOCK_SIZE).enumerate() {
                    assert!(
                        check(b, lba + i as u64, planned[i]),
                        "trial {trial}: a fetch returned other data than the planned version"
                    );
                }
                same += 1;
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Integrity, "trial {trial}: {e:?}");
                assert!(
                    buf.iter().all(|&x| x == 0),
                    "a failed fetch left plaintext in the buffer"
                );
                assert_eq!(trial % 2, 1, "a fetch failed although nothing changed");
                detected += 1;
            }
        }
        // The platform's fallback: the read under the disk gives the newest.
        h.disk().read(lba, &mut buf).unwrap();
        for (i, b) in buf.chunks_exact(BLOCK_SIZE).enumerate() {
            assert!(check(b, lba + i as u64, model[(lba + i as u64) as usize]));
        }
        fresh += 1;
    }
    eprintln!("stale plans: {same} fetched the planned version, {detected} detected as stale, {fresh} re-read fresh");
    assert!(
        detected > 0,
        "no trial reused the planned blocks' space: the test did not exercise staleness"
    );
    assert!(h.disk().failure().is_none());
}

#[test]
fn parallel_readers_race_writes_cleaning_and_syncs_without_wrong_or_old_data() {
    let mut h = Harness::new(Backend::Lsm, small_cfg());
    let cap = h.disk().nblocks();
    h.disk().write(0, &blocks(0, cap, 1)).unwrap();
    h.disk().sync().unwrap();
    let disk = Arc::new(Mutex::new(h.take().unwrap()));
    // Per LBA: the tag of the last write that returned (set under the lock).
    let done: Arc<Vec<AtomicU64>> = Arc::new((0..cap).map(|_| AtomicU64::new(1)).collect());
    let newest = Arc::new(AtomicU64::new(1));
    let writes = if long() { 20_000 } else { 3_000 };
    let readers = 4;
    let reads_each = if long() { 20_000 } else { 2_000 };

    let writer = {
        let (disk, done, newest) = (disk.clone(), done.clone(), newest.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            for i in 0..writes {
                let l = rng.below(cap);
                let n = (1 + rng.below(4)).min(cap - l);
                let mut d = disk.lock().unwrap();
                let tag = newest.load(Ordering::SeqCst) + 1;
                newest.store(tag, Ordering::SeqCst);
                d.write(l, &blocks(l, n, tag)).unwrap();
                for k in l..l + n {
                    done[k as usize].store(tag, Ordering::SeqCst);
                }
                if i % 97 == 96 {
                    d.sync().unwrap();
                }
            }
        })
    };
    let mut handles = Vec::new();
    for r in 0..readers {
        let (disk, done, newest) = (disk.clone(), done.clone(), newest.clone());
        handles.push(std::thread::spawn(move || {
            let mut rng = Rng(0x1234_5678 + r as u64 * 7919);
            let (mut unlocked, mut fallbacks) = (0u64, 0u64);
            for _ in 0..reads_each {
                let l = rng.below(cap - 2);
                let mut buf = vec![0u8; 2 * BLOCK_SIZE];
                let (plan, reader, floor) = {
                    let mut d = disk.lock().unwrap();
                    let floor = [
                        done[l as usize].load(Ordering::SeqCst),
                        done[l as usize + 1].load(Ordering::SeqCst),
                    ];
                    (d.plan_read(l, &mut buf).unwrap(), d.reader(), floor)
                };
                if let Err(e) = reader.fetch(&plan, &mut buf) {
                    assert_eq!(e.kind(), ErrorKind::Integrity, "{e:?}");
                    disk.lock().unwrap().read(l, &mut buf).unwrap();
                    fallbacks += 1;
                } else {
                    unlocked += 1;
                }
                let ceiling = newest.load(Ordering::SeqCst);
                for (i, b) in buf.chunks_exact(BLOCK_SIZE).enumerate() {
                    let lba = l + i as u64;
                    let t = tag_of(b, lba)
                        .unwrap_or_else(|| panic!("lba {lba}: block is not any written version"));
                    assert!(
                        t >= floor[i] && t <= ceiling,
                        "lba {lba}: read version {t}, expected {}..={ceiling}",
                        floor[i]
                    );
                }
            }
            (unlocked, fallbacks)
        }));
    }
    writer.join().unwrap();
    let (mut unlocked, mut fallbacks) = (0, 0);
    for h in handles {
        let (u, f) = h.join().unwrap();
        unlocked += u;
        fallbacks += f;
    }
    let mut d = Arc::try_unwrap(disk).ok().unwrap().into_inner().unwrap();
    let st = d.stats();
    eprintln!(
        "parallel reads: {unlocked} fetched without the lock, {fallbacks} fell back; {writes} writes, {} segments cleaned, sync {}",
        st.segments_cleaned, st.sync_counter
    );
    assert_eq!(unlocked + fallbacks, readers as u64 * reads_each as u64);
    assert!(st.segments_cleaned > 0, "the cleaner never ran: {st:?}");
    assert!(d.failure().is_none());
    // Everything still reads back as the last write after a reopen.
    d.close().unwrap();
    let mut d = h.open().unwrap();
    let mut b = vec![0u8; BLOCK_SIZE];
    for l in 0..cap {
        d.read(l, &mut b).unwrap();
        assert_eq!(tag_of(&b, l), Some(done[l as usize].load(Ordering::SeqCst)));
    }
}

/// A runner that counts the jobs it ran.
struct Counting(mlsdisk_core::platform::StdParallel, AtomicU64);
impl mlsdisk_core::platform::Parallel for Counting {
    fn width(&self) -> usize {
        self.0.width()
    }
    fn run(&self, jobs: &mut [mlsdisk_core::platform::Job<'_>]) {
        self.1.fetch_add(jobs.len() as u64, Ordering::SeqCst);
        self.0.run(jobs)
    }
}

#[test]
fn write_buffers_sealed_on_several_threads_read_back_and_reopen() {
    use mlsdisk_core::disk::DiskConfig;
    use mlsdisk_core::platform::StdParallel;
    // A write buffer of 128 blocks: sealed as up to 4 jobs of 32.
    let mut cfg = DiskConfig {
        write_buffer_blocks: 128,
        ..small_cfg()
    };
    cfg.layout.index_blocks = 1024;
    cfg.layout.seg_blocks = 64;
    let total = 2 + 64 + 1024 + 16 * 64;
    let mut h = Harness::with(Backend::Lsm, cfg, total, true);
    let runner = Arc::new(Counting(StdParallel::new(4), AtomicU64::new(0)));
    h.disk().set_parallel(runner.clone());
    let cap = h.disk().nblocks();
    let mut model = vec![0u64; cap as usize];
    let mut rng = Rng(0x5851_f42d_4c95_7f2d);
    let rounds = if long() { 40 } else { 6 };
    for tag in 1..=rounds * 100 {
        let l = rng.below(cap);
        let n = (1 + rng.below(32)).min(cap - l);
        h.disk().write(l, &blocks(l, n, tag)).unwrap();
        for k in l..l + n {
            model[k as usize] = tag;
        }
        if tag % 150 == 0 {
            h.disk().sync().unwrap();
        }
    }
    let mut b = vec![0u8; BLOCK_SIZE];
    for (l, &t) in model.iter().enumerate() {
        h.disk().read(l as u64, &mut b).unwrap();
        assert!(check(&b, l as u64, t), "lba {l}");
    }
    let st = h.disk().stats();
    assert!(st.data_blocks_written > 10 * 128, "{st:?}");
    let jobs = runner.1.load(Ordering::SeqCst);
    eprintln!("{jobs} sealing jobs ran on the runner");
    assert!(jobs >= 20, "the write path did not use the runner");
    // Reopened without a runner: the blocks sealed in parallel authenticate.
    h.close_and_reopen().unwrap();
    for (l, &t) in model.iter().enumerate() {
        h.disk().read(l as u64, &mut b).unwrap();
        assert!(check(&b, l as u64, t), "lba {l} after reopen");
    }
}
