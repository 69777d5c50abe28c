// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! The core engine, `mlsdisk_core::disk::MlsDisk`, as the target's
//! [`Engine`]: encrypted, authenticated, log-structured.
//!
//! The default build; `MLSDISK_PASSTHROUGH=1` (`--cfg mlsdisk_passthrough`,
//! see `Kbuild`) builds the pass-through engine instead.
//!
//! - `create` formats the backing device; the default (`open`) opens it and
//!   fails with a message naming the `create` option when there is no disk.
//! - The key is the root key (16 or 32 bytes); the engine derives every
//!   key it uses from it.
//! - Rollback anchor: `anchor=none` (the default: the status line says
//!   `anchor=none`, unprotected against whole-image rollback) or `anchor=dev:<device>`:
//!   the core's `BlockAnchor` over a second block device that the guest
//!   trusts (the host must not be able to roll it back), blocks 0 and 1 of
//!   it. `create` writes a new anchor there; `open` refuses an image older
//!   than the anchor or forked from its commit, another disk's anchor and
//!   a damaged anchor, each with its own `ti->error`.

use alloc::boxed::Box;
use core::fmt;

use kernel::prelude::*;
use mlsdisk_core::disk::block_anchor::is_anchor_error;
use mlsdisk_core::disk::{
    BlockAnchor, DataReader, DiskConfig, MlsDisk, NoAnchor, ReadPlan, RollbackAnchor,
};
use mlsdisk_core::{Cause, CryptoRef, Error as CoreError, ErrorKind};

use crate::engine::Engine;
use crate::kernel_platform::bio::{Access, BdevBlockSet};
use crate::kernel_platform::crypto::KernelCrypto;
use crate::kernel_platform::work::NoIoScope;
use crate::kernel_platform::CtrError;
use crate::table::Mode;

impl Engine for MlsDisk<BdevBlockSet> {
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> mlsdisk_core::Result<()> {
        MlsDisk::read(self, lba, buf)
    }

    fn write(&mut self, lba: u64, buf: &[u8]) -> mlsdisk_core::Result<()> {
        MlsDisk::write(self, lba, buf)
    }

    fn sync(&mut self) -> mlsdisk_core::Result<()> {
        MlsDisk::sync(self)
    }

    fn discard(&mut self, lba: u64, nblocks: u64) -> mlsdisk_core::Result<()> {
        MlsDisk::discard(self, lba, nblocks)
    }

    fn status(&mut self, out: &mut dyn fmt::Write) -> fmt::Result {
        // Straight into the caller's buffer (the dm result buffer): no heap
        // string. `DiskStats` is plain numbers and a static name.
        let healthy = self.failure().is_none();
        let st = self.stats();
        let wa = st.write_amplification_milli();
        write!(
            out,
            "health={} sync={} capacity={} logical={} mapped={} free={} pending={} wa={}.{:03} cleaned={} anchor={}{}",
            if healthy { "ok" } else { "failed" },
            st.sync_counter,
            st.logical_blocks.saturating_mul(crate::engine::SECTORS_PER_BLOCK),
            st.logical_blocks,
            st.mapped_blocks,
            st.free_blocks,
            st.pending_blocks,
            wa / 1000,
            wa % 1000,
            st.segments_cleaned,
            st.anchor,
            if st.anchor_tofu { "-tofu" } else { "" },
        )
    }

    fn background_step(&mut self) -> mlsdisk_core::Result<bool> {
        MlsDisk::background_step(self)
    }

    fn plan_read(&mut self, lba: u64, buf: &mut [u8]) -> mlsdisk_core::Result<ReadPlan> {
        MlsDisk::plan_read(self, lba, buf)
    }

    fn reader(&self) -> Option<DataReader<BdevBlockSet>> {
        Some(MlsDisk::reader(self))
    }
}

/// Why the constructor could not create or open the disk, for `ti->error`,
/// with the detail in the kernel log.
/// `read_only`: the devices are open read-only (a read-only table), so a
/// write the open needed was refused ([`BdevBlockSet`] refuses it with
/// [`ErrorKind::InvalidState`]).
fn ctr_error(e: CoreError, creating: bool, read_only: bool) -> CtrError {
    // The geometry check of a superblock that verifies names truncation.
    let truncated = e.cause() == Cause::Truncated;
    let refused_write = read_only && e.kind() == ErrorKind::InvalidState;
    let msg: &'static CStr = match (e.kind(), creating) {
        _ if refused_write && is_anchor_error(&e) => {
            c"read-only table: the rollback anchor needs a write (open the disk writable once)"
        }
        _ if refused_write => {
            c"read-only table: opening the disk needs a write (open it writable once)"
        }
        _ if is_anchor_error(&e) => anchor_error(e.kind()),
        _ if truncated && !creating => {
            c"the backing device is smaller than the disk on it (truncated)"
        }
        (ErrorKind::WrongKey, _) => c"wrong key",
        (ErrorKind::Corrupted, false) => {
            c"no mlsdisk on the backing device (give the 'create' option to format it)"
        }
        (ErrorKind::Corrupted, true) => c"cannot format the backing device",
        (ErrorKind::Integrity, _) => {
            c"the backing device fails authentication (tampered or damaged)"
        }
        (ErrorKind::Rollback, _) => c"the backing device was rolled back to an older state",
        (ErrorKind::Io, _) => c"I/O error on the backing device",
        (ErrorKind::OutOfMemory, _) => c"out of memory",
        (ErrorKind::NoSpace | ErrorKind::InvalidArgument, true) => {
            c"the backing device is too small for an mlsdisk"
        }
        _ => c"cannot open the disk",
    };
    pr_err!(
        "cannot {} the disk: {:?}\n",
        if creating { "create" } else { "open" },
        e
    );
    let err = match e.kind() {
        ErrorKind::OutOfMemory => ENOMEM,
        ErrorKind::Io => EIO,
        _ if refused_write => EROFS,
        _ => EINVAL,
    };
    CtrError::new(msg, err)
}

/// `ti->error` for an error that concerns the rollback anchor.
fn anchor_error(kind: ErrorKind) -> &'static CStr {
    match kind {
        ErrorKind::Rollback => {
            c"the disk image is older than its rollback anchor or forked from it (whole-image rollback)"
        }
        ErrorKind::WrongKey => c"the anchor device holds another disk's anchor (or another key's)",
        ErrorKind::Integrity => c"the anchor device fails authentication (tampered or damaged)",
        ErrorKind::Corrupted => c"the anchor device holds no anchor and is not blank",
        ErrorKind::InvalidArgument => c"the anchor device is too small (needs 8 KiB)",
        ErrorKind::Io => c"I/O error on the anchor device",
        ErrorKind::OutOfMemory => c"out of memory",
        _ => c"rollback anchor error",
    }
}

/// Whether block 0 or 1 of `dev` starts with the AuthBlob magic: the
/// superblock's slots A and B (`docs/format.md`), so the device holds an
/// mlsdisk (or a rollback anchor, which has the same container). Only the
/// magic is looked at: without the key nothing more can be checked, and a
/// damaged superblock still means there was a disk.
fn holds_superblock(dev: &BdevBlockSet) -> mlsdisk_core::Result<bool> {
    use mlsdisk_core::bio::{BlockSet, BLOCK_SIZE};
    use mlsdisk_core::crypto::auth_blob::MAGIC;
    let blocks = dev.nblocks().min(2) as usize;
    let mut buf = alloc::vec::Vec::new();
    buf.try_reserve_exact(blocks * BLOCK_SIZE)
        .map_err(|_| CoreError::new(ErrorKind::OutOfMemory, "superblock check buffer"))?;
    buf.resize(blocks * BLOCK_SIZE, 0);
    if blocks > 0 {
        dev.read(0, &mut buf)?;
    }
    Ok(buf
        .chunks(BLOCK_SIZE)
        .any(|block| block.get(..MAGIC.len()) == Some(&MAGIC[..])))
}

/// Creates (`Mode::Create`) or opens the disk on `dev` with `root_key`,
/// with the rollback anchor on `anchor` (blocks 0 and 1 of that device) if
/// given, and the caches' memory budget in MiB (the table's `cache_mib=`,
/// the blk-mq disks' `disk_cache_mib`; `None`: the engine's default,
/// `DiskConfig`'s 64 MiB). `create` refuses a device whose block 0 or 1
/// holds an mlsdisk superblock unless `force` (`force_create`). Returns the
/// engine and its logical capacity in 4 KiB blocks.
pub(crate) fn start_with_options(
    mode: Option<Mode>,
    force: bool,
    dev: BdevBlockSet,
    root_key: &[u8],
    anchor: Option<BdevBlockSet>,
    cache_mib: Option<u32>,
) -> Result<(Box<dyn Engine>, u64), CtrError> {
    let creating = matches!(mode, Some(Mode::Create));
    let read_only = dev.access() == Access::ReadOnly;
    if creating && !force {
        let _noio = NoIoScope::enter();
        match holds_superblock(&dev) {
            Ok(false) => {}
            Ok(true) => {
                pr_err!(
                    "the backing device holds an mlsdisk superblock (block 0 or 1): 'create' refused; give 'force_create' to format it anyway\n"
                );
                return Err(CtrError::new(
                    c"the backing device holds an mlsdisk: refusing 'create' (use 'force_create')",
                    EEXIST,
                ));
            }
            Err(e) => return Err(ctr_error(e, true, read_only)),
        }
    }
    let crypto = KernelCrypto::new().map_err(|err| {
        pr_err!(
            "cannot allocate gcm(aes) transforms: error {}\n",
            err.to_errno()
        );
        CtrError::new(c"cannot allocate crypto transforms", err)
    })?;
    let crypto: CryptoRef = alloc::sync::Arc::new(crypto);
    let _noio = NoIoScope::enter();
    let mut cfg = DiskConfig::default();
    if let Some(mib) = cache_mib {
        cfg = cfg.with_cache_budget(u64::from(mib) << 20);
    }
    let anchor: Box<dyn RollbackAnchor> = match anchor {
        None => Box::new(NoAnchor),
        Some(adev) => Box::new(
            BlockAnchor::new(adev, crypto.clone(), root_key)
                .map_err(|e| ctr_error(e, creating, read_only))?,
        ),
    };
    let mut disk = if creating {
        MlsDisk::create(dev, crypto, root_key, cfg, anchor)
    } else {
        MlsDisk::open(dev, crypto, root_key, cfg, anchor)
    }
    .map_err(|e| ctr_error(e, creating, read_only))?;
    // Write buffers are sealed on several CPUs (kernel_platform/parallel.rs).
    disk.set_parallel(alloc::sync::Arc::new(
        crate::kernel_platform::parallel::KernelParallel,
    ));
    let capacity = disk.nblocks();
    Ok((Box::new(disk), capacity))
}
