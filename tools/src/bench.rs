//! The benchmark: the eight workloads of the seed's table on three disks
//! (raw file, CryptDisk, MlsDisk) over the same device stack.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use mlsdisk_core::bio::{BlockSet, BLOCK_SIZE};
use mlsdisk_core::disk::{Counted, MlsDisk};
use mlsdisk_core::Result;

use crate::cryptdisk::CryptDisk;

/// One disk under test.
pub trait Target {
    /// Logical capacity in blocks.
    fn nblocks(&self) -> u64;
    /// Writes whole blocks.
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<()>;
    /// Reads whole blocks.
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<()>;
    /// Makes writes durable.
    fn sync(&mut self) -> Result<()>;
    /// Blocks written to the device so far.
    fn dev_written(&mut self) -> u64;
    /// Blocks read from the device so far.
    fn dev_read(&mut self) -> u64;
    /// A status line for verbose output.
    fn status(&mut self) -> String {
        String::new()
    }
}

/// The raw device.
pub struct Raw<D: BlockSet>(pub Arc<Counted<D>>);

impl<D: BlockSet> Target for Raw<D> {
    fn nblocks(&self) -> u64 {
        self.0.nblocks()
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<()> {
        self.0.write(lba, buf)
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<()> {
        self.0.read(lba, buf)
    }
    fn sync(&mut self) -> Result<()> {
        self.0.flush()
    }
    fn dev_written(&mut self) -> u64 {
        self.0.counts().1
    }
    fn dev_read(&mut self) -> u64 {
        self.0.counts().0
    }
}

/// The encrypt-only baseline.
pub struct Crypt<D: BlockSet>(pub CryptDisk<Arc<Counted<D>>>, pub Arc<Counted<D>>);

impl<D: BlockSet> Target for Crypt<D> {
    fn nblocks(&self) -> u64 {
        self.0.nblocks()
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<()> {
        self.0.write(lba, buf)
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<()> {
        self.0.read(lba, buf)
    }
    fn sync(&mut self) -> Result<()> {
        self.0.sync()
    }
    fn dev_written(&mut self) -> u64 {
        self.1.counts().1
    }
    fn dev_read(&mut self) -> u64 {
        self.1.counts().0
    }
}

/// MlsDisk.
pub struct Mls<D: BlockSet>(pub MlsDisk<D>);

impl<D: BlockSet> Target for Mls<D> {
    fn nblocks(&self) -> u64 {
        self.0.nblocks()
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<()> {
        self.0.write(lba, buf)
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<()> {
        self.0.read(lba, buf)
    }
    fn sync(&mut self) -> Result<()> {
        self.0.sync()?;
        while self.0.background_step()? {}
        Ok(())
    }
    fn dev_written(&mut self) -> u64 {
        self.0.stats().device_blocks_written
    }
    fn dev_read(&mut self) -> u64 {
        self.0.stats().device_blocks_read
    }
    fn status(&mut self) -> String {
        let s = self.0.stats();
        format!(
            "{} forced_syncs={} moved={} flushes={}",
            s.status_line(true),
            s.forced_syncs,
            s.cleaner_blocks_moved,
            s.device_flushes
        )
    }
}

/// A workload.
#[derive(Clone, Copy, Debug)]
pub enum Phase {
    /// Sequential writes of 1 MiB over the working set.
    SeqWrite,
    /// Random aligned writes of this many blocks.
    RndWrite(u64),
    /// Sequential reads of 1 MiB over the working set.
    SeqRead,
    /// Random aligned reads of this many blocks.
    RndRead(u64),
}

/// The eight columns of the seed's table, in run order.
pub const PHASES: [(&str, Phase); 8] = [
    ("seq-write", Phase::SeqWrite),
    ("rnd-write-4K", Phase::RndWrite(1)),
    ("rnd-write-32K", Phase::RndWrite(8)),
    ("rnd-write-256K", Phase::RndWrite(64)),
    ("seq-read", Phase::SeqRead),
    ("rnd-read-4K", Phase::RndRead(1)),
    ("rnd-read-32K", Phase::RndRead(8)),
    ("rnd-read-256K", Phase::RndRead(64)),
];

/// What one phase measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct PhaseResult {
    /// Throughput in MiB/s.
    pub mib_s: f64,
    /// Requests per second.
    pub iops: f64,
    /// Median request latency, microseconds (a sync at the end of a write
    /// phase counts in the throughput, not in the latencies).
    pub p50_us: f64,
    /// 99th percentile request latency, microseconds.
    pub p99_us: f64,
    /// Blocks the workload wrote (user view).
    pub user_blocks: u64,
    /// Blocks the device got.
    pub dev_blocks: u64,
    /// Blocks the workload read (user view).
    pub user_read_blocks: u64,
    /// Blocks read from the device during the phase.
    pub dev_read_blocks: u64,
}

impl PhaseResult {
    /// Device blocks read per user block read (0 for a write phase).
    pub fn reads_per_read(&self) -> f64 {
        if self.user_read_blocks == 0 {
            0.0
        } else {
            self.dev_read_blocks as f64 / self.user_read_blocks as f64
        }
    }
}

/// The `q`-quantile (0..=1) of some latencies (sorted in place).
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let i = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Peak resident memory of this process in KiB (`VmHWM`), if known.
pub fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the peak resident memory to the current one (Linux: `5` to
/// `/proc/self/clear_refs`); false if that is not possible.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Runs one phase over `ws` blocks; random phases move `rnd_blocks` blocks.
pub fn run_phase(
    t: &mut dyn Target,
    phase: Phase,
    ws: u64,
    rnd_blocks: u64,
    rng: &mut Rng,
) -> Result<PhaseResult> {
    const SEQ: u64 = 256;
    let dev0 = t.dev_written();
    let rd0 = t.dev_read();
    let mut lat: Vec<f64> = Vec::new();
    let mut timed = |t: &mut dyn Target, f: &mut dyn FnMut(&mut dyn Target) -> Result<()>| {
        let s = Instant::now();
        let r = f(t);
        lat.push(s.elapsed().as_secs_f64() * 1e6);
        r
    };
    let mut buf = vec![0u8; SEQ as usize * BLOCK_SIZE];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i * 7 + 13) as u8 ^ (rng.next_u64() as u8 & 1);
    }
    let start = Instant::now();
    let mut moved = 0u64;
    let mut written = 0u64;
    match phase {
        Phase::SeqWrite => {
            let mut lba = 0;
            while lba < ws {
                let n = SEQ.min(ws - lba);
                let b = &buf[..n as usize * BLOCK_SIZE];
                timed(t, &mut |t| t.write(lba, b))?;
                lba += n;
            }
            t.sync()?;
            moved = ws;
            written = ws;
        }
        Phase::RndWrite(bs) => {
            let slots = ws / bs;
            while moved < rnd_blocks {
                let lba = rng.next_u64() % slots * bs;
                let off = (rng.next_u64() % 8) as usize * BLOCK_SIZE;
                buf[off] = buf[off].wrapping_add(1);
                let b = &buf[off..off + bs as usize * BLOCK_SIZE];
                timed(t, &mut |t| t.write(lba, b))?;
                moved += bs;
            }
            t.sync()?;
            written = moved;
        }
        Phase::SeqRead => {
            let mut lba = 0;
            while lba < ws {
                let n = SEQ.min(ws - lba);
                let b = &mut buf[..n as usize * BLOCK_SIZE];
                timed(t, &mut |t| t.read(lba, b))?;
                lba += n;
            }
            moved = ws;
        }
        Phase::RndRead(bs) => {
            let slots = ws / bs;
            while moved < rnd_blocks {
                let lba = rng.next_u64() % slots * bs;
                let b = &mut buf[..bs as usize * BLOCK_SIZE];
                timed(t, &mut |t| t.read(lba, b))?;
                moved += bs;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let n = lat.len() as f64;
    Ok(PhaseResult {
        mib_s: moved as f64 * BLOCK_SIZE as f64 / (1024.0 * 1024.0) / secs,
        iops: n / secs,
        p50_us: quantile(&mut lat, 0.5),
        p99_us: quantile(&mut lat, 0.99),
        user_blocks: written,
        dev_blocks: t.dev_written() - dev0,
        user_read_blocks: moved - written,
        dev_read_blocks: t.dev_read() - rd0,
    })
}

/// The median of some numbers (0 for none).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Where the benchmark puts its image file.
pub fn default_image() -> PathBuf {
    std::env::temp_dir().join("mlsdisk-bench.img")
}
