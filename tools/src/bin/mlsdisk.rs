//! `mlsdisk`: make, inspect and check MlsDisk images in userspace.
//!
//! ```text
//! mlsdisk format IMAGE --size-mib N --key HEX [ANCHOR] [--seg-blocks N] [--op PCT]
//! mlsdisk info   IMAGE --key HEX [ANCHOR]
//! mlsdisk check  IMAGE --key HEX [ANCHOR]
//! mlsdisk write  IMAGE --key HEX [ANCHOR] LBA FILE   (whole 4 KiB blocks)
//! mlsdisk read   IMAGE --key HEX [ANCHOR] LBA COUNT OUTFILE
//!
//! ANCHOR: --anchor FILE       the last commit in a file (FileAnchor)
//!         --anchor-dev DEV    the kernel's anchor=dev:<device> format on a
//!                             device or image file of at least 8 KiB
//!                             (BlockAnchor; format makes a missing file)
//! ```
//!
//! The key is 32 or 64 hex digits (AES-128 / AES-256 root key). Exit
//! status: 0 ok, 1 the image failed (the error kind is printed), 2 usage.

use std::path::PathBuf;
use std::process::exit;
use std::sync::Arc;

use mlsdisk_core::bio::{FileDisk, BLOCK_SIZE};
use mlsdisk_core::disk::{BlockAnchor, DiskConfig, FileAnchor, MlsDisk, NoAnchor, RollbackAnchor};
use mlsdisk_core::platform::StdCrypto;
use mlsdisk_core::{CryptoRef, Error};

struct Args {
    cmd: String,
    image: PathBuf,
    key: Vec<u8>,
    anchor: Option<PathBuf>,
    anchor_dev: Option<PathBuf>,
    size_mib: u64,
    seg_blocks: Option<u32>,
    op: Option<u8>,
    rest: Vec<String>,
}

fn usage() -> ! {
    eprintln!(
        "{}",
        mlsdisk_tools::usage_from_doc(include_str!("mlsdisk.rs"))
    );
    exit(2)
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn parse() -> Args {
    let mut it = std::env::args().skip(1);
    let cmd = it.next().unwrap_or_else(|| usage());
    let image = PathBuf::from(it.next().unwrap_or_else(|| usage()));
    let mut a = Args {
        cmd,
        image,
        key: vec![],
        anchor: None,
        anchor_dev: None,
        size_mib: 0,
        seg_blocks: None,
        op: None,
        rest: vec![],
    };
    while let Some(x) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match x.as_str() {
            "--key" => a.key = hex(&val()).unwrap_or_else(|| usage()),
            "--anchor" => a.anchor = Some(PathBuf::from(val())),
            "--anchor-dev" => a.anchor_dev = Some(PathBuf::from(val())),
            "--size-mib" => a.size_mib = val().parse().unwrap_or_else(|_| usage()),
            "--seg-blocks" => a.seg_blocks = Some(val().parse().unwrap_or_else(|_| usage())),
            "--op" => a.op = Some(val().parse().unwrap_or_else(|_| usage())),
            _ => a.rest.push(x),
        }
    }
    if a.key.len() != 16 && a.key.len() != 32 {
        eprintln!("mlsdisk: --key must be 32 or 64 hex digits");
        exit(2)
    }
    if a.anchor.is_some() && a.anchor_dev.is_some() {
        eprintln!("mlsdisk: --anchor and --anchor-dev exclude each other");
        exit(2)
    }
    a
}

fn die(what: &str, e: Error) -> ! {
    eprintln!("mlsdisk: {what}: {:?}: {}", e.kind(), e.msg());
    exit(1)
}

fn anchor(a: &Args, crypto: &CryptoRef) -> Box<dyn RollbackAnchor> {
    if let Some(p) = &a.anchor_dev {
        let dev = match FileDisk::open(p, false) {
            Ok(d) => d,
            Err(_) if a.cmd == "format" && !p.exists() => {
                FileDisk::create(p, 2, false).unwrap_or_else(|e| die("create anchor", e))
            }
            Err(e) => die("open anchor", e),
        };
        return Box::new(
            BlockAnchor::new(dev, crypto.clone(), &a.key).unwrap_or_else(|e| die("anchor", e)),
        );
    }
    match &a.anchor {
        Some(p) => Box::new(FileAnchor::new(p)),
        None => Box::new(NoAnchor),
    }
}

fn open(a: &Args, crypto: &CryptoRef) -> MlsDisk<FileDisk> {
    let dev = FileDisk::open(&a.image, false).unwrap_or_else(|e| die("open image", e));
    MlsDisk::open(
        dev,
        crypto.clone(),
        &a.key,
        DiskConfig::default(),
        anchor(a, crypto),
    )
    .unwrap_or_else(|e| die("open", e))
}

fn main() {
    let a = parse();
    let crypto: CryptoRef = Arc::new(StdCrypto);
    match a.cmd.as_str() {
        "format" => {
            if a.size_mib == 0 {
                usage()
            }
            let dev = FileDisk::create(&a.image, a.size_mib * 256, false)
                .unwrap_or_else(|e| die("create image", e));
            let mut cfg = DiskConfig::default();
            if let Some(s) = a.seg_blocks {
                cfg.layout.seg_blocks = s;
            }
            if let Some(o) = a.op {
                cfg.layout.op_percent = o;
            }
            let anchor = anchor(&a, &crypto);
            let d = MlsDisk::create(dev, crypto, &a.key, cfg, anchor)
                .unwrap_or_else(|e| die("format", e));
            let g = *d.geometry();
            println!(
                "formatted {}: {} blocks, capacity {} blocks ({} MiB)",
                a.image.display(),
                g.total_blocks,
                g.capacity,
                g.capacity / 256
            );
            d.close().unwrap_or_else(|e| die("close", e));
        }
        "info" => {
            let mut d = open(&a, &crypto);
            let g = *d.geometry();
            let u = d.uuid();
            println!(
                "uuid        {}",
                u.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
            println!("geometry    {g:?}");
            println!(
                "capacity    {} blocks ({} MiB)",
                g.capacity,
                g.capacity / 256
            );
            println!("status      {}", d.status_line());
            println!("stats       {:?}", d.stats());
        }
        "check" => {
            let mut d = open(&a, &crypto);
            let cap = d.nblocks();
            let mut buf = vec![0u8; 256 * BLOCK_SIZE];
            let (mut bad, mut lba) = (0u64, 0u64);
            while lba < cap {
                let n = 256.min(cap - lba);
                let b = &mut buf[..n as usize * BLOCK_SIZE];
                if d.read(lba, b).is_err() {
                    // Narrow down block by block.
                    for l in lba..lba + n {
                        let mut one = vec![0u8; BLOCK_SIZE];
                        if let Err(e) = d.read(l, &mut one) {
                            bad += 1;
                            if bad <= 20 {
                                eprintln!("lba {l}: {:?}: {}", e.kind(), e.msg());
                            }
                            if d.failure().is_some() {
                                die("check", e)
                            }
                        }
                    }
                }
                lba += n;
            }
            let st = d.stats();
            println!(
                "checked {cap} blocks: {} mapped, {} unmapped, {bad} failed authentication",
                st.mapped_blocks,
                cap - st.mapped_blocks
            );
            println!("{}", d.status_line());
            if bad > 0 {
                exit(1)
            }
        }
        "write" => {
            let [lba, file] = a.rest.as_slice() else {
                usage()
            };
            let lba: u64 = lba.parse().unwrap_or_else(|_| usage());
            let mut data = std::fs::read(file).unwrap_or_else(|e| {
                eprintln!("mlsdisk: {file}: {e}");
                exit(1)
            });
            data.resize(data.len().div_ceil(BLOCK_SIZE).max(1) * BLOCK_SIZE, 0);
            let mut d = open(&a, &crypto);
            d.write(lba, &data).unwrap_or_else(|e| die("write", e));
            d.close().unwrap_or_else(|e| die("sync", e));
        }
        "read" => {
            let [lba, count, out] = a.rest.as_slice() else {
                usage()
            };
            let lba: u64 = lba.parse().unwrap_or_else(|_| usage());
            let count: usize = count.parse().unwrap_or_else(|_| usage());
            let mut d = open(&a, &crypto);
            let mut buf = vec![0u8; count * BLOCK_SIZE];
            d.read(lba, &mut buf).unwrap_or_else(|e| die("read", e));
            std::fs::write(out, &buf).unwrap_or_else(|e| {
                eprintln!("mlsdisk: {out}: {e}");
                exit(1)
            });
        }
        _ => usage(),
    }
}
