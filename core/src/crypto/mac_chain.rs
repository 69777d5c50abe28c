//! A MAC-chained, append-only journal of variable-length records in a ring
//! of blocks.
//!
//! # What it guarantees
//!
//! Given a trusted *start* position and a trusted *tail* position (both
//! [`ChainPos`], kept by the owner in authenticated metadata), [`MacChain::open`]
//! returns exactly the records that were committed from `start` on, in order,
//! or fails with [`ErrorKind::Integrity`]: a flipped byte, a block replayed
//! from an earlier lap of the ring or from an abandoned fork, two swapped
//! blocks, or a chain cut short before `trusted_tail` are all detected. Past
//! the trusted tail, the chain is followed as long as blocks verify, so
//! commits newer than the owner's tail are recovered too; an attacker can
//! drop those (truncate after the trusted tail) but not forge or reorder them.
//! Records are confidential (AES-GCM).
//!
//! Commits are atomic: a commit is one or more blocks, the last one flagged
//! *commit end*; records of a commit whose end block did not reach the disk
//! (a crash in the middle of it) are never returned, and the next commit
//! overwrites that commit's blocks.
//!
//! # How
//!
//! Block `seq` of the chain lives at block `seq % n` of the region of `n`
//! blocks. Each block is
//!
//! ```text
//!   header (48 bytes, authenticated, plain) | payload (4048 bytes, encrypted)
//! ```
//!
//! and is sealed with AES-GCM under the chain key, with a fresh random IV, and
//! with associated data = header fields (magic, version, type, flags, seq,
//! payload length) followed by the MAC (GCM tag) of block `seq - 1` (for the
//! first block after a position, that position's `mac`). So each block's MAC
//! depends on the whole chain before it: a block verifies only at its own
//! sequence number and only after its own predecessor. The chain is opened at
//! a start position whose `mac` is random at [`MacChain::create`], so blocks of
//! another chain under the same key do not fit either.
//!
//! The payloads of one commit's blocks, concatenated, are a stream of records
//! each framed as `len: u32 LE | bytes`; a record may span blocks. See
//! `docs/format.md`, section "MacChain block".
//!
//! # Nonces
//!
//! The chain key is used with a fresh random 96-bit IV for every block written
//! (including a re-write of the same sequence number after a crash or a failed
//! commit), never a counter, so no crash, replay or reopen can make a (key,
//! IV) pair repeat except by a random collision. Random IVs bound the use of
//! one key: stay well below 2^32 block writes per key (16 TiB of journal); the
//! owner rotates the key by deriving it with a fresh random salt whenever it
//! creates a chain.
//!
//! # What it assumes
//!
//! The owner keeps `start` and a trusted tail in authenticated, fresh storage
//! (its superblock) and passes to [`MacChain::reset_start`] only positions this
//! chain returned (from [`MacChain::commit`] or [`MacChain::tail`]). Whole-image
//! rollback is detected only as far as the trusted tail is fresh, which is
//! the rollback anchor's job.
//!
//! # Failures
//!
//! An I/O error while opening is returned as such (not as the end of the
//! chain). A commit that fails keeps its records buffered and the tail
//! unchanged; retrying writes them again with fresh IVs. Until a commit
//! returns `Ok`, its records may or may not be found by the next open (as
//! with `fsync`).

use alloc::vec::Vec;

use crate::bio::{BlockSet, BLOCK_SIZE};
use crate::codec::put_field;
use crate::platform::{AeadKey, Iv, Mac, IV_LEN, MAC_LEN};
use crate::{ensure, CryptoRef, Error, ErrorKind, Result};

/// Magic bytes at the start of every chain block.
pub const MAGIC: [u8; 4] = *b"MDMC";
/// The format version of chain blocks.
pub const FORMAT_VERSION: u8 = 1;
/// The structure type byte of chain blocks.
pub const BLOCK_TYPE: u8 = 0x02;
/// Flag: the last block of a commit.
pub const FLAG_COMMIT_END: u8 = 0x01;
/// Length of a block's header.
pub const HEADER_LEN: usize = 48;
/// Record bytes one block carries.
pub const PAYLOAD_CAP: usize = BLOCK_SIZE - HEADER_LEN;
/// Blocks `open` reads with one I/O.
const READ_AHEAD: usize = 16;
/// Length of a record's frame header (its length as `u32`).
pub const RECORD_HEADER_LEN: usize = 4;

/// Byte ranges of the block header.
mod field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    pub const TYPE: usize = 5;
    pub const FLAGS: usize = 6;
    pub const RESERVED: usize = 7;
    pub const SEQ: Range<usize> = 8..16;
    pub const LEN: Range<usize> = 16..20;
    /// Everything above: what the MAC covers besides the previous MAC.
    pub const AUTH: Range<usize> = 0..20;
    pub const IV: Range<usize> = 20..32;
    pub const MAC: Range<usize> = 32..48;
}

/// A position in a chain: the sequence number of the next block, and the MAC
/// of the block before it (or the chain's random origin for the first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChainPos {
    /// The sequence number of the next block after this position.
    pub seq: u64,
    /// The MAC of block `seq - 1`.
    pub mac: Mac,
}

impl ChainPos {
    /// Length of the encoding.
    pub const ENCODED_LEN: usize = 8 + MAC_LEN;

    /// `seq` (u64 LE) followed by `mac`.
    pub fn emit(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        let (s, m) = out.split_at_mut(8);
        s.copy_from_slice(&self.seq.to_le_bytes());
        m.copy_from_slice(&self.mac);
        out
    }

    /// Parses [`ChainPos::emit`]'s output (exactly `ENCODED_LEN` bytes).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        ensure!(
            bytes.len() == Self::ENCODED_LEN,
            Corrupted,
            "chain position has the wrong length"
        );
        let (s, m) = bytes
            .split_at_checked(8)
            .ok_or(Error::new(ErrorKind::Corrupted, "chain position"))?;
        Ok(Self {
            seq: u64::from_le_bytes(s.try_into().map_err(|_| corrupted())?),
            mac: m.try_into().map_err(|_| corrupted())?,
        })
    }
}

fn corrupted() -> Error {
    Error::new(ErrorKind::Corrupted, "malformed chain data")
}

fn bad(msg: &'static str) -> Error {
    Error::new(ErrorKind::Corrupted, msg)
}

/// The number of blocks `stream_len` payload bytes take.
pub fn blocks_for(stream_len: usize) -> u64 {
    stream_len.div_ceil(PAYLOAD_CAP) as u64
}

/// An append-only, MAC-chained journal in a ring region. See the module
/// documentation.
pub struct MacChain<D> {
    region: D,
    crypto: CryptoRef,
    key: AeadKey,
    nblocks: u64,
    start: ChainPos,
    tail: ChainPos,
    /// Records appended since the last commit, framed.
    pending: Vec<u8>,
}

impl<D> core::fmt::Debug for MacChain<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MacChain")
            .field("nblocks", &self.nblocks)
            .field("start", &self.start.seq)
            .field("tail", &self.tail.seq)
            .field("pending", &self.pending.len())
            .finish()
    }
}

/// What a verified block says.
struct Verified {
    flags: u8,
    len: usize,
    mac: Mac,
}

impl<D: BlockSet> MacChain<D> {
    /// A new, empty chain over `region` (every block of it is ring space).
    /// Nothing is written; `start()` (== `tail()`) has a random MAC, so the
    /// owner must keep it to open the chain later.
    pub fn create(region: D, crypto: CryptoRef, key: AeadKey) -> Result<Self> {
        let nblocks = region.nblocks();
        ensure!(nblocks > 0, InvalidArgument, "chain region is empty");
        let mut mac = [0u8; MAC_LEN];
        crypto.fill_random(&mut mac)?;
        let origin = ChainPos { seq: 0, mac };
        Ok(Self {
            region,
            crypto,
            key,
            nblocks,
            start: origin,
            tail: origin,
            pending: Vec::new(),
        })
    }

    /// Opens the chain at `start`, returning it and every committed record
    /// from `start` on. Fails with `Integrity` if the verified chain does not
    /// pass through `trusted_tail` (a commit boundary this chain returned).
    pub fn open(
        region: D,
        crypto: CryptoRef,
        key: AeadKey,
        start: ChainPos,
        trusted_tail: ChainPos,
    ) -> Result<(Self, Vec<Vec<u8>>)> {
        let nblocks = region.nblocks();
        ensure!(nblocks > 0, InvalidArgument, "chain region is empty");
        let span = trusted_tail.seq.checked_sub(start.seq).ok_or(Error::new(
            ErrorKind::InvalidArgument,
            "trusted tail before the chain start",
        ))?;
        ensure!(
            span <= nblocks,
            InvalidArgument,
            "trusted tail further than the ring size"
        );
        let mut chain = Self {
            region,
            crypto,
            key,
            nblocks,
            start,
            tail: start,
            pending: Vec::new(),
        };
        let mut reached = start == trusted_tail;
        ensure!(
            reached || start.seq != trusted_tail.seq,
            Integrity,
            "trusted tail does not match the chain start"
        );
        let mut records = Vec::new();
        let mut stream = Vec::new();
        // Blocks are read ahead in batches of up to READ_AHEAD (one I/O
        // each, never across the end of the ring or past `nblocks` blocks
        // from the start).
        let mut batch = crate::fallible::filled_vec(READ_AHEAD * BLOCK_SIZE, 0)?;
        let (mut have, mut used) = (0usize, 0usize);
        let mut cur = start;
        while cur.seq - start.seq < nblocks {
            if used == have {
                let idx = cur.seq % nblocks;
                let left = (nblocks - (cur.seq - start.seq)).min(nblocks - idx);
                have = usize::try_from(left).map_or(READ_AHEAD, |l| l.min(READ_AHEAD));
                used = 0;
                let bytes = batch.get_mut(..have * BLOCK_SIZE).ok_or(corrupted())?;
                chain.region.read(idx, bytes)?;
            }
            let block = batch
                .get_mut(used * BLOCK_SIZE..(used + 1) * BLOCK_SIZE)
                .ok_or(corrupted())?;
            used += 1;
            let Some(v) = chain.verify(block, &cur) else {
                break;
            };
            let payload = block
                .get(HEADER_LEN..HEADER_LEN + v.len)
                .ok_or(corrupted())?;
            stream.try_reserve(payload.len())?;
            stream.extend_from_slice(payload);
            cur = ChainPos {
                seq: cur.seq.checked_add(1).ok_or(corrupted())?,
                mac: v.mac,
            };
            if v.flags & FLAG_COMMIT_END != 0 {
                parse_records(&stream, &mut records)?;
                stream.clear();
                chain.tail = cur;
                if cur.seq == trusted_tail.seq {
                    ensure!(
                        cur.mac == trusted_tail.mac,
                        Integrity,
                        "journal chain forks from the trusted tail"
                    );
                    reached = true;
                }
            }
        }
        ensure!(
            reached,
            Integrity,
            "journal chain ends before the trusted tail"
        );
        Ok((chain, records))
    }

    /// Checks the header of `block` for position `at` and decrypts it in
    /// place. `None` if it is not the authentic block `at.seq` after `at`.
    fn verify(&self, block: &mut [u8], at: &ChainPos) -> Option<Verified> {
        let (header, payload) = block.split_at_mut_checked(HEADER_LEN)?;
        if header.get(field::MAGIC)? != MAGIC
            || *header.get(field::VERSION)? != FORMAT_VERSION
            || *header.get(field::TYPE)? != BLOCK_TYPE
            || *header.get(field::RESERVED)? != 0
        {
            return None;
        }
        let flags = *header.get(field::FLAGS)?;
        let seq = u64::from_le_bytes(header.get(field::SEQ)?.try_into().ok()?);
        let len = u32::from_le_bytes(header.get(field::LEN)?.try_into().ok()?) as usize;
        if flags & !FLAG_COMMIT_END != 0 || seq != at.seq || len > PAYLOAD_CAP {
            return None;
        }
        let iv: Iv = header.get(field::IV)?.try_into().ok()?;
        let mac: Mac = header.get(field::MAC)?.try_into().ok()?;
        let aad = aad(header.get(field::AUTH)?, &at.mac)?;
        self.crypto
            .aead_open(&self.key, &iv, &aad, payload, &mac)
            .ok()?;
        Some(Verified { flags, len, mac })
    }

    /// Buffers `record` for the next commit. `NoSpace` if the commit would
    /// not fit in the free ring space (the buffer is then unchanged).
    pub fn append(&mut self, record: &[u8]) -> Result<()> {
        let len = u32::try_from(record.len())
            .map_err(|_| Error::new(ErrorKind::InvalidArgument, "record too long"))?;
        let new_len = self
            .pending
            .len()
            .checked_add(RECORD_HEADER_LEN + record.len())
            .ok_or(Error::new(ErrorKind::NoSpace, "record too long"))?;
        ensure!(
            blocks_for(new_len) <= self.free_blocks(),
            NoSpace,
            "journal ring is full"
        );
        self.pending.try_reserve(RECORD_HEADER_LEN + record.len())?;
        self.pending.extend_from_slice(&len.to_le_bytes());
        self.pending.extend_from_slice(record);
        Ok(())
    }

    /// Writes the buffered records as one commit, flushes the device, and
    /// returns the new tail. With nothing buffered, returns the tail as is.
    pub fn commit(&mut self) -> Result<ChainPos> {
        if self.pending.is_empty() {
            return Ok(self.tail);
        }
        let count = blocks_for(self.pending.len());
        ensure!(count <= self.free_blocks(), NoSpace, "journal ring is full");
        let bytes = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(BLOCK_SIZE))
            .ok_or(Error::new(ErrorKind::NoSpace, "commit too large"))?;
        let mut out = crate::fallible::filled_vec(bytes, 0)?;
        let mut cur = self.tail;
        let nchunks = self.pending.chunks(PAYLOAD_CAP).len();
        for (i, (chunk, block)) in self
            .pending
            .chunks(PAYLOAD_CAP)
            .zip(out.chunks_exact_mut(BLOCK_SIZE))
            .enumerate()
        {
            let flags = if i + 1 == nchunks { FLAG_COMMIT_END } else { 0 };
            let mac = self.seal(block, &cur, flags, chunk)?;
            cur = ChainPos {
                seq: cur.seq.checked_add(1).ok_or(corrupted())?,
                mac,
            };
        }
        // At most two contiguous runs: up to the end of the ring, then from 0.
        let first = self.tail.seq % self.nblocks;
        let run = count.min(self.nblocks - first);
        let split = usize::try_from(run)
            .ok()
            .and_then(|r| r.checked_mul(BLOCK_SIZE))
            .ok_or(corrupted())?;
        let (a, b) = out.split_at_checked(split).ok_or(corrupted())?;
        self.region.write(first, a)?;
        if !b.is_empty() {
            self.region.write(0, b)?;
        }
        self.region.flush()?;
        self.tail = cur;
        self.pending.clear();
        if self.pending.capacity() > 4 * BLOCK_SIZE {
            self.pending.shrink_to(BLOCK_SIZE);
        }
        Ok(cur)
    }

    /// Fills `block` with the sealed chain block `at.seq` carrying `payload`
    /// and returns its MAC.
    fn seal(&self, block: &mut [u8], at: &ChainPos, flags: u8, payload: &[u8]) -> Result<Mac> {
        let (header, body) = block.split_at_mut_checked(HEADER_LEN).ok_or(corrupted())?;
        let len = u32::try_from(payload.len()).map_err(|_| corrupted())?;
        put_field(header, field::MAGIC, &MAGIC)?;
        put_field(
            header,
            field::VERSION..field::VERSION + 1,
            &[FORMAT_VERSION],
        )?;
        put_field(header, field::TYPE..field::TYPE + 1, &[BLOCK_TYPE])?;
        put_field(header, field::FLAGS..field::FLAGS + 1, &[flags])?;
        put_field(header, field::RESERVED..field::RESERVED + 1, &[0])?;
        put_field(header, field::SEQ, &at.seq.to_le_bytes())?;
        put_field(header, field::LEN, &len.to_le_bytes())?;
        let mut iv: Iv = [0; IV_LEN];
        self.crypto.fill_random(&mut iv)?;
        put_field(header, field::IV, &iv)?;
        body.fill(0);
        body.get_mut(..payload.len())
            .ok_or(corrupted())?
            .copy_from_slice(payload);
        let aad = aad(header.get(field::AUTH).ok_or(corrupted())?, &at.mac).ok_or(corrupted())?;
        let mac = self.crypto.aead_seal(&self.key, &iv, &aad, body)?;
        put_field(header, field::MAC, &mac)?;
        Ok(mac)
    }

    /// Moves the start of the chain forward to `new_start` (a position this
    /// chain returned), freeing the ring blocks before it.
    pub fn reset_start(&mut self, new_start: ChainPos) -> Result<()> {
        ensure!(
            new_start.seq >= self.start.seq && new_start.seq <= self.tail.seq,
            InvalidArgument,
            "new chain start outside the chain"
        );
        ensure!(
            new_start.seq != self.tail.seq || new_start.mac == self.tail.mac,
            InvalidArgument,
            "new chain start is not a position of this chain"
        );
        ensure!(
            new_start.seq != self.start.seq || new_start.mac == self.start.mac,
            InvalidArgument,
            "new chain start is not a position of this chain"
        );
        self.start = new_start;
        Ok(())
    }

    /// Where the chain starts (what `open` needs).
    pub fn start(&self) -> ChainPos {
        self.start
    }

    /// The position after the last committed block.
    pub fn tail(&self) -> ChainPos {
        self.tail
    }

    /// Ring blocks not holding live (committed, at or after `start`) blocks,
    /// not counting the records buffered for the next commit.
    pub fn free_blocks(&self) -> u64 {
        self.nblocks
            .saturating_sub(self.tail.seq.saturating_sub(self.start.seq))
    }

    /// Bytes buffered for the next commit (framing included).
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// The number of blocks of the ring.
    pub fn nblocks(&self) -> u64 {
        self.nblocks
    }

    /// The region underneath.
    pub fn region(&self) -> &D {
        &self.region
    }
}

/// The associated data of a block: its authenticated header fields and the
/// previous block's MAC.
fn aad(auth: &[u8], prev: &Mac) -> Option<[u8; 20 + MAC_LEN]> {
    let mut a = [0u8; 20 + MAC_LEN];
    let (h, p) = a.split_at_mut(20);
    h.copy_from_slice(auth.get(..20)?);
    p.copy_from_slice(prev);
    Some(a)
}

/// Splits a commit's payload stream into records.
pub(crate) fn parse_records(mut stream: &[u8], out: &mut Vec<Vec<u8>>) -> Result<()> {
    while !stream.is_empty() {
        let (len, rest) = stream
            .split_at_checked(RECORD_HEADER_LEN)
            .ok_or(bad("truncated journal record header"))?;
        let len = u32::from_le_bytes(len.try_into().map_err(|_| corrupted())?) as usize;
        let (rec, rest) = rest
            .split_at_checked(len)
            .ok_or(bad("journal record past the end of its commit"))?;
        let mut v = Vec::new();
        v.try_reserve_exact(len)?;
        v.extend_from_slice(rec);
        out.try_reserve(1)?;
        out.push(v);
        stream = rest;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bio::MemDisk;
    use crate::platform::StdCrypto;
    use alloc::sync::Arc;

    #[test]
    fn chain_pos_round_trip() {
        let p = ChainPos {
            seq: 0x0102_0304_0506_0708,
            mac: [9; MAC_LEN],
        };
        assert_eq!(ChainPos::parse(&p.emit()).unwrap(), p);
        assert_eq!(
            ChainPos::parse(&p.emit()[1..]).unwrap_err().kind(),
            ErrorKind::Corrupted
        );
    }

    #[test]
    fn parse_rejects_overlong_record() {
        let mut out = Vec::new();
        assert!(parse_records(&[5, 0, 0, 0, 1], &mut out).is_err());
        assert!(parse_records(&[1, 0], &mut out).is_err());
        parse_records(&[1, 0, 0, 0, 7, 0, 0, 0, 0], &mut out).unwrap();
        assert_eq!(out, vec![vec![7u8], vec![]]);
    }

    #[test]
    fn header_is_48_bytes() {
        assert_eq!(field::MAC.end, HEADER_LEN);
        let crypto: CryptoRef = Arc::new(StdCrypto);
        let key = AeadKey::random(&*crypto, 16).unwrap();
        let mut c = MacChain::create(MemDisk::new(2).unwrap(), crypto, key).unwrap();
        c.append(b"x").unwrap();
        assert_eq!(c.commit().unwrap().seq, 1);
    }
}
