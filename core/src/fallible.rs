//! Allocation that fails with an error instead of aborting.
//!
//! `vec![v; n]` aborts the program when `n` elements cannot be allocated;
//! the engine sizes many buffers from what it read on the device or was
//! configured with, so it allocates them with [`filled_vec`] instead.

use alloc::vec::Vec;

use crate::Result;

/// `n` copies of `v`, or [`crate::ErrorKind::OutOfMemory`] when the
/// vector cannot be allocated.
pub(crate) fn filled_vec<T: Clone>(n: usize, v: T) -> Result<Vec<T>> {
    let mut x = Vec::new();
    x.try_reserve_exact(n)?;
    x.resize(n, v);
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filled_vec_has_n_copies_and_refuses_an_impossible_size() {
        let v = filled_vec(5, 7u16).unwrap();
        assert_eq!(v, [7, 7, 7, 7, 7]);
        assert!(filled_vec(0, 1u8).unwrap().is_empty());
        let e = filled_vec(usize::MAX / 2, 0u64).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::OutOfMemory);
    }
}
