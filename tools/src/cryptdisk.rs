//! `CryptDisk`: the encrypt-only baseline of the benchmark.
//!
//! Same crypto as MlsDisk (AES-GCM, per-disk key, a fresh random 96-bit IV
//! per write, AAD = LBA), written in place, with the IV and MAC stored
//! beside the data: the device is cut into groups of 128 blocks, block 0 of
//! each group holding the (IV, MAC) of the 127 data blocks after it. The
//! metadata blocks are cached in memory and written back at sync, so a
//! random 4 KiB write costs one device write, like dm-crypt. No freshness,
//! no atomicity, no crash consistency: that is what MlsDisk adds.

use std::sync::Arc;

use mlsdisk_core::bio::{BlockSet, BLOCK_SIZE};
use mlsdisk_core::platform::{kdf_key, AeadKey, Iv, Mac};
use mlsdisk_core::{CryptoRef, Error, ErrorKind, Result};

const GROUP: u64 = 128;
const PER_GROUP: u64 = GROUP - 1;
const ENTRY: usize = 12 + 16;

/// The encrypt-only baseline disk.
pub struct CryptDisk<D> {
    dev: D,
    crypto: CryptoRef,
    key: AeadKey,
    capacity: u64,
    meta: Vec<u8>,
    dirty: Vec<bool>,
    scratch: Vec<u8>,
}

impl<D: BlockSet> CryptDisk<D> {
    /// A fresh disk on `dev` (every block reads as zeros).
    pub fn create(dev: D, crypto: CryptoRef, root_key: &[u8]) -> Result<Self> {
        let groups = dev.nblocks() / GROUP;
        if groups == 0 {
            return Err(Error::new(ErrorKind::NoSpace, "device too small"));
        }
        let key = kdf_key(&*crypto, root_key, b"cryptdisk data", &[], 16)?;
        let d = Self {
            capacity: groups * PER_GROUP,
            meta: vec![0u8; groups as usize * BLOCK_SIZE],
            dirty: vec![true; groups as usize],
            scratch: Vec::new(),
            dev,
            crypto,
            key,
        };
        Ok(d)
    }

    /// Logical capacity in blocks.
    pub fn nblocks(&self) -> u64 {
        self.capacity
    }

    fn dev_block(lba: u64) -> u64 {
        lba / PER_GROUP * GROUP + 1 + lba % PER_GROUP
    }

    fn entry(&mut self, lba: u64) -> &mut [u8] {
        let g = (lba / PER_GROUP) as usize;
        let i = (lba % PER_GROUP) as usize;
        self.dirty[g] = true;
        &mut self.meta[g * BLOCK_SIZE + i * ENTRY..][..ENTRY]
    }

    fn check(&self, lba: u64, len: usize) -> Result<u64> {
        let n = (len / BLOCK_SIZE) as u64;
        if len == 0 || len % BLOCK_SIZE != 0 || lba + n > self.capacity {
            return Err(Error::new(ErrorKind::InvalidArgument, "bad request"));
        }
        Ok(n)
    }

    /// Encrypts and writes blocks in place: one device write for the whole
    /// request, the (cached, up-to-date) metadata blocks it spans included.
    pub fn write(&mut self, lba: u64, buf: &[u8]) -> Result<()> {
        let n = self.check(lba, buf.len())?;
        let mut ivs = vec![0u8; n as usize * 12];
        self.crypto.fill_random(&mut ivs)?;
        let first = Self::dev_block(lba);
        let last = Self::dev_block(lba + n - 1);
        let mut out = vec![0u8; ((last - first + 1) as usize) * BLOCK_SIZE];
        for k in 0..n {
            let l = lba + k;
            let off = ((Self::dev_block(l) - first) as usize) * BLOCK_SIZE;
            let blk = &mut out[off..off + BLOCK_SIZE];
            blk.copy_from_slice(&buf[k as usize * BLOCK_SIZE..][..BLOCK_SIZE]);
            let mut iv: Iv = [0; 12];
            iv.copy_from_slice(&ivs[k as usize * 12..][..12]);
            let mac = self
                .crypto
                .aead_seal(&self.key, &iv, &l.to_le_bytes(), blk)?;
            let e = self.entry(l);
            e[..12].copy_from_slice(&iv);
            e[12..].copy_from_slice(&mac);
        }
        // Metadata blocks inside the span go out with the data.
        let mut d = first;
        while d <= last {
            if d % GROUP == 0 {
                let g = (d / GROUP) as usize;
                let off = ((d - first) as usize) * BLOCK_SIZE;
                out[off..off + BLOCK_SIZE]
                    .copy_from_slice(&self.meta[g * BLOCK_SIZE..][..BLOCK_SIZE]);
                self.dirty[g] = false;
            }
            d += 1;
        }
        self.dev.write(first, &out)
    }

    /// Reads and decrypts blocks; never-written blocks read as zeros.
    pub fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<()> {
        let n = self.check(lba, buf.len())?;
        let first = Self::dev_block(lba);
        let last = Self::dev_block(lba + n - 1);
        let span = ((last - first + 1) as usize) * BLOCK_SIZE;
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.resize(span, 0);
        self.dev.read(first, &mut scratch)?;
        for (k, out) in buf.chunks_exact_mut(BLOCK_SIZE).enumerate() {
            let l = lba + k as u64;
            let off = ((Self::dev_block(l) - first) as usize) * BLOCK_SIZE;
            out.copy_from_slice(&scratch[off..off + BLOCK_SIZE]);
            let g = (l / PER_GROUP) as usize;
            let e = &self.meta[g * BLOCK_SIZE + (l % PER_GROUP) as usize * ENTRY..][..ENTRY];
            if e.iter().all(|&b| b == 0) {
                out.fill(0);
                continue;
            }
            let mut iv: Iv = [0; 12];
            iv.copy_from_slice(&e[..12]);
            let mut mac: Mac = [0; 16];
            mac.copy_from_slice(&e[12..]);
            self.crypto
                .aead_open(&self.key, &iv, &l.to_le_bytes(), out, &mac)?;
        }
        self.scratch = scratch;
        Ok(())
    }

    /// Writes back dirty metadata blocks, then flushes the device.
    pub fn sync(&mut self) -> Result<()> {
        for g in 0..self.dirty.len() {
            if self.dirty[g] {
                self.dev
                    .write(g as u64 * GROUP, &self.meta[g * BLOCK_SIZE..][..BLOCK_SIZE])?;
                self.dirty[g] = false;
            }
        }
        self.dev.flush()
    }
}

/// `CryptDisk` on a shared device.
pub type SharedCryptDisk<D> = CryptDisk<Arc<D>>;
