//! Shared helpers of the disk tests: a harness that creates, crashes and
//! reopens a disk on a stack of test devices, and block patterns.
//!
//! Device stack (top to bottom): `FaultDisk` (fail chosen I/Os) ->
//! `CrashDisk` (unflushed writes are volatile) -> `MemDisk` (the durable
//! image, which an `Adversary` can edit).
#![allow(dead_code)]

use std::sync::Arc;

use mlsdisk_core::bio::{Adversary, CrashDisk, FaultDisk, MemDisk, BLOCK_SIZE};
use mlsdisk_core::disk::{
    DiskConfig, LayoutConfig, MemAnchor, MemIndexStore, MlsDisk, NoAnchor, RollbackAnchor,
};
use mlsdisk_core::log::LogStoreConfig;
use mlsdisk_core::lsm::LsmConfig;
use mlsdisk_core::platform::{OwnedJob, Pending, Spawn, StdCrypto};
use mlsdisk_core::{CryptoRef, Result};

pub const KEY: [u8; 32] = [0x5a; 32];

pub type Crash = CrashDisk<Arc<MemDisk>>;
pub type Dev = Arc<FaultDisk<Arc<Crash>>>;
pub type Disk = MlsDisk<Dev>;

/// Which index the disk runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The in-memory index (data path only; its "durable" copy lives
    /// outside the device).
    MemIndex,
    /// The real index: TxLsmTree on TxLogStore, with the superblock.
    Lsm,
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

/// A tiny disk: 16 segments of 8 blocks; a tiny LSM (memtables of 16
/// entries, small tables) so flushes and compactions happen constantly.
pub fn small_cfg() -> DiskConfig {
    let mut lsm = LsmConfig::default();
    lsm.memtable_entries = 16;
    lsm.wal_max_blocks = 8;
    lsm.meta_cache_blocks = 16;
    lsm.data_cache_blocks = 16;
    lsm.l0_max_tables = 2;
    lsm.l1_max_records = 64;
    lsm.level_ratio = 4;
    lsm.table_max_records = 64;
    lsm.step_records = 32;
    DiskConfig {
        store: LogStoreConfig {
            chunk_blocks: 4,
            ..LogStoreConfig::default()
        },
        lsm,
        layout: LayoutConfig {
            seg_blocks: 8,
            op_percent: 10,
            journal_blocks: 64,
            // 512 blocks, and two chunks for the table manifest (the one
            // a commit writes, and the one it replaces, freed only then).
            // 256 was too small for this LSM configuration: the tree's
            // space bounds (a memtable's worth of foreground room, the
            // work in progress, a compaction) add up to more than the
            // free chunks, compaction is never admitted, L0 grows and
            // writes end in `NoSpace` (see `disk_index_pace.rs`).
            index_blocks: SMALL_INDEX,
        },
        write_buffer_blocks: 8,
        clean_batch_segments: 2,
        meta_write_buffer_blocks: 8,
        // The cache sizes above, not a budget's split.
        cache_budget_bytes: 0,
        ..DiskConfig::default()
    }
}

pub const SMALL_INDEX: u64 = 512 + 2 * 4;
pub const SMALL_TOTAL: u64 = 2 + 64 + SMALL_INDEX + 16 * 8;

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

/// `n` blocks from `lba`, all with `tag`.
pub fn blocks(lba: u64, n: u64, tag: u64) -> Vec<u8> {
    let mut v = vec![0u8; n as usize * BLOCK_SIZE];
    for (i, b) in v.chunks_exact_mut(BLOCK_SIZE).enumerate() {
        fill(b, lba + i as u64, tag);
    }
    v
}

pub fn check(b: &[u8], lba: u64, tag: u64) -> bool {
    let mut want = vec![0u8; BLOCK_SIZE];
    fill(&mut want, lba, tag);
    b == &want[..]
}

/// A `Spawn` runner that runs each job only when it is waited for, on the
/// waiting thread: a flushed buffer reaches the device as late as the disk
/// allows, so any path that reads, moves or commits its blocks without
/// waiting for it sees the old device content. Counts the jobs started.
#[derive(Default)]
pub struct Lazy {
    pub started: std::sync::atomic::AtomicU64,
}

struct LazyJob(OwnedJob);

impl Spawn for Lazy {
    fn spawn(&self, job: OwnedJob) -> Result<Box<dyn Pending>> {
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Box::new(LazyJob(job)))
    }
}

impl Pending for LazyJob {
    fn wait(self: Box<Self>) -> Result<()> {
        (self.0)()
    }
}

pub enum AnchorKind {
    None,
    Mem(MemAnchor),
}

pub struct Harness {
    pub backend: Backend,
    pub cfg: DiskConfig,
    pub mem: Arc<MemDisk>,
    pub crash: Arc<Crash>,
    pub fault: Dev,
    pub anchor: MemAnchor,
    pub use_anchor: bool,
    pub store: MemIndexStore,
    disk: Option<Disk>,
}

impl Harness {
    pub fn new(backend: Backend, cfg: DiskConfig) -> Self {
        Self::with(backend, cfg, SMALL_TOTAL, true)
    }

    pub fn with(backend: Backend, cfg: DiskConfig, total: u64, use_anchor: bool) -> Self {
        let mem = Arc::new(MemDisk::new(total).unwrap());
        let crash = Arc::new(CrashDisk::new(mem.clone()));
        let fault = Arc::new(FaultDisk::new(crash.clone()));
        let mut h = Self {
            backend,
            cfg,
            mem,
            crash,
            fault,
            anchor: MemAnchor::new(),
            use_anchor,
            store: MemIndexStore::new(),
            disk: None,
        };
        h.disk = Some(h.create().unwrap());
        h
    }

    fn anchor_box(&self) -> Box<dyn RollbackAnchor> {
        if self.use_anchor {
            Box::new(self.anchor.clone())
        } else {
            Box::new(NoAnchor)
        }
    }

    pub fn create(&self) -> Result<Disk> {
        match self.backend {
            Backend::MemIndex => MlsDisk::create_with_mem_index(
                self.fault.clone(),
                crypto(),
                self.cfg.clone(),
                self.anchor_box(),
                self.store.clone(),
            ),
            Backend::Lsm => MlsDisk::create(
                self.fault.clone(),
                crypto(),
                &KEY,
                self.cfg.clone(),
                self.anchor_box(),
            ),
        }
    }

    pub fn open(&self) -> Result<Disk> {
        self.open_with_key(&KEY)
    }

    pub fn open_with_key(&self, key: &[u8]) -> Result<Disk> {
        match self.backend {
            Backend::MemIndex => MlsDisk::open_with_mem_index(
                self.fault.clone(),
                crypto(),
                self.cfg.clone(),
                self.anchor_box(),
                self.store.clone(),
            ),
            Backend::Lsm => MlsDisk::open(
                self.fault.clone(),
                crypto(),
                key,
                self.cfg.clone(),
                self.anchor_box(),
            ),
        }
    }

    pub fn geometry(&self) -> mlsdisk_core::disk::Geometry {
        *self.disk.as_ref().unwrap().geometry()
    }

    pub fn adversary(&self) -> Adversary {
        Adversary::new(self.mem.clone())
    }

    pub fn disk(&mut self) -> &mut Disk {
        self.disk.as_mut().unwrap()
    }

    pub fn take(&mut self) -> Option<Disk> {
        self.disk.take()
    }

    pub fn set(&mut self, d: Disk) {
        self.disk = Some(d);
    }

    pub fn close_and_reopen(&mut self) -> Result<()> {
        if let Some(d) = self.disk.take() {
            d.close()?;
        }
        self.disk = Some(self.open()?);
        Ok(())
    }

    /// Drops the disk without a sync; the crash disk keeps the unflushed
    /// writes `keep` selects. Then reopens.
    pub fn crash_and_reopen_keep(&mut self, keep: &dyn Fn(usize) -> bool) -> Result<()> {
        self.disk = None;
        self.fault.heal()?;
        self.crash.crash(keep)?;
        self.disk = Some(self.open()?);
        Ok(())
    }

    /// A crash that loses every unflushed write.
    pub fn crash_and_reopen(&mut self) -> Result<()> {
        self.crash_and_reopen_keep(&|_| false)
    }
}

/// A tiny deterministic generator for workloads (xorshift64).
pub struct Rng(pub u64);

impl Rng {
    /// The next value, below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
