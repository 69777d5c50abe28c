// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! The kernel platform the engine runs on, and the kernel services both
//! devices use:
//!
//! - [`crypto`]: `KernelCrypto`, the core's `Crypto` on the kernel crypto
//!   API (`gcm(aes)` transform pool, SHA-256/HMAC library, kernel RNG);
//! - [`bio`]: `BdevBlockSet`, the core's `BlockSet` over a block device
//!   (bios, real cache flushes), the engine's exclusive open of its
//!   backing device, and `on_worker`;
//! - [`parallel`]: `KernelParallel`, the core's `Parallel` on an unbound
//!   workqueue (sealing a write buffer on every CPU), and the module's
//!   shared workqueues (`mlsdisk_par`, `mlsdisk_sync`);
//! - [`work`]: `WorkQueue` and `Ordered`, the ordered queue with idle
//!   background work both devices serve their writes on, over
//!   `kernel::workqueue`, and `NoIoScope` (work the device's I/O may
//!   wait on allocates without I/O);
//! - [`allocator`]: the global allocator of `alloc` (and so of the engine) over
//!   `kvmalloc`; `alloc_shim.rs` is built as a crate of its own (Kbuild);
//! - `platform.c`, `helpers.c`: the C side, for what the 7.3
//!   kernel crate has no binding for, declared in `bindings/*.h`, which
//!   bindgen reads ([`bindings`]).
//!
//! Nothing here depends on the engine's front end or the devices.

pub(crate) mod allocator;
pub(crate) mod bio;
pub(crate) mod crypto;
// The pass-through build has no engine to seal for.
#[cfg_attr(mlsdisk_passthrough, allow(dead_code))]
pub(crate) mod parallel;
pub(crate) mod work;

/// The generated bindings for `<linux/device-mapper.h>` and our C helpers
/// (`bindings/mlsdisk_helpers.h`, `bindings/blk_helpers.h`).
///
/// Types from other headers (`bio`, `block_device`, ...) come from the
/// kernel crate's bindings through the glob import; items generated here
/// shadow it.
#[allow(
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    clippy::ptr_as_ptr,
    clippy::ref_as_ptr,
    clippy::cast_lossless,
    clippy::as_underscore,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    improper_ctypes,
    unreachable_pub,
    unsafe_op_in_unsafe_fn,
    unused_imports
)]
pub(crate) mod bindings {
    use kernel::bindings::*;
    use kernel::ffi;
    include!("../mlsdisk_bindings_generated.rs");
}

use kernel::prelude::*;

/// Why a disk could not be opened (a dm table's constructor failure, an
/// insmod's disk): the errno to return and a fixed summary, which the dm
/// target puts in `ti->error` (static, because device-mapper prints it
/// after the constructor has returned).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CtrError {
    /// The message for `ti->error`. device-mapper logs it as
    /// `device-mapper: table: <dev>: <target name>: <msg> (<errno>)`, so it
    /// does not repeat the target name.
    pub(crate) msg: &'static CStr,
    /// The error to return.
    pub(crate) err: Error,
}

impl CtrError {
    /// A constructor error with `msg` and `err`.
    pub(crate) const fn new(msg: &'static CStr, err: Error) -> Self {
        Self { msg, err }
    }
}

/// Whether a per-bio message may be printed now (a shared rate limit).
pub(crate) fn ratelimit() -> bool {
    // SAFETY: no preconditions.
    unsafe { bindings::mlsdisk_ratelimit() }
}
