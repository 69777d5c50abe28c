//! A self-test of the heap types the engine relies on, run by the kernel
//! module at load time.
//!
//! The kernel module links this crate together with an `alloc` crate it
//! builds itself and a global allocator bridged to the kernel's `kvmalloc`
//! (see `linux/Kbuild`). [`run`] exercises exactly the pieces that bridge has
//! to get right — many small allocations in an ordered map, a buffer past the
//! kmalloc limit (so the vmalloc path), reallocation by growth, shared
//! ownership, alignments up to 8 KiB on every path, and allocation failure
//! reported as `Err` rather than a panic —
//! and returns a checksum that does not depend on the platform.
//!
//! The same function runs in userspace under `cargo test`, which asserts that
//! it returns [`EXPECTED_CHECKSUM`] and recomputes that value with a
//! different method (a sorted `Vec` instead of a `BTreeMap`). The module
//! compares its result against the same constant, so a mismatch between the
//! kernel build and the userspace build shows up as a failed self-test.
//!
//! [`crypto_kat`] and [`structures`] do the same for a crypto provider: the
//! module runs them on its kernel crypto API provider at load time, and
//! the unit tests run them on `StdCrypto`, whose results are the constants.
//!
//! Nothing here may panic: every check returns an `Err` naming what failed.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::bio::BlockSet;
use crate::platform::{AeadKey, Crypto, Hash, Iv, Mac};
use crate::{CryptoRef, ErrorKind};

/// Number of entries put into the ordered map.
pub const ENTRIES: u64 = 10_000;

/// Size of the large buffer: 6 MiB, past the kmalloc limit, so that the
/// kernel allocator has to fall back to vmalloc.
pub const LARGE_LEN: usize = 6 << 20;

/// What [`run`] returns when the allocator and the collections work.
///
/// The userspace unit test asserts this value and recomputes it
/// independently; the kernel module compares against it.
pub const EXPECTED_CHECKSUM: u64 = 0xc275_a129_0d9b_a954;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over `bytes`, continuing from `hash`.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// The key of entry `i`. Multiplying by an odd constant is a bijection on
/// `u64`, so the keys are distinct, and they come out in scrambled order, so
/// the map has to sort them.
fn key_of(i: u64) -> u64 {
    i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The value stored under `key`: 1 to 64 bytes derived from the key.
fn value_of(key: u64) -> Vec<u8> {
    // Truncation is the point: the low byte picks the length.
    #[allow(clippy::cast_possible_truncation)]
    let len = (key % 64) as usize + 1;
    let mut state = key;
    let mut value = Vec::with_capacity(len);
    for _ in 0..len {
        // xorshift64: cheap, deterministic, never zero for a non-zero seed.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        value.push(state.to_le_bytes()[0]);
    }
    value
}

/// The checksum of one entry, folded in key order by [`run`].
fn fold_entry(hash: u64, key: u64, value: &[u8]) -> u64 {
    let hash = fnv1a(hash, &key.to_le_bytes());
    fnv1a(hash, value)
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Align64(u8);
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Align4096(u8);
#[derive(Clone, Copy)]
#[repr(C, align(8192))]
struct Align8192(u8);

/// Whether vectors of `T` with each of `counts` elements can be allocated
/// (fallibly) at `T`'s alignment. The elements are never built on the stack.
fn aligned<T>(counts: &[usize]) -> bool {
    counts.iter().all(|&n| {
        let mut v: Vec<T> = Vec::new();
        v.try_reserve_exact(n).is_ok() && (v.as_ptr() as usize) % core::mem::align_of::<T>() == 0
    })
}

/// Runs the self-test; returns the checksum of the map contents (in key
/// order) mixed with the checks of the other allocations.
///
/// # Errors
///
/// A static description of the first check that failed.
pub fn run() -> Result<u64, &'static str> {
    // 1. Many small allocations, sorted by the map.
    let mut map: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    // An order-independent sum over what went in, to compare with what
    // comes out.
    let mut inserted_sum: u64 = 0;
    for i in 0..ENTRIES {
        let key = key_of(i);
        let value = value_of(key);
        inserted_sum = inserted_sum.wrapping_add(fold_entry(FNV_OFFSET, key, &value));
        if map.insert(key, value).is_some() {
            return Err("duplicate key in ordered map");
        }
    }
    if map.len() as u64 != ENTRIES {
        return Err("ordered map has the wrong length");
    }

    let mut ordered = FNV_OFFSET;
    let mut read_sum: u64 = 0;
    let mut previous: Option<u64> = None;
    for (&key, value) in &map {
        if previous.is_some_and(|p| p >= key) {
            return Err("ordered map iterates out of order");
        }
        previous = Some(key);
        if *value != value_of(key) {
            return Err("ordered map returned a wrong value");
        }
        read_sum = read_sum.wrapping_add(fold_entry(FNV_OFFSET, key, value));
        ordered = fold_entry(ordered, key, value);
    }
    if read_sum != inserted_sum {
        return Err("ordered map contents differ from what was inserted");
    }

    // Remove every third entry (frees many nodes), then look up the rest.
    for i in (0..ENTRIES).step_by(3) {
        if map.remove(&key_of(i)).is_none() {
            return Err("ordered map lost an entry");
        }
    }
    for i in 0..ENTRIES {
        let present = map.contains_key(&key_of(i));
        if present == (i % 3 == 0) {
            return Err("ordered map remove/lookup mismatch");
        }
    }
    drop(map);

    // 2. A large buffer, grown from small so realloc runs, and reserved
    // fallibly, the way input-sized buffers must be.
    let mut large: Vec<u8> = Vec::new();
    let mut len = 1024;
    while large.len() < LARGE_LEN {
        len = len.min(LARGE_LEN);
        if large.try_reserve_exact(len - large.len()).is_err() {
            return Err("cannot allocate a large buffer");
        }
        // Contents must survive every reallocation.
        while large.len() < len {
            #[allow(clippy::cast_possible_truncation)]
            large.push(
                (large.len() as u32)
                    .wrapping_mul(2_654_435_761)
                    .to_le_bytes()[3],
            );
        }
        len *= 2;
    }
    for (i, &b) in large.iter().enumerate() {
        #[allow(clippy::cast_possible_truncation)]
        let want = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3];
        if b != want {
            return Err("large buffer corrupted by reallocation");
        }
    }
    let large_hash = fnv1a(FNV_OFFSET, &large);
    drop(large);

    // 3. Page-sized boxes shared through `Arc`, and a zeroed allocation.
    let page: Arc<Box<[u8; 4096]>> = Arc::new(Box::new([0xa5; 4096]));
    let other = Arc::clone(&page);
    if Arc::strong_count(&page) != 2 || other.iter().any(|&b| b != 0xa5) {
        return Err("shared page buffer is wrong");
    }
    drop(other);
    let zeroed: Vec<u64> = alloc::vec![0; 8192];
    if zeroed.iter().any(|&w| w != 0) {
        return Err("zeroed allocation is not zero");
    }
    drop(zeroed);
    drop(page);

    // 4. Over-aligned blocks, small (kmalloc), large (page allocator) and
    // huge (vmalloc): the alignment must hold on every path.
    if !aligned::<Align64>(&[1, 100])
        || !aligned::<Align4096>(&[1, 3])
        || !aligned::<Align8192>(&[1, 3, 1000])
    {
        return Err("over-aligned allocation is misaligned or failed");
    }

    // 5. Allocation failure must come back as an error, not a panic. The
    // first request passes the capacity check and reaches the allocator,
    // which cannot satisfy it on any 64-bit machine (the kernel's kvmalloc
    // refuses anything over INT_MAX); the second overflows the capacity
    // computation before any allocator is asked.
    let mut huge: Vec<u8> = Vec::new();
    #[allow(clippy::cast_sign_loss)]
    if huge.try_reserve(isize::MAX as usize).is_ok() {
        return Err("try_reserve of isize::MAX bytes succeeded");
    }
    if cfg!(not(test)) && huge.try_reserve(1 << 40).is_ok() {
        // 1 TiB: refused by kvmalloc. Userspace with memory overcommit may
        // grant it lazily, so the unit test does not ask.
        return Err("try_reserve of 1 TiB succeeded");
    }
    let mut words: Vec<u64> = Vec::new();
    if words.try_reserve(usize::MAX / 4).is_ok() {
        return Err("try_reserve past the address space succeeded");
    }
    if huge.capacity() > (1 << 40) || words.capacity() != 0 {
        return Err("failed try_reserve changed the vector");
    }

    Ok(fnv1a(ordered, &large_hash.to_le_bytes()))
}

// ---------------------------------------------------------------------------
// Platform crypto known-answer test and a structure round trip, for the
// kernel's crypto provider.
// ---------------------------------------------------------------------------

/// The AES-GCM cases of [`crypto_kat`]: key, IV, AAD length, data length and
/// the offset of the data inside its buffer (so that a provider sees data
/// that does not start on a page, and data that crosses pages), with the
/// expected SHA-256 of the ciphertext and the expected tag. Inputs are
/// generated by [`pattern`]; the expected values come from [`StdCrypto`]
/// (RustCrypto) and are re-checked by the unit tests.
///
/// [`StdCrypto`]: crate::platform::StdCrypto
struct GcmCase {
    key_len: usize,
    key_seed: u8,
    iv_seed: u8,
    data_seed: u8,
    aad_len: usize,
    data_len: usize,
    offset: usize,
    ct_sha256: Hash,
    tag: Mac,
}

const GCM_CASES: [GcmCase; 4] = [
    // The GCM specification's test case 2 (AES-128, zero key and IV, one
    // zero block): ciphertext 0388dace60b6a392f328c2b971b2fe78.
    GcmCase {
        key_len: 16,
        key_seed: 0,
        iv_seed: 0,
        data_seed: 0,
        aad_len: 0,
        data_len: 16,
        offset: 0,
        ct_sha256: TC2_CT_SHA256,
        tag: hex16("ab6e47d42cec13bdf53a67b21257bddf"),
    },
    // AES-128, AAD, data crossing a page boundary at an unaligned start.
    GcmCase {
        key_len: 16,
        key_seed: 0x10,
        iv_seed: 0x20,
        data_seed: 0x21,
        aad_len: 20,
        data_len: 4196,
        offset: 48,
        ct_sha256: hex32("227244ccc6629183beac74973b4c9623ff2d79a692b59e8644e52ac8eebef819"),
        tag: hex16("7cd3f1443d742ea92e868eed301461b1"),
    },
    // AES-256, no AAD, two whole pages.
    GcmCase {
        key_len: 32,
        key_seed: 0x30,
        iv_seed: 0x40,
        data_seed: 0x41,
        aad_len: 0,
        data_len: 8192,
        offset: 0,
        ct_sha256: hex32("2426028572107a86ba49f11c4c2ae3c345b681c9c280b4ff964c04686beac23a"),
        tag: hex16("7bd33cee30ddb287b63c03f1d0e0d55c"),
    },
    // AES-256, AAD only (GMAC): no data at all (the SHA-256 of nothing).
    GcmCase {
        key_len: 32,
        key_seed: 0x50,
        iv_seed: 0x60,
        data_seed: 0x61,
        aad_len: 60,
        data_len: 0,
        offset: 0,
        ct_sha256: hex32("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        tag: hex16("677ba66c738fe43418808a28a5735c05"),
    },
];

/// SHA-256 of the GCM test case 2 ciphertext (0388dace...fe78).
const TC2_CT_SHA256: Hash =
    hex32("7a99ec0060dacf5890119098fabac48bb07b77921d3f2c87df6af938ab0edd66");

/// SHA-256("abc") (FIPS 180-2, appendix B.1).
const SHA256_ABC: Hash = hex32("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
/// SHA-256 of `pattern(0x70, 5000)`, in three parts.
const SHA256_LONG: Hash = hex32("4c80af53ad8901ae0e0e46fed54cc42f9166f919a36dccda90c5ac6ff19622a9");
/// HMAC-SHA256, RFC 4231 test case 1 (key 20 x 0x0b, "Hi There").
const HMAC_RFC4231_1: Hash =
    hex32("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
/// HMAC-SHA256, RFC 4231 test case 6 (key 131 x 0xaa, longer than a block).
const HMAC_RFC4231_6: Hash =
    hex32("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
/// `platform::kdf(pattern(0x80, 32), "mlsdisk/selftest", "kat")`.
const KDF_KAT: Hash = hex32("cd2da19333ede77ef2b305541fd2284ba919399fe2dc9c1a61e41a53481bd2c1");

/// What [`structures`] returns when the AuthBlob and MacChain round trips
/// recover what was written (independent of the random IVs and salts).
pub const STRUCTURES_CHECKSUM: u64 = 0x2360_e8d3_0c2c_f6ac;

const fn hex_nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => 0,
    }
}

/// `N` bytes from `2 * N` lowercase hex digits (compile time only).
#[expect(
    clippy::indexing_slicing,
    reason = "const fn over constant strings; the loop bounds are checked"
)]
const fn hex<const N: usize>(s: &str) -> [u8; N] {
    let s = s.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N && 2 * i + 1 < s.len() {
        out[i] = hex_nibble(s[2 * i]) << 4 | hex_nibble(s[2 * i + 1]);
        i += 1;
    }
    out
}

const fn hex16(s: &str) -> Mac {
    hex::<16>(s)
}

const fn hex32(s: &str) -> Hash {
    hex::<32>(s)
}

/// `len` deterministic bytes starting from `seed` (0 gives all zeros, as
/// the GCM test case 2 needs).
fn pattern(seed: u8, len: usize) -> Result<Vec<u8>, &'static str> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| "out of memory")?;
    let mut state = u32::from(seed);
    for _ in 0..len {
        if seed == 0 {
            v.push(0);
            continue;
        }
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        v.push(state.to_le_bytes()[2]);
    }
    Ok(v)
}

fn is_integrity<T>(r: crate::Result<T>) -> bool {
    matches!(r, Err(e) if e.kind() == ErrorKind::Integrity)
}

/// The ciphertext hash and tag one provider gives for `case`, after
/// checking that it opens again (and refuses a flipped byte of ciphertext,
/// tag or AAD).
fn gcm_case(crypto: &dyn Crypto, case: &GcmCase) -> Result<(Hash, Mac), &'static str> {
    let key_bytes = pattern(case.key_seed, case.key_len)?;
    let key = AeadKey::from_slice(&key_bytes).map_err(|_| "bad KAT key")?;
    let iv: Iv = pattern(case.iv_seed, 12)?
        .as_slice()
        .try_into()
        .map_err(|_| "bad KAT IV")?;
    let aad = pattern(case.iv_seed.wrapping_add(1), case.aad_len)?;
    let plain = pattern(case.data_seed, case.data_len)?;
    let mut buf = pattern(0, case.offset + case.data_len)?;
    let data = buf.get_mut(case.offset..).ok_or("KAT buffer")?;
    data.copy_from_slice(&plain);

    let tag = crypto
        .aead_seal(&key, &iv, &aad, data)
        .map_err(|_| "AES-GCM seal failed")?;
    let ct_hash = crypto.sha256(&[data]).map_err(|_| "SHA-256 failed")?;

    if !data.is_empty() {
        let mut bad = data.to_vec();
        if let Some(b) = bad.get_mut(case.data_len / 2) {
            *b ^= 0x01;
        }
        if !is_integrity(crypto.aead_open(&key, &iv, &aad, &mut bad, &tag)) {
            return Err("AES-GCM open accepted a flipped ciphertext byte");
        }
    }
    let mut bad_tag = tag;
    bad_tag[15] ^= 0x80;
    let mut copy = data.to_vec();
    if !is_integrity(crypto.aead_open(&key, &iv, &aad, &mut copy, &bad_tag)) {
        return Err("AES-GCM open accepted a flipped tag");
    }
    if !aad.is_empty() {
        let mut bad_aad = aad.clone();
        if let Some(b) = bad_aad.first_mut() {
            *b ^= 0x04;
        }
        let mut copy = data.to_vec();
        if !is_integrity(crypto.aead_open(&key, &iv, &bad_aad, &mut copy, &tag)) {
            return Err("AES-GCM open accepted a flipped AAD byte");
        }
    }
    crypto
        .aead_open(&key, &iv, &aad, data, &tag)
        .map_err(|_| "AES-GCM open of its own ciphertext failed")?;
    if data != plain.as_slice() {
        return Err("AES-GCM open did not give back the plaintext");
    }
    Ok((ct_hash, tag))
}

/// Known-answer test of a crypto provider: AES-128/256-GCM (with and
/// without AAD, data crossing pages and starting mid-page, AAD only),
/// rejection of flipped ciphertext, tag and AAD, SHA-256, HMAC-SHA256 (RFC
/// 4231), the HKDF of [`crate::platform::kdf`], and random bytes that are
/// not constant.
///
/// The kernel module runs it on its crypto API provider at load time; the
/// unit tests run it on [`crate::platform::StdCrypto`], which is where the
/// expected values come from.
///
/// # Errors
///
/// A static description of the first check that failed.
pub fn crypto_kat(crypto: &dyn Crypto) -> Result<(), &'static str> {
    for case in &GCM_CASES {
        let (ct_hash, tag) = gcm_case(crypto, case)?;
        if ct_hash != case.ct_sha256 {
            return Err("AES-GCM ciphertext differs from the known answer");
        }
        if tag != case.tag {
            return Err("AES-GCM tag differs from the known answer");
        }
    }

    let sha = |parts: &[&[u8]]| crypto.sha256(parts).map_err(|_| "SHA-256 failed");
    if sha(&[b"abc"])? != SHA256_ABC || sha(&[b"a", b"", b"bc"])? != SHA256_ABC {
        return Err("SHA-256 differs from the known answer");
    }
    let long = pattern(0x70, 5000)?;
    let (a, rest) = long.split_at(1000);
    let (b, c) = rest.split_at(4000 - 1000);
    if sha(&[&long])? != SHA256_LONG || sha(&[a, b, c])? != SHA256_LONG {
        return Err("SHA-256 of a long input differs from the known answer");
    }

    let hmac = |key: &[u8], parts: &[&[u8]]| {
        crypto
            .hmac_sha256(key, parts)
            .map_err(|_| "HMAC-SHA256 failed")
    };
    if hmac(&[0x0b; 20], &[b"Hi ", b"There"])? != HMAC_RFC4231_1 {
        return Err("HMAC-SHA256 differs from RFC 4231 test case 1");
    }
    let msg: &[u8] = b"Test Using Larger Than Block-Size Key - Hash Key First";
    if hmac(&[0xaa; 131], &[msg])? != HMAC_RFC4231_6 {
        return Err("HMAC-SHA256 differs from RFC 4231 test case 6");
    }
    let root = pattern(0x80, 32)?;
    let derived = crate::platform::kdf(crypto, &root, b"mlsdisk/selftest", b"kat")
        .map_err(|_| "key derivation failed")?;
    if derived != KDF_KAT {
        return Err("key derivation differs from the known answer");
    }

    let mut r1 = [0u8; 32];
    let mut r2 = [0u8; 32];
    crypto
        .fill_random(&mut r1)
        .and_then(|()| crypto.fill_random(&mut r2))
        .map_err(|_| "random bytes failed")?;
    if r1 == r2 || r1 == [0; 32] {
        return Err("random bytes are constant");
    }
    Ok(())
}

/// A small in-memory block device without `std` and without `unsafe`:
/// the blocks live in atomic words (relaxed loads and stores; callers of
/// the self-test do not race on a block).
pub struct WordDisk {
    words: Vec<core::sync::atomic::AtomicU64>,
}

const WORDS_PER_BLOCK: usize = crate::bio::BLOCK_SIZE / 8;

impl WordDisk {
    /// A zeroed device of `nblocks` blocks.
    ///
    /// # Errors
    ///
    /// `OutOfMemory` if the blocks cannot be allocated.
    pub fn new(nblocks: usize) -> crate::Result<Self> {
        let n = nblocks
            .checked_mul(WORDS_PER_BLOCK)
            .ok_or(crate::Error::oom())?;
        let mut words = Vec::new();
        words.try_reserve_exact(n)?;
        words.resize_with(n, || core::sync::atomic::AtomicU64::new(0));
        Ok(Self { words })
    }

    fn words(&self, pos: u64, len: usize) -> crate::Result<&[core::sync::atomic::AtomicU64]> {
        crate::bio::check_range(self.nblocks(), pos, len)?;
        let start = usize::try_from(pos)
            .map_err(|_| crate::Error::new(ErrorKind::InvalidArgument, "block past the end"))?
            * WORDS_PER_BLOCK;
        self.words
            .get(start..start + len / 8)
            .ok_or(crate::Error::new(
                ErrorKind::InvalidArgument,
                "block past the end",
            ))
    }

    /// Flips the bits of `mask` in byte `byte` of block `pos` (an attack).
    pub fn flip(&self, pos: u64, byte: usize, mask: u8) {
        if let Ok(words) = self.words(pos, crate::bio::BLOCK_SIZE) {
            if let Some(w) = words.get(byte / 8) {
                w.fetch_xor(
                    u64::from(mask) << (8 * (byte % 8)),
                    core::sync::atomic::Ordering::Relaxed,
                );
            }
        }
    }
}

impl BlockSet for WordDisk {
    fn read(&self, pos: u64, buf: &mut [u8]) -> crate::Result<()> {
        let words = self.words(pos, buf.len())?;
        for (w, out) in words.iter().zip(buf.chunks_exact_mut(8)) {
            out.copy_from_slice(&w.load(core::sync::atomic::Ordering::Relaxed).to_le_bytes());
        }
        Ok(())
    }
    fn write(&self, pos: u64, buf: &[u8]) -> crate::Result<()> {
        let words = self.words(pos, buf.len())?;
        for (w, chunk) in words.iter().zip(buf.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            w.store(u64::from_le_bytes(b), core::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }
    fn flush(&self) -> crate::Result<()> {
        Ok(())
    }
    fn nblocks(&self) -> u64 {
        (self.words.len() / WORDS_PER_BLOCK) as u64
    }
}

/// Round trips of the two crypto-layer structures on an in-memory device
/// with `crypto`: an [`AuthBlob`] (create, write, reopen at the newest
/// version, wrong key refused as `WrongKey`) and a [`MacChain`] (records
/// spanning blocks committed, reopened and read back; a flipped byte in a
/// chain block refused as `Integrity`).
///
/// Returns a checksum of everything read back, which does not depend on the
/// random IVs and salts: [`STRUCTURES_CHECKSUM`] on every correct platform.
///
/// [`AuthBlob`]: crate::crypto::AuthBlob
/// [`MacChain`]: crate::crypto::MacChain
///
/// # Errors
///
/// A static description of the first check that failed.
pub fn structures(crypto: CryptoRef) -> Result<u64, &'static str> {
    use crate::bio::BlockRange;
    use crate::crypto::{AuthBlob, MacChain};

    let disk = WordDisk::new(24).map_err(|_| "out of memory")?;
    let root = pattern(0x90, 32)?;
    let mut hash = FNV_OFFSET;

    // AuthBlob in blocks 0 and 1.
    let first = pattern(0xa0, 300)?;
    let second = pattern(0xa1, 3000)?;
    let mut blob = AuthBlob::create(&disk, 0, crypto.clone(), &root, &first)
        .map_err(|_| "AuthBlob create failed")?;
    blob.write(&second).map_err(|_| "AuthBlob write failed")?;
    drop(blob);
    let (blob, payload) =
        AuthBlob::open(&disk, 0, crypto.clone(), &root).map_err(|_| "AuthBlob open failed")?;
    if blob.version() != 3 || payload != second {
        return Err("AuthBlob did not reopen at its newest version");
    }
    hash = fnv1a(hash, &blob.version().to_le_bytes());
    hash = fnv1a(hash, &payload);
    drop(blob);
    let mut wrong = root.clone();
    if let Some(b) = wrong.first_mut() {
        *b ^= 1;
    }
    match AuthBlob::open(&disk, 0, crypto.clone(), &wrong) {
        Err(e) if e.kind() == ErrorKind::WrongKey => {}
        _ => return Err("AuthBlob opened, or failed otherwise, with a wrong key"),
    }

    // MacChain in blocks 4..20.
    let key = crate::platform::kdf_key(&*crypto, &root, b"mlsdisk/selftest/chain", &[], 32)
        .map_err(|_| "key derivation failed")?;
    let region = BlockRange::new(&disk, 4, 16).map_err(|_| "chain region")?;
    let records = [pattern(0xb0, 10)?, pattern(0xb1, 5000)?, pattern(0xb2, 1)?];
    let mut chain = MacChain::create(region, crypto.clone(), key.clone())
        .map_err(|_| "MacChain create failed")?;
    let start = chain.start();
    for r in records.iter().take(2) {
        chain.append(r).map_err(|_| "MacChain append failed")?;
    }
    chain.commit().map_err(|_| "MacChain commit failed")?;
    let [.., last] = &records;
    chain.append(last).map_err(|_| "MacChain append failed")?;
    let tail = chain.commit().map_err(|_| "MacChain commit failed")?;
    drop(chain);
    let region = BlockRange::new(&disk, 4, 16).map_err(|_| "chain region")?;
    let (chain, got) = MacChain::open(region, crypto.clone(), key.clone(), start, tail)
        .map_err(|_| "MacChain open failed")?;
    if got.len() != records.len() || got.iter().zip(&records).any(|(a, b)| a != b) {
        return Err("MacChain gave back other records than were committed");
    }
    if chain.tail() != tail {
        return Err("MacChain reopened at another tail");
    }
    hash = fnv1a(hash, &chain.tail().seq.to_le_bytes());
    for r in &got {
        hash = fnv1a(hash, r);
    }
    drop(chain);
    // Flip a ciphertext byte of the second chain block.
    disk.flip(5, 1000, 0x10);
    let region = BlockRange::new(&disk, 4, 16).map_err(|_| "chain region")?;
    if !is_integrity(MacChain::open(region, crypto, key, start, tail)) {
        return Err("MacChain opened past a flipped byte");
    }
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::println;

    /// The same checksum, computed without a `BTreeMap`: generate, sort,
    /// drop every third entry only after hashing (as `run` does).
    fn recompute() -> u64 {
        let mut entries: Vec<(u64, Vec<u8>)> = (0..ENTRIES)
            .map(|i| (key_of(i), value_of(key_of(i))))
            .collect();
        entries.sort_unstable_by_key(|e| e.0);
        let mut hash = FNV_OFFSET;
        for (k, v) in &entries {
            hash = fnv1a(hash, &k.to_le_bytes());
            hash = fnv1a(hash, v);
        }
        let large: Vec<u8> = (0..LARGE_LEN as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let large_hash = fnv1a(FNV_OFFSET, &large);
        fnv1a(hash, &large_hash.to_le_bytes())
    }

    #[test]
    fn selftest_matches_independent_recomputation() {
        let got = run();
        let want = recompute();
        println!("selftest checksum={got:x?} recomputed={want:#018x}");
        assert_eq!(got, Ok(want));
        assert_eq!(got, Ok(EXPECTED_CHECKSUM), "update EXPECTED_CHECKSUM");
    }

    #[test]
    fn fnv1a_reference_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn gcm_test_case_2_is_the_published_one() {
        // The GCM specification's ciphertext for test case 2.
        let mut ct = [0u8; 16];
        let key = AeadKey::from_slice(&[0; 16]).unwrap();
        let c = crate::platform::StdCrypto;
        let tag = c.aead_seal(&key, &[0; 12], &[], &mut ct).unwrap();
        assert_eq!(ct, hex::<16>("0388dace60b6a392f328c2b971b2fe78"));
        assert_eq!(tag, GCM_CASES[0].tag);
        assert_eq!(c.sha256(&[&ct]).unwrap(), TC2_CT_SHA256);
    }

    #[test]
    fn std_crypto_passes_the_known_answer_test() {
        assert_eq!(crypto_kat(&crate::platform::StdCrypto), Ok(()));
    }

    /// A provider with one wrong bit must fail the KAT.
    struct Broken;
    impl Crypto for Broken {
        fn aead_seal(
            &self,
            key: &AeadKey,
            iv: &Iv,
            aad: &[u8],
            data: &mut [u8],
        ) -> crate::Result<Mac> {
            let mut tag = crate::platform::StdCrypto.aead_seal(key, iv, aad, data)?;
            tag[0] ^= 1;
            Ok(tag)
        }
        fn aead_open(
            &self,
            key: &AeadKey,
            iv: &Iv,
            aad: &[u8],
            data: &mut [u8],
            mac: &Mac,
        ) -> crate::Result<()> {
            let mut mac = *mac;
            mac[0] ^= 1;
            crate::platform::StdCrypto.aead_open(key, iv, aad, data, &mac)
        }
        fn sha256(&self, parts: &[&[u8]]) -> crate::Result<Hash> {
            crate::platform::StdCrypto.sha256(parts)
        }
        fn hmac_sha256(&self, key: &[u8], parts: &[&[u8]]) -> crate::Result<Hash> {
            crate::platform::StdCrypto.hmac_sha256(key, parts)
        }
        fn fill_random(&self, out: &mut [u8]) -> crate::Result<()> {
            crate::platform::StdCrypto.fill_random(out)
        }
    }

    #[test]
    fn a_wrong_provider_fails_the_known_answer_test() {
        assert_eq!(
            crypto_kat(&Broken),
            Err("AES-GCM tag differs from the known answer")
        );
    }

    #[test]
    fn structures_round_trip_with_std_crypto() {
        let crypto: CryptoRef = std::sync::Arc::new(crate::platform::StdCrypto);
        assert_eq!(structures(crypto.clone()), Ok(STRUCTURES_CHECKSUM));
        // Random IVs and salts differ per run; the checksum does not.
        assert_eq!(structures(crypto), Ok(STRUCTURES_CHECKSUM));
    }

    #[test]
    fn word_disk_is_a_block_set() {
        let d = WordDisk::new(3).unwrap();
        let mut b = vec![7u8; 8192];
        b[4096] = 9;
        d.write(1, &b).unwrap();
        let mut r = vec![0u8; 4096];
        d.read(2, &mut r).unwrap();
        assert_eq!(r[0], 9);
        d.flip(2, 0, 0xff);
        d.read(2, &mut r).unwrap();
        assert_eq!(r[0], 9 ^ 0xff);
        assert!(d.read(3, &mut r).is_err());
        assert!(d.write(2, &b).is_err());
        assert_eq!(d.nblocks(), 3);
    }
}
