// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! The life of a blk-mq disk: its engine opened (every disk's before any is
//! added), its workqueues, state and tag set allocated ([`Pending`]), the
//! disk added ([`BlkDisk`]), and at removal deleted, drained, synced and
//! closed; [`BlkDisks`] holds them all.

use super::params::*;
use super::*;

/// A live `/dev/mlsdisk<N>`.
///
/// # Invariants
///
/// `disk` was added by `mlsdisk_blk_add_disk` with `queuedata` (from
/// `Arc<DiskQueue>::into_foreign`) on `tagset`; the read work items of
/// `queue`'s state serve `queue`. All are released only by `drop`.
pub(crate) struct BlkDisk {
    disk: NonNull<bindings::gendisk>,
    queuedata: *mut c_void,
    /// The ordered queue (its workqueue is destroyed with the last
    /// reference, after `drop` paused it) and the disk's state.
    queue: Arc<DiskQueue>,
    /// Kept for the disk, which uses it until `drop` deleted it.
    _tagset: Arc<TagSet<BlkOps>>,
    /// The registry entry of the backing device, dropped (after the
    /// engine was closed in `drop`) with the fields.
    _claim: BlkClaim,
}

// SAFETY: the gendisk, the workqueue and the tag set are kernel objects that
// may be used and released from any thread; `BlkDisk` is only dropped (at
// module exit), never used through a shared reference.
unsafe impl Send for BlkDisk {}
// SAFETY: `BlkDisk` has no methods taking `&self`.
unsafe impl Sync for BlkDisk {}

/// Creates or opens the engine of disk `index` on `dev`, with the rollback
/// anchor on `anchor` if given and the caches' budget `cache_mib` (`None`:
/// the engine's default). Returns it and its logical capacity in blocks.
/// Runs on a worker ([`Disk::open`]).
fn start_engine(
    index: c_int,
    dev: u32,
    (create, force): (bool, bool),
    key: &RawKey,
    anchor: Option<u32>,
    cache_mib: Option<u32>,
) -> Result<(Box<dyn Engine>, u64)> {
    // Exclusive: a dm table, a mount or another disk on the same
    // device is refused while this disk is open (EBUSY).
    let bdev = OpenBdev::open(dev, Claim::Own, Access::ReadWrite).inspect_err(|e| {
        let why = match e.to_errno() == EBUSY.to_errno() {
            true => " (in use: claimed by a mount, a dm table or another disk)",
            false => "",
        };
        pr_err!(
            "mlsdisk{}: cannot open the backing device{}: error {}\n",
            index,
            why,
            e.to_errno()
        );
    })?;
    let set = BdevBlockSet::new(bdev);
    #[cfg(not(mlsdisk_passthrough))]
    {
        let anchor = match anchor {
            Some(adev) => Some(BdevBlockSet::new(
                OpenBdev::open(adev, Claim::None, Access::ReadWrite).inspect_err(|e| {
                    pr_err!(
                        "mlsdisk{}: cannot open the anchor device: error {}\n",
                        index,
                        e.to_errno()
                    );
                })?,
            )),
            None => None,
        };
        let mode = Some(if create {
            table::Mode::Create
        } else {
            table::Mode::Open
        });
        crate::engine::disk::start_with_options(mode, force, set, key.as_bytes(), anchor, cache_mib)
            .map_err(|e| {
                pr_err!("mlsdisk{}: {}\n", index, e.msg);
                e.err
            })
    }
    #[cfg(mlsdisk_passthrough)]
    {
        let _ = (create, force, key, anchor, index, cache_mib);
        let (engine, nblocks) = crate::engine::PassThrough::new(set);
        Ok((Box::new(engine) as Box<dyn Engine>, nblocks))
    }
}

/// The blk-mq disks the module parameters ask for (none, or
/// `/dev/mlsdisk0` ... in order). Dropping it removes them, the last first.
pub(crate) struct BlkDisks(KVec<BlkDisk>);

impl Drop for BlkDisks {
    fn drop(&mut self) {
        while let Some(disk) = self.0.pop() {
            drop(disk);
        }
    }
}

impl BlkDisks {
    /// No disks.
    pub(crate) fn none() -> Self {
        Self(KVec::new())
    }

    /// Whether no disk was added.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Opens the engines of the disks the module parameters ask for: all
    /// of them or none (a failure closes the ones already opened); adds no
    /// disk ([`Opened::add`] does). Process context (module init).
    pub(crate) fn open_params() -> Result<Opened> {
        // SAFETY: the parameters are set before module init, which this
        // is part of, and not changed while the module lives.
        let (backing, mode, anchors, cache) = unsafe {
            (
                ffi::mlsdisk_disk_backing,
                ffi::mlsdisk_disk_mode,
                ffi::mlsdisk_disk_anchor,
                ffi::mlsdisk_disk_cache_mib,
            )
        };
        let (backing, mode, anchors, cache) =
            (param(backing), param(mode), param(anchors), param(cache));
        let n = items(backing).count();
        if n == 0 {
            // SAFETY: as above.
            if !param(unsafe { ffi::mlsdisk_disk_key }).is_empty() {
                // SAFETY: no preconditions.
                unsafe { ffi::mlsdisk_blk_wipe_key_param() };
                pr_err!("disk_key given without disk_backing\n");
                return Err(EINVAL);
            }
            if !anchors.is_empty() {
                pr_err!("disk_anchor given without disk_backing\n");
                return Err(EINVAL);
            }
            if !cache.is_empty() {
                pr_err!("disk_cache_mib given without disk_backing\n");
                return Err(EINVAL);
            }
            return Ok(Opened(KVec::new()));
        }
        // The keys first: the parameter is wiped whatever happens next.
        let keys = take_keys(n)?;
        if n > MAX_DISKS {
            pr_err!("disk_backing names {} devices, at most {}\n", n, MAX_DISKS);
            return Err(EINVAL);
        }
        check_count("disk_mode", mode, n)?;
        check_count("disk_anchor", anchors, n)?;
        check_count("disk_cache_mib", cache, n)?;
        let mut all = KVec::<DiskParams<'_>>::with_capacity(n, GFP_KERNEL)?;
        for (i, one) in items(backing).enumerate() {
            all.push(disk_params(i, one, mode, anchors, cache)?, GFP_KERNEL)?;
        }
        // No device twice: not two disks on one backing device, no anchor
        // on a backing device or shared by two disks.
        for (i, a) in all.iter().enumerate() {
            let mut devs = [Some(a.dev), a.anchor.map(|(_, d)| d)];
            if a.anchor.is_some_and(|(_, d)| d == a.dev) {
                pr_err!(
                    "mlsdisk{}: the anchor device is the backing device: the anchor must live outside the image\n",
                    i
                );
                return Err(EINVAL);
            }
            for (j, b) in all.iter().enumerate().skip(i + 1) {
                for d in devs.iter_mut().flatten() {
                    if *d == b.dev || b.anchor.is_some_and(|(_, bd)| bd == *d) {
                        pr_err!(
                            "mlsdisk{} and mlsdisk{} use the same device {}:{} (each backing and anchor device serves one disk)\n",
                            i,
                            j,
                            *d >> 20,
                            *d & 0xfffff
                        );
                        return Err(EINVAL);
                    }
                }
            }
        }
        // Every engine first: a failure here leaves nothing anyone could
        // have seen (no disk was added), so init may still fail.
        let mut pending = KVec::<Pending>::with_capacity(n, GFP_KERNEL)?;
        for (i, (p, key)) in all.iter().zip(keys.iter()).enumerate() {
            // `i < MAX_DISKS`, which fits.
            let index = i as c_int;
            let disk = match Pending::open(
                index,
                p.dev,
                (p.create, p.force),
                key,
                p.anchor.map(|(_, d)| d),
                p.cache_mib,
            ) {
                Ok(disk) => disk,
                Err(e) => {
                    pr_err!(
                        "mlsdisk{}: cannot {} the disk on '{}' (error {}); closing the {} engine(s) opened before it (no disk was added), insmod fails\n",
                        i,
                        if p.create { "create" } else { "open" },
                        format_args!("{}", table::Escaped(p.backing)),
                        e.to_errno(),
                        pending.len()
                    );
                    // `pending` drops here: each engine is synced and closed.
                    return Err(e);
                }
            };
            pr_info!(
                "mlsdisk{}: {} on {} ({} blocks of 4 KiB, {}-bit root key, {}, {}){}\n",
                i,
                if p.create { "created" } else { "opened" },
                format_args!("{}", table::Escaped(p.backing)),
                disk.capacity_blocks(),
                key.bits(),
                format_args!("{}", AnchorShown(p.anchor.map(|(name, _)| name))),
                format_args!("{}", CacheShown(p.cache_mib)),
                if cfg!(not(mlsdisk_passthrough)) {
                    ""
                } else {
                    ", pass-through stage: NOT encrypted"
                }
            );
            // Reserved for `n` above: does not allocate.
            pending.push(disk, GFP_KERNEL)?;
        }
        Ok(Opened(pending))
    }
}

/// The disks of the module parameters with their engines open, none added
/// yet ([`BlkDisks::open_params`]); [`Opened::add`] makes them visible.
pub(crate) struct Opened(KVec<Pending>);

impl Opened {
    /// Adds every disk, in order. Once a disk is added, `udev`/`blkid` may
    /// hold it open (and with it a reference to the module, which
    /// `try_module_get` grants while the module is still coming up), so
    /// module init must not fail after that: a module whose init fails is
    /// freed regardless of such references. Hence nothing here fails once
    /// the first disk is added: if a later `add_disk` fails (out of memory,
    /// a sysfs name clash), that disk's engine is closed, the disks after
    /// it are closed unadded, and the module stays loaded with the disks
    /// added so far (logged). Fails only if the first disk cannot be added
    /// (then nothing was visible).
    pub(crate) fn add(self) -> Result<BlkDisks> {
        let n = self.0.len();
        // Allocated before the first add: pushing below never allocates.
        let mut disks = BlkDisks(KVec::with_capacity(n, GFP_KERNEL)?);
        let mut rest = self.0.into_iter();
        for one in rest.by_ref() {
            let index = one.parts.as_ref().map_or(0, |p| p.queue.server.index);
            match one.add() {
                Ok(disk) => {
                    if let Err(e) = disks.0.push_within_capacity(disk) {
                        // Cannot happen (capacity `n`); a disk dropped
                        // while the module stays loaded is safe.
                        drop(e);
                        break;
                    }
                }
                Err(e) if disks.0.is_empty() => {
                    pr_err!(
                        "mlsdisk{}: cannot add the disk (error {}): closing the other engines, insmod fails\n",
                        index,
                        e.to_errno()
                    );
                    // `rest` drops with this function: closed, never added.
                    return Err(e);
                }
                Err(e) => {
                    pr_err!(
                        "mlsdisk{}: cannot add the disk (error {}); the module stays loaded with the {} disk(s) added before it (init must not fail once a disk is visible), the later ones are closed\n",
                        index,
                        e.to_errno(),
                        disks.0.len()
                    );
                    break;
                }
            }
        }
        // Any disks left in `rest` are closed, never added.
        drop(rest);
        Ok(disks)
    }
}

/// "cache budget <N> MiB" (`disk_cache_mib`) or "default cache budget".
pub(super) struct CacheShown(Option<u32>);

impl fmt::Display for CacheShown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(mib) => write!(f, "cache budget {mib} MiB"),
            None => f.write_str("default cache budget"),
        }
    }
}

/// "rollback anchor on <device>" or "no rollback anchor".
pub(super) struct AnchorShown<'a>(Option<&'a [u8]>);

impl fmt::Display for AnchorShown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(name) => write!(f, "rollback anchor on {}", table::Escaped(name)),
            None => f.write_str("no rollback anchor"),
        }
    }
}

/// A disk whose engine is open and whose workqueues, state and tag set
/// are allocated, but that is not added yet: nothing outside the module
/// can see it. Dropping it frees the workqueues and closes (syncs) the
/// engine. Module init opens every disk to this stage before it adds any
/// (see [`BlkDisks::add`]).
pub(super) struct Pending {
    /// `None` once handed on to [`Pending::add`].
    parts: Option<Parts>,
}

/// What a [`Pending`] disk holds.
///
/// # Invariants
///
/// The read work items of `queue`'s state serve `queue` and were never
/// queued yet, nor was `queue`; `tagset` is initialised.
pub(super) struct Parts {
    queue: Arc<DiskQueue>,
    tagset: Arc<TagSet<BlkOps>>,
    /// Logical capacity in 4 KiB blocks.
    capacity: u64,
    /// The disk's entry in the registry of open disks; dropped after the
    /// engine is closed.
    claim: BlkClaim,
}

impl Parts {
    /// Closes (syncs) the engine of a disk that was never added; the
    /// workqueues go with the queue (the read one was never queued: no
    /// request reached the disk).
    fn discard(self) {
        self.queue.pause();
        close(&self.queue.server);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(parts) = self.parts.take() {
            let index = parts.queue.server.index;
            parts.discard();
            pr_info!(
                "mlsdisk{}: engine closed (synced); the disk was never added\n",
                index
            );
        }
    }
}

impl Pending {
    fn capacity_blocks(&self) -> u64 {
        self.parts.as_ref().map_or(0, |p| p.capacity)
    }

    /// Opens the engine of disk `index` and allocates everything the disk
    /// needs, without adding it.
    fn open(
        index: c_int,
        dev: u32,
        mode: (bool, bool),
        key: &RawKey,
        anchor: Option<u32>,
        cache_mib: Option<u32>,
    ) -> Result<Self> {
        // One user per backing device: refused if a dm table (or another
        // disk) has it, and it stays registered until the engine is closed.
        let claim = BlkClaim::new(dev, index)?;
        let disk = Disk::open(
            || start_engine(index, dev, mode, key, anchor, cache_mib),
            |e| e,
        )?;
        let capacity = disk.capacity;
        let mut fifo = VecDeque::new();
        fifo.try_reserve_exact(FIFO_CAPACITY).map_err(|_| ENOMEM)?;
        // On failure the engine is dropped on this stack (an
        // out-of-memory path).
        let rworks = super::reads::ReadWorks::new(index, QUEUE_DEPTH)?;
        let name = kernel::str::CString::try_from_fmt(fmt!("mlsdisk{}", index))?;
        let state = pin_init!(DiskState {
            pending <- new_spinlock_irq!(fifo),
            disk,
            counts: Counters::default(),
            rworks,
            index,
        });
        let queue = match Ordered::new(&name, state, false) {
            Ok(queue) => queue,
            Err(e) => {
                // The engine and the read works were moved into the failed
                // initializer and are dropped with it (on this stack: an
                // out-of-memory path).
                return Err(e);
            }
        };
        // The read work items live in the queue's state, so it outlives
        // them.
        queue.server.rworks.set_owner(Arc::as_ptr(&queue));
        let tagset = match Arc::pin_init(TagSet::new(1, QUEUE_DEPTH, 1), GFP_KERNEL) {
            Ok(t) => t,
            Err(e) => {
                queue.pause();
                close(&queue.server);
                return Err(e);
            }
        };
        // INVARIANT: the read work items were made above for `queue` and
        // never queued, nor was `queue`; `tagset` is initialised.
        Ok(Self {
            parts: Some(Parts {
                queue,
                tagset,
                capacity,
                claim,
            }),
        })
    }

    /// Adds the disk `/dev/mlsdisk<index>`. On failure the engine is
    /// closed and the workqueues freed (nothing was visible).
    fn add(mut self) -> Result<BlkDisk> {
        let Some(parts) = self.parts.take() else {
            return Err(EIO);
        };
        let index = parts.queue.server.index;
        let queuedata = parts.queue.clone().into_foreign();
        // `TagSet` is `#[repr(transparent)]` over `Opaque<blk_mq_tag_set>`,
        // so its address is the C tag set's.
        let set = Arc::as_ptr(&parts.tagset)
            .cast_mut()
            .cast::<bindings::blk_mq_tag_set>();
        // SAFETY: `set` is an initialized tag set (kept alive by `tagset`
        // for as long as the disk); `queuedata` is an `Arc<DiskQueue>`
        // from `into_foreign`, as `BlkOps::QueueData` expects; process
        // context.
        let disk = unsafe {
            ffi::mlsdisk_blk_add_disk(
                set,
                queuedata,
                index,
                parts.capacity.saturating_mul(SECTORS_PER_BLOCK),
                MAX_IO_SECTORS,
                MAX_DISCARD_SECTORS,
            )
        };
        let disk = match kernel::error::from_err_ptr(disk).map(NonNull::new) {
            Ok(Some(disk)) => disk,
            failed => {
                // `mlsdisk_blk_add_disk` never returns NULL; count it as a
                // failure.
                let err = failed.err().unwrap_or(EIO);
                pr_err!(
                    "mlsdisk{}: cannot add the disk: error {}\n",
                    index,
                    err.to_errno()
                );
                // SAFETY: the failed add left nothing behind and gave
                // `queuedata` back (see blk_helpers.h).
                drop(unsafe { Arc::<DiskQueue>::from_foreign(queuedata) });
                parts.discard();
                return Err(err);
            }
        };
        // INVARIANT: added above with `queuedata` on `tagset`; the read work
        // items of the queue's state serve it.
        Ok(BlkDisk {
            disk,
            queuedata,
            queue: parts.queue,
            _tagset: parts.tagset,
            _claim: parts.claim,
        })
    }
}

/// Logs what reached the engine of `state`, then closes it ([`Disk::close`]:
/// synced and dropped on a worker), logging a failure. Every request fails
/// afterwards.
pub(super) fn close(state: &DiskState) {
    let index = state.index;
    pr_info!(
        "mlsdisk{}: closing: {} syncs={} reread={}\n",
        index,
        format_args!("{}", state.counts.requests()),
        state.counts.syncs(),
        state.disk.reads.rereads()
    );
    if let Err(e) = state.disk.close(true) {
        pr_err!("mlsdisk{}: sync at close failed: {:?}\n", index, e);
    }
}

impl Drop for BlkDisk {
    fn drop(&mut self) {
        // No background work from now on (requests are still served).
        self.queue.pause();
        // SAFETY: a live disk (type invariant), deleted once. Waits for
        // every request (the worker ends them); no `queue_rq` afterwards.
        unsafe {
            bindings::del_gendisk(self.disk.as_ptr());
            bindings::put_disk(self.disk.as_ptr());
        }
        // The disk is gone, so nothing queues a read any more: wait for the
        // read work items (which may still kick the ordered one after
        // ending their request); their workqueue goes with the state.
        self.queue.server.rworks.flush();
        // Nothing queues the work item any more: wait for a running one.
        self.queue.pause();
        // SAFETY: `queuedata` came from `into_foreign` and the disk that
        // borrowed it is released.
        drop(unsafe { Arc::<DiskQueue>::from_foreign(self.queuedata) });
        close(&self.queue.server);
        pr_info!(
            "mlsdisk{}: removed (synced and closed)\n",
            self.queue.server.index
        );
        // The tag set and the state go after this, with the fields.
    }
}
