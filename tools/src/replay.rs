//! Crash replay: rebuilds the backing image of an MlsDisk at many crash
//! points of a `dm-log-writes` log (see [`crate::logwrites`]) and checks
//! each one with the userspace engine, e2fsck and debugfs.
//!
//! A crash point `p` means: the entries `0..p` of the log have completed.
//! Every entry up to the last flush before `p` is durable. The writes after
//! that flush (the "window") may or may not have reached the medium:
//!
//! * a *clean* state keeps only what a crash must keep: the durable prefix
//!   and the FUA writes of the window (made at every flush, FUA and mark
//!   point of the log);
//! * a *dropped* state keeps a random subset of the window's other writes
//!   and applies it in a random order (between two FUA writes; a FUA write
//!   is durable when it completes, so it comes after the writes before it).
//!
//! What each state must satisfy (docs/security.md: consistency and atomicity):
//!
//! * after the `created` mark, `MlsDisk::open` succeeds;
//! * its sync counter is at least the one the workload read before the
//!   last mark (every sync that had returned), at least the clean state's
//!   and at most one more (the sync in flight);
//! * every logical block reads without an error;
//! * after the `mkfs` mark, the decrypted image passes `e2fsck -fn` once
//!   its journal is replayed (`e2fsck -E journal_only`, what a mount does);
//! * every file made durable before the last mark (and not changed before
//!   the next one) has its recorded SHA-256 (read with `debugfs`).
//!
//! The manifest comes from the guest (tests/guest/mlsdisk-crash-replay.sh):
//! lines `key HEX`, `layout DATA_START DATA_SECTORS LOG_START LOG_SECTORS`,
//! `add SHA256 PATH`, `del PATH`, `mark NAME SYNC`, `final SHA256`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use mlsdisk_core::bio::{MemDisk, BLOCK_SIZE};
use mlsdisk_core::disk::{DiskConfig, MlsDisk, NoAnchor};
use mlsdisk_core::platform::StdCrypto;
use mlsdisk_core::CryptoRef;

use crate::logwrites::{self, Entry, Log};

/// The mark the workload puts after the disk was created.
pub const MARK_CREATED: &str = "created";
/// The mark after mkfs.ext4 and a sync.
pub const MARK_MKFS: &str = "mkfs";

/// What the workload recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// The disk's key.
    pub key: Vec<u8>,
    /// The data device on the image: first sector and sectors (512 bytes).
    pub data: (u64, u64),
    /// The log device on the image: first sector and sectors.
    pub log: (u64, u64),
    /// The marks in order.
    pub marks: Vec<Mark>,
    /// The durable files after the last line (a mark at the end).
    pub end_files: BTreeMap<String, String>,
    /// SHA-256 of the data device after the workload, if given.
    pub final_sha: Option<String>,
}

/// One mark of the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// Its name (the text in the log).
    pub name: String,
    /// The sync counter read just before the mark.
    pub sync: u64,
    /// Durable files at this mark: path -> SHA-256 (hex).
    pub files: BTreeMap<String, String>,
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn is_sha(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Manifest {
    /// Parses the manifest text; unknown or malformed lines are errors.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut m = Manifest::default();
        let mut files: BTreeMap<String, String> = BTreeMap::new();
        let mut have_layout = false;
        for (n, line) in text.lines().enumerate() {
            let w: Vec<&str> = line.split_whitespace().collect();
            let bad = || format!("manifest line {}: cannot read '{line}'", n + 1);
            let num = |s: &str| s.parse::<u64>().map_err(|_| bad());
            match w.as_slice() {
                [] => {}
                ["key", k] => {
                    m.key = hex_bytes(k)
                        .filter(|k| k.len() == 16 || k.len() == 32)
                        .ok_or_else(bad)?;
                }
                ["layout", a, b, c, d] => {
                    m.data = (num(a)?, num(b)?);
                    m.log = (num(c)?, num(d)?);
                    have_layout = true;
                }
                ["add", sha, path] if is_sha(sha) => {
                    files.insert((*path).to_string(), sha.to_ascii_lowercase());
                }
                ["del", path] => {
                    files.remove(*path);
                }
                ["mark", name, sync] => m.marks.push(Mark {
                    name: (*name).to_string(),
                    sync: num(sync)?,
                    files: files.clone(),
                }),
                ["final", sha] if is_sha(sha) => m.final_sha = Some(sha.to_ascii_lowercase()),
                _ => return Err(bad()),
            }
        }
        if m.key.is_empty() {
            return Err("manifest has no key line".into());
        }
        if !have_layout || m.data.1 == 0 || m.log.1 == 0 {
            return Err("manifest has no layout line (or an empty device)".into());
        }
        m.end_files = files;
        Ok(m)
    }
}

/// A small seeded generator (splitmix64): the same seed, the same states.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    /// Shuffles `v` in place.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// How a state treats the writes after the last flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only the FUA writes of the window (at a flush, FUA or mark point).
    Clean,
    /// A random subset of the window, reordered; the seed of the choice.
    Dropped(u64),
}

/// One crash state to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    /// Entries `0..point` completed.
    pub point: usize,
    /// What happens to the window.
    pub kind: Kind,
}

/// The log, the image it came from and the derived tables.
pub struct Replay {
    src: File,
    /// The parsed log.
    pub log: Log,
    /// The manifest.
    pub manifest: Manifest,
    /// Bytes of the data device.
    pub dev_bytes: usize,
    /// `last_flush[p]`: the last flush entry before point `p`.
    last_flush: Vec<Option<usize>>,
    /// Log index of each manifest mark.
    mark_pos: Vec<usize>,
}

/// What a state is checked against.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// Before the `created` mark: the open may fail.
    pub pre_create: bool,
    /// After the `mkfs` mark: check the file system.
    pub fs: bool,
    /// The sync counter is at least this (the last mark's).
    pub min_sync: u64,
    /// The clean state's counter, if known: the counter is it or one more.
    pub base_sync: Option<u64>,
    /// Files and their SHA-256.
    pub files: Vec<(String, String)>,
    /// Name of the last mark before the point.
    pub after_mark: Option<String>,
}

/// The result of a state that passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passed {
    /// The sync counter it opened at (None: pre-create, not opened).
    pub sync: Option<u64>,
    /// Files compared.
    pub files: usize,
}

fn read_exact_at(f: &mut File, pos: u64, buf: &mut [u8]) -> Result<(), String> {
    f.seek(SeekFrom::Start(pos))
        .and_then(|_| f.read_exact(buf))
        .map_err(|e| {
            format!(
                "reading {} bytes at byte {pos} of the image: {e}",
                buf.len()
            )
        })
}

impl Replay {
    /// Opens the guest's disk image `image` (data and log device on it as
    /// the manifest's layout says) and parses the log.
    pub fn open(image: &Path, manifest: Manifest) -> Result<Self, String> {
        let mut src = File::open(image).map_err(|e| format!("{}: {e}", image.display()))?;
        let size = src
            .metadata()
            .map_err(|e| format!("{}: {e}", image.display()))?
            .len();
        let (ls, ln) = manifest.log;
        let (ds, dn) = manifest.data;
        let log_start = ls.checked_mul(512).ok_or("log start overflows")?;
        let log_len = ln.checked_mul(512).ok_or("log length overflows")?;
        let data_end = ds
            .checked_add(dn)
            .and_then(|e| e.checked_mul(512))
            .ok_or("data device end overflows")?;
        if log_start.checked_add(log_len).is_none_or(|e| e > size) || data_end > size {
            return Err(format!(
                "the layout (data {ds}+{dn}, log {ls}+{ln} sectors) runs past the image ({size} bytes)"
            ));
        }
        let dev_bytes = usize::try_from(dn * 512).map_err(|_| "data device too large")?;
        if dev_bytes % BLOCK_SIZE != 0 {
            return Err(format!(
                "data device of {dev_bytes} bytes is not whole 4 KiB blocks"
            ));
        }
        let log =
            logwrites::parse(&mut src, log_start, log_len).map_err(|e| format!("log: {e}"))?;
        let mut last_flush = Vec::with_capacity(log.entries.len() + 1);
        let mut cur = None;
        last_flush.push(None);
        for (i, e) in log.entries.iter().enumerate() {
            if e.is_flush() {
                cur = Some(i);
            }
            last_flush.push(cur);
        }
        let mut mark_pos = Vec::with_capacity(manifest.marks.len());
        let mut from = 0;
        for m in &manifest.marks {
            let at = log.entries[from..]
                .iter()
                .position(|e| e.mark.as_deref() == Some(m.name.as_str()))
                .map(|i| i + from)
                .ok_or_else(|| {
                    format!(
                        "mark '{}' of the manifest is not in the log (in order)",
                        m.name
                    )
                })?;
            mark_pos.push(at);
            from = at + 1;
        }
        for name in [MARK_CREATED, MARK_MKFS] {
            if !manifest.marks.iter().any(|m| m.name == name) {
                return Err(format!("the manifest has no '{name}' mark"));
            }
        }
        Ok(Self {
            src,
            log,
            manifest,
            dev_bytes,
            last_flush,
            mark_pos,
        })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.log.entries.len()
    }

    /// True for an empty log.
    pub fn is_empty(&self) -> bool {
        self.log.entries.is_empty()
    }

    /// Log index of the manifest's mark `name`.
    pub fn mark_at(&self, name: &str) -> Option<usize> {
        self.manifest
            .marks
            .iter()
            .position(|m| m.name == name)
            .and_then(|i| self.mark_pos.get(i).copied())
    }

    /// The last flush before point `p`.
    pub fn last_flush(&self, p: usize) -> Option<usize> {
        self.last_flush.get(p).copied().flatten()
    }

    /// Counts of (writes, flushes, FUA writes, discards, marks).
    pub fn counts(&self) -> (usize, usize, usize, usize, usize) {
        let e = &self.log.entries;
        (
            e.iter().filter(|e| e.has_data()).count(),
            e.iter().filter(|e| e.is_flush()).count(),
            e.iter().filter(|e| e.is_fua()).count(),
            e.iter().filter(|e| e.is_discard()).count(),
            e.iter().filter(|e| e.mark.is_some()).count(),
        )
    }

    fn entry(&self, i: usize) -> Result<&Entry, String> {
        self.log
            .entries
            .get(i)
            .ok_or_else(|| format!("entry {i} is past the log's end"))
    }

    /// Applies entry `i` to `img`. A discard zeroes its range when
    /// `zero_discard`, else leaves it (QEMU ignores discards by default).
    pub fn apply(&mut self, img: &mut [u8], i: usize, zero_discard: bool) -> Result<(), String> {
        let e = self.entry(i)?.clone();
        if !(e.has_data() || e.is_discard() && zero_discard) {
            return Ok(());
        }
        let ss = u64::from(self.log.sector_size);
        let range = e
            .sector
            .checked_mul(ss)
            .and_then(|a| Some((a, a.checked_add(e.nr_sectors.checked_mul(ss)?)?)))
            .and_then(|(a, b)| Some((usize::try_from(a).ok()?, usize::try_from(b).ok()?)))
            .filter(|&(_, b)| b <= img.len())
            .ok_or_else(|| {
                format!(
                    "entry {i}: sectors {}+{} are past the data device ({} bytes)",
                    e.sector,
                    e.nr_sectors,
                    img.len()
                )
            })?;
        let dst = img
            .get_mut(range.0..range.1)
            .ok_or_else(|| format!("entry {i}: bad range"))?;
        if e.has_data() {
            read_exact_at(&mut self.src, e.data_pos, dst)
        } else {
            dst.fill(0);
            Ok(())
        }
    }

    /// The expectations at point `p`.
    pub fn expect(&self, p: usize) -> Expect {
        let created = self.mark_at(MARK_CREATED).unwrap_or(usize::MAX);
        let mkfs = self.mark_at(MARK_MKFS).unwrap_or(usize::MAX);
        let mut x = Expect {
            pre_create: p <= created,
            fs: p > mkfs,
            ..Expect::default()
        };
        // The last mark completed before p, and what is durable there and
        // unchanged until the next mark (or the end).
        let k = self.mark_pos.iter().rposition(|&m| m < p);
        if let Some(k) = k {
            let here = &self.manifest.marks[k];
            x.min_sync = here.sync;
            x.after_mark = Some(here.name.clone());
            let next = self
                .manifest
                .marks
                .get(k + 1)
                .map_or(&self.manifest.end_files, |m| &m.files);
            x.files = here
                .files
                .iter()
                .filter(|(path, sha)| next.get(*path) == Some(*sha))
                .map(|(a, b)| (a.clone(), b.clone()))
                .collect();
        }
        x
    }

    /// Plans states from `seed`: `n` with dropped and reordered writes,
    /// and clean ones at every mark and at up to `n / 4` other flush/FUA
    /// points; the end of the log is always the last. Sorted by point.
    pub fn plan(&self, n: usize, seed: u64) -> Vec<State> {
        let mut rng = Rng::new(seed);
        let e = &self.log.entries;
        let mut clean: Vec<usize> = Vec::new();
        let mut marks: Vec<usize> = Vec::new();
        let mut last_data_seen = None;
        let mut last_point_data = None;
        for (i, x) in e.iter().enumerate() {
            if x.has_data() || x.is_discard() {
                last_data_seen = Some(i);
            }
            if x.mark.is_some() {
                marks.push(i + 1);
            } else if (x.is_flush() || x.is_fua()) && last_data_seen != last_point_data {
                // Another point at a flush without a write since the last
                // one would give the same image.
                clean.push(i + 1);
                last_point_data = last_data_seen;
            }
        }
        // Every mark, then up to n/4 other flush/FUA points, evenly spread.
        let mut chosen: Vec<usize> = marks;
        let rest = n / 4;
        if clean.len() <= rest {
            chosen.extend(clean);
        } else if rest > 0 {
            let step = clean.len() as f64 / rest as f64;
            chosen.extend((0..rest).filter_map(|k| clean.get((k as f64 * step) as usize).copied()));
        }
        let mut states: Vec<State> = chosen
            .into_iter()
            .map(|point| State {
                point,
                kind: Kind::Clean,
            })
            .collect();
        // Dropped states: a window that holds a non-FUA write w, after the
        // disk was created.
        let created = self.mark_at(MARK_CREATED).unwrap_or(0);
        // next[i]: the first flush after entry i (or the end).
        let mut next = vec![e.len(); e.len()];
        let mut after = e.len();
        for (i, x) in e.iter().enumerate().rev() {
            next[i] = after;
            if x.is_flush() {
                after = i;
            }
        }
        let cands: Vec<usize> = e
            .iter()
            .enumerate()
            .filter(|(i, x)| *i > created && (x.has_data() || x.is_discard()) && !x.is_fua())
            .map(|(i, _)| i)
            .collect();
        let want = n;
        if !cands.is_empty() {
            for _ in 0..want {
                let w = cands[rng.below(cands.len() as u64) as usize];
                let hi = next[w];
                // p in w+1..=hi: w completed, the next flush not.
                let p = w + 1 + rng.below((hi - w) as u64) as usize;
                states.push(State {
                    point: p,
                    kind: Kind::Dropped(rng.next_u64()),
                });
            }
        }
        states.push(State {
            point: e.len(),
            kind: Kind::Clean,
        });
        states.sort_by_key(|s| (s.point, matches!(s.kind, Kind::Dropped(_))));
        states.dedup();
        states
    }

    /// The write a self-test drops to corrupt the state at point `p`: the
    /// largest write made durable between the mark before the last one
    /// and the last flush before `p` (the data of the last syncs: losing
    /// it must show as a read error or an older sync).
    pub fn self_test_target(&self, p: usize) -> Option<usize> {
        let f = self.last_flush(p)?;
        let k = self.mark_pos.iter().rposition(|&m| m < p);
        let from = k
            .and_then(|k| k.checked_sub(1))
            .and_then(|k| self.mark_pos.get(k))
            .map_or(0, |&m| m + 1);
        let mut best: Option<usize> = None;
        for i in from..f {
            let e = &self.log.entries[i];
            if e.has_data() && best.is_none_or(|b| e.nr_sectors > self.log.entries[b].nr_sectors) {
                best = Some(i);
            }
        }
        best
    }
}

/// Builds images in point order: keeps the durable prefix and applies it
/// forward as the points grow.
pub struct Builder {
    durable: Vec<u8>,
    /// Entries `0..upto` are in `durable`.
    upto: usize,
}

impl Builder {
    /// Starts from `initial` (the data device before the log began).
    pub fn new(initial: Vec<u8>) -> Self {
        Self {
            durable: initial,
            upto: 0,
        }
    }

    /// Advances the durable image to hold entries `0..upto` (never back).
    pub fn advance(&mut self, r: &mut Replay, upto: usize) -> Result<(), String> {
        if upto < self.upto {
            return Err(format!(
                "states out of order: durable image at {}, asked for {upto}",
                self.upto
            ));
        }
        while self.upto < upto {
            r.apply(&mut self.durable, self.upto, false)?;
            self.upto += 1;
        }
        Ok(())
    }

    /// The image at point `p` with `kind`, and without entry `drop` (a
    /// self-test corruption: it must be in the durable prefix, at or after
    /// the builder's position).
    pub fn build(
        &mut self,
        r: &mut Replay,
        p: usize,
        kind: Kind,
        drop: Option<usize>,
    ) -> Result<Vec<u8>, String> {
        let durable_end = r.last_flush(p).map_or(0, |f| f + 1);
        let mut img;
        match drop {
            Some(d) if d < durable_end => {
                self.advance(r, d)?;
                img = self.durable.clone();
                for i in d + 1..durable_end {
                    r.apply(&mut img, i, false)?;
                }
            }
            Some(d) => return Err(format!("entry {d} to drop is not durable at point {p}")),
            None => {
                self.advance(r, durable_end)?;
                img = self.durable.clone();
            }
        }
        match kind {
            Kind::Clean => {
                for i in durable_end..p {
                    if r.entry(i)?.is_fua() {
                        r.apply(&mut img, i, false)?;
                    }
                }
            }
            Kind::Dropped(seed) => {
                let mut rng = Rng::new(seed);
                // Keep each write with probability q (in eighths).
                let q = 1 + rng.below(7);
                let mut group: Vec<usize> = Vec::new();
                for i in durable_end..p {
                    let e = r.entry(i)?;
                    if e.is_fua() {
                        rng.shuffle(&mut group);
                        for &g in &group {
                            r.apply(&mut img, g, true)?;
                        }
                        group.clear();
                        r.apply(&mut img, i, false)?;
                    } else if (e.has_data() || e.is_discard()) && rng.below(8) < q {
                        group.push(i);
                    }
                }
                rng.shuffle(&mut group);
                for &g in &group {
                    r.apply(&mut img, g, true)?;
                }
            }
        }
        Ok(img)
    }

    /// The image with every entry applied in log order (the device after
    /// the workload, as the guest saw it).
    pub fn all(&mut self, r: &mut Replay) -> Result<Vec<u8>, String> {
        let n = r.len();
        self.advance(r, n)?;
        Ok(self.durable.clone())
    }
}

/// SHA-256 of `data` in lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut s = String::with_capacity(64);
    for b in d.as_ref() {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Runs the engine and the e2fsprogs tools on states.
pub struct Checker {
    key: Vec<u8>,
    crypto: CryptoRef,
    work: PathBuf,
    fs_image: PathBuf,
    dumps: PathBuf,
}

impl Checker {
    /// A checker with scratch files in `work` (made if missing).
    pub fn new(key: &[u8], work: &Path) -> Result<Self, String> {
        let dumps = work.join("dump");
        std::fs::create_dir_all(&dumps).map_err(|e| format!("{}: {e}", dumps.display()))?;
        Ok(Self {
            key: key.to_vec(),
            crypto: Arc::new(StdCrypto),
            work: work.to_path_buf(),
            fs_image: work.join("logical.img"),
            dumps,
        })
    }

    /// Where the last checked state's decrypted image is.
    pub fn fs_image(&self) -> &Path {
        &self.fs_image
    }

    fn open(&self, img: &[u8]) -> Result<MlsDisk<MemDisk>, String> {
        let nblocks = (img.len() / BLOCK_SIZE) as u64;
        let dev = MemDisk::new(nblocks).map_err(|e| format!("memory disk: {e}"))?;
        dev.restore(img).map_err(|e| format!("memory disk: {e}"))?;
        MlsDisk::open(
            dev,
            self.crypto.clone(),
            &self.key,
            DiskConfig::default(),
            Box::new(NoAnchor),
        )
        .map_err(|e| format!("open failed: {:?}: {}", e.kind(), e.msg()))
    }

    /// The sync counter the image opens at.
    pub fn sync_counter(&self, img: &[u8]) -> Result<u64, String> {
        Ok(self.open(img)?.stats().sync_counter)
    }

    /// Checks one image. Err: why it fails.
    pub fn check(&self, img: &[u8], x: &Expect) -> Result<Passed, String> {
        let mut d = match self.open(img) {
            Ok(d) => d,
            // Before the disk was created, refusing to open is right.
            Err(_) if x.pre_create => {
                return Ok(Passed {
                    sync: None,
                    files: 0,
                })
            }
            Err(e) => return Err(e),
        };
        let c = d.stats().sync_counter;
        if !x.pre_create && c < x.min_sync {
            return Err(format!(
                "opened at sync {c}, older than sync {} that had returned before mark {}",
                x.min_sync,
                x.after_mark.as_deref().unwrap_or("?")
            ));
        }
        if let Some(b) = x.base_sync {
            if c < b || c > b + 1 {
                return Err(format!(
                    "opened at sync {c}; the durable writes alone give {b}: only {b} or {} (in flight) is allowed",
                    b + 1
                ));
            }
        }
        // Every block reads; the plaintext goes to a sparse file.
        let cap = d.nblocks();
        let mut f = File::create(&self.fs_image)
            .map_err(|e| format!("{}: {e}", self.fs_image.display()))?;
        f.set_len(cap * BLOCK_SIZE as u64)
            .map_err(|e| format!("{}: {e}", self.fs_image.display()))?;
        const RUN: u64 = 256;
        let mut buf = vec![0u8; RUN as usize * BLOCK_SIZE];
        let mut lba = 0;
        while lba < cap {
            let n = RUN.min(cap - lba);
            let b = &mut buf[..n as usize * BLOCK_SIZE];
            d.read(lba, b).map_err(|e| {
                format!(
                    "reading logical blocks {lba}..{}: {:?}: {}",
                    lba + n,
                    e.kind(),
                    e.msg()
                )
            })?;
            for (k, blk) in b.chunks_exact(BLOCK_SIZE).enumerate() {
                if blk.iter().any(|&v| v != 0) {
                    f.seek(SeekFrom::Start((lba + k as u64) * BLOCK_SIZE as u64))
                        .and_then(|_| f.write_all(blk))
                        .map_err(|e| format!("{}: {e}", self.fs_image.display()))?;
                }
            }
            lba += n;
        }
        drop(f);
        drop(d);
        if x.fs {
            self.fsck()?;
        }
        let files = if x.fs {
            self.compare_files(&x.files)?
        } else {
            0
        };
        Ok(Passed {
            sync: Some(c),
            files,
        })
    }

    fn run(&self, what: &str, cmd: &mut Command) -> Result<(i32, String), String> {
        let out = cmd
            .output()
            .map_err(|e| format!("{what}: cannot run: {e} (install e2fsprogs)"))?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok((out.status.code().unwrap_or(-1), text))
    }

    fn fsck(&self) -> Result<(), String> {
        // Replay the journal as a mount would (exit 0 or 1: nothing or
        // something replayed), then the full read-only check.
        let (rc, out) = self.run(
            "e2fsck -E journal_only",
            Command::new("e2fsck")
                .args(["-y", "-E", "journal_only"])
                .arg(&self.fs_image),
        )?;
        if rc > 1 {
            return Err(format!(
                "journal replay (e2fsck -E journal_only) exit {rc}: {}",
                tail(&out)
            ));
        }
        let (rc, out) = self.run(
            "e2fsck -fn",
            Command::new("e2fsck").arg("-fn").arg(&self.fs_image),
        )?;
        if rc != 0 {
            return Err(format!("e2fsck -fn exit {rc}: {}", tail(&out)));
        }
        Ok(())
    }

    fn compare_files(&self, files: &[(String, String)]) -> Result<usize, String> {
        if files.is_empty() {
            return Ok(0);
        }
        let mut cmds = String::new();
        for (i, (path, _)) in files.iter().enumerate() {
            if path.contains(|c: char| c.is_whitespace() || c == '"') {
                return Err(format!("path '{path}' cannot be given to debugfs"));
            }
            let _ = writeln!(
                cmds,
                "dump \"/{path}\" {}",
                self.dumps.join(i.to_string()).display()
            );
        }
        let cmd_file = self.work.join("debugfs.cmds");
        std::fs::write(&cmd_file, cmds).map_err(|e| format!("{}: {e}", cmd_file.display()))?;
        for i in 0..files.len() {
            let _ = std::fs::remove_file(self.dumps.join(i.to_string()));
        }
        let (_, out) = self.run(
            "debugfs",
            Command::new("debugfs")
                .arg("-f")
                .arg(&cmd_file)
                .arg(&self.fs_image),
        )?;
        for (i, (path, sha)) in files.iter().enumerate() {
            let p = self.dumps.join(i.to_string());
            let data = std::fs::read(&p).map_err(|_| {
                format!("fsynced file /{path} is missing (debugfs: {})", tail(&out))
            })?;
            let got = sha256_hex(&data);
            if got != *sha {
                return Err(format!(
                    "WRONG DATA: fsynced file /{path} has SHA-256 {got}, recorded {sha} ({} bytes)",
                    data.len()
                ));
            }
        }
        Ok(files.len())
    }
}

/// The last lines of a tool's output, on one line.
fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(4)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const SHA_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn manifest_keeps_the_durable_set_per_mark() {
        let text = format!(
            "key {}\nlayout 0 8 8 64\nmark created 1\nadd {SHA_A} d0/f1\nmark m1 2\n\
             del d0/f1\nadd {SHA_B} d0/f1\nadd {SHA_A} d1/f2\nmark m2 3\ndel d1/f2\nfinal {SHA_B}\n",
            "00".repeat(32)
        );
        let m = Manifest::parse(&text).expect("parse");
        assert_eq!(m.key.len(), 32);
        assert_eq!((m.data, m.log), ((0, 8), (8, 64)));
        assert_eq!(m.marks.len(), 3);
        assert!(m.marks[0].files.is_empty());
        assert_eq!(
            m.marks[1].files.get("d0/f1").map(String::as_str),
            Some(SHA_A)
        );
        assert_eq!(
            m.marks[2].files.get("d0/f1").map(String::as_str),
            Some(SHA_B)
        );
        assert_eq!(m.marks[2].sync, 3);
        assert!(!m.end_files.contains_key("d1/f2"));
        assert_eq!(m.final_sha.as_deref(), Some(SHA_B));
    }

    #[test]
    fn manifest_rejects_bad_lines() {
        let key = "00".repeat(16);
        for bad in [
            "key 0g".to_string(),
            format!("key {key}\nlayout 0 8 8"),
            format!("key {key}\nlayout 0 8 8 64\nadd nothex d0/f"),
            format!("key {key}\nlayout 0 8 8 64\nmark m x"),
            format!("key {key}\nlayout 0 8 8 64\nwhat is this"),
            format!("key {key}"),
            "layout 0 8 8 64".to_string(),
        ] {
            assert!(Manifest::parse(&bad).is_err(), "parsed: {bad}");
        }
    }

    #[test]
    fn rng_is_reproducible_and_shuffles_everything() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        assert_eq!(
            (0..10).map(|_| a.next_u64()).collect::<Vec<_>>(),
            (0..10).map(|_| b.next_u64()).collect::<Vec<_>>()
        );
        let mut v: Vec<u32> = (0..100).collect();
        Rng::new(3).shuffle(&mut v);
        assert_ne!(v, (0..100).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..100).collect::<Vec<_>>());
        assert_eq!(Rng::new(1).below(0), 0);
    }

    /// A disk image with an 8-sector data device and a log after it:
    /// created, A@0, flush, B@1, C@2 (FUA), D@1, mkfs, end.
    fn synthetic() -> (PathBuf, Manifest) {
        use crate::logwrites::{FLAG_FLUSH, FLAG_FUA, FLAG_MARK, MAGIC, VERSION};
        let mut log = vec![0u8; 512];
        let mut n = 0u64;
        let mut entry =
            |log: &mut Vec<u8>, sector: u64, flags: u64, text: &str, fill: Option<u8>| {
                let mut h = vec![0u8; 512];
                h[0..8].copy_from_slice(&sector.to_le_bytes());
                h[8..16].copy_from_slice(&u64::from(fill.is_some()).to_le_bytes());
                h[16..24].copy_from_slice(&flags.to_le_bytes());
                h[24..32].copy_from_slice(&(text.len() as u64).to_le_bytes());
                h[32..32 + text.len()].copy_from_slice(text.as_bytes());
                log.extend_from_slice(&h);
                if let Some(v) = fill {
                    log.extend_from_slice(&[v; 512]);
                }
                n += 1;
            };
        entry(&mut log, 0, FLAG_MARK, MARK_CREATED, None);
        entry(&mut log, 0, 0, "", Some(b'A'));
        entry(&mut log, 0, FLAG_FLUSH, "", None);
        entry(&mut log, 1, 0, "", Some(b'B'));
        entry(&mut log, 2, FLAG_FUA, "", Some(b'C'));
        entry(&mut log, 1, 0, "", Some(b'D'));
        entry(&mut log, 0, FLAG_MARK, MARK_MKFS, None);
        entry(&mut log, 0, FLAG_MARK, "dm-log-writes-end", None);
        log[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        log[8..16].copy_from_slice(&VERSION.to_le_bytes());
        log[16..24].copy_from_slice(&n.to_le_bytes());
        log[24..28].copy_from_slice(&512u32.to_le_bytes());
        let mut img = vec![0u8; 8 * 512];
        img.extend_from_slice(&log);
        let path =
            std::env::temp_dir().join(format!("mlsdisk-replay-test-{}.img", std::process::id()));
        std::fs::write(&path, &img).expect("write test image");
        let text = format!(
            "key {}\nlayout 0 8 8 {}\nmark created 0\nmark mkfs 1\n",
            "00".repeat(16),
            log.len() / 512
        );
        (path, Manifest::parse(&text).expect("manifest"))
    }

    #[test]
    fn states_keep_the_durable_prefix_and_fua_writes() {
        let (path, m) = synthetic();
        let mut r = Replay::open(&path, m).expect("open");
        let _ = std::fs::remove_file(&path);
        assert_eq!(r.counts(), (4, 1, 1, 0, 3));
        let end = r.len();
        let sector = |img: &[u8], s: usize| img[s * 512];
        // All applied in order: A, D (over B), C.
        let all = Builder::new(vec![0; r.dev_bytes]).all(&mut r).expect("all");
        assert_eq!(
            (sector(&all, 0), sector(&all, 1), sector(&all, 2)),
            (b'A', b'D', b'C')
        );
        let mut b = Builder::new(vec![0; r.dev_bytes]);
        // Before the flush nothing is durable; after it A is, and C (FUA).
        let early = b.build(&mut r, 2, Kind::Clean, None).expect("early");
        assert_eq!(sector(&early, 0), 0);
        let clean = b.build(&mut r, end, Kind::Clean, None).expect("clean");
        assert_eq!(
            (sector(&clean, 0), sector(&clean, 1), sector(&clean, 2)),
            (b'A', 0, b'C')
        );
        // Dropped states: A and C always; sector 1 is 0, B or D.
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let img = b
                .build(&mut r, end, Kind::Dropped(seed), None)
                .expect("dropped");
            assert_eq!((sector(&img, 0), sector(&img, 2)), (b'A', b'C'));
            seen.insert(sector(&img, 1));
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![0, b'B', b'D']);
        // The self-test's corruption: the flushed A dropped.
        let mut b = Builder::new(vec![0; r.dev_bytes]);
        let bad = b.build(&mut r, end, Kind::Clean, Some(1)).expect("drop");
        assert_eq!((sector(&bad, 0), sector(&bad, 2)), (0, b'C'));
        assert!(
            b.build(&mut r, end, Kind::Clean, Some(4)).is_err(),
            "entry 4 is not durable"
        );
        // Expectations: pre-create up to the mark, fs after mkfs.
        assert!(r.expect(0).pre_create && !r.expect(1).pre_create);
        assert!(!r.expect(6).fs && r.expect(7).fs);
        assert_eq!(r.expect(7).min_sync, 1);
        let plan = r.plan(10, 5);
        assert!(plan.windows(2).all(|w| w[0].point <= w[1].point));
        assert_eq!(plan.last().map(|s| s.point), Some(end));
    }

    /// A device that records its writes and flushes as dm-log-writes does
    /// (512-byte sectors; nothing reordered: the simplest honest device).
    struct Recorder {
        disk: MemDisk,
        log: std::sync::Mutex<(Vec<u8>, u64)>,
    }

    impl Recorder {
        fn entry(&self, sector: u64, nr: u64, flags: u64, text: &str, data: &[u8]) {
            let mut h = vec![0u8; 512];
            h[0..8].copy_from_slice(&sector.to_le_bytes());
            h[8..16].copy_from_slice(&nr.to_le_bytes());
            h[16..24].copy_from_slice(&flags.to_le_bytes());
            h[24..32].copy_from_slice(&(text.len() as u64).to_le_bytes());
            h[32..32 + text.len()].copy_from_slice(text.as_bytes());
            let mut g = self.log.lock().expect("log lock");
            g.0.extend_from_slice(&h);
            g.0.extend_from_slice(data);
            g.1 += 1;
        }
        fn mark(&self, name: &str) {
            self.entry(0, 0, crate::logwrites::FLAG_MARK, name, &[]);
        }
    }

    impl mlsdisk_core::bio::BlockSet for Recorder {
        fn read(&self, pos: u64, buf: &mut [u8]) -> mlsdisk_core::Result<()> {
            self.disk.read(pos, buf)
        }
        fn write(&self, pos: u64, buf: &[u8]) -> mlsdisk_core::Result<()> {
            self.disk.write(pos, buf)?;
            self.entry(pos * 8, (buf.len() / 512) as u64, 0, "", buf);
            Ok(())
        }
        fn flush(&self) -> mlsdisk_core::Result<()> {
            self.entry(0, 0, crate::logwrites::FLAG_FLUSH, "", &[]);
            Ok(())
        }
        fn nblocks(&self) -> u64 {
            self.disk.nblocks()
        }
    }

    /// The engine itself, logged: create, then rounds of writes, each
    /// ended by a sync and a mark; every crash state must open at a sync
    /// in its bounds and read every block; dropping the flushed commit
    /// before a mark must be caught.
    #[test]
    fn engine_crash_states_from_a_recorded_log() {
        use mlsdisk_core::bio::BlockSet;
        const NBLOCKS: u64 = 4096;
        let key = [7u8; 32];
        let rec = Arc::new(Recorder {
            disk: MemDisk::new(NBLOCKS).expect("mem disk"),
            log: std::sync::Mutex::new((Vec::new(), 0)),
        });
        let crypto: CryptoRef = Arc::new(StdCrypto);
        let mut d = MlsDisk::create(
            rec.clone(),
            crypto,
            &key,
            DiskConfig::default(),
            Box::new(NoAnchor),
        )
        .expect("create");
        d.sync().expect("sync");
        let mut manifest = format!(
            "key {}\nlayout 0 {} {} LOGLEN\n",
            "07".repeat(32),
            NBLOCKS * 8,
            NBLOCKS * 8
        );
        let mark = |d: &mut MlsDisk<Arc<Recorder>>, name: &str, manifest: &mut String| {
            let s = d.stats().sync_counter;
            rec.mark(name);
            let _ = writeln!(manifest, "mark {name} {s}");
        };
        mark(&mut d, MARK_CREATED, &mut manifest);
        mark(&mut d, MARK_MKFS, &mut manifest);
        let cap = d.nblocks();
        let mut block = vec![0u8; BLOCK_SIZE * 4];
        for round in 0..6u64 {
            for k in 0..40u64 {
                block.fill((round * 40 + k) as u8 | 1);
                d.write((round * 97 + k * 13) % (cap - 4), &block)
                    .expect("write");
            }
            d.sync().expect("sync");
            mark(&mut d, &format!("r{round}"), &mut manifest);
        }
        // Unsynced writes at the end, then the end mark.
        for k in 0..20u64 {
            d.write(k * 7 % (cap - 4), &block).expect("write");
        }
        drop(d);
        rec.mark("dm-log-writes-end");
        let mut img = rec.disk.snapshot().expect("snapshot");
        let (log, n) = rec.log.lock().expect("log lock").clone();
        let mut sup = vec![0u8; 512];
        sup[0..8].copy_from_slice(&crate::logwrites::MAGIC.to_le_bytes());
        sup[8..16].copy_from_slice(&crate::logwrites::VERSION.to_le_bytes());
        sup[16..24].copy_from_slice(&n.to_le_bytes());
        sup[24..28].copy_from_slice(&512u32.to_le_bytes());
        img.extend_from_slice(&sup);
        img.extend_from_slice(&log);
        let manifest = manifest.replace("LOGLEN", &((log.len() + 512) / 512).to_string());
        let dir =
            std::env::temp_dir().join(format!("mlsdisk-replay-engine-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("disk.img");
        std::fs::write(&path, &img).expect("write image");
        let mut r =
            Replay::open(&path, Manifest::parse(&manifest).expect("manifest")).expect("open");
        assert_eq!(rec.nblocks() as usize * BLOCK_SIZE, r.dev_bytes);
        let checker = Checker::new(&key, &dir).expect("checker");
        let plan = r.plan(20, 11);
        let mut b = Builder::new(vec![0u8; r.dev_bytes]);
        let mut opened = 0;
        for s in &plan {
            let mut x = r.expect(s.point);
            x.fs = false;
            if matches!(s.kind, Kind::Dropped(_)) && !x.pre_create {
                let base = b.build(&mut r, s.point, Kind::Clean, None).expect("base");
                x.base_sync = Some(checker.sync_counter(&base).expect("clean state opens"));
            }
            let img = b.build(&mut r, s.point, s.kind, None).expect("build");
            let p = checker
                .check(&img, &x)
                .unwrap_or_else(|e| panic!("state {s:?}: {e}"));
            opened += usize::from(p.sync.is_some());
        }
        assert!(opened > 15, "only {opened} of {} states opened", plan.len());
        // The data write of the syncs before mark r3 dropped: caught (the
        // superblock write alone would not be: the journal is enough).
        let p = r.mark_at("r3").expect("r3") + 1;
        let last = r.self_test_target(p).expect("a write");
        let mut x = r.expect(p);
        x.fs = false;
        let mut b = Builder::new(vec![0u8; r.dev_bytes]);
        let bad = b.build(&mut r, p, Kind::Clean, Some(last)).expect("build");
        assert!(
            checker.check(&bad, &x).is_err(),
            "dropping flushed write {last} ({:?}) went unnoticed",
            r.log.entries[last]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sha256_of_abc() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
