//! The benchmark: the eight workloads of the seed's table on three disks
//! (raw file, CryptDisk, MlsDisk) over the same device stack.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mlsdisk_core::bio::{AlignedBuf, BlockSet, BLOCK_SIZE};
use mlsdisk_core::disk::{Counted, MlsDisk, ParallelReads};
use mlsdisk_core::Result;

use crate::cryptdisk::CryptDisk;

/// One disk under test. Every method takes `&self`: the bench keeps up
/// to `--iodepth` requests in flight at once, one per thread.
pub trait Target: Sync {
    /// Logical capacity in blocks.
    fn nblocks(&self) -> u64;
    /// Writes whole blocks.
    fn write(&self, lba: u64, buf: &[u8]) -> Result<()>;
    /// Reads whole blocks.
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<()>;
    /// Makes writes durable.
    fn sync(&self) -> Result<()>;
    /// Blocks written to the device so far.
    fn dev_written(&self) -> u64;
    /// Blocks read from the device so far.
    fn dev_read(&self) -> u64;
    /// A status line for verbose output.
    fn status(&self) -> String {
        String::new()
    }
    /// Index lookup counters, if the target has an index.
    fn index_counters(&self) -> IndexCounters {
        IndexCounters::default()
    }
}

/// Counters of an index (MlsDisk's LSM tree), for the read-path report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexCounters {
    /// Index block-cache hits (bloom, table index and data blocks).
    pub cache_hits: u64,
    /// Index block-cache misses (each one device read of the index).
    pub cache_misses: u64,
}

fn poisoned<T>(_: T) -> mlsdisk_core::Error {
    mlsdisk_core::Error::new(
        mlsdisk_core::ErrorKind::InvalidState,
        "bench: lock poisoned",
    )
}

/// The raw device.
pub struct Raw<D: BlockSet>(pub Arc<Counted<D>>);

impl<D: BlockSet> Target for Raw<D> {
    fn nblocks(&self) -> u64 {
        self.0.nblocks()
    }
    fn write(&self, lba: u64, buf: &[u8]) -> Result<()> {
        self.0.write(lba, buf)
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<()> {
        self.0.read(lba, buf)
    }
    fn sync(&self) -> Result<()> {
        self.0.flush()
    }
    fn dev_written(&self) -> u64 {
        self.0.counts().1
    }
    fn dev_read(&self) -> u64 {
        self.0.counts().0
    }
}

/// The encrypt-only baseline (its reads and writes run in parallel).
pub struct Crypt<D: BlockSet>(pub CryptDisk<Arc<Counted<D>>>, pub Arc<Counted<D>>);

impl<D: BlockSet> Target for Crypt<D> {
    fn nblocks(&self) -> u64 {
        self.0.nblocks()
    }
    fn write(&self, lba: u64, buf: &[u8]) -> Result<()> {
        self.0.write(lba, buf)
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<()> {
        self.0.read(lba, buf)
    }
    fn sync(&self) -> Result<()> {
        self.0.sync()
    }
    fn dev_written(&self) -> u64 {
        self.1.counts().1
    }
    fn dev_read(&self) -> u64 {
        self.1.counts().0
    }
}

/// MlsDisk behind a lock, with the engine's concurrency model (the one the
/// kernel module uses): writes, syncs and background work run under the
/// lock, one at a time; a read plans under the lock (write buffer, forward
/// map, index lookup, including the index's device reads on a cache miss)
/// and fetches and authenticates its data blocks without it
/// ([`ParallelReads`], the code the kernel module runs), so the data reads
/// of many requests are in flight at once. A fetch that fails (a stale
/// plan, or a device error) is repeated under the lock.
pub struct Mls<D: BlockSet> {
    disk: Mutex<MlsDisk<D>>,
    reads: ParallelReads<D>,
}

impl<D: BlockSet> Mls<D> {
    /// Wraps a disk.
    pub fn new(d: MlsDisk<D>) -> Self {
        let reads = ParallelReads::new(Some(d.reader()));
        Self {
            disk: Mutex::new(d),
            reads,
        }
    }
    /// The disk back.
    pub fn into_inner(self) -> Result<MlsDisk<D>> {
        self.disk.into_inner().map_err(poisoned)
    }
    fn disk(&self) -> Result<std::sync::MutexGuard<'_, MlsDisk<D>>> {
        self.disk.lock().map_err(poisoned)
    }
}

impl<D: BlockSet> Target for Mls<D> {
    fn nblocks(&self) -> u64 {
        self.disk().map_or(0, |d| d.nblocks())
    }
    fn write(&self, lba: u64, buf: &[u8]) -> Result<()> {
        self.disk()?.write(lba, buf)
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<()> {
        // Background work runs in `sync` only: the wake has nothing to wake.
        self.reads.read(&self.disk, lba, buf).result
    }
    fn sync(&self) -> Result<()> {
        let mut d = self.disk()?;
        d.sync()?;
        while d.background_step()? {}
        Ok(())
    }
    fn dev_written(&self) -> u64 {
        self.disk()
            .map_or(0, |mut d| d.stats().device_blocks_written)
    }
    fn dev_read(&self) -> u64 {
        self.disk().map_or(0, |mut d| d.stats().device_blocks_read)
    }
    fn status(&self) -> String {
        let Ok(mut d) = self.disk() else {
            return "lock poisoned".into();
        };
        let s = d.stats();
        let mut line = format!(
            "{} forced_syncs={} moved={} skipped={} flushes={}",
            s.status_line(true),
            s.forced_syncs,
            s.cleaner_blocks_moved,
            s.cleaner_lookups_skipped,
            s.device_flushes
        );
        if let Some(l) = d.index_stats() {
            line.push_str(&format!(
                " index: records_written={} wal_blocks={} compactions={} moves={} syncs={} tables={:?} records={:?} index_cache={}/{} data_cache={}/{} pinned={} data_blocks={}/{} node_room_lent={}",
                l.records_written, l.wal_blocks, l.compactions, l.moves, l.syncs, l.tables, l.records, l.cache_hits, l.cache_misses, l.data_cache_hits, l.data_cache_misses, l.pinned_blocks, l.data_blocks_cached, l.data_cache_limit, l.node_blocks_lent
            ));
        }
        line
    }
    fn index_counters(&self) -> IndexCounters {
        match self.disk().ok().and_then(|d| d.index_stats()) {
            Some(s) => IndexCounters {
                cache_hits: s.cache_hits,
                cache_misses: s.cache_misses,
            },
            None => IndexCounters::default(),
        }
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
    /// Index block-cache hits during the phase.
    pub index_hits: u64,
    /// Index block-cache misses during the phase (index blocks read).
    pub index_misses: u64,
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

    /// Index blocks read from the device per user block read.
    pub fn index_reads_per_read(&self) -> f64 {
        if self.user_read_blocks == 0 {
            0.0
        } else {
            self.index_misses as f64 / self.user_read_blocks as f64
        }
    }

    /// Index block-cache hit rate (0 when the index was not used).
    pub fn index_hit_rate(&self) -> f64 {
        let all = self.index_hits + self.index_misses;
        if all == 0 {
            0.0
        } else {
            self.index_hits as f64 / all as f64
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
/// `iodepth` requests are in flight at once, each from its own thread
/// (sequential phases hand out the next 1 MiB to whichever thread is free,
/// as fio does with a queue depth; random phases draw each thread's
/// offsets from its own generator). A write phase ends with one sync,
/// after every request returned.
pub fn run_phase(
    t: &dyn Target,
    phase: Phase,
    ws: u64,
    rnd_blocks: u64,
    iodepth: usize,
    rng: &mut Rng,
) -> Result<PhaseResult> {
    run_phase_skewed(t, phase, ws, rnd_blocks, iodepth, None, rng)
}

/// [`run_phase`] with a skewed access pattern for the random phases:
/// `Some((traffic, space))` sends `traffic` percent of the requests to the
/// first `space` percent of the working set (the hot part) and the rest
/// to the other blocks, each part uniformly (80/20: `Some((80, 20))`).
pub fn run_phase_skewed(
    t: &dyn Target,
    phase: Phase,
    ws: u64,
    rnd_blocks: u64,
    iodepth: usize,
    skew: Option<(u64, u64)>,
    rng: &mut Rng,
) -> Result<PhaseResult> {
    const SEQ: u64 = 256;
    let iodepth = iodepth.max(1);
    let dev0 = t.dev_written();
    let rd0 = t.dev_read();
    let ix0 = t.index_counters();
    let seeds: Vec<u64> = (0..iodepth).map(|_| rng.next_u64()).collect();
    let fill_byte = rng.next_u64() as u8 & 1;
    // Requests handed out so far: 1 MiB steps for sequential phases, one
    // request each for random phases.
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let (total_reqs, bs) = match phase {
        Phase::SeqWrite | Phase::SeqRead => (ws.div_ceil(SEQ), SEQ),
        Phase::RndWrite(bs) | Phase::RndRead(bs) => (rnd_blocks.div_ceil(bs), bs),
    };
    let worker = |seed: u64| -> Result<Vec<f64>> {
        let mut rng = Rng::new(seed);
        let mut lat: Vec<f64> = Vec::new();
        // Page-aligned, as fio's buffers are: under O_DIRECT an unaligned
        // buffer costs every target a bounce copy no real user pays.
        let mut own = AlignedBuf::zeroed(SEQ as usize * BLOCK_SIZE)?;
        let buf = own.as_mut_slice();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i * 7 + 13) as u8 ^ fill_byte;
        }
        while !stop.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= total_reqs {
                break;
            }
            let (lba, n) = match phase {
                Phase::SeqWrite | Phase::SeqRead => (i * SEQ, SEQ.min(ws - i * SEQ)),
                Phase::RndWrite(bs) | Phase::RndRead(bs) => {
                    let slots = (ws / bs).max(1);
                    let slot = match skew {
                        Some((traffic, space)) => {
                            let hot = (slots * space.min(100) / 100).clamp(1, slots);
                            if rng.next_u64() % 100 < traffic || hot == slots {
                                rng.next_u64() % hot
                            } else {
                                hot + rng.next_u64() % (slots - hot)
                            }
                        }
                        None => rng.next_u64() % slots,
                    };
                    (slot * bs, bs)
                }
            };
            let s = Instant::now();
            let r = match phase {
                Phase::SeqWrite => t.write(lba, &buf[..n as usize * BLOCK_SIZE]),
                Phase::RndWrite(_) => {
                    let off = (rng.next_u64() % 8) as usize * BLOCK_SIZE;
                    buf[off] = buf[off].wrapping_add(1);
                    t.write(lba, &buf[off..off + n as usize * BLOCK_SIZE])
                }
                Phase::SeqRead | Phase::RndRead(_) => {
                    t.read(lba, &mut buf[..n as usize * BLOCK_SIZE])
                }
            };
            lat.push(s.elapsed().as_secs_f64() * 1e6);
            if let Err(e) = r {
                stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(lat)
    };
    let start = Instant::now();
    let results: Vec<Result<Vec<f64>>> = if iodepth == 1 {
        vec![worker(seeds[0])]
    } else {
        std::thread::scope(|sc| {
            let hs: Vec<_> = seeds
                .iter()
                .map(|&seed| sc.spawn(move || worker(seed)))
                .collect();
            hs.into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(mlsdisk_core::Error::new(
                            mlsdisk_core::ErrorKind::InvalidState,
                            "bench: a worker panicked",
                        ))
                    })
                })
                .collect()
        })
    };
    let mut lat = Vec::new();
    for r in results {
        lat.extend(r?);
    }
    let moved = match phase {
        Phase::SeqWrite | Phase::SeqRead => ws,
        _ => total_reqs * bs,
    };
    let written = match phase {
        Phase::SeqWrite | Phase::RndWrite(_) => {
            t.sync()?;
            moved
        }
        _ => 0,
    };
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let n = lat.len() as f64;
    let ix1 = t.index_counters();
    Ok(PhaseResult {
        mib_s: moved as f64 * BLOCK_SIZE as f64 / (1024.0 * 1024.0) / secs,
        iops: n / secs,
        p50_us: quantile(&mut lat, 0.5),
        p99_us: quantile(&mut lat, 0.99),
        user_blocks: written,
        dev_blocks: t.dev_written() - dev0,
        user_read_blocks: moved - written,
        dev_read_blocks: t.dev_read() - rd0,
        index_hits: ix1.cache_hits - ix0.cache_hits,
        index_misses: ix1.cache_misses - ix0.cache_misses,
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
