//! The `log` layer: [`TxLogStore`], a transactional store of many
//! append-only logs, and `SharedLogStore` (feature `shared-store`, not used by
//! the engine), the same store with
//! transactions from several threads at once.
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
//!   a snapshot commit frees journal space that older roots point into, and
//!   a commit that moved the journal to a new key is found only through the
//!   new root (until the owner records it, the old root opens the state
//!   before that commit, which is the in-flight state the contract allows).
//! - Nonces: log blocks use a fresh random key per block (IV zero, each key
//!   seals once). The journal chain uses a fresh random 96-bit IV per block
//!   under a chain key `kdf(kdf(root_key, "mlsdisk/log-store/journal-base"),
//!   "mlsdisk/log-store/journal", salt)` with a random `salt` per chain, kept
//!   in the `StoreRoot`. A key is used for at most [`DEFAULT_ROTATE_AFTER`]
//!   (2^30) block writes: then the commit starts a new chain, with a new
//!   salt, in the other half of the journal region, whose first record is a
//!   snapshot. The old chain stays intact, so the owner's previous root keeps
//!   opening the previous state until it records the new one.
//! - [`TxLogStore`] runs one transaction at a time, behind `&mut self`; the
//!   owner serialises callers. It is `Send` but not `Sync` (reads share a
//!   node cache through a `RefCell`). The LSM-tree uses it.
//!
//! # Concurrency: `SharedLogStore`
//!
//! `SharedLogStore::new(store)` takes a formatted or opened [`TxLogStore`]
//! and runs any number of transactions ([`TxHandle`], from
//! `begin(&self)`) from any threads, on the locks of a
//! [`crate::platform::SyncPlatform`]. The journal format is the same: a
//! store written through it reopens with [`TxLogStore::open`].
//!
//! How: a transaction is an overlay (`Tx`: copies of the logs it changes,
//! the chunks it took, the chunks it frees at commit). Appends and reads run
//! outside every lock (CryptoLog encryption and block I/O in parallel); a
//! new chunk comes from the chunk pool under its own short lock; log ids
//! come from an atomic counter (ids of aborted transactions are skipped).
//! A commit (1) writes its logs' partial tree nodes and flushes the chunk
//! region, outside the lock; (2) takes the state lock, checks for
//! conflicts, encodes its record as a delta against the committed state as
//! it is *now* (or a snapshot, by the usual policy), appends it to the
//! journal and flushes it; (3) installs its copies, frees its deleted logs'
//! chunks, and releases the lock. The journal write under the state lock is
//! the serialisation point: commit counters number the commits in journal
//! order.
//!
//! Isolation (optimistic, first committer wins; the loser gets
//! [`crate::ErrorKind::Conflict`], stays open and must be aborted; a new
//! error kind, so callers can tell "retry" from "broken"):
//! - each committed log carries a version (the counter of the commit that
//!   last changed it, in memory only). A transaction that sealed, deleted
//!   or appended to a log fails to commit if the log changed or was deleted
//!   since it copied it;
//! - reads (`read`, `log_len`, `is_sealed`, `log_tag`) of a log the
//!   transaction has not copied see the latest commit, and record the
//!   version they saw: the transaction's appends to it and its commit fail
//!   if it changed since, so a transaction never commits on a stale read.
//!   So committed transactions are serialisable in commit order (over the
//!   logs they touched or looked at; `logs_with_tag` lists are not
//!   validated: a log created meanwhile by another commit may be missing
//!   from the list);
//! - appending to a committed log also takes that log's *append right*
//!   (two appenders would write the same blocks after the log's allocation
//!   position): if another running transaction holds it, the append fails
//!   at once with `Conflict` (so for appends the first appender, not the
//!   first committer, wins). A delete cannot commit while another running
//!   transaction holds the log's append right (its writes would land in
//!   chunks the delete frees). Logs a transaction created are its own and
//!   never conflict; transactions on disjoint logs never conflict.
//!
//! Guarantees: every commit is atomic and durable on return, exactly as for
//! [`TxLogStore`]; after a crash the store opens to the state of a prefix
//! of the commit order that contains every commit that returned (and
//! possibly the one whose journal write was in flight). An aborted or
//! dropped transaction leaves no trace and gives back its chunks. A chunk
//! is owned by at most one log or running transaction
//! (`SharedLogStore::check_chunks` verifies it). An error of a journal
//! write makes the store refuse every call until reopened, as before.
//!
//! The owner's root: [`TxHandle::commit_with`] runs a closure under the
//! state lock right after the commit, before any later commit, with the new
//! root ([`CommitInfo`]): the place to record it, as the root rule above
//! asks.
//!
//! Lock order: state lock, then pool lock (taken inside the state lock to
//! free a committed delete's chunks and to check accounting); the pool lock
//! alone while appending. No lock is held across block I/O except the
//! state lock across a commit's journal write. A read of a committed log
//! holds the state lock only to copy its root.
//!
//! Not done: group commit (each commit flushes the chunk region and the
//! journal once; concurrent commits queue on the state lock), and a node
//! cache for shared reads (each read verifies its path from the root).
//!
//! # Memory
//!
//! Per log: its chunk list (4 bytes a chunk), its root, and for logs being
//! appended to the frontier of its tree (at most 72 entries a level, about
//! 4 KiB a level); sealed logs drop the frontier at commit. The chunk pool is
//! a bitmap (1 bit a chunk). The node cache holds [`DEFAULT_NODE_CACHE`]
//! nodes (about 4.5 KiB each; `set_node_cache` changes it). A transaction
//! holds copies of the logs it touches (a log's chunk list and frontier).
//! A `SharedLogStore` adds per running transaction its copies, the
//! versions of the logs it read (16 bytes a log) and its append rights (16
//! bytes a log); a read of a committed log makes a temporary reader of about
//! 100 bytes.
//!
//! # Sizing the journal
//!
//! Each commit writes one record: 44 bytes + the user state + about 100
//! bytes a changed log. A snapshot lists every log with all its chunks. The
//! chain lives in one half of the journal region (the other half takes the
//! next chain at a key rotation). When a record does not fit in the free
//! part of the current ring, the commit moves the journal to the other half
//! with a snapshot (a rotation). So the hard limit is one snapshot per half;
//! a record larger than that fails with `NoSpace` before anything is written
//! (the transaction can be aborted). For few rotations, make each half hold
//! a few snapshots and many deltas.
//! - An error inside a transaction marks it failed (commit refuses; abort).
//!   An error while the commit record is written leaves the store refusing
//!   every call until it is reopened, which recovers whichever state reached
//!   the disk.
//!
//! Byte layouts: `docs/format.md`, sections "TxLogStore journal record" and
//! "StoreRoot".

mod chunk;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz_hooks;
mod record;
mod root;
// Not used by the engine (one `TxLogStore` behind the disk's lock is
// enough for it): transactions from several threads, kept with its tests
// for a future concurrent index, outside every normal build.
#[cfg(feature = "shared-store")]
mod shared;
mod store;

pub use chunk::ChunkId;
pub use root::StoreRoot;
#[cfg(feature = "shared-store")]
pub use shared::{CommitInfo, SharedLogStore, SharedStats, TxHandle};
pub use store::{
    LogId, LogStoreConfig, StoreStats, TxLogStore, DEFAULT_NODE_CACHE, DEFAULT_ROTATE_AFTER,
    MIN_JOURNAL_BLOCKS,
};
