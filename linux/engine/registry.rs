// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! The one registry of open disks, keyed by backing device (`dev_t`), that
//! the dm target and the blk-mq disks both consult: a backing device has
//! one user. A dm table and a `/dev/mlsdisk<N>` on the same device, two
//! mapped devices on one device, two mlsdisk targets of one table on one
//! device: each second user is refused with `EBUSY` and a message naming
//! the first. Before this registry, a dm table and a blk-mq disk on one
//! device were both accepted, each engine ignored the other's writes, and
//! blocks synced through one read as zeros after a reopen through the
//! other.
//!
//! The exclusive claims on the block devices (the engine opens its backing
//! device with a holder: its own for a blk-mq disk, device-mapper's for a
//! table, see [`crate::kernel_platform::bio::OpenBdev`]) keep everyone else out as well: a
//! mount, `mkfs`, another driver.
//!
//! The registry's lock is never held across engine I/O (open, sync,
//! close): an entry is put in first, in a transitional state ([`State`]),
//! the engine is opened or closed without the lock, and the entry is then
//! completed or removed. A request for a device whose disk is being opened
//! or closed is refused with `EBUSY` rather than waiting for it, so one
//! slow or suspended backing device never holds up the tables of others.

use kernel::prelude::*;
use kernel::sync::Arc;

use super::Shared;

/// Who uses a backing device.
pub(crate) enum User {
    /// The blk-mq disk `/dev/mlsdisk<N>`.
    Blk(i32),
    /// The tables of one mapped device (see [`DmUse`]).
    Dm(DmUse),
}

/// A disk of the dm target: the mapped device it belongs to, the tables
/// whose target instances use it, and its state.
///
/// One disk maps LBA 0.. of its backing device, so it serves one target of
/// one mapped device: the tables that share it are the successive tables
/// of that mapped device (a reload builds the new table while the old one
/// is live, and a loaded inactive table may sit next to both), never two
/// targets of one table nor two mapped devices (two file systems on one
/// disk).
pub(crate) struct DmUse {
    /// The mapped device (`Ctr::md_id`).
    pub(crate) md: usize,
    /// `Ctr::table_id` of each table with a target instance on the disk;
    /// the disk closes when the last one goes.
    pub(crate) tables: KVec<usize>,
    /// The disk, once open.
    pub(crate) state: State,
}

/// Where a dm disk is in its life.
pub(crate) enum State {
    /// Its engine is being opened (or created), without the lock.
    Opening,
    /// Open and shared by `tables`.
    Open(Arc<Shared>),
    /// Its last table went; it is being synced and closed, without the
    /// lock.
    Closing,
}

/// One registered backing device.
pub(crate) struct Entry {
    pub(crate) dev: u32,
    pub(crate) user: User,
}

/// The registry's contents.
pub(crate) type Entries = KVec<Entry>;

kernel::global_lock! {
    // SAFETY: `init` runs in module init before any disk is opened and
    // before the target type is registered, so before any other use.
    unsafe(uninit) static OPEN: Mutex<Entries> = KVec::new();
}

/// Initialises the registry. Call once, from module init, before any disk
/// is opened.
pub(crate) fn init() {
    // SAFETY: called once (module init), before any use of `OPEN`.
    unsafe { OPEN.init() };
}

/// Frees the registry's buffer at module unload (a static is never dropped;
/// the buffer would leak). Every disk is gone by then: device-mapper keeps
/// the module while a target exists, and the blk-mq disks are dropped
/// first.
pub(crate) fn free() {
    let old = core::mem::take(&mut *OPEN.lock());
    if !old.is_empty() {
        pr_err!("{} open disk(s) still registered at unload\n", old.len());
    }
    drop(old);
}

/// Runs `f` on the registry, under its lock. `f` must not do I/O. An
/// emptied registry gives its buffer back, so nothing is left allocated
/// when the last disk goes, a failed module init included (which never
/// reaches the module's `Drop` and so never calls [`free`]).
pub(crate) fn with<R>(f: impl FnOnce(&mut Entries) -> R) -> R {
    let mut open = OPEN.lock();
    let result = f(&mut open);
    if open.is_empty() {
        *open = KVec::new();
    }
    result
}

/// `major:minor` of a `dev_t`, for messages.
pub(crate) struct DevName(pub(crate) u32);

impl core::fmt::Display for DevName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}:{}", self.0 >> 20, self.0 & 0xfffff)
    }
}

/// Who uses a device, for messages ("/dev/mlsdisk0", "a dm table").
pub(crate) struct UserName<'a>(pub(crate) &'a User);

impl core::fmt::Display for UserName<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            User::Blk(n) => write!(f, "the blk-mq disk /dev/mlsdisk{n}"),
            User::Dm(_) => f.write_str("an mlsdisk dm table"),
        }
    }
}

/// N of the blk-mq disk `/dev/mlsdisk<N>` on `dev`, if there is one.
pub(crate) fn blk_user(dev: u32) -> Option<i32> {
    with(|open| {
        open.iter().find_map(|e| match e.user {
            User::Blk(n) if e.dev == dev => Some(n),
            _ => None,
        })
    })
}

/// A blk-mq disk's registration of its backing device: removed on drop
/// (after the disk's engine is closed: the owner drops it last).
pub(crate) struct BlkClaim {
    dev: u32,
}

impl BlkClaim {
    /// Registers `/dev/mlsdisk<index>` as the user of `dev`; `EBUSY` (with
    /// the cause in the log) if something uses it already.
    pub(crate) fn new(dev: u32, index: i32) -> Result<Self> {
        with(|open| {
            if let Some(e) = open.iter().find(|e| e.dev == dev) {
                pr_err!(
                    "mlsdisk{}: cannot open the backing device {} (in use by {}): one user per backing device\n",
                    index,
                    format_args!("{}", DevName(dev)),
                    format_args!("{}", UserName(&e.user))
                );
                return Err(EBUSY);
            }
            open.push(
                Entry {
                    dev,
                    user: User::Blk(index),
                },
                GFP_KERNEL,
            )?;
            Ok(Self { dev })
        })
    }
}

impl Drop for BlkClaim {
    fn drop(&mut self) {
        with(|open| {
            if let Some(i) = open
                .iter()
                .position(|e| e.dev == self.dev && matches!(e.user, User::Blk(_)))
            {
                let _ = open.remove(i);
            }
        });
    }
}
