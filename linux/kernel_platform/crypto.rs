// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! [`KernelCrypto`]: the core engine's [`Crypto`] provider on the kernel's
//! crypto API and crypto library.
//!
//! - AES-GCM: a pool of synchronous `gcm(aes)` AEAD transforms (the AES-NI
//!   implementation where the CPU has it), allocated once when the provider
//!   is made, one slot per possible CPU, each behind its own mutex. A call
//!   takes a slot, sets the (per-block) key on its transform and runs one
//!   request: never a transform allocation per block. See `kernel_platform/platform.c`.
//! - SHA-256 and HMAC-SHA256: the kernel's library functions
//!   (`<crypto/sha2.h>`), no transform at all.
//! - Random bytes: `get_random_bytes`.
//!
//! Every method may sleep: call it from process context only (as the whole
//! engine is called).

use core::ptr::NonNull;

use kernel::prelude::*;
use mlsdisk_core::platform::{AeadKey, Crypto, Hash, Iv, Mac, HASH_LEN, MAC_LEN};
use mlsdisk_core::{Error as CoreError, ErrorKind, Result as CoreResult};

use crate::kernel_platform::{bindings, CtrError};
use crate::table::{KeyRef, RawKey, KEY_DESC_MAX};

/// The kernel's crypto provider. See the module documentation.
///
/// # Invariants
///
/// `pool` came from `mlsdisk_aead_pool_new` and is freed only by `drop`.
pub(crate) struct KernelCrypto {
    pool: NonNull<bindings::mlsdisk_aead_pool>,
}

// SAFETY: the pool is plain heap memory plus crypto transforms; it is not
// bound to the thread that made it, and `drop` frees it once.
unsafe impl Send for KernelCrypto {}
// SAFETY: every use of a slot of the pool happens under that slot's mutex
// (inside `mlsdisk_aead_crypt`); the other accessors only read fields that
// never change after creation.
unsafe impl Sync for KernelCrypto {}

impl KernelCrypto {
    /// Allocates the transform pool. Sleeps.
    ///
    /// # Errors
    ///
    /// `ENOMEM`, or the crypto API's error (`ENOENT` without `gcm(aes)`).
    pub(crate) fn new() -> Result<Self> {
        let mut err: c_int = 0;
        // SAFETY: `err` is a valid out-pointer; process context (may sleep).
        let pool = unsafe { bindings::mlsdisk_aead_pool_new(0, &mut err) };
        match NonNull::new(pool) {
            // INVARIANT: a pool just made by `mlsdisk_aead_pool_new`.
            Some(pool) => Ok(Self { pool }),
            None if err < 0 => Err(Error::from_errno(err)),
            None => Err(ENOMEM),
        }
    }

    /// The number of transform slots.
    pub(crate) fn slots(&self) -> u32 {
        // SAFETY: a live pool (type invariant).
        unsafe { bindings::mlsdisk_aead_pool_slots(self.pool.as_ptr()) }
    }

    /// The crypto API driver behind `gcm(aes)`, e.g. `generic-gcm-aesni`.
    pub(crate) fn driver(&self) -> &CStr {
        // SAFETY: a live pool (type invariant); the name is a static string
        // of the algorithm, which the pool's transforms keep loaded.
        unsafe { CStr::from_char_ptr(bindings::mlsdisk_aead_pool_driver(self.pool.as_ptr())) }
    }

    /// Runs one AES-GCM operation in place; see [`Crypto::aead_seal`].
    fn crypt(
        &self,
        encrypt: bool,
        key: &AeadKey,
        iv: &Iv,
        aad: &[u8],
        data: &mut [u8],
        tag: &mut Mac,
    ) -> CoreResult<()> {
        let too_long = || CoreError::new(ErrorKind::InvalidArgument, "AES-GCM input too long");
        let len = u32::try_from(data.len()).map_err(|_| too_long())?;
        let aad_len = u32::try_from(aad.len()).map_err(|_| too_long())?;
        let key_len = u32::try_from(key.len()).map_err(|_| too_long())?;
        // SAFETY: a live pool (type invariant); `key` (`key_len` bytes), `iv`
        // (12), `aad` (`aad_len`), `data` (`len`, written in place) and `tag`
        // (16) are valid for the call and not aliased; the helper accepts
        // any kernel address for them and sleeps (process context).
        let ret = unsafe {
            bindings::mlsdisk_aead_crypt(
                self.pool.as_ptr(),
                encrypt,
                key.as_bytes().as_ptr(),
                key_len,
                iv.as_ptr(),
                aad.as_ptr(),
                aad_len,
                data.as_mut_ptr(),
                len,
                tag.as_mut_ptr(),
            )
        };
        match ret {
            0 => Ok(()),
            e if e == EBADMSG.to_errno() => Err(CoreError::new(
                ErrorKind::Integrity,
                "authentication tag mismatch",
            )),
            e if e == ENOMEM.to_errno() => Err(CoreError::oom()),
            e if e == EINVAL.to_errno() => Err(CoreError::new(
                ErrorKind::InvalidArgument,
                "kernel crypto API refused the AES-GCM arguments",
            )),
            _ => Err(CoreError::new(
                ErrorKind::Io,
                "kernel crypto API failed an AES-GCM request",
            )),
        }
    }
}

impl Drop for KernelCrypto {
    fn drop(&mut self) {
        // SAFETY: the pool is live (type invariant) and no call can run on
        // it: they all borrow `self`.
        unsafe { bindings::mlsdisk_aead_pool_free(self.pool.as_ptr()) };
    }
}

/// Most message parts passed to the hash helpers without an allocation.
const INLINE_PARTS: usize = 8;

/// Calls `f` with `parts` as an array of `mlsdisk_part`.
fn with_parts<R>(parts: &[&[u8]], f: impl FnOnce(&[bindings::mlsdisk_part]) -> R) -> CoreResult<R> {
    let to_part = |p: &&[u8]| bindings::mlsdisk_part {
        data: p.as_ptr(),
        len: p.len(),
    };
    if parts.len() <= INLINE_PARTS {
        let mut inline = [bindings::mlsdisk_part {
            data: core::ptr::null(),
            len: 0,
        }; INLINE_PARTS];
        for (slot, p) in inline.iter_mut().zip(parts) {
            *slot = to_part(p);
        }
        Ok(f(inline.get(..parts.len()).unwrap_or(&[])))
    } else {
        let mut v = KVec::with_capacity(parts.len(), GFP_KERNEL).map_err(|_| CoreError::oom())?;
        for p in parts {
            v.push(to_part(p), GFP_KERNEL)
                .map_err(|_| CoreError::oom())?;
        }
        Ok(f(&v))
    }
}

impl Crypto for KernelCrypto {
    fn aead_seal(&self, key: &AeadKey, iv: &Iv, aad: &[u8], data: &mut [u8]) -> CoreResult<Mac> {
        let mut tag = [0u8; MAC_LEN];
        self.crypt(true, key, iv, aad, data, &mut tag)?;
        Ok(tag)
    }

    fn aead_open(
        &self,
        key: &AeadKey,
        iv: &Iv,
        aad: &[u8],
        data: &mut [u8],
        mac: &Mac,
    ) -> CoreResult<()> {
        let mut tag = *mac;
        self.crypt(false, key, iv, aad, data, &mut tag)
    }

    fn sha256(&self, parts: &[&[u8]]) -> CoreResult<Hash> {
        let mut out = [0u8; HASH_LEN];
        with_parts(parts, |p| {
            // SAFETY: `p` holds `p.len()` valid (pointer, length) pairs that
            // borrow from `parts`, alive for the call; `out` has 32 bytes.
            unsafe { bindings::mlsdisk_sha256(p.as_ptr(), p.len(), out.as_mut_ptr()) }
        })?;
        Ok(out)
    }

    fn hmac_sha256(&self, key: &[u8], parts: &[&[u8]]) -> CoreResult<Hash> {
        hmac_sha256(key, parts)
    }

    fn fill_random(&self, out: &mut [u8]) -> CoreResult<()> {
        // SAFETY: `out` is valid for writes of `out.len()` bytes;
        // `get_random_bytes` may be called from any context.
        unsafe { kernel::bindings::get_random_bytes(out.as_mut_ptr().cast(), out.len()) };
        Ok(())
    }
}

/// HMAC-SHA256 of the concatenated `parts` under `key` (the kernel's
/// crypto library; no transform to allocate).
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> CoreResult<Hash> {
    {
        let mut out = [0u8; HASH_LEN];
        with_parts(parts, |p| {
            // SAFETY: as in `sha256`; `key` is valid for `key.len()` bytes.
            unsafe {
                bindings::mlsdisk_hmac_sha256(
                    key.as_ptr(),
                    key.len(),
                    p.as_ptr(),
                    p.len(),
                    out.as_mut_ptr(),
                )
            }
        })?;
        Ok(out)
    }
}

/// Reads the key `r` refers to from the kernel keyring (a `logon` or `user`
/// key of exactly `r.size` bytes) into `key`, in place (no copy of it is
/// made here). Sleeps.
///
/// # Errors
///
/// The constructor error naming why (not found, revoked or expired, not
/// readable, another size), with the detail in the kernel log; `key` is
/// empty then.
pub(crate) fn keyring_key(r: &KeyRef, key: &mut RawKey) -> Result<(), CtrError> {
    let mut desc = [0u8; KEY_DESC_MAX + 1];
    if let Some(d) = desc.get_mut(..r.desc().len()) {
        d.copy_from_slice(r.desc());
    }
    let ret = match key.fill(r.size) {
        Some(buf) => {
            // SAFETY: `desc` is NUL-terminated (one byte more than the
            // longest description, zero-filled); `buf` has room for
            // `buf.len()` bytes, which the call writes at most.
            unsafe {
                bindings::mlsdisk_keyring_read(
                    matches!(r.kind, crate::table::KeyKind::Logon),
                    desc.as_ptr().cast(),
                    buf.as_mut_ptr(),
                    buf.len() as u32,
                )
            }
        }
        // The parser allows only 16 and 32.
        None => EMSGSIZE.to_errno(),
    };
    if ret == 0 {
        return Ok(());
    }
    key.clear();
    let (why, msg): (&str, &'static CStr) = match ret {
        e if e == ENOKEY.to_errno() => ("not found", c"keyring key not found"),
        e if e == EKEYREVOKED.to_errno() || e == EKEYEXPIRED.to_errno() => {
            ("revoked or expired", c"keyring key revoked or expired")
        }
        e if e == EACCES.to_errno() => ("not readable", c"keyring key not readable"),
        e if e == EMSGSIZE.to_errno() => ("not of the size given", c"keyring key has another size"),
        _ => ("unreadable", c"cannot read the keyring key"),
    };
    pr_err!(
        "keyring key '{}' {}: error {}\n",
        format_args!("{}", r),
        why,
        ret
    );
    let err = if ret < 0 {
        Error::from_errno(ret)
    } else {
        EINVAL
    };
    Err(CtrError::new(msg, err))
}
