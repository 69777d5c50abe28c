//! # MlsDisk core engine
//!
//! A multilayered, log-structured secure disk: it turns an untrusted block
//! device (the host's virtual disk of a confidential VM) into one that keeps
//! confidentiality, integrity, freshness, consistency, atomicity and
//! irreversibility (see `docs/security.md` and `docs/format.md`).
//!
//! The engine is a stack of layers; each talks only to the one below:
//!
//! ```text
//!   disk    MlsDisk: write buffer, data log, segment cleaning, read/write/sync
//!    |
//!   lsm     TxLsmTree: LBA -> (host block, key, MAC), WAL, memtables, tables
//!    |
//!   log     TxLogStore: many append-only logs inside atomic transactions
//!    |
//!   crypto  authenticated blobs (A/B), MAC-chained journal, Merkle-tree logs
//!    |
//!   bio     BlockSet: 4 KiB block I/O + flush over the untrusted device
//! ```
//!
//! Everything platform-specific (AEAD, hashes, random bytes) comes through
//! [`platform`], passed in explicitly. The crate is `#![no_std]` + `alloc`
//! with no other dependency unless the `std` feature is on (userspace crypto
//! provider, memory and file disks, test devices), so the kernel module
//! compiles it with rustc directly.
//!
//! Nothing here panics on data from the disk or from a caller: every
//! fallible path returns [`Result`], and every allocation whose size depends
//! on input is fallible (`try_reserve`).
#![no_std]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::todo,
        clippy::unimplemented
    )
)]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
#[macro_use]
extern crate std;
#[cfg(all(feature = "std", not(test)))]
extern crate std;

pub(crate) mod codec;
mod error;
pub(crate) mod fallible;

pub mod bio;
pub mod crypto;
pub mod disk;
#[cfg(feature = "fuzzing")]
pub mod fuzz_api;
pub mod log;
pub mod lsm;
pub mod platform;
pub mod selftest;
pub mod vec_map;

pub use error::{Cause, Error, ErrorKind, Result};

/// A shared handle to the platform's crypto provider.
pub type CryptoRef = alloc::sync::Arc<dyn platform::Crypto>;
