//! AES-GCM throughput on one core: seal + open of 4 KiB blocks.
//!
//! ```text
//! cargo run --release -p mlsdisk-core --example crypto_bench [MiB per case]
//! ```
//!
//! Cases:
//! - `StdCrypto` through the `Crypto` trait, as the engine calls it (the
//!   cipher, i.e. the AES key schedule and GHASH key, is set up per call:
//!   the data path uses a fresh key per block anyway);
//! - RustCrypto `aes-gcm` with the cipher set up once (the ceiling of the
//!   provider's backend);
//! - `ring` (a dev-dependency, for comparison only), key set up per call
//!   and once.
//!
//! MiB/s counts plaintext bytes, once per seal+open pair.

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, Aes256Gcm, KeyInit, Nonce, Tag};
use mlsdisk_core::platform::{AeadKey, Crypto, StdCrypto};
use ring::aead::{self as ra, LessSafeKey, UnboundKey};

const BLOCK: usize = 4096;

fn report(name: &str, bytes: u64, d: Duration) {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    println!("{name:<44} {:>9.1} MiB/s", mib / d.as_secs_f64());
}

fn run(name: &str, total: u64, mut f: impl FnMut(u64, &mut [u8])) {
    let mut buf = vec![0x5au8; BLOCK];
    // Warm up.
    for i in 0..64 {
        f(i, &mut buf);
    }
    let n = total / BLOCK as u64;
    let t = Instant::now();
    for i in 0..n {
        f(i, &mut buf);
    }
    report(name, n * BLOCK as u64, t.elapsed());
    black_box(&buf);
}

fn iv_of(i: u64) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[..8].copy_from_slice(&i.to_le_bytes());
    iv
}

fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let total = mib << 20;
    println!("AES-GCM seal+open of 4 KiB blocks, one core, {mib} MiB per case");
    let c = StdCrypto;
    for klen in [16usize, 32] {
        let bits = klen * 8;
        let key = AeadKey::random(&c, klen).unwrap();
        let aad = [0u8; 36];

        run(
            &format!("StdCrypto (trait, per-call setup) AES-{bits}"),
            total,
            |i, buf| {
                let iv = iv_of(i);
                let tag = c.aead_seal(&key, &iv, &aad, buf).unwrap();
                c.aead_open(&key, &iv, &aad, buf, &tag).unwrap();
            },
        );

        macro_rules! cached {
            ($ty:ty) => {{
                let cipher = <$ty>::new_from_slice(key.as_bytes()).unwrap();
                run(
                    &format!("aes-gcm 0.10 (cipher cached)     AES-{bits}"),
                    total,
                    |i, buf| {
                        let iv = iv_of(i);
                        let n = Nonce::from_slice(&iv);
                        let tag: Tag = cipher.encrypt_in_place_detached(n, &aad, buf).unwrap();
                        cipher
                            .decrypt_in_place_detached(n, &aad, buf, &tag)
                            .unwrap();
                    },
                );
            }};
        }
        if klen == 16 {
            cached!(Aes128Gcm);
        } else {
            cached!(Aes256Gcm);
        }

        let alg = if klen == 16 {
            &ra::AES_128_GCM
        } else {
            &ra::AES_256_GCM
        };
        let rkey = LessSafeKey::new(UnboundKey::new(alg, key.as_bytes()).unwrap());
        let ring_once = |i: u64, buf: &mut [u8], k: &LessSafeKey| {
            let iv = iv_of(i);
            let tag = k
                .seal_in_place_separate_tag(
                    ra::Nonce::assume_unique_for_key(iv),
                    ra::Aad::from(&aad),
                    buf,
                )
                .unwrap();
            let mut t = [0u8; 16];
            t.copy_from_slice(tag.as_ref());
            k.open_in_place_separate_tag(
                ra::Nonce::assume_unique_for_key(iv),
                ra::Aad::from(&aad),
                ra::Tag::from(t),
                buf,
                0..,
            )
            .unwrap();
        };
        run(
            &format!("ring 0.17 (per-call setup)       AES-{bits}"),
            total,
            |i, buf| {
                let k = LessSafeKey::new(UnboundKey::new(alg, key.as_bytes()).unwrap());
                ring_once(i, buf, &k)
            },
        );
        run(
            &format!("ring 0.17 (key cached)           AES-{bits}"),
            total,
            |i, buf| ring_once(i, buf, &rkey),
        );
    }
}
