//! `mlsdisk serve`: the engine as a ublk block device (`/dev/ublkb<N>`),
//! for kernels without Rust (no `mlsdisk.ko`) but with `ublk_drv`.
//!
//! # libublk, not raw io_uring commands
//!
//! The server is built on the `libublk` crate rather than on the ublk
//! uAPI driven directly through the `io-uring` crate:
//!
//! - **No `unsafe` here.** Driving ublk by hand means mapping the
//!   per-queue descriptor array (`mmap` of `/dev/ublkc<N>`), pushing SQEs
//!   whose buffers must outlive the kernel's use of them and reading
//!   descriptors the kernel writes: all `unsafe`, which this project keeps
//!   to `linux/`. libublk does those behind a safe API (`get_iod`, `IoBuf`,
//!   `complete_io_cmd_unified`), and is the library the ublk maintainer
//!   keeps in step with the driver (feature flags, ioctl-encoded commands,
//!   the per-io daemon rule).
//! - **Performance is the same.** Both drive the same io_uring commands
//!   (`FETCH_REQ`, `COMMIT_AND_FETCH_REQ`) with one ring and one thread per
//!   queue; the cost of a request is the engine's (sealing, the index),
//!   not the glue.
//! - **The price** is its dependencies: 63 more crates in `Cargo.lock`
//!   (smol and its async-io stack, serde, thiserror, io-uring; a third of
//!   them, bindgen and clang-sys among them, only at build time, since
//!   `libublk-rs-sys` generates the uAPI bindings with libclang, which the
//!   kernel build needs anyway). The binary still links only libc, so the
//!   guest image needs nothing new.
//!
//! # Threads and requests
//!
//! One thread per queue (`--queues`), each with its own ring and
//! `--depth` tags, each tag with an I/O buffer of [`IO_BUF_BYTES`]. A
//! request is run to completion on its queue's thread ([`map`]): reads
//! plan under the disk's lock and fetch and authenticate their blocks
//! outside it, so queues read in parallel; writes, flushes (a sync), FUA
//! writes (write, then sync) and discards (unmap) take the lock in turn.
//! The device has 4 KiB logical and physical blocks, the disk's logical
//! capacity, a volatile write cache with FUA (so the kernel sends flushes)
//! and discards of up to 64 MiB.
//!
//! # Lifecycle
//!
//! SIGTERM or SIGINT (or `mlsdisk serve --stop N`, which sends SIGTERM to
//! the server) stops the device: the kernel flushes it (a sync) and ends
//! the queues; the server syncs once more, deletes the device and closes
//! the disk. A server killed outright is a power cut: the device stays,
//! failing every request, until `mlsdisk serve --stop N` deletes it; the
//! next `serve` opens the disk at its last sync.

pub mod map;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::{BufDescList, UblkDev, UblkQueue};
use libublk::{BufDesc, UblkFlags, UblkIORes};
use mlsdisk_core::bio::{BlockSet, BLOCK_SIZE};
use mlsdisk_core::disk::MlsDisk;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::admin;
use map::Engine;

/// Bytes of one tag's I/O buffer: the largest request (512 KiB).
pub const IO_BUF_BYTES: u32 = 512 * 1024;
/// The largest discard the device takes, in 512-byte sectors (64 MiB, as
/// the dm target).
const MAX_DISCARD_SECTORS: u32 = 64 << 11;
/// The ublk driver's control device.
pub const CONTROL: &str = "/dev/ublk-control";
/// Largest device number the driver gives (`UBLK_MAX_UBLKS`).
pub const MAX_ID: u32 = (1 << 20) - 1;

/// What `mlsdisk serve` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Hardware queues (threads).
    pub queues: u16,
    /// Tags per queue.
    pub depth: u16,
    /// File that gets the device's path once it is ready.
    pub ready_file: Option<PathBuf>,
}

/// The most memory the I/O buffers may take (`queues × depth ×`
/// [`IO_BUF_BYTES`]): libublk allocates them without a fallible path, so
/// their size is bounded before any is made.
pub const MAX_BUFFER_BYTES: u64 = 1 << 30;

/// The bytes of I/O buffers `queues` queues of `depth` tags take, refused
/// above [`MAX_BUFFER_BYTES`].
pub fn buffer_bytes(queues: u16, depth: u16) -> Result<u64, String> {
    let total = u64::from(queues) * u64::from(depth) * u64::from(IO_BUF_BYTES);
    if total > MAX_BUFFER_BYTES {
        return Err(format!(
            "--queues {queues} x --depth {depth} x {} KiB = {} MiB of I/O buffers: \
             at most {} MiB",
            IO_BUF_BYTES / 1024,
            total >> 20,
            MAX_BUFFER_BYTES >> 20
        ));
    }
    Ok(total)
}

/// A libublk error in plain words.
fn ublk_words(e: &libublk::UblkError) -> String {
    match e {
        libublk::UblkError::UringIOError(n) | libublk::UblkError::OtherError(n) => {
            admin::os_words(&std::io::Error::from_raw_os_error(n.saturating_abs()))
        }
        libublk::UblkError::IOError(e) => admin::os_words(e),
        other => format!("{other}"),
    }
}

/// Refuses early, with a clear message, a kernel without ublk.
fn check_driver() -> Result<(), String> {
    if Path::new(CONTROL).exists() {
        return Ok(());
    }
    Err(format!(
        "{CONTROL} does not exist: the kernel has no ublk driver loaded \
         (modprobe ublk_drv; it needs CONFIG_BLK_DEV_UBLK and io_uring)"
    ))
}

/// Serves `disk` as a ublk device until SIGTERM or SIGINT (or the device
/// is stopped from outside), then syncs and closes the disk. `backing`
/// names the disk in messages.
pub fn serve<D: BlockSet + 'static>(
    disk: MlsDisk<D>,
    backing: &Path,
    opts: &Options,
) -> Result<(), String> {
    buffer_bytes(opts.queues, opts.depth)?;
    check_driver()?;
    let name = backing.display().to_string();
    let engine = Arc::new(Engine::new(disk));
    let capacity = engine.capacity();
    // Registered before the device exists: a signal during the set-up is
    // caught too (and stops the device once it runs). Flags, not
    // signal-hook's iterator: that needs Unix sockets, which small guest
    // kernels (CONFIG_UNIX off) lack.
    let term = Arc::new(AtomicBool::new(false));
    let int = Arc::new(AtomicBool::new(false));
    for (sig, flag) in [(SIGTERM, &term), (SIGINT, &int)] {
        signal_hook::flag::register(sig, Arc::clone(flag))
            .map_err(|e| format!("signal handlers: {}", admin::os_words(&e)))?;
    }
    let ctrl = UblkCtrlBuilder::default()
        .name("mlsdisk")
        .nr_queues(opts.queues)
        .depth(opts.depth)
        .io_buf_bytes(IO_BUF_BYTES)
        .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
        .build()
        .map_err(|e| format!("cannot add a ublk device: {}", ublk_words(&e)))?;
    let id = ctrl.dev_info().dev_id;
    let bdev = format!("/dev/ublkb{id}");

    // The signal thread: a signal stops the device (STOP_DEV), which ends
    // the queues and so `run_target` below. It polls the flags (10 times a
    // second) until a signal came or the server is done.
    let done = Arc::new(AtomicBool::new(false));
    let stopper = {
        let done = done.clone();
        std::thread::spawn(move || loop {
            let which = if term.load(Ordering::Relaxed) {
                "SIGTERM"
            } else if int.load(Ordering::Relaxed) {
                "SIGINT"
            } else if done.load(Ordering::Relaxed) {
                return;
            } else {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            eprintln!("mlsdisk serve: {which} received: stopping /dev/ublkb{id}");
            // A control handle of this thread (the library's control ring
            // is per thread).
            match UblkCtrl::new_simple(id as i32) {
                Ok(c) => {
                    if let Err(e) = c.kill_dev() {
                        eprintln!("mlsdisk serve: stopping the device: {}", ublk_words(&e));
                    }
                }
                Err(e) => eprintln!("mlsdisk serve: stopping the device: {}", ublk_words(&e)),
            }
            return;
        })
    };

    let q_engine = engine.clone();
    let ready_file = opts.ready_file.clone();
    let ready_bdev = bdev.clone();
    let ready_name = name.clone();
    let run = ctrl.run_target(
        move |dev: &mut UblkDev| {
            set_params(dev, capacity);
            Ok(())
        },
        move |qid, dev| queue(qid, dev, &q_engine),
        move |_ctrl| ready(&ready_bdev, &ready_name, capacity, ready_file.as_deref()),
    );
    // Whatever ended the queues, the signal thread is not needed any more.
    done.store(true, Ordering::Relaxed);
    let _ = stopper.join();
    let served = run.map_err(|e| format!("{bdev}: the ublk device failed: {}", ublk_words(&e)));

    // Durable before the device goes (the kernel flushed it while
    // stopping; this covers a device stopped from outside).
    let synced = engine
        .sync()
        .map_err(|e| format!("{name}: final sync failed: {}", admin::error_words(e)));
    if let Err(e) = ctrl.del_dev() {
        eprintln!("mlsdisk serve: deleting {bdev}: {}", ublk_words(&e));
    }
    eprintln!("mlsdisk serve: {bdev} stopped: {}", engine.status_line());
    served?;
    synced?;
    let engine = Arc::try_unwrap(engine)
        .map_err(|_| format!("{name}: a queue thread still holds the disk"))?;
    engine
        .into_disk()
        .and_then(|d| d.close())
        .map_err(|e| format!("{name}: {}", admin::error_words(e)))
}

/// The device's parameters: 4 KiB blocks, the capacity, a volatile cache
/// with FUA, discards.
fn set_params(dev: &mut UblkDev, capacity: u64) {
    use libublk::sys;
    let sectors = capacity.saturating_mul((BLOCK_SIZE / 512) as u64);
    dev.tgt.dev_size = capacity.saturating_mul(BLOCK_SIZE as u64);
    dev.tgt.params = sys::ublk_params {
        types: sys::UBLK_PARAM_TYPE_BASIC | sys::UBLK_PARAM_TYPE_DISCARD,
        basic: sys::ublk_param_basic {
            attrs: sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA,
            logical_bs_shift: 12,
            physical_bs_shift: 12,
            io_opt_shift: 12,
            io_min_shift: 12,
            max_sectors: dev.dev_info.max_io_buf_bytes >> 9,
            dev_sectors: sectors,
            ..Default::default()
        },
        discard: sys::ublk_param_discard {
            discard_granularity: BLOCK_SIZE as u32,
            max_discard_sectors: MAX_DISCARD_SECTORS,
            max_discard_segments: 1,
            ..Default::default()
        },
        ..Default::default()
    };
}

/// The device is live: its path on standard output and in the ready file.
fn ready(bdev: &str, backing: &str, capacity: u64, ready_file: Option<&Path>) {
    println!("{bdev}");
    let _ = std::io::stdout().flush();
    eprintln!(
        "mlsdisk serve: {bdev}: {} MiB ({} sectors) of {backing}",
        capacity / 256,
        capacity.saturating_mul(8)
    );
    if let Some(p) = ready_file {
        // Written whole under another name, then renamed: a script that
        // polls for the file never reads half a line.
        let mut tmp = p.as_os_str().to_owned();
        tmp.push(".tmp");
        let r = std::fs::write(&tmp, format!("{bdev}\n")).and_then(|()| std::fs::rename(&tmp, p));
        if let Err(e) = r {
            eprintln!(
                "mlsdisk serve: ready file {}: {}",
                p.display(),
                admin::os_words(&e)
            );
        }
    }
}

/// One queue's thread: fetch, run, commit, until the device stops.
fn queue<D: BlockSet>(qid: u16, dev: &UblkDev, engine: &Engine<D>) {
    let mut bufs = dev.alloc_queue_io_bufs();
    let q = match UblkQueue::new(qid, dev)
        .and_then(|q| q.submit_fetch_commands_unified(BufDescList::Slices(Some(&bufs))))
    {
        Ok(q) => q,
        Err(e) => {
            eprintln!("mlsdisk serve: queue {qid}: {}", ublk_words(&e));
            return;
        }
    };
    let capacity = engine.capacity();
    q.wait_and_handle_io(move |q, tag, _ctx| {
        let iod = q.get_iod(tag);
        let (op, start, n) = (iod.op_flags, iod.start_sector, iod.nr_sectors);
        // Tags are below the depth, the number of buffers.
        let Some(buf) = bufs.get_mut(usize::from(tag)) else {
            eprintln!("mlsdisk serve: queue {qid}: tag {tag} out of range");
            return;
        };
        let res = match map::decode(op, start, n, capacity, buf.len()) {
            Ok(req) => engine.execute(req, buf.as_mut_slice()),
            Err(errno) => {
                engine
                    .counters
                    .errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                eprintln!(
                    "mlsdisk serve: refused request op={op:#x} sector={start} sectors={n}: {}",
                    admin::os_words(&std::io::Error::from_raw_os_error(-errno))
                );
                errno
            }
        };
        if let Err(e) = q.complete_io_cmd_unified(
            tag,
            BufDesc::Slice(buf.as_slice()),
            Ok(UblkIORes::Result(res)),
        ) {
            eprintln!(
                "mlsdisk serve: queue {qid}: completing tag {tag}: {}",
                ublk_words(&e)
            );
        }
    });
}

/// `mlsdisk serve --stop N`: asks the server of `/dev/ublkb<N>` to stop
/// (SIGTERM: it syncs and deletes the device) and waits up to `wait` for
/// the device to go. A device whose server is gone (killed) is stopped and
/// deleted here. Returns what was done.
pub fn stop(id: u32, wait: Duration) -> Result<String, String> {
    check_driver()?;
    if id > MAX_ID {
        return Err(format!("no ublk device {id} (at most {MAX_ID})"));
    }
    let cdev = format!("/dev/ublkc{id}");
    let ctrl = UblkCtrl::new_simple(id as i32)
        .map_err(|e| format!("ublk device {id}: {}", ublk_words(&e)))?;
    let pid = ctrl.dev_info().ublksrv_pid;
    if pid > 0 && is_server(pid) {
        let p = rustix::process::Pid::from_raw(pid)
            .ok_or_else(|| format!("ublk device {id}: bad server pid {pid}"))?;
        rustix::process::kill_process(p, rustix::process::Signal::TERM).map_err(|e| {
            format!(
                "ublk device {id}: signalling its server {pid}: {}",
                admin::os_words(&e.into())
            )
        })?;
        let t0 = Instant::now();
        while Path::new(&cdev).exists() && is_server(pid) {
            if t0.elapsed() > wait {
                return Err(format!(
                    "/dev/ublkb{id}: its server {pid} did not stop within {} s",
                    wait.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !Path::new(&cdev).exists() {
            return Ok(format!("stopped /dev/ublkb{id} (server {pid})"));
        }
    }
    // No server (killed, or it died before deleting the device).
    let _ = ctrl.kill_dev();
    ctrl.del_dev()
        .map_err(|e| format!("ublk device {id}: delete: {}", ublk_words(&e)))?;
    Ok(format!("deleted /dev/ublkb{id} (its server was gone)"))
}

/// Whether `pid` is a running `mlsdisk` (the pid a device records may
/// have been reused since its server died).
fn is_server(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) state ...": a zombie (Z) is gone already.
        Ok(s) => s.contains("(mlsdisk)") && !s.contains(") Z "),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_bounded() {
        assert_eq!(buffer_bytes(2, 64), Ok(64 << 20));
        assert_eq!(buffer_bytes(16, 128), Ok(1 << 30));
        let e = buffer_bytes(16, 129).unwrap_err();
        assert!(
            e.contains("1032 MiB of I/O buffers: at most 1024 MiB"),
            "{e}"
        );
        assert!(buffer_bytes(16, 1024).is_err());
    }
}
