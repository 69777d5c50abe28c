//! Segment metadata kept in the index, under keys above every LBA: the
//! segment usage table (valid blocks per segment) and the segment
//! summaries (the LBA written at each data block). See `docs/format.md`,
//! "Segment metadata entries".
//!
//! Both ride on the index's value type: a [`BlockRecord`] whose first word
//! is [`MARKER`] (a key length of 32 and an hba no data block has) and
//! whose key and tag fields carry 48 bytes of payload. They are
//! committed, authenticated and rolled back together with the index.

use super::record::BlockRecord;
use crate::platform::{AeadKey, MAC_LEN};
use crate::{Error, ErrorKind, Result};

/// First key of the metadata (LBAs are below 2^32).
pub const META_BASE: u64 = 1 << 40;
/// Key of usage entry `g` is `USAGE_BASE + g`.
pub const USAGE_BASE: u64 = META_BASE;
/// Key of summary entry `e` is `SUMMARY_BASE + e`.
pub const SUMMARY_BASE: u64 = 1 << 41;
/// The hba field of a metadata value (no data block is numbered so high).
pub const MARKER_HBA: u64 = 0x4d44_4154_414d;
/// Payload bytes of one entry.
pub const PAYLOAD: usize = 48;
/// Segments per usage entry (u32 counts).
pub const SEGS_PER_ENTRY: u32 = 12;
/// Blocks per summary entry (u32 LBAs).
pub const BLOCKS_PER_ENTRY: u32 = 12;
/// The "no LBA" value of a summary slot.
pub const NONE: u32 = u32::MAX;

/// The payload of a metadata entry.
pub type Payload = [u8; PAYLOAD];

/// The index value that carries `p`.
pub fn to_record(p: &Payload) -> Result<BlockRecord> {
    let (k, m) = p.split_at(32);
    let mut mac = [0u8; MAC_LEN];
    mac.copy_from_slice(m);
    Ok(BlockRecord {
        hba: MARKER_HBA,
        key: AeadKey::from_slice(k)?,
        mac,
    })
}

/// The payload carried by `r`; `Corrupted` if `r` is not a metadata value.
pub fn from_record(r: &BlockRecord) -> Result<Payload> {
    let k = r.key.as_bytes();
    if r.hba != MARKER_HBA || k.len() != 32 {
        return Err(Error::new(
            ErrorKind::Corrupted,
            "index: a metadata key holds no metadata value",
        ));
    }
    let mut p = [0u8; PAYLOAD];
    let (a, b) = p.split_at_mut(32);
    a.copy_from_slice(k);
    b.copy_from_slice(&r.mac);
    Ok(p)
}

/// Packs 12 u32 values.
pub fn pack(vals: &[u32; 12]) -> Payload {
    let mut p = [0u8; PAYLOAD];
    for (c, v) in p.chunks_exact_mut(4).zip(vals.iter()) {
        c.copy_from_slice(&v.to_le_bytes());
    }
    p
}

/// Unpacks 12 u32 values.
pub fn unpack(p: &Payload) -> [u32; 12] {
    let mut vals = [0u32; 12];
    for (c, v) in p.chunks_exact(4).zip(vals.iter_mut()) {
        let mut w = [0u8; 4];
        w.copy_from_slice(c);
        *v = u32::from_le_bytes(w);
    }
    vals
}

/// Summary entries per segment of `seg_blocks` blocks (an entry never
/// spans two segments).
pub fn summary_entries_per_seg(seg_blocks: u32) -> u64 {
    u64::from(seg_blocks.div_ceil(BLOCKS_PER_ENTRY))
}

/// The key of the summary entry holding block `off` of segment `seg`.
pub fn summary_key(seg: u32, off: u32, seg_blocks: u32) -> u64 {
    SUMMARY_BASE
        + u64::from(seg) * summary_entries_per_seg(seg_blocks)
        + u64::from(off / BLOCKS_PER_ENTRY)
}

/// Usage entries of a data region of `nseg` segments.
pub fn usage_entries(nseg: u32) -> u64 {
    u64::from(nseg.div_ceil(SEGS_PER_ENTRY))
}

/// Metadata entries of a data region of `data_blocks` blocks in segments
/// of `seg_blocks` (at most): for sizing the index region.
pub fn max_entries(data_blocks: u64, seg_blocks: u32) -> u64 {
    let nseg = data_blocks / u64::from(seg_blocks.max(1)) + 1;
    nseg * summary_entries_per_seg(seg_blocks) + nseg.div_ceil(u64::from(SEGS_PER_ENTRY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_the_index_record_encoding() {
        let mut vals = [0u32; 12];
        for (i, v) in vals.iter_mut().enumerate() {
            *v = (i as u32).wrapping_mul(0x0101_0101) ^ 0xdead_beef;
        }
        vals[3] = NONE;
        let rec = to_record(&pack(&vals)).unwrap();
        let mut enc = [0u8; BlockRecord::SIZE];
        rec.emit_into(&mut enc).unwrap();
        let back = BlockRecord::parse_from(&enc).unwrap();
        assert_eq!(unpack(&from_record(&back).unwrap()), vals);
        // Any flipped byte of the marker makes it something else.
        for i in 0..8 {
            let mut e = enc;
            e[i] ^= 1;
            match BlockRecord::parse_from(&e) {
                Err(_) => {}
                Ok(r) => assert!(from_record(&r).is_err(), "byte {i}"),
            }
        }
        // A block record is not metadata.
        let data = BlockRecord {
            hba: 7,
            key: AeadKey::from_slice(&[1u8; 32]).unwrap(),
            mac: [2u8; MAC_LEN],
        };
        assert!(from_record(&data).is_err());
    }

    #[test]
    fn summary_entries_stay_inside_their_segment() {
        for sb in [4u32, 12, 13, 256, 65536] {
            let per = summary_entries_per_seg(sb);
            assert_eq!(summary_key(1, 0, sb), SUMMARY_BASE + per);
            assert_eq!(summary_key(0, sb - 1, sb), SUMMARY_BASE + per - 1);
        }
        assert!(summary_key(u32::MAX, 65535, 65536) > SUMMARY_BASE);
        assert!(usage_entries(u32::MAX) < SUMMARY_BASE - USAGE_BASE);
    }
}
