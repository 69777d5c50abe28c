//! A fully written disk takes random overwrites without running out of
//! index room whatever the pace of background work: none at all (only
//! what the write path runs itself), or a few steps now and then, as a
//! worker that lags behind the writer would run them.
//!
//! Found in CI: the parallel-read test failed now and then with "index
//! region full: the updates do not fit even after a commit" when its
//! background thread ran late. With 4-block chunks and a 256-block index
//! region the tree's space bounds (foreground room for a memtable, the
//! work in progress, the compaction to start) added up to more than the
//! free chunks, so no compaction was admitted, L0 grew by a table per
//! memtable, and every later compaction was larger still. Deterministic
//! here: the pace is a fixed number of background steps every `every`
//! writes.

mod disk_common;

use disk_common::*;
use mlsdisk_core::bio::BLOCK_SIZE;

/// Fills the disk, then `writes` random 1-4 block writes with a sync
/// every 97 and `steps` background steps every `every` writes (none when
/// `every` is 0). Checks every block at the end.
fn overwrite(every: u64, steps: u64, seed: u64, writes: u64) -> Result<(), String> {
    let mut h = Harness::new(Backend::Lsm, small_cfg());
    let cap = h.disk().nblocks();
    let mut model = vec![1u64; cap as usize];
    h.disk()
        .write(0, &blocks(0, cap, 1))
        .map_err(|e| format!("fill: {e:?}"))?;
    h.disk().sync().map_err(|e| format!("first sync: {e:?}"))?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
    for i in 0..writes {
        let l = rng.below(cap);
        let n = (1 + rng.below(4)).min(cap - l);
        let tag = i + 2;
        h.disk()
            .write(l, &blocks(l, n, tag))
            .map_err(|e| format!("write #{i} ({l}+{n}): {e:?}"))?;
        for k in l..l + n {
            model[k as usize] = tag;
        }
        if i % 97 == 96 {
            h.disk()
                .sync()
                .map_err(|e| format!("sync after #{i}: {e:?}"))?;
        }
        if every > 0 && i % every == 0 {
            for _ in 0..steps {
                h.disk()
                    .background_step()
                    .map_err(|e| format!("background step after #{i}: {e:?}"))?;
            }
        }
    }
    h.disk().sync().map_err(|e| format!("last sync: {e:?}"))?;
    let mut buf = vec![0u8; BLOCK_SIZE];
    for (lba, &tag) in model.iter().enumerate() {
        h.disk()
            .read(lba as u64, &mut buf)
            .map_err(|e| format!("read {lba}: {e:?}"))?;
        if !check(&buf, lba as u64, tag) {
            return Err(format!("lba {lba}: not version {tag}"));
        }
    }
    Ok(())
}

#[test]
fn a_full_disk_takes_random_overwrites_whatever_the_background_pace() {
    let writes = if long() { 6000 } else { 2000 };
    let seeds: u64 = if long() { 8 } else { 3 };
    let mut failed = Vec::new();
    for (every, steps) in [(0, 0), (1, 1), (3, 2), (7, 4), (13, 1)] {
        for seed in 1..=seeds {
            if let Err(e) = overwrite(every, steps, seed, writes) {
                failed.push(format!("every={every} steps={steps} seed={seed}: {e}"));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} runs failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
