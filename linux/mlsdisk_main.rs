// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! MlsDisk kernel module: the `mlsdisk` device-mapper target.
//!
//! Layout of `linux/`:
//!
//! - `mlsdisk_main.rs` (this file): module entry, core self-test at load.
//! - `kalloc.rs`: the global allocator for the core engine (`alloc` over
//!   `kvmalloc`); `alloc_shim.rs`: the two runtime symbols `alloc` needs.
//! - `dm.rs`: device-mapper abstraction (the only device-mapper `unsafe`).
//! - `kcrypto.rs`, `kbio.rs`, `kplatform.c`: the kernel platform of the
//!   engine: [`kcrypto::KernelCrypto`] (crypto API `gcm(aes)` transform
//!   pool, SHA-256/HMAC library, kernel RNG) and [`kbio::BdevBlockSet`]
//!   (bios on the backing device, real cache flushes).
//! - `blkdev.rs`, `blk_helpers.c`: the blk-mq disks `/dev/mlsdisk<N>` on
//!   the same engine, made from module parameters.
//! - `target.rs`: the `mlsdisk` target, safe Rust; `table.rs`: table-line
//!   grammar, plain `core` Rust, unit-tested in userspace.
//! - `ksync.rs`: [`ksync::KernelSync`], the core's `SyncPlatform` (kernel
//!   mutexes, condition variables, jobs on a workqueue), self-tested at load.
//! - `helpers.c`, `bindings/mlsdisk_helpers.h`: C helpers and the header
//!   bindgen reads.
//! - `Kbuild`: how `alloc` and the core crate are built and linked in.
//!
//! The target runs the core's `disk::MlsDisk` (`engine_disk.rs`); at load
//! time [`mlsdisk_core::selftest`] proves the allocator bridge and the
//! kernel crypto provider against userspace.

// The `alloc` crate built by Kbuild (found through `-L`), for the engine's
// own handle types (`CryptoRef` is an `alloc::sync::Arc`).
extern crate alloc;

use kernel::prelude::*;

mod blkdev;
mod dm;
mod engine;
#[cfg(not(mlsdisk_passthrough))]
mod engine_disk;
mod kalloc;
mod kbio;
mod kcrypto;
// The pass-through build has no engine to seal for.
#[cfg_attr(mlsdisk_passthrough, allow(dead_code))]
mod kparallel;
mod ksync;
mod table;
mod target;

module! {
    type: MlsDiskModule,
    name: "mlsdisk",
    authors: ["MlsDisk developers"],
    description: "MlsDisk: a log-structured secure virtual disk (device-mapper target)",
    license: "Dual MPL/GPL",
}

struct MlsDiskModule {
    /// The dm target, registered last at init and unregistered first
    /// (`None` only if registering failed after blk-mq disks were added).
    _target: Option<dm::Registration<target::MlsDisk>>,
    /// `/dev/mlsdisk0`, `/dev/mlsdisk1`, ... as the module parameters ask
    /// for them (see `blkdev.rs`); dropped (synced, closed) after the
    /// target is unregistered.
    _disks: blkdev::BlkDisks,
    /// The workers that seal write buffers on several CPUs; dropped last.
    _parallel: kparallel::ParallelWorkqueue,
}

impl kernel::Module for MlsDiskModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        // Process context (insmod): the engine may allocate and sleep.
        // The `disk_key` parameter is zeroed however init ends.
        let _wipe = blkdev::KeyParamWipe;
        let checksum = match mlsdisk_core::selftest::run() {
            Ok(checksum) => checksum,
            Err(why) => {
                pr_err!("core selftest failed: {}\n", why);
                return Err(EINVAL);
            }
        };
        if checksum != mlsdisk_core::selftest::EXPECTED_CHECKSUM {
            pr_err!(
                "core selftest failed: checksum={:016x}, userspace gives {:016x}\n",
                checksum,
                mlsdisk_core::selftest::EXPECTED_CHECKSUM
            );
            return Err(EINVAL);
        }
        pr_info!(
            "core selftest ok checksum={:016x} (matches userspace)\n",
            checksum
        );
        engine::set_selftest_checksum(checksum);
        crypto_selftest()?;
        ksync::selftest()?;

        let parallel = kparallel::ParallelWorkqueue::new().inspect_err(|e| {
            pr_err!(
                "cannot allocate the parallel workqueue: error {}\n",
                e.to_errno()
            );
        })?;
        engine::registry::init();
        // The order matters for a failed init: the module is freed even if
        // something outside holds a reference to it (`try_module_get`
        // succeeds while it is coming up). So every engine is opened first
        // (all failable steps), then the disks are added (after the first
        // one nothing fails init), then the dm target is registered (after
        // which nothing can fail).
        let opened = blkdev::BlkDisks::open_params()?;
        let disks = opened.add()?;
        let target = match dm::Registration::new(module) {
            Ok(registration) => Some(registration),
            Err(e) if disks.is_empty() => {
                pr_err!("cannot register the dm target: error {}\n", e.to_errno());
                return Err(e);
            }
            Err(e) => {
                // Disks are visible: failing init now could free the module
                // under an opener. Stay loaded with the disks only.
                pr_err!(
                    "cannot register the dm target: error {}; the module stays loaded with its blk-mq disks only\n",
                    e.to_errno()
                );
                None
            }
        };
        if target.is_some() {
            #[cfg(mlsdisk_passthrough)]
            pr_info!("dm target registered (pass-through stage, data is NOT encrypted)\n");
            #[cfg(not(mlsdisk_passthrough))]
            pr_info!("dm target registered (engine: disk::MlsDisk)\n");
        }
        Ok(Self {
            _target: target,
            _disks: disks,
            _parallel: parallel,
        })
    }
}

/// The kernel crypto provider against the userspace one: known answers
/// (AES-GCM, SHA-256, HMAC-SHA256, HKDF, RNG) and an AuthBlob + MacChain
/// round trip on an in-memory device, with the same checksum as userspace.
fn crypto_selftest() -> Result {
    use mlsdisk_core::selftest;

    let crypto = kcrypto::KernelCrypto::new().inspect_err(|e| {
        pr_err!(
            "kernel crypto selftest failed: cannot allocate gcm(aes) transforms: error {}\n",
            e.to_errno()
        );
    })?;
    if let Err(why) = selftest::crypto_kat(&crypto) {
        pr_err!(
            "kernel crypto selftest failed ({}): {}\n",
            crypto.driver(),
            why
        );
        return Err(EINVAL);
    }
    let (driver_name, slots) = (crypto.driver(), crypto.slots());
    pr_info!(
        "kernel crypto selftest ok: gcm(aes) by {} ({} transforms), AES-GCM, SHA-256, HMAC-SHA256, HKDF known answers match userspace\n",
        driver_name,
        slots
    );
    let shared: mlsdisk_core::CryptoRef = alloc::sync::Arc::new(crypto);
    match selftest::structures(shared) {
        Ok(sum) if sum == selftest::STRUCTURES_CHECKSUM => {
            pr_info!(
                "kernel crypto selftest ok: AuthBlob + MacChain round trip checksum={:016x} (matches userspace)\n",
                sum
            );
            Ok(())
        }
        Ok(sum) => {
            pr_err!(
                "kernel crypto selftest failed: AuthBlob + MacChain checksum={:016x}, userspace gives {:016x}\n",
                sum,
                selftest::STRUCTURES_CHECKSUM
            );
            Err(EINVAL)
        }
        Err(why) => {
            pr_err!("kernel crypto selftest failed: {}\n", why);
            Err(EINVAL)
        }
    }
}

impl Drop for MlsDiskModule {
    fn drop(&mut self) {
        // The target first, then the blk-mq disks (each leaves the registry
        // of open disks once closed), then the registry itself.
        drop(self._target.take());
        drop(core::mem::replace(
            &mut self._disks,
            blkdev::BlkDisks::none(),
        ));
        engine::registry::free();
        pr_info!("unloading\n");
    }
}
