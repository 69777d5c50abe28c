//! The platform boundary: what the engine asks of the system it runs on.
//!
//! The same engine source runs in userspace (tests, tools, benchmarks) and in
//! the Linux kernel module. Everything that differs between the two comes
//! through the traits of this module, passed in explicitly (there is no global
//! provider), in the spirit of a TLS library's crypto provider:
//!
//! - [`Crypto`]: authenticated encryption (AES-GCM, 128- or 256-bit keys),
//!   SHA-256, HMAC-SHA256 and random bytes. Userspace gets it from RustCrypto
//!   ([`StdCrypto`], feature `std`); the kernel from its crypto API with
//!   transforms allocated once, never per call.
//! - [`SyncPlatform`]: sleeping locks ([`Mutex`]), condition variables
//!   ([`Condvar`]) and background workers ([`SyncPlatform::spawn`], and
//!   [`Task`] for a job whose result is waited for). Userspace gets them from
//!   `std` (`StdSync`, feature `std`); the kernel from `kernel::sync` and
//!   workqueues. The [`sync`] module doc maps each method to its kernel
//!   counterpart.
//! - Page-aligned buffers: [`PageBuf`], a core type (no platform code and no
//!   `unsafe`) over the global allocator.
//! - Block devices come through [`crate::bio::BlockSet`].
//!
//! Most of the engine is single-threaded per disk (`&mut self` APIs): the
//! platform shim serialises callers with its own sleeping lock and runs the
//! engine only in process context. The log layer's
//! `SharedLogStore` (feature `shared-store`) runs transactions from several threads on
//! a [`SyncPlatform`]. Every method here may sleep and may fail; failures come
//! back as [`crate::Error`], never as a panic.
//!
//! Key derivation is built here on top of HMAC ([`kdf`]), so every platform
//! derives the same keys from the same root key.

mod parallel;
mod spawn;
#[cfg(feature = "std")]
mod std_crypto;
#[cfg(feature = "std")]
mod std_sync;
pub mod sync;
pub(crate) use parallel::run_each;
#[cfg(feature = "std")]
pub use parallel::StdParallel;
pub use parallel::{Job, Parallel, Serial};
#[cfg(feature = "std")]
pub use spawn::StdSpawn;
pub use spawn::{OwnedJob, Pending, Spawn};
#[cfg(feature = "std")]
pub use std_crypto::StdCrypto;
#[cfg(feature = "std")]
pub use std_sync::{StdCondvar, StdMutex, StdSync};
pub use sync::{Condvar, LockClass, Mutex, MutexGuard, PageBuf, SyncPlatform, Task, PAGE_SIZE};

use crate::{Error, ErrorKind, Result};

/// Length of an AES-GCM initialisation vector.
pub const IV_LEN: usize = 12;
/// Length of an AES-GCM authentication tag.
pub const MAC_LEN: usize = 16;
/// Length of a SHA-256 digest.
pub const HASH_LEN: usize = 32;

/// An AES-GCM initialisation vector.
pub type Iv = [u8; IV_LEN];
/// An AES-GCM authentication tag.
pub type Mac = [u8; MAC_LEN];
/// A SHA-256 digest (also an HMAC-SHA256 output).
pub type Hash = [u8; HASH_LEN];

/// An AES key of 128 or 256 bits. Zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct AeadKey {
    bytes: [u8; 32],
    len: u8,
}

impl AeadKey {
    /// A key from its bytes; 16 (AES-128) or 32 (AES-256) bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let len = bytes.len();
        if len != 16 && len != 32 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "AES key must be 16 or 32 bytes",
            ));
        }
        let mut key = Self {
            bytes: [0; 32],
            len: len as u8,
        };
        key.bytes
            .get_mut(..len)
            .ok_or(Error::new(ErrorKind::InvalidArgument, "bad key length"))?
            .copy_from_slice(bytes);
        Ok(key)
    }

    /// A fresh random key of `len` bytes (16 or 32).
    pub fn random(crypto: &dyn Crypto, len: usize) -> Result<Self> {
        let mut bytes = [0u8; 32];
        let buf = bytes
            .get_mut(..len)
            .ok_or(Error::new(ErrorKind::InvalidArgument, "bad key length"))?;
        crypto.fill_random(buf)?;
        let key = Self::from_slice(buf);
        wipe(&mut bytes);
        key
    }

    /// The key bytes (16 or 32 of them).
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len as usize).unwrap_or(&[])
    }

    /// The key length in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Never true: a key has 16 or 32 bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for AeadKey {
    fn drop(&mut self) {
        wipe(&mut self.bytes);
    }
}

/// Secret bytes on the heap (a run of per-block keys), wiped when dropped,
/// so that every way out of the code that holds them (an error included)
/// wipes them.
#[derive(Default)]
pub struct SecretBytes(pub alloc::vec::Vec<u8>);

impl Drop for SecretBytes {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

impl core::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "AeadKey(<{} bits>)", self.len as usize * 8)
    }
}

/// Overwrites a secret with zeros in a way the optimiser keeps.
pub fn wipe(secret: &mut [u8]) {
    for b in secret.iter_mut() {
        *b = 0;
    }
    core::hint::black_box(secret);
}

/// Cryptographic primitives of a platform.
///
/// Implementations are `Send + Sync` and cheap to call: any per-algorithm
/// state (kernel crypto transforms) is set up once when the provider is made.
pub trait Crypto: Send + Sync {
    /// Encrypts `data` in place with AES-GCM under `key` and `iv`,
    /// authenticating `aad` too, and returns the tag.
    ///
    /// The caller guarantees that `(key, iv)` is never used for two different
    /// plaintexts.
    fn aead_seal(&self, key: &AeadKey, iv: &Iv, aad: &[u8], data: &mut [u8]) -> Result<Mac>;

    /// Decrypts `data` in place and checks `mac` over it and `aad`.
    ///
    /// A mismatch is an [`ErrorKind::Integrity`] error; the contents of `data`
    /// are then unspecified and must not be used.
    fn aead_open(
        &self,
        key: &AeadKey,
        iv: &Iv,
        aad: &[u8],
        data: &mut [u8],
        mac: &Mac,
    ) -> Result<()>;

    /// SHA-256 over the concatenation of `parts`.
    fn sha256(&self, parts: &[&[u8]]) -> Result<Hash>;

    /// HMAC-SHA256 under `key` over the concatenation of `parts`.
    fn hmac_sha256(&self, key: &[u8], parts: &[&[u8]]) -> Result<Hash>;

    /// Fills `out` with cryptographically secure random bytes.
    fn fill_random(&self, out: &mut [u8]) -> Result<()>;
}

/// Derives a 32-byte subkey from `root` for one purpose.
///
/// HKDF-SHA256 (RFC 5869) with an empty salt, `label` and `context` joined as
/// the info string, one output block. Different labels give independent keys;
/// the root key itself never keys a cipher.
pub fn kdf(crypto: &dyn Crypto, root: &[u8], label: &[u8], context: &[u8]) -> Result<Hash> {
    let mut prk = crypto.hmac_sha256(&[0u8; HASH_LEN], &[root])?;
    let out = crypto.hmac_sha256(&prk, &[label, &[0u8], context, &[1u8]]);
    wipe(&mut prk);
    out
}

/// Derives an AES key of `len` bytes (16 or 32) from `root` for one purpose.
pub fn kdf_key(
    crypto: &dyn Crypto,
    root: &[u8],
    label: &[u8],
    context: &[u8],
    len: usize,
) -> Result<AeadKey> {
    let mut okm = kdf(crypto, root, label, context)?;
    let key = okm
        .get(..len)
        .ok_or(Error::new(ErrorKind::InvalidArgument, "bad key length"))
        .and_then(AeadKey::from_slice);
    wipe(&mut okm);
    key
}
