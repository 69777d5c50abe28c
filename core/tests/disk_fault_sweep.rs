//! A fault sweep over every engine operation: for each operation (a write
//! that flushes the write buffer, sync, discard, a cleaner step, a
//! compaction step, create, open) and each fault kind (device read / write /
//! flush error, torn write), the fault is injected at device operation
//! index k = 0, 1, 2, ... until the operation completes without reaching k;
//! the operations that seal a write buffer (a flushing write, sync, a
//! cleaner step) also on the disk that seals on worker threads
//! (`parallel-seal`, below).
//! The engine's own `NoSpace` is reached through configuration (a shrunken
//! index region, segments smaller than the write buffer, with and without
//! auto-sync) by a workload that runs until the first error.
//!
//! After each injected failure (the contract, docs/security.md):
//! - `read`: every read of every LBA the test wrote, and of a few never
//!   written, returns the last acknowledged content (a failed request may
//!   leave each of its blocks old or new) or an error, never other bytes;
//! - `reopen-unsynced`: the device as it is (unflushed writes lost), opened
//!   without a further sync, holds the last successful sync or the one in
//!   flight;
//! - `ack-unsyncable`: a write that returns Ok after the fault must be
//!   syncable (an Ok from a disk whose index has failed is a lie), and a
//!   disk that says it failed must refuse it;
//! - `sync-crash-reopen`: after a sync that returns Ok, a crash (drop
//!   without sync, reopen from the device contents) reopens to exactly what
//!   the reads showed; after a failed one, to the last sync or that one;
//! - `panic`: nothing panics (each case runs under `catch_unwind`);
//! - `reopen-after-failed-open`: a failed open leaves a device that opens;
//! - `unexpected-error`: with no device fault, the engine's only error is
//!   `NoSpace`;
//! - `abort`: an allocation failure comes back as an error (see below).
//!
//! Allocation failure is injected by this binary's global allocator: the
//! k-th allocation (or reallocation) of the operation's thread during the
//! operation returns null. The operations that seal a write buffer run a
//! second time on a disk that seals on worker threads (`parallel-seal`:
//! the kernel seals on workqueue items), with a crypto provider whose AEAD
//! calls allocate as the kernel's may; the workers' allocations are
//! counted in the same sequence, each of them is a point too (up to 16),
//! and the sweep fails if none was made or failed on a worker. An allocation the engine does not make through
//! `try_reserve` then aborts the process (the kernel's equivalent is an
//! oops), so each of these cases runs in a child process of its own and a
//! child that dies is a failure (`abort`); it is run again to print where
//! the failed allocation was made (`MLSDISK_SWEEP_ALLOC_SITE=1` in the
//! child). The arguments of create and open (device, crypto provider,
//! anchor) are made by the caller outside the counted calls. One exception
//! is reported but not failed: create and open still abort on the
//! engine's own fixed-size `Box::new` / `Arc::new` (stable Rust has no
//! fallible form and the core forbids `unsafe`); each such point is
//! printed as a known abort, not counted as a point, and
//! `MLSDISK_SWEEP_STRICT=1` fails them. An abort anywhere else, or in
//! any other operation, fails.
//!
//! `MLSDISK_LONG=1` sweeps a bigger disk, every device op index (by
//! default every index below 48, then every 4th), more workloads and more
//! allocation points; `MLSDISK_SWEEP_ONLY` = a substring of a case name (as
//! printed) runs only the matching cases; `MLSDISK_SWEEP_TRACE=1` prints
//! every request of the workloads.

mod disk_common;

use std::cell::Cell;
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Once};
use std::time::Instant;

use disk_common::{blocks, check, crypto, small_cfg, Crash, Dev, Disk, Lazy, Rng, KEY};
use mlsdisk_core::bio::{CrashDisk, FaultDisk, IoKind, MemDisk, BLOCK_SIZE};
use mlsdisk_core::disk::{DiskConfig, LayoutConfig, MemAnchor, MlsDisk, NoAnchor};
use mlsdisk_core::platform::{AeadKey, Crypto, Hash, Iv, Job, Mac, Parallel, StdCrypto};
use mlsdisk_core::{Error, ErrorKind};

/// The global allocator of this test binary: fails a chosen allocation of
/// the armed calls into the engine, on the calling thread or on the
/// sealing workers it runs jobs on (see [`WorkerRunner`]).
mod fail_alloc {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};

    thread_local! {
        static ARMED: Cell<bool> = const { Cell::new(false) };
        static WORKER: Cell<bool> = const { Cell::new(false) };
    }
    // Shared by the caller and its workers: the workers run one at a time
    // while the caller waits, so the k-th allocation is the same in every
    // run.
    static SEEN: AtomicU64 = AtomicU64::new(0);
    static AT: AtomicU64 = AtomicU64::new(u64::MAX);
    static HIT: AtomicBool = AtomicBool::new(false);
    static HIT_WORKER: AtomicBool = AtomicBool::new(false);
    /// The indexes of the first [`WORKER_MAX`] allocations made on workers.
    const WORKER_MAX: usize = 64;
    static WORKER_AT: [AtomicU64; WORKER_MAX] = [const { AtomicU64::new(0) }; WORKER_MAX];
    static WORKER_N: AtomicUsize = AtomicUsize::new(0);

    pub struct FailAlloc;

    /// Counts an allocation of an armed thread; true if it is the one to
    /// fail.
    fn fail_now() -> bool {
        if !ARMED.try_with(Cell::get).unwrap_or(false) {
            return false;
        }
        let n = SEEN.fetch_add(1, SeqCst);
        let worker = WORKER.try_with(Cell::get).unwrap_or(false);
        if worker {
            let i = WORKER_N.fetch_add(1, SeqCst);
            if let Some(slot) = WORKER_AT.get(i) {
                slot.store(n, SeqCst);
            }
        }
        let hit = AT.load(SeqCst) == n;
        if hit {
            HIT.store(true, SeqCst);
            HIT_WORKER.store(worker, SeqCst);
            if SITE.with(Cell::get) {
                print_site();
            }
        }
        hit
    }

    thread_local! {
        static SITE: Cell<bool> = const { Cell::new(false) };
    }

    /// A child prints where the failed allocation was made (its caller's
    /// frames) on stderr, as `SWEEP-ALLOC-SITE f1 < f2 < ...`, before the
    /// engine sees the failure: if the process then dies, the parent knows
    /// which allocation aborted.
    pub fn print_sites() {
        SITE.with(|s| s.set(true));
    }

    fn print_site() {
        // The capture allocates: those allocations are not counted.
        ARMED.with(|a| a.set(false));
        let bt = std::backtrace::Backtrace::force_capture().to_string();
        let frames: Vec<&str> = bt
            .lines()
            .filter_map(|l| l.trim_start().split_once(": ").map(|x| x.1))
            .filter(|f| {
                !f.starts_with("std::")
                    && !f.starts_with("__rustc")
                    && !f.starts_with("<disk_fault_sweep::fail_alloc")
                    && !f.starts_with("disk_fault_sweep::fail_alloc")
                    && !f.starts_with("alloc::alloc::")
                    && !f.starts_with("<alloc::alloc::Global")
                    && !f.starts_with("alloc::raw_vec::")
            })
            .take(4)
            .collect();
        eprintln!("SWEEP-ALLOC-SITE {}", frames.join(" < "));
        ARMED.with(|a| a.set(true));
    }

    // SAFETY: every call is passed on to `System` unchanged, except the
    // failed ones, which return null as `GlobalAlloc` allows.
    unsafe impl GlobalAlloc for FailAlloc {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if fail_now() {
                return std::ptr::null_mut();
            }
            // SAFETY: the caller's contract is `System`'s.
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            if fail_now() {
                return std::ptr::null_mut();
            }
            // SAFETY: as above.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `System` (every allocation does).
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if fail_now() {
                return std::ptr::null_mut();
            }
            // SAFETY: as above.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    thread_local! {
        static PENDING: Cell<bool> = const { Cell::new(false) };
    }

    /// Fails the `at`-th allocation (0-based) of this thread's calls into
    /// the engine (see [`engine`]), and of the workers they run jobs on,
    /// from now on.
    pub fn arm(at: u64) {
        SEEN.store(0, SeqCst);
        AT.store(at, SeqCst);
        HIT.store(false, SeqCst);
        HIT_WORKER.store(false, SeqCst);
        WORKER_N.store(0, SeqCst);
        PENDING.with(|p| p.set(true));
    }

    /// Runs a call into the engine: its allocations count (if armed); the
    /// test's own (data buffers, the model) never do.
    pub fn engine<T>(f: impl FnOnce() -> T) -> T {
        ARMED.with(|a| a.set(PENDING.with(Cell::get)));
        let r = f();
        ARMED.with(|a| a.set(false));
        r
    }

    /// Stops counting on this thread (while the test's runner starts a
    /// worker); returns whether it was counting.
    pub fn pause() -> bool {
        ARMED.with(|a| a.replace(false))
    }

    /// Counts again if `armed` (what [`pause`] returned).
    pub fn resume(armed: bool) {
        ARMED.with(|a| a.set(armed));
    }

    /// Runs a job on a worker thread: counted as the caller's were
    /// (`armed`, from [`pause`]), and recorded as a worker's.
    pub fn worker<T>(armed: bool, f: impl FnOnce() -> T) -> T {
        WORKER.with(|w| w.set(true));
        ARMED.with(|a| a.set(armed));
        let r = f();
        ARMED.with(|a| a.set(false));
        WORKER.with(|w| w.set(false));
        r
    }

    /// Allocations counted since the last `arm`.
    pub fn seen() -> u64 {
        SEEN.load(SeqCst)
    }

    /// The indexes of the allocations made on workers since the last
    /// `arm` (the first 64).
    pub fn worker_points() -> Vec<u64> {
        let n = WORKER_N.load(SeqCst).min(WORKER_MAX);
        WORKER_AT[..n].iter().map(|a| a.load(SeqCst)).collect()
    }

    /// Whether the allocation failed since the last `arm` was made on a
    /// worker.
    pub fn hit_worker() -> bool {
        HIT_WORKER.load(SeqCst)
    }

    /// Stops counting; whether the chosen allocation was reached, and
    /// whether it was made on a worker.
    pub fn disarm() -> (bool, bool) {
        PENDING.with(|p| p.set(false));
        ARMED.with(|a| a.set(false));
        (HIT.load(SeqCst), HIT_WORKER.load(SeqCst))
    }
}

#[global_allocator]
static ALLOC: fail_alloc::FailAlloc = fail_alloc::FailAlloc;

/// A [`Parallel`] runner that runs each job on a thread of its own, one
/// job at a time (so the k-th allocation is the same in every run), with
/// the caller's allocation counting carried over to the worker: the
/// allocation sweep then reaches the allocations the engine's sealing
/// jobs make on the kernel's workers.
struct WorkerRunner;

impl Parallel for WorkerRunner {
    fn width(&self) -> usize {
        4
    }
    fn run(&self, jobs: &mut [Job<'_>]) {
        // Starting a thread allocates: the runner's, not the engine's.
        let armed = fail_alloc::pause();
        for job in jobs.iter_mut() {
            std::thread::scope(|s| {
                s.spawn(|| fail_alloc::worker(armed, job));
            });
        }
        fail_alloc::resume(armed);
    }
}

/// The std provider, except that every AEAD call first allocates its
/// request, and fails with `OutOfMemory` if that allocation fails, as the
/// kernel's provider may (`ENOMEM` from the crypto API).
struct AllocCrypto(StdCrypto);

impl AllocCrypto {
    fn request() -> mlsdisk_core::Result<Vec<u8>> {
        let mut req = Vec::new();
        req.try_reserve_exact(128).map_err(|_| Error::oom())?;
        Ok(req)
    }
}

impl Crypto for AllocCrypto {
    fn aead_seal(
        &self,
        key: &AeadKey,
        iv: &Iv,
        aad: &[u8],
        data: &mut [u8],
    ) -> mlsdisk_core::Result<Mac> {
        let _req = Self::request()?;
        self.0.aead_seal(key, iv, aad, data)
    }
    fn aead_open(
        &self,
        key: &AeadKey,
        iv: &Iv,
        aad: &[u8],
        data: &mut [u8],
        mac: &Mac,
    ) -> mlsdisk_core::Result<()> {
        let _req = Self::request()?;
        self.0.aead_open(key, iv, aad, data, mac)
    }
    fn sha256(&self, parts: &[&[u8]]) -> mlsdisk_core::Result<Hash> {
        self.0.sha256(parts)
    }
    fn hmac_sha256(&self, key: &[u8], parts: &[&[u8]]) -> mlsdisk_core::Result<Hash> {
        self.0.hmac_sha256(key, parts)
    }
    fn fill_random(&self, out: &mut [u8]) -> mlsdisk_core::Result<()> {
        self.0.fill_random(out)
    }
}

fn long() -> bool {
    std::env::var_os("MLSDISK_LONG").is_some_and(|v| v != "0")
}

/// `MLSDISK_SWEEP_TRACE=1` prints every request of the workloads.
fn trace() -> bool {
    std::env::var_os("MLSDISK_SWEEP_TRACE").is_some_and(|v| v != "0")
}

fn selected(name: &str) -> bool {
    match std::env::var("MLSDISK_SWEEP_ONLY") {
        Ok(f) if !f.is_empty() => name.contains(&f),
        _ => true,
    }
}

// ---------------------------------------------------------------------------
// Panics: quiet inside a case (the case reports it), loud elsewhere.

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

fn install_quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let dflt = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                dflt(info);
            }
        }));
    });
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic)".to_string()
    }
}

/// Runs `f` with panics caught and silenced; a panic becomes an `Err`.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    QUIET.with(|q| q.set(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    fail_alloc::disarm();
    QUIET.with(|q| q.set(false));
    r.map_err(|p| panic_text(&*p))
}

// ---------------------------------------------------------------------------
// The model: per LBA the set of acceptable contents (tags; 0 = zeros).

#[derive(Clone)]
struct Model {
    /// What a read may return now.
    live: Vec<Vec<u64>>,
    /// What a reopen after a crash may show.
    durable: Vec<Vec<u64>>,
    /// Every version live at some time since the last sync the caller
    /// made: what a sync the disk makes on its own (auto-sync, in the
    /// middle of a request) may commit.
    since: Vec<Vec<u64>>,
    /// Every tag ever written to the LBA (for reports only).
    history: Vec<Vec<u64>>,
    /// LBAs the test wrote or discarded.
    touched: Vec<bool>,
    next_tag: u64,
}

fn add(set: &mut Vec<u64>, t: u64) {
    if !set.contains(&t) {
        set.push(t);
    }
}

impl Model {
    fn new(cap: u64) -> Self {
        let n = cap as usize;
        Self {
            live: vec![vec![0]; n],
            durable: vec![vec![0]; n],
            since: vec![vec![0]; n],
            history: vec![vec![0]; n],
            touched: vec![false; n],
            next_tag: 1,
        }
    }

    fn tag(&mut self) -> u64 {
        let t = self.next_tag;
        self.next_tag += 1;
        t
    }

    /// A write (tag) or discard (tag 0) of `lba..lba + n` that returned `ok`.
    fn request(&mut self, lba: u64, n: u64, tag: u64, ok: bool) {
        for l in lba..lba + n {
            let i = l as usize;
            self.touched[i] = true;
            add(&mut self.history[i], tag);
            add(&mut self.since[i], tag);
            if ok {
                self.live[i] = vec![tag];
            } else {
                add(&mut self.live[i], tag);
            }
        }
    }

    fn synced(&mut self) {
        self.durable = self.live.clone();
        self.since = self.live.clone();
    }

    /// A sync may have happened: one in flight, or one the disk made on its
    /// own. It commits the blocks that reached the index by then, so each
    /// LBA any version of the time since the caller's last sync.
    fn maybe_synced(&mut self) {
        for (d, s) in self.durable.iter_mut().zip(&self.since) {
            for &t in s {
                add(d, t);
            }
        }
    }

    /// After a crash: what may be read is what was durable.
    fn crashed(&mut self) {
        self.live = self.durable.clone();
        self.since = self.durable.clone();
    }

    /// Which of `tags` the block `b` of `lba` holds.
    fn which(b: &[u8], lba: u64, tags: &[u64]) -> Option<u64> {
        tags.iter().copied().find(|&t| check(b, lba, t))
    }

    fn describe(&self, b: &[u8], lba: u64, want: &[u64]) -> String {
        match Self::which(b, lba, &self.history[lba as usize]) {
            Some(t) => format!("lba {lba}: read version {t}, acceptable {want:?} (stale/other)"),
            None if b.iter().all(|&x| x == 0) => {
                format!("lba {lba}: read zeros, acceptable {want:?}")
            }
            None => format!(
                "lba {lba}: read bytes that match no version ever written (acceptable {want:?})"
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// The device stack and the disk under test.

/// `FaultDisk` -> `CrashDisk` -> `MemDisk`, a rollback anchor and the disk.
struct Rig {
    cfg: DiskConfig,
    total: u64,
    mem: Arc<MemDisk>,
    crash: Arc<Crash>,
    fault: Dev,
    anchor: MemAnchor,
    disk: Option<Disk>,
    /// Seal on [`WorkerRunner`] with [`AllocCrypto`] (see [`parallel_setup`]).
    workers: bool,
    /// Write flushed buffers in the background, as late as the disk allows
    /// (see [`async_setup`]).
    lazy_writes: bool,
}

impl Rig {
    fn new(cfg: DiskConfig, total: u64) -> Self {
        let mem = Arc::new(MemDisk::new(total).unwrap());
        let crash = Arc::new(CrashDisk::new(mem.clone()));
        let fault = Arc::new(FaultDisk::new(crash.clone()));
        Self {
            cfg,
            total,
            mem,
            crash,
            fault,
            anchor: MemAnchor::new(),
            disk: None,
            workers: false,
            lazy_writes: false,
        }
    }

    fn for_setup(cfg: DiskConfig, setup: &Setup) -> Self {
        let mut rig = Self::new(cfg, setup.total);
        rig.workers = setup.workers;
        rig.lazy_writes = setup.lazy_writes;
        rig
    }

    fn create(&self) -> mlsdisk_core::Result<Disk> {
        let (dev, c, cfg, anchor) = self.args();
        let d = fail_alloc::engine(|| MlsDisk::create(dev, c, &KEY, cfg, anchor));
        d.map(|d| self.with_runner(d))
    }

    fn open(&self) -> mlsdisk_core::Result<Disk> {
        let (dev, c, cfg, anchor) = self.args();
        let d = fail_alloc::engine(|| MlsDisk::open(dev, c, &KEY, cfg, anchor));
        d.map(|d| self.with_runner(d))
    }

    fn with_runner(&self, mut d: Disk) -> Disk {
        if self.workers {
            d.set_parallel(Arc::new(WorkerRunner));
        }
        if self.lazy_writes {
            // Nothing is in flight on a disk just opened.
            let _ = d.set_async_writes(Arc::new(Lazy::default()));
        }
        d
    }

    /// The arguments of create and open, made by the caller: their
    /// allocations are not the engine's (an armed allocation failure never
    /// hits them).
    #[allow(clippy::type_complexity)]
    fn args(
        &self,
    ) -> (
        Dev,
        mlsdisk_core::CryptoRef,
        DiskConfig,
        Box<dyn mlsdisk_core::disk::RollbackAnchor>,
    ) {
        let c: mlsdisk_core::CryptoRef = if self.workers {
            Arc::new(AllocCrypto(StdCrypto))
        } else {
            crypto()
        };
        (
            self.fault.clone(),
            c,
            self.cfg.clone(),
            Box::new(self.anchor.clone()),
        )
    }

    fn d(&mut self) -> &mut Disk {
        self.disk.as_mut().expect("disk is open")
    }

    /// Drops the disk without a sync and keeps every other unflushed write.
    fn crash(&mut self) {
        self.disk = None;
        self.fault.heal().unwrap();
        self.crash.crash(&|i| i % 2 == 0).unwrap();
    }

    fn arm(&self, fault: Fault, k: u64) {
        self.fault.heal().unwrap();
        match fault {
            Fault::Read => self.fault.fail_nth(IoKind::Read, k, false),
            Fault::Write => self.fault.fail_nth(IoKind::Write, k, false),
            Fault::Flush => self.fault.fail_nth(IoKind::Flush, k, false),
            Fault::Torn => self.fault.tear_nth(k, 1, false),
            Fault::Alloc => Ok(()),
        }
        .unwrap();
    }

    fn sync_counter(&mut self) -> u64 {
        self.disk.as_mut().map_or(0, |d| d.stats().sync_counter)
    }
}

/// Requests of the workloads, applied to disk and model together.
fn write(rig: &mut Rig, m: &mut Model, lba: u64, n: u64) -> mlsdisk_core::Result<()> {
    let t = m.tag();
    let data = blocks(lba, n, t);
    let auto = rig.cfg.auto_sync;
    let counter = rig.sync_counter();
    let d = rig.d();
    let r = fail_alloc::engine(|| d.write(lba, &data));
    if trace() {
        eprintln!("write {lba}+{n} version {t}: {r:?}");
    }
    m.request(lba, n, t, r.is_ok());
    // A sync the disk made on its own (auto-sync) may have committed part
    // of the request; after a failure one may have been in flight.
    if rig.sync_counter() != counter || (r.is_err() && auto) {
        m.maybe_synced();
    }
    r
}

fn discard(rig: &mut Rig, m: &mut Model, lba: u64, n: u64) -> mlsdisk_core::Result<()> {
    let auto = rig.cfg.auto_sync;
    let counter = rig.sync_counter();
    let d = rig.d();
    let r = fail_alloc::engine(|| d.discard(lba, n));
    if trace() {
        eprintln!(
            "discard {lba}+{n}: {r:?} (sync counter {counter} -> {})",
            rig.sync_counter()
        );
    }
    m.request(lba, n, 0, r.is_ok());
    // As for writes: a commit the disk made on its own (room for the
    // index) may have made part of the discard durable; after a failure
    // one may have been in flight.
    if rig.sync_counter() != counter || (r.is_err() && auto) {
        m.maybe_synced();
    }
    r
}

fn sync(rig: &mut Rig, m: &mut Model) -> mlsdisk_core::Result<()> {
    let d = rig.d();
    let r = fail_alloc::engine(|| d.sync());
    if trace() {
        let c = rig.sync_counter();
        eprintln!("sync: {r:?} (counter {c})");
    }
    if r.is_ok() {
        m.synced();
    } else {
        m.maybe_synced();
    }
    r
}

// ---------------------------------------------------------------------------
// The checks after a failure.

/// Records failures of one case.
struct Report {
    name: String,
    fails: Vec<String>,
}

impl Report {
    fn fail(&mut self, check: &str, detail: String) {
        self.fails.push(format!("{}: {check}: {detail}", self.name));
    }
}

/// LBAs to read: every one the test touched plus the never-written tail.
fn lbas_to_read(m: &Model, never: u64) -> Vec<u64> {
    let cap = m.live.len() as u64;
    (0..cap)
        .filter(|&l| m.touched[l as usize] || l >= cap - never)
        .collect()
}

/// Reads every LBA of interest from `d`; each must be in `sets` (or an error
/// if `errors_ok`). Returns what was read (None: an error).
fn read_all<D: mlsdisk_core::bio::BlockSet>(
    d: &mut MlsDisk<D>,
    m: &Model,
    sets: &[Vec<u64>],
    never: u64,
    errors_ok: bool,
    check_name: &str,
    rep: &mut Report,
) -> Vec<Option<u64>> {
    let mut seen = vec![None; sets.len()];
    let mut b = vec![0u8; BLOCK_SIZE];
    for l in lbas_to_read(m, never) {
        let want = &sets[l as usize];
        match d.read(l, &mut b) {
            Ok(()) => match Model::which(&b, l, want) {
                Some(t) => seen[l as usize] = Some(t),
                None => {
                    rep.fail(check_name, m.describe(&b, l, want));
                    return seen;
                }
            },
            Err(e) if !errors_ok => {
                rep.fail(check_name, format!("lba {l}: read failed: {e:?}"));
                return seen;
            }
            Err(_) => {}
        }
    }
    seen
}

/// Every check after the operation under test returned (`rig.disk` may be
/// None: create or open failed). Consumes the disk.
fn check_after(rig: &mut Rig, m: &mut Model, never: u64, rep: &mut Report) {
    rig.fault.heal().unwrap();
    // 1. A new write, first thing after the failure: if it is acknowledged
    // the disk vouches that it can be synced (checked in step 4).
    let probe = 0;
    let stopped = rig.disk.as_ref().and_then(|d| d.failure());
    let w = rig.disk.is_some().then(|| write(rig, m, probe, 1));
    if let (Some(Ok(())), Some(e)) = (&w, stopped) {
        rep.fail(
            "ack-unsyncable",
            format!("a write returned Ok on a disk stopped by {e:?}"),
        );
    }
    // 1b. A discard while that write is buffered (acknowledged or
    // refused, it must not take the room the write's sync needs).
    if let (Some(Ok(())), Some(d)) = (&w, rig.disk.as_ref()) {
        let n = 8.min(d.nblocks() - NEVER - 1);
        let _ = discard(rig, m, probe + 1, n);
    }
    // 2. Reads of the live disk.
    let live = m.live.clone();
    let seen = match rig.disk.as_mut() {
        Some(d) => read_all(d, m, &live, never, true, "read", rep),
        None => vec![None; live.len()],
    };
    // 3. Reopen of the device as it is, without a further sync: the
    // unflushed writes are lost, what is left is the last sync or the one
    // in flight.
    let copy = Arc::new(MemDisk::new(rig.total).unwrap());
    copy.restore(&rig.mem.snapshot().unwrap()).unwrap();
    match MlsDisk::open(copy, crypto(), &KEY, rig.cfg.clone(), Box::new(NoAnchor)) {
        Ok(mut d) => {
            let durable = m.durable.clone();
            read_all(&mut d, m, &durable, never, false, "reopen-unsynced", rep);
        }
        Err(e) => rep.fail("reopen-unsynced", format!("open failed: {e:?}")),
    }
    // 4. A sync: it must succeed if the write of step 1 was acknowledged.
    let mut synced_ok = false;
    if rig.disk.is_some() {
        let s = sync(rig, m);
        match (&w, &s) {
            (Some(Ok(())), Err(e)) => {
                let why = rig.disk.as_ref().and_then(|d| d.failure());
                rep.fail(
                    "ack-unsyncable",
                    format!(
                        "a write after the fault returned Ok, then sync failed: {e:?} \
                         (the disk stopped on: {why:?})"
                    ),
                )
            }
            (_, Ok(())) => synced_ok = true,
            _ => {}
        }
    }
    // 5. Crash and reopen: the model's durable state; after an Ok sync,
    // exactly what the reads of step 1 showed.
    rig.crash();
    m.crashed();
    match rig.open() {
        Ok(mut d) => {
            let durable = m.durable.clone();
            let got = read_all(&mut d, m, &durable, never, false, "sync-crash-reopen", rep);
            if synced_ok {
                for (l, (s, g)) in seen.iter().zip(&got).enumerate().skip(1) {
                    if let (Some(s), Some(g)) = (s, g) {
                        if s != g {
                            rep.fail(
                                "sync-crash-reopen",
                                format!("lba {l}: read version {s} before the sync, {g} after"),
                            );
                            break;
                        }
                    }
                }
            }
        }
        Err(e) => rep.fail("sync-crash-reopen", format!("open failed: {e:?}")),
    }
}

// ---------------------------------------------------------------------------
// Operations and their preludes.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    WriteFlush,
    Sync,
    Discard,
    Clean,
    Compact,
    Create,
    Open,
}

const OPS: [Op; 7] = [
    Op::WriteFlush,
    Op::Sync,
    Op::Discard,
    Op::Clean,
    Op::Compact,
    Op::Create,
    Op::Open,
];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::WriteFlush => "write-flush",
            Op::Sync => "sync",
            Op::Discard => "discard",
            Op::Clean => "clean",
            Op::Compact => "compact",
            Op::Create => "create",
            Op::Open => "open",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Read,
    Write,
    Flush,
    Torn,
    /// An allocation failure (run in a child process, see the top).
    Alloc,
}

const FAULTS: [Fault; 4] = [Fault::Read, Fault::Write, Fault::Flush, Fault::Torn];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Read => "read-error",
            Fault::Write => "write-error",
            Fault::Flush => "flush-error",
            Fault::Torn => "torn-write",
            Fault::Alloc => "alloc-failure",
        }
    }
}

/// LBAs at the end of the disk that no workload writes.
const NEVER: u64 = 4;

/// The setup of the I/O sweep.
struct Setup {
    name: &'static str,
    cfg: DiskConfig,
    total: u64,
    /// Prelude writes of the cleaner case before the write that cleans.
    clean_prelude: u64,
    /// Seals on [`WorkerRunner`]'s threads, with [`AllocCrypto`].
    workers: bool,
    /// Writes flushed buffers in the background, when waited for (`Lazy`).
    lazy_writes: bool,
}

/// The disks of the device-fault sweep: the small test disk with its
/// metadata write-combining buffer, and without one (every metadata write
/// reaches the device at once, so more of them can fail one by one). The
/// write that flushes runs the index's compaction steps; the compaction
/// case leaves them to `background_step`.
fn io_setups() -> Vec<Setup> {
    vec![io_setup("meta-buffered", 8), io_setup("meta-unbuffered", 1)]
}

fn io_setup(name: &'static str, meta: u32) -> Setup {
    let nseg: u64 = if long() { 32 } else { 16 };
    let mut cfg = small_cfg();
    cfg.meta_write_buffer_blocks = meta;
    cfg.layout.index_blocks = 256;
    setup_with(name, cfg, nseg, false)
}

/// The allocation sweep's disk whose flushes seal on worker threads:
/// [`WorkerRunner`] as the runner and [`AllocCrypto`] as the provider,
/// whose AEAD calls allocate as the kernel's may. A run of 32 blocks or
/// more is sealed in jobs, and a flush is sealed in runs that each fit in
/// one segment: with a write buffer of 64 blocks and segments of 128, a
/// full flush has a run of 32 or more wherever the segment boundary falls.
fn parallel_setup() -> Setup {
    let mut cfg = small_cfg();
    cfg.meta_write_buffer_blocks = 8;
    cfg.write_buffer_blocks = 64;
    cfg.layout.seg_blocks = 128;
    cfg.layout.index_blocks = 1024;
    setup_with("parallel-seal", cfg, 12, true)
}

/// The small test disk writing its flushed buffers in the background, as
/// late as it allows (`Lazy`): a fault in such a write surfaces at the
/// next flush, cleaner move or commit, which waits for it.
fn async_setup() -> Setup {
    let mut s = io_setup("async-write", 8);
    s.lazy_writes = true;
    s
}

fn setup_with(name: &'static str, mut cfg: DiskConfig, nseg: u64, workers: bool) -> Setup {
    cfg.layout.journal_blocks = 64;
    let total = 2 + 64 + cfg.layout.index_blocks + nseg * u64::from(cfg.layout.seg_blocks);
    let clean_prelude = find_clean_prelude(&cfg, total);
    Setup {
        name,
        cfg,
        total,
        clean_prelude,
        workers,
        lazy_writes: false,
    }
}

/// The cleaner prelude: fill the disk, sync, then overwrite in runs of one
/// write buffer, `runs` of them (syncing every 4).
fn clean_workload(
    rig: &mut Rig,
    m: &mut Model,
    runs: u64,
    usable: u64,
) -> mlsdisk_core::Result<()> {
    write(rig, m, 0, usable)?;
    sync(rig, m)?;
    let wb = u64::from(rig.cfg.write_buffer_blocks);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for i in 0..runs {
        let l = rng.below(usable - wb);
        write(rig, m, l, wb)?;
        if i % 4 == 3 {
            sync(rig, m)?;
        }
    }
    Ok(())
}

/// How many prelude runs come before the first write that cleans.
fn find_clean_prelude(cfg: &DiskConfig, total: u64) -> u64 {
    let mut rig = Rig::new(cfg.clone(), total);
    rig.disk = Some(rig.create().unwrap());
    let cap = rig.d().nblocks();
    let mut m = Model::new(cap);
    clean_workload(&mut rig, &mut m, 0, cap - NEVER).unwrap();
    let wb = u64::from(cfg.write_buffer_blocks);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for i in 0..10_000 {
        let before = rig.d().stats().segments_cleaned;
        let l = rng.below(cap - NEVER - wb);
        write(&mut rig, &mut m, l, wb).unwrap();
        if rig.d().stats().segments_cleaned > before {
            return i;
        }
        if i % 4 == 3 {
            sync(&mut rig, &mut m).unwrap();
        }
    }
    panic!("no write cleaned a segment");
}

/// Brings a fresh disk to the state where `op` has work; returns the model.
fn prelude(op: Op, rig: &mut Rig, setup: &Setup) -> Model {
    rig.disk = Some(rig.create().unwrap());
    let cap = rig.d().nblocks();
    let mut m = Model::new(cap);
    let r = &mut m;
    match op {
        Op::Create => {}
        Op::WriteFlush => {
            write(rig, r, 0, 40).unwrap();
            sync(rig, r).unwrap();
            // A full write buffer: 40..46, 3 and 5 (and 56.. if it is
            // bigger than 8 blocks).
            write(rig, r, 40, 6).unwrap();
            write(rig, r, 3, 1).unwrap();
            write(rig, r, 5, 1).unwrap();
            let wb = u64::from(rig.cfg.write_buffer_blocks);
            if wb > 8 {
                write(rig, r, 56, wb - 8).unwrap();
            }
        }
        Op::Sync => {
            write(rig, r, 0, 40).unwrap();
            sync(rig, r).unwrap();
            write(rig, r, 20, 16).unwrap();
            write(rig, r, 50, 5).unwrap();
            discard(rig, r, 2, 2).unwrap();
            // A bigger write buffer holds more (never full: no flush).
            let wb = u64::from(rig.cfg.write_buffer_blocks);
            if wb > 8 {
                write(rig, r, 60, (wb - 8) / 2).unwrap();
            }
        }
        Op::Discard => {
            write(rig, r, 0, 72).unwrap();
            sync(rig, r).unwrap();
            write(rig, r, 30, 5).unwrap();
        }
        Op::Clean => {
            clean_workload(rig, r, setup.clean_prelude, cap - NEVER).unwrap();
        }
        Op::Compact => {
            // Tables pile up (the flushes run no compaction steps); a
            // reopen empties the caches, so the step reads as well.
            for round in 0..8 {
                write(rig, r, round * 9 % 60, 20).unwrap();
                sync(rig, r).unwrap();
            }
            rig.crash();
            r.crashed();
            rig.disk = Some(rig.open().unwrap());
        }
        Op::Open => {
            write(rig, r, 0, 40).unwrap();
            sync(rig, r).unwrap();
            write(rig, r, 10, 12).unwrap();
            discard(rig, r, 30, 2).unwrap();
            // A crash: the unsynced writes may be lost.
            rig.crash();
            r.crashed();
        }
    }
    m
}

/// Runs `op` with the model's bookkeeping; `Err` names a failed request.
fn perform(op: Op, rig: &mut Rig, m: &mut Model, setup: &Setup) -> Option<Error> {
    let r = match op {
        Op::WriteFlush => write(rig, m, 44, 4),
        Op::Clean => {
            let wb = u64::from(rig.cfg.write_buffer_blocks);
            let cap = rig.d().nblocks();
            // The write that follows the prelude in `find_clean_prelude`.
            let mut rng = Rng(0x2545_f491_4f6c_dd1d);
            let mut l = 0;
            for _ in 0..=setup.clean_prelude {
                l = rng.below(cap - NEVER - wb);
            }
            write(rig, m, l, wb)
        }
        Op::Sync => sync(rig, m),
        // Mapped and synced, buffered, and never written blocks; long
        // enough to fill memtables, so the index writes.
        Op::Discard => discard(rig, m, 10, 70),
        Op::Compact => {
            let d = rig.d();
            fail_alloc::engine(|| d.background_step()).map(|_| ())
        }
        Op::Create => match rig.create() {
            Ok(d) => {
                rig.disk = Some(d);
                Ok(())
            }
            Err(e) => Err(e),
        },
        Op::Open => match rig.open() {
            Ok(d) => {
                rig.disk = Some(d);
                Ok(())
            }
            Err(e) => Err(e),
        },
    };
    r.err()
}

/// One case: returns (fault reached, failures).
fn io_case(op: Op, fault: Fault, k: u64, setup: &Setup) -> (bool, Vec<String>) {
    io_case_counted(op, fault, k, setup).0
}

/// [`io_case`], and the allocations the operation made (alloc faults).
fn io_case_counted(op: Op, fault: Fault, k: u64, setup: &Setup) -> ((bool, Vec<String>), u64) {
    let name = format!("{}/{}/{}/k={k}", setup.name, op.name(), fault.name());
    let mut rep = Report {
        name: name.clone(),
        fails: Vec::new(),
    };
    let mut hit = true;
    let mut seen = 0;
    let r = guarded(|| {
        let mut cfg = setup.cfg.clone();
        if op == Op::Compact {
            cfg.compact_steps_per_flush = 0;
        }
        let mut rig = Rig::for_setup(cfg, setup);
        let mut m = if op == Op::Create {
            Model::new(
                mlsdisk_core::disk::Geometry::compute(setup.total, &setup.cfg.layout)
                    .unwrap()
                    .capacity,
            )
        } else {
            prelude(op, &mut rig, setup)
        };
        rig.arm(fault, k);
        let before = rig.fault.failed_count();
        if fault == Fault::Alloc {
            fail_alloc::arm(k);
        }
        let err = perform(op, &mut rig, &mut m, setup);
        seen = fail_alloc::seen();
        let (alloc_hit, _) = fail_alloc::disarm();
        hit = match fault {
            Fault::Alloc => alloc_hit,
            _ => rig.fault.failed_count() > before,
        };
        if op == Op::Create && err.is_some() {
            // A failed create leaves a device that opens to an empty disk
            // or does not open at all.
            rig.crash();
            match rig.open() {
                Ok(d) => rig.disk = Some(d),
                Err(_) => return,
            }
            // An empty disk that opened: its durable state is all zeros
            // and it must keep the contract like any other.
        } else if op == Op::Open && err.is_some() {
            // A failed open changes nothing: opening again works.
            match rig.open() {
                Ok(d) => rig.disk = Some(d),
                Err(e) => {
                    rep.fail("reopen-after-failed-open", format!("{e:?}"));
                    return;
                }
            }
        }
        check_after(&mut rig, &mut m, NEVER, &mut rep);
    });
    if let Err(p) = r {
        rep.fail("panic", p);
    }
    ((hit, rep.fails), seen)
}

/// Per (operation, fault kind): injected points and failed points.
#[derive(Default)]
struct Tally {
    rows: Vec<(String, String, u64, u64)>,
    fails: Vec<String>,
}

impl Tally {
    fn add(&mut self, op: &str, fault: &str, failed: &[String]) {
        let row = self.row(op, fault);
        self.rows[row].2 += 1;
        if !failed.is_empty() {
            self.rows[row].3 += 1;
            self.fails.extend(failed.iter().cloned());
        }
    }

    /// The row of (op, fault), made with zero points if new.
    fn row(&mut self, op: &str, fault: &str) -> usize {
        match self.rows.iter_mut().position(|r| r.0 == op && r.1 == fault) {
            Some(i) => i,
            None => {
                self.rows.push((op.to_string(), fault.to_string(), 0, 0));
                self.rows.len() - 1
            }
        }
    }

    fn print_and_assert(&self, title: &str, secs: f64) {
        let mut s = String::new();
        let _ = writeln!(s, "{title} ({secs:.1} s)");
        let _ = writeln!(
            s,
            "  {:<12} {:<24} {:>8} {:>8}",
            "op", "fault", "points", "failed"
        );
        for (op, f, n, bad) in &self.rows {
            let _ = writeln!(s, "  {op:<12} {f:<24} {n:>8} {bad:>8}");
        }
        // Which checks fire, and how often.
        let mut by_check: Vec<(String, u64)> = Vec::new();
        for f in &self.fails {
            let c = f.split(": ").nth(1).unwrap_or("?").to_string();
            match by_check.iter_mut().find(|x| x.0 == c) {
                Some(x) => x.1 += 1,
                None => by_check.push((c, 1)),
            }
        }
        for (c, n) in &by_check {
            let _ = writeln!(s, "  check {c}: {n} failures");
        }
        eprint!("{s}");
        assert!(
            self.fails.is_empty(),
            "{} failures; the first ones (MLSDISK_SWEEP_ONLY=<case> reruns one):\n{}",
            self.fails.len(),
            self.fails
                .iter()
                .take(12)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn every_operation_survives_every_device_fault_at_every_point() {
    install_quiet_hook();
    let t0 = Instant::now();
    // Default: every index up to 48, then every 4th (the later indexes of
    // long operations repeat the same few shapes); long: every index.
    let stride = |k: u64| if long() || k < 48 { 1 } else { 4 };
    let mut tally = Tally::default();
    // The operations that seal a write buffer also on the disk that seals
    // on worker threads, as the kernel's does.
    let mut cases: Vec<(Setup, Vec<Op>)> =
        io_setups().into_iter().map(|s| (s, OPS.to_vec())).collect();
    cases.push((parallel_setup(), vec![Op::WriteFlush, Op::Sync, Op::Clean]));
    cases.push((async_setup(), vec![Op::WriteFlush, Op::Sync, Op::Clean]));
    for (setup, ops) in cases {
        for op in ops {
            for fault in FAULTS {
                let row = format!("{} {}", fault.name(), setup.name);
                // A row of zero points: the operation does no such I/O.
                tally.row(op.name(), &row);
                let mut k = 0;
                loop {
                    let name = format!("{}/{}/{}/k={k}", setup.name, op.name(), fault.name());
                    if !selected(&name) {
                        if k > 4096 {
                            break;
                        }
                        k += stride(k);
                        continue;
                    }
                    let (hit, fails) = io_case(op, fault, k, &setup);
                    if !hit {
                        break;
                    }
                    tally.add(op.name(), &row, &fails);
                    k += stride(k);
                }
            }
        }
    }
    tally.print_and_assert("device-fault sweep", t0.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------
// The engine's own NoSpace, reached through configuration.

struct SpaceCfg {
    name: &'static str,
    cfg: DiskConfig,
    total: u64,
}

fn space_cfgs() -> Vec<SpaceCfg> {
    let mk = |name, seg: u32, wbuf: u32, index: u64, auto: bool| {
        let mut cfg = small_cfg();
        cfg.layout = LayoutConfig {
            seg_blocks: seg,
            op_percent: 10,
            journal_blocks: 64,
            index_blocks: index,
        };
        cfg.write_buffer_blocks = wbuf;
        cfg.auto_sync = auto;
        let nseg = 128 / u64::from(seg);
        SpaceCfg {
            name,
            cfg,
            total: 2 + 64 + index + nseg * u64::from(seg),
        }
    };
    vec![
        mk("index-tight/auto-sync", 8, 8, 40, true),
        mk("index-tight/no-auto-sync", 8, 8, 40, false),
        mk("seg<wbuf/no-auto-sync", 4, 16, 256, false),
        mk("seg<wbuf/auto-sync", 4, 16, 256, true),
    ]
}

/// A random workload until the first error; returns the operation that
/// failed (None: no error in `steps`), leaving disk and model at that point.
fn space_workload(rig: &mut Rig, m: &mut Model, seed: u64, steps: u64) -> Option<(Op, Error)> {
    let cap = rig.d().nblocks();
    let usable = cap - NEVER;
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut written = 0u64;
    for _ in 0..steps {
        let dice = rng.below(100);
        let l = rng.below(usable);
        let n = (1 + rng.below(6)).min(usable - l);
        let op = match dice {
            0..=74 if written < usable => Op::WriteFlush,
            0..=74 => Op::Clean,
            75..=84 => Op::Sync,
            85..=92 => Op::Discard,
            _ => Op::Compact,
        };
        let r = match op {
            Op::WriteFlush | Op::Clean => {
                written += n;
                write(rig, m, l, n)
            }
            Op::Sync => sync(rig, m),
            Op::Discard => discard(rig, m, l, n),
            _ => rig.d().background_step().map(|_| ()),
        };
        if let Err(e) = r {
            return Some((op, e));
        }
    }
    None
}

#[test]
fn every_operation_keeps_the_contract_when_the_engine_runs_out_of_space() {
    install_quiet_hook();
    let t0 = Instant::now();
    let seeds = if long() { 48 } else { 12 };
    let steps = if long() { 4000 } else { 1500 };
    let mut tally = Tally::default();
    let mut quiet_runs = Vec::new();
    for sc in space_cfgs() {
        for seed in 0..seeds {
            let name = format!("nospace/{}/seed={seed}", sc.name);
            if !selected(&name) {
                continue;
            }
            let mut rep = Report {
                name: name.clone(),
                fails: Vec::new(),
            };
            let mut what: Option<(Op, Error)> = None;
            let r = guarded(|| {
                let mut rig = Rig::new(sc.cfg.clone(), sc.total);
                let d = match rig.create() {
                    Ok(d) => d,
                    Err(e) => {
                        what = Some((Op::Create, e));
                        return;
                    }
                };
                rig.disk = Some(d);
                let cap = rig.d().nblocks();
                let mut m = Model::new(cap);
                let Some((op, e)) = space_workload(&mut rig, &mut m, seed, steps) else {
                    // No error: the same checks hold at the end of the run.
                    check_after(&mut rig, &mut m, NEVER, &mut rep);
                    return;
                };
                what = Some((op, e));
                if e.kind() != ErrorKind::NoSpace {
                    // Without a device fault, running out of space is the
                    // only error the engine may return.
                    rep.fail(
                        "unexpected-error",
                        format!("{} returned {e:?} with no fault injected", op.name()),
                    );
                }
                check_after(&mut rig, &mut m, NEVER, &mut rep);
            });
            if let Err(p) = r {
                rep.fail("panic", p);
            }
            match what {
                Some((op, e)) => {
                    let kind = if e.kind() == ErrorKind::NoSpace {
                        "nospace"
                    } else {
                        "other-error"
                    };
                    tally.add(op.name(), &format!("{kind} {}", sc.name), &rep.fails)
                }
                None if rep.fails.is_empty() => quiet_runs.push(name),
                None => tally.add("end-of-run", &format!("nospace {}", sc.name), &rep.fails),
            }
        }
    }
    if !quiet_runs.is_empty() {
        eprintln!(
            "{} runs reached no error: {}",
            quiet_runs.len(),
            quiet_runs.join(" ")
        );
    }
    tally.print_and_assert("engine NoSpace sweep", t0.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------
// Allocation failure, one child process per case.

const ALLOC_TEST: &str = "every_operation_survives_allocation_failure_at_every_point";
const ALLOC_CASE: &str = "MLSDISK_SWEEP_ALLOC_CASE";

/// What a child reported.
struct ChildReport {
    /// The failed allocation was reached.
    hit: bool,
    /// ... and made on a sealing worker.
    hit_worker: bool,
    /// Allocations counted.
    seen: u64,
    /// The indexes of the allocations made on workers (the first 64).
    workers: Vec<u64>,
    fails: Vec<String>,
}

/// What a child reported (None if it died), why it ended (exit status,
/// abort message) and where the failed allocation was made (its callers,
/// innermost first).
fn alloc_child(setup: &str, op: Op, k: u64) -> (Option<ChildReport>, String, String) {
    let r = alloc_child_run(setup, op, k, false);
    if r.0.is_some() {
        return r;
    }
    // It died: again, printing where (a backtrace per case is slow).
    let again = alloc_child_run(setup, op, k, true);
    (r.0, r.1, again.2)
}

const ALLOC_SITE: &str = "MLSDISK_SWEEP_ALLOC_SITE";

fn alloc_child_run(
    setup: &str,
    op: Op,
    k: u64,
    site: bool,
) -> (Option<ChildReport>, String, String) {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([ALLOC_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(ALLOC_CASE, format!("{setup}/{}/{k}", op.name()));
    if site {
        cmd.env(ALLOC_SITE, "1");
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut res: Option<ChildReport> = None;
    let mut fails = Vec::new();
    for line in stdout.lines() {
        // libtest may print the test's name on the same line first.
        if let Some(r) = line.split_once("SWEEP-ALLOC ").map(|x| x.1) {
            let field = |name: &str| {
                r.split(' ')
                    .find_map(|f| f.strip_prefix(name).and_then(|x| x.strip_prefix('=')))
                    .unwrap_or("")
            };
            res = Some(ChildReport {
                hit: field("hit") == "1",
                hit_worker: field("hit_worker") == "1",
                seen: field("seen").parse().unwrap_or(0),
                workers: field("workers")
                    .split(',')
                    .filter_map(|x| x.parse().ok())
                    .collect(),
                fails: Vec::new(),
            });
        } else if let Some(f) = line.split_once("SWEEP-FAIL ").map(|x| x.1) {
            fails.push(f.to_string());
        }
    }
    if let Some(r) = res.as_mut() {
        r.fails = fails;
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr
        .lines()
        .find(|l| l.contains("memory allocation"))
        .or_else(|| stderr.lines().rev().find(|l| !l.trim().is_empty()));
    let why = format!("{}; {}", out.status, last.unwrap_or("(no output)"));
    let site = stderr
        .lines()
        .find_map(|l| l.split_once("SWEEP-ALLOC-SITE ").map(|x| x.1.to_string()))
        .unwrap_or_default();
    (res, why, site)
}

/// Whether the allocation that aborted is a fixed-size `Box::new` or
/// `Arc::new` made by the engine itself (the frames above the engine's
/// are only those constructors). Stable Rust has no fallible `Box::new` or
/// `Arc::new`, and the core forbids `unsafe`, so create and open, which
/// build the engine's objects, still abort on these (a few dozen bytes to
/// 2 KiB each, never sized by input). Only create and open are allowed
/// them (reported as known aborts, `MLSDISK_SWEEP_STRICT=1` fails them);
/// any other operation that aborts fails.
fn fixed_size_constructor(op: Op, site: &str) -> bool {
    if !matches!(op, Op::Create | Op::Open) {
        return false;
    }
    let mut frames = site.split(" < ");
    let mut ctor = false;
    for f in frames.by_ref() {
        if f.starts_with("mlsdisk_core::") {
            return ctor;
        }
        if !matches!(
            f,
            "alloc::boxed::box_new_uninit"
                | "alloc::boxed::Box<T>::new"
                | "alloc::sync::Arc<T>::new"
        ) {
            return false;
        }
        ctor = true;
    }
    false
}

/// The setups of the allocation sweep, by name.
fn alloc_setup(name: &str) -> Setup {
    match name {
        "parallel-seal" => parallel_setup(),
        _ => io_setup("meta-buffered", 8),
    }
}

/// The child's side: runs the case named in the environment.
fn alloc_child_main(case: &str) {
    if std::env::var_os(ALLOC_SITE).is_some() {
        fail_alloc::print_sites();
    }
    let (setup, rest) = case.split_once('/').unwrap();
    let (op, k) = rest.rsplit_once('/').unwrap();
    let op = OPS.into_iter().find(|o| o.name() == op).unwrap();
    let k: u64 = k.parse().unwrap();
    let setup = alloc_setup(setup);
    let ((hit, fails), seen) = io_case_counted(op, Fault::Alloc, k, &setup);
    let workers: Vec<String> = fail_alloc::worker_points()
        .iter()
        .map(u64::to_string)
        .collect();
    println!(
        "SWEEP-ALLOC hit={} hit_worker={} seen={seen} workers={}",
        u8::from(hit),
        u8::from(hit && fail_alloc::hit_worker()),
        workers.join(",")
    );
    for f in fails {
        println!("SWEEP-FAIL {f}");
    }
}

/// `n` points spread over `0..total` (all of them if there are fewer):
/// the first half at the start, the rest evenly over what is left.
fn spread(total: u64, n: u64) -> Vec<u64> {
    if total <= n {
        return (0..total).collect();
    }
    let mut v: Vec<u64> = (0..n / 2).collect();
    let rest = n - n / 2;
    v.extend((0..rest).map(|i| n / 2 + (total - n / 2) * i / rest));
    v.dedup();
    v
}

#[test]
fn every_operation_survives_allocation_failure_at_every_point() {
    install_quiet_hook();
    if let Ok(case) = std::env::var(ALLOC_CASE) {
        alloc_child_main(&case);
        return;
    }
    let t0 = Instant::now();
    let mut tally = Tally::default();
    // Points per operation, spread over its allocations (all of them if
    // there are fewer): a child process each.
    let budget: u64 = if long() { 200 } else { 24 };
    let strict = std::env::var_os("MLSDISK_SWEEP_STRICT").is_some_and(|v| v != "0");
    let mut known: Vec<String> = Vec::new();
    // (setup, operation): every operation on the small disk; the ones that
    // seal a write buffer on the disk that seals on worker threads, where
    // each allocation a worker makes is a point as well (up to 16).
    let mut cases: Vec<(&str, Op)> = OPS.iter().map(|&op| ("meta-buffered", op)).collect();
    for op in [Op::WriteFlush, Op::Sync, Op::Clean] {
        cases.push(("parallel-seal", op));
    }
    for (setup, op) in cases {
        let row = format!("alloc-failure {setup}");
        tally.row(op.name(), &row);
        if !selected(&format!("{setup}/{}/alloc-failure", op.name())) {
            continue;
        }
        // A run that fails no allocation counts them.
        let (res, why, _) = alloc_child(setup, op, u64::MAX);
        let Some(clean) = res else {
            tally.add(
                op.name(),
                &row,
                &[format!("{setup}/{}: no-fault run died: {why}", op.name())],
            );
            continue;
        };
        if !clean.fails.is_empty() {
            tally.add(op.name(), &row, &clean.fails);
            continue;
        }
        let mut points = spread(clean.seen, budget);
        let on_workers = setup == "parallel-seal";
        if on_workers {
            if clean.workers.is_empty() {
                tally.add(
                    op.name(),
                    &row,
                    &[format!(
                        "{setup}/{}: no allocation was made on a sealing worker \
                         ({} in all): the setup no longer seals in parallel",
                        op.name(),
                        clean.seen
                    )],
                );
                continue;
            }
            let n = clean.workers.len() as u64;
            points.extend(spread(n, 16).into_iter().map(|i| clean.workers[i as usize]));
            points.sort_unstable();
            points.dedup();
        }
        let mut worker_hits = 0u64;
        for k in points {
            let name = format!("{setup}/{}/alloc-failure/k={k}", op.name());
            match alloc_child(setup, op, k) {
                (Some(r), _, _) if !r.hit => break,
                (Some(r), _, _) => {
                    worker_hits += u64::from(r.hit_worker);
                    tally.add(op.name(), &row, &r.fails)
                }
                (None, why, site) if !strict && fixed_size_constructor(op, &site) => {
                    known.push(format!("{name}: {why}; at {site}"));
                }
                (None, why, site) => tally.add(
                    op.name(),
                    &row,
                    &[format!(
                        "{name}: abort: the process died ({why}; at {site}); rerun: \
                         {ALLOC_CASE}={setup}/{}/{k} <test binary> {ALLOC_TEST} --exact --nocapture",
                        op.name()
                    )],
                ),
            }
        }
        if on_workers {
            eprintln!(
                "  {setup}/{}: {} allocations, {} on sealing workers; {worker_hits} worker points failed",
                op.name(),
                clean.seen,
                clean.workers.len()
            );
            if worker_hits == 0 {
                tally.add(
                    op.name(),
                    &row,
                    &[format!(
                        "{setup}/{}: no failed allocation was a worker's",
                        op.name()
                    )],
                );
            }
        }
    }
    // Printed, never counted as passes: the points where create or open
    // still abort on a fixed-size constructor (see fixed_size_constructor).
    for k in &known {
        eprintln!("  known abort (fixed-size Box/Arc::new): {k}");
    }
    eprintln!(
        "  {} known aborts (create/open, fixed-size Box/Arc::new; MLSDISK_SWEEP_STRICT=1 fails them)",
        known.len()
    );
    tally.print_and_assert("allocation-failure sweep", t0.elapsed().as_secs_f64());
}

/// An allocation failure that comes before the request's first device
/// write is a refusal: the disk stays usable (no `failure()`), the request
/// can be retried, and reads and syncs go on. Each allocation of a
/// one-block buffered write and of a read is failed in turn; on the old
/// guard every such `OutOfMemory` stopped the disk.
#[test]
fn an_allocation_failure_before_any_device_write_leaves_the_disk_usable() {
    install_quiet_hook();
    if std::env::var_os(ALLOC_CASE).is_some() {
        return;
    }
    let setup = io_setup("meta-buffered", 8);
    let mut rig = Rig::new(setup.cfg.clone(), setup.total);
    rig.disk = Some(rig.create().unwrap());
    let base = blocks(0, 8, 1);
    rig.d().write(0, &base).unwrap();
    rig.d().sync().unwrap();
    let (mut refused, mut kept) = (0u64, 0u64);
    // Writes: one block into a buffer that has room (no flush).
    for k in 0.. {
        let data = blocks(3, 1, 100 + k);
        let writes = rig.d().device().counts().1;
        fail_alloc::arm(k);
        let d = rig.d();
        let r = fail_alloc::engine(|| d.write(3, &data));
        let (hit, _) = fail_alloc::disarm();
        if !hit {
            r.unwrap();
            break;
        }
        let Err(e) = r else { continue };
        assert_eq!(e.kind(), ErrorKind::OutOfMemory, "write, k={k}: {e:?}");
        if rig.d().device().counts().1 != writes {
            continue;
        }
        refused += 1;
        assert!(
            rig.d().failure().is_none(),
            "write, k={k}: an allocation failure before any device write stopped the disk"
        );
        // The block reads as its old or its new content, and a retry works.
        let mut got = vec![0u8; BLOCK_SIZE];
        rig.d().read(3, &mut got).unwrap();
        assert!(
            got == data || got == base[3 * BLOCK_SIZE..4 * BLOCK_SIZE],
            "write, k={k}"
        );
        rig.d().write(3, &data).unwrap();
        rig.d().read(3, &mut got).unwrap();
        assert_eq!(got, data, "write retry, k={k}");
        kept += 1;
    }
    rig.d().sync().unwrap();
    // Reads of synced (device) blocks.
    let want = blocks(5, 1, 1);
    for k in 0.. {
        let mut got = vec![0u8; BLOCK_SIZE];
        fail_alloc::arm(k);
        let d = rig.d();
        let r = fail_alloc::engine(|| d.read(5, &mut got));
        let (hit, _) = fail_alloc::disarm();
        if !hit {
            r.unwrap();
            assert_eq!(got, want);
            break;
        }
        if let Err(e) = r {
            assert_eq!(e.kind(), ErrorKind::OutOfMemory, "read, k={k}: {e:?}");
            assert!(
                rig.d().failure().is_none(),
                "read, k={k}: an allocation failure stopped the disk"
            );
            refused += 1;
        }
        rig.d().read(5, &mut got).unwrap();
        assert_eq!(got, want, "read retry, k={k}");
    }
    assert!(
        refused > 0 && kept > 0,
        "no allocation failure was injected"
    );
    rig.d().sync().unwrap();
    rig.crash();
    rig.disk = Some(rig.open().unwrap());
    let mut got = vec![0u8; BLOCK_SIZE];
    rig.d().read(5, &mut got).unwrap();
    assert_eq!(got, want);
    eprintln!("  {refused} allocation failures refused, the disk usable after each");
}
