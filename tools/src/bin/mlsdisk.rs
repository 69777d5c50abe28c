//! `mlsdisk`: set up MlsDisk devices (as `cryptsetup` does for dm-crypt)
//! and make, inspect and check MlsDisk images in userspace.
//!
//! ```text
//! mlsdisk format DEV|FILE [--size-mib N] [--force] [--batch] KEY [ANCHOR]
//! mlsdisk size   DEV|FILE KEY                   capacity in 512-byte sectors
//! mlsdisk open   DEV NAME [--anchor DEV] KEY|--key-desc logon:NAME
//! mlsdisk close  NAME
//! mlsdisk status NAME [--json]
//! mlsdisk info   DEV|FILE KEY [ANCHOR]
//! mlsdisk check  DEV|FILE KEY [ANCHOR] [--json]
//! mlsdisk write  DEV|FILE LBA FILE KEY [ANCHOR]      (4 KiB blocks)
//! mlsdisk read   DEV|FILE LBA COUNT OUTFILE KEY [ANCHOR]
//! mlsdisk serve  DEV|FILE KEY [ANCHOR] [--queues N] [--depth N] [--ready-file F]
//! mlsdisk serve  --stop N                         stop /dev/ublkbN
//!
//! KEY:    --key HEX | --key-file FILE|-    (16/32 raw bytes or 32/64 hex digits)
//! ANCHOR: --anchor DEV    the kernel's anchor=dev:<device> (8 KiB, BlockAnchor)
//!         --anchor-file FILE    the userspace FileAnchor
//! ```
//!
//! Exit status: 0 success; 1 the operation failed (the message names the
//! path and the cause); 2 usage (unknown argument, number out of range).
//! `check` is fsck-style: 0 clean, 4 blocks failed authentication, 8 the
//! image could not be checked (cannot open, wrong key, I/O), 2 usage.
//! `mlsdisk COMMAND --help` describes each command, `mlsdisk man` prints
//! the manual page mlsdisk(8); `docs/admin-guide.md` is the guide.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use mlsdisk_core::bio::{BlockSet, FileDisk, BLOCK_SIZE};
use mlsdisk_core::crypto::AuthBlob;
use mlsdisk_core::disk::state::SuperPayload;
use mlsdisk_core::disk::{
    BlockAnchor, DiskConfig, FileAnchor, Geometry, MlsDisk, NoAnchor, RollbackAnchor,
};
use mlsdisk_core::platform::StdCrypto;
use mlsdisk_core::CryptoRef;
use mlsdisk_tools::admin::{self, Key, Signature};
use mlsdisk_tools::pool::{PoolParallel, FILE_READERS};
use mlsdisk_tools::serve;
use zeroize::Zeroizing;

const EXIT_HELP: &str = "\
Exit status: 0 success; 1 the operation failed; 2 usage error.
check: 0 clean, 4 blocks failed authentication, 8 could not check, 2 usage.
See docs/admin-guide.md.";

/// Largest `--size-mib`: the image's size in bytes fits in 64 bits.
const MAX_SIZE_MIB: u64 = u64::MAX >> 20;
/// Blocks moved per step by `read`, `write` and `check` (1 MiB).
const CHUNK_BLOCKS: u64 = 256;

#[derive(Parser)]
#[command(
    name = "mlsdisk",
    version,
    about = "Set up and inspect MlsDisk secure disks (log-structured, encrypted, \
             authenticated, rollback-detecting)",
    after_help = EXIT_HELP,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make a new MlsDisk on a block device or image file (destroys its
    /// contents). Refuses a target holding an MlsDisk or another
    /// recognisable signature unless --force; asks to type YES on a
    /// terminal unless --batch.
    Format(FormatArgs),
    /// Print the logical capacity in 512-byte sectors (the <len> of the
    /// table line), read from the disk's superblock with the key.
    Size(SizeArgs),
    /// Map a formatted block device as /dev/mapper/NAME: computes the
    /// length and loads the `mlsdisk` table with dmsetup.
    Open(OpenArgs),
    /// Remove the mapping NAME (the target syncs and closes the disk).
    Close(CloseArgs),
    /// The target's status line as named fields.
    Status(StatusArgs),
    /// Show an image's geometry, state and counters (opens it in
    /// userspace: not while it is mapped).
    Info(ImageArgs),
    /// Read every logical block and verify it (exit 0 clean, 4 errors
    /// found, 8 could not check).
    Check(CheckArgs),
    /// Write a file to the image at block LBA (4 KiB blocks; the last one
    /// zero-padded).
    Write(WriteArgs),
    /// Read COUNT blocks from block LBA into OUTFILE.
    Read(ReadArgs),
    /// Serve the disk as the block device /dev/ublkbN (ublk: no kernel
    /// module needed) until SIGTERM/SIGINT or `serve --stop N`; prints the
    /// device's path when it is ready.
    Serve(ServeArgs),
    /// Print the manual page mlsdisk(8), or mlsdisk-COMMAND(8), in roff
    /// (mlsdisk man | man -l -).
    #[command(hide = true)]
    Man {
        /// The command whose page to print.
        command: Option<String>,
    },
}

#[derive(Args)]
struct KeyArgs {
    /// Root key as 32 or 64 hex digits (AES-128/256). Visible in `ps` and
    /// the shell history: prefer --key-file.
    #[arg(long, value_name = "HEX", conflicts_with = "key_file")]
    key: Option<String>,
    /// Read the root key from FILE, or standard input for `-`: 16 or 32
    /// raw bytes, or 32 or 64 hex digits.
    #[arg(long, value_name = "FILE|-")]
    key_file: Option<PathBuf>,
}

#[derive(Args)]
struct AnchorArgs {
    /// Rollback anchor on a device or file of at least 8 KiB, in the
    /// kernel's anchor=dev:<device> format (format makes a missing file).
    #[arg(long, visible_alias = "anchor-dev", value_name = "DEV")]
    anchor: Option<PathBuf>,
    /// Rollback anchor in a file of the userspace FileAnchor format.
    #[arg(long, value_name = "FILE", conflicts_with = "anchor")]
    anchor_file: Option<PathBuf>,
}

#[derive(Args)]
struct FormatArgs {
    /// Block device or image file (a missing file is made).
    target: PathBuf,
    /// Size of an image file in MiB (a new file needs it; an existing file
    /// is resized; not for block devices, whose size is used).
    #[arg(long, value_name = "MIB",
          value_parser = clap::value_parser!(u64).range(1..=MAX_SIZE_MIB))]
    size_mib: Option<u64>,
    /// Blocks per data segment.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(4..=65536))]
    seg_blocks: Option<u32>,
    /// Over-provisioning reserve in percent.
    #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u8).range(1..=50))]
    op: Option<u8>,
    /// Overwrite an MlsDisk or another recognised signature.
    #[arg(long)]
    force: bool,
    /// Never ask for confirmation.
    #[arg(long, short = 'q', visible_alias = "quiet")]
    batch: bool,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    anchor: AnchorArgs,
}

#[derive(Args)]
struct SizeArgs {
    /// Block device or image file.
    target: PathBuf,
    #[command(flatten)]
    key: KeyArgs,
}

#[derive(Args)]
struct OpenArgs {
    /// Block device holding the disk (use losetup for an image file).
    device: PathBuf,
    /// Name of the mapping: /dev/mapper/NAME.
    name: String,
    /// Rollback anchor device (anchor=dev:<device> in the table).
    #[arg(long, visible_alias = "anchor-dev", value_name = "DEV")]
    anchor: Option<PathBuf>,
    #[command(flatten)]
    key: KeyArgs,
    /// Key in the kernel keyring, TYPE:DESCRIPTION with TYPE logon or user
    /// (keyctl padd logon NAME @u < key); the kernel reads it.
    #[arg(long, value_name = "logon:NAME", conflicts_with_all = ["key", "key_file"])]
    key_desc: Option<String>,
    /// Size in bytes of the keyring key.
    #[arg(long, value_name = "16|32", default_value_t = 32,
          value_parser = clap::value_parser!(u8).range(16..=32), requires = "key_desc")]
    key_size: u8,
    /// Length of the mapping in sectors. By default it is read from the
    /// superblock with the key; with --key-desc (a key userspace cannot
    /// read) it is computed from the device's size and the default layout.
    #[arg(long, value_name = "SECTORS",
          value_parser = clap::value_parser!(u64).range(8..))]
    sectors: Option<u64>,
}

#[derive(Args)]
struct CloseArgs {
    /// Name of the mapping.
    name: String,
}

#[derive(Args)]
struct StatusArgs {
    /// Name of the mapping.
    name: String,
    /// Print a JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ImageArgs {
    /// Block device or image file.
    target: PathBuf,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    anchor: AnchorArgs,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    image: ImageArgs,
    /// Print the result as a JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct WriteArgs {
    /// Block device or image file.
    target: PathBuf,
    /// First logical block (4 KiB).
    lba: u64,
    /// File to write (not empty).
    file: PathBuf,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    anchor: AnchorArgs,
}

#[derive(Args)]
struct ReadArgs {
    /// Block device or image file.
    target: PathBuf,
    /// First logical block (4 KiB).
    lba: u64,
    /// Number of blocks.
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Output file.
    outfile: PathBuf,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    anchor: AnchorArgs,
}

#[derive(Args)]
struct ServeArgs {
    /// Block device or image file (required unless --stop).
    #[arg(required_unless_present = "stop")]
    target: Option<PathBuf>,
    /// Stop /dev/ublkbN: its server syncs and deletes it (a device whose
    /// server was killed is deleted).
    #[arg(long, value_name = "N", conflicts_with_all = ["target", "queues", "depth", "threads", "ready_file"],
          value_parser = clap::value_parser!(u32).range(0..=i64::from(serve::MAX_ID)))]
    stop: Option<u32>,
    /// Hardware queues, each served by a thread (reads run in parallel
    /// across queues).
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=16))]
    queues: u16,
    /// Requests in flight per queue.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    depth: u16,
    /// CPUs the engine's bulk work may use: sealing a flush's blocks,
    /// writing them beside the flush's index updates, fetching the parts
    /// of a long read (as the kernel module does on its workqueue); 1 runs
    /// it all on the thread that holds the disk. More helps writes and
    /// costs long reads (docs/admin-guide.md).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=16))]
    threads: u16,
    /// Write the device's path to FILE once it is ready (for scripts).
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    anchor: AnchorArgs,
}

/// A failed command: its message and exit status.
struct Fail {
    code: u8,
    msg: String,
}

type Res<T> = Result<T, Fail>;

fn fail(msg: impl Into<String>) -> Fail {
    Fail {
        code: 1,
        msg: msg.into(),
    }
}

fn usage(msg: impl Into<String>) -> Fail {
    Fail {
        code: 2,
        msg: format!("{}\n(see mlsdisk --help)", msg.into()),
    }
}

/// `PATH: words` for an I/O error.
fn io_fail(p: &Path, e: &std::io::Error) -> Fail {
    fail(format!("{}: {}", p.display(), admin::os_words(e)))
}

/// `PATH: words` for a core error.
fn core_fail(p: &Path, e: mlsdisk_core::Error) -> Fail {
    fail(format!("{}: {}", p.display(), admin::error_words(e)))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("mlsdisk: {}", f.msg);
            ExitCode::from(f.code)
        }
    }
}

fn run(cmd: Cmd) -> Res<u8> {
    match cmd {
        Cmd::Format(a) => format(a),
        Cmd::Size(a) => size(a),
        Cmd::Open(a) => open_dm(a),
        Cmd::Close(a) => close_dm(a),
        Cmd::Status(a) => status(a),
        Cmd::Info(a) => info(a),
        Cmd::Check(a) => check(a),
        Cmd::Write(a) => write(a),
        Cmd::Read(a) => read(a),
        Cmd::Serve(a) => serve_cmd(a),
        Cmd::Man { command } => man(command),
    }
}

/// mlsdisk(8), generated from the same definitions as `--help`.
fn man(sub: Option<String>) -> Res<u8> {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    if let Some(name) = sub {
        cmd.build();
        cmd = cmd
            .find_subcommand(&name)
            .cloned()
            .ok_or_else(|| usage(format!("no command '{name}'")))?
            .name(format!("mlsdisk-{name}"))
            .version(env!("CARGO_PKG_VERSION"));
    }
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .section("8")
        .render(&mut out)
        .map_err(|e| fail(format!("manual page: {}", admin::os_words(&e))))?;
    std::io::stdout()
        .write_all(&out)
        .map_err(|e| fail(format!("standard output: {}", admin::os_words(&e))))?;
    Ok(0)
}

/// The root key from `--key` or `--key-file` (exactly one).
fn key_of(k: KeyArgs) -> Res<Key> {
    match (k.key, k.key_file) {
        (Some(hex), None) => {
            let hex = Zeroizing::new(hex);
            admin::key_from_hex(&hex).map_err(|m| usage(format!("--key: {m}")))
        }
        (None, Some(p)) if p.as_os_str() == "-" => admin::read_key(std::io::stdin().lock())
            .map_err(|m| fail(format!("key from standard input: {m}"))),
        (None, Some(p)) => {
            let f = File::open(&p).map_err(|e| io_fail(&p, &e))?;
            admin::read_key(f).map_err(|m| fail(format!("{}: {m}", p.display())))
        }
        _ => Err(usage("a key is needed: --key HEX or --key-file FILE|-")),
    }
}

/// An open target with its lock: an exclusive `flock` on a file, an
/// exclusive open (`O_EXCL`) of a block device. Held until dropped.
struct Locked {
    file: File,
    blockdev: bool,
}

/// Opens `p` for reading and writing with an exclusive lock. `create`
/// makes a missing regular file.
fn lock(p: &Path, create: bool) -> Res<Locked> {
    let blockdev = std::fs::metadata(p)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if blockdev {
        // Block devices: O_EXCL claims the device, as mount and
        // device-mapper do; EBUSY while either uses it.
        o.custom_flags(libc::O_EXCL);
    } else if create {
        o.create(true);
    }
    let file = o.open(p).map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) => fail(format!(
            "{}: in use (mounted, mapped by device-mapper, or opened by another mlsdisk)",
            p.display()
        )),
        _ => io_fail(p, &e),
    })?;
    if !blockdev {
        if !file.metadata().map_err(|e| io_fail(p, &e))?.is_file() {
            return Err(fail(format!(
                "{}: not a regular file or block device",
                p.display()
            )));
        }
        if let Err(e) = try_flock(&file) {
            return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                fail(format!(
                    "{}: in use by another process (locked); try again when it is done",
                    p.display()
                ))
            } else {
                io_fail(p, &e)
            });
        }
    }
    Ok(Locked { file, blockdev })
}

/// `flock(LOCK_EX | LOCK_NB)` on `f` (held until the file is closed).
fn try_flock(f: &File) -> std::io::Result<()> {
    rustix::fs::flock(f, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(std::io::Error::from)
}

/// Size in bytes of an open target.
fn size_of(l: &mut Locked, p: &Path) -> Res<u64> {
    l.file.seek(SeekFrom::End(0)).map_err(|e| io_fail(p, &e))
}

/// The first [`admin::PROBE_LEN`] bytes (fewer on a small target), in
/// whole blocks. A block device is read with `O_DIRECT`: the page cache
/// may hold blocks the kernel target has rewritten since.
fn probe(l: &Locked, p: &Path) -> Res<Vec<u8>> {
    let dev = disk_of(l, p)?;
    let n = dev.nblocks().min((admin::PROBE_LEN / BLOCK_SIZE) as u64) as usize;
    let mut b = Vec::new();
    b.try_reserve_exact(n * BLOCK_SIZE)
        .map_err(|_| fail("out of memory"))?;
    b.resize(n * BLOCK_SIZE, 0);
    dev.read(0, &mut b).map_err(|e| core_fail(p, e))?;
    Ok(b)
}

/// The core's device over an open target (`O_DIRECT` for a block device,
/// see [`probe`]).
fn disk_of(l: &Locked, p: &Path) -> Res<FileDisk> {
    FileDisk::open(p, l.blockdev).map_err(|e| core_fail(p, e))
}

/// Refuses a target without the superblock magic.
fn must_be_mlsdisk(l: &Locked, p: &Path) -> Res<()> {
    match admin::signature(&probe(l, p)?) {
        Some(Signature::MlsDisk) => Ok(()),
        Some(Signature::Other(what)) => Err(fail(format!(
            "{}: not an MlsDisk image (it holds {what})",
            p.display()
        ))),
        None => Err(fail(format!("{}: not an MlsDisk image", p.display()))),
    }
}

fn crypto() -> CryptoRef {
    Arc::new(StdCrypto)
}

fn anchor_of(
    a: &AnchorArgs,
    key: &[u8],
    crypto: &CryptoRef,
    format: bool,
) -> Res<(Option<Locked>, Box<dyn RollbackAnchor>)> {
    if let Some(p) = &a.anchor {
        if format && !p.exists() {
            FileDisk::create(p, 2, false).map_err(|e| core_fail(p, e))?;
        }
        // Locked as the image is (for the OS's words on a bad path too).
        let l = lock(p, false)?;
        let dev = disk_of(&l, p)?;
        let anchor = BlockAnchor::new(dev, crypto.clone(), key)
            .map_err(|e| fail(format!("anchor {}: {}", p.display(), admin::error_words(e))))?;
        return Ok((Some(l), Box::new(anchor)));
    }
    match &a.anchor_file {
        Some(p) => Ok((None, Box::new(FileAnchor::new(p)))),
        None => Ok((None, Box::new(NoAnchor))),
    }
}

/// Opens an image in userspace: locks it, then reads the key (so a
/// second user fails before it is asked for one), then opens the disk.
fn open_image(p: &Path, k: KeyArgs, a: &AnchorArgs) -> Res<(Locks, MlsDisk<FileDisk>)> {
    let l = lock(p, false)?;
    let key = key_of(k)?;
    must_be_mlsdisk(&l, p)?;
    let c = crypto();
    let (al, anchor) = anchor_of(a, &key, &c, false)?;
    let mut dev = disk_of(&l, p)?;
    // Scattered reads (the cleaner's, and reads of data random writes
    // spread) on threads that persist, not started per read.
    dev.set_readers(Arc::new(
        PoolParallel::new(FILE_READERS).map_err(|e| core_fail(p, e))?,
    ));
    let d =
        MlsDisk::open(dev, c, &key, DiskConfig::default(), anchor).map_err(|e| core_fail(p, e))?;
    Ok(((l, al), d))
}

/// The locks of an image and its anchor device.
type Locks = (Locked, Option<Locked>);

fn mib(blocks: u64) -> u64 {
    blocks / 256
}

fn format(a: FormatArgs) -> Res<u8> {
    let p = a.target.clone();
    let existed = p.exists();
    if !existed && a.size_mib.is_none() {
        return Err(usage(format!(
            "{}: no such file; --size-mib N makes a new image",
            p.display()
        )));
    }
    let l = lock(&p, a.size_mib.is_some())?;
    let r = format_locked(a, l, existed);
    if r.is_err() && !existed {
        // Leave no half-made image behind.
        let _ = std::fs::remove_file(&p);
    }
    r
}

fn format_locked(a: FormatArgs, mut l: Locked, existed: bool) -> Res<u8> {
    let p = &a.target;
    let key = key_of(a.key)?;
    if l.blockdev && a.size_mib.is_some() {
        return Err(usage(format!(
            "{}: --size-mib is for image files; a block device is formatted whole",
            p.display()
        )));
    }
    if existed {
        match admin::signature(&probe(&l, p)?) {
            Some(Signature::MlsDisk) if !a.force => {
                return Err(fail(format!(
                    "{}: holds an MlsDisk; formatting destroys it (--force to do so anyway)",
                    p.display()
                )))
            }
            Some(Signature::Other(what)) if !a.force => {
                return Err(fail(format!(
                    "{}: holds {what}; formatting destroys it (--force to do so anyway)",
                    p.display()
                )))
            }
            _ => {}
        }
    }
    if !a.batch && std::io::stdin().is_terminal() {
        eprint!(
            "WARNING: this destroys all data on {}.\nType YES to continue: ",
            p.display()
        );
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .take(64)
            .read_line_into(&mut line)
            .map_err(|e| fail(format!("standard input: {}", admin::os_words(&e))))?;
        if line.trim_end() != "YES" {
            return Err(fail("not formatted (the answer was not YES)"));
        }
    }
    if let Some(m) = a.size_mib {
        // Checked by the parser: m << 20 fits.
        let bytes = m
            .checked_mul(1 << 20)
            .ok_or_else(|| usage("--size-mib too large"))?;
        // Zero the old content (a new file is sparse).
        l.file.set_len(0).map_err(|e| io_fail(p, &e))?;
        l.file.set_len(bytes).map_err(|e| io_fail(p, &e))?;
    }
    let total = size_of(&mut l, p)? / BLOCK_SIZE as u64;
    let mut cfg = DiskConfig::default();
    if let Some(s) = a.seg_blocks {
        cfg.layout.seg_blocks = s;
    }
    if let Some(o) = a.op {
        cfg.layout.op_percent = o;
    }
    let c = crypto();
    let (_al, anchor) = anchor_of(&a.anchor, &key, &c, true)?;
    let dev = disk_of(&l, p)?;
    let d = MlsDisk::create(dev, c, &key, cfg, anchor).map_err(|e| {
        fail(format!(
            "{}: cannot format ({} blocks): {}",
            p.display(),
            total,
            admin::error_words(e)
        ))
    })?;
    let g = *d.geometry();
    d.close().map_err(|e| core_fail(p, e))?;
    println!(
        "formatted {}: {} blocks of 4 KiB, capacity {} blocks ({} MiB, {} sectors)",
        p.display(),
        g.total_blocks,
        g.capacity,
        mib(g.capacity),
        g.capacity.saturating_mul(8)
    );
    Ok(0)
}

/// The geometry in the superblock, read without opening the disk.
fn read_geometry(p: &Path, l: &Locked, key: &[u8]) -> Res<Geometry> {
    must_be_mlsdisk(l, p)?;
    let dev = disk_of(l, p)?;
    let n = dev.nblocks();
    let (_, payload) = AuthBlob::open(&dev, 0, crypto(), key).map_err(|e| core_fail(p, e))?;
    let sp = SuperPayload::parse(&payload, n).map_err(|e| core_fail(p, e))?;
    Ok(sp.geo)
}

/// Opens a target read-only without a lock (a mapped device can be sized).
fn open_ro(p: &Path) -> Res<Locked> {
    let file = File::open(p).map_err(|e| io_fail(p, &e))?;
    let m = file.metadata().map_err(|e| io_fail(p, &e))?;
    Ok(Locked {
        blockdev: m.file_type().is_block_device(),
        file,
    })
}

fn size(a: SizeArgs) -> Res<u8> {
    let key = key_of(a.key)?;
    let l = open_ro(&a.target)?;
    let g = read_geometry(&a.target, &l, &key)?;
    println!("{}", g.capacity.saturating_mul(8));
    Ok(0)
}

/// Runs `dmsetup ARGS` with `stdin` on its standard input; its standard
/// output on success.
fn dmsetup(args: &[&str], stdin: Option<&[u8]>) -> Res<String> {
    let mut child = Command::new("dmsetup")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                fail("dmsetup not found (install dmsetup, from LVM2)")
            } else {
                fail(format!("dmsetup: {}", admin::os_words(&e)))
            }
        })?;
    if let (Some(data), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(data)
            .map_err(|e| fail(format!("dmsetup: {}", admin::os_words(&e))))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("dmsetup: {}", admin::os_words(&e))))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(fail(format!(
            "dmsetup {} failed: {}",
            args.first().unwrap_or(&""),
            err.trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn valid_name(n: &str) -> Res<()> {
    if n.is_empty()
        || n.len() > 127
        || n.contains('/')
        || n.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(usage(format!(
            "'{n}' is not a device-mapper name (no '/', no spaces, at most 127 characters)"
        )));
    }
    Ok(())
}

fn open_dm(a: OpenArgs) -> Res<u8> {
    valid_name(&a.name)?;
    let p = &a.device;
    let keyref = match &a.key_desc {
        Some(d) => Some(admin::keyring_ref(d, a.key_size).map_err(usage)?),
        None => None,
    };
    let key = if keyref.is_none() {
        Some(key_of(a.key)?)
    } else {
        None
    };
    if a.sectors.is_some_and(|s| s % 8 != 0) {
        return Err(usage("--sectors must be a multiple of 8 (4 KiB blocks)"));
    }
    let sectors = {
        let mut l = lock(p, false)?;
        if !l.blockdev {
            return Err(fail(format!(
                "{}: not a block device (attach an image file with losetup first)",
                p.display()
            )));
        }
        must_be_mlsdisk(&l, p)?;
        match (&key, a.sectors) {
            (_, Some(s)) => s,
            (Some(k), None) => read_geometry(p, &l, k)?.capacity.saturating_mul(8),
            (None, None) => {
                let total = size_of(&mut l, p)? / BLOCK_SIZE as u64;
                let g = DiskConfig::default()
                    .geometry(total)
                    .map_err(|e| core_fail(p, e))?;
                g.capacity.saturating_mul(8)
            }
        }
        // The lock goes here: the kernel claims the device itself.
    };
    let head = format!("0 {sectors} mlsdisk {} ", p.display());
    let tail = match &a.anchor {
        Some(anc) => format!(" 1 anchor=dev:{}\n", anc.display()),
        None => "\n".to_string(),
    };
    // Sized up front: the string holding the key never reallocates (which
    // would leave an unwiped copy behind).
    let mut table = Zeroizing::new(String::new());
    table
        .try_reserve_exact(head.len() + 64 + tail.len() + 256)
        .map_err(|_| fail("out of memory"))?;
    table.push_str(&head);
    match (&keyref, &key) {
        (Some(r), _) => table.push_str(r),
        (None, Some(k)) => {
            for b in k.iter() {
                // Straight into the reserved string, no temporary.
                std::fmt::Write::write_fmt(&mut *table, format_args!("{b:02x}"))
                    .map_err(|_| fail("cannot format the table"))?;
            }
        }
        (None, None) => return Err(usage("a key is needed")),
    }
    table.push_str(&tail);
    // The table (and so the key) goes through a pipe, never the command line.
    dmsetup(&["create", &a.name], Some(table.as_bytes())).map_err(|f| {
        fail(format!(
            "{}\n(the kernel's reason: dmesg | grep mlsdisk)",
            f.msg
        ))
    })?;
    println!(
        "/dev/mapper/{}: {} sectors ({} MiB) on {}",
        a.name,
        sectors,
        sectors / 2048,
        p.display()
    );
    Ok(0)
}

fn close_dm(a: CloseArgs) -> Res<u8> {
    valid_name(&a.name)?;
    let t = dmsetup(&["table", &a.name], None)?;
    if t.split_whitespace().nth(2) != Some("mlsdisk") {
        return Err(fail(format!("{}: not an mlsdisk mapping", a.name)));
    }
    dmsetup(&["remove", &a.name], None)?;
    println!("closed {}", a.name);
    Ok(0)
}

fn status(a: StatusArgs) -> Res<u8> {
    valid_name(&a.name)?;
    let out = dmsetup(&["status", &a.name], None)?;
    let s = admin::parse_status(&out).map_err(|m| fail(format!("{}: {m}", a.name)))?;
    if a.json {
        println!("{}", s.to_json(&a.name));
        return Ok(0);
    }
    println!("{:<12} {}", "name", a.name);
    println!("{:<12} {}", "health", s.health);
    println!(
        "{:<12} {} sectors ({} MiB) from sector {}",
        "size",
        s.sectors,
        s.sectors / 2048,
        s.start
    );
    for (k, v) in &s.fields {
        match v {
            admin::Value::Int(n) => println!("{k:<12} {n}"),
            admin::Value::Text(t) => println!("{k:<12} {t}"),
        }
    }
    for n in &s.notes {
        println!("{:<12} {n}", "note");
    }
    Ok(0)
}

fn info(a: ImageArgs) -> Res<u8> {
    let p = &a.target;
    let (_l, mut d) = open_image(p, a.key, &a.anchor)?;
    let g = *d.geometry();
    let st = d.stats();
    let uuid: String = d.uuid().iter().map(|b| format!("{b:02x}")).collect();
    println!("{:<14} {}", "image", p.display());
    println!("{:<14} {uuid}", "uuid");
    println!(
        "{:<14} {} blocks of 4 KiB ({} MiB)",
        "device",
        g.total_blocks,
        mib(g.total_blocks)
    );
    println!(
        "{:<14} {} blocks ({} MiB, {} sectors of 512 bytes)",
        "capacity",
        g.capacity,
        mib(g.capacity),
        g.capacity.saturating_mul(8)
    );
    println!(
        "{:<14} blocks {}..{}",
        "journal",
        g.journal_start,
        g.journal_start.saturating_add(g.journal_len)
    );
    println!(
        "{:<14} blocks {}..{}",
        "index chunks",
        g.chunk_start,
        g.chunk_start.saturating_add(g.chunk_len)
    );
    println!(
        "{:<14} from block {}: {} segments of {} blocks",
        "data log", g.data_start, g.nseg, g.seg_blocks
    );
    println!("{:<14} {}%", "reserve", g.op_percent);
    println!("{:<14} {}", "sync counter", st.sync_counter);
    println!("{:<14} {} blocks", "mapped", st.mapped_blocks);
    println!("{:<14} {} blocks", "free", st.free_blocks);
    println!(
        "{:<14} {}{}",
        "anchor",
        st.anchor,
        if st.rollback_protected {
            ""
        } else {
            " (unprotected against whole-image rollback)"
        }
    );
    Ok(0)
}

fn check(a: CheckArgs) -> Res<u8> {
    // fsck-style: could not check -> 8.
    let op = |f: Fail| Fail {
        code: if f.code == 2 { 2 } else { 8 },
        msg: f.msg,
    };
    let p = &a.image.target;
    let (_l, mut d) = open_image(p, a.image.key, &a.image.anchor).map_err(op)?;
    let cap = d.nblocks();
    let mut buf = Vec::new();
    buf.try_reserve_exact(CHUNK_BLOCKS as usize * BLOCK_SIZE)
        .map_err(|_| op(fail("out of memory")))?;
    buf.resize(CHUNK_BLOCKS as usize * BLOCK_SIZE, 0);
    let progress = !a.json && std::io::stderr().is_terminal();
    let (mut bad, mut lba) = (0u64, 0u64);
    let mut first_bad = Vec::new();
    while lba < cap {
        let n = CHUNK_BLOCKS.min(cap - lba);
        let len = n as usize * BLOCK_SIZE;
        let chunk = buf.get_mut(..len).ok_or_else(|| op(fail("buffer")))?;
        if d.read(lba, chunk).is_err() {
            // Narrow down block by block.
            for l in lba..lba + n {
                let one = buf
                    .get_mut(..BLOCK_SIZE)
                    .ok_or_else(|| op(fail("buffer")))?;
                if let Err(e) = d.read(l, one) {
                    bad += 1;
                    if first_bad.len() < 20 {
                        first_bad.push(l);
                        if !a.json {
                            eprintln!("block {l}: {}", admin::error_words(e));
                        }
                    }
                    if d.failure().is_some() {
                        return Err(op(core_fail(p, e)));
                    }
                }
            }
        }
        lba += n;
        if progress && (lba % (64 * CHUNK_BLOCKS) == 0 || lba == cap) {
            eprint!("\rchecked {lba}/{cap} blocks ({}%)", lba * 100 / cap.max(1));
        }
    }
    if progress {
        eprintln!();
    }
    let st = d.stats();
    if a.json {
        let j = serde_json::json!({
            "image": p.display().to_string(),
            "blocks": cap,
            "mapped": st.mapped_blocks,
            "unmapped": cap.saturating_sub(st.mapped_blocks),
            "failed": bad,
            "first_failed": first_bad,
            "sync_counter": st.sync_counter,
            "clean": bad == 0,
        });
        println!("{j}");
    } else {
        println!(
            "{}: checked {cap} blocks: {} mapped, {} unmapped, {bad} failed authentication",
            p.display(),
            st.mapped_blocks,
            cap.saturating_sub(st.mapped_blocks)
        );
    }
    Ok(if bad > 0 { 4 } else { 0 })
}

/// Fails unless blocks `lba .. lba + n` are inside a disk of `cap` blocks.
fn in_range(p: &Path, lba: u64, n: u64, cap: u64) -> Res<()> {
    match lba.checked_add(n) {
        Some(end) if end <= cap => Ok(()),
        _ => Err(fail(format!(
            "{}: blocks {lba}..{} are beyond the capacity ({cap} blocks)",
            p.display(),
            lba as u128 + n as u128
        ))),
    }
}

fn write(a: WriteArgs) -> Res<u8> {
    let mut f = File::open(&a.file).map_err(|e| io_fail(&a.file, &e))?;
    let len = f.metadata().map_err(|e| io_fail(&a.file, &e))?.len();
    if len == 0 {
        return Err(fail(format!(
            "{}: empty file, nothing to write",
            a.file.display()
        )));
    }
    let blocks = len.div_ceil(BLOCK_SIZE as u64);
    let p = &a.target;
    let (_l, mut d) = open_image(p, a.key, &a.anchor)?;
    in_range(p, a.lba, blocks, d.nblocks())?;
    let mut buf = Vec::new();
    buf.try_reserve_exact(CHUNK_BLOCKS as usize * BLOCK_SIZE)
        .map_err(|_| fail("out of memory"))?;
    let mut lba = a.lba;
    loop {
        buf.clear();
        (&mut f)
            .take(CHUNK_BLOCKS * BLOCK_SIZE as u64)
            .read_to_end(&mut buf)
            .map_err(|e| io_fail(&a.file, &e))?;
        if buf.is_empty() {
            break;
        }
        let n = buf.len().div_ceil(BLOCK_SIZE);
        buf.resize(n * BLOCK_SIZE, 0);
        if lba.checked_add(n as u64).is_none_or(|e| e > d.nblocks()) {
            return Err(fail(format!(
                "{}: grew while being written",
                a.file.display()
            )));
        }
        d.write(lba, &buf).map_err(|e| core_fail(p, e))?;
        lba += n as u64;
    }
    d.close().map_err(|e| core_fail(p, e))?;
    Ok(0)
}

fn read(a: ReadArgs) -> Res<u8> {
    let p = &a.target;
    let (_l, mut d) = open_image(p, a.key, &a.anchor)?;
    in_range(p, a.lba, a.count, d.nblocks())?;
    let mut out = File::create(&a.outfile).map_err(|e| io_fail(&a.outfile, &e))?;
    let mut buf = Vec::new();
    buf.try_reserve_exact(CHUNK_BLOCKS as usize * BLOCK_SIZE)
        .map_err(|_| fail("out of memory"))?;
    buf.resize(CHUNK_BLOCKS as usize * BLOCK_SIZE, 0);
    let (mut lba, end) = (a.lba, a.lba + a.count);
    while lba < end {
        let n = CHUNK_BLOCKS.min(end - lba);
        let chunk = buf
            .get_mut(..n as usize * BLOCK_SIZE)
            .ok_or_else(|| fail("buffer"))?;
        d.read(lba, chunk).map_err(|e| core_fail(p, e))?;
        out.write_all(chunk).map_err(|e| io_fail(&a.outfile, &e))?;
        lba += n;
    }
    out.sync_all().map_err(|e| io_fail(&a.outfile, &e))?;
    Ok(0)
}

/// `mlsdisk serve`: the disk as /dev/ublkbN (see `mlsdisk_tools::serve`),
/// or `--stop N`. The image and anchor stay locked while it serves.
fn serve_cmd(a: ServeArgs) -> Res<u8> {
    if let Some(id) = a.stop {
        let done = serve::stop(id, std::time::Duration::from_secs(120)).map_err(fail)?;
        println!("{done}");
        return Ok(0);
    }
    let p = a
        .target
        .as_deref()
        .ok_or_else(|| usage("serve needs a block device or image file"))?;
    serve::buffer_bytes(a.queues, a.depth).map_err(usage)?;
    let (_locks, mut d) = open_image(p, a.key, &a.anchor)?;
    if a.threads > 1 {
        d.set_parallel(Arc::new(
            PoolParallel::new(usize::from(a.threads)).map_err(|e| core_fail(p, e))?,
        ));
    }
    let opts = serve::Options {
        queues: a.queues,
        depth: a.depth,
        ready_file: a.ready_file,
    };
    serve::serve(d, p, &opts).map_err(fail)?;
    Ok(0)
}

/// `read_line` on a bounded reader.
trait ReadLineInto {
    fn read_line_into(&mut self, s: &mut String) -> std::io::Result<usize>;
}

impl<R: Read> ReadLineInto for std::io::Take<R> {
    fn read_line_into(&mut self, s: &mut String) -> std::io::Result<usize> {
        let mut b = [0u8; 1];
        let mut n = 0;
        while self.read(&mut b)? == 1 {
            n += 1;
            if b[0] == b'\n' {
                break;
            }
            s.push(char::from(b[0]));
        }
        Ok(n)
    }
}
