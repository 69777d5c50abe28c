// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! The two runtime symbols Rust's `alloc` crate expects from the final
//! link, which rustc only generates for executables and dynamic libraries:
//!
//! - `__rust_alloc_error_handler`, called when an infallible allocation
//!   (`Vec::push`, `Box::new`, ...) fails;
//! - `__rust_no_alloc_shim_is_unstable_v2`, a marker `alloc` calls so that
//!   stable code cannot skip the allocator shim.
//!
//! Their link names carry a compiler-version hash (they are "std internal
//! symbols"), so `#[no_mangle]` cannot produce them; only
//! `#[rustc_std_internal_symbol]` does, which needs `feature(rustc_attrs)`.
//! Kbuild builds the module's own Rust code with `-Zallow-features=` limited
//! to a short list, so the module root cannot enable it; this tiny separate
//! crate, built by `linux/Kbuild` with the kernel's flags but without that
//! restriction, can. (The four allocation entry points, `__rust_alloc` and
//! friends, rustc emits itself for the crate with `#[global_allocator]`:
//! `kernel_platform/allocator.rs`.)

#![no_std]
#![feature(rustc_attrs)]
#![allow(internal_features)]

/// An infallible allocation failed: there is no way to continue the
/// operation, so this panics, which in the kernel is `BUG()`. Input-sized
/// allocations in the engine use `try_reserve` and never get here.
#[rustc_std_internal_symbol]
#[cold]
pub fn __rust_alloc_error_handler(size: usize, align: usize) -> ! {
    panic!("mlsdisk: out of memory: allocation of {size} bytes (align {align}) failed");
}

/// The marker: nothing to do.
#[rustc_std_internal_symbol]
pub fn __rust_no_alloc_shim_is_unstable_v2() {}
