//! The real index: the transactional LSM-tree on the log store, and the
//! `create`/`open` of a disk with a superblock.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;

use super::coalesce::Coalesce;
use super::counted::Counted;
use super::index::{DiskIndex, Room};
use super::layout::{Geometry, IndexShape};
use super::record::BlockRecord;
use super::state::{SuperPayload, UserState};
use super::{DiskConfig, MlsDisk, RollbackAnchor, SuperblockSink};
use crate::bio::{BlockRange, BlockSet, BLOCK_SIZE};
use crate::crypto::AuthBlob;
use crate::log::LogStoreConfig;
use crate::log::{StoreRoot, TxLogStore};
use crate::lsm::LsmConfig;
use crate::lsm::{LsmTree, LsmValue};
use crate::platform::{kdf, wipe};
use crate::{ensure, CryptoRef, Error, ErrorKind, Result};

type Dev<D> = Arc<Counted<D>>;
type Meta<D> = Arc<Coalesce<Dev<D>>>;
type Tree<D> = LsmTree<TxLogStore<Meta<D>>, BlockRecord>;
type Region<D> = BlockRange<Meta<D>>;

impl LsmValue for BlockRecord {
    const SIZE: usize = BlockRecord::SIZE;

    fn emit(&self, out: &mut [u8]) {
        // `out` is exactly SIZE bytes and `hba` fits 56 bits (the data
        // region is far smaller); a failure leaves zeros, which decode
        // rejects, so it cannot go unnoticed.
        if self.emit_into(out).is_err() {
            out.fill(0);
        }
    }

    fn parse(b: &[u8]) -> Result<Self> {
        BlockRecord::parse_from(b)
    }
}

/// The tree lives on the heap (see [`LsmTree::open_boxed`]).
struct LsmIndex<D: BlockSet>(Box<Tree<D>>);

impl<D: BlockSet> DiskIndex for LsmIndex<D> {
    fn get(&mut self, lba: u64) -> Result<Option<BlockRecord>> {
        self.0.get(lba)
    }
    fn get_sorted(&mut self, lbas: &[u64], out: &mut Vec<Option<BlockRecord>>) -> Result<()> {
        self.0.get_sorted(lbas, out)
    }
    fn range(&mut self, from: u64, to: u64, out: &mut Vec<(u64, BlockRecord)>) -> Result<()> {
        self.0.range(from, to, out)
    }
    fn put(&mut self, lba: u64, rec: BlockRecord) -> Result<()> {
        self.0.put(lba, rec)
    }
    fn delete(&mut self, lba: u64) -> Result<()> {
        self.0.delete(lba)
    }
    fn sync(&mut self, user_state: &[u8]) -> Result<()> {
        self.0.sync(user_state)
    }
    fn user_state(&self) -> &[u8] {
        self.0.user_state()
    }
    fn for_each(&mut self, f: &mut dyn FnMut(u64, &BlockRecord) -> Result<()>) -> Result<()> {
        self.0.for_each(f)
    }
    fn background_step(&mut self) -> Result<bool> {
        self.0.compact_step()
    }
    /// The tree's conservative bound ([`LsmTree::space_for`]) against the
    /// store's free and pinned chunks. The batch size is announced to the
    /// tree first ([`LsmTree::expect_batch`], no data changes): it then
    /// starts a compaction only if it leaves room for such a batch, so the
    /// bound need not count the compactions it may start meanwhile.
    fn room_for(&mut self, updates: u64) -> Result<Room> {
        self.0.expect_batch(updates);
        let c = self.0.space_for(updates);
        if c.fits_now() {
            Ok(Room::Now)
        } else if c.fits_after_commit() {
            Ok(Room::AfterCommit)
        } else {
            Err(Error::new(
                ErrorKind::NoSpace,
                "index region full: the updates do not fit even after a commit",
            ))
        }
    }
    fn lsm_stats(&self) -> Option<crate::lsm::LsmStats> {
        Some(self.0.stats())
    }
    fn root(&self) -> Result<Vec<u8>> {
        let r = self.0.store().root().emit_array()?;
        let mut v = Vec::new();
        v.try_reserve_exact(r.len())?;
        v.extend_from_slice(&r);
        Ok(v)
    }
}

impl<D: BlockSet> SuperblockSink for AuthBlob<Dev<D>> {
    /// Both slots: the previous payload may name a journal chain the store
    /// has left (a move to the other half of the journal region), which
    /// still opens, one commit behind. A damaged newest slot must not make
    /// open fall back to it (tests/disk_superblock_fallback.rs).
    fn write(&mut self, payload: &[u8]) -> Result<()> {
        AuthBlob::write_both(self, payload)
    }
}

/// The key of the log store: derived from the root key and the disk UUID.
fn store_key(crypto: &CryptoRef, root_key: &[u8], uuid: &[u8; 16]) -> Result<[u8; 32]> {
    kdf(&**crypto, root_key, b"mlsdisk/disk/store/v1", uuid)
}

/// The journal and chunk regions, both behind one write-combining buffer.
fn regions<D: BlockSet>(
    dev: &Dev<D>,
    geo: &Geometry,
    cfg: &DiskConfig,
) -> Result<(Region<D>, Region<D>)> {
    let meta = Arc::new(Coalesce::new(
        dev.clone(),
        cfg.meta_write_buffer_blocks as usize,
    )?);
    Ok((
        BlockRange::new(meta.clone(), geo.journal_start, geo.journal_len)?,
        BlockRange::new(meta, geo.chunk_start, geo.chunk_len)?,
    ))
}

/// The log store's configuration for a new disk, with chunks small enough
/// that the index region has at least 256 of them: every log (each table,
/// each WAL generation) takes whole chunks, and a small disk's region of
/// 64-block chunks held too few logs for the tree (found by sustained
/// random writes on a 64 MiB disk). Chunks shrink in powers of two, to 4
/// blocks at least.
fn store_fitted(store: &LogStoreConfig, geo: &Geometry) -> LogStoreConfig {
    let mut chunk = store.chunk_blocks;
    while chunk >= 8 && geo.chunk_len / u64::from(chunk) < 256 {
        chunk /= 2;
    }
    LogStoreConfig {
        chunk_blocks: chunk,
        ..*store
    }
}

/// The LSM tuning, with the write-ahead log and the memtables capped to the
/// index region: until a memtable is flushed, its WAL (two generations)
/// holds every update since, and a WAL larger than the region would fill it
/// (the default cap of 2048 blocks is most of a small disk's region). Each
/// WAL generation may take a sixteenth of the region, and a memtable four
/// entries per region block (a flushed memtable is then a table of about a
/// sixteenth of the region too).
///
/// Then both are fitted to the disk's capacity as the index region was
/// sized at create ([`IndexShape::fit`]): memtables of at most an eighth
/// of the keys, a WAL of at most two memtables of blocks.
fn lsm_fitted(lsm: &LsmConfig, geo: &Geometry) -> LsmConfig {
    let region = geo.chunk_len;
    let wal_cap = (region / 16).max(8);
    let mem_cap = region.saturating_mul(4).max(256);
    let shape = shape_of(lsm).fit(geo.capacity);
    let mem = shape.memtable_entries.min(mem_cap);
    LsmConfig {
        wal_max_blocks: shape.wal_max_blocks.min(wal_cap),
        memtable_entries: usize::try_from(mem).unwrap_or(usize::MAX),
        ..lsm.clone()
    }
}

/// The shape of the tree `lsm` builds, for sizing the index region.
fn shape_of(lsm: &LsmConfig) -> IndexShape {
    IndexShape {
        record_bytes: 8 + 1 + BlockRecord::SIZE as u64,
        memtable_entries: lsm.memtable_entries as u64,
        wal_max_blocks: lsm.wal_max_blocks,
        l0_tables: (lsm.l0_max_tables as u64)
            .saturating_mul(crate::lsm::L0_STALL_FACTOR as u64)
            .saturating_add(1),
        l1_max_records: lsm.l1_max_records,
        level_ratio: lsm.level_ratio,
        bloom_bits_per_key: u64::from(lsm.bloom_bits_per_key),
        table_max_records: lsm.table_max_records,
    }
}

impl DiskConfig {
    /// The geometry [`MlsDisk::create`] gives a device of `total` blocks
    /// with this configuration (the index region sized for its LSM shape).
    pub fn geometry(&self, total: u64) -> Result<Geometry> {
        Geometry::compute_for(total, &self.layout, &shape_of(&self.lsm))
    }

    /// The log store and LSM configurations a disk with this
    /// configuration and geometry runs its index with (fitted to the
    /// region and the capacity).
    pub fn index_configs(&self, geo: &Geometry) -> (LogStoreConfig, LsmConfig) {
        (
            store_fitted(&self.store, geo),
            lsm_fitted(&self.lsm_with_budget(), geo),
        )
    }
}

/// What `open` has read before the disk is put together.
struct Opened<D: BlockSet> {
    blob: AuthBlob<Dev<D>>,
    sp: SuperPayload,
    index: Box<dyn DiskIndex>,
}

impl<D: BlockSet + 'static> MlsDisk<D> {
    /// Makes a new disk on `dev` (everything on it is lost) and returns it
    /// open. The superblock is written last: a crash before `create`
    /// returns leaves a device that does not open.
    pub fn create(
        dev: D,
        crypto: CryptoRef,
        root_key: &[u8],
        cfg: DiskConfig,
        anchor: Box<dyn RollbackAnchor>,
    ) -> Result<Self> {
        ensure!(
            root_key.len() == 16 || root_key.len() == 32,
            InvalidArgument,
            "root key must be 16 or 32 bytes"
        );
        let dev = Arc::new(Counted::new(dev));
        // In stages with frames of their own (see `open`).
        let (geo, uuid, index) = Self::create_index(&dev, &crypto, root_key, &cfg)?;
        Self::create_finish(dev, crypto, root_key, cfg, anchor, geo, uuid, index)
    }

    /// Wipes the superblock slots and formats an empty index.
    #[inline(never)]
    fn create_index(
        dev: &Dev<D>,
        crypto: &CryptoRef,
        root_key: &[u8],
        cfg: &DiskConfig,
    ) -> Result<(Geometry, [u8; 16], Box<dyn DiskIndex>)> {
        let geo = cfg.geometry(dev.nblocks())?;
        // Wipe the superblock slots first, so a crash during create never
        // leaves an older disk's superblock pointing into new metadata.
        let mut zero = Vec::new();
        zero.try_reserve_exact(2 * BLOCK_SIZE)?;
        zero.resize(2 * BLOCK_SIZE, 0);
        dev.write(0, &zero)?;
        dev.flush()?;
        let mut uuid = [0u8; 16];
        crypto.fill_random(&mut uuid)?;
        // Nothing fallible between deriving the store key and its wipe.
        let (journal, chunks) = regions(dev, &geo, cfg)?;
        let mut sk = store_key(crypto, root_key, &uuid)?;
        let store = TxLogStore::format(
            journal,
            chunks,
            crypto.clone(),
            &sk,
            store_fitted(&cfg.store, &geo),
        );
        wipe(&mut sk);
        let mut store = store?;
        if let Some(c) = cfg.cache_split() {
            store.set_node_cache(c.node_cache_nodes);
        }
        let tree = LsmTree::format_boxed(store, lsm_fitted(&cfg.lsm_with_budget(), &geo))?;
        Ok((geo, uuid, Box::new(LsmIndex::<D>(tree))))
    }

    /// Puts the new disk together, makes its first commit and writes the
    /// superblock (last).
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn create_finish(
        dev: Dev<D>,
        crypto: CryptoRef,
        root_key: &[u8],
        cfg: DiskConfig,
        anchor: Box<dyn RollbackAnchor>,
        geo: Geometry,
        uuid: [u8; 16],
        index: Box<dyn DiskIndex>,
    ) -> Result<Self> {
        let mut d = Self::assemble(
            dev.clone(),
            crypto.clone(),
            geo,
            uuid,
            cfg,
            index,
            None,
            anchor,
        )?;
        d.anchor.bind(&uuid, true)?;
        d.commit(false)?;
        let payload = d.super_payload()?;
        let blob = AuthBlob::create(dev, 0, crypto, root_key, &payload)?;
        d.sb = Some(Box::new(blob));
        Ok(d)
    }

    /// Opens a disk made by [`MlsDisk::create`] and recovers its last synced
    /// state. Errors: `WrongKey` (the key does not open the superblock),
    /// `Rollback` (older than the anchor), `Integrity` / `Corrupted`
    /// (tampered or not an MlsDisk), `Io`.
    ///
    /// Of `cfg`, the layout and data key length come from the superblock;
    /// the rest (buffers, cleaning, LSM tuning) from the argument.
    pub fn open(
        dev: D,
        crypto: CryptoRef,
        root_key: &[u8],
        cfg: DiskConfig,
        anchor: Box<dyn RollbackAnchor>,
    ) -> Result<Self> {
        // In stages, each its own (small) stack frame: in the kernel this
        // runs on a worker's 16 KiB stack, under the index's deep read path.
        let dev = Arc::new(Counted::new(dev));
        let opened = Self::open_index(&dev, &crypto, root_key, &cfg)?;
        Self::open_finish(dev, crypto, cfg, anchor, opened)
    }

    /// Opens the superblock and the index under it.
    #[inline(never)]
    fn open_index(
        dev: &Dev<D>,
        crypto: &CryptoRef,
        root_key: &[u8],
        cfg: &DiskConfig,
    ) -> Result<Box<Opened<D>>> {
        let (blob, payload) = AuthBlob::open(dev.clone(), 0, crypto.clone(), root_key)?;
        let sp = SuperPayload::parse(&payload, dev.nblocks())?;
        let root = StoreRoot::parse(&sp.root)?;
        let (journal, chunks) = regions(dev, &sp.geo, cfg)?;
        let mut sk = store_key(crypto, root_key, &sp.uuid)?;
        let store = TxLogStore::open(journal, chunks, crypto.clone(), &sk, &root);
        wipe(&mut sk);
        let mut store = store?;
        if let Some(c) = cfg.cache_split() {
            store.set_node_cache(c.node_cache_nodes);
        }
        let tree = LsmTree::open_boxed(store, lsm_fitted(&cfg.lsm_with_budget(), &sp.geo))?;
        let us = UserState::parse(tree.user_state())?;
        if us.sync_counter < sp.sync_counter {
            return Err(Error::new(
                ErrorKind::Rollback,
                "index is older than the superblock (journal rolled back)",
            ));
        }
        Ok(Box::new(Opened {
            blob,
            sp,
            index: Box::new(LsmIndex::<D>(tree)),
        }))
    }

    /// Puts the disk together around an open index and recovers its state.
    #[inline(never)]
    fn open_finish(
        dev: Dev<D>,
        crypto: CryptoRef,
        cfg: DiskConfig,
        anchor: Box<dyn RollbackAnchor>,
        opened: Box<Opened<D>>,
    ) -> Result<Self> {
        let Opened { blob, sp, index } = *opened;
        let cfg = DiskConfig {
            data_key_len: sp.data_key_len,
            ..cfg
        };
        let mut d = Self::assemble(
            dev,
            crypto,
            sp.geo,
            sp.uuid,
            cfg,
            index,
            Some(Box::new(blob)),
            anchor,
        )?;
        d.recover()?;
        Ok(d)
    }

    fn super_payload(&self) -> Result<Vec<u8>> {
        SuperPayload {
            uuid: self.uuid,
            geo: self.geo,
            data_key_len: self.cfg.data_key_len,
            sync_counter: self.sync_counter,
            root: self.index.root()?,
        }
        .emit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bio::MemDisk;
    use crate::disk::NoAnchor;
    use crate::platform::StdCrypto;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn create_open_round_trip_and_send() {
        let dev = Arc::new(MemDisk::new(8192).unwrap());
        let crypto: CryptoRef = Arc::new(StdCrypto);
        let key = [7u8; 16];
        let mut d = MlsDisk::create(
            dev.clone(),
            crypto.clone(),
            &key,
            DiskConfig::default(),
            Box::new(NoAnchor),
        )
        .unwrap();
        assert_send(&d);
        let blk = vec![0xabu8; BLOCK_SIZE];
        d.write(5, &blk).unwrap();
        d.close().unwrap();
        let mut d =
            MlsDisk::open(dev, crypto, &key, DiskConfig::default(), Box::new(NoAnchor)).unwrap();
        let mut r = vec![0u8; BLOCK_SIZE];
        d.read(5, &mut r).unwrap();
        assert_eq!(r, blk);
        assert_eq!(d.stats().sync_counter, 2);
    }
}
