// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! A target instance's disk in the registry of open disks
//! (`engine/registry.rs`): attaching to the open disk of its mapped device
//! or opening one, and detaching when the instance goes (the last table
//! closes the disk).

use super::*;

impl MlsDisk {
    /// Finds the open disk on `dev` or opens one (`open_engine`, with its
    /// devices opened as `access` says), and counts this instance's table (`table`, of mapped device `md`) as a
    /// user, in the registry of open disks ([`registry`], shared with the
    /// blk-mq disks). A device used by a blk-mq disk, a disk open for
    /// another mapped device, or already used by a target of the same
    /// table, is refused (`EBUSY`), as is one whose disk is being opened or
    /// closed by another table just now, and a writable table on a disk a
    /// read-only table opened (`EROFS`: its devices are open read-only). The registry's lock is not held
    /// while the engine opens: the entry is put in as [`State::Opening`]
    /// first, so the disk is never opened twice.
    pub(super) fn attach(
        dev: u32,
        (md, table): (usize, usize),
        key: &RawKey,
        mode: Option<table::Mode>,
        access: Access,
        open_engine: impl FnOnce() -> Result<(Box<dyn Engine>, u64), CtrError> + Send,
    ) -> Result<Arc<Shared>, CtrError> {
        let oom = || {
            pr_err!("out of memory allocating the disk\n");
            Self::fail(c"out of memory", ENOMEM)
        };
        let busy = |why: &str| {
            pr_err!(
                "cannot use backing device {}: {}\n",
                format_args!("{}", DevName(dev)),
                why
            );
        };
        let joined = registry::with(|open| -> Result<Option<Arc<Shared>>, CtrError> {
            let Some(entry) = open.iter_mut().find(|e| e.dev == dev) else {
                let mut tables = KVec::with_capacity(2, GFP_KERNEL).map_err(|_| oom())?;
                tables.push(table, GFP_KERNEL).map_err(|_| oom())?;
                let user = User::Dm(DmUse {
                    md,
                    tables,
                    state: State::Opening,
                });
                open.push(Entry { dev, user }, GFP_KERNEL)
                    .map_err(|_| oom())?;
                return Ok(None);
            };
            let User::Dm(used) = &mut entry.user else {
                pr_err!(
                    "cannot open backing device {}: in use by {} (one user per backing device)\n",
                    format_args!("{}", DevName(dev)),
                    format_args!("{}", UserName(&entry.user))
                );
                return Err(Self::fail(
                    c"the backing device is in use by a blk-mq disk",
                    EBUSY,
                ));
            };
            let State::Open(shared) = &used.state else {
                busy("its disk is being opened or closed by another table");
                return Err(Self::fail(c"the disk is being opened or closed", EBUSY));
            };
            if used.md != md {
                pr_err!(
                    "the disk on device {} is in use by another mapped device: one disk serves one mapped device\n",
                    format_args!("{}", DevName(dev))
                );
                return Err(Self::fail(
                    c"the backing device is in use by another mapped device",
                    EBUSY,
                ));
            }
            if used.tables.contains(&table) {
                pr_err!(
                    "two mlsdisk targets of one table on device {}: each would map the disk from its first block\n",
                    format_args!("{}", DevName(dev))
                );
                return Err(Self::fail(
                    c"two targets of one table on one backing device",
                    EBUSY,
                ));
            }
            if mode == Some(table::Mode::Create) {
                pr_err!(
                    "the disk on device {} is in use by a live table: 'create' would destroy it\n",
                    format_args!("{}", DevName(dev))
                );
                return Err(Self::fail(c"the disk is in use: refusing 'create'", EBUSY));
            }
            if access == Access::ReadWrite && shared.access == Access::ReadOnly {
                pr_err!(
                    "the disk on device {} is open read-only (by a read-only table): remove the mapped device to load a writable table\n",
                    format_args!("{}", DevName(dev))
                );
                return Err(Self::fail(
                    c"the disk is open read-only: a writable table needs a fresh open",
                    EROFS,
                ));
            }
            if !shared.key_check.matches(key) {
                pr_err!(
                    "wrong key: the disk on device {} is open with another key\n",
                    format_args!("{}", DevName(dev))
                );
                return Err(Self::fail(c"wrong key", EINVAL));
            }
            let shared = shared.clone();
            used.tables.push(table, GFP_KERNEL).map_err(|_| oom())?;
            Ok(Some(shared))
        })?;
        if let Some(shared) = joined {
            return Ok(shared);
        }
        // The entry is ours (`Opening`): open without the registry's lock.
        let opened = Self::open_shared(key, access, open_engine);
        registry::with(|open| {
            let Some(i) = open.iter().position(|e| e.dev == dev) else {
                // Cannot happen: only this table removes an `Opening` entry.
                return Err(Self::fail(c"the disk's registry entry is gone", EIO));
            };
            match (&opened, open.get_mut(i).map(|e| &mut e.user)) {
                (Ok(shared), Some(User::Dm(used))) => {
                    used.state = State::Open(shared.clone());
                    Ok(())
                }
                _ => {
                    let _ = open.remove(i);
                    Ok(())
                }
            }
        })?;
        opened
    }

    /// Opens the disk ([`Disk::open`]: the engine on a worker) and shares
    /// it.
    fn open_shared(
        key: &RawKey,
        access: Access,
        open_engine: impl FnOnce() -> Result<(Box<dyn Engine>, u64), CtrError> + Send,
    ) -> Result<Arc<Shared>, CtrError> {
        let oom = || {
            pr_err!("out of memory allocating the disk\n");
            Self::fail(c"out of memory", ENOMEM)
        };
        let disk = Disk::open(open_engine, |err| {
            if err == ENOMEM {
                oom()
            } else {
                Self::fail(c"cannot open the disk", err)
            }
        })?;
        let key_check = KeyCheck::of(key).map_err(|_| Self::fail(c"bad key", EINVAL))?;
        Arc::new(
            Shared {
                key_check,
                access,
                disk,
                final_sync: AtomicBool::new(true),
            },
            GFP_KERNEL,
        )
        .map_err(|_| oom())
    }
}

impl Drop for MlsDisk {
    fn drop(&mut self) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        // Under the lock: this table leaves the disk's entry; the last one
        // takes the disk out (`Closing`), so no new table can open it
        // half-closed, and closes it after the lock is released.
        let (last, registered) = registry::with(|open| {
            let Some(i) = open.iter().position(|e| {
                matches!(&e.user, User::Dm(u) if matches!(&u.state, State::Open(s) if Arc::ptr_eq(s, &shared)))
            }) else {
                return (true, None);
            };
            let Some(Entry {
                dev,
                user: User::Dm(used),
            }) = open.get_mut(i)
            else {
                return (true, None);
            };
            if let Some(t) = used.tables.iter().position(|&t| t == self.table) {
                let _ = used.tables.remove(t);
            }
            if !used.tables.is_empty() {
                return (false, None);
            }
            let State::Open(ours) = core::mem::replace(&mut used.state, State::Closing) else {
                return (true, None);
            };
            (true, Some((*dev, ours)))
        });
        if !last {
            // Another table still uses the disk; removal still syncs (not
            // from a read-only table, which writes nothing).
            if self.writable {
                let _ = shared.disk.sync("removal");
            }
            return;
        }
        shared.final_sync.store(self.writable, Ordering::Relaxed);
        // The last user: dropping the disk syncs and closes it, without
        // the registry's lock; its entry (`Closing`) goes afterwards.
        let dev = registered.map(|(dev, ours)| {
            drop(ours);
            dev
        });
        drop(shared);
        if let Some(dev) = dev {
            registry::with(|open| {
                if let Some(i) = open.iter().position(|e| {
                    e.dev == dev
                        && matches!(&e.user, User::Dm(u) if matches!(u.state, State::Closing))
                }) {
                    let _ = open.remove(i);
                }
            });
        }
    }
}
