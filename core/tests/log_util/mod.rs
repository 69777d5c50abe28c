//! Shared helpers of the log store tests: a model of the store's state, a
//! harness that drives a store and the model together, and a recording
//! device for crash enumeration.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use mlsdisk_core::bio::{BlockRange, BlockSet, MemDisk, BLOCK_SIZE};
use mlsdisk_core::log::{LogId, LogStoreConfig, StoreRoot, TxLogStore};
use mlsdisk_core::platform::StdCrypto;
use mlsdisk_core::{CryptoRef, ErrorKind, Result};

pub const KEY: &[u8] = &[0x42u8; 32];
pub const JOURNAL: u64 = 16;
pub const CHUNK_BLOCKS: u32 = 8;
pub const NCHUNKS: u64 = 24;
pub const DISK_BLOCKS: u64 = JOURNAL + CHUNK_BLOCKS as u64 * NCHUNKS;
pub const TAGS: u64 = 3;

pub fn long() -> bool {
    std::env::var("MLSDISK_LONG_TESTS").is_ok_and(|v| v == "1")
}

pub fn crypto() -> CryptoRef {
    Arc::new(StdCrypto)
}

pub fn cfg() -> LogStoreConfig {
    LogStoreConfig {
        chunk_blocks: CHUNK_BLOCKS,
        key_len: 16,
        snapshot_every: 3,
    }
}

pub fn regions<D: BlockSet + Clone>(d: &D) -> (BlockRange<D>, BlockRange<D>) {
    (
        BlockRange::new(d.clone(), 0, JOURNAL).unwrap(),
        BlockRange::new(d.clone(), JOURNAL, DISK_BLOCKS - JOURNAL).unwrap(),
    )
}

/// Chain blocks per journal key in the tests: small, so that the journal
/// moves to a new key (and the other half of its region) every few commits.
pub const ROTATE_AFTER: u64 = 10;

pub fn format<D: BlockSet + Clone>(d: &D) -> TxLogStore<D> {
    let (j, c) = regions(d);
    let mut s = TxLogStore::format(j, c, crypto(), KEY, cfg()).unwrap();
    s.set_rotate_after(ROTATE_AFTER);
    s
}

pub fn open<D: BlockSet + Clone>(d: &D, root: &StoreRoot) -> Result<TxLogStore<D>> {
    let (j, c) = regions(d);
    let mut s = TxLogStore::open(j, c, crypto(), KEY, root)?;
    s.set_rotate_after(ROTATE_AFTER);
    Ok(s)
}

/// The contents of block `i` of a log appended with `seed`.
pub fn content(seed: u32, i: usize) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_SIZE];
    let x = seed.wrapping_mul(2654435761).wrapping_add(i as u32 * 40503);
    for (j, c) in b.chunks_exact_mut(4).enumerate() {
        c.copy_from_slice(&(x ^ j as u32).to_le_bytes());
    }
    b
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MLog {
    pub tag: u64,
    /// Seed of each block.
    pub blocks: Vec<u32>,
    pub sealed: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    pub logs: BTreeMap<u64, MLog>,
    pub user_state: Vec<u8>,
}

/// A store and its model, driven together.
pub struct Harness<D: BlockSet + Clone> {
    pub store: TxLogStore<D>,
    pub committed: Model,
    pub tx: Option<Model>,
}

impl<D: BlockSet + Clone> Harness<D> {
    pub fn new(store: TxLogStore<D>, committed: Model) -> Self {
        Self {
            store,
            committed,
            tx: None,
        }
    }

    pub fn begin(&mut self) -> Result<()> {
        self.store.begin()?;
        self.tx = Some(self.committed.clone());
        Ok(())
    }

    pub fn create(&mut self, tag: u64) -> Result<LogId> {
        let id = self.store.create_log(tag)?;
        let m = self.tx.as_mut().unwrap();
        assert!(!m.logs.contains_key(&id.0), "log id reused");
        m.logs.insert(
            id.0,
            MLog {
                tag,
                ..MLog::default()
            },
        );
        Ok(id)
    }

    pub fn append(&mut self, id: LogId, seed: u32, n: usize) -> Result<()> {
        let start = self.tx.as_ref().unwrap().logs[&id.0].blocks.len();
        let mut buf = Vec::with_capacity(n * BLOCK_SIZE);
        for i in 0..n {
            buf.extend_from_slice(&content(seed, start + i));
        }
        self.store.append(id, &buf)?;
        let l = self.tx.as_mut().unwrap().logs.get_mut(&id.0).unwrap();
        for i in 0..n {
            // The seed of block start+i is `seed`; content() mixes in the index.
            let _ = i;
            l.blocks.push(seed);
        }
        Ok(())
    }

    pub fn seal(&mut self, id: LogId) -> Result<()> {
        self.store.seal(id)?;
        self.tx
            .as_mut()
            .unwrap()
            .logs
            .get_mut(&id.0)
            .unwrap()
            .sealed = true;
        Ok(())
    }

    pub fn delete(&mut self, id: LogId) -> Result<()> {
        self.store.delete_log(id)?;
        self.tx.as_mut().unwrap().logs.remove(&id.0);
        Ok(())
    }

    pub fn commit(&mut self, us: &[u8]) -> Result<()> {
        let mut m = self.tx.clone().unwrap();
        m.user_state = us.to_vec();
        self.store.commit(us)?;
        self.committed = m;
        self.tx = None;
        Ok(())
    }

    pub fn abort(&mut self) {
        self.store.abort();
        self.tx = None;
    }

    /// The model the store's reads should show now.
    pub fn view(&self) -> &Model {
        self.tx.as_ref().unwrap_or(&self.committed)
    }

    pub fn live_logs(&self) -> Vec<LogId> {
        self.view().logs.keys().map(|&i| LogId(i)).collect()
    }
}

/// Checks the store against the model. With `full`, reads every block;
/// otherwise the first and last of each log. Returns the first mismatch.
pub fn check<D: BlockSet>(
    s: &TxLogStore<D>,
    m: &Model,
    full: bool,
) -> std::result::Result<(), String> {
    if s.user_state() != m.user_state.as_slice() && !s.in_transaction() {
        return Err(format!(
            "user state {:?} != {:?}",
            s.user_state(),
            m.user_state
        ));
    }
    for tag in 0..TAGS {
        let want: Vec<LogId> = m
            .logs
            .iter()
            .filter(|(_, l)| l.tag == tag)
            .map(|(&i, _)| LogId(i))
            .collect();
        let got = s.logs_with_tag(tag);
        if got != want {
            return Err(format!("tag {tag}: logs {got:?} != {want:?}"));
        }
    }
    let mut buf = vec![0u8; BLOCK_SIZE];
    for (&id, l) in &m.logs {
        let id = LogId(id);
        let len = s.log_len(id).map_err(|e| format!("{e:?}"))?;
        if len != l.blocks.len() as u64 {
            return Err(format!("{id:?} len {len} != {}", l.blocks.len()));
        }
        if s.is_sealed(id).map_err(|e| format!("{e:?}"))? != l.sealed {
            return Err(format!("{id:?} sealed flag"));
        }
        let n = l.blocks.len();
        let positions: Vec<usize> = if full || n <= 2 {
            (0..n).collect()
        } else {
            vec![0, n / 2, n - 1]
        };
        for p in positions {
            s.read(id, p as u64, &mut buf)
                .map_err(|e| format!("{id:?} read {p}: {e:?}"))?;
            if buf != content(l.blocks[p], p) {
                return Err(format!("{id:?} block {p}: wrong data"));
            }
        }
    }
    Ok(())
}

/// One I/O seen by a [`Recorder`].
#[derive(Clone)]
pub enum Op {
    Write(u64, Vec<u8>),
    Flush,
}

/// A memory disk that logs every write and flush, so a test can rebuild the
/// durable image of any crash point without re-running the workload.
pub struct Recorder {
    pub disk: MemDisk,
    pub ops: Mutex<Vec<Op>>,
}

impl Recorder {
    pub fn new(n: u64) -> Arc<Self> {
        Arc::new(Self {
            disk: MemDisk::new(n).unwrap(),
            ops: Mutex::new(Vec::new()),
        })
    }
    pub fn op_count(&self) -> usize {
        self.ops.lock().unwrap().len()
    }
}

impl BlockSet for Recorder {
    fn read(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        self.disk.read(pos, buf)
    }
    fn write(&self, pos: u64, buf: &[u8]) -> Result<()> {
        self.disk.write(pos, buf)?;
        let mut ops = self.ops.lock().unwrap();
        for (i, b) in buf.chunks_exact(BLOCK_SIZE).enumerate() {
            ops.push(Op::Write(pos + i as u64, b.to_vec()));
        }
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        self.ops.lock().unwrap().push(Op::Flush);
        Ok(())
    }
    fn nblocks(&self) -> u64 {
        self.disk.nblocks()
    }
}

/// The durable image after a crash when the first `n` ops happened: every
/// write before the last flush among them, plus the unflushed writes after
/// it that `keep` selects (in order).
pub fn crash_image(base: &[u8], ops: &[Op], n: usize, keep: &dyn Fn(usize) -> bool) -> Vec<u8> {
    crash_image_ordered(base, ops, n, keep, false)
}

/// Like [`crash_image`]; with `reverse`, the kept unflushed writes land in
/// reverse order (a later write to a block may be overwritten by an earlier).
pub fn crash_image_ordered(
    base: &[u8],
    ops: &[Op],
    n: usize,
    keep: &dyn Fn(usize) -> bool,
    reverse: bool,
) -> Vec<u8> {
    let mut img = base.to_vec();
    let ops = &ops[..n];
    let last_flush = ops
        .iter()
        .rposition(|o| matches!(o, Op::Flush))
        .map_or(0, |i| i + 1);
    let mut put = |pos: u64, b: &[u8]| {
        let o = pos as usize * BLOCK_SIZE;
        img[o..o + BLOCK_SIZE].copy_from_slice(b);
    };
    for o in &ops[..last_flush] {
        if let Op::Write(p, b) = o {
            put(*p, b);
        }
    }
    let mut kept = Vec::new();
    let mut k = 0;
    for o in &ops[last_flush..] {
        if let Op::Write(p, b) = o {
            if keep(k) {
                kept.push((*p, b));
            }
            k += 1;
        }
    }
    if reverse {
        kept.reverse();
    }
    for (p, b) in kept {
        put(p, b);
    }
    img
}

/// Whether `e` is an error kind a tampered store may give.
pub fn is_tamper_error(k: ErrorKind) -> bool {
    matches!(
        k,
        ErrorKind::Integrity | ErrorKind::Corrupted | ErrorKind::WrongKey
    )
}
