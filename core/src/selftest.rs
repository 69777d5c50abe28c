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
//! Nothing here may panic: every check returns an `Err` naming what failed.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;

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
}
