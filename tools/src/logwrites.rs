//! A reader of the log that the kernel's `dm-log-writes` target writes
//! (Documentation/admin-guide/device-mapper/log-writes.rst).
//!
//! The layout, all integers little-endian:
//!
//! ```text
//! byte 0:            super   magic u64, version u64 (1), nr_entries u64,
//!                            sectorsize u32 (the data device's logical
//!                            block size; every size below counts in it)
//! byte sectorsize:   entry 0 = one sector of header, then its data
//! ...                entry 1, ...
//! header:  sector u64, nr_sectors u64, flags u64, data_len u64, then (marks
//!          only) data_len bytes of the mark's text; the rest of the sector
//!          is zero
//! data:    nr_sectors sectors of what was written (none for a discard,
//!          a flush without data or a mark)
//! flags:   1 flush, 2 FUA, 4 discard, 8 mark, 16 metadata
//! ```
//!
//! The target logs a write only once a flush that covers it has completed
//! (a FUA write: once it completed), so the order of the log is the order
//! in which writes became durable; writes that completed before a flush
//! come before that flush's entry. The log ends with the mark
//! `dm-log-writes-end`, written when the target is removed.
//!
//! Everything read here is input: a malformed log gives a [`LogError`],
//! never a panic.

use std::fmt;
use std::io::{Read, Seek, SeekFrom};

/// The entry is a flush (REQ_PREFLUSH): every entry before it is durable.
pub const FLAG_FLUSH: u64 = 1 << 0;
/// The write had REQ_FUA: durable when it completed.
pub const FLAG_FUA: u64 = 1 << 1;
/// A discard of `nr_sectors` sectors (no data in the log).
pub const FLAG_DISCARD: u64 = 1 << 2;
/// A mark from `dmsetup message <dev> 0 mark <text>`.
pub const FLAG_MARK: u64 = 1 << 3;
/// The write had REQ_META.
pub const FLAG_METADATA: u64 = 1 << 4;
const KNOWN_FLAGS: u64 = FLAG_FLUSH | FLAG_FUA | FLAG_DISCARD | FLAG_MARK | FLAG_METADATA;

/// The log's magic number, "rhswfsj" as a little-endian u64.
pub const MAGIC: u64 = 0x006a_7366_7773_6872;
/// The only version of the format.
pub const VERSION: u64 = 1;
/// Bytes of the fixed part of an entry header.
const HEADER_LEN: usize = 32;
/// Bytes of the fixed part of the super block.
const SUPER_LEN: usize = 28;

/// A malformed or unreadable log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogError(pub String);

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LogError {}

fn err<T>(msg: String) -> Result<T, LogError> {
    Err(LogError(msg))
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// First sector written (in the log's sector size).
    pub sector: u64,
    /// Sectors written or discarded.
    pub nr_sectors: u64,
    /// `FLAG_*` bits.
    pub flags: u64,
    /// Where the written data starts in the source (bytes); meaningless
    /// when [`Entry::has_data`] is false.
    pub data_pos: u64,
    /// The text of a mark.
    pub mark: Option<String>,
}

impl Entry {
    /// A flush (with or without data).
    pub fn is_flush(&self) -> bool {
        self.flags & FLAG_FLUSH != 0
    }
    /// A FUA write.
    pub fn is_fua(&self) -> bool {
        self.flags & FLAG_FUA != 0
    }
    /// A discard.
    pub fn is_discard(&self) -> bool {
        self.flags & FLAG_DISCARD != 0
    }
    /// Data that changes the device: a write with sectors.
    pub fn has_data(&self) -> bool {
        self.nr_sectors > 0 && self.flags & (FLAG_DISCARD | FLAG_MARK) == 0
    }
}

/// A parsed log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    /// The data device's logical block size in bytes.
    pub sector_size: u32,
    /// The entries in log order.
    pub entries: Vec<Entry>,
}

impl Log {
    /// Index of the first mark named `name`.
    pub fn mark_index(&self, name: &str) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.mark.as_deref() == Some(name))
    }
}

fn le64(b: &[u8], at: usize) -> Result<u64, LogError> {
    b.get(at..at + 8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| LogError(format!("short read at byte {at} of a header")))
}

fn read_at<R: Read + Seek>(r: &mut R, pos: u64, buf: &mut [u8]) -> Result<(), LogError> {
    r.seek(SeekFrom::Start(pos))
        .and_then(|_| r.read_exact(buf))
        .map_err(|e| LogError(format!("reading {} bytes at byte {pos}: {e}", buf.len())))
}

/// Parses the log that starts at byte `start` of `r` and may use `len`
/// bytes from there (the log device's size).
pub fn parse<R: Read + Seek>(r: &mut R, start: u64, len: u64) -> Result<Log, LogError> {
    let mut sup = [0u8; SUPER_LEN];
    if len < SUPER_LEN as u64 {
        return err(format!(
            "a log device of {len} bytes has no room for a super block"
        ));
    }
    read_at(r, start, &mut sup)?;
    let magic = le64(&sup, 0)?;
    if magic != MAGIC {
        return err(format!(
            "bad magic {magic:#x} (want {MAGIC:#x}): not a dm-log-writes log"
        ));
    }
    let version = le64(&sup, 8)?;
    if version != VERSION {
        return err(format!("log version {version}, only {VERSION} is known"));
    }
    let nr_entries = le64(&sup, 16)?;
    let ss_bytes = sup
        .get(24..28)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .ok_or_else(|| LogError("short super block".into()))?;
    let sector_size = u32::from_le_bytes(ss_bytes);
    if !(512..=65536).contains(&sector_size) || !sector_size.is_power_of_two() {
        return err(format!(
            "sector size {sector_size} is not a power of two in 512..=65536"
        ));
    }
    let ss = u64::from(sector_size);
    if start.checked_add(len).is_none() {
        return err(format!("a log at byte {start} of {len} bytes overflows"));
    }
    // Every entry takes at least one sector: bounds the count by the size.
    if nr_entries > len / ss {
        return err(format!(
            "super block claims {nr_entries} entries, more than fit in {len} bytes"
        ));
    }
    let mut entries = Vec::new();
    entries
        .try_reserve_exact(nr_entries as usize)
        .map_err(|_| LogError(format!("no memory for {nr_entries} entries")))?;
    let mut header = vec![0u8; sector_size as usize];
    let mut pos = ss;
    for i in 0..nr_entries {
        match pos.checked_add(ss) {
            Some(end) if end <= len => {}
            _ => {
                return err(format!(
                    "entry {i} header at byte {pos} is past the log's end ({len})"
                ))
            }
        }
        read_at(r, start + pos, &mut header)?;
        let sector = le64(&header, 0)?;
        let nr_sectors = le64(&header, 8)?;
        let flags = le64(&header, 16)?;
        let data_len = le64(&header, 24)?;
        if flags & !KNOWN_FLAGS != 0 {
            return err(format!("entry {i}: unknown flags {flags:#x}"));
        }
        let mut mark = None;
        if flags & FLAG_MARK != 0 {
            if nr_sectors != 0 {
                return err(format!("entry {i}: a mark with {nr_sectors} sectors"));
            }
            let end = usize::try_from(data_len)
                .ok()
                .and_then(|n| n.checked_add(HEADER_LEN))
                .filter(|&e| e <= header.len())
                .ok_or_else(|| {
                    LogError(format!(
                        "entry {i}: mark of {data_len} bytes does not fit its sector"
                    ))
                })?;
            let text = header.get(HEADER_LEN..end).unwrap_or_default();
            mark = Some(String::from_utf8_lossy(text).into_owned());
        } else if data_len != 0 {
            // The kernel only ever stores mark text in an entry.
            return err(format!(
                "entry {i}: {data_len} bytes of inline data (only marks have it)"
            ));
        }
        let data_bytes = if flags & (FLAG_DISCARD | FLAG_MARK) != 0 {
            0
        } else {
            nr_sectors
                .checked_mul(ss)
                .ok_or_else(|| LogError(format!("entry {i}: {nr_sectors} sectors overflow")))?
        };
        if sector.checked_add(nr_sectors).is_none() {
            return err(format!(
                "entry {i}: sector {sector} + {nr_sectors} overflows"
            ));
        }
        let data_pos = start + pos + ss;
        pos = match (pos + ss).checked_add(data_bytes) {
            Some(p) if p <= len => p,
            _ => {
                return err(format!(
                "entry {i}: {data_bytes} bytes of data at byte {} run past the log's end ({len})",
                pos + ss
            ))
            }
        };
        entries.push(Entry {
            sector,
            nr_sectors,
            flags,
            data_pos,
            mark,
        });
    }
    Ok(Log {
        sector_size,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// Builds a log the way the format describes it.
    struct Builder {
        ss: usize,
        body: Vec<u8>,
        n: u64,
    }

    impl Builder {
        fn new(ss: usize) -> Self {
            Self {
                ss,
                body: Vec::new(),
                n: 0,
            }
        }
        fn entry(&mut self, sector: u64, nr: u64, flags: u64, text: &[u8], data: &[u8]) {
            let mut h = vec![0u8; self.ss];
            h[0..8].copy_from_slice(&sector.to_le_bytes());
            h[8..16].copy_from_slice(&nr.to_le_bytes());
            h[16..24].copy_from_slice(&flags.to_le_bytes());
            h[24..32].copy_from_slice(&(text.len() as u64).to_le_bytes());
            h[32..32 + text.len()].copy_from_slice(text);
            self.body.extend_from_slice(&h);
            self.body.extend_from_slice(data);
            self.n += 1;
        }
        fn bytes(&self) -> Vec<u8> {
            let mut s = vec![0u8; self.ss];
            s[0..8].copy_from_slice(&MAGIC.to_le_bytes());
            s[8..16].copy_from_slice(&VERSION.to_le_bytes());
            s[16..24].copy_from_slice(&self.n.to_le_bytes());
            s[24..28].copy_from_slice(&(self.ss as u32).to_le_bytes());
            s.extend_from_slice(&self.body);
            s
        }
    }

    fn sample() -> Vec<u8> {
        let mut b = Builder::new(512);
        b.entry(8, 2, 0, b"", &[7u8; 1024]);
        b.entry(0, 0, FLAG_FLUSH, b"", b"");
        b.entry(16, 1, FLAG_FUA | FLAG_METADATA, b"", &[9u8; 512]);
        b.entry(0, 0, FLAG_MARK, b"m1", b"");
        b.entry(32, 64, FLAG_DISCARD, b"", b"");
        b.entry(0, 0, FLAG_MARK, b"dm-log-writes-end", b"");
        b.bytes()
    }

    #[test]
    fn parses_every_kind_of_entry() {
        let img = sample();
        let log = parse(&mut Cursor::new(&img), 0, img.len() as u64).expect("parse");
        assert_eq!(log.sector_size, 512);
        assert_eq!(log.entries.len(), 6);
        let e = &log.entries;
        assert!(e[0].has_data() && e[0].sector == 8 && e[0].nr_sectors == 2);
        assert_eq!(&img[e[0].data_pos as usize..][..1024], &[7u8; 1024][..]);
        assert!(e[1].is_flush() && !e[1].has_data());
        assert!(e[2].is_fua() && e[2].has_data());
        assert_eq!(&img[e[2].data_pos as usize..][..512], &[9u8; 512][..]);
        assert_eq!(e[3].mark.as_deref(), Some("m1"));
        assert!(e[4].is_discard() && !e[4].has_data());
        assert_eq!(log.mark_index("dm-log-writes-end"), Some(5));
    }

    #[test]
    fn parses_at_an_offset() {
        let mut img = vec![0xAAu8; 4096];
        img.extend_from_slice(&sample());
        let log = parse(&mut Cursor::new(&img), 4096, img.len() as u64 - 4096).expect("parse");
        assert_eq!(log.entries.len(), 6);
        assert_eq!(&img[log.entries[0].data_pos as usize..][..4], &[7u8; 4][..]);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let img = sample();
        for cut in 0..img.len() {
            let r = parse(&mut Cursor::new(&img[..cut]), 0, cut as u64);
            assert!(r.is_err(), "a log cut at {cut} bytes parsed");
        }
    }

    #[test]
    fn corrupt_headers_are_errors() {
        let good = sample();
        let cases: [(usize, u8); 6] = [
            (0, 0x00),         // magic
            (8, 0x02),         // version
            (16, 0xff),        // entry count
            (24, 0x03),        // sector size
            (512 + 16, 0x80),  // unknown flag on entry 0
            (3584 + 25, 0xff), // the mark's length (entry 3) past its sector
        ];
        for (at, v) in cases {
            let mut img = good.clone();
            img[at] = v;
            assert!(
                parse(&mut Cursor::new(&img), 0, img.len() as u64).is_err(),
                "byte {at} = {v:#x} parsed"
            );
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let good = sample();
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..2000 {
            let mut img = good.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x % img.len() as u64) as usize;
                img[at] = (x >> 32) as u8;
            }
            let _ = parse(&mut Cursor::new(&img), 0, img.len() as u64);
        }
    }
}
