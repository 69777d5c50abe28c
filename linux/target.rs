// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! The `mlsdisk` device-mapper target, pass-through stage.
//!
//! ```text
//! <start> <len> mlsdisk <backing device> <key> [<#opts> <opt>...]
//! ```
//!
//! The constructor validates the table line exactly as the real target will
//! (see `table.rs` for the grammar), opens the backing device and checks that
//! the target fits on it. Every bio is then remapped to the backing device
//! at the same offset: no encryption yet. `dmsetup status` says so
//! (`passthrough ...`), so nobody mistakes this stage for a secure disk.
//!
//! Every constructor failure logs a detailed `mlsdisk: <cause>` line and
//! sets `ti->error` to a fixed summary (device-mapper logs it after the
//! target name); whatever was acquired (the backing device, the key) is
//! released before the constructor returns. No message ever contains the
//! key, and `dmsetup table` shows `-` in its place.

use core::fmt::{self, Write as _};
use core::sync::atomic::{AtomicU64, Ordering};

use kernel::prelude::*;

use crate::dm::{
    self, Args, Bio, BioOp, Ctr, CtrError, Devices, DmDev, MapResult, StatusType, StatusWriter,
};
use crate::table::{self, Escaped, Options, RawKey};

/// The checksum of the core self-test that ran at module load (it must have
/// passed for the module to load at all).
static SELFTEST_CHECKSUM: AtomicU64 = AtomicU64::new(0);

/// Records the module-load self-test result for the status line.
pub(crate) fn set_selftest_checksum(checksum: u64) {
    SELFTEST_CHECKSUM.store(checksum, Ordering::Relaxed);
}

/// Bios seen by `map`, for `dmsetup status` (and for tests: flushes and
/// discards must reach the target).
#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    fua: AtomicU64,
    discards: AtomicU64,
}

impl Counters {
    fn count(&self, bio: &Bio) {
        let one = |c: &AtomicU64| {
            c.fetch_add(1, Ordering::Relaxed);
        };
        match bio.op() {
            BioOp::Read => one(&self.reads),
            BioOp::Write | BioOp::Flush => {
                if bio.is_preflush() || bio.op() == BioOp::Flush {
                    one(&self.flushes);
                }
                if bio.is_fua() {
                    one(&self.fua);
                }
                if bio.sectors() != 0 {
                    one(&self.writes);
                }
            }
            BioOp::Discard => one(&self.discards),
            BioOp::Other(_) => {}
        }
    }
}

/// One `mlsdisk` target instance.
pub(crate) struct MlsDisk {
    /// The backing device, closed on drop.
    backing: DmDev,
    /// The first sector of the target in the mapped device.
    begin: u64,
    /// The length of the target in sectors.
    len: u64,
    /// The key, wiped on drop. Unused until the encrypting stage.
    key: RawKey,
    /// The optional arguments, for `dmsetup table`.
    options: Options,
    /// Bio counters for `dmsetup status`.
    counters: Counters,
}

impl MlsDisk {
    fn fail(msg: &'static CStr, err: Error) -> CtrError {
        CtrError::new(msg, err)
    }
}

impl dm::Target for MlsDisk {
    const NAME: &'static CStr = c"mlsdisk";
    const VERSION: [u32; 3] = [0, 1, 0];
    const SECRET_ARGS: &'static [usize] = &[table::KEY_ARG];

    fn new(ti: &mut Ctr<'_>, args: &Args<'_>) -> Result<KBox<Self>, CtrError> {
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

        // Flushes and discards must reach the target: at the encrypting stage
        // they mean sync and unmap (DESIGN.md §5).
        ti.set_num_flush_bios(1);
        ti.set_num_discard_bios(1);

        let target = KBox::new(
            Self {
                backing,
                begin: ti.begin(),
                len: ti.len(),
                key: line.key,
                options: line.options,
                counters: Counters::default(),
            },
            GFP_KERNEL,
        )
        .map_err(|_| {
            pr_err!("out of memory allocating the target\n");
            Self::fail(c"out of memory", ENOMEM)
        })?;
        pr_info!(
            "pass-through target on {} ({} of {} sectors, {}-bit key): NOT encrypted at this stage\n",
            format_args!("{}", Escaped(target.backing.name().to_bytes())),
            ti.len(),
            max,
            target.key.bits()
        );
        Ok(target)
    }

    fn map(&self, bio: &mut Bio) -> MapResult {
        self.counters.count(bio);
        bio.set_dev(&self.backing);
        // Empty bios (flushes) carry no meaningful sector.
        if bio.sectors() != 0 {
            // device-mapper only sends bios inside the target.
            bio.set_sector(bio.sector().wrapping_sub(self.begin));
        }
        MapResult::Remapped
    }

    fn status(&self, kind: StatusType, out: &mut StatusWriter<'_>) -> fmt::Result {
        match kind {
            StatusType::Info => {
                let c = &self.counters;
                let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
                write!(
                    out,
                    "passthrough selftest=ok checksum={:016x} reads={} writes={} flushes={} fua={} discards={}",
                    SELFTEST_CHECKSUM.load(Ordering::Relaxed),
                    n(&c.reads),
                    n(&c.writes),
                    n(&c.flushes),
                    n(&c.fua),
                    n(&c.discards)
                )
            }
            StatusType::Table => {
                // Never the key: `-` stands in its place.
                write!(out, "{} -", Escaped(self.backing.name().to_bytes()))?;
                self.options.emit(out)
            }
            StatusType::Ima => write!(
                out,
                "target_name=mlsdisk,target_version={}.{}.{},stage=passthrough,key_bits={};",
                <Self as dm::Target>::VERSION[0],
                <Self as dm::Target>::VERSION[1],
                <Self as dm::Target>::VERSION[2],
                self.key.bits()
            ),
        }
    }

    fn iterate_devices(&self, devices: &mut Devices<'_>) -> i32 {
        // The whole target maps onto the start of the backing device.
        devices.call(&self.backing, 0, self.len)
    }
}
