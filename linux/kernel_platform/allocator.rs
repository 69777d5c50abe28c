// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! The global allocator of the module: Rust's `alloc` crate (built by
//! `linux/Kbuild` and used by the core engine) allocates through here, and
//! here forwards to the kernel's `kvmalloc` family through the kernel crate's
//! [`KVmalloc`].
//!
//! - Flags: `GFP_KERNEL | __GFP_NOWARN`. `GFP_KERNEL` may sleep, so the
//!   engine runs in process context only (workers, the constructor), never in
//!   the dm `map` path or in interrupts. `__GFP_NOWARN` because a failed
//!   request is an ordinary `Err` for `try_reserve` callers, not a kernel
//!   warning (kvmalloc warns about sizes over `INT_MAX` otherwise).
//! - `alloc_zeroed` adds `__GFP_ZERO` instead of zeroing by hand.
//! - `realloc` keeps the old block valid on failure (the `KVmalloc`
//!   contract), as `GlobalAlloc::realloc` requires.
//! - Alignment: `KVmalloc` honours the layout's alignment (it pads the size
//!   for the kmalloc path and passes the alignment to vmalloc).
//! - Failure of an infallible allocation (`Vec::push`, `Box::new`) ends in
//!   `alloc`'s error handler (`alloc_shim.rs`), i.e. a kernel `BUG()`;
//!   sizes that depend on input must use `try_reserve` and friends.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};

use kernel::alloc::{allocator::KVmalloc, flags, Allocator, Flags, NumaNode};

/// The flags of every allocation made through `alloc`.
fn gfp() -> Flags {
    flags::GFP_KERNEL | flags::__GFP_NOWARN
}

/// The bridge from `GlobalAlloc` to [`KVmalloc`].
struct KernelAllocator;

// SAFETY: every method forwards to `KVmalloc`, which returns blocks valid for
// the requested layout (size and alignment) until freed, keeps a block valid
// when `realloc` fails, and accepts in `free`/`realloc` exactly the blocks it
// returned with the layout they were allocated with; null is returned for
// every failure and no method panics.
unsafe impl GlobalAlloc for KernelAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match KVmalloc::alloc(layout, gfp(), NumaNode::NO_NODE) {
            Ok(block) => block.as_ptr().cast(),
            Err(_) => ptr::null_mut(),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match KVmalloc::alloc(layout, gfp() | flags::__GFP_ZERO, NumaNode::NO_NODE) {
            Ok(block) => block.as_ptr().cast(),
            Err(_) => ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(ptr) = NonNull::new(ptr) {
            // SAFETY: `GlobalAlloc::dealloc`'s contract: `ptr` was returned by
            // this allocator (so by `KVmalloc`) for `layout`, and is not used
            // again.
            unsafe { KVmalloc::free(ptr, layout) };
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return ptr::null_mut();
        };
        // SAFETY: `GlobalAlloc::realloc`'s contract: `ptr` is a live block of
        // this allocator allocated with `layout`; on failure `KVmalloc`
        // leaves it untouched, as required.
        match unsafe {
            KVmalloc::realloc(
                NonNull::new(ptr),
                new_layout,
                layout,
                gfp(),
                NumaNode::NO_NODE,
            )
        } {
            Ok(block) => block.as_ptr().cast(),
            Err(_) => ptr::null_mut(),
        }
    }
}

#[global_allocator]
static ALLOCATOR: KernelAllocator = KernelAllocator;
