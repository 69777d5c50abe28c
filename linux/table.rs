// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! The `mlsdisk` table line: parsing and validation, in plain `core` Rust.
//!
//! ```text
//! <start> <len> mlsdisk <backing device> <key> [<#opts> <opt>...]
//! ```
//!
//! device-mapper hands the constructor everything after the target name as
//! an argument vector. This file turns that vector into a [`TableLine`] or a
//! [`TableError`] that names the cause. It has no kernel dependency (no
//! `kernel` crate, no allocation), so the same file is also compiled as a
//! userspace test (`rustc --test linux/table.rs`, run by
//! `scripts/build-module.sh`).
//!
//! Keys:
//! - hex: exactly 32 or 64 hex digits (AES-128 / AES-256);
//! - keyring: dm-crypt's `:<size>:<type>:<description>` form with a
//!   `logon` or `user` key of 16 or 32 bytes ([`KeyRef`]); the constructor
//!   reads the key from the kernel keyring (`encrypted` and `trusted` keys
//!   are refused with [`TableError::KeyringNotSupported`]).
//!
//! Options (`<#opts>` counts them; the count must match exactly):
//! - `create`: format a new disk on the backing device (refused when the
//!   device already holds an mlsdisk superblock);
//! - `force_create`: as `create`, also over an existing mlsdisk;
//! - `open`: open an existing disk (the default); conflicts with `create`;
//! - `anchor=<spec>`: the trusted rollback anchor (at most
//!   [`ANCHOR_MAX`] printable bytes), one of [`AnchorKind`]: `none` (the
//!   default) or `dev:<device>` (path or `major:minor` of a small block
//!   device the guest trusts);
//! - `cache_mib=<N>`: the memory budget of the disk's caches (index blocks,
//!   bloom filters, Merkle nodes) in MiB, [`CACHE_MIB_MIN`] to
//!   [`CACHE_MIB_MAX`]; the default is the engine's (`DiskConfig`, 64 MiB).
//!   The disk's memory is this budget plus a fixed part that does not grow
//!   with the disk's size.
//!
//! The key never leaves this module in printable form: [`RawKey`] has a
//! redacting `Debug`, no `Display`, and wipes itself on drop.

use core::fmt;

/// Longest accepted `anchor=` specification, in bytes.
pub(crate) const ANCHOR_MAX: usize = 64;

/// Smallest accepted `cache_mib=`.
pub(crate) const CACHE_MIB_MIN: u32 = 4;

/// Largest accepted `cache_mib=` (16 GiB).
pub(crate) const CACHE_MIB_MAX: u32 = 16384;

/// Largest accepted key, in bytes (AES-256).
pub(crate) const KEY_MAX: usize = 32;

// The refusals and how they read: `table_error.rs` (a file of its own to
// keep this one short; the same path works for the module build and for
// `rustc --test linux/table.rs`).
#[path = "table_error.rs"]
mod error;
pub(crate) use error::{Escaped, TableError};

/// A raw AES key, wiped on drop.
///
/// The key is written where it stays: a `RawKey` is made empty
/// ([`RawKey::empty`]) in its final place (a local of the constructor, a
/// slot of a vector reserved up front) and filled there through `&mut`
/// ([`RawKey::set_hex`], [`RawKey::fill`]); nothing returns or moves a
/// filled key. A move is a copy of the bytes that leaves the old place
/// unwiped (a dead stack slot), so a filled key must not be moved: the API
/// gives no way to make one by value, and callers pass `&RawKey`.
pub(crate) struct RawKey {
    bytes: [u8; KEY_MAX],
    len: usize,
}

impl RawKey {
    /// An empty key (no bytes), to be filled in place.
    pub(crate) const fn empty() -> Self {
        Self {
            bytes: [0; KEY_MAX],
            len: 0,
        }
    }

    /// Decodes `hex` (validated by the parser) into this key, in place.
    pub(crate) fn set_hex(&mut self, hex: HexKey<'_>) {
        self.clear();
        for (slot, pair) in self.bytes.iter_mut().zip(hex.0.chunks(2)) {
            if let (Some(hi), Some(lo)) = (
                pair.first().copied().and_then(hex_digit),
                pair.get(1).copied().and_then(hex_digit),
            ) {
                *slot = hi << 4 | lo;
            }
        }
        self.len = hex.0.len() / 2;
    }

    /// The key's first `len` bytes (16 or 32) to be written in place by
    /// the caller (a keyring read); `None` for another length. The key has
    /// that length afterwards: on a failed read the caller [`clear`]s it.
    ///
    /// [`clear`]: RawKey::clear
    #[cfg_attr(test, allow(dead_code))]
    pub(crate) fn fill(&mut self, len: usize) -> Option<&mut [u8]> {
        if len != 16 && len != KEY_MAX {
            return None;
        }
        self.clear();
        self.len = len;
        self.bytes.get_mut(..len)
    }

    /// Wipes the key; it is empty afterwards.
    pub(crate) fn clear(&mut self) {
        wipe(&mut self.bytes);
        self.len = 0;
    }

    /// The key bytes (16 or 32 of them; none while empty).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }

    /// Key length in bits, for status output.
    pub(crate) fn bits(&self) -> usize {
        self.len * 8
    }
}

impl fmt::Debug for RawKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawKey({} bits, redacted)", self.bits())
    }
}

/// A hex key as the table line gives it: 32 or 64 hex digits, checked by
/// the parser, borrowed from the argument word (which the constructor
/// wipes). Decoded only by [`RawKey::set_hex`], straight into the key's
/// final place; the parser itself copies no key byte.
#[derive(Clone, Copy)]
pub(crate) struct HexKey<'a>(&'a [u8]);

impl HexKey<'_> {
    /// The key's length in bits.
    pub(crate) fn bits(&self) -> usize {
        self.0.len() * 4
    }
}

impl fmt::Debug for HexKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HexKey({} bits, redacted)", self.bits())
    }
}

/// Overwrites `buf` with zeroes in a way the optimiser may not drop.
pub(crate) fn wipe(buf: &mut [u8]) {
    for b in buf.iter_mut() {
        // SAFETY: `b` is a valid, aligned, exclusive reference to a `u8`.
        unsafe { core::ptr::write_volatile(b, 0) };
    }
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
}

impl Drop for RawKey {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Whether the disk is formatted or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `create`: format a new disk.
    Create,
    /// `open`: open an existing disk.
    Open,
}

/// The `anchor=` specification, copied out of the argument vector.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Anchor {
    spec: [u8; ANCHOR_MAX],
    len: usize,
}

impl Anchor {
    /// The specification as given (printable ASCII).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.spec.get(..self.len).unwrap_or(&[])
    }

    /// What kind of anchor the specification names (checked by `parse`).
    #[cfg_attr(mlsdisk_passthrough, allow(dead_code))]
    pub(crate) fn kind(&self) -> AnchorKind<'_> {
        anchor_kind(self.as_bytes()).unwrap_or(AnchorKind::None)
    }
}

/// The kinds of rollback anchor the module knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AnchorKind<'a> {
    /// `none`: no anchor; the status says the disk is unprotected against
    /// whole-image rollback.
    None,
    /// `dev:<device>`: the sync counter on a block device the guest
    /// trusts, given by path or `major:minor` (the device, as given).
    Dev(&'a [u8]),
}

/// Parses an `anchor=` value into its kind.
pub(crate) fn anchor_kind(spec: &[u8]) -> Result<AnchorKind<'_>, TableError<'_>> {
    match spec {
        b"none" => Ok(AnchorKind::None),
        _ => match spec.strip_prefix(b"dev:") {
            Some(dev) if !dev.is_empty() => Ok(AnchorKind::Dev(dev)),
            _ => Err(TableError::UnknownAnchor(spec)),
        },
    }
}

impl fmt::Debug for Anchor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Anchor({})", Escaped(self.as_bytes()))
    }
}

/// Longest keyring key description, in bytes.
pub(crate) const KEY_DESC_MAX: usize = 128;

/// The type of a keyring key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// `logon`: readable by the kernel only.
    Logon,
    /// `user`.
    User,
}

/// A reference to a key in the kernel keyring (`:<size>:<type>:<desc>`),
/// copied out of the argument vector. Not secret: `dmsetup table` shows it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyRef {
    /// The key size in bytes (16 or 32).
    pub(crate) size: usize,
    /// The key type.
    pub(crate) kind: KeyKind,
    desc: [u8; KEY_DESC_MAX],
    len: usize,
}

impl KeyRef {
    /// The description (printable ASCII, no spaces).
    pub(crate) fn desc(&self) -> &[u8] {
        self.desc.get(..self.len).unwrap_or(&[])
    }

    /// The type name, as in the table line.
    pub(crate) fn kind_name(&self) -> &'static str {
        match self.kind {
            KeyKind::Logon => "logon",
            KeyKind::User => "user",
        }
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            ":{}:{}:{}",
            self.size,
            self.kind_name(),
            Escaped(self.desc())
        )
    }
}

impl fmt::Debug for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyRef({self})")
    }
}

/// The key of a table line: its hex digits, or where to find it.
#[derive(Debug)]
pub(crate) enum KeySpec<'a> {
    /// A hex key (decoded by [`RawKey::set_hex`]).
    Hex(HexKey<'a>),
    /// A keyring reference, read by the constructor.
    Keyring(KeyRef),
}

/// The optional arguments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Options {
    /// `create` or `open`, if given (`None` means open); `force_create`
    /// is `create` with [`Options::force`].
    pub(crate) mode: Option<Mode>,
    /// `force_create`: format even a device that holds an mlsdisk. Never
    /// written back by [`Options::emit`] (a created disk is shown as
    /// `open`).
    pub(crate) force: bool,
    /// `anchor=<spec>`, if given.
    pub(crate) anchor: Option<Anchor>,
    /// `cache_mib=<N>`, if given.
    pub(crate) cache_mib: Option<u32>,
}

impl Options {
    /// How many option words [`Options::emit`] writes.
    pub(crate) fn count(&self) -> usize {
        usize::from(self.mode.is_some())
            + usize::from(self.anchor.is_some())
            + usize::from(self.cache_mib.is_some())
    }

    /// Writes the options back in table form (`<#opts> <opt>...`), nothing
    /// when there are none.
    pub(crate) fn emit(&self, w: &mut dyn fmt::Write) -> fmt::Result {
        if self.count() == 0 {
            return Ok(());
        }
        write!(w, " {}", self.count())?;
        match self.mode {
            Some(Mode::Create) => w.write_str(" create")?,
            Some(Mode::Open) => w.write_str(" open")?,
            None => {}
        }
        if let Some(anchor) = &self.anchor {
            write!(w, " anchor={}", Escaped(anchor.as_bytes()))?;
        }
        if let Some(mib) = self.cache_mib {
            write!(w, " cache_mib={mib}")?;
        }
        Ok(())
    }
}

/// A validated table line (everything but the backing device, which the
/// constructor opens itself).
#[derive(Debug)]
pub(crate) struct TableLine<'a> {
    /// The backing device path or `major:minor`, as given.
    pub(crate) device: &'a [u8],
    /// The key.
    pub(crate) key: KeySpec<'a>,
    /// The optional arguments.
    pub(crate) options: Options,
}

/// Index of the key in the argument vector (wiped by the constructor).
pub(crate) const KEY_ARG: usize = 1;

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Parses a cache budget in MiB: a decimal number from [`CACHE_MIB_MIN`]
/// to [`CACHE_MIB_MAX`] (the table's `cache_mib=` and the blk-mq disks'
/// `disk_cache_mib` parameter). `None` for anything else.
pub(crate) fn parse_cache_mib(s: &[u8]) -> Option<u32> {
    parse_decimal(s)
        .and_then(|v| u32::try_from(v).ok())
        .filter(|v| (CACHE_MIB_MIN..=CACHE_MIB_MAX).contains(v))
}

fn parse_decimal(s: &[u8]) -> Option<usize> {
    if s.is_empty() || s.len() > 9 {
        return None;
    }
    let mut n: usize = 0;
    for &c in s {
        let d = hex_digit(c).filter(|&d| d < 10 && c.is_ascii_digit())?;
        n = n * 10 + usize::from(d);
    }
    Some(n)
}

/// Parses the key argument.
///
/// # Errors
///
/// [`TableError::MalformedKey`], [`TableError::KeyLength`] or, for a
/// keyring reference of another type than `logon`/`user`,
/// [`TableError::KeyringNotSupported`].
pub(crate) fn parse_key(arg: &[u8]) -> Result<KeySpec<'_>, TableError<'static>> {
    if arg.first() == Some(&b':') {
        return parse_keyring(arg).map(KeySpec::Keyring);
    }
    parse_hex_key(arg).map(KeySpec::Hex)
}

/// Checks a hex key without decoding it (no copy of the key is made here).
fn parse_hex_key(arg: &[u8]) -> Result<HexKey<'_>, TableError<'static>> {
    if arg.iter().any(|&c| hex_digit(c).is_none()) {
        return Err(TableError::MalformedKey("not a hex string"));
    }
    match arg.len() {
        32 | 64 => Ok(HexKey(arg)),
        digits => Err(TableError::KeyLength { digits }),
    }
}

/// Parses the `:<size>:<type>:<description>` form.
fn parse_keyring(arg: &[u8]) -> Result<KeyRef, TableError<'static>> {
    let form = TableError::MalformedKey("keyring form is :<size>:<type>:<description>");
    let mut fields = arg.splitn(4, |&c| c == b':');
    let (Some(empty), Some(size), Some(kind), Some(desc)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(form);
    };
    if !empty.is_empty() {
        return Err(form);
    }
    let size = match parse_decimal(size) {
        Some(n @ (16 | 32)) => n,
        _ => {
            return Err(TableError::MalformedKey(
                "keyring key size must be 16 or 32 bytes",
            ))
        }
    };
    let kind = match kind {
        b"logon" => KeyKind::Logon,
        b"user" => KeyKind::User,
        b"encrypted" | b"trusted" => return Err(TableError::KeyringNotSupported),
        _ => return Err(TableError::MalformedKey("unknown keyring key type")),
    };
    if desc.is_empty() {
        return Err(TableError::MalformedKey("empty keyring key description"));
    }
    if desc.len() > KEY_DESC_MAX || !desc.iter().all(u8::is_ascii_graphic) {
        return Err(TableError::MalformedKey(
            "keyring key description must be 1 to 128 printable characters",
        ));
    }
    let mut r = KeyRef {
        size,
        kind,
        desc: [0; KEY_DESC_MAX],
        len: desc.len(),
    };
    r.desc
        .get_mut(..desc.len())
        .ok_or(form)?
        .copy_from_slice(desc);
    Ok(r)
}

fn parse_options<'a>(args: &[&'a [u8]]) -> Result<Options, TableError<'a>> {
    let Some((&count, opts)) = args.split_first() else {
        return Ok(Options::default());
    };
    let declared = parse_decimal(count).ok_or(TableError::BadOptionCount(count))?;
    if declared != opts.len() {
        return Err(TableError::OptionCountMismatch {
            declared,
            given: opts.len(),
        });
    }
    let mut options = Options::default();
    for &opt in opts {
        if let Some(spec) = opt.strip_prefix(b"anchor=") {
            if options.anchor.is_some() {
                return Err(TableError::DuplicateOption(b"anchor"));
            }
            if spec.is_empty() || spec.len() > ANCHOR_MAX || !spec.iter().all(u8::is_ascii_graphic)
            {
                return Err(TableError::BadAnchor);
            }
            anchor_kind(spec)?;
            let mut anchor = Anchor {
                spec: [0; ANCHOR_MAX],
                len: spec.len(),
            };
            for (d, &s) in anchor.spec.iter_mut().zip(spec) {
                *d = s;
            }
            options.anchor = Some(anchor);
            continue;
        }
        if let Some(n) = opt.strip_prefix(b"cache_mib=") {
            if options.cache_mib.is_some() {
                return Err(TableError::DuplicateOption(b"cache_mib"));
            }
            let mib = parse_cache_mib(n).ok_or(TableError::BadCacheSize(n))?;
            options.cache_mib = Some(mib);
            continue;
        }
        let (mode, force) = match opt {
            b"create" => (Mode::Create, false),
            b"force_create" => (Mode::Create, true),
            b"open" => (Mode::Open, false),
            _ => return Err(TableError::UnknownOption(opt)),
        };
        match options.mode {
            None => {
                options.mode = Some(mode);
                options.force = force;
            }
            Some(m) if m == mode && options.force == force => {
                return Err(TableError::DuplicateOption(opt))
            }
            Some(_) => return Err(TableError::ConflictingOptions),
        }
    }
    Ok(options)
}

/// Parses and validates the constructor's arguments (everything after the
/// target name).
///
/// # Errors
///
/// The first problem found, in argument order.
pub(crate) fn parse<'a>(args: &[&'a [u8]]) -> Result<TableLine<'a>, TableError<'a>> {
    let (Some(&device), Some(&key)) = (args.first(), args.get(KEY_ARG)) else {
        return Err(TableError::MissingArguments { given: args.len() });
    };
    let key = parse_key(key)?;
    let options = parse_options(args.get(KEY_ARG + 1..).unwrap_or(&[]))?;
    Ok(TableLine {
        device,
        key,
        options,
    })
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
