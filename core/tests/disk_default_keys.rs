//! The per-block keys are 256-bit by default, for data blocks and for the
//! blocks of the index's logs, and the on-disk formats record it.

mod disk_common;

use std::sync::Arc;

use disk_common::{crypto, small_cfg, KEY, SMALL_TOTAL};
use mlsdisk_core::bio::{BlockRange, BlockSet, MemDisk};
use mlsdisk_core::crypto::AuthBlob;
use mlsdisk_core::disk::state::SuperPayload;
use mlsdisk_core::disk::{DiskConfig, MlsDisk, NoAnchor};
use mlsdisk_core::log::{LogStoreConfig, TxLogStore};

#[test]
fn defaults_are_32_byte_keys() {
    assert_eq!(DiskConfig::default().data_key_len, 32);
    assert_eq!(DiskConfig::default().store.key_len, 32);
    assert_eq!(LogStoreConfig::default().key_len, 32);
}

#[test]
fn disk_made_with_defaults_records_32_byte_data_keys() {
    let mem = Arc::new(MemDisk::new(SMALL_TOTAL).unwrap());
    // small_cfg only shrinks the layout and the LSM; keys are the defaults.
    let d = MlsDisk::create(mem.clone(), crypto(), &KEY, small_cfg(), Box::new(NoAnchor)).unwrap();
    d.close().unwrap();
    let (_, payload) = AuthBlob::open(mem.clone(), 0, crypto(), &KEY).unwrap();
    let sp = SuperPayload::parse(&payload, mem.nblocks()).unwrap();
    assert_eq!(sp.data_key_len, 32);
}

#[test]
fn store_made_with_defaults_records_32_byte_log_keys() {
    let mem = Arc::new(MemDisk::new(32 + 64 * 256).unwrap());
    let regions = || {
        (
            BlockRange::new(mem.clone(), 0, 32).unwrap(),
            BlockRange::new(mem.clone(), 32, 64 * 256).unwrap(),
        )
    };
    let (j, c) = regions();
    let s = TxLogStore::format(j, c, crypto(), &KEY, LogStoreConfig::default()).unwrap();
    let root = s.root();
    drop(s);
    // The key length is read back from the journal's snapshot record.
    let (j, c) = regions();
    let s = TxLogStore::open(j, c, crypto(), &KEY, &root).unwrap();
    assert_eq!(s.config().key_len, 32);
}
