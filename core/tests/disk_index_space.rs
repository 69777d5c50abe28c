//! The index region never runs out under sustained random overwrites of a
//! full disk with no idle time (no background steps: a reader or writer is
//! always waiting), on small disks with the default configuration. Found
//! in the guest: a 160 MiB disk stopped with "no free chunk in the log
//! store" (a WAL allowed to grow to 2048 blocks in a region of 2457, and
//! 64-block chunks too coarse for a small region).

use std::sync::Arc;

use mlsdisk_core::bio::{MemDisk, BLOCK_SIZE};
use mlsdisk_core::disk::{DiskConfig, MlsDisk, NoAnchor};
use mlsdisk_core::platform::StdCrypto;

fn long() -> bool {
    std::env::var_os("MLSDISK_LONG_TESTS").is_some_and(|v| v != "0")
}

fn overwrite_without_idle_time(mib: u64, passes: u64) {
    let dev = Arc::new(MemDisk::new(mib * 256).unwrap());
    let mut d = MlsDisk::create(
        dev.clone(),
        Arc::new(StdCrypto),
        &[1u8; 32],
        DiskConfig::default(),
        Box::new(NoAnchor),
    )
    .unwrap();
    let cap = d.nblocks();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut last = vec![0u32; cap as usize];
    let mut b = vec![0u8; BLOCK_SIZE];
    for i in 0..cap * passes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let l = x % cap;
        b[..4].copy_from_slice(&(i as u32).to_le_bytes());
        d.write(l, &b)
            .unwrap_or_else(|e| panic!("{mib} MiB: write {i} of {}: {e:?}", cap * passes));
        last[l as usize] = i as u32;
        if i % 2000 == 1999 {
            d.sync().unwrap();
        }
    }
    let st = d.stats();
    eprintln!(
        "{mib} MiB: {} random writes ({passes} x capacity), {} syncs of which {} forced, {} segments cleaned",
        cap * passes,
        st.sync_counter,
        st.forced_syncs,
        st.segments_cleaned
    );
    assert!(st.segments_cleaned > 0, "the cleaner never ran: {st:?}");
    d.close().unwrap();
    let mut d = MlsDisk::open(
        dev,
        Arc::new(StdCrypto),
        &[1u8; 32],
        DiskConfig::default(),
        Box::new(NoAnchor),
    )
    .unwrap();
    for (l, &i) in last.iter().enumerate().step_by(7) {
        d.read(l as u64, &mut b).unwrap();
        if i != 0 {
            assert_eq!(b[..4], i.to_le_bytes(), "lba {l}");
        }
    }
}

#[test]
fn a_64_mib_disk_survives_random_overwrites_without_idle_time() {
    overwrite_without_idle_time(64, if long() { 8 } else { 4 });
}

#[test]
fn a_160_mib_disk_survives_random_overwrites_without_idle_time() {
    overwrite_without_idle_time(160, if long() { 8 } else { 3 });
}
