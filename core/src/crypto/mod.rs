//! The `crypto` layer: authenticated building blocks over untrusted blocks.
//!
//! - [`AuthBlob`]: a versioned, authenticated blob in two slots (A/B), for
//!   superblock-like roots; a torn write of one slot never loses the other.
//! - [`MacChain`]: an append-only, MAC-chained journal of records in a ring of
//!   blocks; truncation before a trusted tail, splicing, reordering and
//!   replay are detected.
//! - `CryptoLog`: an append-only log of blocks under a Merkle tree, for
//!   authenticated random reads against a root the caller keeps.
//!
//! Each module says how it keeps (key, nonce) pairs unique.

pub mod auth_blob;
pub mod crypto_log;
pub mod mac_chain;

pub use auth_blob::AuthBlob;
pub use crypto_log::{BlockAlloc, CryptoLog, RootMeta};
pub use mac_chain::{ChainPos, MacChain};
