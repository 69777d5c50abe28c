//! `mlsdisk-bench`: MlsDisk vs the encrypt-only CryptDisk vs the raw file,
//! on the eight workloads of the seed's table, with medians and ratios.
//!
//! ```text
//! cargo run --release -p mlsdisk-tools --bin mlsdisk-bench -- [options]
//!   --size-mib N     working set (default 128)
//!   --rnd-mib N      data moved by each random phase (default 32)
//!   --reps N         repetitions; medians are reported (default 3)
//!   --no-direct      use the page cache (default: O_DIRECT)
//!   --iops N         device model: at most N requests/s (default 0 = off)
//!   --bw-mib N       device model: N MiB/s bandwidth (default 0 = off)
//!   --file PATH      image file (default $TMPDIR/mlsdisk-bench.img)
//!   --targets LIST   comma list of raw,crypt,mls (default all)
//!   --index KIND     MlsDisk index: lsm (default) or mem
//!   --threads N      MlsDisk seals each write buffer on N threads
//!                    (default 1; CryptDisk always uses one)
//!   --key-len N      MlsDisk per-block key length, data and metadata:
//!                    16 (AES-128-GCM) or 32 (AES-256-GCM, the default)
//!   --steady         run all phases back to back on one disk, so random
//!                    writes overwrite a full disk and the cleaner runs
//!                    (default: each random-write phase starts on a fresh
//!                    disk filled sequentially, untimed, and the reads on a
//!                    sequential refill, as when each fio job runs alone)
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use mlsdisk_core::bio::FileDisk;
use mlsdisk_core::bio::BLOCK_SIZE;
use mlsdisk_core::disk::{Counted, DiskConfig, MlsDisk, NoAnchor};
use mlsdisk_core::log::LogStoreConfig;
use mlsdisk_core::platform::{StdCrypto, StdParallel};
use mlsdisk_core::CryptoRef;
use mlsdisk_tools::bench::*;
use mlsdisk_tools::cryptdisk::CryptDisk;
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
    key_len: u8,
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
        key_len: DiskConfig::default().data_key_len,
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
            "--threads" => o.threads = num(val()?)?.max(1) as usize,
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
    Ok(o)
}

type Dev = Throttle<FileDisk>;

fn device(o: &Opts, nblocks: u64) -> Dev {
    let f = FileDisk::create(&o.file, nblocks, o.direct).unwrap_or_else(|e| {
        eprintln!("cannot create {}: {e:?}", o.file.display());
        std::process::exit(1)
    });
    Throttle::new(f, o.iops, o.bw_mib)
}

fn make(
    o: &Opts,
    name: &str,
    ws: u64,
    crypto: &CryptoRef,
) -> mlsdisk_core::Result<Box<dyn Target>> {
    let key = [0x42u8; 32];
    Ok(match name {
        "raw" => Box::new(Raw(Arc::new(Counted::new(device(o, ws))))),
        "crypt" => {
            let dev = Arc::new(Counted::new(device(o, ws / 127 * 128 + 256)));
            Box::new(Crypt(
                CryptDisk::create(dev.clone(), crypto.clone(), &key)?,
                dev,
            ))
        }
        "mls" => {
            let d = DiskConfig::default();
            let cfg = DiskConfig {
                data_key_len: o.key_len,
                store: LogStoreConfig {
                    key_len: usize::from(o.key_len),
                    ..d.store
                },
                ..d
            };
            // Grow the device until the logical capacity covers the set.
            let mut total = ws + ws / 4 + 8192;
            loop {
                let g = mlsdisk_core::disk::Geometry::compute(total, &cfg.layout)?;
                if g.capacity >= ws {
                    break;
                }
                total += ws / 16 + 256;
            }
            let dev = device(o, total);
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
                disk.set_parallel(Arc::new(StdParallel::new(o.threads)));
            }
            Box::new(Mls(disk))
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
    let rnd = (o.rnd_mib * 256).max(64);
    println!(
        "# mlsdisk-bench: working set {} MiB, {} MiB per random phase, {} reps, {}, device model: {}, mode {}",
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
    // results[target][phase] = per-rep results
    let mut results: Vec<Vec<Vec<PhaseResult>>> =
        vec![vec![Vec::new(); PHASES.len()]; o.targets.len()];
    for rep in 0..o.reps {
        for (ti, t) in o.targets.iter().enumerate() {
            let mut target = match make(&o, t, ws, &crypto) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("{t}: create failed: {e:?}");
                    std::process::exit(1)
                }
            };
            let mut rng = Rng::new(0x1234_5678 + rep as u64);
            for (pi, (name, phase)) in PHASES.iter().enumerate() {
                if !o.steady && matches!(phase, Phase::RndWrite(_)) {
                    drop(target);
                    target = match make(&o, t, ws, &crypto) {
                        Ok(x) => x,
                        Err(e) => {
                            eprintln!("{t}: create failed: {e:?}");
                            std::process::exit(1)
                        }
                    };
                }
                if !o.steady && matches!(phase, Phase::RndWrite(_) | Phase::SeqRead) {
                    if let Err(e) = run_phase(&mut *target, Phase::SeqWrite, ws, rnd, &mut rng) {
                        eprintln!("{t} fill: {e:?}");
                        std::process::exit(1)
                    }
                }
                match run_phase(&mut *target, *phase, ws, rnd, &mut rng) {
                    Ok(r) => {
                        eprintln!(
                            "rep {rep} {t:5} {name:15} {:9.1} MiB/s {}",
                            r.mib_s,
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
        }
    }
    let _ = std::fs::remove_file(&o.file);
    let med =
        |ti: usize, pi: usize| median(&results[ti][pi].iter().map(|r| r.mib_s).collect::<Vec<_>>());
    print!("\n| MiB/s (median of {}) |", o.reps);
    for (name, _) in PHASES {
        print!(" {name} |");
    }
    println!(" WA rnd-4K | WA all |");
    print!("|---|");
    for _ in 0..PHASES.len() + 2 {
        print!("---:|");
    }
    println!();
    for (ti, t) in o.targets.iter().enumerate() {
        print!("| {} |", label(t));
        for pi in 0..PHASES.len() {
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
                for pi in 0..PHASES.len() {
                    let d = med(b, pi);
                    print!(" {:.2}x |", if d > 0.0 { med(m, pi) / d } else { 0.0 });
                }
                println!(" | |");
            }
        }
    }
    let _ = BLOCK_SIZE;
}
