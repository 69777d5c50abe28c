//! `mlsdisk-replay`: crash states of an MlsDisk rebuilt from a dm-log-writes
//! log and checked with the userspace engine (see `mlsdisk_tools::replay`).
//!
//! ```text
//! mlsdisk-replay --image DISK.IMG --manifest FILE [--states N] [--seed N]
//!                [--work DIR] [--self-test] [--verbose]
//!
//!   --image      the guest's test disk (vdb) after
//!                tests/guest/mlsdisk-crash-replay.sh: data and log device
//!                as the manifest's layout line says
//!   --manifest   the test's REPLAY lines without the "REPLAY " prefix
//!   --states     crash states with unflushed writes dropped and reordered
//!                (default $REPLAY_STATES or 200); more: clean states at
//!                every mark and at up to N/4 other flush/FUA points
//!   --seed       seed of the states (default $REPLAY_SEED or a fresh one)
//!   --work       scratch directory (default a new one under $TMPDIR;
//!                removed after a clean run, kept after a failure)
//!   --self-test  instead: corrupt states on purpose (drop a flushed write
//!                before a mark; expect a wrong checksum) and require that
//!                every one is detected (the dropped write: the largest
//!                one flushed since the mark before the previous one)
//! ```
//!
//! Exit status: 0 every state passed (self-test: every corruption was
//! detected), 1 a state failed, 2 usage or an unreadable log.

use std::path::PathBuf;
use std::process::exit;
use std::time::Instant;

use mlsdisk_tools::replay::{sha256_hex, Builder, Checker, Kind, Manifest, Replay, MARK_MKFS};

struct Args {
    image: PathBuf,
    manifest: PathBuf,
    states: usize,
    seed: u64,
    work: Option<PathBuf>,
    self_test: bool,
    verbose: bool,
}

fn usage() -> ! {
    eprintln!(
        "{}",
        mlsdisk_tools::usage_from_doc(include_str!("mlsdisk-replay.rs"))
    );
    exit(2)
}

fn fatal(msg: &str) -> ! {
    eprintln!("mlsdisk-replay: {msg}");
    exit(2)
}

fn env_num(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| fatal(&format!("{name}={v} is not a number"))),
    )
}

fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (t ^ u64::from(std::process::id()).rotate_left(32)) % 1_000_000_000
}

fn parse() -> Args {
    let mut a = Args {
        image: PathBuf::new(),
        manifest: PathBuf::new(),
        states: env_num("REPLAY_STATES").unwrap_or(200) as usize,
        seed: env_num("REPLAY_SEED").unwrap_or_else(fresh_seed),
        work: None,
        self_test: false,
        verbose: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match x.as_str() {
            "--image" => a.image = PathBuf::from(val()),
            "--manifest" => a.manifest = PathBuf::from(val()),
            "--states" => a.states = val().parse().unwrap_or_else(|_| usage()),
            "--seed" => a.seed = val().parse().unwrap_or_else(|_| usage()),
            "--work" => a.work = Some(PathBuf::from(val())),
            "--self-test" => a.self_test = true,
            "--verbose" => a.verbose = true,
            _ => usage(),
        }
    }
    if a.image.as_os_str().is_empty() || a.manifest.as_os_str().is_empty() || a.states == 0 {
        usage()
    }
    a
}

fn main() {
    let a = parse();
    let t0 = Instant::now();
    let text = std::fs::read_to_string(&a.manifest)
        .unwrap_or_else(|e| fatal(&format!("{}: {e}", a.manifest.display())));
    let manifest = Manifest::parse(&text).unwrap_or_else(|e| fatal(&e));
    let mut r = Replay::open(&a.image, manifest).unwrap_or_else(|e| fatal(&e));
    let (w, f, fua, disc, m) = r.counts();
    println!(
        "mlsdisk-replay: log of {} entries ({w} writes, {f} flushes, {fua} FUA, {disc} discards, {m} marks; {}-byte sectors), data device {} MiB, {} workload marks",
        r.len(),
        r.log.sector_size,
        r.dev_bytes >> 20,
        r.manifest.marks.len()
    );
    let work = a.work.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("mlsdisk-replay-{}", std::process::id()))
    });
    let checker = Checker::new(&r.manifest.key, &work).unwrap_or_else(|e| fatal(&e));

    // The whole log applied in order must be the device the guest left.
    let mut whole = Builder::new(vec![0u8; r.dev_bytes]);
    let end = whole.all(&mut r).unwrap_or_else(|e| fatal(&e));
    drop(whole);
    if let Some(want) = r.manifest.final_sha.clone() {
        let got = sha256_hex(&end);
        if got != want {
            fatal(&format!(
                "the log applied in order gives a device with SHA-256 {got}, the guest's was {want}: the log is incomplete or misread"
            ));
        }
        println!("mlsdisk-replay: the whole log applied in order reproduces the guest's final device (SHA-256 {})", &got[..16]);
    }
    drop(end);

    let ok = if a.self_test {
        self_test(&mut r, &checker)
    } else {
        run_states(&a, &mut r, &checker)
    };
    println!("mlsdisk-replay: {:.1} s", t0.elapsed().as_secs_f64());
    if ok {
        if a.work.is_none() {
            let _ = std::fs::remove_dir_all(&work);
        }
        exit(0)
    }
    println!("mlsdisk-replay: scratch files kept in {}", work.display());
    exit(1)
}

fn run_states(a: &Args, r: &mut Replay, checker: &Checker) -> bool {
    let plan = r.plan(a.states, a.seed);
    println!(
        "mlsdisk-replay: seed {} (replay: REPLAY_SEED={} REPLAY_STATES={}), {} crash states planned",
        a.seed,
        a.seed,
        a.states,
        plan.len()
    );
    let mut b = Builder::new(vec![0u8; r.dev_bytes]);
    let (mut clean, mut dropped, mut pre, mut failed, mut files, mut in_flight) =
        (0, 0, 0, 0, 0, 0);
    let t0 = Instant::now();
    for (k, s) in plan.iter().enumerate() {
        let mut x = r.expect(s.point);
        let res = (|| -> Result<_, String> {
            if let Kind::Dropped(_) = s.kind {
                if !x.pre_create {
                    let base = b.build(r, s.point, Kind::Clean, None)?;
                    x.base_sync = Some(
                        checker
                            .sync_counter(&base)
                            .map_err(|e| format!("the clean state at this point: {e}"))?,
                    );
                }
            }
            let img = b.build(r, s.point, s.kind, None)?;
            checker.check(&img, &x)
        })();
        let what = match s.kind {
            Kind::Clean => "clean",
            Kind::Dropped(_) => "dropped/reordered",
        };
        match res {
            Ok(p) => {
                match s.kind {
                    Kind::Clean => clean += 1,
                    Kind::Dropped(_) => dropped += 1,
                }
                if x.pre_create {
                    pre += 1;
                }
                if let (Some(c), Some(base)) = (p.sync, x.base_sync) {
                    if c > base {
                        in_flight += 1;
                    }
                }
                files += p.files;
                if a.verbose {
                    println!(
                        "  ok   state {k}: point {} {what} after mark {}: sync {:?}, {} files",
                        s.point,
                        x.after_mark.as_deref().unwrap_or("-"),
                        p.sync,
                        p.files
                    );
                }
            }
            Err(e) => {
                failed += 1;
                println!(
                    "  FAIL state {k}: point {} of {} ({what}, {:?}) after mark {}: {e}",
                    s.point,
                    r.len(),
                    s.kind,
                    x.after_mark.as_deref().unwrap_or("-")
                );
                if failed <= 3 {
                    let keep = checker.fs_image().with_file_name(format!("failed-{k}.img"));
                    let _ = std::fs::copy(checker.fs_image(), &keep);
                }
            }
        }
        if (k + 1) % 50 == 0 {
            println!(
                "  ... {} of {} states, {failed} failed, {:.0} s",
                k + 1,
                plan.len(),
                t0.elapsed().as_secs_f64()
            );
        }
    }
    let total = plan.len();
    println!(
        "mlsdisk-replay: {total} crash states checked: {clean} at flush/FUA/mark points, {dropped} with unflushed writes dropped and reordered ({in_flight} opened at the sync in flight), {pre} before the disk was created; {files} fsynced-file checks; {failed} failed (seed {})",
        a.seed
    );
    println!(
        "RESULT crash-replay {} states={total} failed={failed} seed={}",
        if failed == 0 { "PASS" } else { "FAIL" },
        a.seed
    );
    failed == 0
}

/// Corruptions that the checks must catch.
fn self_test(r: &mut Replay, checker: &Checker) -> bool {
    let mkfs = r.mark_at(MARK_MKFS).unwrap_or(usize::MAX);
    // Points right after marks that have files to check.
    let points: Vec<usize> = (0..r.len())
        .filter(|&i| i > mkfs && r.log.entries[i].mark.is_some())
        .map(|i| i + 1)
        .filter(|&p| !r.expect(p).files.is_empty())
        .collect();
    if points.is_empty() {
        println!("mlsdisk-replay: self-test: no mark with fsynced files after mkfs");
        return false;
    }
    let want = 8.min(points.len());
    let step = points.len() as f64 / want as f64;
    let chosen: Vec<usize> = (0..want)
        .map(|k| points[(k as f64 * step) as usize])
        .collect();
    let mut b = Builder::new(vec![0u8; r.dev_bytes]);
    let (mut tried, mut detected) = (0, 0);
    let mut last_drop = 0;
    for &p in &chosen {
        // The largest write made durable for the marks just before.
        let Some(d) = r.self_test_target(p) else {
            continue;
        };
        if d < last_drop {
            continue;
        }
        last_drop = d;
        let x = r.expect(p);
        let e = &r.log.entries[d];
        let (sector, n) = (e.sector, e.nr_sectors);
        tried += 1;
        let res = b
            .build(r, p, Kind::Clean, Some(d))
            .and_then(|img| checker.check(&img, &x));
        match res {
            Err(why) => {
                detected += 1;
                println!(
                    "  detected: flushed write {d} (sectors {sector}+{n}) dropped before mark {}: {why}",
                    x.after_mark.as_deref().unwrap_or("-")
                );
            }
            Ok(p) => println!(
                "  NOT DETECTED: flushed write {d} (sectors {sector}+{n}) dropped before mark {}: opened at sync {:?}, {} files intact",
                x.after_mark.as_deref().unwrap_or("-"),
                p.sync,
                p.files
            ),
        }
    }
    // A recorded checksum that differs from the file.
    if let Some(&p) = points.last() {
        let mut x = r.expect(p);
        if let Some(first) = x.files.first_mut() {
            first.1 = sha256_hex(b"not the content of this file");
        }
        tried += 1;
        let mut fresh = Builder::new(vec![0u8; r.dev_bytes]);
        match fresh
            .build(r, p, Kind::Clean, None)
            .and_then(|img| checker.check(&img, &x))
        {
            Err(why) => {
                detected += 1;
                println!("  detected: a wrong recorded checksum: {why}");
            }
            Ok(_) => println!("  NOT DETECTED: a wrong recorded checksum"),
        }
    }
    println!("mlsdisk-replay: self-test: {detected} of {tried} corruptions detected");
    println!(
        "RESULT crash-replay-self-test {} detected={detected} of={tried}",
        if detected == tried && tried > 1 {
            "PASS"
        } else {
            "FAIL"
        }
    );
    detected == tried && tried > 1
}
