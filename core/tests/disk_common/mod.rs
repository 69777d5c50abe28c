//! Shared helpers of the disk tests: a harness that creates, crashes and
//! reopens a disk on a shared memory device, and block patterns.
#![allow(dead_code)]

use std::sync::Arc;

use mlsdisk_core::bio::{MemDisk, BLOCK_SIZE};
use mlsdisk_core::disk::{DiskConfig, LayoutConfig, MemAnchor, MemIndexStore, MlsDisk};
use mlsdisk_core::platform::StdCrypto;
use mlsdisk_core::{CryptoRef, Result};

pub const KEY: [u8; 32] = [0x5a; 32];

/// Which index the disk runs on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    /// The in-memory index (data path only).
    MemIndex,
}

pub fn long() -> bool {
    std::env::var_os("MLSDISK_LONG_TESTS").is_some_and(|v| v != "0")
}

/// `n` proptest cases by default, 10x with MLSDISK_LONG_TESTS=1.
pub fn cases(n: u32) -> u32 {
    if long() {
        n * 10
    } else {
        n
    }
}

pub fn crypto() -> CryptoRef {
    Arc::new(StdCrypto)
}

/// A tiny disk: 16 segments of 8 blocks.
pub fn small_cfg() -> DiskConfig {
    DiskConfig {
        layout: LayoutConfig {
            seg_blocks: 8,
            op_percent: 10,
            journal_blocks: 64,
            index_blocks: 256,
        },
        write_buffer_blocks: 8,
        clean_batch_segments: 2,
        ..DiskConfig::default()
    }
}

pub const SMALL_TOTAL: u64 = 2 + 64 + 256 + 16 * 8;

pub fn small_cap() -> u64 {
    (16 - 4) * 8 * 90 / 100
}

/// Fills a block with a pattern naming (lba, tag); tag 0 = zeros.
pub fn fill(b: &mut [u8], lba: u64, tag: u64) {
    if tag == 0 {
        b.fill(0);
        return;
    }
    for (i, c) in b.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&(lba ^ (tag << 20) ^ (i as u64 * 0x9e37_79b9)).to_le_bytes());
    }
}

pub fn check(b: &[u8], lba: u64, tag: u64) -> bool {
    let mut want = vec![0u8; BLOCK_SIZE];
    fill(&mut want, lba, tag);
    b == &want[..]
}

pub struct Harness {
    pub backend: Backend,
    pub cfg: DiskConfig,
    pub dev: Arc<MemDisk>,
    pub anchor: MemAnchor,
    pub store: MemIndexStore,
    disk: Option<MlsDisk<Arc<MemDisk>>>,
}

impl Harness {
    pub fn new(backend: Backend, cfg: DiskConfig) -> Self {
        let dev = Arc::new(MemDisk::new(SMALL_TOTAL).unwrap());
        let anchor = MemAnchor::new();
        let store = MemIndexStore::new();
        let disk = match backend {
            Backend::MemIndex => MlsDisk::create_with_mem_index(
                dev.clone(),
                crypto(),
                cfg,
                Box::new(anchor.clone()),
                store.clone(),
            )
            .unwrap(),
        };
        Self {
            backend,
            cfg,
            dev,
            anchor,
            store,
            disk: Some(disk),
        }
    }

    pub fn disk(&mut self) -> &mut MlsDisk<Arc<MemDisk>> {
        self.disk.as_mut().unwrap()
    }

    pub fn open(&self) -> Result<MlsDisk<Arc<MemDisk>>> {
        match self.backend {
            Backend::MemIndex => MlsDisk::open_with_mem_index(
                self.dev.clone(),
                crypto(),
                self.cfg,
                Box::new(self.anchor.clone()),
                self.store.clone(),
            ),
        }
    }

    pub fn close_and_reopen(&mut self) -> Result<()> {
        if let Some(d) = self.disk.take() {
            d.close()?;
        }
        self.disk = Some(self.open()?);
        Ok(())
    }

    /// Drops the disk without a sync (the memory device keeps every write).
    pub fn crash_and_reopen(&mut self) -> Result<()> {
        self.disk = None;
        self.disk = Some(self.open()?);
        Ok(())
    }
}
