//! How long a whole-disk discard takes (what `mkfs.ext4` and `fstrim`
//! send), by disk size and mapped data. Prints one Markdown row per run.
//!
//! ```text
//! cargo run --release -p mlsdisk-tools --example discard-bench -- \
//!     [--file PATH] DISK_GIB:MAPPED_MIB...
//! ```
//!
//! Each run makes a sparse image of DISK_GIB GiB (page cache, no
//! O_DIRECT: the discard is CPU work), writes MAPPED_MIB MiB at its start
//! in 1 MiB requests, syncs, then discards every block and syncs, and
//! reports that time and the index blocks the discard fetched (from the
//! caches or the device).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use mlsdisk_core::bio::{FileDisk, BLOCK_SIZE};
use mlsdisk_core::disk::{DiskConfig, MlsDisk, NoAnchor};
use mlsdisk_core::platform::StdCrypto;

fn fetches(d: &MlsDisk<FileDisk>) -> u64 {
    d.index_stats().map_or(0, |s| {
        s.cache_hits + s.cache_misses + s.data_cache_hits + s.data_cache_misses
    })
}

fn run(path: &PathBuf, gib: u64, mib: u64) -> Result<String, String> {
    let err = |e: mlsdisk_core::Error| e.to_string();
    let _ = std::fs::remove_file(path);
    let dev = FileDisk::create(path, gib << 18, false).map_err(err)?;
    let cfg = DiskConfig::default();
    let mut d = MlsDisk::create(
        dev,
        Arc::new(StdCrypto),
        &[7u8; 32],
        cfg,
        Box::new(NoAnchor),
    )
    .map_err(err)?;
    let n = d.nblocks();
    if mib * 256 > n {
        return Err(format!("{mib} MiB do not fit in {n} blocks"));
    }
    let buf = vec![0x5au8; 256 * BLOCK_SIZE];
    for l in (0..mib * 256).step_by(256) {
        d.write(l, &buf).map_err(err)?;
    }
    d.sync().map_err(err)?;
    let f0 = fetches(&d);
    let t = Instant::now();
    d.discard(0, n).map_err(err)?;
    d.sync().map_err(err)?;
    let secs = t.elapsed().as_secs_f64();
    let f = fetches(&d) - f0;
    let left = d.stats().mapped_blocks;
    drop(d);
    let _ = std::fs::remove_file(path);
    if left != 0 {
        return Err(format!("{left} blocks still mapped after the discard"));
    }
    Ok(format!(
        "| {gib} | {mib} | {n} | {secs:.3} | {:.1} | {f} |",
        n as f64 / secs / 1e6
    ))
}

fn main() -> std::process::ExitCode {
    let mut path = std::env::temp_dir().join("mlsdisk-discard-bench.img");
    let mut runs = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--file" {
            match args.next() {
                Some(p) => path = PathBuf::from(p),
                None => {
                    eprintln!("--file needs a path");
                    return std::process::ExitCode::from(2);
                }
            }
            continue;
        }
        let parsed = a
            .split_once(':')
            .and_then(|(g, m)| Some((g.parse::<u64>().ok()?, m.parse::<u64>().ok()?)));
        match parsed {
            Some(r) => runs.push(r),
            None => {
                eprintln!("not DISK_GIB:MAPPED_MIB: {a}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    if runs.is_empty() {
        runs = vec![(100, 0), (100, 1024), (1024, 64)];
    }
    println!(
        "| disk GiB | mapped MiB | logical blocks discarded | seconds | M blocks/s | index block fetches |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for (g, m) in runs {
        match run(&path, g, m) {
            Ok(row) => println!("{row}"),
            Err(e) => {
                eprintln!("discard-bench: {g} GiB, {m} MiB: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    std::process::ExitCode::SUCCESS
}
