// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! MlsDisk kernel module: the MlsDisk engine (`core/`, crate
//! `mlsdisk_core`) behind two devices, the device-mapper target `mlsdisk`
//! and the blk-mq disks `/dev/mlsdisk<N>`.
//!
//! Layout of `linux/` (each folder depends only on the ones after it):
//!
//! - `mlsdisk_main.rs` (this file): module entry, self-tests at load, the
//!   init order (engines, then disks, then the dm target).
//! - `dm/`: the dm target (`dm/target.rs`, `dm/target/`) on our
//!   device-mapper abstraction (`dm/binding/`).
//! - `blk/`: the blk-mq disks, made from module parameters (`mod.rs`, C
//!   side in `helpers.c`).
//! - `engine/`: the one front end both devices share: the `Engine` trait,
//!   the parallel-read protocol, the error mapping, the pass-through
//!   engine, the core's `disk::MlsDisk` as an engine (`disk.rs`) and the
//!   registry of open disks (`registry.rs`).
//! - `table.rs`: the table line and key grammar (plain `core` Rust,
//!   unit-tested in userspace), used by both devices.
//! - `kernel_platform/`: crypto, bios, parallel sealing, the allocator,
//!   and the C helpers with the headers bindgen reads (`bindings/`).
//! - `Kbuild`: how `alloc` and the core crate are built and linked in.
//!
//! At load time [`mlsdisk_core::selftest`] proves the allocator bridge and
//! the kernel crypto provider against userspace.

// The `alloc` crate built by Kbuild (found through `-L`), for the engine's
// own handle types (`CryptoRef` is an `alloc::sync::Arc`).
extern crate alloc;

use kernel::prelude::*;

mod blk;
mod dm;
mod engine;
mod kernel_platform;
mod table;

module! {
    type: MlsDiskModule,
    name: "mlsdisk",
    authors: ["MlsDisk developers"],
    description: "MlsDisk: a log-structured secure virtual disk (dm target mlsdisk, blk-mq disks /dev/mlsdiskN)",
    license: "Dual MPL/GPL",
}

struct MlsDiskModule {
    /// The dm target, registered last at init and unregistered first
    /// (`None` only if registering failed after blk-mq disks were added).
    _target: Option<dm::binding::Registration<dm::target::MlsDisk>>,
    /// `/dev/mlsdisk0`, `/dev/mlsdisk1`, ... as the module parameters ask
    /// for them (see `blk/mod.rs`); dropped (synced, closed) after the
    /// target is unregistered.
    _disks: blk::BlkDisks,
    /// The workers that seal write buffers on several CPUs; dropped last.
    _parallel: kernel_platform::parallel::ModuleWorkqueues,
}

impl kernel::Module for MlsDiskModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        // Process context (insmod): the engine may allocate and sleep.
        // The `disk_key` parameter is zeroed however init ends.
        let _wipe = blk::KeyParamWipe;
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

        let parallel = kernel_platform::parallel::ModuleWorkqueues::new().inspect_err(|e| {
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
        let opened = blk::BlkDisks::open_params()?;
        let disks = opened.add()?;
        let target = match dm::binding::Registration::new(module) {
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

    let crypto = kernel_platform::crypto::KernelCrypto::new().inspect_err(|e| {
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
        drop(core::mem::replace(&mut self._disks, blk::BlkDisks::none()));
        engine::registry::free();
        pr_info!("unloading\n");
    }
}
