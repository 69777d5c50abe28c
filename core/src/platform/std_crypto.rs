//! The userspace crypto provider: RustCrypto's AES-GCM (AES-NI and CLMUL when
//! the CPU has them, detected at run time), SHA-256 and HMAC, and the OS RNG.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, Aes256Gcm, KeyInit, Nonce, Tag};
use hmac::{Hmac, Mac as _};
use sha2::{Digest, Sha256};

use super::{AeadKey, Crypto, Hash, Iv, Mac};
use crate::{Error, ErrorKind, Result};

/// Crypto from RustCrypto crates and the operating system's RNG.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdCrypto;

fn integrity() -> Error {
    Error::new(ErrorKind::Integrity, "authentication tag mismatch")
}

impl Crypto for StdCrypto {
    fn aead_seal(&self, key: &AeadKey, iv: &Iv, aad: &[u8], data: &mut [u8]) -> Result<Mac> {
        let nonce = Nonce::from_slice(iv);
        let tag = match key.len() {
            16 => Aes128Gcm::new_from_slice(key.as_bytes())
                .map_err(|_| Error::new(ErrorKind::InvalidArgument, "bad AES key"))?
                .encrypt_in_place_detached(nonce, aad, data),
            _ => Aes256Gcm::new_from_slice(key.as_bytes())
                .map_err(|_| Error::new(ErrorKind::InvalidArgument, "bad AES key"))?
                .encrypt_in_place_detached(nonce, aad, data),
        }
        .map_err(|_| Error::new(ErrorKind::InvalidArgument, "AES-GCM input too long"))?;
        Ok(tag.into())
    }

    fn aead_open(
        &self,
        key: &AeadKey,
        iv: &Iv,
        aad: &[u8],
        data: &mut [u8],
        mac: &Mac,
    ) -> Result<()> {
        let nonce = Nonce::from_slice(iv);
        let tag = Tag::from_slice(mac);
        match key.len() {
            16 => Aes128Gcm::new_from_slice(key.as_bytes())
                .map_err(|_| Error::new(ErrorKind::InvalidArgument, "bad AES key"))?
                .decrypt_in_place_detached(nonce, aad, data, tag),
            _ => Aes256Gcm::new_from_slice(key.as_bytes())
                .map_err(|_| Error::new(ErrorKind::InvalidArgument, "bad AES key"))?
                .decrypt_in_place_detached(nonce, aad, data, tag),
        }
        .map_err(|_| integrity())
    }

    fn sha256(&self, parts: &[&[u8]]) -> Result<Hash> {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        Ok(h.finalize().into())
    }

    fn hmac_sha256(&self, key: &[u8], parts: &[&[u8]]) -> Result<Hash> {
        let mut m = <Hmac<Sha256> as hmac::Mac>::new_from_slice(key)
            .map_err(|_| Error::new(ErrorKind::InvalidArgument, "bad HMAC key"))?;
        for p in parts {
            m.update(p);
        }
        Ok(m.finalize().into_bytes().into())
    }

    fn fill_random(&self, out: &mut [u8]) -> Result<()> {
        getrandom::getrandom(out).map_err(|_| Error::new(ErrorKind::Io, "OS RNG failed"))
    }
}
