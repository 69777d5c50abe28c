//! Fuzzing entry points of the log store's decoders (feature `fuzzing`):
//! reached through [`crate::fuzz_api`], never by the engine itself.

use alloc::vec::Vec;

use super::record::{self, Encoder, Header, Kind, LogFields};
use crate::crypto::RootMeta;
use crate::Result;

/// Decodes one journal record (the plaintext a MAC chain carries).
pub(crate) fn record(b: &[u8]) -> Result<()> {
    record::parse(b).map(|_| ())
}

/// A valid journal record: a snapshot (`delta == false`) or a delta of
/// commit `counter`, creating logs `first..first + logs` of one chunk each
/// (chunk `i` for log `i`), after deleting log `deleted` if given. Chunks of
/// 4 blocks, 4 chunks, 256-bit keys.
pub(crate) fn record_seed(
    delta: bool,
    counter: u64,
    first: u32,
    logs: u32,
    deleted: Option<u64>,
    user_state: &[u8],
) -> Result<Vec<u8>> {
    let h = Header {
        kind: if delta { Kind::Delta } else { Kind::Snapshot },
        key_len: 32,
        counter,
        next_log_id: u64::from(first) + u64::from(logs),
        chunk_blocks: 4,
        nchunks: 4,
    };
    let mut enc = Encoder::new(&h, user_state)?;
    if let Some(id) = deleted {
        enc.delete(id)?;
    }
    let root = RootMeta::empty()?;
    for i in first..first.saturating_add(logs) {
        let chunk = [i];
        enc.log(&LogFields {
            id: u64::from(i),
            tag: 0x4C53_4D00_0000_00FF,
            sealed: i % 2 == 1,
            alloc_pos: 0,
            root: &root,
            chunks_total: 1,
            new_chunks: &chunk,
        })?;
    }
    enc.finish()
}
pub(crate) use super::store::fuzz_seal_journal;
