//! `mlsdisk-bench`: MlsDisk vs the encrypt-only CryptDisk vs the raw file,
//! on the eight workloads of the seed's table, with medians and ratios.
//!
//! ```text
//! cargo run --release -p mlsdisk-tools --bin mlsdisk-bench -- [options]
//!   --size-mib N     working set (default 128): the random and read
//!                    phases use its blocks, at the start of the disk
//!   --disk-gib N     logical disk size in GiB (default: the working set);
//!                    the image file is sparse, so 100-1024 GiB is cheap
//!   --fill-pct P     before the phases, write P percent of the disk
//!                    sequentially, untimed (default 0; with --steady and
//!                    P >= 80 the random writes run on a full disk)
//!   --json FILE      also write every measurement as JSON to FILE
//!   --rnd-mib N      data moved by each random phase (default 32)
//!   --reps N         repetitions; medians are reported (default 3)
//!   --no-direct      use the page cache (default: O_DIRECT)
//!   --iops N         device model: at most N requests/s (default 0 = off)
//!   --bw-mib N       device model: N MiB/s bandwidth (default 0 = off)
//!   --file PATH      image file (default $TMPDIR/mlsdisk-bench.img)
//!   --targets LIST   comma list of raw,crypt,mls (default all)
//!   --index KIND     MlsDisk index: lsm (default) or mem
//!   --threads N      MlsDisk seals each write buffer, writes it beside
//!                    its index updates, and fetches each read of 64 or
//!                    more device blocks, on a pool of N threads (default
//!                    1: all on the caller's; CryptDisk always uses one)
//!   --async-writes   MlsDisk writes each flushed write buffer to the
//!                    device on a write thread and goes on (the
//!                    next flush, a sync, the cleaner and a read of its
//!                    blocks wait for it); default: the flush waits
//!   --key-len N      MlsDisk per-block key length, data and metadata:
//!                    16 (AES-128-GCM) or 32 (AES-256-GCM, the default)
//!   --cache-mib N    MlsDisk's cache budget in MiB (DiskConfig
//!                    cache_budget_bytes; default 64, 0 = the LSM cache
//!                    sizes of the default configuration)
//!   --steady         run all phases back to back on one disk, so random
//!                    writes overwrite a full disk and the cleaner runs
//!                    (default: each random-write phase starts on a fresh
//!                    disk filled sequentially, untimed, and the reads on a
//!                    sequential refill, as when each fio job runs alone)
//!   --no-open-times  skip MlsDisk's create / clean-open / crash-recovery
//!                    timing (default: measured once per rep on a disk of
//!                    the same size and fill, after the phases)
//!   --skew T/S       random phases send T percent of their requests to
//!                    the first S percent of the working set (default:
//!                    uniform; 80/20 is the classic skew)
//!   --cleaner P      MlsDisk's victim choice: greedy or cost-benefit
//!                    (DiskConfig cleaner_policy; default: its default)
//!   --reserve-pct P  MlsDisk's over-provisioning: the percent of the data
//!                    region kept out of the logical capacity (layout
//!                    op_percent, 1..=50, default 10; `mlsdisk format
//!                    --reserve`); more reserve, cheaper cleaning
//!   --iodepth N      N requests in flight at once, one thread each, for
//!                    every target (default 1; --jobs is the same). See
//!                    `bench::Mls` for what of MlsDisk runs in parallel
//!   --phases LIST    comma list of the phases to run (default all:
//!                    seq-write,rnd-write-4K,rnd-write-32K,rnd-write-256K,
//!                    seq-read,rnd-read-4K,rnd-read-32K,rnd-read-256K)
//! ```
//!
//! Besides MiB/s per phase (the seed's eight columns), it prints per target
//! and phase IOPS, p50/p99 request latency and device blocks read per user
//! block read; the peak resident memory of the process while each target
//! ran (VmHWM, reset before each) and the peak of its live heap allocations
//! (counted by the global allocator, reset before each): with many threads
//! the resident peak also holds what the C library's per-thread arenas
//! keep after a free (at `--iodepth 16`, about 90 MiB more than the live
//! heap for MlsDisk), which the kernel module does not have; for MlsDisk the create, clean open and
//! crash recovery times and the device blocks each open read; for MlsDisk's
//! reads the index blocks read from the device per user block read and the
//! index block-cache hit rate.

use std::path::PathBuf;
use std::sync::Arc;

use peak_alloc::PeakAlloc;

use mlsdisk_core::bio::FileDisk;
use mlsdisk_core::bio::BLOCK_SIZE;
use mlsdisk_core::disk::{CleanerPolicy, Counted, DiskConfig, LayoutConfig, MlsDisk, NoAnchor};
use mlsdisk_core::log::LogStoreConfig;
use mlsdisk_core::platform::StdCrypto;
use mlsdisk_core::CryptoRef;
use mlsdisk_tools::bench::*;
use mlsdisk_tools::cryptdisk::CryptDisk;
use mlsdisk_tools::pool::{PoolParallel, PoolSpawn, FILE_READERS};

/// Counts live heap bytes and their peak (what the engine and the
/// workload hold, without the allocator's retained free memory).
#[global_allocator]
static HEAP: PeakAlloc = PeakAlloc;
use mlsdisk_tools::throttle::Throttle;

struct Opts {
    size_mib: u64,
    rnd_mib: u64,
    reps: usize,
    direct: bool,
    iops: u64,
    bw_mib: u64,
    file: PathBuf,
    targets: Vec<String>,
    index: String,
    steady: bool,
    threads: usize,
    async_writes: bool,
    disk_blocks: u64,
    fill_pct: u64,
    json: Option<PathBuf>,
    open_times: bool,
    key_len: u8,
    cache_bytes: u64,
    iodepth: usize,
    phases: Vec<bool>,
    skew: Option<(u64, u64)>,
    cleaner: CleanerPolicy,
    reserve_pct: u8,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        size_mib: 128,
        rnd_mib: 32,
        reps: 3,
        direct: true,
        iops: 0,
        bw_mib: 0,
        file: default_image(),
        targets: vec!["raw".into(), "crypt".into(), "mls".into()],
        index: "lsm".into(),
        steady: false,
        threads: 1,
        async_writes: false,
        disk_blocks: 0,
        fill_pct: 0,
        json: None,
        open_times: true,
        key_len: DiskConfig::default().data_key_len,
        cache_bytes: DiskConfig::default().cache_budget_bytes,
        iodepth: 1,
        phases: vec![true; PHASES.len()],
        skew: None,
        cleaner: DiskConfig::default().cleaner_policy,
        reserve_pct: DiskConfig::default().layout.op_percent,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        let num = |s: String| s.parse::<u64>().map_err(|e| format!("{s}: {e}"));
        match a.as_str() {
            "--size-mib" => o.size_mib = num(val()?)?,
            "--rnd-mib" => o.rnd_mib = num(val()?)?,
            "--reps" => o.reps = num(val()?)? as usize,
            "--no-direct" => o.direct = false,
            "--direct" => o.direct = true,
            "--iops" => o.iops = num(val()?)?,
            "--bw-mib" => o.bw_mib = num(val()?)?,
            "--file" => o.file = PathBuf::from(val()?),
            "--targets" => o.targets = val()?.split(',').map(String::from).collect(),
            "--index" => o.index = val()?,
            "--steady" => o.steady = true,
            "--skew" => {
                let v = val()?;
                let (a, b) = v
                    .split_once('/')
                    .ok_or("--skew: TRAFFIC/SPACE in percent, e.g. 80/20")?;
                let (a, b) = (num(a.to_string())?, num(b.to_string())?);
                if !(1..=100).contains(&a) || !(1..=100).contains(&b) {
                    return Err("--skew: both percentages must be 1..=100".into());
                }
                o.skew = Some((a, b));
            }
            "--cleaner" => {
                o.cleaner = match val()?.as_str() {
                    "greedy" => CleanerPolicy::Greedy,
                    "cost-benefit" => CleanerPolicy::CostBenefit,
                    c => return Err(format!("--cleaner {c}: greedy or cost-benefit")),
                }
            }
            "--reserve-pct" => {
                o.reserve_pct = match num(val()?)? {
                    p @ 1..=50 => p as u8,
                    p => return Err(format!("--reserve-pct {p}: 1..=50")),
                }
            }
            "--threads" => o.threads = num(val()?)?.max(1) as usize,
            "--async-writes" => o.async_writes = true,
            "--disk-gib" => {
                let g = num(val()?)?;
                if g == 0 || g > 16 * 1024 {
                    return Err("--disk-gib must be 1..=16384".into());
                }
                o.disk_blocks = g * 256 * 1024;
            }
            "--fill-pct" => {
                o.fill_pct = num(val()?)?;
                if o.fill_pct > 100 {
                    return Err("--fill-pct must be 0..=100".into());
                }
            }
            "--json" => o.json = Some(PathBuf::from(val()?)),
            "--no-open-times" => o.open_times = false,
            "--iodepth" | "--jobs" => {
                o.iodepth = num(val()?)? as usize;
                if !(1..=256).contains(&o.iodepth) {
                    return Err("--iodepth must be 1..=256".into());
                }
            }
            "--phases" => {
                let v = val()?;
                o.phases = vec![false; PHASES.len()];
                for p in v.split(',') {
                    let i = PHASES
                        .iter()
                        .position(|(n, _)| *n == p)
                        .ok_or(format!("--phases: unknown phase {p}"))?;
                    o.phases[i] = true;
                }
            }
            "--cache-mib" => {
                let m = num(val()?)?;
                if m > 1 << 20 {
                    return Err("--cache-mib must be at most 1048576".into());
                }
                o.cache_bytes = m << 20;
            }
            "--key-len" => {
                o.key_len = match num(val()?)? {
                    16 => 16,
                    32 => 32,
                    k => return Err(format!("--key-len {k}: 16 or 32")),
                }
            }
            "-h" | "--help" => {
                println!(
                    "{}",
                    mlsdisk_tools::usage_from_doc(include_str!("mlsdisk-bench.rs"))
                );
                std::process::exit(0);
            }
            _ => return Err(format!("unknown option {a}")),
        }
    }
    if o.size_mib == 0 || o.reps == 0 {
        return Err("size and reps must be positive".into());
    }
    if o.size_mib > (1 << 24) {
        return Err("--size-mib too large".into());
    }
    let ws = o.size_mib * 256;
    if o.disk_blocks == 0 {
        o.disk_blocks = ws;
    }
    if o.disk_blocks < ws {
        return Err("--disk-gib is smaller than the working set".into());
    }
    Ok(o)
}

type Dev = Throttle<FileDisk>;

fn device(o: &Opts, nblocks: u64) -> Dev {
    let f = FileDisk::create(&o.file, nblocks, o.direct)
        .and_then(with_readers)
        .unwrap_or_else(|e| {
            eprintln!("cannot create {}: {e:?}", o.file.display());
            std::process::exit(1)
        });
    Throttle::new(f, o.iops, o.bw_mib)
}

/// `f` reading its scattered reads on a persistent pool (as `mlsdisk
/// serve` does).
fn with_readers(mut f: FileDisk) -> mlsdisk_core::Result<FileDisk> {
    f.set_readers(Arc::new(PoolParallel::new(FILE_READERS)?));
    Ok(f)
}

const KEY: [u8; 32] = [0x42u8; 32];

/// MlsDisk's configuration: the defaults with `--key-len` for data and
/// metadata keys.
fn mls_cfg(o: &Opts) -> DiskConfig {
    let d = DiskConfig::default();
    DiskConfig {
        data_key_len: o.key_len,
        store: LogStoreConfig {
            key_len: usize::from(o.key_len),
            ..d.store
        },
        cache_budget_bytes: o.cache_bytes,
        cleaner_policy: o.cleaner,
        layout: LayoutConfig {
            op_percent: o.reserve_pct,
            ..d.layout
        },
        ..d
    }
}

/// Backing blocks an MlsDisk needs for a logical capacity of `want`.
fn mls_device_blocks(cfg: &DiskConfig, want: u64) -> mlsdisk_core::Result<u64> {
    // Grow the device until the logical capacity covers the disk.
    let mut total = want + want / 4 + 8192;
    loop {
        let g = mlsdisk_core::disk::Geometry::compute(total, &cfg.layout)?;
        if g.capacity >= want {
            return Ok(total);
        }
        total += want / 16 + 256;
    }
}

fn make(o: &Opts, name: &str, crypto: &CryptoRef) -> mlsdisk_core::Result<Box<dyn Target>> {
    let key = KEY;
    let disk = o.disk_blocks;
    Ok(match name {
        "raw" => Box::new(Raw(Arc::new(Counted::new(device(o, disk))))),
        "crypt" => {
            let dev = Arc::new(Counted::new(device(o, disk / 127 * 128 + 256)));
            // The image file was just created: it reads as zeros.
            Box::new(Crypt(
                CryptDisk::create_zeroed(dev.clone(), crypto.clone(), &key)?,
                dev,
            ))
        }
        "mls" => {
            let cfg = mls_cfg(o);
            let dev = device(o, mls_device_blocks(&cfg, disk)?);
            let mut disk = match o.index.as_str() {
                "mem" => MlsDisk::create_with_mem_index(
                    dev,
                    crypto.clone(),
                    cfg,
                    Box::new(NoAnchor),
                    mlsdisk_core::disk::MemIndexStore::new(),
                )?,
                _ => MlsDisk::create(dev, crypto.clone(), &key, cfg, Box::new(NoAnchor))?,
            };
            if o.threads > 1 {
                disk.set_parallel(Arc::new(PoolParallel::new(o.threads)?));
            }
            if o.async_writes {
                disk.set_async_writes(Arc::new(PoolSpawn::new()?))?;
            }
            Box::new(Mls::new(disk))
        }
        _ => {
            eprintln!("unknown target {name}");
            std::process::exit(2)
        }
    })
}

fn label(t: &str) -> &'static str {
    match t {
        "raw" => "raw file",
        "crypt" => "CryptDisk",
        _ => "MlsDisk",
    }
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mlsdisk-bench: {e}");
            std::process::exit(2)
        }
    };
    let crypto: CryptoRef = Arc::new(StdCrypto);
    let ws = o.size_mib * 256;
    let fill = o.disk_blocks / 100 * o.fill_pct;
    let rnd = (o.rnd_mib * 256).max(64);
    println!(
        "# mlsdisk-bench: disk {} MiB ({} % filled first), working set {} MiB, {} MiB per random phase, {} reps, {}, device model: {}, mode {}",
        o.disk_blocks / 256,
        o.fill_pct,
        o.size_mib,
        o.rnd_mib,
        o.reps,
        if o.direct { "O_DIRECT" } else { "page cache" },
        if o.iops == 0 && o.bw_mib == 0 {
            "off".to_string()
        } else {
            format!("{} IOPS, {} MiB/s", o.iops, o.bw_mib)
        },
        if o.steady {
            "steady state: all phases on one disk, cleaner active"
        } else {
            "fresh: each random-write phase on a freshly filled disk, reads after a sequential refill"
        }
    );
    println!(
        "# random requests: {}; MlsDisk cleaner: {:?}, reserve {} %, {} thread(s), flush writes {}",
        match o.skew {
            Some((t, s)) => format!("{t} % to the first {s} % of the working set"),
            None => "uniform".into(),
        },
        o.cleaner,
        o.reserve_pct,
        o.threads,
        if o.async_writes {
            "in the background (--async-writes)"
        } else {
            "waited for"
        }
    );
    // results[target][phase] = per-rep results
    let mut results: Vec<Vec<Vec<PhaseResult>>> =
        vec![vec![Vec::new(); PHASES.len()]; o.targets.len()];
    let mut peak_kib: Vec<Vec<u64>> = vec![Vec::new(); o.targets.len()];
    let mut heap_kib: Vec<Vec<u64>> = vec![Vec::new(); o.targets.len()];
    let mut opens: Vec<OpenTimes> = Vec::new();
    let fail = |what: &str, e: mlsdisk_core::Error| -> ! {
        eprintln!("{what}: {e}");
        std::process::exit(1)
    };
    let prefill = |target: &dyn Target, rng: &mut Rng, t: &str| {
        if fill > 0 {
            if let Err(e) = run_phase(target, Phase::SeqWrite, fill, 0, o.iodepth, rng) {
                fail(&format!("{t} fill"), e)
            }
        }
    };
    for rep in 0..o.reps {
        for (ti, t) in o.targets.iter().enumerate() {
            reset_peak_rss();
            HEAP.reset_peak_usage();
            let mut rng = Rng::new(0x1234_5678 + rep as u64);
            let mut target =
                make(&o, t, &crypto).unwrap_or_else(|e| fail(&format!("{t}: create"), e));
            prefill(&*target, &mut rng, t);
            for (pi, (name, phase)) in PHASES.iter().enumerate() {
                if !o.phases[pi] {
                    continue;
                }
                if !o.steady && matches!(phase, Phase::RndWrite(_)) {
                    drop(target);
                    target =
                        make(&o, t, &crypto).unwrap_or_else(|e| fail(&format!("{t}: create"), e));
                    prefill(&*target, &mut rng, t);
                }
                if !o.steady && matches!(phase, Phase::RndWrite(_) | Phase::SeqRead) {
                    if let Err(e) =
                        run_phase(&*target, Phase::SeqWrite, ws, rnd, o.iodepth, &mut rng)
                    {
                        eprintln!("{t} fill: {e:?}");
                        std::process::exit(1)
                    }
                }
                match run_phase_skewed(&*target, *phase, ws, rnd, o.iodepth, o.skew, &mut rng) {
                    Ok(r) => {
                        eprintln!(
                            "rep {rep} {t:5} {name:15} {:9.1} MiB/s {:9.0} IOPS p50 {:.0} us p99 {:.0} us dev reads/read {:.3} index reads/read {:.3} index hit {:.3} {}",
                            r.mib_s,
                            r.iops,
                            r.p50_us,
                            r.p99_us,
                            r.reads_per_read(),
                            r.index_reads_per_read(),
                            r.index_hit_rate(),
                            target.status()
                        );
                        results[ti][pi].push(r);
                    }
                    Err(e) => {
                        eprintln!("{t} {name}: {e:?}");
                        std::process::exit(1)
                    }
                }
            }
            drop(target);
            if let Some(k) = peak_rss_kib() {
                peak_kib[ti].push(k);
            }
            heap_kib[ti].push((HEAP.peak_usage() / 1024) as u64);
            if t == "mls" && o.open_times {
                let r = open_times(&o, &crypto, fill.max(ws), rep as u64)
                    .unwrap_or_else(|e| fail("mls open times", e));
                eprintln!(
                    "rep {rep} mls   create {:.3} s, clean open {:.3} s ({} device reads), crash recovery {:.3} s ({} device reads)",
                    r.create_s, r.open_s, r.open_reads, r.recover_s, r.recover_reads
                );
                opens.push(r);
            }
        }
    }
    let _ = std::fs::remove_file(&o.file);
    let med =
        |ti: usize, pi: usize| median(&results[ti][pi].iter().map(|r| r.mib_s).collect::<Vec<_>>());
    let shown: Vec<usize> = (0..PHASES.len()).filter(|&pi| o.phases[pi]).collect();
    print!("\n| MiB/s (median of {}), QD{} |", o.reps, o.iodepth);
    for &pi in &shown {
        print!(" {} |", PHASES[pi].0);
    }
    println!(" WA rnd-4K | WA all |");
    print!("|---|");
    for _ in 0..shown.len() + 2 {
        print!("---:|");
    }
    println!();
    for (ti, t) in o.targets.iter().enumerate() {
        print!("| {} |", label(t));
        for &pi in &shown {
            print!(" {:.1} |", med(ti, pi));
        }
        let wa = |rs: &[PhaseResult]| {
            let u: u64 = rs.iter().map(|r| r.user_blocks).sum();
            let d: u64 = rs.iter().map(|r| r.dev_blocks).sum();
            if u == 0 {
                0.0
            } else {
                d as f64 / u as f64
            }
        };
        let all: Vec<PhaseResult> = results[ti].iter().flatten().copied().collect();
        println!(" {:.2} | {:.2} |", wa(&results[ti][1]), wa(&all));
    }
    let idx = |n: &str| o.targets.iter().position(|t| t == n);
    if let Some(m) = idx("mls") {
        for (base, bname) in [("crypt", "CryptDisk"), ("raw", "raw file")] {
            if let Some(b) = idx(base) {
                print!("| MlsDisk / {bname} |");
                for &pi in &shown {
                    let d = med(b, pi);
                    print!(" {:.2}x |", if d > 0.0 { med(m, pi) / d } else { 0.0 });
                }
                println!(" | |");
            }
        }
    }
    print_details(&o, &results, &peak_kib, &heap_kib, &opens);
    if let Some(path) = &o.json {
        let j = to_json(&o, &results, &peak_kib, &heap_kib, &opens);
        if let Err(e) = std::fs::write(path, j) {
            eprintln!("mlsdisk-bench: {}: {e}", path.display());
            std::process::exit(1)
        }
    }
}

/// MlsDisk's create, open and recovery, on a disk of the bench's size.
#[derive(Clone, Copy, Debug, Default)]
struct OpenTimes {
    create_s: f64,
    open_s: f64,
    open_reads: u64,
    recover_s: f64,
    recover_reads: u64,
    mapped: u64,
}

/// Creates an MlsDisk of the bench's size, writes `written` blocks
/// sequentially, closes it and times a clean open; then writes 4 MiB at
/// random places without a sync, drops the disk (a crash) and times the
/// recovery.
fn open_times(
    o: &Opts,
    crypto: &CryptoRef,
    written: u64,
    seed: u64,
) -> mlsdisk_core::Result<OpenTimes> {
    let cfg = mls_cfg(o);
    let total = mls_device_blocks(&cfg, o.disk_blocks)?;
    let mut r = OpenTimes::default();
    // The backing file is made (and an old one truncated, which takes
    // seconds for a big sparse file) before the clock starts: create's
    // time is the engine's.
    let dev = device(o, total);
    let t0 = std::time::Instant::now();
    let mut d = MlsDisk::create(dev, crypto.clone(), &KEY, cfg.clone(), Box::new(NoAnchor))?;
    r.create_s = t0.elapsed().as_secs_f64();
    let m = Mls::new(d);
    let mut rng = Rng::new(seed ^ 0x0be7);
    run_phase(
        &m,
        Phase::SeqWrite,
        written.min(o.disk_blocks),
        0,
        1,
        &mut rng,
    )?;
    m.into_inner()?.close()?;
    let reopen = || -> mlsdisk_core::Result<(MlsDisk<Dev>, f64, u64)> {
        let f = with_readers(FileDisk::open(&o.file, o.direct)?)?;
        let t0 = std::time::Instant::now();
        let d = MlsDisk::open(
            Throttle::new(f, o.iops, o.bw_mib),
            crypto.clone(),
            &KEY,
            cfg.clone(),
            Box::new(NoAnchor),
        )?;
        let s = t0.elapsed().as_secs_f64();
        let reads = d.device().counts().0;
        Ok((d, s, reads))
    };
    (d, r.open_s, r.open_reads) = reopen()?;
    r.mapped = d.stats().mapped_blocks;
    let block = vec![0x5au8; BLOCK_SIZE];
    for _ in 0..1024 {
        let lba = rng.next_u64() % d.nblocks();
        d.write(lba, &block)?;
    }
    drop(d);
    let (_d, s, reads) = reopen()?;
    r.recover_s = s;
    r.recover_reads = reads;
    Ok(r)
}

fn print_details(
    o: &Opts,
    results: &[Vec<Vec<PhaseResult>>],
    peak_kib: &[Vec<u64>],
    heap_kib: &[Vec<u64>],
    opens: &[OpenTimes],
) {
    println!();
    println!(
        "| target | phase | IOPS | p50 us | p99 us | dev reads / read | index reads / read | index cache hits |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for (ti, t) in o.targets.iter().enumerate() {
        for (pi, (name, _)) in PHASES.iter().enumerate() {
            if !o.phases[pi] {
                continue;
            }
            let rs = &results[ti][pi];
            let m = |f: fn(&PhaseResult) -> f64| median(&rs.iter().map(f).collect::<Vec<_>>());
            let (ir, hit) = if t == "mls" && m(|r| r.reads_per_read()) > 0.0 {
                (
                    format!("{:.3}", m(|r| r.index_reads_per_read())),
                    format!("{:.1} %", 100.0 * m(|r| r.index_hit_rate())),
                )
            } else {
                ("-".to_string(), "-".to_string())
            };
            println!(
                "| {} | {name} | {:.0} | {:.0} | {:.0} | {:.3} | {ir} | {hit} |",
                label(t),
                m(|r| r.iops),
                m(|r| r.p50_us),
                m(|r| r.p99_us),
                m(|r| r.reads_per_read())
            );
        }
    }
    println!();
    for (ti, t) in o.targets.iter().enumerate() {
        let p = &peak_kib[ti];
        let h = heap_kib[ti].iter().max().copied().unwrap_or(0);
        if let Some(max) = p.iter().max() {
            println!(
                "peak memory while {} ran: {:.1} MiB resident, {:.1} MiB of live heap allocations (max of {} reps)",
                label(t),
                *max as f64 / 1024.0,
                h as f64 / 1024.0,
                p.len()
            );
        }
    }
    if !opens.is_empty() {
        let m = |f: fn(&OpenTimes) -> f64| median(&opens.iter().map(f).collect::<Vec<_>>());
        println!(
            "MlsDisk, {} blocks mapped: create {:.3} s, clean open {:.3} s ({:.0} device reads), crash recovery {:.3} s ({:.0} device reads) (medians of {})",
            opens[0].mapped,
            m(|r| r.create_s),
            m(|r| r.open_s),
            m(|r| r.open_reads as f64),
            m(|r| r.recover_s),
            m(|r| r.recover_reads as f64),
            opens.len()
        );
    }
}

/// Every measurement as JSON (no dependency: the values are numbers and
/// fixed names).
fn to_json(
    o: &Opts,
    results: &[Vec<Vec<PhaseResult>>],
    peak_kib: &[Vec<u64>],
    heap_kib: &[Vec<u64>],
    opens: &[OpenTimes],
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = write!(
        s,
        "{{\"disk_mib\":{},\"fill_pct\":{},\"working_set_mib\":{},\"random_mib\":{},\"reps\":{},\"direct\":{},\"steady\":{},\"iodepth\":{},\"iops_cap\":{},\"bw_mib_cap\":{},\"targets\":[",
        o.disk_blocks / 256,
        o.fill_pct,
        o.size_mib,
        o.rnd_mib,
        o.reps,
        o.direct,
        o.steady,
        o.iodepth,
        o.iops,
        o.bw_mib
    );
    for (ti, t) in o.targets.iter().enumerate() {
        if ti > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "{{\"name\":\"{t}\",\"peak_rss_kib\":{},\"peak_heap_kib\":{},\"phases\":[",
            peak_kib[ti].iter().max().copied().unwrap_or(0),
            heap_kib[ti].iter().max().copied().unwrap_or(0)
        );
        let mut first = true;
        for (pi, (name, _)) in PHASES.iter().enumerate() {
            if !o.phases[pi] {
                continue;
            }
            if !first {
                s.push(',');
            }
            first = false;
            let _ = write!(s, "{{\"phase\":\"{name}\",\"reps\":[");
            for (k, r) in results[ti][pi].iter().enumerate() {
                if k > 0 {
                    s.push(',');
                }
                let _ = write!(
                    s,
                    "{{\"mib_s\":{:.3},\"iops\":{:.1},\"p50_us\":{:.1},\"p99_us\":{:.1},\"user_blocks_written\":{},\"device_blocks_written\":{},\"user_blocks_read\":{},\"device_blocks_read\":{},\"index_cache_hits\":{},\"index_cache_misses\":{}}}",
                    r.mib_s, r.iops, r.p50_us, r.p99_us, r.user_blocks, r.dev_blocks, r.user_read_blocks, r.dev_read_blocks, r.index_hits, r.index_misses
                );
            }
            s.push_str("]}");
        }
        s.push_str("]}");
    }
    s.push_str("],\"mlsdisk_open\":[");
    for (k, r) in opens.iter().enumerate() {
        if k > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "{{\"mapped_blocks\":{},\"create_s\":{:.4},\"open_s\":{:.4},\"open_device_reads\":{},\"recover_s\":{:.4},\"recover_device_reads\":{}}}",
            r.mapped, r.create_s, r.open_s, r.open_reads, r.recover_s, r.recover_reads
        );
    }
    s.push_str("]}\n");
    s
}
