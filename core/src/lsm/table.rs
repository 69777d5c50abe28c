//! Sorted tables: the immutable, sorted runs of records of the tree.
//!
//! A table is one sealed log of the store, of 4 KiB blocks:
//!
//! ```text
//!   [0, D)            data blocks: records sorted by key, strictly ascending
//!   [D, D + I)        index blocks: the last key of each data block
//!   [D + I, D + I + B) bloom filter blocks (blocked filter, see `bloom`)
//!   D + I + B         footer: counts, key range, index directory
//! ```
//!
//! Every block starts with the common header (`format`), owner = the table's
//! sequence number. Index block `j` holds the last keys of data blocks
//! `j * INDEX_ENTRIES ..`, `count` entries of u64. The footer, after the header:
//!
//! ```text
//!   24..32  records u64        32..40  min key u64      40..48  max key u64
//!   48..52  data blocks u32    52..56  index blocks u32 56..60  bloom blocks u32
//!   60      level u8           61      bloom probes u8  62..64  reserved (0)
//!   64..72  tombstones u64     72..    index directory: the last key of each
//!                                      index block (header count = entries)
//! ```
//!
//! A lookup reads the bloom block of the key (unless the fetcher skips the
//! filter), the index block (chosen with the directory, held in memory) and
//! one data block; all through a cache (see `cache`: index and bloom
//! blocks are pinned in memory within a budget).

use alloc::vec::Vec;

use super::bloom::{self, BloomBuilder};
use super::format::{
    self, check_records, record_at, records_per_block, BlockKind, Header, FLAG_VALUE, HEADER_LEN,
    PAYLOAD_LEN,
};
use super::LsmValue;
use crate::bio::{AlignedBuf, BLOCK_SIZE};
use crate::codec::{self, get_u64, put};
use crate::{bail, ensure, Error, ErrorKind, Result};

/// Index entries (data blocks) per index block.
pub const INDEX_ENTRIES: usize = PAYLOAD_LEN / 8;
/// The fixed part of the footer.
const FOOTER_FIXED: usize = 72;
/// Index blocks a footer can list.
pub const MAX_INDEX_BLOCKS: usize = (BLOCK_SIZE - FOOTER_FIXED) / 8;
/// The most data blocks of one table.
pub const MAX_DATA_BLOCKS: usize = MAX_INDEX_BLOCKS * INDEX_ENTRIES;

/// "Read block `pos` of a log": what the table reader needs of storage.
pub trait BlockSource {
    /// Reads block `pos` into `buf` (one block).
    fn read_block(&self, pos: u64, buf: &mut [u8]) -> Result<()>;

    /// Reads blocks from `pos` into `buf` (whole blocks); a source that
    /// can should read them in one request (the default reads them one by
    /// one).
    fn read_blocks(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        for (i, b) in buf.chunks_exact_mut(BLOCK_SIZE).enumerate() {
            self.read_block(pos + i as u64, b)?;
        }
        Ok(())
    }
}

impl BlockSource for Vec<Vec<u8>> {
    fn read_block(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        let b = usize::try_from(pos)
            .ok()
            .and_then(|p| self.get(p))
            .ok_or(Error::new(ErrorKind::InvalidArgument, "block past the log"))?;
        ensure!(b.len() == buf.len(), InvalidArgument, "block size");
        buf.copy_from_slice(b);
        Ok(())
    }
}

/// Fetches validated blocks of one table, possibly from a cache.
pub trait BlockFetch {
    /// Returns block `pos` of the table, of `kind`, after `check` accepted it
    /// (a cached block was checked when it was loaded).
    fn fetch(
        &mut self,
        pos: u64,
        kind: BlockKind,
        check: &dyn Fn(&[u8]) -> Result<()>,
    ) -> Result<&[u8]>;

    /// Returns data block `pos` of the table, which has `n_data` data
    /// blocks, after `check` accepted it. A caching fetch may read the
    /// data blocks after it in the same request
    /// ([`super::cache::CachedFetch`]); by default this is [`Self::fetch`].
    fn fetch_data(
        &mut self,
        pos: u64,
        n_data: u64,
        check: &dyn Fn(&[u8]) -> Result<()>,
    ) -> Result<&[u8]> {
        let _ = n_data;
        self.fetch(pos, BlockKind::Data, check)
    }

    /// [`Self::fetch_data`] for a lookup that will read the `need` data
    /// blocks from `pos` now: a caching fetch reads them in one request
    /// on a miss. By default this is [`Self::fetch_data`].
    fn fetch_data_run(
        &mut self,
        pos: u64,
        n_data: u64,
        need: u64,
        check: &dyn Fn(&[u8]) -> Result<()>,
    ) -> Result<&[u8]> {
        let _ = need;
        self.fetch_data(pos, n_data, check)
    }

    /// Called when the bloom filter answered "absent" (for statistics).
    fn bloom_negative(&mut self) {}

    /// Whether the lookup checks the bloom filter (default: yes). A lookup
    /// that will read the key's data block anyway when the key is absent
    /// from the upper levels (the deepest level of a tree) skips it: the
    /// filter block would cost the device read the data block costs.
    fn use_bloom(&self) -> bool {
        true
    }
}

/// Data blocks a lookup of a run of keys asks the cache to read in one
/// request at most ([`BlockFetch::fetch_data_run`]).
pub const MAX_RUN: u64 = 64;

/// A fetcher without a cache, over a block source (tests).
#[cfg(test)]
pub struct DirectFetch<'a> {
    /// Where the blocks come from.
    pub src: &'a dyn BlockSource,
    /// The buffer of the last block read.
    pub buf: Vec<u8>,
}

#[cfg(test)]
impl BlockFetch for DirectFetch<'_> {
    fn fetch(
        &mut self,
        pos: u64,
        _kind: BlockKind,
        check: &dyn Fn(&[u8]) -> Result<()>,
    ) -> Result<&[u8]> {
        self.buf.resize(BLOCK_SIZE, 0);
        self.src.read_block(pos, &mut self.buf)?;
        check(&self.buf)?;
        Ok(&self.buf)
    }
}

/// What is known of a table in memory: its footer, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableInfo {
    /// The table's sequence number (unique among live tables; newer is larger).
    pub seq: u64,
    /// Its level.
    pub level: u8,
    /// Records (values and tombstones).
    pub records: u64,
    /// Tombstone records.
    pub tombstones: u64,
    /// The smallest key.
    pub min_key: u64,
    /// The largest key.
    pub max_key: u64,
    /// Data blocks.
    pub n_data: u32,
    /// Index blocks.
    pub n_index: u32,
    /// Bloom filter blocks.
    pub n_bloom: u32,
    /// Bloom probes per key.
    pub bloom_k: u8,
    /// The last key of each index block.
    pub index_dir: Vec<u64>,
    /// The value size of its records.
    pub value_size: usize,
}

impl TableInfo {
    /// A copy (its index directory allocated with `try_reserve`).
    pub fn try_clone(&self) -> Result<Self> {
        let mut index_dir = Vec::new();
        index_dir.try_reserve_exact(self.index_dir.len())?;
        index_dir.extend_from_slice(&self.index_dir);
        Ok(Self { index_dir, ..*self })
    }

    /// The number of blocks of the table's log.
    pub fn total_blocks(&self) -> u64 {
        u64::from(self.n_data) + u64::from(self.n_index) + u64::from(self.n_bloom) + 1
    }

    /// Whether the key range of the table meets `[lo, hi]`.
    pub fn overlaps(&self, lo: u64, hi: u64) -> bool {
        self.min_key <= hi && lo <= self.max_key
    }

    /// Writes the footer block.
    pub fn emit_footer(&self, out: &mut [u8]) -> Result<()> {
        let out = out
            .get_mut(..BLOCK_SIZE)
            .ok_or(Error::new(ErrorKind::InvalidArgument, "block too short"))?;
        out.fill(0);
        ensure!(
            self.index_dir.len() == self.n_index as usize
                && self.index_dir.len() <= MAX_INDEX_BLOCKS,
            InvalidArgument,
            "table: index directory size"
        );
        Header {
            kind: BlockKind::Footer,
            count: self.n_index as u16,
            value_size: self.value_size as u16,
            owner: self.seq,
        }
        .emit(out)?;
        put(out, 24, &self.records.to_le_bytes())?;
        put(out, 32, &self.min_key.to_le_bytes())?;
        put(out, 40, &self.max_key.to_le_bytes())?;
        put(out, 48, &self.n_data.to_le_bytes())?;
        put(out, 52, &self.n_index.to_le_bytes())?;
        put(out, 56, &self.n_bloom.to_le_bytes())?;
        put(out, 60, &[self.level, self.bloom_k])?;
        put(out, 64, &self.tombstones.to_le_bytes())?;
        for (i, k) in self.index_dir.iter().enumerate() {
            put(out, FOOTER_FIXED + 8 * i, &k.to_le_bytes())?;
        }
        Ok(())
    }

    /// Parses and checks a footer block of a log of `log_len` blocks.
    /// (Open reads the manifest instead; the footers stay for checks,
    /// tests and fuzzing.)
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn parse_footer(block: &[u8], value_size: usize, log_len: u64) -> Result<Self> {
        let h = Header::parse(block)?;
        ensure!(h.kind == BlockKind::Footer, Corrupted, "table: no footer");
        ensure!(
            usize::from(h.value_size) == value_size,
            Corrupted,
            "table: value size differs"
        );
        let info = Self {
            seq: h.owner,
            records: get_u64(block, 24)?,
            min_key: get_u64(block, 32)?,
            max_key: get_u64(block, 40)?,
            n_data: codec::get_u32(block, 48)?,
            n_index: codec::get_u32(block, 52)?,
            n_bloom: codec::get_u32(block, 56)?,
            level: codec::get_u8(block, 60)?,
            bloom_k: codec::get_u8(block, 61)?,
            tombstones: get_u64(block, 64)?,
            index_dir: Vec::new(),
            value_size,
        };
        ensure!(
            get_u16_pair_zero(block)?,
            Corrupted,
            "table: reserved footer bytes set"
        );
        ensure!(
            u32::from(h.count) == info.n_index,
            Corrupted,
            "table: index block count"
        );
        let n = info.n_index as usize;
        ensure!(n <= MAX_INDEX_BLOCKS, Corrupted, "table: index block count");
        let mut dir = Vec::new();
        dir.try_reserve_exact(n)?;
        for i in 0..n {
            dir.push(get_u64(block, FOOTER_FIXED + 8 * i)?);
        }
        ensure!(
            block
                .get(FOOTER_FIXED + 8 * n..)
                .is_some_and(|t| t.iter().all(|&b| b == 0)),
            Corrupted,
            "table: footer tail bytes set"
        );
        let info = Self {
            index_dir: dir,
            ..info
        };
        info.check(Some(log_len))?;
        Ok(info)
    }

    /// Checks what a footer or a manifest entry says of a table whose log
    /// has `log_len` blocks (`None`: its length is not known here): counts,
    /// key range, bloom probes, the index directory.
    pub fn check(&self, log_len: Option<u64>) -> Result<()> {
        let info = self;
        let rpb = records_per_block(info.value_size) as u64;
        let nd = u64::from(info.n_data);
        ensure!(
            info.n_data >= 1 && info.n_data as usize <= MAX_DATA_BLOCKS,
            Corrupted,
            "table: data block count"
        );
        ensure!(
            info.records >= nd && info.records <= nd.saturating_mul(rpb),
            Corrupted,
            "table: record count"
        );
        ensure!(
            info.tombstones <= info.records,
            Corrupted,
            "table: tombstones"
        );
        ensure!(
            info.n_index as usize == (info.n_data as usize).div_ceil(INDEX_ENTRIES)
                && info.index_dir.len() == info.n_index as usize,
            Corrupted,
            "table: index block count"
        );
        ensure!(info.min_key <= info.max_key, Corrupted, "table: key range");
        ensure!(
            info.n_bloom == 0 || (1..=16).contains(&info.bloom_k),
            Corrupted,
            "table: bloom probes"
        );
        ensure!(
            usize::from(info.level) < super::MAX_LEVELS,
            Corrupted,
            "table: level"
        );
        if let Some(len) = log_len {
            ensure!(
                info.total_blocks() == len,
                Corrupted,
                "table: length differs from its log"
            );
        }
        let dir = &info.index_dir;
        ensure!(
            dir.windows(2).all(|w| w.first() < w.get(1)),
            Corrupted,
            "table: index directory out of order"
        );
        ensure!(
            dir.last() == Some(&info.max_key) && dir.first() >= Some(&info.min_key),
            Corrupted,
            "table: index directory range"
        );
        Ok(())
    }

    /// Checks data block `i` (already read).
    pub fn check_data(&self, block: &[u8]) -> Result<()> {
        let h = Header::expect(block, BlockKind::Data, self.value_size, self.seq)?;
        ensure!(h.count >= 1, Corrupted, "table: empty data block");
        check_records(block, usize::from(h.count), self.value_size, true)?;
        let (first, _, _) = record_at(block, 0, self.value_size)?;
        let (last, _, _) = record_at(block, usize::from(h.count) - 1, self.value_size)?;
        ensure!(
            first >= self.min_key && last <= self.max_key,
            Corrupted,
            "table: data block outside the table's range"
        );
        Ok(())
    }

    /// The number of records of a checked data block.
    pub fn data_count(block: &[u8]) -> Result<usize> {
        codec::get_u16(block, 6).map(usize::from)
    }

    /// Checks index block `j`.
    pub fn check_index(&self, j: usize, block: &[u8]) -> Result<()> {
        let h = Header::expect(block, BlockKind::Index, self.value_size, self.seq)?;
        let expect = (self.n_data as usize)
            .saturating_sub(j * INDEX_ENTRIES)
            .min(INDEX_ENTRIES);
        ensure!(
            usize::from(h.count) == expect && expect > 0,
            Corrupted,
            "table: index entry count"
        );
        let mut prev = None;
        for e in 0..expect {
            let k = get_u64(block, HEADER_LEN + 8 * e)?;
            ensure!(prev < Some(k), Corrupted, "table: index out of order");
            prev = Some(k);
        }
        ensure!(
            prev == self.index_dir.get(j).copied(),
            Corrupted,
            "table: index differs from the directory"
        );
        ensure!(
            block
                .get(HEADER_LEN + 8 * expect..)
                .is_some_and(|t| t.iter().all(|&b| b == 0)),
            Corrupted,
            "table: index tail bytes set"
        );
        Ok(())
    }

    /// Looks `key` up: `None` if the table has no record of it, `Some(None)`
    /// for a tombstone, `Some(Some(v))` for a value.
    pub fn get<V: LsmValue>(&self, key: u64, f: &mut dyn BlockFetch) -> Result<Option<Option<V>>> {
        if key < self.min_key || key > self.max_key {
            return Ok(None);
        }
        if !self.may_contain(key, f)? {
            return Ok(None);
        }
        let Some(at) = self.locate(key, f)? else {
            return Ok(None);
        };
        let blk = self.load_data(&at, 1, f)?;
        let i = self.search(blk, 0, key)?;
        self.value_at(blk, i, key)
    }

    /// Looks up every key of `keys` (strictly ascending) in one pass and
    /// calls `found(i, v)` for each `keys[i]` the table has a record of
    /// (`v` as in [`Self::get`]: `None` for a tombstone).
    ///
    /// What it saves over a `get` per key: a key that falls into the data
    /// block the previous key needed is searched in that block (a copy of
    /// it), with no bloom probe, index search or fetch of its own; the
    /// search starts where the previous key's ended. Every block is checked
    /// as by `get`, so a lookup here fails exactly where a `get` would.
    pub fn get_sorted<V: LsmValue>(
        &self,
        keys: &[u64],
        f: &mut dyn BlockFetch,
        found: &mut dyn FnMut(usize, Option<V>) -> Result<()>,
    ) -> Result<()> {
        // The data block in hand: a copy, the last key its index entry
        // names, and where the previous search in it ended.
        let mut held: Vec<u8> = Vec::new();
        let mut held_last: Option<u64> = None;
        let mut from = 0usize;
        let mut run_end: Option<Option<u64>> = None;
        for (i, &key) in keys.iter().enumerate() {
            if key < self.min_key {
                continue;
            }
            if key > self.max_key {
                break;
            }
            // Keys ascend, and the held block was loaded for a smaller key
            // it spans: it spans this one too unless this one is past its end.
            if held_last.is_none_or(|last| key > last) {
                if !self.may_contain(key, f)? {
                    continue;
                }
                let Some(at) = self.locate(key, f)? else {
                    break;
                };
                // The last data block the keys need (dense keys only),
                // found at the first load.
                let end = match run_end {
                    Some(e) => e,
                    None => {
                        let e = self.run_end(&at, keys.get(i..).unwrap_or_default(), f)?;
                        run_end = Some(e);
                        e
                    }
                };
                let need = end.map_or(1, |e| {
                    e.saturating_sub(at.block).saturating_add(1).min(MAX_RUN)
                });
                let blk = self.load_data(&at, need, f)?;
                if held.is_empty() {
                    held = crate::fallible::filled_vec(BLOCK_SIZE, 0u8)?;
                }
                held.get_mut(..blk.len())
                    .ok_or(Error::new(ErrorKind::Corrupted, "table: data block size"))?
                    .copy_from_slice(blk);
                held_last = Some(at.last);
                from = 0;
            }
            from = self.search(&held, from, key)?;
            if let Some(v) = self.value_at(&held, from, key)? {
                found(i, v)?;
            }
        }
        Ok(())
    }

    /// Whether the keys of `keys` (ascending) in the table's range are far
    /// apart: fewer than every other key of their span (the rule of
    /// [`Self::run_end`]), so that they need scattered data blocks.
    pub fn keys_are_sparse(&self, keys: &[u64]) -> bool {
        let a = keys.partition_point(|&k| k < self.min_key);
        let b = keys.partition_point(|&k| k <= self.max_key);
        match (keys.get(a), b.checked_sub(1).and_then(|j| keys.get(j))) {
            (Some(&first), Some(&last)) if b > a => (last - first) / 2 >= (b - a) as u64,
            _ => false,
        }
    }

    /// The data blocks (ascending, each once) a [`Self::get_sorted`] of
    /// `keys` (ascending) fetches, into `out`, when the keys in the
    /// table's range are far apart ([`Self::keys_are_sparse`]): those it
    /// reads one at a time, each a device request waited for, unless they
    /// are read before in one batch (`LsmTree::get_sorted` does). Dense
    /// keys add nothing (their lookup reads runs of blocks ahead). Probes
    /// the bloom filter and searches the index of each key, as the lookup
    /// does, through `f`.
    pub fn data_blocks_for(
        &self,
        keys: &[u64],
        f: &mut dyn BlockFetch,
        out: &mut Vec<u64>,
    ) -> Result<()> {
        if !self.keys_are_sparse(keys) {
            return Ok(());
        }
        let a = keys.partition_point(|&k| k < self.min_key);
        let b = keys.partition_point(|&k| k <= self.max_key);
        let mut last: Option<u64> = None;
        for &key in keys.get(a..b).unwrap_or_default() {
            // A key inside the last block named needs no other.
            if last.is_some_and(|l| key <= l) || !self.may_contain(key, f)? {
                continue;
            }
            // None: past the last data block, and so is every later key.
            let Some(at) = self.locate(key, f)? else {
                break;
            };
            last = Some(at.last);
            if out.last() != Some(&at.block) {
                out.try_reserve(1)?;
                out.push(at.block);
            }
        }
        Ok(())
    }

    /// Calls `visit(key, v)` for every record of the table with a key in
    /// `from..to`, in key order (`v` as in [`Self::get`]: `None` for a
    /// tombstone).
    ///
    /// No bloom probe: the range's first data block comes from the index,
    /// and each next one from the index entry after the last key of the
    /// previous. An empty range costs one data block when it falls inside
    /// the table's keys, nothing when it does not. Every block is checked
    /// as by `get`.
    pub fn range<V: LsmValue>(
        &self,
        from: u64,
        to: u64,
        f: &mut dyn BlockFetch,
        visit: &mut dyn FnMut(u64, Option<V>) -> Result<()>,
    ) -> Result<()> {
        if from >= to || !self.overlaps(from, to - 1) {
            return Ok(());
        }
        let mut at = self.locate(from.max(self.min_key), f)?;
        // The range's last data block: every block up to it is read.
        let end = match &at {
            Some(d) => self.block_of(d, (to - 1).min(self.max_key), f)?,
            None => 0,
        };
        while let Some(d) = at {
            let need = end.saturating_sub(d.block).saturating_add(1).min(MAX_RUN);
            let blk = self.load_data(&d, need, f)?;
            let mut i = self.search(blk, 0, from)?;
            let cnt = Self::data_count(blk)?;
            while i < cnt {
                let (k, flag, val) = record_at(blk, i, self.value_size)?;
                if k >= to {
                    return Ok(());
                }
                let v = if flag == FLAG_VALUE {
                    Some(V::parse(val)?)
                } else {
                    None
                };
                visit(k, v)?;
                i += 1;
            }
            // The next block starts after this one's last key.
            at = match d.last.checked_add(1) {
                Some(next) if next < to => self.locate(next, f)?,
                _ => None,
            };
        }
        Ok(())
    }

    /// The data block that would hold `last` (the last one if `last` is
    /// past the table's keys).
    fn block_of(&self, at: &DataAt, last: u64, f: &mut dyn BlockFetch) -> Result<u64> {
        if last <= at.last {
            return Ok(at.block);
        }
        Ok(match self.locate(last, f)? {
            Some(e) => e.block,
            None => u64::from(self.n_data).saturating_sub(1),
        })
    }

    /// The last data block a lookup of `keys` (ascending; the first one in
    /// `at`) reads, when the keys are dense (at least every other key of
    /// their span asked for: the blocks of a run of LBAs, each needed);
    /// `None` when they are not (keys far apart may need few of the blocks
    /// between them, and their bloom probes may skip the table).
    fn run_end(&self, at: &DataAt, keys: &[u64], f: &mut dyn BlockFetch) -> Result<Option<u64>> {
        let cnt = keys.partition_point(|&k| k <= self.max_key);
        let (Some(&first), Some(&last)) =
            (keys.first(), cnt.checked_sub(1).and_then(|j| keys.get(j)))
        else {
            return Ok(None);
        };
        if last <= at.last || (last - first) / 2 >= cnt as u64 {
            return Ok(None);
        }
        self.block_of(at, last, f).map(Some)
    }

    /// Whether the bloom filter lets `key` through (always when the fetch
    /// skips filters or the table has none).
    fn may_contain(&self, key: u64, f: &mut dyn BlockFetch) -> Result<bool> {
        if self.n_bloom == 0 || !f.use_bloom() {
            return Ok(true);
        }
        let b = bloom::block_of(key, self.n_bloom);
        let pos = u64::from(self.n_data) + u64::from(self.n_index) + u64::from(b);
        let (vs, seq, k) = (self.value_size, self.seq, self.bloom_k);
        let blk = f.fetch(pos, BlockKind::Bloom, &|blk| {
            bloom::check_block(blk, vs, seq, k)
        })?;
        if bloom::may_contain(blk, key, self.n_bloom, self.bloom_k) {
            Ok(true)
        } else {
            f.bloom_negative();
            Ok(false)
        }
    }

    /// The data block that would hold `key` (`None`: past the last one),
    /// from the index.
    fn locate(&self, key: u64, f: &mut dyn BlockFetch) -> Result<Option<DataAt>> {
        let j = self.index_dir.partition_point(|&k| k < key);
        if j >= self.index_dir.len() {
            return Ok(None);
        }
        let pos = u64::from(self.n_data) + j as u64;
        let blk = f.fetch(pos, BlockKind::Index, &|blk| self.check_index(j, blk))?;
        let cnt = usize::from(codec::get_u16(blk, 6)?);
        let (mut lo, mut hi) = (0usize, cnt);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if get_u64(blk, HEADER_LEN + 8 * mid)? < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        ensure!(lo < cnt, Corrupted, "table: index search");
        let last = get_u64(blk, HEADER_LEN + 8 * lo)?;
        let prev = if lo > 0 {
            Some(get_u64(blk, HEADER_LEN + 8 * (lo - 1))?)
        } else {
            j.checked_sub(1)
                .and_then(|p| self.index_dir.get(p).copied())
        };
        let d = j * INDEX_ENTRIES + lo;
        ensure!(
            d < self.n_data as usize,
            Corrupted,
            "table: index past data"
        );
        Ok(Some(DataAt {
            block: d as u64,
            prev,
            last,
        }))
    }

    /// Fetches the data block `at` names. It must span exactly
    /// (prev entry, entry]: a misrouted lookup is an error, never a silent
    /// miss.
    ///
    /// `need`: the data blocks from `at` the lookup will read now (see
    /// [`BlockFetch::fetch_data_run`]).
    fn load_data<'f>(&self, at: &DataAt, need: u64, f: &'f mut dyn BlockFetch) -> Result<&'f [u8]> {
        let blk = f.fetch_data_run(at.block, u64::from(self.n_data), need, &|blk| {
            self.check_data(blk)
        })?;
        let cnt = Self::data_count(blk)?;
        let (first, _, _) = record_at(blk, 0, self.value_size)?;
        let (last, _, _) = record_at(blk, cnt.saturating_sub(1), self.value_size)?;
        ensure!(
            last == at.last && at.prev.is_none_or(|p| first > p),
            Corrupted,
            "table: data block differs from the index"
        );
        Ok(blk)
    }

    /// The first record of data block `blk` at or after `from` whose key
    /// is at least `key` (the record count if none is).
    fn search(&self, blk: &[u8], from: usize, key: u64) -> Result<usize> {
        let (mut lo, mut hi) = (from, Self::data_count(blk)?);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if record_at(blk, mid, self.value_size)?.0 < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Record `i` of data block `blk` if it is `key`'s: `Some(None)` for a
    /// tombstone, `Some(Some(v))` for a value.
    fn value_at<V: LsmValue>(&self, blk: &[u8], i: usize, key: u64) -> Result<Option<Option<V>>> {
        if i >= Self::data_count(blk)? {
            return Ok(None);
        }
        let (k, flag, val) = record_at(blk, i, self.value_size)?;
        if k != key {
            return Ok(None);
        }
        if flag == FLAG_VALUE {
            Ok(Some(Some(V::parse(val)?)))
        } else {
            Ok(Some(None))
        }
    }
}

/// Where a key's data block is: its number, and the last keys of the block
/// before it (if any) and of itself, as the index names them.
struct DataAt {
    block: u64,
    prev: Option<u64>,
    last: u64,
}

#[cfg(any(test, feature = "fuzzing"))]
fn get_u16_pair_zero(block: &[u8]) -> Result<bool> {
    Ok(codec::get_u16(block, 62)? == 0)
}

/// Writes a table block by block, through a sink that appends each block to
/// the table's log. Memory: one data block, the index (8 bytes per data
/// block) and the bloom filter (sized for `expected` records).
pub struct TableBuilder {
    value_size: usize,
    seq: u64,
    level: u8,
    block: Vec<u8>,
    count: usize,
    last_key: Option<u64>,
    min_key: u64,
    index: Vec<u64>,
    bloom: BloomBuilder,
    records: u64,
    tombstones: u64,
}

impl TableBuilder {
    /// A builder of table `seq` at `level` for about `expected` records.
    pub fn new(
        value_size: usize,
        seq: u64,
        level: u8,
        expected: u64,
        bloom_bits: u32,
    ) -> Result<Self> {
        ensure!(
            value_size <= format::MAX_VALUE_SIZE,
            InvalidArgument,
            "value too large"
        );
        let nb = bloom::blocks_for(expected, bloom_bits);
        let mut block = Vec::new();
        block.try_reserve_exact(BLOCK_SIZE)?;
        block.resize(BLOCK_SIZE, 0);
        Ok(Self {
            value_size,
            seq,
            level,
            block,
            count: 0,
            last_key: None,
            min_key: 0,
            index: Vec::new(),
            bloom: BloomBuilder::new(nb, bloom::probes(bloom_bits))?,
            records: 0,
            tombstones: 0,
        })
    }

    /// Records added so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Bloom filter blocks the table will have (sized at creation).
    pub fn bloom_blocks(&self) -> u64 {
        u64::from(self.bloom.nblocks())
    }

    /// Adds a record; keys must come strictly ascending.
    pub fn add<V: LsmValue>(
        &mut self,
        key: u64,
        val: Option<&V>,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        if let Some(last) = self.last_key {
            ensure!(key > last, InvalidArgument, "table: keys not ascending");
        } else {
            self.min_key = key;
        }
        if self.count == records_per_block(self.value_size) {
            self.flush_data(sink)?;
        }
        let enc = val.map(|v| move |o: &mut [u8]| v.emit(o));
        format::emit_record(
            &mut self.block,
            self.count,
            self.value_size,
            key,
            enc.as_ref().map(|e| e as &dyn Fn(&mut [u8])),
        )?;
        self.count += 1;
        self.records += 1;
        if val.is_none() {
            self.tombstones += 1;
        }
        self.last_key = Some(key);
        self.bloom.add(key);
        Ok(())
    }

    fn flush_data(&mut self, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        ensure!(
            self.index.len() < MAX_DATA_BLOCKS,
            InvalidArgument,
            "table: too many data blocks"
        );
        Header {
            kind: BlockKind::Data,
            count: self.count as u16,
            value_size: self.value_size as u16,
            owner: self.seq,
        }
        .emit(&mut self.block)?;
        sink(&self.block)?;
        self.index.try_reserve(1)?;
        let last = self
            .last_key
            .ok_or(Error::new(ErrorKind::InvalidState, "table: no last key"))?;
        self.index.push(last);
        self.block.fill(0);
        self.count = 0;
        Ok(())
    }

    /// Writes the rest of the table but its footer (last data block, index,
    /// filter). `None` if no record was added (and nothing was written). The
    /// caller appends the footer ([`TableInfo::emit_footer`]) when the table
    /// is to become part of the tree: a log without one is an orphan.
    pub fn finish(
        mut self,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<Option<TableInfo>> {
        if self.records == 0 {
            return Ok(None);
        }
        self.flush_data(sink)?;
        let mut dir = Vec::new();
        let mut blk = Vec::new();
        blk.try_reserve_exact(BLOCK_SIZE)?;
        blk.resize(BLOCK_SIZE, 0);
        for chunk in self.index.chunks(INDEX_ENTRIES) {
            blk.fill(0);
            Header {
                kind: BlockKind::Index,
                count: chunk.len() as u16,
                value_size: self.value_size as u16,
                owner: self.seq,
            }
            .emit(&mut blk)?;
            for (i, k) in chunk.iter().enumerate() {
                put(&mut blk, HEADER_LEN + 8 * i, &k.to_le_bytes())?;
            }
            sink(&blk)?;
            dir.try_reserve(1)?;
            dir.push(*chunk.last().unwrap_or(&0));
        }
        for i in 0..self.bloom.nblocks() {
            self.bloom
                .emit_block(i, self.value_size as u16, self.seq, &mut blk)?;
            sink(&blk)?;
        }
        let info = TableInfo {
            seq: self.seq,
            level: self.level,
            records: self.records,
            tombstones: self.tombstones,
            min_key: self.min_key,
            max_key: self
                .last_key
                .ok_or(Error::new(ErrorKind::InvalidState, "table: no last key"))?,
            n_data: self.index.len() as u32,
            n_index: dir.len() as u32,
            n_bloom: self.bloom.nblocks(),
            bloom_k: self.bloom.k(),
            index_dir: dir,
            value_size: self.value_size,
        };
        if info.n_index as usize > MAX_INDEX_BLOCKS {
            bail!(InvalidArgument, "table: too many index blocks");
        }
        Ok(Some(info))
    }
}

/// Data blocks a [`TableCursor`] reads in one request (128 KiB): a merge
/// reads its input tables front to back, and one device request per 4 KiB
/// block made compactions wait on the device block by block.
pub const CURSOR_READ_BLOCKS: u32 = 32;

/// A reader of a table's records in key order (the input of a merge). It
/// reads [`CURSOR_READ_BLOCKS`] data blocks at a time and checks each
/// block when it reaches it.
pub struct TableCursor {
    /// The next data block to read from the table.
    block: u32,
    /// Blocks in `buf`, and the one being read (`at < have`).
    have: usize,
    at: usize,
    rec: usize,
    count: usize,
    /// Page-aligned, so a device opened with `O_DIRECT` reads into it as
    /// it is (no bounce copy).
    buf: AlignedBuf,
}

impl TableCursor {
    /// A cursor before the first record. Its buffer is allocated at the
    /// first read, sized for the table.
    pub fn new() -> Result<Self> {
        Ok(Self {
            block: 0,
            have: 0,
            at: 0,
            rec: 0,
            count: 0,
            buf: AlignedBuf::new(),
        })
    }

    /// Moves to the start of another table.
    pub fn reset(&mut self) {
        self.block = 0;
        self.have = 0;
        self.at = 0;
        self.rec = 0;
        self.count = 0;
    }

    /// The next record of `info` (read from `src`), or `None` at its end.
    pub fn next<V: LsmValue>(
        &mut self,
        info: &TableInfo,
        src: &dyn BlockSource,
    ) -> Result<Option<(u64, Option<V>)>> {
        if self.rec >= self.count {
            if self.at + 1 < self.have {
                self.at += 1;
            } else {
                if self.block >= info.n_data {
                    return Ok(None);
                }
                let mut n = (info.n_data - self.block).min(CURSOR_READ_BLOCKS) as usize;
                if self.buf.len() < n * BLOCK_SIZE && self.buf.resize(n * BLOCK_SIZE).is_err() {
                    // No room for a batch: one block at a time, as before
                    // (what the buffer holds already).
                    n = (self.buf.len() / BLOCK_SIZE).clamp(1, n);
                    if self.buf.len() < BLOCK_SIZE {
                        self.buf.resize(BLOCK_SIZE)?;
                    }
                }
                let len = n * BLOCK_SIZE;
                let buf = self
                    .buf
                    .as_mut_slice()
                    .get_mut(..len)
                    .ok_or(Error::new(ErrorKind::InvalidState, "table cursor buffer"))?;
                src.read_blocks(u64::from(self.block), buf)?;
                self.block += n as u32;
                self.have = n;
                self.at = 0;
            }
            let blk = self.current()?;
            info.check_data(blk)?;
            self.count = TableInfo::data_count(blk)?;
            self.rec = 0;
        }
        let (k, flag, val) = record_at(self.current()?, self.rec, info.value_size)?;
        let v = if flag == FLAG_VALUE {
            Some(V::parse(val)?)
        } else {
            None
        };
        self.rec += 1;
        Ok(Some((k, v)))
    }

    /// The data block being read.
    fn current(&self) -> Result<&[u8]> {
        let o = self.at * BLOCK_SIZE;
        self.buf
            .as_slice()
            .get(o..o + BLOCK_SIZE)
            .ok_or(Error::new(ErrorKind::InvalidState, "table cursor block"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::lsm::tests::TestVal;

    pub fn build(
        recs: &[(u64, Option<TestVal>)],
        seq: u64,
        bloom_bits: u32,
    ) -> (Vec<Vec<u8>>, Option<TableInfo>) {
        build_of(recs, seq, bloom_bits)
    }

    fn build_of<V: LsmValue>(
        recs: &[(u64, Option<V>)],
        seq: u64,
        bloom_bits: u32,
    ) -> (Vec<Vec<u8>>, Option<TableInfo>) {
        let mut blocks = Vec::new();
        let mut b = TableBuilder::new(V::SIZE, seq, 1, recs.len() as u64, bloom_bits).unwrap();
        let mut sink = |blk: &[u8]| {
            blocks.push(blk.to_vec());
            Ok(())
        };
        for (k, v) in recs {
            b.add(*k, v.as_ref(), &mut sink).unwrap();
        }
        let info = b.finish(&mut sink).unwrap();
        if let Some(info) = &info {
            let mut f = vec![0u8; BLOCK_SIZE];
            info.emit_footer(&mut f).unwrap();
            blocks.push(f);
        }
        (blocks, info)
    }

    #[allow(clippy::ptr_arg)]
    fn lookup<V: LsmValue>(
        blocks: &Vec<Vec<u8>>,
        info: &TableInfo,
        key: u64,
    ) -> Result<Option<Option<V>>> {
        let mut f = DirectFetch {
            src: blocks,
            buf: Vec::new(),
        };
        info.get(key, &mut f)
    }

    /// `get_sorted` of `keys`, as one answer per key.
    #[allow(clippy::ptr_arg)]
    fn lookup_sorted<V: LsmValue>(
        blocks: &Vec<Vec<u8>>,
        info: &TableInfo,
        keys: &[u64],
    ) -> Result<Vec<Option<Option<V>>>> {
        let mut f = DirectFetch {
            src: blocks,
            buf: Vec::new(),
        };
        let mut out: Vec<Option<Option<V>>> = keys.iter().map(|_| None).collect();
        let mut last = None;
        info.get_sorted::<V>(keys, &mut f, &mut |i, v| {
            assert!(last.is_none_or(|l| i > l), "found out of order");
            last = Some(i);
            out[i] = Some(v);
            Ok(())
        })?;
        Ok(out)
    }

    /// `get_sorted` answers every key of `keys` as `get` does.
    #[allow(clippy::ptr_arg)]
    fn sorted_matches_get<V: LsmValue + PartialEq + core::fmt::Debug>(
        blocks: &Vec<Vec<u8>>,
        info: &TableInfo,
        keys: &[u64],
    ) {
        let got = lookup_sorted::<V>(blocks, info, keys).unwrap();
        for (k, g) in keys.iter().zip(got) {
            assert_eq!(g, lookup::<V>(blocks, info, *k).unwrap(), "key {k}");
        }
    }

    /// `range(from, to)` as a list of (key, record).
    #[allow(clippy::ptr_arg)]
    fn scan<V: LsmValue>(
        blocks: &Vec<Vec<u8>>,
        info: &TableInfo,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, Option<V>)>> {
        let mut f = DirectFetch {
            src: blocks,
            buf: Vec::new(),
        };
        let mut out = Vec::new();
        info.range::<V>(from, to, &mut f, &mut |k, v| {
            out.push((k, v));
            Ok(())
        })?;
        Ok(out)
    }

    /// `range(from, to)` gives exactly the records of `recs` in `from..to`.
    fn range_matches<V: LsmValue + PartialEq + core::fmt::Debug + Clone>(
        blocks: &Vec<Vec<u8>>,
        info: &TableInfo,
        recs: &[(u64, Option<V>)],
        from: u64,
        to: u64,
    ) {
        let want: Vec<_> = recs
            .iter()
            .filter(|(k, _)| (from..to).contains(k))
            .cloned()
            .collect();
        assert_eq!(
            scan::<V>(blocks, info, from, to).unwrap(),
            want,
            "range {from}..{to}"
        );
    }

    /// Keys far apart keep their bloom probes in `get_sorted`: an absent
    /// key costs a probe, not a data block (the old versions of a flush of
    /// random writes are such keys).
    #[test]
    fn get_sorted_probes_blooms_for_scattered_keys() {
        struct Counting<'a> {
            inner: DirectFetch<'a>,
            bloom: u32,
            data: u32,
        }
        impl BlockFetch for Counting<'_> {
            fn fetch(
                &mut self,
                pos: u64,
                kind: BlockKind,
                check: &dyn Fn(&[u8]) -> Result<()>,
            ) -> Result<&[u8]> {
                match kind {
                    BlockKind::Bloom => self.bloom += 1,
                    BlockKind::Data => self.data += 1,
                    _ => {}
                }
                self.inner.fetch(pos, kind, check)
            }
        }
        let recs: Vec<_> = (0..3000u64).map(|i| (i * 4, Some(TestVal(i)))).collect();
        let (blocks, info) = build(&recs, 3, 10);
        let info = info.unwrap();
        let mut f = Counting {
            inner: DirectFetch {
                src: &blocks,
                buf: Vec::new(),
            },
            bloom: 0,
            data: 0,
        };
        // 40 absent keys, 300 apart: a probe each, a data block only for
        // the filter's false positives.
        let scattered: Vec<u64> = (0..40u64).map(|i| i * 300 + 1).collect();
        let mut hits = 0;
        info.get_sorted::<TestVal>(&scattered, &mut f, &mut |_, _| {
            hits += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((f.bloom, hits), (40, 0));
        assert!(f.data <= 4, "{} data blocks for absent keys", f.data);
    }

    /// A large value: few records per block, so tables get several index
    /// blocks cheaply.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Big(u64);
    impl LsmValue for Big {
        const SIZE: usize = 400;
        fn emit(&self, out: &mut [u8]) {
            out[..8].copy_from_slice(&self.0.to_le_bytes());
            out[392..].copy_from_slice(&self.0.to_le_bytes());
        }
        fn parse(b: &[u8]) -> Result<Self> {
            let v = u64::from_le_bytes(b[..8].try_into().unwrap());
            ensure!(b[392..] == v.to_le_bytes(), Corrupted, "big");
            Ok(Self(v))
        }
    }

    fn round_trip<V: LsmValue + PartialEq + core::fmt::Debug>(
        n: u64,
        bits: u32,
        val: impl Fn(u64) -> V,
        stride: usize,
    ) {
        let recs: Vec<_> = (0..n)
            .map(|i| {
                let v = if i % 5 == 3 { None } else { Some(val(i)) };
                (i * 3 + 1, v)
            })
            .collect();
        let (blocks, info) = build_of(&recs, 42, bits);
        let info = info.unwrap();
        assert_eq!(info.total_blocks(), blocks.len() as u64);
        let parsed =
            TableInfo::parse_footer(blocks.last().unwrap(), V::SIZE, blocks.len() as u64).unwrap();
        assert_eq!(parsed, info);
        assert_eq!(info.records, n);
        for (k, v) in recs.iter().step_by(stride) {
            assert_eq!(
                lookup::<V>(&blocks, &info, *k).unwrap(),
                Some(v.clone()),
                "key {k}"
            );
            assert_eq!(lookup::<V>(&blocks, &info, k + 1).unwrap(), None);
        }
        assert_eq!(lookup::<V>(&blocks, &info, 0).unwrap(), None);
        assert_eq!(lookup::<V>(&blocks, &info, u64::MAX).unwrap(), None);
        // In one pass: every key from below the first to past the last,
        // every `stride`-th record's key, and a few far apart.
        let dense: Vec<u64> = (0..n * 3 + 3).collect();
        sorted_matches_get::<V>(&blocks, &info, &dense);
        let sparse: Vec<u64> = recs.iter().step_by(stride).map(|(k, _)| *k).collect();
        sorted_matches_get::<V>(&blocks, &info, &sparse);
        sorted_matches_get::<V>(&blocks, &info, &[0, n, 2 * n, u64::MAX]);
        sorted_matches_get::<V>(&blocks, &info, &[]);
        // Ranges: the whole table and past both ends, empty ones, one key,
        // and windows that start and end inside and between data blocks.
        let end = n * 3 + 3;
        for (from, to) in [(0, u64::MAX), (0, 1), (1, 2), (2, 4), (5, 5), (7, 3)] {
            range_matches::<V>(&blocks, &info, &recs, from, to);
        }
        for w in [1, 2, 50, 97, 700] {
            let mut from = 0;
            while from < end {
                range_matches::<V>(&blocks, &info, &recs, from, from + w);
                from += w * 5 / 3 + 1;
            }
        }
        range_matches::<V>(&blocks, &info, &recs, end, u64::MAX);
        let mut c = TableCursor::new().unwrap();
        let mut all = Vec::new();
        while let Some(r) = c.next::<V>(&info, &blocks).unwrap() {
            all.push(r);
        }
        assert_eq!(all, recs);
    }

    #[test]
    fn build_and_read_back() {
        for (n, bits) in [(1u64, 10), (7, 0), (300, 10), (3000, 8)] {
            round_trip(n, bits, TestVal, 1);
        }
    }

    #[test]
    fn several_index_blocks() {
        // 9 records per block: 6000 records = 667 data blocks = 2 index blocks.
        round_trip(6000, 10, Big, 7);
        let recs: Vec<_> = (0..6000u64).map(|i| (i, Some(Big(i)))).collect();
        let (_, info) = build_of(&recs, 1, 10);
        assert_eq!(info.unwrap().n_index, 2);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]
        /// Random record sets: every key reads back, absent keys read as
        /// absent, and the cursor yields exactly the records.
        #[test]
        fn prop_tables(
            recs in proptest::collection::btree_map(0..5000u64, proptest::option::of(0..1000u64), 1..700),
            bits in 0..16u32,
            probes in proptest::collection::vec(0..5100u64, 50),
        ) {
            let recs: Vec<(u64, Option<TestVal>)> =
                recs.into_iter().map(|(k, v)| (k, v.map(TestVal))).collect();
            let (blocks, info) = build(&recs, 5, bits);
            let info = info.unwrap();
            let map: alloc::collections::BTreeMap<u64, Option<TestVal>> =
                recs.iter().cloned().collect();
            for &k in &probes {
                proptest::prop_assert_eq!(lookup::<TestVal>(&blocks, &info, k).unwrap(), map.get(&k).cloned());
            }
            let mut sorted = probes.clone();
            sorted.sort_unstable();
            sorted.dedup();
            let got = lookup_sorted::<TestVal>(&blocks, &info, &sorted).unwrap();
            let want: Vec<_> = sorted.iter().map(|k| map.get(k).cloned()).collect();
            proptest::prop_assert_eq!(got, want);
            for w in probes.windows(2) {
                let (from, to) = (w[0].min(w[1]), w[0].max(w[1]));
                let want: Vec<_> = map.range(from..to).map(|(k, v)| (*k, *v)).collect();
                proptest::prop_assert_eq!(scan::<TestVal>(&blocks, &info, from, to).unwrap(), want);
            }
            let mut c = TableCursor::new().unwrap();
            let mut all = Vec::new();
            while let Some(r) = c.next::<TestVal>(&info, &blocks).unwrap() {
                all.push(r);
            }
            proptest::prop_assert_eq!(all, recs);
        }
    }

    /// A merge reads its input table in page-aligned requests of up to
    /// [`CURSOR_READ_BLOCKS`] blocks (it read one request per block
    /// before), yields every record once, and a damaged data block in the
    /// middle of a batch still fails when the cursor reaches it.
    #[test]
    fn cursor_reads_data_blocks_in_batches() {
        struct Requests<'a>(&'a Vec<Vec<u8>>, core::cell::Cell<u32>);
        impl BlockSource for Requests<'_> {
            fn read_block(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
                self.1.set(self.1.get() + 1);
                self.0.read_block(pos, buf)
            }
            fn read_blocks(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
                self.1.set(self.1.get() + 1);
                // Page-aligned: an `O_DIRECT` file reads into it with no
                // bounce copy.
                assert!(crate::bio::is_page_aligned(buf), "unaligned batch");
                for (i, b) in buf.chunks_exact_mut(BLOCK_SIZE).enumerate() {
                    self.0.read_block(pos + i as u64, b)?;
                }
                Ok(())
            }
        }
        // 8-byte values, 240 records per block: 20000 records = 84 blocks.
        let recs: Vec<_> = (0..20_000u64).map(|i| (i * 3, Some(TestVal(i)))).collect();
        let (mut blocks, info) = build(&recs, 1, 10);
        let info = info.unwrap();
        assert!(info.n_data > 2 * CURSOR_READ_BLOCKS, "{info:?}");
        let src = Requests(&blocks, core::cell::Cell::new(0));
        let mut c = TableCursor::new().unwrap();
        let mut all = Vec::new();
        while let Some(r) = c.next::<TestVal>(&info, &src).unwrap() {
            all.push(r);
        }
        assert_eq!(all, recs);
        assert_eq!(src.1.get(), info.n_data.div_ceil(CURSOR_READ_BLOCKS));
        // The same cursor, reset, reads the table again from its start.
        c.reset();
        assert_eq!(
            c.next::<TestVal>(&info, &src).unwrap(),
            recs.first().cloned()
        );
        // A flipped byte in the value size of a data block inside the second
        // batch: every record before that block comes out, then an error.
        let bad = CURSOR_READ_BLOCKS as usize + 3;
        blocks[bad][8] ^= 1;
        let mut c = TableCursor::new().unwrap();
        let mut got = 0usize;
        let err = loop {
            match c.next::<TestVal>(&info, &blocks) {
                Ok(Some(_)) => got += 1,
                Ok(None) => panic!("the damaged block was not noticed"),
                Err(e) => break e,
            }
        };
        let per_block = recs.len().div_ceil(info.n_data as usize);
        assert!(
            got >= bad * (per_block - 1) && got <= bad * per_block,
            "{got}"
        );
        assert_eq!(err.kind(), ErrorKind::Corrupted, "{err:?}");
    }

    #[test]
    fn empty_builder_writes_nothing() {
        let (blocks, info) = build(&[], 1, 10);
        assert!(blocks.is_empty());
        assert!(info.is_none());
    }

    #[test]
    fn keys_must_ascend() {
        let mut b = TableBuilder::new(TestVal::SIZE, 1, 0, 2, 10).unwrap();
        let mut sink = |_: &[u8]| Ok(());
        b.add(5, Some(&TestVal(1)), &mut sink).unwrap();
        assert!(b.add(5, Some(&TestVal(1)), &mut sink).is_err());
        assert!(b.add(4, Some(&TestVal(1)), &mut sink).is_err());
    }

    /// Flipping any byte of any block of a table either makes the lookup of
    /// an affected key fail, or (inside the value bytes or a bloom bit, which
    /// only the store's MAC can catch) changes nothing structural.
    #[test]
    fn flipped_structure_is_rejected() {
        let recs: Vec<_> = (0..2000u64).map(|i| (i * 2, Some(TestVal(i)))).collect();
        let (blocks, info) = build(&recs, 9, 10);
        let info = info.unwrap();
        let n = blocks.len();
        // Footer: every flip is rejected or changes the parsed footer.
        let footer = &blocks[n - 1];
        for i in 0..BLOCK_SIZE {
            let mut f = footer.clone();
            f[i] ^= 1;
            if let Ok(p) = TableInfo::parse_footer(&f, TestVal::SIZE, n as u64) {
                assert_ne!(p, info, "footer flip at {i}");
            }
        }
        // Header and record-structure bytes of data/index blocks.
        for b in 0..n - 1 {
            for i in (0..HEADER_LEN).chain([HEADER_LEN + 8, BLOCK_SIZE - 1]) {
                let mut bl = blocks.clone();
                bl[b][i] ^= 0x10;
                let kind = Header::parse(&blocks[b]).unwrap().kind;
                if kind == BlockKind::Bloom && i >= HEADER_LEN {
                    continue; // filter bits: a flip gives a false positive/negative only
                }
                // Look up a key that reads this block.
                let key = if (b as u32) < info.n_data {
                    let (k, _, _) = record_at(&blocks[b], 0, TestVal::SIZE).unwrap();
                    k
                } else {
                    recs[(b * 37) % recs.len()].0
                };
                let mut any_err = false;
                for k in [key, recs[0].0, recs[recs.len() - 1].0] {
                    match lookup::<TestVal>(&bl, &info, k) {
                        Err(_) => any_err = true,
                        Ok(r) => assert_eq!(r, Some(Some(TestVal(k / 2))), "block {b} byte {i}"),
                    }
                }
                assert!(any_err, "block {b} byte {i} ({kind:?}) unnoticed");
                // In one pass: an error, or the right answers.
                let mut ks = [key, recs[0].0, recs[recs.len() - 1].0];
                ks.sort_unstable();
                let ks: Vec<u64> = ks.iter().copied().fold(Vec::new(), |mut v, k| {
                    if v.last() != Some(&k) {
                        v.push(k);
                    }
                    v
                });
                match lookup_sorted::<TestVal>(&bl, &info, &ks) {
                    Err(_) => {}
                    Ok(r) => {
                        let want: Vec<_> = ks.iter().map(|k| Some(Some(TestVal(k / 2)))).collect();
                        assert_eq!(r, want, "get_sorted: block {b} byte {i}");
                    }
                }
                // A range over the damaged block and its neighbours: an
                // error, or exactly the records.
                let (lo, hi) = (key.saturating_sub(600), key + 600);
                match scan::<TestVal>(&bl, &info, lo, hi) {
                    Err(_) => {}
                    Ok(r) => {
                        let want: Vec<_> = recs
                            .iter()
                            .filter(|(k, _)| (lo..hi).contains(k))
                            .cloned()
                            .collect();
                        assert_eq!(r, want, "range: block {b} byte {i}");
                    }
                }
            }
        }
    }
}
