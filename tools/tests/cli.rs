//! The `mlsdisk` command as a user runs it: every bad input of issue 11
//! with its exit status and message, key files, the lock between two
//! processes, and `format`'s refusal to overwrite without `--force`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "000102030405060708090a0b0c0d0e0f";
const OTHER_KEY: &str = "ffeeddccbbaa99887766554433221100";

/// A fresh directory per test, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("mlsdisk-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn p(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cmd(dir: &Dir) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mlsdisk"));
    c.current_dir(&dir.0).stdin(Stdio::null());
    c
}

fn run(dir: &Dir, args: &[&str]) -> Output {
    cmd(dir).args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit status and that stderr contains `msg`.
#[track_caller]
fn expect(o: &Output, code: i32, msg: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "exit status; stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    assert!(
        stderr(o).contains(msg),
        "stderr lacks '{msg}': {}",
        stderr(o)
    );
}

/// Formats a 64 MiB image `disk.img`; returns its capacity in blocks.
fn format(dir: &Dir) -> u64 {
    let o = run(
        dir,
        &["format", "disk.img", "--size-mib", "64", "--key", KEY],
    );
    expect(&o, 0, "");
    let out = stdout(&o);
    let cap = out
        .split("capacity ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no capacity in: {out}"));
    assert!(cap > 0 && cap < 64 * 256, "{out}");
    cap
}

#[test]
fn help_version_and_usage_errors() {
    let d = Dir::new("help");
    let o = run(&d, &["--help"]);
    expect(&o, 0, "");
    assert!(stdout(&o).contains("Usage: mlsdisk <COMMAND>"));
    assert!(stdout(&o).contains("check: 0 clean, 4 blocks failed authentication"));
    let o = run(&d, &["format", "--help"]);
    expect(&o, 0, "");
    assert!(stdout(&o).contains("--key-file <FILE|->"));
    assert!(stdout(&o).contains("--force"));
    let o = run(&d, &["--version"]);
    expect(&o, 0, "");
    assert_eq!(
        stdout(&o).trim(),
        format!("mlsdisk {}", env!("CARGO_PKG_VERSION"))
    );
    // No command: the help, as a usage error.
    expect(&run(&d, &[]), 2, "Usage: mlsdisk <COMMAND>");
    // Unknown arguments and commands: exit 2 with a hint.
    let o = run(&d, &["format", "x.img", "--sizemib", "999", "--key", KEY]);
    expect(&o, 2, "unexpected argument '--sizemib' found");
    assert!(stderr(&o).contains("a similar argument exists: '--size-mib'"));
    expect(
        &run(&d, &["info", "x.img", "--force", "--key", KEY]),
        2,
        "unexpected argument '--force'",
    );
    expect(
        &run(&d, &["frobnicate"]),
        2,
        "unrecognized subcommand 'frobnicate'",
    );
    assert!(!d.p("x.img").exists());
}

#[test]
fn numbers_are_range_checked() {
    let d = Dir::new("ranges");
    // 2^56 + 1024 MiB: wrapped to 1024 MiB before.
    let o = run(
        &d,
        &[
            "format",
            "big.img",
            "--size-mib",
            "72057594037928192",
            "--key",
            KEY,
        ],
    );
    expect(&o, 2, "72057594037928192 is not in 1..=17592186044415");
    assert!(!d.p("big.img").exists());
    expect(
        &run(&d, &["format", "big.img", "--size-mib", "0", "--key", KEY]),
        2,
        "0 is not in 1..=",
    );
    expect(
        &run(&d, &["format", "big.img", "--size-mib", "-5", "--key", KEY]),
        2,
        "unexpected argument '-5'",
    );
    expect(
        &run(
            &d,
            &[
                "format",
                "big.img",
                "--size-mib",
                "64",
                "--op",
                "90",
                "--key",
                KEY,
            ],
        ),
        2,
        "90 is not in 1..=50",
    );
    expect(
        &run(
            &d,
            &[
                "format",
                "big.img",
                "--size-mib",
                "64",
                "--seg-blocks",
                "2",
                "--key",
                KEY,
            ],
        ),
        2,
        "2 is not in 4..=65536",
    );
    // A format that fails leaves no new file behind.
    expect(
        &run(&d, &["format", "nokey.img", "--size-mib", "64"]),
        2,
        "a key is needed",
    );
    assert!(!d.p("nokey.img").exists());
    // A new file needs a size.
    expect(
        &run(&d, &["format", "new.img", "--key", KEY]),
        2,
        "new.img: no such file; --size-mib N makes a new image",
    );
    let cap = format(&d);
    // A huge COUNT is refused before anything is allocated or written.
    let o = run(
        &d,
        &[
            "read",
            "disk.img",
            "0",
            "99999999999999",
            "out",
            "--key",
            KEY,
        ],
    );
    expect(
        &o,
        1,
        &format!("disk.img: blocks 0..99999999999999 are beyond the capacity ({cap} blocks)"),
    );
    assert!(!d.p("out").exists());
    let o = run(
        &d,
        &[
            "read",
            "disk.img",
            "18446744073709551615",
            "2",
            "out",
            "--key",
            KEY,
        ],
    );
    expect(
        &o,
        1,
        "disk.img: blocks 18446744073709551615..18446744073709551617 are beyond",
    );
    expect(
        &run(&d, &["read", "disk.img", "0", "0", "out", "--key", KEY]),
        2,
        "0 is not in 1..",
    );
    expect(
        &run(
            &d,
            &[
                "read",
                "disk.img",
                "0",
                "18446744073709551616",
                "out",
                "--key",
                KEY,
            ],
        ),
        2,
        "invalid value '18446744073709551616'",
    );
    // A write past the end.
    std::fs::write(d.p("two"), vec![7u8; 8192]).unwrap();
    let last = (cap - 1).to_string();
    expect(
        &run(&d, &["write", "disk.img", &last, "two", "--key", KEY]),
        1,
        "are beyond the capacity",
    );
}

#[test]
fn read_write_roundtrip_and_empty_write() {
    let d = Dir::new("rw");
    format(&d);
    let data: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(d.p("in"), &data).unwrap();
    expect(
        &run(&d, &["write", "disk.img", "10", "in", "--key", KEY]),
        0,
        "",
    );
    // --key=HEX works as well as --key HEX.
    let o = run(
        &d,
        &[
            "read",
            "disk.img",
            "10",
            "4",
            "out",
            &format!("--key={KEY}"),
        ],
    );
    expect(&o, 0, "");
    let out = std::fs::read(d.p("out")).unwrap();
    assert_eq!(out.len(), 4 * 4096);
    assert_eq!(&out[..data.len()], &data[..]);
    assert!(out[data.len()..].iter().all(|&b| b == 0));
    // An empty file is refused and writes nothing.
    std::fs::write(d.p("empty"), b"").unwrap();
    expect(
        &run(&d, &["write", "disk.img", "10", "empty", "--key", KEY]),
        1,
        "mlsdisk: empty: empty file, nothing to write",
    );
    expect(
        &run(&d, &["read", "disk.img", "10", "1", "out", "--key", KEY]),
        0,
        "",
    );
    assert_eq!(std::fs::read(d.p("out")).unwrap()[..4096], data[..4096]);
    expect(
        &run(&d, &["write", "disk.img", "10", "missing", "--key", KEY]),
        1,
        "mlsdisk: missing: No such file or directory",
    );
}

#[test]
fn errors_name_the_path_in_plain_words() {
    let d = Dir::new("errors");
    expect(
        &run(&d, &["info", "nope.img", "--key", KEY]),
        1,
        "mlsdisk: nope.img: No such file or directory",
    );
    std::fs::write(d.p("zero.img"), vec![0u8; 1 << 20]).unwrap();
    let o = run(&d, &["info", "zero.img", "--key", KEY]);
    expect(&o, 1, "mlsdisk: zero.img: not an MlsDisk image");
    let o = run(&d, &["check", "zero.img", "--key", KEY]);
    expect(&o, 8, "mlsdisk: zero.img: not an MlsDisk image");
    format(&d);
    let o = run(&d, &["info", "disk.img", "--key", OTHER_KEY]);
    expect(&o, 1, "mlsdisk: disk.img: wrong key");
    // No Rust debug names anywhere.
    assert!(!stderr(&o).contains("WrongKey"), "{}", stderr(&o));
    expect(
        &run(&d, &["check", "disk.img", "--key", OTHER_KEY]),
        8,
        "disk.img: wrong key",
    );
    expect(
        &run(&d, &["info", "disk.img", "--key", "0011"]),
        2,
        "--key: a key is 32 or 64 hex digits",
    );
    expect(
        &run(&d, &["info", "disk.img", "--key", &"zz".repeat(16)]),
        2,
        "hex digits 0-9, a-f only",
    );
    expect(
        &run(&d, &["info", "disk.img"]),
        2,
        "a key is needed: --key HEX or --key-file FILE|-",
    );
    expect(
        &run(&d, &["info", "disk.img", "--key", KEY, "--key-file", "k"]),
        2,
        "cannot be used with",
    );
    // info prints human fields, not Debug output.
    let o = run(&d, &["info", "disk.img", "--key", KEY]);
    expect(&o, 0, "");
    let out = stdout(&o);
    for f in [
        "uuid",
        "capacity",
        "sectors of 512 bytes",
        "sync counter",
        "anchor         none",
    ] {
        assert!(out.contains(f), "info lacks '{f}': {out}");
    }
    assert!(!out.contains("Geometry") && !out.contains('{'), "{out}");
    // open wants a block device.
    let o = run(&d, &["open", "disk.img", "m", "--key", KEY]);
    expect(
        &o,
        1,
        "disk.img: not a block device (attach an image file with losetup first)",
    );
    expect(
        &run(&d, &["open", "disk.img", "m", "--key-desc", "trusted:x"]),
        2,
        "the key type is logon or user",
    );
    expect(
        &run(&d, &["open", "disk.img", "a/b", "--key", KEY]),
        2,
        "'a/b' is not a device-mapper name",
    );
}

#[test]
fn key_files_raw_hex_and_stdin() {
    let d = Dir::new("keys");
    format(&d);
    std::fs::write(d.p("hex"), format!("{KEY}\n")).unwrap();
    let raw: Vec<u8> = (0u8..16).collect();
    std::fs::write(d.p("raw"), &raw).unwrap();
    let s = run(&d, &["size", "disk.img", "--key-file", "hex"]);
    expect(&s, 0, "");
    let sectors: u64 = stdout(&s).trim().parse().unwrap();
    assert_eq!(sectors % 8, 0);
    let o = run(&d, &["size", "disk.img", "--key-file", "raw"]);
    expect(&o, 0, "");
    assert_eq!(stdout(&o), stdout(&s));
    let mut c = cmd(&d)
        .args(["size", "disk.img", "--key-file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(&raw).unwrap();
    let o = c.wait_with_output().unwrap();
    expect(&o, 0, "");
    assert_eq!(stdout(&o), stdout(&s));
    // The size is the capacity `info` shows, in sectors.
    let info = stdout(&run(&d, &["info", "disk.img", "--key-file", "hex"]));
    assert!(
        info.contains(&format!(", {sectors} sectors of 512 bytes")),
        "{info}"
    );
    std::fs::write(d.p("short"), [1u8; 17]).unwrap();
    expect(
        &run(&d, &["size", "disk.img", "--key-file", "short"]),
        1,
        "mlsdisk: short: a key file holds 16 or 32 raw bytes or 32 or 64 hex digits, not 17 bytes",
    );
    expect(
        &run(&d, &["size", "disk.img", "--key-file", "none"]),
        1,
        "mlsdisk: none: No such file or directory",
    );
    std::fs::write(d.p("wrong"), [9u8; 32]).unwrap();
    expect(
        &run(&d, &["size", "disk.img", "--key-file", "wrong"]),
        1,
        "disk.img: wrong key",
    );
}

/// Writes the ext4 magic at byte 1080 of `p` (size `len`).
fn fake_ext4(p: &Path, len: usize) {
    let mut b = vec![0u8; len];
    b[1080] = 0x53;
    b[1081] = 0xef;
    std::fs::write(p, b).unwrap();
}

#[test]
fn format_refuses_signatures_without_force() {
    let d = Dir::new("force");
    format(&d);
    let before = std::fs::read(d.p("disk.img")).unwrap();
    let o = run(
        &d,
        &["format", "disk.img", "--size-mib", "64", "--key", OTHER_KEY],
    );
    expect(
        &o,
        1,
        "mlsdisk: disk.img: holds an MlsDisk; formatting destroys it (--force to do so anyway)",
    );
    assert!(
        std::fs::read(d.p("disk.img")).unwrap() == before,
        "a refused format changed the image"
    );
    // Still opens with the first key.
    expect(&run(&d, &["info", "disk.img", "--key", KEY]), 0, "");
    fake_ext4(&d.p("ext4.img"), 64 << 20);
    let o = run(&d, &["format", "ext4.img", "--key", KEY]);
    expect(
        &o,
        1,
        "mlsdisk: ext4.img: holds an ext2/ext3/ext4 file system; formatting destroys it",
    );
    let mut luks = vec![0u8; 64 << 20];
    luks[..6].copy_from_slice(b"LUKS\xba\xbe");
    std::fs::write(d.p("luks.img"), luks).unwrap();
    expect(
        &run(&d, &["format", "luks.img", "--key", KEY]),
        1,
        "holds a LUKS header",
    );
    // --force formats; an existing file keeps its size without --size-mib.
    let o = run(&d, &["format", "ext4.img", "--force", "--key", KEY]);
    expect(&o, 0, "");
    assert!(
        stdout(&o).contains("formatted ext4.img: 16384 blocks"),
        "{}",
        stdout(&o)
    );
    let o = run(
        &d,
        &[
            "format",
            "disk.img",
            "--size-mib",
            "32",
            "--force",
            "--key",
            OTHER_KEY,
        ],
    );
    expect(&o, 0, "");
    expect(
        &run(&d, &["info", "disk.img", "--key", KEY]),
        1,
        "disk.img: wrong key",
    );
    expect(&run(&d, &["info", "disk.img", "--key", OTHER_KEY]), 0, "");
    // A blank existing file needs no --force.
    std::fs::write(d.p("blank.img"), vec![0u8; 32 << 20]).unwrap();
    expect(&run(&d, &["format", "blank.img", "--key", KEY]), 0, "");
}

#[test]
fn check_exit_codes() {
    let d = Dir::new("check");
    format(&d);
    std::fs::write(d.p("in"), vec![0x5au8; 8 * 4096]).unwrap();
    expect(
        &run(&d, &["write", "disk.img", "100", "in", "--key", KEY]),
        0,
        "",
    );
    let o = run(&d, &["check", "disk.img", "--key", KEY, "--json"]);
    expect(&o, 0, "");
    let j: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(j["clean"], true);
    assert_eq!(j["mapped"], 8);
    assert_eq!(j["failed"], 0);
    // Damage the data region: every data block fails authentication.
    let info = stdout(&run(&d, &["info", "disk.img", "--key", KEY]));
    let start: u64 = info
        .split("from block ")
        .nth(1)
        .and_then(|s| s.split(':').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no data log start in {info}"));
    let mut img = std::fs::read(d.p("disk.img")).unwrap();
    let from = start as usize * 4096;
    for b in &mut img[from..] {
        *b ^= 0xff;
    }
    std::fs::write(d.p("disk.img"), &img).unwrap();
    let o = run(&d, &["check", "disk.img", "--key", KEY, "--json"]);
    expect(&o, 4, "");
    let j: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(j["clean"], false);
    assert_eq!(j["failed"], 8);
    assert_eq!(j["first_failed"][0], 100);
    let o = run(&d, &["check", "disk.img", "--key", KEY]);
    expect(&o, 4, "block 100: authentication failed");
    assert!(stdout(&o).contains("8 failed authentication"));
}

#[test]
fn two_writers_one_fails_cleanly() {
    let d = Dir::new("lock");
    format(&d);
    std::fs::write(d.p("a"), vec![0xaau8; 4096]).unwrap();
    std::fs::write(d.p("b"), vec![0xbbu8; 4096]).unwrap();
    // The first writer locks the image, then waits for its key on stdin.
    let mut first = cmd(&d)
        .args(["write", "disk.img", "1", "a", "--key-file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the kernel lists the first writer's flock (/proc/locks:
    // "N: FLOCK  ADVISORY  WRITE <pid> ..."), without taking the lock
    // here (which could make the first writer fail instead).
    let pid = first.id().to_string();
    let t0 = Instant::now();
    loop {
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        let held = locks.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.get(1) == Some(&"FLOCK")
                && w.get(3) == Some(&"WRITE")
                && w.get(4) == Some(&pid.as_str())
        });
        if held {
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) || first.try_wait().unwrap().is_some() {
            let _ = first.kill();
            let o = first.wait_with_output().unwrap();
            panic!(
                "the first writer never held its lock: {:?} {}",
                o.status,
                stderr(&o)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The second writer fails while the first holds the lock.
    let second = run(&d, &["write", "disk.img", "1", "b", "--key", KEY]);
    expect(
        &second,
        1,
        "mlsdisk: disk.img: in use by another process (locked); try again when it is done",
    );
    // Readers are refused too while the writer holds it.
    expect(
        &run(&d, &["read", "disk.img", "1", "1", "out", "--key", KEY]),
        1,
        "in use by another process",
    );
    first
        .stdin
        .take()
        .unwrap()
        .write_all(KEY.as_bytes())
        .unwrap();
    let o = first.wait_with_output().unwrap();
    expect(&o, 0, "");
    // The first writer's data is there; after it, the image is free again.
    expect(
        &run(&d, &["read", "disk.img", "1", "1", "out", "--key", KEY]),
        0,
        "",
    );
    let out = std::fs::read(d.p("out")).unwrap();
    assert!(out.iter().all(|&b| b == 0xaa));
}

/// Runs `mlsdisk ARGS` on a pseudo-terminal (util-linux `script`) with
/// `input` typed in.
fn run_on_tty(dir: &Dir, args: &str, input: &str) -> Output {
    let line = format!("{} {args}", env!("CARGO_BIN_EXE_mlsdisk"));
    let mut c = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .current_dir(&dir.0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("util-linux `script` is needed to run mlsdisk on a terminal");
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    c.wait_with_output().unwrap()
}

#[test]
fn format_asks_on_a_terminal() {
    let d = Dir::new("tty");
    let args = format!("format t.img --size-mib 64 --key {KEY}");
    // Anything but YES: nothing is made (script merges the streams).
    let o = run_on_tty(&d, &args, "yes\n");
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let out = stdout(&o);
    assert!(out.contains("Type YES to continue:"), "{out}");
    assert!(
        out.contains("not formatted (the answer was not YES)"),
        "{out}"
    );
    assert!(!d.p("t.img").exists());
    let o = run_on_tty(&d, &args, "YES\n");
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("formatted t.img"));
    // --batch does not ask.
    let o = run_on_tty(&d, &format!("{args} --force --batch"), "");
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(!stdout(&o).contains("Type YES"), "{}", stdout(&o));
}

#[test]
fn manual_page() {
    let d = Dir::new("man");
    let o = run(&d, &["man"]);
    expect(&o, 0, "");
    let page = stdout(&o);
    assert!(page.contains(".TH mlsdisk 8"), "{page}");
    for sub in ["format", "size", "open", "close", "status", "check"] {
        assert!(
            page.contains(&format!("mlsdisk\\-{sub}(8)")),
            "the manual page lacks {sub}"
        );
    }
    let o = run(&d, &["man", "open"]);
    expect(&o, 0, "");
    assert!(
        stdout(&o).contains(&format!(
            ".TH mlsdisk-open 8  \"mlsdisk-open {}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("key\\-desc"), "{}", stdout(&o));
    expect(&run(&d, &["man", "nope"]), 2, "no command 'nope'");
}

/// `mlsdisk serve`: what is refused before any ublk device is made (so the
/// test needs no ublk driver): usage, a wrong key, a file that is not an
/// MlsDisk, an image another process holds.
#[test]
fn serve_refusals() {
    let d = Dir::new("serve");
    format(&d);
    expect(
        &run(&d, &["serve", "disk.img", "--key", KEY, "--queues", "0"]),
        2,
        "--queues",
    );
    expect(
        &run(&d, &["serve", "disk.img", "--key", KEY, "--depth", "4096"]),
        2,
        "--depth",
    );
    // Out of range (an unknown option would fail with another message).
    for bad in ["0", "17"] {
        expect(
            &run(&d, &["serve", "disk.img", "--key", KEY, "--threads", bad]),
            2,
            &format!("'{bad}' for '--threads <N>': {bad} is not in 1..=16"),
        );
    }
    expect(
        &run(&d, &["serve", "--stop", "0", "--threads", "2"]),
        2,
        "cannot be used with",
    );
    expect(
        &run(
            &d,
            &[
                "serve", "disk.img", "--key", KEY, "--queues", "16", "--depth", "1024",
            ],
        ),
        2,
        "8192 MiB of I/O buffers: at most 1024 MiB",
    );
    expect(
        &run(&d, &["serve", "disk.img", "--stop", "0"]),
        2,
        "cannot be used with",
    );
    expect(&run(&d, &["serve", "--key", KEY]), 2, "TARGET");
    expect(
        &run(&d, &["serve", "disk.img", "--key", OTHER_KEY]),
        1,
        "disk.img: wrong key",
    );
    std::fs::write(d.p("junk.img"), vec![0x5au8; 1 << 20]).unwrap();
    expect(
        &run(&d, &["serve", "junk.img", "--key", KEY]),
        1,
        "junk.img: not an MlsDisk image",
    );
    // Another mlsdisk holds the image (a `check` reading it): refused as
    // in use, before the key is read.
    let held = std::fs::File::open(d.p("disk.img")).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    expect(
        &run(&d, &["serve", "disk.img", "--key", KEY]),
        1,
        "disk.img: in use by another process (locked)",
    );
    drop(held);
}
