//! Throughput of the log store on a memory disk (run with
//! `cargo test --release -p mlsdisk-core --test log_bench -- --ignored --nocapture`).

use std::sync::Arc;
use std::time::Instant;

use mlsdisk_core::bio::{BlockRange, MemDisk, BLOCK_SIZE};
use mlsdisk_core::log::{LogStoreConfig, TxLogStore};
use mlsdisk_core::platform::StdCrypto;

#[test]
#[ignore = "benchmark"]
fn log_store_throughput() {
    let nblocks = 1 << 16; // 256 MiB
    let disk = Arc::new(MemDisk::new(256 + nblocks).unwrap());
    let j = BlockRange::new(disk.clone(), 0, 256).unwrap();
    let c = BlockRange::new(disk.clone(), 256, nblocks).unwrap();
    let mut s = TxLogStore::format(
        j,
        c,
        Arc::new(StdCrypto),
        &[1u8; 32],
        LogStoreConfig::default(),
    )
    .unwrap();
    let data = vec![0x5au8; 64 * BLOCK_SIZE];
    let n = 48_000u64;
    let t = Instant::now();
    s.begin().unwrap();
    let l = s.create_log(0).unwrap();
    for i in 0..n / 64 {
        s.append(l, &data).unwrap();
        if i % 64 == 63 {
            s.commit(b"").unwrap();
            s.begin().unwrap();
        }
    }
    s.commit(b"").unwrap();
    let secs = t.elapsed().as_secs_f64();
    let mib = (n * BLOCK_SIZE as u64) as f64 / (1 << 20) as f64;
    eprintln!(
        "append: {:.0} MiB/s ({n} blocks, commit every 4096)",
        mib / secs
    );

    let mut buf = vec![0u8; BLOCK_SIZE];
    let mut x = 12345u64;
    for (cache, label) in [(0usize, "no node cache"), (256, "256-node cache")] {
        s.set_node_cache(cache);
        let t = Instant::now();
        let reads = 20_000;
        for _ in 0..reads {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.read(l, x % n, &mut buf).unwrap();
        }
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "random 4 KiB reads, {label}: {:.0} reads/s ({:.0} MiB/s)",
            reads as f64 / secs,
            reads as f64 * 4096.0 / (1 << 20) as f64 / secs
        );
    }
    let t = Instant::now();
    for p in 0..n {
        s.read(l, p, &mut buf).unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!("sequential reads (cache): {:.0} MiB/s", mib / secs);

    let t = Instant::now();
    let commits = 2000;
    for _ in 0..commits {
        s.begin().unwrap();
        s.append(l, &data[..BLOCK_SIZE]).unwrap();
        s.commit(&[0u8; 64]).unwrap();
    }
    eprintln!(
        "small commits (1 block + 64 B user state): {:.0}/s on a memory disk",
        commits as f64 / t.elapsed().as_secs_f64()
    );
}
