//! The benchmark cannot rot: a tiny run of `mlsdisk-bench` on a sparse
//! 1 GiB disk with every output switched on, checked for the numbers each
//! target must report.

use std::process::Command;

/// Every number that follows `"key":` in `json`.
fn numbers(json: &str, key: &str) -> Vec<f64> {
    let pat = format!("\"{key}\":");
    json.match_indices(&pat)
        .map(|(i, _)| {
            let rest = &json[i + pat.len()..];
            let end = rest
                .find(|c: char| c != '.' && c != '-' && !c.is_ascii_digit())
                .unwrap_or(rest.len());
            rest[..end]
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("{key}: {e} in {}", &rest[..end.min(20)]))
        })
        .collect()
}

#[test]
fn a_tiny_run_reports_every_measurement() {
    let dir = std::env::temp_dir().join(format!("mlsdisk-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("bench.img");
    let json = dir.join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_mlsdisk-bench"))
        .args([
            "--size-mib",
            "4",
            "--rnd-mib",
            "1",
            "--reps",
            "1",
            "--no-direct",
        ])
        .args(["--disk-gib", "1", "--fill-pct", "1"])
        .arg("--file")
        .arg(&img)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("| MlsDisk / CryptDisk |"), "{stdout}");
    assert!(stdout.contains("crash recovery"), "{stdout}");
    let j = std::fs::read_to_string(&json).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(j.trim_end().ends_with('}'), "{j}");
    assert_eq!(numbers(&j, "disk_mib"), vec![1024.0]);
    // Three targets x eight phases x one rep, every one moved data.
    let mib = numbers(&j, "mib_s");
    assert_eq!(mib.len(), 24, "{j}");
    assert!(mib.iter().all(|&m| m > 0.0), "{mib:?}");
    assert!(numbers(&j, "iops").iter().all(|&v| v > 0.0));
    assert!(numbers(&j, "p99_us")
        .iter()
        .zip(numbers(&j, "p50_us"))
        .all(|(p99, p50)| *p99 >= p50));
    // Reads read the device; the open of MlsDisk was timed and read some.
    let user_reads: f64 = numbers(&j, "user_blocks_read").iter().sum();
    let dev_reads: f64 = numbers(&j, "device_blocks_read").iter().sum();
    assert!(user_reads > 0.0 && dev_reads > 0.0);
    assert_eq!(numbers(&j, "open_s").len(), 1, "{j}");
    assert!(numbers(&j, "open_device_reads")[0] > 0.0);
    assert!(numbers(&j, "peak_rss_kib").iter().all(|&k| k > 0.0), "{j}");
    assert!(numbers(&j, "peak_heap_kib").iter().all(|&k| k > 0.0), "{j}");
}

#[test]
fn queue_depth_and_a_phase_selection_run_every_target() {
    let dir = std::env::temp_dir().join(format!("mlsdisk-bench-qd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("bench.img");
    let json = dir.join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_mlsdisk-bench"))
        .args(["--size-mib", "4", "--rnd-mib", "1", "--reps", "1"])
        .args(["--no-direct", "--no-open-times", "--iodepth", "4"])
        .args(["--phases", "rnd-write-4K,seq-read,rnd-read-4K"])
        .arg("--file")
        .arg(&img)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("QD4"), "{stdout}");
    assert!(!stdout.contains("rnd-read-32K"), "{stdout}");
    let j = std::fs::read_to_string(&json).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(numbers(&j, "iodepth"), vec![4.0]);
    // Three targets x three phases; every request of every phase ran.
    let mib = numbers(&j, "mib_s");
    assert_eq!(mib.len(), 9, "{j}");
    assert!(mib.iter().all(|&m| m > 0.0), "{mib:?}");
    let written = numbers(&j, "user_blocks_written");
    let read = numbers(&j, "user_blocks_read");
    // Per target: 1 MiB of random writes, then a 4 MiB sequential read
    // and 1 MiB of random reads.
    for t in 0..3 {
        assert_eq!(written[3 * t], 256.0, "{j}");
        assert_eq!(read[3 * t + 1], 1024.0, "{j}");
        assert_eq!(read[3 * t + 2], 256.0, "{j}");
    }
    // MlsDisk's lookups went through the index's block cache.
    let hits: f64 = numbers(&j, "index_cache_hits").iter().sum();
    assert!(hits > 0.0, "{j}");
}
