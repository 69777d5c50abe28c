//! `BlockSet::read_ranges` through the wrappers: a region view and the
//! counting device.

use std::sync::Arc;

use mlsdisk_core::bio::{BlockRange, BlockSet, MemDisk, BLOCK_SIZE};
use mlsdisk_core::disk::Counted;
use mlsdisk_core::ErrorKind;

/// A region view moves every range by its start and back, refuses a range
/// past its end before reading anything, and the counting wrapper counts
/// the blocks of every range but nothing of a failed call.
#[test]
fn read_ranges_through_a_region_and_the_counters() {
    let mem = Arc::new(MemDisk::new(32).unwrap());
    let mut all = vec![0u8; 32 * BLOCK_SIZE];
    for (i, b) in all.chunks_exact_mut(BLOCK_SIZE).enumerate() {
        b.fill(i as u8 + 1);
    }
    mem.write(0, &all).unwrap();
    let counted = Counted::new(mem.clone());
    let region = BlockRange::new(&counted, 10, 12).unwrap();
    let (mut a, mut b) = (vec![0u8; 2 * BLOCK_SIZE], vec![0u8; BLOCK_SIZE]);
    let mut ranges: [(u64, &mut [u8]); 2] = [(5, &mut a), (0, &mut b)];
    region.read_ranges(&mut ranges).unwrap();
    assert_eq!((ranges[0].0, ranges[1].0), (5, 0), "positions restored");
    assert!(a[..BLOCK_SIZE].iter().all(|&x| x == 16));
    assert!(a[BLOCK_SIZE..].iter().all(|&x| x == 17));
    assert!(b.iter().all(|&x| x == 11));
    assert_eq!(counted.counts().0, 3);
    let mut c = vec![0u8; 2 * BLOCK_SIZE];
    let mut d = vec![7u8; BLOCK_SIZE];
    let mut past: [(u64, &mut [u8]); 2] = [(0, &mut d), (11, &mut c)];
    let e = region.read_ranges(&mut past).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert_eq!((past[0].0, past[1].0), (0, 11));
    assert!(d.iter().all(|&x| x == 7), "nothing read before the check");
    assert_eq!(counted.counts().0, 3, "a failed call is not counted");
    let mut none: Vec<(u64, &mut [u8])> = Vec::new();
    region.read_ranges(&mut none).unwrap();
}
