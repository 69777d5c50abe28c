//! The pieces of the `mlsdisk` command that need no device: key material
//! (hex text, key files), the signatures `format` refuses to overwrite, the
//! words for the core's errors, and the parser of the target's status line.
//! Kept here, apart from the binary, so unit tests reach them.

use std::io::Read;

use mlsdisk_core::{Error, ErrorKind};
use zeroize::Zeroizing;

/// A root key: 16 or 32 bytes, wiped when dropped.
pub type Key = Zeroizing<Vec<u8>>;

/// The longest key file read: 64 hex digits with surrounding white space
/// fit many times over; anything longer is refused without reading it all.
pub const KEY_FILE_MAX: usize = 4096;

/// Decodes `s` (hex digits, either case) into a key of 16 or 32 bytes.
pub fn key_from_hex(s: &str) -> Result<Key, String> {
    let s = s.trim();
    if s.len() != 32 && s.len() != 64 {
        return Err(format!(
            "a key is 32 or 64 hex digits (AES-128 or AES-256), not {} characters",
            s.len()
        ));
    }
    let mut out = Zeroizing::new(Vec::new());
    out.try_reserve_exact(s.len() / 2)
        .map_err(|_| "out of memory".to_string())?;
    let b = s.as_bytes();
    for pair in b.chunks_exact(2) {
        let hi = hex_val(pair.first().copied());
        let lo = hex_val(pair.get(1).copied());
        match (hi, lo) {
            (Some(h), Some(l)) => out.push((h << 4) | l),
            _ => return Err("a key is hex digits 0-9, a-f only".to_string()),
        }
    }
    Ok(out)
}

fn hex_val(c: Option<u8>) -> Option<u8> {
    match c? {
        c @ b'0'..=b'9' => Some(c - b'0'),
        c @ b'a'..=b'f' => Some(c - b'a' + 10),
        c @ b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The key in the content of a key file: 32 or 64 hex digits (white space
/// around them ignored), else exactly 16 or 32 raw bytes.
pub fn key_from_file_bytes(b: &[u8]) -> Result<Key, String> {
    let text = std::str::from_utf8(b).ok().map(str::trim);
    if let Some(t) = text {
        if (t.len() == 32 || t.len() == 64) && t.bytes().all(|c| c.is_ascii_hexdigit()) {
            return key_from_hex(t);
        }
    }
    if b.len() == 16 || b.len() == 32 {
        let mut out = Zeroizing::new(Vec::new());
        out.try_reserve_exact(b.len())
            .map_err(|_| "out of memory".to_string())?;
        out.extend_from_slice(b);
        return Ok(out);
    }
    Err(format!(
        "a key file holds 16 or 32 raw bytes or 32 or 64 hex digits, not {} bytes",
        b.len()
    ))
}

/// Reads a key file (at most [`KEY_FILE_MAX`] bytes) into a wiped buffer.
pub fn read_key<R: Read>(r: R) -> Result<Key, String> {
    let mut buf = Zeroizing::new(Vec::new());
    buf.try_reserve_exact(KEY_FILE_MAX + 1)
        .map_err(|_| "out of memory".to_string())?;
    r.take(KEY_FILE_MAX as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| os_words(&e))?;
    if buf.len() > KEY_FILE_MAX {
        return Err(format!("longer than {KEY_FILE_MAX} bytes: not a key file"));
    }
    key_from_file_bytes(&buf)
}

/// A keyring reference `TYPE:DESCRIPTION` (`--key-desc`) in the table's
/// form `:<size>:<type>:<description>`.
pub fn keyring_ref(desc: &str, size: u8) -> Result<String, String> {
    let (ty, name) = desc
        .split_once(':')
        .ok_or_else(|| format!("--key-desc wants TYPE:DESCRIPTION (logon:NAME), not '{desc}'"))?;
    if ty != "logon" && ty != "user" {
        return Err(format!(
            "--key-desc: the key type is logon or user, not '{ty}'"
        ));
    }
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("--key-desc: the description is empty or holds white space".to_string());
    }
    if size != 16 && size != 32 {
        return Err(format!("--key-size is 16 or 32, not {size}"));
    }
    Ok(format!(":{size}:{ty}:{name}"))
}

/// An I/O error in plain words ("No such file or directory"), without
/// Rust's " (os error 2)" suffix.
pub fn os_words(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s.get(..i).unwrap_or(&s).to_string(),
        None => s,
    }
}

/// A core error in plain words, with the core's message as the detail.
pub fn error_words(e: Error) -> String {
    let m = e.msg();
    match e.kind() {
        ErrorKind::Io => format!("I/O error ({m})"),
        ErrorKind::Integrity => format!("authentication failed: tampered or damaged ({m})"),
        ErrorKind::Rollback => format!("refused as a rollback ({m})"),
        ErrorKind::WrongKey => format!("wrong key ({m})"),
        ErrorKind::Corrupted => format!("damaged or not an MlsDisk image ({m})"),
        ErrorKind::InvalidArgument => format!("invalid argument ({m})"),
        ErrorKind::NoSpace => format!("no space left ({m})"),
        ErrorKind::NotFound => format!("not found ({m})"),
        ErrorKind::OutOfMemory => "out of memory".to_string(),
        ErrorKind::Unsupported => format!("not supported ({m})"),
        ErrorKind::InvalidState => format!("not possible now ({m})"),
        ErrorKind::Conflict => format!("conflicting update ({m})"),
        _ => m.to_string(),
    }
}

/// How many bytes of a device [`signature`] looks at.
pub const PROBE_LEN: usize = 72 * 1024;

/// The kind of data found at the start of a device by [`signature`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    /// An MlsDisk superblock (AuthBlob magic in block 0 or 1).
    MlsDisk,
    /// Something else that is recognisable (the name says what).
    Other(&'static str),
}

/// Finds a recognisable signature in the first bytes of a device (`b`,
/// up to [`PROBE_LEN`]): an MlsDisk superblock, LUKS, ext2/3/4, XFS,
/// btrfs, swap, LVM2, dm-integrity, squashfs, ISO 9660, a GPT or DOS
/// partition table (or FAT boot sector). `None` if nothing is recognised
/// (an all-zero device, random data).
pub fn signature(b: &[u8]) -> Option<Signature> {
    let at = |off: usize, magic: &[u8]| {
        off.checked_add(magic.len())
            .and_then(|end| b.get(off..end))
            .is_some_and(|s| s == magic)
    };
    if at(0, b"MDAB") || at(4096, b"MDAB") {
        return Some(Signature::MlsDisk);
    }
    let table: &[(usize, &[u8], &'static str)] = &[
        (0, b"LUKS\xba\xbe", "a LUKS header (dm-crypt)"),
        (
            16384,
            b"SKUL\xba\xbe",
            "a LUKS2 secondary header (dm-crypt)",
        ),
        (0, b"integrt", "a dm-integrity superblock"),
        (1080, &[0x53, 0xef], "an ext2/ext3/ext4 file system"),
        (0, b"XFSB", "an XFS file system"),
        (65536 + 64, b"_BHRfS_M", "a btrfs file system"),
        (4086, b"SWAPSPACE2", "a swap area"),
        (4086, b"SWAP-SPACE", "a swap area"),
        (512, b"LABELONE", "an LVM2 physical volume"),
        (0, b"hsqs", "a squashfs file system"),
        (32769, b"CD001", "an ISO 9660 file system"),
        (512, b"EFI PART", "a GPT partition table"),
        (
            510,
            &[0x55, 0xaa],
            "a DOS partition table or FAT boot sector",
        ),
    ];
    table
        .iter()
        .find(|(off, magic, _)| at(*off, magic))
        .map(|(_, _, name)| Signature::Other(name))
}

/// One value of the status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A non-negative integer.
    Int(u64),
    /// Anything else, as written.
    Text(String),
}

/// The `mlsdisk` target's line of `dmsetup status NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// First sector of the target.
    pub start: u64,
    /// Length of the target in 512-byte sectors.
    pub sectors: u64,
    /// The first word: `ok`, `failed`, `passthrough`, ...
    pub health: String,
    /// The `key=value` words in order.
    pub fields: Vec<(String, Value)>,
    /// Words that are not `key=value` (free text of older modules).
    pub notes: Vec<String>,
}

/// Parses the output of `dmsetup status NAME`: the first line whose target
/// type is `mlsdisk` (`<start> <len> mlsdisk <health> key=value ...`).
pub fn parse_status(out: &str) -> Result<Status, String> {
    for line in out.lines() {
        let mut w = line.split_whitespace();
        let (Some(start), Some(len), Some(target)) = (w.next(), w.next(), w.next()) else {
            continue;
        };
        if target != "mlsdisk" {
            continue;
        }
        let start = start
            .parse()
            .map_err(|_| format!("bad start sector in the status line: {line}"))?;
        let sectors = len
            .parse()
            .map_err(|_| format!("bad length in the status line: {line}"))?;
        // `health=ok` (the module's key=value line) or a bare `ok` (older).
        let first = w.next().unwrap_or("");
        let health = first.strip_prefix("health=").unwrap_or(first).to_string();
        let mut fields = Vec::new();
        let mut notes = Vec::new();
        let mut note = String::new();
        for word in w {
            // Free text in parentheses is one note.
            if !note.is_empty() || word.starts_with('(') {
                if !note.is_empty() {
                    note.push(' ');
                }
                note.push_str(word);
                if word.ends_with(')') {
                    notes.push(std::mem::take(&mut note));
                }
                continue;
            }
            match word.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    let val = match v.parse::<u64>() {
                        Ok(n) => Value::Int(n),
                        Err(_) => Value::Text(v.to_string()),
                    };
                    fields.push((k.to_string(), val));
                }
                _ => notes.push(word.to_string()),
            }
        }
        if !note.is_empty() {
            notes.push(note);
        }
        return Ok(Status {
            start,
            sectors,
            health,
            fields,
            notes,
        });
    }
    Err("no mlsdisk target in the status".to_string())
}

impl Status {
    /// The status as a JSON object: `start`, `sectors`, `health`, then
    /// every field by name (integers as numbers), `notes` if any.
    pub fn to_json(&self, name: &str) -> serde_json::Value {
        let mut fields = serde_json::Map::new();
        for (k, v) in &self.fields {
            let j = match v {
                Value::Int(n) => serde_json::Value::from(*n),
                Value::Text(s) => serde_json::Value::from(s.as_str()),
            };
            fields.insert(k.clone(), j);
        }
        let mut o = serde_json::Map::new();
        o.insert("name".into(), name.into());
        o.insert("start".into(), self.start.into());
        o.insert("sectors".into(), self.sectors.into());
        o.insert("health".into(), self.health.as_str().into());
        o.insert("fields".into(), serde_json::Value::Object(fields));
        o.insert("notes".into(), serde_json::Value::from(self.notes.clone()));
        serde_json::Value::Object(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_keys() {
        let k = key_from_hex("000102030405060708090a0b0c0d0e0F").unwrap();
        assert_eq!(k.len(), 16);
        assert_eq!(k[15], 15);
        assert!(key_from_hex("0001").is_err());
        assert!(key_from_hex("zz0102030405060708090a0b0c0d0e0f").is_err());
        assert_eq!(key_from_hex(&"ab".repeat(32)).unwrap().len(), 32);
    }

    #[test]
    fn key_files() {
        // Hex text with a newline, raw bytes, and neither.
        let hex = format!("{}\n", "01".repeat(16));
        assert_eq!(*read_key(hex.as_bytes()).unwrap(), vec![1u8; 16]);
        let raw = [0xffu8; 32];
        assert_eq!(*read_key(&raw[..]).unwrap(), raw.to_vec());
        assert!(read_key(&[1u8; 17][..]).is_err());
        assert!(read_key(&[][..]).is_err());
        let huge = vec![b'0'; KEY_FILE_MAX + 10];
        assert!(read_key(&huge[..]).unwrap_err().contains("longer than"));
    }

    #[test]
    fn keyring_refs() {
        assert_eq!(keyring_ref("logon:a:b", 32).unwrap(), ":32:logon:a:b");
        assert_eq!(keyring_ref("user:x", 16).unwrap(), ":16:user:x");
        assert!(keyring_ref("trusted:x", 32).is_err());
        assert!(keyring_ref("logon:", 32).is_err());
        assert!(keyring_ref("logon:a b", 32).is_err());
        assert!(keyring_ref("logon:x", 24).is_err());
        assert!(keyring_ref("nocolon", 32).is_err());
    }

    #[test]
    fn signatures() {
        let mut b = vec![0u8; PROBE_LEN];
        assert_eq!(signature(&b), None);
        b[4096..4100].copy_from_slice(b"MDAB");
        assert_eq!(signature(&b), Some(Signature::MlsDisk));
        let mut b = vec![0u8; PROBE_LEN];
        b[1080] = 0x53;
        b[1081] = 0xef;
        assert_eq!(
            signature(&b),
            Some(Signature::Other("an ext2/ext3/ext4 file system"))
        );
        let mut b = vec![0u8; 2048];
        b[..6].copy_from_slice(b"LUKS\xba\xbe");
        assert!(matches!(signature(&b), Some(Signature::Other(s)) if s.contains("LUKS")));
        // A short device: offsets past its end are not read.
        assert_eq!(signature(&[0u8; 100]), None);
    }

    #[test]
    fn status_lines() {
        let out = "0 8192 mlsdisk ok sync=3 logical=1024 wa=1.250 anchor=dev(tofu) \
                   (unprotected against whole-image rollback) reads=7\n";
        let s = parse_status(out).unwrap();
        assert_eq!((s.start, s.sectors, s.health.as_str()), (0, 8192, "ok"));
        assert_eq!(s.fields[0], ("sync".to_string(), Value::Int(3)));
        assert_eq!(s.fields[2], ("wa".to_string(), Value::Text("1.250".into())));
        assert_eq!(s.fields.len(), 5);
        assert_eq!(s.notes, vec!["(unprotected against whole-image rollback)"]);
        let j = s.to_json("d");
        assert_eq!(j["fields"]["logical"], 1024);
        assert_eq!(j["fields"]["anchor"], "dev(tofu)");
        // The module's line: space-free key=value tokens, health first.
        let s = parse_status(
            "0 1714176 mlsdisk health=ok sync=22 capacity=1714176 anchor=dev-tofu reads=17\n",
        )
        .unwrap();
        assert_eq!(s.health, "ok");
        assert_eq!(s.fields[0], ("sync".to_string(), Value::Int(22)));
        assert_eq!(s.fields.len(), 4);
        assert!(s.notes.is_empty());
        assert_eq!(s.to_json("d")["fields"]["anchor"], "dev-tofu");
        assert!(parse_status("0 100 linear 8:0 0\n").is_err());
        assert!(parse_status("x 100 mlsdisk ok\n").is_err());
    }
}
