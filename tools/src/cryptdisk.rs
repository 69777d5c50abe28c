//! `CryptDisk`: the encrypt-only baseline of the benchmark.
//!
//! Same crypto as MlsDisk (AES-GCM, per-disk key, a fresh random 96-bit IV
//! per write, AAD = LBA), written in place, with the IV and MAC stored
//! beside the data: the device is cut into groups of 128 blocks, block 0 of
//! each group holding the (IV, MAC) of the 127 data blocks after it. The
//! metadata blocks are cached in memory and written back at sync, so a
//! random 4 KiB write costs one device write, like dm-crypt. No freshness,
//! no atomicity, no crash consistency: that is what MlsDisk adds.

use std::sync::{Arc, Mutex, MutexGuard};

use mlsdisk_core::bio::{AlignedBuf, BlockSet, BLOCK_SIZE};
use mlsdisk_core::platform::{kdf_key, AeadKey, Iv, Mac};
use mlsdisk_core::{CryptoRef, Error, ErrorKind, Result};

const GROUP: u64 = 128;
const PER_GROUP: u64 = GROUP - 1;
const ENTRY: usize = 12 + 16;
/// Locks over groups (group `g` is guarded by lock `g % STRIPES`).
const STRIPES: usize = 256;

/// The in-memory metadata: every group's (IV, MAC) block and whether it
/// differs from the device.
struct Meta {
    bytes: Vec<u8>,
    dirty: Vec<bool>,
}

/// The encrypt-only baseline disk. Reads and writes take `&self` and may
/// run on several threads at once, like dm-crypt: a request holds the
/// locks of the groups it spans (striped, so requests to different groups
/// run in parallel, and two requests to the same group are ordered, data
/// and metadata alike), and the metadata table only while it copies
/// entries.
pub struct CryptDisk<D> {
    dev: D,
    crypto: CryptoRef,
    key: AeadKey,
    capacity: u64,
    meta: Mutex<Meta>,
    stripes: Vec<Mutex<()>>,
}

fn poisoned<T>(_: T) -> Error {
    Error::new(ErrorKind::InvalidState, "cryptdisk: a lock was poisoned")
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
            meta: Mutex::new(Meta {
                bytes: vec![0u8; groups as usize * BLOCK_SIZE],
                dirty: vec![true; groups as usize],
            }),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            dev,
            crypto,
            key,
        };
        Ok(d)
    }

    /// [`Self::create`] on a device known to read as zeros (a file just
    /// created): its metadata blocks already hold what a fresh disk's do
    /// (all-zero entries: never written), so the first sync writes back only
    /// the groups written since, instead of every metadata block of the
    /// device (800 MiB on a 100 GiB disk: a format that `create` would
    /// otherwise leave to the first timed sync).
    pub fn create_zeroed(dev: D, crypto: CryptoRef, root_key: &[u8]) -> Result<Self> {
        let d = Self::create(dev, crypto, root_key)?;
        d.meta()?.dirty.iter_mut().for_each(|x| *x = false);
        Ok(d)
    }

    /// Logical capacity in blocks.
    pub fn nblocks(&self) -> u64 {
        self.capacity
    }

    fn dev_block(lba: u64) -> u64 {
        lba / PER_GROUP * GROUP + 1 + lba % PER_GROUP
    }

    fn check(&self, lba: u64, len: usize) -> Result<u64> {
        let n = (len / BLOCK_SIZE) as u64;
        if len == 0 || len % BLOCK_SIZE != 0 || lba + n > self.capacity {
            return Err(Error::new(ErrorKind::InvalidArgument, "bad request"));
        }
        Ok(n)
    }

    /// The locks of the groups of blocks `lba..lba + n`, taken in stripe
    /// order (so that two requests never wait for each other in a cycle).
    fn lock_groups(&self, lba: u64, n: u64) -> Result<Vec<MutexGuard<'_, ()>>> {
        let (g0, g1) = (lba / PER_GROUP, (lba + n - 1) / PER_GROUP);
        let mut ids: Vec<usize> = (g0..=g1).map(|g| (g % STRIPES as u64) as usize).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.iter()
            .map(|&i| self.stripes[i].lock().map_err(poisoned))
            .collect()
    }

    fn meta(&self) -> Result<MutexGuard<'_, Meta>> {
        self.meta.lock().map_err(poisoned)
    }

    /// Encrypts and writes blocks in place: one device write for the whole
    /// request, the (cached, up-to-date) metadata blocks it spans included.
    pub fn write(&self, lba: u64, buf: &[u8]) -> Result<()> {
        let n = self.check(lba, buf.len())?;
        let _groups = self.lock_groups(lba, n)?;
        let mut ivs = vec![0u8; n as usize * 12];
        self.crypto.fill_random(&mut ivs)?;
        let first = Self::dev_block(lba);
        let last = Self::dev_block(lba + n - 1);
        // Page-aligned, so that O_DIRECT takes it as it is (no bounce copy).
        let mut own = AlignedBuf::zeroed(((last - first + 1) as usize) * BLOCK_SIZE)?;
        let out = own.as_mut_slice();
        let mut entries = vec![0u8; n as usize * ENTRY];
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
            let e = &mut entries[k as usize * ENTRY..][..ENTRY];
            e[..12].copy_from_slice(&iv);
            e[12..].copy_from_slice(&mac);
        }
        {
            let mut m = self.meta()?;
            for k in 0..n {
                let l = lba + k;
                let g = (l / PER_GROUP) as usize;
                let i = (l % PER_GROUP) as usize;
                m.dirty[g] = true;
                m.bytes[g * BLOCK_SIZE + i * ENTRY..][..ENTRY]
                    .copy_from_slice(&entries[k as usize * ENTRY..][..ENTRY]);
            }
            // Metadata blocks inside the span go out with the data (their
            // groups are locked: no other request writes them meanwhile).
            let mut d = first;
            while d <= last {
                if d % GROUP == 0 {
                    let g = (d / GROUP) as usize;
                    let off = ((d - first) as usize) * BLOCK_SIZE;
                    out[off..off + BLOCK_SIZE]
                        .copy_from_slice(&m.bytes[g * BLOCK_SIZE..][..BLOCK_SIZE]);
                    m.dirty[g] = false;
                }
                d += 1;
            }
        }
        self.dev.write(first, out)
    }

    /// Reads and decrypts blocks; never-written blocks read as zeros.
    pub fn read(&self, lba: u64, buf: &mut [u8]) -> Result<()> {
        let n = self.check(lba, buf.len())?;
        let _groups = self.lock_groups(lba, n)?;
        let first = Self::dev_block(lba);
        let last = Self::dev_block(lba + n - 1);
        let span = ((last - first + 1) as usize) * BLOCK_SIZE;
        let mut entries = vec![0u8; n as usize * ENTRY];
        {
            let m = self.meta()?;
            for k in 0..n {
                let l = lba + k;
                let g = (l / PER_GROUP) as usize;
                let i = (l % PER_GROUP) as usize;
                entries[k as usize * ENTRY..][..ENTRY]
                    .copy_from_slice(&m.bytes[g * BLOCK_SIZE + i * ENTRY..][..ENTRY]);
            }
        }
        // Within one group the span is the request's blocks: read straight
        // into the caller's buffer and decrypt in place, as dm-crypt does.
        // A span that crosses a metadata block goes through a page-aligned
        // scratch buffer and one copy per block.
        let direct = span == buf.len();
        let mut own = if direct {
            self.dev.read(first, buf)?;
            None
        } else {
            let mut scratch = AlignedBuf::zeroed(span)?;
            self.dev.read(first, scratch.as_mut_slice())?;
            Some(scratch)
        };
        for (k, out) in buf.chunks_exact_mut(BLOCK_SIZE).enumerate() {
            let l = lba + k as u64;
            if let Some(scratch) = own.as_mut() {
                let off = ((Self::dev_block(l) - first) as usize) * BLOCK_SIZE;
                out.copy_from_slice(&scratch.as_slice()[off..off + BLOCK_SIZE]);
            }
            let e = &entries[k * ENTRY..][..ENTRY];
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
        Ok(())
    }

    /// Writes back dirty metadata blocks, then flushes the device.
    pub fn sync(&self) -> Result<()> {
        let groups = self.meta()?.dirty.len();
        for g in 0..groups {
            let _lock = self.stripes[g % STRIPES].lock().map_err(poisoned)?;
            let blk = {
                let mut m = self.meta()?;
                if !m.dirty[g] {
                    continue;
                }
                m.dirty[g] = false;
                m.bytes[g * BLOCK_SIZE..][..BLOCK_SIZE].to_vec()
            };
            self.dev.write(g as u64 * GROUP, &blk)?;
        }
        self.dev.flush()
    }
}

/// `CryptDisk` on a shared device.
pub type SharedCryptDisk<D> = CryptDisk<Arc<D>>;

#[cfg(test)]
mod tests {
    use super::*;
    use mlsdisk_core::bio::MemDisk;
    use mlsdisk_core::disk::Counted;
    use mlsdisk_core::platform::StdCrypto;

    /// `create` leaves every metadata block dirty (the first sync formats
    /// them all); `create_zeroed` on a zeroed device writes back only the
    /// group written, and both read back the same.
    #[test]
    fn a_zeroed_device_needs_no_metadata_format() {
        let mut writes = Vec::new();
        for zeroed in [false, true] {
            let dev = Arc::new(Counted::new(MemDisk::new(64 * GROUP).unwrap()));
            let crypto: CryptoRef = Arc::new(StdCrypto);
            let d = if zeroed {
                CryptDisk::create_zeroed(dev.clone(), crypto, &[7u8; 32]).unwrap()
            } else {
                CryptDisk::create(dev.clone(), crypto, &[7u8; 32]).unwrap()
            };
            d.write(5, &[0xabu8; BLOCK_SIZE]).unwrap();
            d.sync().unwrap();
            writes.push(dev.counts().1);
            let mut b = vec![1u8; BLOCK_SIZE];
            d.read(5, &mut b).unwrap();
            assert!(b.iter().all(|&x| x == 0xab));
            d.read(6, &mut b).unwrap();
            assert!(
                b.iter().all(|&x| x == 0),
                "a never-written block reads as zeros"
            );
            d.read(PER_GROUP * 40, &mut b).unwrap();
            assert!(b.iter().all(|&x| x == 0));
        }
        // The data block, then one metadata block against all 64.
        assert_eq!(writes, vec![1 + 64, 1 + 1]);
    }

    /// Reads inside one group (straight into the caller's buffer) and
    /// across metadata blocks (through the scratch buffer) give back what
    /// was written, never-written blocks zeros, reading just the span;
    /// a flipped ciphertext byte fails the read on both paths.
    #[test]
    fn reads_within_and_across_groups_round_trip() {
        let dev = Arc::new(Counted::new(MemDisk::new(8 * GROUP).unwrap()));
        let d = CryptDisk::create(dev.clone(), Arc::new(StdCrypto), &[9u8; 32]).unwrap();
        let pattern = |l: u64| -> Vec<u8> {
            let mut b = vec![(l as u8) | 1; BLOCK_SIZE];
            b[..8].copy_from_slice(&l.to_le_bytes());
            b
        };
        // Blocks 0..300 written, in requests that cross group boundaries.
        let written = 300u64;
        let mut l = 0;
        while l < written {
            let n = (written - l).min(37);
            let buf: Vec<u8> = (l..l + n).flat_map(pattern).collect();
            d.write(l, &buf).unwrap();
            l += n;
        }
        // (first LBA, blocks): inside group 0, across 1 and 2 metadata
        // blocks, reaching into never-written blocks.
        for (lba, n) in [(3u64, 20u64), (120, 20), (100, 200), (290, 20)] {
            let reads = dev.counts().0;
            let mut buf = vec![0xeeu8; n as usize * BLOCK_SIZE];
            d.read(lba, &mut buf).unwrap();
            let span = CryptDisk::<MemDisk>::dev_block(lba + n - 1)
                - CryptDisk::<MemDisk>::dev_block(lba)
                + 1;
            assert_eq!(
                dev.counts().0 - reads,
                span,
                "device blocks read for {lba}+{n}"
            );
            for (k, got) in buf.chunks_exact(BLOCK_SIZE).enumerate() {
                let l = lba + k as u64;
                if l < written {
                    assert_eq!(got, pattern(l).as_slice(), "lba {l}");
                } else {
                    assert!(got.iter().all(|&x| x == 0), "lba {l} never written");
                }
            }
        }
        // Flip a byte of LBA 5 (device block 6) and of LBA 130 (device
        // block 132): both paths refuse.
        for (dev_block, lba, n) in [(6u64, 5u64, 4u64), (132, 120, 20)] {
            let mut blk = vec![0u8; BLOCK_SIZE];
            dev.read(dev_block, &mut blk).unwrap();
            blk[100] ^= 1;
            dev.write(dev_block, &blk).unwrap();
            let mut buf = vec![0u8; n as usize * BLOCK_SIZE];
            assert!(d.read(lba, &mut buf).is_err(), "tampered lba in {lba}+{n}");
        }
    }
}
