//! `CryptoLog`: an append-only log of 4 KiB blocks with a Merkle tree, for
//! authenticated random reads over an untrusted device.
//!
//! # What it guarantees
//!
//! Given a [`RootMeta`] that the caller keeps in trusted storage (for the log
//! store: inside its MAC-chained journal), a read of block `pos` returns
//! exactly the block appended at `pos` in the history that produced that
//! root, or fails with [`ErrorKind::Integrity`]. Never other data, never an
//! older version of the block, never another block's data. Nothing on the
//! device reveals the contents of a block.
//!
//! # How
//!
//! - Every block (data block or tree node) is encrypted with AES-GCM under a
//!   **fresh random key** drawn for that one write, with an all-zero IV: each
//!   key seals exactly one plaintext, so no (key, nonce) pair is ever reused,
//!   across crashes and reopenings included (a crash can only lose keys, never
//!   make one be used twice; a rewrite always draws a new key).
//! - The key, the MAC (GCM tag) and the address of a block are stored in its
//!   parent node; the root's key, MAC and address are the [`RootMeta`]. A read
//!   walks root -> leaf and decrypts each node with the key its parent gave:
//!   a flipped byte, a block moved or swapped, or an older version of a block
//!   put back fails the tag check, because the parent names the one
//!   ciphertext that verifies under that key.
//! - The AAD of each block is its kind (data/node) and its address.
//! - Blocks and nodes are written copy-on-write to fresh addresses from the
//!   caller's allocator ([`BlockAlloc`]): an old root stays valid until the
//!   caller switches to a new one. Full nodes are written once; the partial
//!   nodes of the rightmost path are written at each [`CryptoLog::flush`].
//!
//! # Tree shape
//!
//! Level-0 nodes hold the entries of up to [`FANOUT`] data blocks; a level-`l`
//! node holds entries of up to `FANOUT` level-`l-1` nodes. The root's level
//! follows from the block count: the height is the smallest `h >= 1` with
//! `FANOUT^h >= nblocks`. In memory the log keeps the *frontier*: for each
//! level, the entries of the node being filled (a base-`FANOUT` counter).
//! Logs opened from a root load the frontier only when they are appended to,
//! so a sealed log costs only its root in memory.
//!
//! # What it assumes
//!
//! - The caller keeps the root in trusted, authenticated storage and hands the
//!   log only addresses nobody else writes to while they are referenced.
//! - `flush` writes blocks but does not flush the device: the caller flushes
//!   the device before it makes a root durable.
//! - After an error from `append` or `flush`, the in-memory state may be
//!   partly updated: reopen the log from the last root the caller kept.
//!
//! Byte layouts: `docs/format.md`, section "CryptoLog".

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::bio::{BlockSet, BLOCK_SIZE};
use crate::platform::{AeadKey, Iv, Mac, MAC_LEN};
use crate::vec_map::VecMap;
use crate::{bail, ensure, CryptoRef, Error, ErrorKind, Result};

/// Magic of a CryptoLog tree node (first 4 bytes of its plaintext).
pub const NODE_MAGIC: [u8; 4] = *b"MDLN";
/// Format version of CryptoLog nodes.
pub const NODE_VERSION: u8 = 1;
/// Type byte of a tree node.
pub const NODE_TYPE: u8 = 1;
/// Bytes of a node header.
pub const NODE_HEADER_LEN: usize = 16;
/// Bytes of one entry (address, key slot, MAC) in a node or a root.
pub const ENTRY_LEN: usize = 8 + 32 + MAC_LEN;
/// Entries per node.
pub const FANOUT: usize = (BLOCK_SIZE - NODE_HEADER_LEN) / ENTRY_LEN;

const AAD_DATA: u8 = 0xD0;
const AAD_NODE: u8 = 0xA0;
const ZERO_IV: Iv = [0u8; 12];
/// Data blocks at consecutive device addresses read in one request.
const MAX_READ_RUN: usize = 64;

/// A source of fresh block addresses for copy-on-write writes.
///
/// Every address returned must be unused by any block that a root the caller
/// still keeps refers to.
pub trait BlockAlloc {
    /// A fresh block address.
    fn alloc_block(&mut self) -> Result<u64>;
}

impl<F: FnMut() -> Result<u64>> BlockAlloc for F {
    fn alloc_block(&mut self) -> Result<u64> {
        self()
    }
}

/// Where a block is and how to open it: one entry of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    addr: u64,
    key: AeadKey,
    mac: Mac,
}

impl Entry {
    fn emit(&self, out: &mut [u8]) -> Result<()> {
        ensure!(out.len() == ENTRY_LEN, InvalidArgument, "entry buffer size");
        let (a, rest) = out.split_at_mut(8);
        let (k, m) = rest.split_at_mut(32);
        a.copy_from_slice(&self.addr.to_le_bytes());
        k.fill(0);
        let kb = self.key.as_bytes();
        k.get_mut(..kb.len())
            .ok_or(Error::new(ErrorKind::InvalidArgument, "key too long"))?
            .copy_from_slice(kb);
        m.copy_from_slice(&self.mac);
        Ok(())
    }

    fn parse(b: &[u8], key_len: usize) -> Result<Self> {
        ensure!(b.len() == ENTRY_LEN, Corrupted, "entry length");
        let (a, rest) = b.split_at(8);
        let (k, m) = rest.split_at(32);
        let addr = u64::from_le_bytes(a.try_into().map_err(|_| corrupted("entry address"))?);
        let (kb, pad) = k
            .split_at_checked(key_len)
            .ok_or(corrupted("entry key length"))?;
        ensure!(pad.iter().all(|&x| x == 0), Corrupted, "entry key padding");
        let key = AeadKey::from_slice(kb).map_err(|_| corrupted("entry key length"))?;
        let mac: Mac = m.try_into().map_err(|_| corrupted("entry MAC"))?;
        Ok(Self { addr, key, mac })
    }
}

fn corrupted(msg: &'static str) -> Error {
    Error::new(ErrorKind::Corrupted, msg)
}

/// The root of a CryptoLog: what the caller keeps in trusted storage.
///
/// `nblocks == 0` is the empty log; the other fields are then meaningless.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootMeta {
    /// Address of the root node.
    pub addr: u64,
    /// Key of the root node.
    pub key: AeadKey,
    /// MAC (GCM tag) of the root node.
    pub mac: Mac,
    /// Number of data blocks in the log.
    pub nblocks: u64,
}

impl RootMeta {
    /// Bytes of an encoded root.
    pub const ENCODED_LEN: usize = 8 + 1 + ENTRY_LEN;

    /// The root of an empty log (its key is all zeros and never used).
    pub fn empty() -> Result<Self> {
        Ok(Self {
            addr: 0,
            key: AeadKey::from_slice(&[0u8; 16])?,
            mac: [0; MAC_LEN],
            nblocks: 0,
        })
    }

    /// Writes the root into `out` (exactly [`Self::ENCODED_LEN`] bytes):
    /// `nblocks u64 | key_len u8 | addr u64 | key [32] | mac [16]`.
    pub fn emit(&self, out: &mut [u8]) -> Result<()> {
        ensure!(
            out.len() == Self::ENCODED_LEN,
            InvalidArgument,
            "root buffer size"
        );
        let (n, rest) = out.split_at_mut(8);
        let (kl, e) = rest.split_at_mut(1);
        n.copy_from_slice(&self.nblocks.to_le_bytes());
        kl.fill(self.key.len() as u8);
        self.entry().emit(e)
    }

    /// Parses a root written by [`Self::emit`].
    pub fn parse(b: &[u8]) -> Result<Self> {
        ensure!(b.len() == Self::ENCODED_LEN, Corrupted, "root length");
        let (n, rest) = b.split_at(8);
        let (kl, e) = rest.split_at(1);
        let nblocks = u64::from_le_bytes(n.try_into().map_err(|_| corrupted("root"))?);
        let key_len = usize::from(kl.first().copied().unwrap_or(0));
        ensure!(key_len == 16 || key_len == 32, Corrupted, "root key length");
        let e = Entry::parse(e, key_len)?;
        Ok(Self {
            addr: e.addr,
            key: e.key,
            mac: e.mac,
            nblocks,
        })
    }

    fn entry(&self) -> Entry {
        Entry {
            addr: self.addr,
            key: self.key.clone(),
            mac: self.mac,
        }
    }
}

/// Number of data blocks covered by one entry of a level-`l` node.
fn span(l: usize) -> u64 {
    (FANOUT as u64).checked_pow(l as u32).unwrap_or(u64::MAX)
}

/// The tree nodes of a log of `n` blocks, every level counted: what a
/// [`NodeCache`] can hold of it at most (0 for an empty log).
pub fn nodes_of(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let mut nodes = 0u64;
    for l in 1..=height(n) {
        nodes = nodes.saturating_add(n.div_ceil(span(l).max(1)));
    }
    nodes
}

/// Height (levels of nodes) of the tree of `n >= 1` blocks.
fn height(n: u64) -> usize {
    let mut h = 1;
    while span(h) < n {
        h += 1;
    }
    h
}

/// An append-only log of 4 KiB blocks with a Merkle tree. See the module doc.
pub struct CryptoLog {
    crypto: CryptoRef,
    key_len: usize,
    nblocks: u64,
    /// The root as of the last flush (or open).
    root: RootMeta,
    /// Entries of the nodes being filled, per level; `None` until needed.
    frontier: Option<Vec<Vec<Entry>>>,
    /// Appended to since the last flush.
    dirty: bool,
}

impl Clone for CryptoLog {
    fn clone(&self) -> Self {
        Self {
            crypto: self.crypto.clone(),
            key_len: self.key_len,
            nblocks: self.nblocks,
            root: self.root.clone(),
            frontier: self.frontier.clone(),
            dirty: self.dirty,
        }
    }
}

impl core::fmt::Debug for CryptoLog {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CryptoLog")
            .field("nblocks", &self.nblocks)
            .field("dirty", &self.dirty)
            .finish()
    }
}

impl CryptoLog {
    /// A copy of the log's in-memory state, failing (rather than aborting)
    /// when memory for the frontier cannot be had.
    pub fn try_clone(&self) -> Result<Self> {
        let frontier = match &self.frontier {
            None => None,
            Some(levels) => {
                let mut f: Vec<Vec<Entry>> = Vec::new();
                f.try_reserve_exact(levels.len())?;
                for l in levels {
                    let mut v = Vec::new();
                    v.try_reserve_exact(FANOUT.max(l.len()))?;
                    v.extend(l.iter().cloned());
                    f.push(v);
                }
                Some(f)
            }
        };
        Ok(Self {
            crypto: self.crypto.clone(),
            key_len: self.key_len,
            nblocks: self.nblocks,
            root: self.root.clone(),
            frontier,
            dirty: self.dirty,
        })
    }

    /// A new, empty log whose blocks get fresh keys of `key_len` bytes (16 or 32).
    pub fn new(crypto: CryptoRef, key_len: usize) -> Result<Self> {
        ensure!(
            key_len == 16 || key_len == 32,
            InvalidArgument,
            "key length must be 16 or 32"
        );
        Ok(Self {
            crypto,
            key_len,
            nblocks: 0,
            root: RootMeta::empty()?,
            frontier: Some(Vec::new()),
            dirty: false,
        })
    }

    /// The log whose root is `root`. No I/O: nodes are read (and verified)
    /// when blocks are read or appended.
    pub fn open(crypto: CryptoRef, key_len: usize, root: RootMeta) -> Result<Self> {
        let mut log = Self::new(crypto, key_len)?;
        log.nblocks = root.nblocks;
        log.frontier = if root.nblocks == 0 {
            Some(Vec::new())
        } else {
            None
        };
        log.root = root;
        Ok(log)
    }

    /// Number of data blocks appended.
    pub fn nblocks(&self) -> u64 {
        self.nblocks
    }

    /// Whether blocks were appended since the last flush.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The root as of the last flush (or open).
    pub fn last_root(&self) -> &RootMeta {
        &self.root
    }

    /// Drops the in-memory frontier of a clean log (it is reloaded from the
    /// root if the log is appended to again). Saves memory for sealed logs.
    pub fn release_frontier(&mut self) {
        if !self.dirty && self.nblocks > 0 {
            self.frontier = None;
        }
    }

    /// Appends whole blocks: each is encrypted under a fresh key and written
    /// to a fresh address; full tree nodes are written as they fill up.
    pub fn append<D, A>(&mut self, disk: &D, alloc: &mut A, blocks: &[u8]) -> Result<()>
    where
        D: BlockSet + ?Sized,
        A: BlockAlloc + ?Sized,
    {
        ensure!(
            !blocks.is_empty() && blocks.len() % BLOCK_SIZE == 0,
            InvalidArgument,
            "append needs whole blocks"
        );
        self.load_frontier(disk)?;
        let mut buf = alloc_block_buf()?;
        for b in blocks.chunks_exact(BLOCK_SIZE) {
            ensure!(self.nblocks < u64::MAX, NoSpace, "log too long");
            buf.copy_from_slice(b);
            let e = self.seal_write(disk, alloc, AAD_DATA, &mut buf)?;
            self.push(disk, alloc, e)?;
            self.nblocks += 1;
            self.dirty = true;
        }
        Ok(())
    }

    /// Writes the partial nodes of the rightmost path and returns the new
    /// root. Does not flush the device. A clean log returns its root as is.
    pub fn flush<D, A>(&mut self, disk: &D, alloc: &mut A) -> Result<RootMeta>
    where
        D: BlockSet + ?Sized,
        A: BlockAlloc + ?Sized,
    {
        if !self.dirty {
            return Ok(self.root.clone());
        }
        let levels = self.frontier.as_ref().ok_or(Error::new(
            ErrorKind::InvalidState,
            "dirty log without frontier",
        ))?;
        let top = levels.len().checked_sub(1).ok_or(Error::new(
            ErrorKind::InvalidState,
            "dirty log without levels",
        ))?;
        let mut carry: Option<Entry> = None;
        let mut buf = alloc_block_buf()?;
        for (l, level) in levels.iter().enumerate() {
            if l == top && l > 0 && carry.is_none() && level.len() == 1 {
                // A single complete child: it is the root.
                carry = level.first().cloned();
                break;
            }
            let n = level.len() + usize::from(carry.is_some());
            if n == 0 {
                continue;
            }
            let extra = carry.take();
            emit_node(&mut buf, l, self.key_len, level.iter().chain(extra.iter()))?;
            carry = Some(self.seal_write(disk, alloc, AAD_NODE, &mut buf)?);
        }
        let e = carry.ok_or(Error::new(ErrorKind::InvalidState, "no root written"))?;
        self.root = RootMeta {
            addr: e.addr,
            key: e.key,
            mac: e.mac,
            nblocks: self.nblocks,
        };
        self.dirty = false;
        Ok(self.root.clone())
    }

    /// Reads `buf.len() / BLOCK_SIZE` blocks from block `pos`, verifying each
    /// against the root (or, for blocks appended since, against the frontier).
    pub fn read<D: BlockSet + ?Sized>(&self, disk: &D, pos: u64, buf: &mut [u8]) -> Result<()> {
        self.read_cached(disk, pos, buf, None)
    }

    /// Like [`Self::read`], keeping the tree nodes it decrypts in `cache` and
    /// taking them from there when they are in it.
    pub fn read_cached<D: BlockSet + ?Sized>(
        &self,
        disk: &D,
        pos: u64,
        buf: &mut [u8],
        mut cache: Option<&mut NodeCache>,
    ) -> Result<()> {
        ensure!(
            !buf.is_empty() && buf.len() % BLOCK_SIZE == 0,
            InvalidArgument,
            "read needs whole blocks"
        );
        let count = (buf.len() / BLOCK_SIZE) as u64;
        match pos.checked_add(count) {
            Some(end) if end <= self.nblocks => {}
            _ => bail!(InvalidArgument, "read past the end of the log"),
        }
        // Blocks whose device addresses follow each other are read in one
        // device request (up to `MAX_READ_RUN`), then each is opened and
        // checked against its own entry.
        let n = count as usize;
        let mut run: Vec<Entry> = Vec::new();
        run.try_reserve_exact(n.min(MAX_READ_RUN))?;
        let mut i = 0usize;
        while i < n {
            run.clear();
            run.push(self.locate(disk, pos + i as u64, cache.as_deref_mut())?);
            while i + run.len() < n && run.len() < MAX_READ_RUN {
                let e = self.locate(disk, pos + (i + run.len()) as u64, cache.as_deref_mut())?;
                let next = run.last().and_then(|l| l.addr.checked_add(1));
                if Some(e.addr) != next {
                    // Located again as the first of the next run.
                    break;
                }
                run.push(e);
            }
            let k = run.len();
            let first = run
                .first()
                .ok_or(Error::new(ErrorKind::InvalidState, "empty read run"))?;
            let span = buf
                .get_mut(i * BLOCK_SIZE..(i + k) * BLOCK_SIZE)
                .ok_or(Error::new(
                    ErrorKind::InvalidState,
                    "read run past the buffer",
                ))?;
            disk.read(first.addr, span)?;
            for (e, out) in run.iter().zip(span.chunks_exact_mut(BLOCK_SIZE)) {
                self.open_read(e, AAD_DATA, out)?;
            }
            i += k;
        }
        Ok(())
    }

    /// Where data block `pos` is on the device and what opens it: the first
    /// half of a scattered read, which reads the blocks of several logs in
    /// one batch ([`read_located`]) and then opens each
    /// ([`Self::open_located`]).
    pub fn locate_data<D: BlockSet + ?Sized>(
        &self,
        disk: &D,
        pos: u64,
        cache: Option<&mut NodeCache>,
    ) -> Result<LocatedBlock> {
        ensure!(
            pos < self.nblocks,
            InvalidArgument,
            "read past the end of the log"
        );
        Ok(LocatedBlock(self.locate(disk, pos, cache)?))
    }

    /// Decrypts and checks in place data block `out`, read from where
    /// `at` (located by [`Self::locate_data`] of this log) says.
    pub fn open_located(&self, at: &LocatedBlock, out: &mut [u8]) -> Result<()> {
        self.open_read(&at.0, AAD_DATA, out)
    }

    /// The entry (device address, key, MAC) of data block `pos`, from the
    /// frontier or by descending the tree from the root.
    fn locate<D: BlockSet + ?Sized>(
        &self,
        disk: &D,
        pos: u64,
        cache: Option<&mut NodeCache>,
    ) -> Result<Entry> {
        let (entry, level, base) = match &self.frontier {
            None => {
                let h = height(self.nblocks);
                (self.root.entry(), h - 1, 0u64)
            }
            Some(levels) => {
                let mut base = 0u64;
                let mut found = None;
                for (l, level) in levels.iter().enumerate().rev() {
                    let covered = (level.len() as u64).saturating_mul(span(l));
                    if pos < base.saturating_add(covered) {
                        let idx = (pos - base) / span(l);
                        let e = level
                            .get(idx as usize)
                            .ok_or(Error::new(ErrorKind::InvalidState, "frontier index"))?;
                        if l == 0 {
                            return Ok(e.clone());
                        }
                        found = Some((e.clone(), l - 1, base + idx * span(l)));
                        break;
                    }
                    base = base.saturating_add(covered);
                }
                found.ok_or(Error::new(
                    ErrorKind::InvalidState,
                    "position not in frontier",
                ))?
            }
        };
        self.descend(disk, entry, level, base, pos, cache)
    }

    /// The entry of data block `pos` below the level-`level` node named by
    /// `entry`, which covers data blocks from `base`.
    fn descend<D: BlockSet + ?Sized>(
        &self,
        disk: &D,
        mut entry: Entry,
        mut level: usize,
        mut base: u64,
        pos: u64,
        mut cache: Option<&mut NodeCache>,
    ) -> Result<Entry> {
        let mut node: Option<Vec<u8>> = None;
        loop {
            let idx = ((pos - base) / span(level)) as usize;
            let cached = match cache.as_deref_mut() {
                Some(c) => c.child(&entry, level, idx)?,
                None => None,
            };
            let e = match cached {
                Some(e) => e,
                None => {
                    let buf = match &mut node {
                        Some(b) => b,
                        None => node.insert(alloc_block_buf()?),
                    };
                    let entries = self.read_node(disk, &entry, level, buf)?;
                    let e = entries
                        .get(idx)
                        .cloned()
                        .ok_or(Error::new(ErrorKind::Integrity, "tree node too short"))?;
                    if let Some(c) = cache.as_deref_mut() {
                        c.insert(&entry, level, entries)?;
                    }
                    e
                }
            };
            if level == 0 {
                return Ok(e);
            }
            base += idx as u64 * span(level);
            entry = e;
            level -= 1;
        }
    }

    /// Loads the frontier of a log opened from a root by walking its
    /// rightmost path.
    fn load_frontier<D: BlockSet + ?Sized>(&mut self, disk: &D) -> Result<()> {
        if self.frontier.is_some() {
            return Ok(());
        }
        let n = self.nblocks;
        let h = height(n);
        let mut ndigits = 0usize;
        while ndigits < 64 && span(ndigits) <= n {
            ndigits += 1;
        }
        let mut levels: Vec<Vec<Entry>> = Vec::new();
        levels.try_reserve(ndigits)?;
        levels.resize(ndigits, Vec::new());
        if ndigits > h {
            // n == FANOUT^h: the root is one complete node at level h-1.
            let top = levels
                .get_mut(h)
                .ok_or(Error::new(ErrorKind::InvalidState, "frontier levels"))?;
            top.push(self.root.entry());
        } else {
            let mut entry = self.root.entry();
            let mut l = h - 1;
            let mut node = alloc_block_buf()?;
            loop {
                let mut entries = self.read_node(disk, &entry, l, &mut node)?;
                let digit = ((n / span(l)) % FANOUT as u64) as usize;
                let rem = n % span(l);
                let want = digit + usize::from(rem != 0);
                ensure!(entries.len() == want, Integrity, "tree node has wrong size");
                let partial = if rem != 0 { entries.pop() } else { None };
                *levels
                    .get_mut(l)
                    .ok_or(Error::new(ErrorKind::InvalidState, "frontier levels"))? = entries;
                match partial {
                    Some(p) if l > 0 => {
                        entry = p;
                        l -= 1;
                    }
                    Some(_) => bail!(Integrity, "partial child below level 0"),
                    None => break,
                }
            }
        }
        self.frontier = Some(levels);
        Ok(())
    }

    /// Adds an entry at level 0 and carries full nodes upward.
    fn push<D, A>(&mut self, disk: &D, alloc: &mut A, mut e: Entry) -> Result<()>
    where
        D: BlockSet + ?Sized,
        A: BlockAlloc + ?Sized,
    {
        let mut buf: Option<Vec<u8>> = None;
        let mut l = 0usize;
        loop {
            let levels = self
                .frontier
                .as_mut()
                .ok_or(Error::new(ErrorKind::InvalidState, "no frontier"))?;
            if levels.len() == l {
                levels.try_reserve(1)?;
                levels.push(Vec::new());
            }
            let level = levels
                .get_mut(l)
                .ok_or(Error::new(ErrorKind::InvalidState, "frontier levels"))?;
            if level.capacity() < FANOUT {
                level.try_reserve_exact(FANOUT - level.len())?;
            }
            level.push(e);
            if level.len() < FANOUT {
                return Ok(());
            }
            let full = core::mem::take(level);
            let b = match &mut buf {
                Some(b) => b,
                None => buf.insert(alloc_block_buf()?),
            };
            emit_node(b, l, self.key_len, full.iter())?;
            e = self.seal_write(disk, alloc, AAD_NODE, b)?;
            l += 1;
        }
    }

    /// Encrypts `buf` in place under a fresh key and writes it to a fresh
    /// address; returns its entry.
    fn seal_write<D, A>(&self, disk: &D, alloc: &mut A, kind: u8, buf: &mut [u8]) -> Result<Entry>
    where
        D: BlockSet + ?Sized,
        A: BlockAlloc + ?Sized,
    {
        let addr = alloc.alloc_block()?;
        let key = AeadKey::random(&*self.crypto, self.key_len)?;
        let mac = self
            .crypto
            .aead_seal(&key, &ZERO_IV, &aad(kind, addr), buf)?;
        disk.write(addr, buf)?;
        Ok(Entry { addr, key, mac })
    }

    fn open_block<D: BlockSet + ?Sized>(
        &self,
        disk: &D,
        e: &Entry,
        kind: u8,
        out: &mut [u8],
    ) -> Result<()> {
        disk.read(e.addr, out)?;
        self.open_read(e, kind, out)
    }

    /// Decrypts and checks block `out`, read from `e.addr`, in place.
    fn open_read(&self, e: &Entry, kind: u8, out: &mut [u8]) -> Result<()> {
        self.crypto
            .aead_open(&e.key, &ZERO_IV, &aad(kind, e.addr), out, &e.mac)
            .map_err(|err| {
                if err.kind() == ErrorKind::Integrity {
                    Error::new(ErrorKind::Integrity, "log block does not verify")
                } else {
                    err
                }
            })
    }

    fn read_node<D: BlockSet + ?Sized>(
        &self,
        disk: &D,
        e: &Entry,
        level: usize,
        buf: &mut [u8],
    ) -> Result<Vec<Entry>> {
        self.open_block(disk, e, AAD_NODE, buf)?;
        parse_node(buf, level)
    }
}

/// A data block of a log, located on the device ([`CryptoLog::locate_data`]).
#[derive(Clone, Debug)]
pub struct LocatedBlock(Entry);

impl LocatedBlock {
    /// The device block it is read from.
    pub fn addr(&self) -> u64 {
        self.0.addr
    }
}

/// Reads the device blocks `addrs` (one each, in any order) into
/// consecutive blocks of `buf` in one [`BlockSet::read_ranges`] call: the
/// device may keep all of them in flight at once. Addresses that follow
/// each other share a range (up to `MAX_READ_RUN` blocks).
pub fn read_located<D: BlockSet + ?Sized>(disk: &D, addrs: &[u64], buf: &mut [u8]) -> Result<()> {
    ensure!(
        buf.len() == addrs.len() * BLOCK_SIZE,
        InvalidArgument,
        "scattered read: one block per address"
    );
    let mut ranges: Vec<(u64, &mut [u8])> = Vec::new();
    ranges.try_reserve_exact(addrs.len())?;
    let mut rest = buf;
    let mut i = 0usize;
    while let Some(&first) = addrs.get(i) {
        let mut k = 1usize;
        while k < MAX_READ_RUN
            && addrs
                .get(i + k)
                .is_some_and(|&a| Some(a) == first.checked_add(k as u64))
        {
            k += 1;
        }
        let (span, tail) = rest
            .split_at_mut_checked(k * BLOCK_SIZE)
            .ok_or(Error::new(ErrorKind::InvalidState, "scattered read buffer"))?;
        ranges.push((first, span));
        rest = tail;
        i += k;
    }
    disk.read_ranges(&mut ranges)
}

/// A bounded cache of decrypted tree nodes, shared by the logs of one owner.
///
/// Keyed by a node's address and MAC, and checked against its key, so a hit
/// is exactly the node its parent names (a node rewritten at the same address
/// has another key and MAC). Holds at most `capacity` nodes (about 4.5 KiB
/// each). Level-0 nodes (the parents of data blocks) are evicted first,
/// oldest first; a node above level 0 only when no level-0 node is left:
/// one upper node serves the lookups of up to `FANOUT` level-0 nodes, so a
/// cache too small for every level-0 node still costs a lookup at most one
/// node read, not one per level.
#[derive(Debug, Default)]
pub struct NodeCache {
    capacity: usize,
    map: VecMap<(u64, Mac), CachedNode>,
    /// Level-0 nodes, oldest first.
    order: VecDeque<(u64, Mac)>,
    /// Nodes above level 0, oldest first.
    upper: VecDeque<(u64, Mac)>,
    hits: u64,
    misses: u64,
}

#[derive(Debug)]
struct CachedNode {
    key: AeadKey,
    level: usize,
    entries: Vec<Entry>,
}

impl NodeCache {
    /// A cache of at most `capacity` nodes (0 disables it).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    /// Lookups that found their node, and those that did not.
    pub fn hits_misses(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    /// Forgets every node.
    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
        self.upper.clear();
    }

    /// Nodes held now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache holds no node.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Changes the capacity, evicting (level-0 nodes first) down to it.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        self.evict_to(capacity);
    }

    /// The capacity in nodes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Evicts until at most `n` nodes are held: level-0 nodes oldest first,
    /// then upper nodes oldest first.
    fn evict_to(&mut self, n: usize) {
        while self.map.len() > n {
            match self.order.pop_front().or_else(|| self.upper.pop_front()) {
                Some(k) => {
                    self.map.remove(&k);
                }
                None => break,
            }
        }
    }

    fn child(&mut self, parent: &Entry, level: usize, idx: usize) -> Result<Option<Entry>> {
        match self.map.get(&(parent.addr, parent.mac)) {
            Some(n) if n.key == parent.key && n.level == level => {
                self.hits += 1;
                n.entries
                    .get(idx)
                    .cloned()
                    .map(Some)
                    .ok_or(Error::new(ErrorKind::Integrity, "tree node too short"))
            }
            _ => Ok(None),
        }
    }

    fn insert(&mut self, parent: &Entry, level: usize, entries: Vec<Entry>) -> Result<()> {
        self.misses += 1;
        if self.capacity == 0 {
            return Ok(());
        }
        self.evict_to(self.capacity.saturating_sub(1));
        let fifo = if level == 0 {
            &mut self.order
        } else {
            &mut self.upper
        };
        fifo.try_reserve(1)?;
        self.map.try_reserve(1)?;
        let k = (parent.addr, parent.mac);
        if self
            .map
            .insert(
                k,
                CachedNode {
                    key: parent.key.clone(),
                    level,
                    entries,
                },
            )?
            .is_none()
        {
            if level == 0 {
                self.order.push_back(k);
            } else {
                self.upper.push_back(k);
            }
        }
        Ok(())
    }
}

fn aad(kind: u8, addr: u64) -> [u8; 9] {
    let mut a = [0u8; 9];
    let (k, rest) = a.split_at_mut(1);
    k.fill(kind);
    rest.copy_from_slice(&addr.to_le_bytes());
    a
}

fn alloc_block_buf() -> Result<Vec<u8>> {
    crate::fallible::filled_vec(BLOCK_SIZE, 0)
}

/// Node plaintext: magic "MDLN" | version u8 | type u8 | level u8 | key_len u8
/// | nentries u16 | reserved [6] | entries | zero padding.
fn emit_node<'a>(
    buf: &mut [u8],
    level: usize,
    key_len: usize,
    entries: impl Iterator<Item = &'a Entry>,
) -> Result<()> {
    ensure!(buf.len() == BLOCK_SIZE, InvalidArgument, "node buffer size");
    buf.fill(0);
    let (hdr, body) = buf.split_at_mut(NODE_HEADER_LEN);
    let mut n = 0usize;
    for (e, out) in entries.zip(body.chunks_exact_mut(ENTRY_LEN)) {
        e.emit(out)?;
        n += 1;
    }
    ensure!(n <= FANOUT, InvalidState, "node overflow");
    let lvl =
        u8::try_from(level).map_err(|_| Error::new(ErrorKind::InvalidState, "tree too tall"))?;
    let (magic, rest) = hdr.split_at_mut(4);
    magic.copy_from_slice(&NODE_MAGIC);
    let (fields, _reserved) = rest.split_at_mut(6);
    fields.copy_from_slice(&[
        NODE_VERSION,
        NODE_TYPE,
        lvl,
        key_len as u8,
        (n as u16).to_le_bytes()[0],
        (n as u16).to_le_bytes()[1],
    ]);
    Ok(())
}

/// Fuzzing only: [`parse_node`] on a plaintext node, returning its entry
/// count.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_parse_node(buf: &[u8], level: usize) -> Result<usize> {
    parse_node(buf, level).map(|e| e.len())
}

fn parse_node(buf: &[u8], level: usize) -> Result<Vec<Entry>> {
    let (hdr, body) = buf
        .split_at_checked(NODE_HEADER_LEN)
        .ok_or(corrupted("node too short"))?;
    ensure!(
        hdr.get(..4) == Some(&NODE_MAGIC[..]),
        Corrupted,
        "bad node magic"
    );
    let f = |i: usize| hdr.get(i).copied().unwrap_or(0);
    ensure!(f(4) == NODE_VERSION, Corrupted, "unknown node version");
    ensure!(f(5) == NODE_TYPE, Corrupted, "not a tree node");
    ensure!(
        usize::from(f(6)) == level,
        Integrity,
        "tree node at the wrong level"
    );
    let key_len = usize::from(f(7));
    ensure!(
        key_len == 16 || key_len == 32,
        Corrupted,
        "bad node key length"
    );
    let n = usize::from(u16::from_le_bytes([f(8), f(9)]));
    ensure!(n <= FANOUT, Corrupted, "node entry count");
    ensure!(
        hdr.get(10..).is_some_and(|r| r.iter().all(|&x| x == 0)),
        Corrupted,
        "node reserved bytes"
    );
    ensure!(
        body.get(n * ENTRY_LEN..)
            .is_some_and(|r| r.iter().all(|&x| x == 0)),
        Corrupted,
        "node padding"
    );
    let mut out = Vec::new();
    out.try_reserve_exact(n)?;
    for chunk in body.chunks_exact(ENTRY_LEN).take(n) {
        out.push(Entry::parse(chunk, key_len)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bio::MemDisk;
    use crate::platform::StdCrypto;
    use alloc::sync::Arc;

    fn block(i: u64) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE];
        for (j, x) in b.iter_mut().enumerate() {
            *x = (i as usize * 31 + j) as u8;
        }
        b
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4200), level in 0usize..4) {
            let _ = parse_node(&b, level);
            let mut n = b.clone();
            n.resize(BLOCK_SIZE, 0);
            if let Some(m) = n.get_mut(..4) {
                m.copy_from_slice(&NODE_MAGIC);
            }
            let _ = parse_node(&n, level);
            let _ = RootMeta::parse(&b);
            let _ = RootMeta::parse(b.get(..RootMeta::ENCODED_LEN).unwrap_or(&b));
        }
    }

    #[test]
    fn nodes_of_counts_every_level() {
        let f = FANOUT as u64;
        assert_eq!(nodes_of(0), 0);
        assert_eq!(nodes_of(1), 1);
        assert_eq!(nodes_of(f), 1, "one full level-0 node is the root");
        assert_eq!(nodes_of(f + 1), 2 + 1);
        assert_eq!(nodes_of(f * f), f + 1);
        assert_eq!(nodes_of(f * f + 1), (f + 1) + 2 + 1);
    }

    #[test]
    fn node_cache_evicts_level_zero_nodes_first() {
        let c = StdCrypto;
        let entry = |a: u64| Entry {
            addr: a,
            key: AeadKey::random(&c, 16).unwrap(),
            mac: [a as u8; 16],
        };
        let mut cache = NodeCache::new(3);
        let up = entry(1);
        cache.insert(&up, 1, vec![entry(100)]).unwrap();
        let lows: Vec<Entry> = (2..6).map(entry).collect();
        for e in &lows {
            cache.insert(e, 0, vec![entry(200)]).unwrap();
        }
        assert_eq!(cache.len(), 3);
        // The upper node stays although it is the oldest; the two oldest
        // level-0 nodes went.
        assert!(
            cache.child(&up, 1, 0).unwrap().is_some(),
            "upper node evicted"
        );
        assert!(cache.child(&lows[0], 0, 0).unwrap().is_none());
        assert!(cache.child(&lows[1], 0, 0).unwrap().is_none());
        assert!(cache.child(&lows[2], 0, 0).unwrap().is_some());
        assert!(cache.child(&lows[3], 0, 0).unwrap().is_some());
        // Shrinking evicts level-0 nodes first, then upper ones.
        cache.set_capacity(1);
        assert_eq!(cache.len(), 1);
        assert!(cache.child(&up, 1, 0).unwrap().is_some());
        cache.set_capacity(0);
        assert!(cache.is_empty());
    }

    #[test]
    fn height_and_span() {
        assert_eq!(FANOUT, 72);
        assert_eq!(height(1), 1);
        assert_eq!(height(72), 1);
        assert_eq!(height(73), 2);
        assert_eq!(height(72 * 72), 2);
        assert_eq!(height(72 * 72 + 1), 3);
    }

    #[test]
    fn node_round_trip_and_root_codec() {
        let c = StdCrypto;
        let e = Entry {
            addr: 7,
            key: AeadKey::random(&c, 16).unwrap(),
            mac: [3; 16],
        };
        let mut buf = vec![0u8; BLOCK_SIZE];
        emit_node(&mut buf, 2, 16, [e.clone(), e.clone()].iter()).unwrap();
        let d = parse_node(&buf, 2).unwrap();
        assert_eq!(d, vec![e.clone(), e.clone()]);
        assert!(parse_node(&buf, 1).is_err());
        let r = RootMeta {
            addr: 9,
            key: AeadKey::random(&c, 32).unwrap(),
            mac: [5; 16],
            nblocks: 1234,
        };
        let mut rb = vec![0u8; RootMeta::ENCODED_LEN];
        r.emit(&mut rb).unwrap();
        assert_eq!(RootMeta::parse(&rb).unwrap(), r);
        // Flip one byte anywhere: an error or another value, never the same.
        for i in 0..rb.len() {
            let mut b = rb.clone();
            b[i] ^= 0x10;
            if let Ok(d) = RootMeta::parse(&b) {
                assert_ne!(d, r, "root byte {i}");
            }
        }
        for i in 0..NODE_HEADER_LEN + 2 * ENTRY_LEN {
            let mut b = buf.clone();
            b[i] ^= 0x10;
            if let Ok(d) = parse_node(&b, 2) {
                assert_ne!(d, vec![e.clone(), e.clone()], "node byte {i}");
            }
        }
        rb[8] = 17;
        assert!(RootMeta::parse(&rb).is_err());
    }

    #[test]
    fn append_flush_reopen_read_across_heights() {
        let crypto: CryptoRef = Arc::new(StdCrypto);
        let disk = MemDisk::new(20_000).unwrap();
        let mut next = 0u64;
        let mut alloc = || {
            next += 1;
            Ok(next - 1)
        };
        let mut log = CryptoLog::new(crypto.clone(), 16).unwrap();
        let mut roots = Vec::new();
        // Three levels of nodes: 5000+ blocks.
        let total = 72 * 72 + 80;
        let mut i = 0u64;
        let steps = [1u64, 70, 1, 1, 72 * 72 - 72, 3, 72, 80];
        for s in steps {
            for _ in 0..s {
                if i == total {
                    break;
                }
                log.append(&disk, &mut alloc, &block(i)).unwrap();
                i += 1;
            }
            let r = log.flush(&disk, &mut alloc).unwrap();
            roots.push(r.clone());
            // Reopen and continue from the root.
            log = CryptoLog::open(crypto.clone(), 16, r).unwrap();
        }
        let mut b = vec![0u8; BLOCK_SIZE];
        for r in &roots {
            let log = CryptoLog::open(crypto.clone(), 16, r.clone()).unwrap();
            for p in [0, r.nblocks / 2, r.nblocks - 1] {
                log.read(&disk, p, &mut b).unwrap();
                assert_eq!(b, block(p), "root of {} blocks, pos {p}", r.nblocks);
            }
            assert!(log.read(&disk, r.nblocks, &mut b).is_err());
        }
    }
}
