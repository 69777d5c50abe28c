//! TxLogStore: the API end to end on a memory disk.

use std::sync::Arc;

use mlsdisk_core::bio::{BlockRange, MemDisk, BLOCK_SIZE};
use mlsdisk_core::log::{LogId, LogStoreConfig, StoreRoot, TxLogStore};
use mlsdisk_core::platform::StdCrypto;
use mlsdisk_core::{CryptoRef, ErrorKind};

const KEY: &[u8] = &[7u8; 32];

fn regions(disk: &Arc<MemDisk>) -> (BlockRange<Arc<MemDisk>>, BlockRange<Arc<MemDisk>>) {
    (
        BlockRange::new(disk.clone(), 0, 32).unwrap(),
        BlockRange::new(disk.clone(), 32, 64 * 16).unwrap(),
    )
}

fn cfg() -> LogStoreConfig {
    LogStoreConfig {
        chunk_blocks: 16,
        key_len: 16,
        snapshot_every: 4,
    }
}

fn blocks(seed: u8, n: usize) -> Vec<u8> {
    (0..n * BLOCK_SIZE)
        .map(|i| seed.wrapping_add((i / BLOCK_SIZE) as u8).wrapping_mul(3) ^ (i as u8))
        .collect()
}

fn crypto() -> CryptoRef {
    Arc::new(StdCrypto)
}

fn open(disk: &Arc<MemDisk>, root: &StoreRoot) -> TxLogStore<Arc<MemDisk>> {
    let (j, c) = regions(disk);
    TxLogStore::open(j, c, crypto(), KEY, root).unwrap()
}

#[test]
fn create_append_commit_reopen_delete() {
    let disk = Arc::new(MemDisk::new(32 + 64 * 16).unwrap());
    let (j, c) = regions(&disk);
    let mut s = TxLogStore::format(j, c, crypto(), KEY, cfg()).unwrap();
    assert_eq!(s.user_state(), b"");
    assert_eq!(s.stats().chunks_free, 64);

    s.begin().unwrap();
    let a = s.create_log(1).unwrap();
    let b = s.create_log(2).unwrap();
    s.append(a, &blocks(1, 20)).unwrap();
    s.append(b, &blocks(2, 3)).unwrap();
    let mut buf = vec![0u8; BLOCK_SIZE * 20];
    s.read(a, 0, &mut buf).unwrap();
    assert_eq!(buf, blocks(1, 20));
    s.seal(b).unwrap();
    assert_eq!(
        s.append(b, &blocks(0, 1)).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    s.commit(b"one").unwrap();
    assert_eq!(s.commit_count(), 1);
    let root = s.root();

    // Reopen from the encoded root.
    let root = StoreRoot::parse(&root.emit_array().unwrap()).unwrap();
    let mut s = open(&disk, &root);
    assert_eq!(s.user_state(), b"one");
    assert_eq!(s.logs_with_tag(1), vec![a]);
    assert_eq!(s.log_len(a).unwrap(), 20);
    assert_eq!(s.log_tag(b).unwrap(), 2);
    s.read(a, 0, &mut buf).unwrap();
    assert_eq!(buf, blocks(1, 20));
    let used = s.stats().chunks_used;
    assert!(used >= 3);

    // Append more after reopen, then abort: nothing changes.
    s.begin().unwrap();
    s.append(a, &blocks(9, 40)).unwrap();
    assert_eq!(s.log_len(a).unwrap(), 60);
    s.abort();
    assert_eq!(s.log_len(a).unwrap(), 20);
    assert_eq!(s.stats().chunks_used, used);

    // Append, delete, commit.
    s.begin().unwrap();
    s.append(a, &blocks(5, 5)).unwrap();
    s.delete_log(b).unwrap();
    assert_eq!(s.log_len(b).unwrap_err().kind(), ErrorKind::NotFound);
    s.commit(b"two").unwrap();
    assert!(s.stats().chunks_used < used + 1);
    let mut s = open(&disk, &s.root());
    assert_eq!(s.user_state(), b"two");
    assert_eq!(s.log_len(b).unwrap_err().kind(), ErrorKind::NotFound);
    let mut buf = vec![0u8; BLOCK_SIZE * 25];
    s.read(a, 0, &mut buf).unwrap();
    assert_eq!(&buf[..20 * BLOCK_SIZE], &blocks(1, 20)[..]);
    assert_eq!(&buf[20 * BLOCK_SIZE..], &blocks(5, 5)[..]);

    // Many commits: snapshots keep the journal bounded.
    for i in 0..40u8 {
        s.begin().unwrap();
        let l = s.create_log(3).unwrap();
        s.append(l, &blocks(i, 1)).unwrap();
        s.append(a, &blocks(i, 1)).unwrap();
        if i % 2 == 1 {
            let prev = s.logs_with_tag(3)[0];
            s.delete_log(prev).unwrap();
        }
        s.commit(&[i]).unwrap();
    }
    let root = s.root();
    let s2 = open(&disk, &root);
    assert_eq!(s2.user_state(), &[39]);
    assert_eq!(s2.log_len(a).unwrap(), 65);
    assert_eq!(s2.logs_with_tag(3), s.logs_with_tag(3));
    assert_eq!(s2.stats(), s.stats());
    let (hits, misses) = s.node_cache_stats();
    assert!(misses > 0, "{hits} {misses}");
    let _ = LogId(0);
}

#[test]
fn errors_outside_transactions_and_wrong_key() {
    let disk = Arc::new(MemDisk::new(32 + 64 * 16).unwrap());
    let (j, c) = regions(&disk);
    let mut s = TxLogStore::format(j, c, crypto(), KEY, cfg()).unwrap();
    assert_eq!(s.create_log(0).unwrap_err().kind(), ErrorKind::InvalidState);
    assert_eq!(s.commit(b"").unwrap_err().kind(), ErrorKind::InvalidState);
    s.begin().unwrap();
    assert_eq!(s.begin().unwrap_err().kind(), ErrorKind::InvalidState);
    assert_eq!(
        s.append(LogId(99), &blocks(0, 1)).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    s.abort();
    let (j, c) = regions(&disk);
    assert!(TxLogStore::open(j, c, crypto(), &[8u8; 32], &s.root()).is_err());
}

#[test]
fn many_logs_snapshots_span_journal_blocks() {
    // 300 logs: a snapshot record takes several journal blocks.
    let disk = Arc::new(MemDisk::new(64 + 400 * 4).unwrap());
    let j = BlockRange::new(disk.clone(), 0, 64).unwrap();
    let c = BlockRange::new(disk.clone(), 64, 400 * 4).unwrap();
    let cfg = LogStoreConfig {
        chunk_blocks: 4,
        key_len: 32,
        snapshot_every: 5,
    };
    let mut s = TxLogStore::format(j, c, crypto(), KEY, cfg).unwrap();
    let mut ids = Vec::new();
    for round in 0..12u8 {
        s.begin().unwrap();
        for k in 0..25u8 {
            let l = s.create_log(u64::from(k % 4)).unwrap();
            s.append(l, &blocks(round ^ k, 1)).unwrap();
            ids.push((l, round ^ k));
        }
        s.commit(&vec![round; 1000]).unwrap();
    }
    let s2 = TxLogStore::open(
        BlockRange::new(disk.clone(), 0, 64).unwrap(),
        BlockRange::new(disk.clone(), 64, 400 * 4).unwrap(),
        crypto(),
        KEY,
        &s.root(),
    )
    .unwrap();
    assert_eq!(s2.user_state(), &vec![11u8; 1000][..]);
    assert_eq!(s2.stats(), s.stats());
    let mut buf = vec![0u8; BLOCK_SIZE];
    for (l, seed) in ids {
        s2.read(l, 0, &mut buf).unwrap();
        assert_eq!(buf, blocks(seed, 1));
    }
}

#[test]
fn full_chunk_region_and_full_journal_leave_the_store_usable() {
    let disk = Arc::new(MemDisk::new(32 + 64 * 16).unwrap());
    let (j, c) = regions(&disk);
    let mut s = TxLogStore::format(j, c, crypto(), KEY, cfg()).unwrap();
    // Fill the chunk region.
    s.begin().unwrap();
    let l = s.create_log(0).unwrap();
    let mut n = 0;
    let e = loop {
        match s.append(l, &blocks(1, 16)) {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(e.kind(), ErrorKind::NoSpace);
    assert!(n > 50);
    assert_eq!(s.commit(b"").unwrap_err().kind(), ErrorKind::InvalidState);
    s.abort();
    assert_eq!(s.stats().chunks_used, 0);
    // A user state the journal cannot take: NoSpace before anything is
    // written; abort, and the store goes on.
    s.begin().unwrap();
    let e = s.commit(&vec![0u8; 32 * BLOCK_SIZE]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSpace);
    s.abort();
    s.begin().unwrap();
    let l = s.create_log(0).unwrap();
    s.append(l, &blocks(2, 3)).unwrap();
    s.commit(b"fine").unwrap();
    let s2 = open(&disk, &s.root());
    assert_eq!(s2.user_state(), b"fine");
    assert_eq!(s2.log_len(l).unwrap(), 3);
}

#[test]
fn records_larger_than_the_free_ring_move_to_the_other_half() {
    // Journal of 16 blocks: rings of 8. A 4.5-block user state leaves no
    // room for the next record in the same ring, so commits rotate.
    let disk = Arc::new(MemDisk::new(16 + 64 * 16).unwrap());
    let regions = || {
        (
            BlockRange::new(disk.clone(), 0, 16).unwrap(),
            BlockRange::new(disk.clone(), 16, 64 * 16).unwrap(),
        )
    };
    let (j, c) = regions();
    let mut s = TxLogStore::format(j, c, crypto(), KEY, cfg()).unwrap();
    let mut halves = std::collections::BTreeSet::new();
    for i in 0..8u8 {
        s.begin().unwrap();
        let l = s.create_log(0).unwrap();
        s.append(l, &blocks(i, 1)).unwrap();
        let us = vec![i; 18_000];
        s.commit(&us).unwrap();
        halves.insert(s.root().journal_half());
        let (j, c) = regions();
        let s2 = TxLogStore::open(j, c, crypto(), KEY, &s.root()).unwrap();
        assert_eq!(s2.user_state(), &us[..]);
        assert_eq!(s2.logs_with_tag(0).len(), i as usize + 1);
    }
    assert_eq!(halves.len(), 2);
    // A record bigger than a whole ring cannot be committed.
    s.begin().unwrap();
    assert_eq!(
        s.commit(&vec![0u8; 40_000]).unwrap_err().kind(),
        ErrorKind::NoSpace
    );
    s.abort();
}
