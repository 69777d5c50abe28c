//! The `log` layer: [`TxLogStore`], a transactional store of many
//! append-only logs.
//!
//! # What it gives the layer above
//!
//! - Logs: create (with a tag), append whole 4 KiB blocks, read any block,
//!   seal, delete. Each log is a [`crate::crypto::CryptoLog`] (a Merkle tree
//!   with a fresh random key per block), its blocks in *chunks* (runs of
//!   `chunk_blocks` blocks) of the chunk region.
//! - Transactions: `begin`, any number of operations, then `commit(user_state)`
//!   or `abort`. A commit is atomic and durable on return: after a crash the
//!   store opens to exactly the state of the last commit that returned, or
//!   of the commit that was in flight. `user_state` (a small byte string the
//!   owner chooses; the LSM-tree keeps its manifest there) commits with it.
//! - Reads inside a transaction see its own changes; outside, the last commit.
//! - Space: a log takes a chunk from the pool when its chunks are full; a
//!   deleted log's chunks go back to the pool when the deleting transaction
//!   commits (never earlier: until then a crash would recover the log). An
//!   aborted transaction returns the chunks it took.
//!
//! # How it is kept
//!
//! The state (for each log: tag, sealed flag, chunk list, allocation
//! position, CryptoLog root; the id counter; the user state) lives in memory
//! and is journaled in a MAC chain (`crypto::MacChain`): one record per
//! commit, carrying a commit counter that grows by one each time. Most
//! records are deltas (the logs the transaction created or changed, with the
//! chunks they gained, and the logs it deleted); every `snapshot_every`
//! commits, or when the journal ring is more than half full, the commit
//! record is a full snapshot instead, and the journal's start moves to it
//! (`reset_start`), freeing the ring before it.
//!
//! Commit order: (1) write each changed log's partial tree nodes (copy-on-
//! write, to fresh blocks of its chunks); (2) flush the chunk region, so
//! every block the new roots name is durable; (3) append the record to the
//! chain and commit it (the chain flushes); (4) install the new state in
//! memory and free the deleted logs' chunks.
//!
//! Recovery (`open`): follow the chain from the owner's [`StoreRoot`] (start
//! and last trusted tail), replay the snapshot and the deltas after it, check
//! that counters are consecutive and that no chunk has two owners, and
//! rebuild the free pool from the logs' chunk lists. A commit whose record
//! reached the journal is recovered even if the owner had not yet recorded
//! the new root; one whose record did not is gone, and so are its blocks
//! (they sit in chunks the recovered state considers free).
//!
//! # Guarantees and assumptions
//!
//! - Integrity, freshness, confidentiality of log contents and of the state
//!   follow from the CryptoLog roots being inside the authenticated journal,
//!   and from the journal being verified up to the owner's trusted tail.
//!   Anything tampered with gives an error (Integrity or Corrupted), never
//!   other data.
//! - Rolling the journal back to an older tail than the owner's is detected;
//!   rolling back the owner's root itself (the whole image) is the owner's
//!   job (the disk's superblock and rollback anchor); `commit_count()` gives
//!   it the counter to compare.
//! - The owner must record `root()` after each commit and before the next:
//!   a snapshot commit frees journal space that older roots point into.
//! - Nonces: log blocks use a fresh random key per block (IV zero, each key
//!   seals once); the journal key is derived from the root key with a random
//!   per-store salt kept in the `StoreRoot`, and the chain uses a fresh
//!   random 96-bit IV per block (about 2^32 blocks per key; at 4 KiB a block
//!   that is 16 TiB of journal).
//! - One transaction at a time, behind `&mut self`; the owner serialises
//!   callers. Concurrency could be added later by giving each transaction
//!   its own overlay (as `Tx` already is) and a lock around commit that
//!   checks the overlays touch disjoint logs; not built.
//! - An error inside a transaction marks it failed (commit refuses; abort).
//!   An error while the commit record is written leaves the store refusing
//!   every call until it is reopened, which recovers whichever state reached
//!   the disk.
//!
//! Byte layouts: `docs/format.md`, sections "TxLogStore journal record" and
//! "StoreRoot".

mod chunk;
mod record;
mod store;

pub use chunk::ChunkId;
pub use store::{LogId, LogStoreConfig, StoreRoot, StoreStats, TxLogStore, MIN_JOURNAL_BLOCKS};
