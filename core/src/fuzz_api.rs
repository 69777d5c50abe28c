//! Entry points for the fuzz targets (`fuzz/`) and the regression test
//! (`tests/fuzz_regressions.rs`): one function per decoder of bytes that
//! come from the backing device, each taking the raw fuzz input.
//!
//! Only built with the `fuzzing` feature, which no normal build enables: the
//! engine's API does not grow. Every function returns the decoder's
//! [`Result`]; none may panic, whatever the input. [`image`] is different: it
//! opens a whole mutated image and returns `Err` only when the disk returned
//! bytes that are not in its model (engine errors are the expected outcome
//! of tampering and count as success).
//!
//! [`seeds`] makes the seed corpus: a few valid encodings per target, written
//! to `fuzz/corpus/<target>/` by `tests/fuzz_regressions.rs`.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::bio::{BlockRange, BlockSet, MemDisk, BLOCK_SIZE};
use crate::crypto::{crypto_log, mac_chain, AuthBlob, ChainPos, CryptoLog, MacChain, RootMeta};
use crate::disk::block_anchor::{self, BlockAnchor};
use crate::disk::record::BlockRecord;
use crate::disk::state::{SuperPayload, UserState};
use crate::disk::AnchorState;
use crate::disk::{DiskConfig, Geometry, LayoutConfig, MlsDisk, NoAnchor, RollbackAnchor};
use crate::log::{LogStoreConfig, StoreRoot, TxLogStore};
use crate::lsm::{table_tag, LogStore, LsmConfig, LsmTree, TAG_WAL};
use crate::platform::{AeadKey, Crypto, Hash, Iv, Mac, StdCrypto};
use crate::{CryptoRef, Error, ErrorKind, Result};

/// The root key every target uses.
pub const KEY: [u8; 32] = [0x5a; 32];

/// Every target of the fuzz crate, in `make fuzz` order (the last two parse
/// the kernel module's table line, `linux/table.rs`, outside this crate).
pub const TARGETS: [&str; 13] = [
    "superblock_slot",
    "superblock_payload",
    "journal_chain",
    "log_record",
    "log_store",
    "merkle_node",
    "lsm_table",
    "lsm_wal",
    "lsm_tree",
    "block_anchor",
    "image",
    "dm_table",
    "keyring_ref",
];

fn fuzz_err(msg: &'static str) -> Error {
    Error::new(ErrorKind::InvalidArgument, msg)
}

/// The std crypto provider with deterministic "random" bytes (SHA-256 of a
/// seed and a counter), so that a fuzz input replays the same way.
pub struct DetCrypto {
    seed: u64,
    ctr: AtomicU64,
}

impl DetCrypto {
    /// A provider whose random stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            ctr: AtomicU64::new(0),
        }
    }

    /// The same as a shared handle.
    pub fn shared(seed: u64) -> CryptoRef {
        Arc::new(Self::new(seed))
    }
}

impl Crypto for DetCrypto {
    fn aead_seal(&self, key: &AeadKey, iv: &Iv, aad: &[u8], data: &mut [u8]) -> Result<Mac> {
        StdCrypto.aead_seal(key, iv, aad, data)
    }
    fn aead_open(
        &self,
        key: &AeadKey,
        iv: &Iv,
        aad: &[u8],
        data: &mut [u8],
        mac: &Mac,
    ) -> Result<()> {
        StdCrypto.aead_open(key, iv, aad, data, mac)
    }
    fn sha256(&self, parts: &[&[u8]]) -> Result<Hash> {
        StdCrypto.sha256(parts)
    }
    fn hmac_sha256(&self, key: &[u8], parts: &[&[u8]]) -> Result<Hash> {
        StdCrypto.hmac_sha256(key, parts)
    }
    fn fill_random(&self, out: &mut [u8]) -> Result<()> {
        for chunk in out.chunks_mut(32) {
            let c = self.ctr.fetch_add(1, Ordering::Relaxed);
            let h = StdCrypto.sha256(&[&self.seed.to_le_bytes(), &c.to_le_bytes()])?;
            chunk.copy_from_slice(h.get(..chunk.len()).ok_or(fuzz_err("random chunk"))?);
        }
        Ok(())
    }
}

/// A memory disk of `nblocks` blocks holding `bytes` (cut or zero-padded).
fn disk_with(bytes: &[u8], nblocks: u64) -> Result<Arc<MemDisk>> {
    let d = MemDisk::new(nblocks)?;
    let mut img = d.snapshot()?;
    let n = bytes.len().min(img.len());
    img.get_mut(..n)
        .ok_or(fuzz_err("image"))?
        .copy_from_slice(bytes.get(..n).ok_or(fuzz_err("image"))?);
    d.restore(&img)?;
    Ok(Arc::new(d))
}

/// The bytes of the first `nblocks` blocks of `d`.
fn disk_bytes(d: &MemDisk, nblocks: usize) -> Result<Vec<u8>> {
    let mut v = d.snapshot()?;
    v.truncate(nblocks.saturating_mul(BLOCK_SIZE));
    Ok(v)
}

// --- crypto layer ----------------------------------------------------------

/// The superblock's A/B slots: `bytes` are blocks 0 and 1 of a device;
/// opens the blob with [`KEY`].
pub fn superblock_slot(bytes: &[u8]) -> Result<()> {
    let d = disk_with(bytes, 2)?;
    AuthBlob::open(d, 0, DetCrypto::shared(1), &KEY).map(|_| ())
}

/// The fixed chain the `journal_chain` target opens: its key, start and
/// trusted tail (what the superblock would hold), and its region's bytes.
struct Chain {
    start: ChainPos,
    tail: ChainPos,
    region: Vec<u8>,
}

const CHAIN_BLOCKS: u64 = 8;

fn chain_key() -> Result<AeadKey> {
    AeadKey::from_slice(&KEY)
}

fn make_chain() -> Result<Chain> {
    let d = Arc::new(MemDisk::new(CHAIN_BLOCKS)?);
    let mut c = MacChain::create(d.clone(), DetCrypto::shared(2), chain_key()?)?;
    let start = c.start();
    let mut big = Vec::new();
    big.try_reserve_exact(5000)?;
    big.resize(5000, 0xab);
    c.append(b"first record")?;
    c.append(b"")?;
    c.commit()?;
    c.append(&big)?;
    let tail = c.commit()?;
    Ok(Chain {
        start,
        tail,
        region: disk_bytes(&d, CHAIN_BLOCKS as usize)?,
    })
}

fn chain() -> Result<&'static Chain> {
    static CHAIN: std::sync::OnceLock<Option<Chain>> = std::sync::OnceLock::new();
    CHAIN
        .get_or_init(|| make_chain().ok())
        .as_ref()
        .ok_or(fuzz_err("journal chain fixture"))
}

/// The MAC-chained journal: `bytes` are its ring (8 blocks), opened from
/// the fixed start and trusted tail of [`seeds`]' chain; also the record
/// stream parser and the chain position decoder on the raw bytes.
pub fn journal_chain(bytes: &[u8]) -> Result<()> {
    let _ = ChainPos::parse(bytes.get(..ChainPos::ENCODED_LEN).unwrap_or(bytes));
    let mut recs = Vec::new();
    let _ = mac_chain::parse_records(bytes.get(..BLOCK_SIZE).unwrap_or(bytes), &mut recs);
    let c = chain()?;
    let d = disk_with(bytes, CHAIN_BLOCKS)?;
    MacChain::open(d, DetCrypto::shared(3), chain_key()?, c.start, c.tail).map(|_| ())
}

/// A Merkle-tree node's plaintext: byte 0 is the level the reader expects,
/// the rest the node; also the root metadata decoder (and a log opened on
/// it, reading block 0 from the node bytes as a device).
pub fn merkle_node(bytes: &[u8]) -> Result<()> {
    let (level, node) = bytes.split_first().ok_or(fuzz_err("empty input"))?;
    if let Ok(root) = RootMeta::parse(node.get(..RootMeta::ENCODED_LEN).unwrap_or(node)) {
        if let Ok(log) = CryptoLog::open(DetCrypto::shared(4), 32, root) {
            let d = disk_with(node, 4)?;
            let mut buf = [0u8; BLOCK_SIZE];
            let _ = log.read(&d, 0, &mut buf);
        }
    }
    crypto_log::fuzz_parse_node(node, usize::from(level % 4)).map(|_| ())
}

// --- log layer ---------------------------------------------------------------

/// One journal record of the log store (the plaintext a chain carries).
pub fn log_record(bytes: &[u8]) -> Result<()> {
    crate::log::fuzz_hooks::record(bytes)
}

/// Splits `bytes` into records, each `u16` little-endian length + bytes.
fn split_records(mut bytes: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    while let Some((len, rest)) = bytes.split_first_chunk::<2>() {
        let n = usize::from(u16::from_le_bytes(*len)).min(rest.len());
        let (r, rest) = rest.split_at_checked(n).ok_or(fuzz_err("split"))?;
        out.try_reserve(1)?;
        out.push(r);
        bytes = rest;
        if out.len() >= 16 {
            break;
        }
    }
    Ok(out)
}

/// Joins records as [`split_records`] reads them.
fn join_records(recs: &[&[u8]]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for r in recs {
        let n = u16::try_from(r.len()).map_err(|_| fuzz_err("record too long"))?;
        out.try_reserve(2 + r.len())?;
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(r);
    }
    Ok(out)
}

const JOURNAL_BLOCKS: u64 = 32;
const CHUNK_REGION_BLOCKS: u64 = 16;

/// The log store's root and its journal replay: byte 0..ROOT is decoded as
/// a store root; then the input, split into length-prefixed records, is
/// written as authentic journal commits and the store is opened on them
/// (record decoding, replay, chunk claims), and every log is read.
pub fn log_store(bytes: &[u8]) -> Result<()> {
    let _ = StoreRoot::parse(bytes.get(..StoreRoot::ENCODED_LEN).unwrap_or(bytes));
    let recs = split_records(bytes)?;
    let dev = Arc::new(MemDisk::new(JOURNAL_BLOCKS + CHUNK_REGION_BLOCKS)?);
    let crypto = DetCrypto::shared(5);
    let journal = BlockRange::new(dev.clone(), 0, JOURNAL_BLOCKS)?;
    let root = crate::log::fuzz_hooks::fuzz_seal_journal(journal, crypto.clone(), &KEY, &recs)?;
    let journal = BlockRange::new(dev.clone(), 0, JOURNAL_BLOCKS)?;
    let chunks = BlockRange::new(dev, JOURNAL_BLOCKS, CHUNK_REGION_BLOCKS)?;
    let store = TxLogStore::open(journal, chunks, crypto, &KEY, &root)?;
    let mut buf = [0u8; BLOCK_SIZE];
    for tag in [TAG_WAL, 0x1234] {
        for id in store.try_logs_with_tag(tag)? {
            let _ = store.log_len(id);
            let _ = store.is_sealed(id);
            let _ = store.read(id, 0, &mut buf);
        }
    }
    Ok(())
}

// --- lsm layer ---------------------------------------------------------------

/// An LSM table of the disk's index: whole blocks, the last the footer.
pub fn lsm_table(bytes: &[u8]) -> Result<()> {
    crate::lsm::fuzz_hooks::table::<BlockRecord>(bytes)
}

/// One WAL block of the disk's index.
pub fn lsm_wal(bytes: &[u8]) -> Result<()> {
    crate::lsm::fuzz_hooks::wal_block::<BlockRecord>(bytes)
}

/// One log of [`MemLogStore`].
#[derive(Clone)]
struct MemLog {
    id: u64,
    tag: u64,
    blocks: Vec<u8>,
    sealed: bool,
}

/// A log store in memory whose state comes from the fuzz input: the tree
/// header lives in its user state, the WALs and tables in its logs.
#[derive(Clone, Default)]
pub struct MemLogStore {
    logs: Vec<MemLog>,
    user_state: Vec<u8>,
    next_id: u64,
    saved: Option<Box<MemLogStore>>,
}

impl MemLogStore {
    fn log(&self, id: u64) -> Result<&MemLog> {
        self.logs
            .iter()
            .find(|l| l.id == id)
            .ok_or(fuzz_err("no such log"))
    }

    fn log_mut(&mut self, id: u64) -> Result<&mut MemLog> {
        self.logs
            .iter_mut()
            .find(|l| l.id == id)
            .ok_or(fuzz_err("no such log"))
    }

    /// Reads a store written by [`Self::emit`]: `u16` user state length,
    /// the user state, then logs: tag selector `u8` (0..=6 table level, 7
    /// WAL, 8 manifest, else another tag), block count `u8`, log id `u8`
    /// (unique), the blocks (zero-padded where the input ends).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let (len, rest) = bytes
            .split_first_chunk::<2>()
            .ok_or(fuzz_err("no user state"))?;
        let n = usize::from(u16::from_le_bytes(*len)).min(rest.len());
        let (us, mut rest) = rest.split_at_checked(n).ok_or(fuzz_err("user state"))?;
        let mut s = Self::default();
        s.user_state.try_reserve_exact(us.len())?;
        s.user_state.extend_from_slice(us);
        while let Some((&[sel, nblocks, id], body)) = rest.split_first_chunk::<3>() {
            let tag = match sel % 10 {
                l @ 0..=6 => table_tag(l),
                7 => TAG_WAL,
                8 => crate::lsm::TAG_MANIFEST,
                _ => 0x1234,
            };
            let id = u64::from(id);
            if s.logs.iter().any(|l| l.id == id) {
                return Err(fuzz_err("two logs of one id"));
            }
            let len = usize::from(nblocks) * BLOCK_SIZE;
            let take = len.min(body.len());
            let (data, next) = body.split_at_checked(take).ok_or(fuzz_err("log"))?;
            let mut blocks = Vec::new();
            blocks.try_reserve_exact(len)?;
            blocks.extend_from_slice(data);
            blocks.resize(len, 0);
            s.logs.try_reserve(1)?;
            s.logs.push(MemLog {
                id,
                tag,
                blocks,
                sealed: true,
            });
            s.next_id = s.next_id.max(id + 1);
            rest = next;
            if s.logs.len() >= 24 {
                break;
            }
        }
        Ok(s)
    }

    /// The input [`Self::parse`] reads back as this store.
    pub fn emit(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let n = u16::try_from(self.user_state.len()).map_err(|_| fuzz_err("user state"))?;
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&self.user_state);
        for l in &self.logs {
            let sel = (0..7u8)
                .find(|&lv| table_tag(lv) == l.tag)
                .unwrap_or(if l.tag == TAG_WAL {
                    7
                } else if l.tag == crate::lsm::TAG_MANIFEST {
                    8
                } else {
                    9
                });
            let nb = u8::try_from(l.blocks.len() / BLOCK_SIZE).map_err(|_| fuzz_err("log"))?;
            let id = u8::try_from(l.id).map_err(|_| fuzz_err("log id"))?;
            out.try_reserve(3 + l.blocks.len())?;
            out.extend_from_slice(&[sel, nb, id]);
            out.extend_from_slice(&l.blocks);
        }
        Ok(out)
    }
}

impl LogStore for MemLogStore {
    type LogId = u64;

    fn begin(&mut self) -> Result<()> {
        let mut snap = self.clone();
        snap.saved = None;
        self.saved = Some(Box::new(snap));
        Ok(())
    }
    fn create_log(&mut self, tag: u64) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        self.logs.try_reserve(1)?;
        self.logs.push(MemLog {
            id,
            tag,
            blocks: Vec::new(),
            sealed: false,
        });
        Ok(id)
    }
    fn append(&mut self, log: u64, blocks: &[u8]) -> Result<()> {
        let l = self.log_mut(log)?;
        if l.sealed || blocks.len() % BLOCK_SIZE != 0 {
            return Err(fuzz_err("append"));
        }
        l.blocks.try_reserve(blocks.len())?;
        l.blocks.extend_from_slice(blocks);
        Ok(())
    }
    fn seal(&mut self, log: u64) -> Result<()> {
        self.log_mut(log)?.sealed = true;
        Ok(())
    }
    fn delete_log(&mut self, log: u64) -> Result<()> {
        self.log(log)?;
        self.logs.retain(|l| l.id != log);
        Ok(())
    }
    fn commit(&mut self, user_state: &[u8]) -> Result<()> {
        self.user_state.clear();
        self.user_state.try_reserve_exact(user_state.len())?;
        self.user_state.extend_from_slice(user_state);
        self.saved = None;
        Ok(())
    }
    fn abort(&mut self) {
        if let Some(s) = self.saved.take() {
            *self = *s;
        }
    }
    fn read(&self, log: u64, pos: u64, buf: &mut [u8]) -> Result<()> {
        let l = self.log(log)?;
        let start = usize::try_from(pos)
            .ok()
            .and_then(|p| p.checked_mul(BLOCK_SIZE))
            .ok_or(fuzz_err("read past the log"))?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| l.blocks.get(start..end))
            .ok_or(fuzz_err("read past the log"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn log_len(&self, log: u64) -> Result<u64> {
        Ok((self.log(log)?.blocks.len() / BLOCK_SIZE) as u64)
    }
    fn log_key(&self, log: u64) -> u64 {
        log
    }
    fn logs_with_tag(&self, tag: u64) -> Result<Vec<u64>> {
        let mut v = Vec::new();
        for l in self.logs.iter().filter(|l| l.tag == tag) {
            v.try_reserve(1)?;
            v.push(l.id);
        }
        Ok(v)
    }
    fn user_state(&self) -> &[u8] {
        &self.user_state
    }
}

fn tree_cfg() -> LsmConfig {
    LsmConfig::tiny()
}

/// The whole index tree from a [`MemLogStore`] encoding: the tree header
/// (in the user state), table footers, index, filter and data blocks, WAL
/// replay; then lookups, a scan, updates and a sync on what opened.
pub fn lsm_tree(bytes: &[u8]) -> Result<()> {
    let store = MemLogStore::parse(bytes)?;
    let mut t = LsmTree::<MemLogStore, BlockRecord>::open_boxed(store, tree_cfg())?;
    for k in 0..48 {
        let _ = t.get(k);
    }
    let mut n = 0u32;
    let _ = t.for_each(&mut |_, _| {
        n += 1;
        Ok(())
    });
    for k in 0..4 {
        let v = record_value(k + 100)?;
        if t.put(k * 7, v).is_err() {
            return Ok(());
        }
    }
    let _ = t.delete(3);
    let _ = t.sync(b"after");
    let _ = t.get(7);
    Ok(())
}

// --- disk layer --------------------------------------------------------------

/// The superblock payload (after the slot's authentication): bytes 0..8
/// are the device size in blocks, the rest the payload; then the geometry
/// and store root it carries. Also the geometry and the index's user state
/// decoders on the raw payload bytes.
pub fn superblock_payload(bytes: &[u8]) -> Result<()> {
    let (dev, payload) = bytes
        .split_first_chunk::<8>()
        .ok_or(fuzz_err("no device size"))?;
    let dev_blocks = u64::from_le_bytes(*dev);
    let _ = Geometry::parse(payload);
    let _ = UserState::parse(payload);
    let _ = BlockRecord::parse_from(payload);
    let sp = SuperPayload::parse(payload, dev_blocks)?;
    let _ = sp.geo.validate(dev_blocks);
    StoreRoot::parse(&sp.root).map(|_| ())
}

/// The rollback anchor's two slots (`bytes` are its device's two blocks),
/// bound to the disk with the fixed UUID of [`seeds`]; also the payload
/// decoder on the raw bytes.
pub fn block_anchor(bytes: &[u8]) -> Result<()> {
    let _ = block_anchor::parse(bytes, &ANCHOR_UUID);
    let d = disk_with(bytes, 2)?;
    let mut a = BlockAnchor::new(d, DetCrypto::shared(6), &KEY)?;
    a.bind(&ANCHOR_UUID, false)?;
    let c = a.read()?.unwrap_or(AnchorState::genesis());
    let mut digest = c.digest;
    digest[0] ^= 1;
    a.advance(c.counter.saturating_add(1), &digest)
}

const ANCHOR_UUID: [u8; 16] = [0x42; 16];

/// The disk of the `image` target: tiny regions, a tiny tree.
fn image_cfg() -> DiskConfig {
    let lsm = LsmConfig {
        memtable_entries: 16,
        wal_max_blocks: 8,
        meta_cache_blocks: 16,
        data_cache_blocks: 16,
        l0_max_tables: 2,
        l1_max_records: 64,
        level_ratio: 4,
        table_max_records: 64,
        step_records: 32,
        ..LsmConfig::default()
    };
    DiskConfig {
        store: LogStoreConfig {
            chunk_blocks: 4,
            ..LogStoreConfig::default()
        },
        lsm,
        layout: LayoutConfig {
            seg_blocks: 8,
            op_percent: 10,
            journal_blocks: 64,
            index_blocks: 256,
        },
        write_buffer_blocks: 8,
        clean_batch_segments: 2,
        meta_write_buffer_blocks: 8,
        ..DiskConfig::default()
    }
}

/// Blocks of the `image` target's device.
pub const IMAGE_BLOCKS: u64 = 2 + 64 + 256 + 16 * 8;
/// LBAs the `image` target's model covers.
const MODEL_LBAS: u64 = 16;

/// A block holding `(lba, tag)`; tag 0 is the zero block.
fn pattern(lba: u64, tag: u8) -> [u8; BLOCK_SIZE] {
    let mut b = [0u8; BLOCK_SIZE];
    if tag != 0 {
        for (i, w) in b.chunks_exact_mut(8).enumerate() {
            let v = lba ^ (u64::from(tag) << 40) ^ (i as u64).wrapping_mul(0x9e37_79b9);
            w.copy_from_slice(&v.to_le_bytes());
        }
    }
    b
}

/// The image the `image` target mutates, and the tags each LBA may show.
struct Image {
    bytes: Vec<u8>,
    allowed: Vec<Vec<u8>>,
}

fn make_image() -> Result<Image> {
    let dev = Arc::new(MemDisk::new(IMAGE_BLOCKS)?);
    let mut d = MlsDisk::create(
        dev.clone(),
        DetCrypto::shared(7),
        &KEY,
        image_cfg(),
        Box::new(NoAnchor),
    )?;
    let mut allowed = Vec::new();
    allowed.resize_with(MODEL_LBAS as usize, || alloc::vec![0u8]);
    // Two synced versions, the second over half of the first, one discard.
    for (tag, lbas) in [(1u8, 0..12u64), (2, 0..6)] {
        for lba in lbas {
            d.write(lba, &pattern(lba, tag))?;
            if let Some(a) = allowed.get_mut(lba as usize) {
                a.push(tag);
            }
        }
        d.sync()?;
    }
    d.discard(9, 1)?;
    d.sync()?;
    let bytes = dev.snapshot()?;
    drop(d);
    Ok(Image { bytes, allowed })
}

fn base_image() -> Result<&'static Image> {
    static IMAGE: std::sync::OnceLock<Option<Image>> = std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| make_image().ok())
        .as_ref()
        .ok_or(fuzz_err("image fixture"))
}

/// Reads every modelled LBA; a read that succeeds must show an allowed tag.
fn check_reads<D: BlockSet>(
    d: &mut MlsDisk<D>,
    allowed: &[Vec<u8>],
) -> core::result::Result<(), &'static str> {
    let mut buf = [0u8; BLOCK_SIZE];
    for (lba, tags) in (0u64..).zip(allowed) {
        if d.read(lba, &mut buf).is_ok() && !tags.iter().any(|&t| pattern(lba, t) == buf) {
            return Err("a read returned bytes that are in no version of the block");
        }
    }
    Ok(())
}

/// The structure-aware target: the fuzz input is a list of 5-byte
/// mutations (`u32` offset into the image, modulo its size; byte XORed in)
/// applied to a small valid image; the disk is then opened and read,
/// written, synced and reopened. Every successful read must return a
/// version of the block that the model knows (any synced version: without
/// a rollback anchor an older slot may win) or, after a write that
/// succeeded, the written block. `Err` only for a model violation; engine
/// errors are the expected outcome of tampering.
pub fn image(bytes: &[u8]) -> core::result::Result<(), &'static str> {
    let Ok(base) = base_image() else {
        return Err("the image fixture could not be made");
    };
    let mut img = base.bytes.clone();
    let len = img.len() as u64;
    for m in bytes.chunks_exact(5).take(64) {
        if let [a, b, c, e, x] = *m {
            let off = u64::from(u32::from_le_bytes([a, b, c, e])) % len;
            if let Some(byte) = img.get_mut(off as usize) {
                *byte ^= x;
            }
        }
    }
    let Ok(dev) = MemDisk::new(IMAGE_BLOCKS).map(Arc::new) else {
        return Err("no memory for the image");
    };
    if dev.restore(&img).is_err() {
        return Err("image size");
    }
    let open = |seed| {
        MlsDisk::open(
            dev.clone(),
            DetCrypto::shared(seed),
            &KEY,
            image_cfg(),
            Box::new(NoAnchor),
        )
    };
    let Ok(mut d) = open(8) else {
        return Ok(());
    };
    let mut allowed = base.allowed.clone();
    check_reads(&mut d, &allowed)?;
    // Writes: what a successful write put there is what a read must see.
    let mut buf = [0u8; BLOCK_SIZE];
    for lba in [1u64, 9, 14] {
        if let Some(a) = allowed.get_mut(lba as usize) {
            a.push(9);
        }
        if d.write(lba, &pattern(lba, 9)).is_ok()
            && d.read(lba, &mut buf).is_ok()
            && buf != pattern(lba, 9)
        {
            return Err("a read after a write returned other bytes");
        }
    }
    if d.discard(4, 1).is_ok() && d.read(4, &mut buf).is_ok() && buf != pattern(4, 0) {
        return Err("a read after a discard returned other bytes");
    }
    let synced = d.sync().is_ok();
    check_reads(&mut d, &allowed)?;
    drop(d);
    if synced {
        if let Ok(mut d) = open(9) {
            check_reads(&mut d, &allowed)?;
        }
    }
    Ok(())
}

/// Opens the unmutated image and checks two blocks against the model (the
/// regression test's proof that the `image` target's opens can succeed).
pub fn image_clean_open() -> Result<()> {
    let base = base_image()?;
    let dev = Arc::new(MemDisk::new(IMAGE_BLOCKS)?);
    dev.restore(&base.bytes)?;
    let mut d = MlsDisk::open(
        dev,
        DetCrypto::shared(8),
        &KEY,
        image_cfg(),
        Box::new(NoAnchor),
    )?;
    let mut buf = [0u8; BLOCK_SIZE];
    for (lba, tag) in [(0u64, 2u8), (8, 1), (9, 0)] {
        d.read(lba, &mut buf)?;
        if buf != pattern(lba, tag) {
            return Err(Error::new(
                ErrorKind::Integrity,
                "fuzz image: model differs",
            ));
        }
    }
    Ok(())
}

// --- seeds -------------------------------------------------------------------

/// A seed: target, file name, bytes.
pub type Seed = (&'static str, &'static str, Vec<u8>);

/// A few valid encodings per target of this crate (`dm_table` and
/// `keyring_ref` seeds are text, written by the regression test itself).
/// A generator of fixed-size test data, not a path disk data reaches.
#[allow(clippy::indexing_slicing)]
pub fn seeds() -> Result<Vec<Seed>> {
    let mut out: Vec<Seed> = Vec::new();

    // Superblock slots: a fresh blob, and one written once more.
    let d = Arc::new(MemDisk::new(2)?);
    let mut blob = AuthBlob::create(d.clone(), 0, DetCrypto::shared(10), &KEY, b"payload v1")?;
    out.push(("superblock_slot", "seed-created", disk_bytes(&d, 2)?));
    blob.write(&[7u8; 300])?;
    out.push(("superblock_slot", "seed-rewritten", disk_bytes(&d, 2)?));

    // Superblock payload: a real disk's, with the device size in front.
    let geo = Geometry::compute(IMAGE_BLOCKS, &image_cfg().layout)?;
    let mut root = [0u8; StoreRoot::ENCODED_LEN];
    let rootd = Arc::new(MemDisk::new(JOURNAL_BLOCKS + CHUNK_REGION_BLOCKS)?);
    let store = TxLogStore::format(
        BlockRange::new(rootd.clone(), 0, JOURNAL_BLOCKS)?,
        BlockRange::new(rootd, JOURNAL_BLOCKS, CHUNK_REGION_BLOCKS)?,
        DetCrypto::shared(11),
        &KEY,
        LogStoreConfig {
            chunk_blocks: 4,
            ..LogStoreConfig::default()
        },
    )?;
    store.root().emit(&mut root)?;
    for (name, key_len) in [("seed-aes128", 16u8), ("seed-aes256", 32)] {
        let sp = SuperPayload {
            uuid: [3; 16],
            geo,
            data_key_len: key_len,
            sync_counter: 5,
            root: root.to_vec(),
        };
        let mut b = IMAGE_BLOCKS.to_le_bytes().to_vec();
        b.extend_from_slice(&sp.emit()?);
        out.push(("superblock_payload", name, b));
    }

    // Journal: the fixture chain's ring, and chain positions / streams.
    out.push(("journal_chain", "seed-ring", chain()?.region.clone()));

    // Log store records.
    let snap = crate::log::fuzz_hooks::record_seed(false, 1, 0, 2, None, b"state")?;
    let delta = crate::log::fuzz_hooks::record_seed(true, 2, 2, 1, Some(0), b"")?;
    out.push(("log_record", "seed-snapshot", snap.clone()));
    out.push(("log_record", "seed-delta", delta.clone()));
    out.push(("log_store", "seed-snapshot", join_records(&[&snap])?));
    out.push((
        "log_store",
        "seed-snapshot-delta",
        join_records(&[&snap, &delta])?,
    ));

    // Merkle node: level 0 with two entries, level 1 with one.
    for (name, level, n) in [("seed-leaf", 0u8, 2u16), ("seed-inner", 1, 1)] {
        let mut b = alloc::vec![level];
        let mut node = [0u8; BLOCK_SIZE];
        node[..4].copy_from_slice(&crypto_log::NODE_MAGIC);
        node[4] = crypto_log::NODE_VERSION;
        node[5] = crypto_log::NODE_TYPE;
        node[6] = level;
        node[7] = 32;
        node[8..10].copy_from_slice(&n.to_le_bytes());
        for (i, e) in node[crypto_log::NODE_HEADER_LEN..]
            .chunks_exact_mut(crypto_log::ENTRY_LEN)
            .take(usize::from(n))
            .enumerate()
        {
            e[..8].copy_from_slice(&(i as u64 + 3).to_le_bytes());
            e[8..40].fill(i as u8 + 1);
            e[40..].fill(0xee);
        }
        b.extend_from_slice(&node);
        out.push(("merkle_node", name, b));
    }

    // LSM tables and WAL blocks.
    out.push((
        "lsm_table",
        "seed-small",
        crate::lsm::fuzz_hooks::table_seed(10, 20, 10, &record_value)?,
    ));
    out.push((
        "lsm_table",
        "seed-no-bloom",
        crate::lsm::fuzz_hooks::table_seed(0, 150, 0, &record_value)?,
    ));
    out.push((
        "lsm_wal",
        "seed-gen1",
        crate::lsm::fuzz_hooks::wal_seed(1, 0, 5, &record_value)?,
    ));
    out.push((
        "lsm_wal",
        "seed-full",
        crate::lsm::fuzz_hooks::wal_seed(4, 100, 1000, &record_value)?,
    ));

    // A whole tree: formatted, filled past a few flushes, synced.
    let mut t = LsmTree::<MemLogStore, BlockRecord>::format(MemLogStore::default(), tree_cfg())?;
    t.sync(b"empty tree")?;
    out.push(("lsm_tree", "seed-empty", t.store().emit()?));
    for k in 0..30u64 {
        t.put(k * 3 % 40, record_value(k)?)?;
        if k % 7 == 6 {
            t.delete(k)?;
            t.sync(b"user")?;
        }
    }
    t.sync(b"user")?;
    out.push(("lsm_tree", "seed-filled", t.store().emit()?));

    // Rollback anchor: bound, then advanced.
    let d = Arc::new(MemDisk::new(2)?);
    let mut a = BlockAnchor::new(d.clone(), DetCrypto::shared(12), &KEY)?;
    a.bind(&ANCHOR_UUID, true)?;
    a.advance(3, &[7u8; crate::platform::HASH_LEN])?;
    out.push(("block_anchor", "seed-advanced", disk_bytes(&d, 2)?));

    // Image: no mutation, and one flip in the data region.
    out.push(("image", "seed-none", Vec::new()));
    let off = u32::try_from((IMAGE_BLOCKS - 4) * BLOCK_SIZE as u64).map_err(|_| fuzz_err("off"))?;
    let mut m = off.to_le_bytes().to_vec();
    m.push(1);
    out.push(("image", "seed-data-flip", m));
    Ok(out)
}

/// The block record the seeds store for key `k`.
fn record_value(k: u64) -> Result<BlockRecord> {
    let mut key = [0u8; 32];
    key.iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (k as u8).wrapping_add(i as u8));
    Ok(BlockRecord {
        hba: k,
        key: crate::platform::AeadKey::from_slice(&key)?,
        mac: [k as u8; 16],
    })
}
