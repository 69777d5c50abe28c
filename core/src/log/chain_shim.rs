//! A stand-in for `crypto::MacChain` with the API of the core brief, used by
//! the log store until the real one lands on `main` (then this file goes).
//!
//! Blocks on disk: iv [12] | tag [16] | ciphertext of (used u16 | flags u8 |
//! reserved [5] | payload). AES-GCM under the chain key with a fresh random
//! IV per block; AAD = seq u64 || MAC of the previous block. Records are a
//! byte stream of (len u32 | bytes); a commit ends on a block with the END
//! flag; open returns only the records of complete commits.

use alloc::vec::Vec;

use crate::bio::{BlockSet, BLOCK_SIZE};
use crate::platform::{AeadKey, Iv, Mac, IV_LEN, MAC_LEN};
use crate::{bail, ensure, CryptoRef, Error, ErrorKind, Result};

const HDR: usize = IV_LEN + MAC_LEN;
const PHDR: usize = 8;
const PAYLOAD: usize = BLOCK_SIZE - HDR - PHDR;
const END: u8 = 1;

/// A position in the chain: the next block's sequence number and the MAC of
/// the block before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainPos {
    /// Sequence number of the block at this position.
    pub seq: u64,
    /// MAC of the block before it (zeros at the very start).
    pub mac: Mac,
}

impl ChainPos {
    /// Bytes of an encoded position.
    pub const ENCODED_LEN: usize = 8 + MAC_LEN;

    /// seq u64 | mac [16].
    pub fn encode(&self, out: &mut [u8]) -> Result<()> {
        ensure!(
            out.len() == Self::ENCODED_LEN,
            InvalidArgument,
            "pos buffer"
        );
        let (s, m) = out.split_at_mut(8);
        s.copy_from_slice(&self.seq.to_le_bytes());
        m.copy_from_slice(&self.mac);
        Ok(())
    }

    /// Parses [`Self::encode`]'s output.
    pub fn decode(b: &[u8]) -> Result<Self> {
        ensure!(b.len() == Self::ENCODED_LEN, Corrupted, "pos length");
        let (s, m) = b.split_at(8);
        Ok(Self {
            seq: u64::from_le_bytes(s.try_into().map_err(|_| bad())?),
            mac: m.try_into().map_err(|_| bad())?,
        })
    }
}

fn bad() -> Error {
    Error::new(ErrorKind::Corrupted, "chain position")
}

/// The stand-in MAC chain.
pub struct MacChain<D> {
    region: D,
    crypto: CryptoRef,
    key: AeadKey,
    start: ChainPos,
    tail: ChainPos,
    pending: Vec<u8>,
}

impl<D: BlockSet> MacChain<D> {
    /// An empty chain over `region`.
    pub fn create(region: D, crypto: CryptoRef, key: AeadKey) -> Result<Self> {
        ensure!(region.nblocks() >= 2, InvalidArgument, "journal too small");
        let p = ChainPos {
            seq: 0,
            mac: [0; MAC_LEN],
        };
        Ok(Self {
            region,
            crypto,
            key,
            start: p,
            tail: p,
            pending: Vec::new(),
        })
    }

    /// Buffers a record.
    pub fn append(&mut self, record: &[u8]) -> Result<()> {
        let len = u32::try_from(record.len())
            .map_err(|_| Error::new(ErrorKind::InvalidArgument, "record too long"))?;
        self.pending.try_reserve(record.len() + 4)?;
        self.pending.extend_from_slice(&len.to_le_bytes());
        self.pending.extend_from_slice(record);
        Ok(())
    }

    /// Writes the buffered records, flushes, returns the new tail.
    pub fn commit(&mut self) -> Result<ChainPos> {
        if self.pending.is_empty() {
            return Ok(self.tail);
        }
        let nblocks = self.pending.len().div_ceil(PAYLOAD) as u64;
        ensure!(nblocks <= self.free_blocks(), NoSpace, "journal full");
        let pending = core::mem::take(&mut self.pending);
        let mut buf = Vec::new();
        buf.try_reserve_exact(BLOCK_SIZE)?;
        buf.resize(BLOCK_SIZE, 0);
        let mut tail = self.tail;
        let n = self.region.nblocks();
        let count = pending.chunks(PAYLOAD).count();
        for (i, chunk) in pending.chunks(PAYLOAD).enumerate() {
            buf.fill(0);
            let (hdr, body) = buf.split_at_mut(HDR);
            let (ph, pl) = body.split_at_mut(PHDR);
            ph.copy_from_slice(&[
                (chunk.len() as u16).to_le_bytes()[0],
                (chunk.len() as u16).to_le_bytes()[1],
                if i + 1 == count { END } else { 0 },
                0,
                0,
                0,
                0,
                0,
            ]);
            pl.get_mut(..chunk.len())
                .ok_or(Error::new(ErrorKind::InvalidState, "chunk"))?
                .copy_from_slice(chunk);
            let mut iv: Iv = [0; IV_LEN];
            self.crypto.fill_random(&mut iv)?;
            let aad = aad(&tail);
            let mac = self.crypto.aead_seal(&self.key, &iv, &aad, body)?;
            let (ivb, macb) = hdr.split_at_mut(IV_LEN);
            ivb.copy_from_slice(&iv);
            macb.copy_from_slice(&mac);
            self.region.write(tail.seq % n, &buf)?;
            tail = ChainPos {
                seq: tail.seq + 1,
                mac,
            };
        }
        self.region.flush()?;
        self.tail = tail;
        Ok(tail)
    }

    /// Opens the chain from `start`, returning every record of a complete
    /// commit; fails with Integrity if `trusted_tail` is not reached.
    pub fn open(
        region: D,
        crypto: CryptoRef,
        key: AeadKey,
        start: ChainPos,
        trusted_tail: ChainPos,
    ) -> Result<(Self, Vec<Vec<u8>>)> {
        ensure!(
            trusted_tail.seq >= start.seq,
            Corrupted,
            "tail before start"
        );
        let n = region.nblocks();
        let mut buf = Vec::new();
        buf.try_reserve_exact(BLOCK_SIZE)?;
        buf.resize(BLOCK_SIZE, 0);
        let mut pos = start;
        let mut last_end = start;
        let mut stream: Vec<u8> = Vec::new();
        let mut committed_len = 0usize;
        let mut reached_trusted = trusted_tail == start;
        while pos.seq - start.seq < n {
            region.read(pos.seq % n, &mut buf)?;
            let (hdr, body) = buf.split_at_mut(HDR);
            let (ivb, macb) = hdr.split_at(IV_LEN);
            let iv: Iv = ivb.try_into().map_err(|_| bad())?;
            let mac: Mac = macb.try_into().map_err(|_| bad())?;
            if crypto.aead_open(&key, &iv, &aad(&pos), body, &mac).is_err() {
                break;
            }
            let (ph, pl) = body.split_at(PHDR);
            let used = usize::from(u16::from_le_bytes([
                ph.first().copied().unwrap_or(0),
                ph.get(1).copied().unwrap_or(0),
            ]));
            let flags = ph.get(2).copied().unwrap_or(0);
            let data = pl.get(..used).ok_or(bad())?;
            stream.try_reserve(used)?;
            stream.extend_from_slice(data);
            pos = ChainPos {
                seq: pos.seq + 1,
                mac,
            };
            if flags & END != 0 {
                last_end = pos;
                committed_len = stream.len();
            }
            if pos == trusted_tail {
                reached_trusted = true;
            }
        }
        if !reached_trusted || trusted_tail.seq > last_end.seq {
            bail!(Integrity, "journal does not reach its trusted tail");
        }
        stream.truncate(committed_len);
        let mut records = Vec::new();
        let mut rest = stream.as_slice();
        while !rest.is_empty() {
            let (l, r) = rest.split_at_checked(4).ok_or(bad())?;
            let len = u32::from_le_bytes(l.try_into().map_err(|_| bad())?) as usize;
            let (rec, r) = r.split_at_checked(len).ok_or(bad())?;
            let mut v = Vec::new();
            v.try_reserve_exact(len)?;
            v.extend_from_slice(rec);
            records.try_reserve(1)?;
            records.push(v);
            rest = r;
        }
        Ok((
            Self {
                region,
                crypto,
                key,
                start,
                tail: last_end,
                pending: Vec::new(),
            },
            records,
        ))
    }

    /// Frees the ring space before `new_start`.
    pub fn reset_start(&mut self, new_start: ChainPos) {
        self.start = new_start;
    }

    /// The first position still kept.
    pub fn start(&self) -> ChainPos {
        self.start
    }

    /// The position after the last committed block.
    pub fn tail(&self) -> ChainPos {
        self.tail
    }

    /// Blocks free for appends.
    pub fn free_blocks(&self) -> u64 {
        self.region
            .nblocks()
            .saturating_sub(self.tail.seq.saturating_sub(self.start.seq))
    }
}

fn aad(p: &ChainPos) -> [u8; 24] {
    let mut a = [0u8; 24];
    let (s, m) = a.split_at_mut(8);
    s.copy_from_slice(&p.seq.to_le_bytes());
    m.copy_from_slice(&p.mac);
    a
}
