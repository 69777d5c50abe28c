//! Every file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`
//! through the fuzz targets' entry points (`mlsdisk_core::fuzz_api`, and
//! the kernel module's table-line parser, `linux/table.rs`), without the
//! fuzzer: `make test` keeps the findings fixed.
//!
//! - A panic in any entry point fails the test (it is caught, named and
//!   reported with the file).
//! - The seeds (`seed-*` files of the corpus) are valid encodings: each must
//!   decode (`Ok`).
//! - A regression input is malformed: each must be refused (`Err`), except
//!   for the `image` target, where `Ok` means "no read returned bytes
//!   outside the model" and is what a fixed finding gives.
//! - Missing directories or a target without seeds fail loudly.
//!
//! `MLSDISK_WRITE_SEEDS=1 cargo test --test fuzz_regressions write_seeds --
//! --ignored` rewrites the seeds from `fuzz_api::seeds` (and the text seeds
//! below).

// `linux/table.rs` names a cfg of the kernel build (`mlsdisk_passthrough`).
#![allow(unexpected_cfgs)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use mlsdisk_core::fuzz_api;

// Formatted with the kernel tree's rules, not this workspace's.
#[rustfmt::skip]
// The kernel module builds it with rustc 1.95 (scripts/versions.sh), not
// this workspace's MSRV.
#[allow(dead_code, clippy::incompatible_msrv)]
#[path = "../../linux/table.rs"]
mod table;

/// What an entry point said about one input.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Accepted,
    Refused,
}

fn verdict<E>(r: Result<(), E>) -> Verdict {
    match r {
        Ok(()) => Verdict::Accepted,
        Err(_) => Verdict::Refused,
    }
}

/// The dm table line: the input split at spaces, as device-mapper's
/// argument vector.
fn dm_table(bytes: &[u8]) -> Verdict {
    let args: Vec<&[u8]> = bytes
        .split(|&c| c == b' ')
        .filter(|a| !a.is_empty())
        .collect();
    verdict(table::parse(&args).map(|_| ()))
}

/// The key argument, hex or keyring reference.
fn keyring_ref(bytes: &[u8]) -> Verdict {
    verdict(table::parse_key(bytes).map(|_| ()))
}

/// Runs `bytes` through `target`'s entry point.
fn run(target: &str, bytes: &[u8]) -> Verdict {
    match target {
        "superblock_slot" => verdict(fuzz_api::superblock_slot(bytes)),
        "superblock_payload" => verdict(fuzz_api::superblock_payload(bytes)),
        "journal_chain" => verdict(fuzz_api::journal_chain(bytes)),
        "log_record" => verdict(fuzz_api::log_record(bytes)),
        "log_store" => verdict(fuzz_api::log_store(bytes)),
        "merkle_node" => verdict(fuzz_api::merkle_node(bytes)),
        "lsm_table" => verdict(fuzz_api::lsm_table(bytes)),
        "lsm_wal" => verdict(fuzz_api::lsm_wal(bytes)),
        "lsm_tree" => verdict(fuzz_api::lsm_tree(bytes)),
        "block_anchor" => verdict(fuzz_api::block_anchor(bytes)),
        "image" => verdict(fuzz_api::image(bytes)),
        "dm_table" => dm_table(bytes),
        "keyring_ref" => keyring_ref(bytes),
        other => panic!("unknown fuzz target {other}"),
    }
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir` (sorted); fails if it is missing.
fn files(dir: &Path) -> Vec<PathBuf> {
    let rd = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e} (the fuzz directories must exist)", dir.display()));
    let mut v: Vec<PathBuf> = rd
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file() && p.file_name().is_none_or(|n| n != ".gitkeep"))
        .collect();
    v.sort();
    v
}

/// Runs every file of `<kind>/<target>/` for every target; returns the
/// problems found and the number of files run.
fn run_dir(kind: &str) -> (Vec<String>, usize) {
    let mut problems = Vec::new();
    let mut count = 0;
    for target in fuzz_api::TARGETS {
        let dir = fuzz_dir().join(kind).join(target);
        let list = files(&dir);
        if kind == "corpus"
            && !list.iter().any(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
            })
        {
            problems.push(format!("{}: no seed-* file", dir.display()));
        }
        for path in list {
            count += 1;
            let bytes = std::fs::read(&path).expect("read a fuzz input");
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let got = catch_unwind(AssertUnwindSafe(|| run(target, &bytes)));
            match (kind, got) {
                (_, Err(_)) => problems.push(format!("{}: PANIC", path.display())),
                ("corpus", Ok(v)) if name.starts_with("seed-") && v != Verdict::Accepted => {
                    problems.push(format!("{}: a seed was refused", path.display()))
                }
                ("regressions", Ok(Verdict::Accepted)) if target == "image" => {}
                ("regressions", Ok(Verdict::Refused)) if target == "image" => {
                    problems.push(format!(
                        "{}: a read returned bytes outside the model",
                        path.display()
                    ))
                }
                ("regressions", Ok(Verdict::Accepted)) => {
                    problems.push(format!("{}: malformed input accepted", path.display()))
                }
                _ => {}
            }
        }
    }
    (problems, count)
}

#[test]
fn corpus_seeds_decode_and_nothing_panics() {
    let (problems, count) = run_dir("corpus");
    assert!(
        count >= fuzz_api::TARGETS.len(),
        "only {count} corpus files"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn regressions_are_refused_without_panic() {
    let (problems, _) = run_dir("regressions");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The entry points themselves can fail this test: an input known to be
/// malformed for each target must come back refused.
#[test]
fn garbage_is_refused() {
    for target in fuzz_api::TARGETS {
        if target == "image" {
            continue;
        }
        assert_eq!(run(target, &[0xff; 64]), Verdict::Refused, "{target}");
    }
}

/// The `image` target's fixture opens, unmutated, with the model's data:
/// without this, every mutated image could be refused for another reason.
#[test]
fn image_fixture_opens() {
    fuzz_api::image_clean_open().expect("the unmutated image opens and reads back");
}

/// Text seeds of the table-line targets.
const TEXT_SEEDS: [(&str, &str, &str); 5] = [
    (
        "dm_table",
        "seed-hex",
        "/dev/vdb 000102030405060708090a0b0c0d0e0f",
    ),
    (
        "dm_table",
        "seed-options",
        "8:16 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f 2 create anchor=dev:/dev/vdc",
    ),
    ("dm_table", "seed-keyring", "/dev/vdb :32:logon:mlsdisk:root 1 open"),
    ("keyring_ref", "seed-logon", ":32:logon:mlsdisk:root"),
    ("keyring_ref", "seed-user", ":16:user:disk-key"),
];

#[test]
#[ignore = "writes the seed corpus; run with MLSDISK_WRITE_SEEDS=1"]
fn write_seeds() {
    assert!(
        std::env::var_os("MLSDISK_WRITE_SEEDS").is_some(),
        "set MLSDISK_WRITE_SEEDS=1 to rewrite fuzz/corpus/*/seed-*"
    );
    let mut all: Vec<(String, String, Vec<u8>)> = fuzz_api::seeds()
        .expect("seeds")
        .into_iter()
        .map(|(t, n, b)| (t.to_string(), n.to_string(), b))
        .collect();
    for (t, n, s) in TEXT_SEEDS {
        all.push((t.to_string(), n.to_string(), s.as_bytes().to_vec()));
    }
    for (target, name, bytes) in all {
        let dir = fuzz_dir().join("corpus").join(&target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(&name), &bytes).expect("write a seed");
    }
}
