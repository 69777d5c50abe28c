// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! The target's constructor: the table line, the key (hex or keyring), the
//! backing and anchor devices, the registry of open disks (`attach.rs`),
//! and the capacity check. Every failure logs its cause and returns a
//! fixed summary for `ti->error`.

use super::*;

impl MlsDisk {
    /// The `dev_t` of the anchor device `name` (`anchor=dev:<name>`, a path
    /// or `major:minor`), looked up like the backing device
    /// (`dm_get_device`, released again: the engine opens its own
    /// reference). It must be another device than the backing device
    /// `backing`, with room for the anchor (8 KiB).
    #[cfg(not(mlsdisk_passthrough))]
    fn anchor_device(ti: &mut Ctr<'_>, name: &[u8], backing: u32) -> Result<u32, CtrError> {
        let shown = || Escaped(name);
        let mut path = KVec::with_capacity(name.len() + 1, GFP_KERNEL)
            .map_err(|_| Self::fail(c"out of memory", ENOMEM))?;
        path.extend_from_slice(name, GFP_KERNEL)
            .map_err(|_| Self::fail(c"out of memory", ENOMEM))?;
        path.push(0, GFP_KERNEL)
            .map_err(|_| Self::fail(c"out of memory", ENOMEM))?;
        // `name` is printable ASCII without NUL (checked by the parser).
        let path = CStr::from_bytes_with_nul(&path).map_err(|_| {
            pr_err!("bad anchor device name '{}'\n", format_args!("{}", shown()));
            Self::fail(c"bad anchor specification", EINVAL)
        })?;
        let adev = ti.get_device(path).map_err(|err| {
            pr_err!(
                "cannot open the anchor device '{}': error {}\n",
                format_args!("{}", shown()),
                err.to_errno()
            );
            Self::fail(c"cannot open the anchor device", err)
        })?;
        let (dev, sectors) = (adev.dev_t(), adev.nr_sectors());
        drop(adev);
        if dev == backing {
            pr_err!(
                "the anchor device '{}' is the backing device: the anchor must live outside the image\n",
                format_args!("{}", shown())
            );
            return Err(Self::fail(
                c"the anchor device must not be the backing device",
                EINVAL,
            ));
        }
        let need = mlsdisk_core::disk::block_anchor::ANCHOR_BLOCKS * SECTORS_PER_BLOCK;
        if sectors < need {
            pr_err!(
                "the anchor device '{}' has {} sectors: the anchor needs {} (8 KiB)\n",
                format_args!("{}", shown()),
                sectors,
                need
            );
            return Err(Self::fail(
                c"the anchor device is too small (needs 8 KiB)",
                EINVAL,
            ));
        }
        Ok(dev)
    }

    /// The constructor ([`dm::Target::new`]).
    pub(super) fn construct(ti: &mut Ctr<'_>, args: &Args<'_>) -> Result<KBox<Self>, CtrError> {
        let mut words = KVec::with_capacity(args.len(), GFP_KERNEL).map_err(|_| {
            pr_err!("out of memory parsing the table line\n");
            Self::fail(c"out of memory", ENOMEM)
        })?;
        for i in 0..args.len() {
            let word = args.get(i).map_or(&[][..], CStr::to_bytes);
            // Capacity was reserved above.
            words
                .push(word, GFP_KERNEL)
                .map_err(|_| Self::fail(c"out of memory", ENOMEM))?;
        }

        let line = table::parse(&words).map_err(|e| {
            pr_err!("{}\n", format_args!("{e}"));
            Self::fail(e.summary(), EINVAL)
        })?;
        // The key is decoded (or read from the keyring) straight into this
        // local, which is only borrowed from here on and wiped when it
        // goes: no copy of it is left behind by a move.
        let mut key = RawKey::empty();
        let keyref = match line.key {
            KeySpec::Hex(hex) => {
                key.set_hex(hex);
                None
            }
            KeySpec::Keyring(r) => {
                crate::kernel_platform::crypto::keyring_key(&r, &mut key)?;
                Some(r)
            }
        };

        // One user per backing device: a blk-mq disk's device is refused
        // here, naming the disk (its exclusive claim would refuse
        // `dm_get_device` below too, but without saying who holds it).
        if let Some(n) = device_number(line.device).ok().and_then(registry::blk_user) {
            pr_err!(
                "cannot open backing device '{}': in use by the blk-mq disk /dev/mlsdisk{} (one user per backing device)\n",
                format_args!("{}", Escaped(line.device)),
                n
            );
            return Err(Self::fail(
                c"the backing device is in use by a blk-mq disk",
                EBUSY,
            ));
        }

        // The path is argument 0; `get` gives it NUL-terminated.
        let path = args.get(0).unwrap_or(c"");
        let backing = ti.get_device(path).map_err(|err| {
            pr_err!(
                "cannot open backing device '{}': error {}\n",
                format_args!("{}", Escaped(line.device)),
                err.to_errno()
            );
            Self::fail(c"cannot open backing device", err)
        })?;

        let max = backing.nr_sectors();
        if ti.len() > max {
            pr_err!(
                "target length {} sectors exceeds the backing device {}: the maximum is {} sectors\n",
                ti.len(),
                format_args!("{}", Escaped(line.device)),
                max
            );
            // `backing` is dropped here: the device is closed again.
            return Err(Self::fail(
                c"target length exceeds the backing device size",
                EINVAL,
            ));
        }

        if ti.len() % SECTORS_PER_BLOCK != 0 {
            pr_err!(
                "target length {} sectors is not a whole number of 4 KiB blocks (a multiple of 8 sectors)\n",
                ti.len()
            );
            return Err(Self::fail(
                c"target length is not a multiple of 8 sectors (4 KiB blocks)",
                EINVAL,
            ));
        }

        // Flushes and discards must reach the target: they mean sync and
        // unmap (docs/design.md, linux/README.md).
        ti.set_num_flush_bios(1);
        ti.set_num_discard_bios(1);
        ti.setup_worker(MAX_IO_SECTORS).map_err(|err| {
            pr_err!("cannot set max_io_len: error {}\n", err.to_errno());
            Self::fail(c"cannot set max_io_len", err)
        })?;

        let device = line.device;
        let writable = ti.writable();
        // A read-only table's engine opens its devices read-only, and their
        // block sets refuse writes and flushes: nothing the engine does, its
        // open included, writes them.
        let access = if writable {
            Access::ReadWrite
        } else {
            Access::ReadOnly
        };
        // The engine claims the device exclusively with the table's holder
        // (device-mapper's): the claim outlives the table while the disk
        // closes, and nothing outside device-mapper can open it meanwhile.
        let claim = Claim::Dm(backing.holder());
        let open_bdev = move |dev: u32| {
            OpenBdev::open(dev, claim, access).map_err(|err| {
                pr_err!(
                    "cannot open backing device '{}' for the engine: error {}\n",
                    format_args!("{}", Escaped(device)),
                    err.to_errno()
                );
                Self::fail(c"cannot open backing device", err)
            })
        };
        let dev = backing.dev_t();
        let ids = (ti.md_id(), ti.table_id());
        if !writable && line.options.mode == Some(table::Mode::Create) {
            pr_err!("'create' on a read-only table: formatting writes the device\n");
            return Err(Self::fail(c"'create' needs a writable table", EROFS));
        }
        // The rollback anchor's device (`anchor=dev:<device>`), if any.
        #[cfg(not(mlsdisk_passthrough))]
        let anchor_dev: Option<u32>;
        #[cfg(mlsdisk_passthrough)]
        let (shared, options) = {
            let open_engine = || -> Result<(Box<dyn Engine>, u64), CtrError> {
                let (engine, nblocks) = PassThrough::new(BdevBlockSet::new(open_bdev(dev)?));
                Ok((Box::new(engine) as Box<dyn Engine>, nblocks))
            };
            let shared = Self::attach(dev, ids, &key, line.options.mode, access, open_engine)?;
            (shared, line.options)
        };
        #[cfg(not(mlsdisk_passthrough))]
        let (shared, options) = {
            let mut options = line.options;
            anchor_dev = match options.anchor.as_ref().map(table::Anchor::kind) {
                None | Some(AnchorKind::None) => None,
                Some(AnchorKind::Dev(name)) => Some(Self::anchor_device(ti, name, dev)?),
            };
            let open_anchor = |adev: u32| {
                OpenBdev::open(adev, Claim::None, access).map_err(|err| {
                    pr_err!(
                        "cannot open the anchor device {}:{} for the engine: error {}\n",
                        adev >> 20,
                        adev & 0xfffff,
                        err.to_errno()
                    );
                    Self::fail(c"cannot open the anchor device", err)
                })
            };
            let open_engine = || {
                let anchor = match anchor_dev {
                    Some(adev) => Some(BdevBlockSet::new(open_anchor(adev)?)),
                    None => None,
                };
                crate::engine::disk::start_with_options(
                    options.mode,
                    options.force,
                    BdevBlockSet::new(open_bdev(dev)?),
                    key.as_bytes(),
                    anchor,
                    options.cache_mib,
                )
            };
            let shared = Self::attach(dev, ids, &key, options.mode, access, open_engine)?;
            // A table line read back and loaded again must never reformat:
            // once created, the disk is shown (and reloaded) as 'open'.
            if options.mode.is_some() {
                options.mode = Some(table::Mode::Open);
                options.force = false;
            }
            (shared, options)
        };
        let capacity = shared.disk.capacity;
        let target = KBox::new(
            Self {
                backing,
                shared: Some(shared),
                table: ids.1,
                writable,
                begin: ti.begin(),
                len: ti.len(),
                key_bits: key.bits(),
                keyref,
                options,
                counters: Counters::default(),
            },
            GFP_KERNEL,
        )
        .map_err(|_| {
            pr_err!("out of memory allocating the target\n");
            Self::fail(c"out of memory", ENOMEM)
        })?;
        let max = capacity.saturating_mul(SECTORS_PER_BLOCK);
        if ti.len() > max {
            pr_err!(
                "target length {} sectors exceeds the logical capacity of the disk on {}: the maximum is {} sectors\n",
                ti.len(),
                format_args!("{}", Escaped(device)),
                max
            );
            // Dropping `target` detaches from the disk.
            return Err(Self::fail(
                c"target length exceeds the disk's logical capacity",
                EINVAL,
            ));
        }
        #[cfg(mlsdisk_passthrough)]
        pr_info!(
            "pass-through target on {} ({} of {} sectors, {}-bit key): NOT encrypted at this stage\n",
            format_args!("{}", Escaped(target.backing.name().to_bytes())),
            ti.len(),
            max,
            target.key_bits
        );
        #[cfg(not(mlsdisk_passthrough))]
        match anchor_dev {
            Some(adev) => pr_info!(
                "disk on {}: {} of {} sectors mapped, {}-bit root key, rollback anchor on {}:{}\n",
                format_args!("{}", Escaped(target.backing.name().to_bytes())),
                ti.len(),
                max,
                target.key_bits,
                adev >> 20,
                adev & 0xfffff
            ),
            None => pr_info!(
                "disk on {}: {} of {} sectors mapped, {}-bit root key, no rollback anchor\n",
                format_args!("{}", Escaped(target.backing.name().to_bytes())),
                ti.len(),
                max,
                target.key_bits
            ),
        }
        Ok(target)
    }
}
