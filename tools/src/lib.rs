//! Userspace tools on the MlsDisk core: devices for benchmarking (a file
//! with optional O_DIRECT, a device model that charges per I/O), the
//! encrypt-only baseline `CryptDisk`, and the benchmark workloads.

pub mod admin;
pub mod bench;
pub mod cryptdisk;
pub mod logwrites;
pub mod pool;
pub mod replay;
pub mod serve;
pub mod throttle;

/// The usage text of a binary: the ```` ```text ```` block of its own
/// module documentation (`source` = `include_str!` of the binary's file),
/// so `--help` and the docs never disagree.
pub fn usage_from_doc(source: &str) -> String {
    source
        .lines()
        .skip_while(|l| !l.contains("```text"))
        .skip(1)
        .take_while(|l| !l.contains("```"))
        .map(|l| l.trim_start_matches("//! ").trim_start_matches("//!"))
        .collect::<Vec<_>>()
        .join("\n")
}
