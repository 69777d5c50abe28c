//! K-way merge of record sources, newest source first.
//!
//! A [`Merger`] yields each key once, in ascending order, with the record of
//! the first (newest) source that has it; the older records of that key are
//! skipped. Tombstones are yielded as `None` values: the caller drops them or
//! keeps them. Sources hold positions only (no borrow of the memtables or the
//! store between calls), so a merge can be suspended between compaction
//! steps; the number of sources is small (the L0 tables + one per level), so
//! the minimum is found by a linear scan.

use alloc::vec::Vec;

use super::store::{LogSource, LogStore};
use super::table::{TableCursor, TableInfo};
use super::LsmValue;
use crate::Result;

pub use super::memtable::MemTable;

/// Which memtable a source reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemRef {
    /// The mutable one.
    Mutable,
    /// The immutable one.
    Imm,
}

/// What the sources read from during one call.
pub struct Ctx<'a, S: LogStore, V> {
    /// The store holding the tables.
    pub store: &'a S,
    /// The mutable memtable.
    pub mem: &'a MemTable<V>,
    /// The immutable memtable, if any.
    pub imm: Option<&'a MemTable<V>>,
}

/// One sorted source of records.
pub enum Source<Id> {
    /// A memtable, after key `last`.
    Mem {
        /// Which memtable.
        which: MemRef,
        /// The last key yielded.
        last: Option<u64>,
    },
    /// A run of non-overlapping tables in key order (one L0 table, or the
    /// tables of one level).
    Tables {
        /// The tables, ascending.
        tables: Vec<(Id, TableInfo)>,
        /// The table being read.
        idx: usize,
        /// The position in it.
        cur: TableCursor,
    },
}

impl<Id: Copy> Source<Id> {
    /// A source over `tables` (non-overlapping, ascending).
    pub fn tables(tables: Vec<(Id, TableInfo)>) -> Result<Self> {
        Ok(Self::Tables {
            tables,
            idx: 0,
            cur: TableCursor::new()?,
        })
    }

    fn next<S: LogStore<LogId = Id>, V: LsmValue>(
        &mut self,
        ctx: &Ctx<'_, S, V>,
    ) -> Result<Option<(u64, Option<V>)>> {
        match self {
            Self::Mem { which, last } => {
                let map = match which {
                    MemRef::Mutable => Some(ctx.mem),
                    MemRef::Imm => ctx.imm,
                };
                let Some(map) = map else {
                    return Ok(None);
                };
                match map.next_after(*last) {
                    Some((k, v)) => {
                        *last = Some(*k);
                        Ok(Some((*k, v.clone())))
                    }
                    None => Ok(None),
                }
            }
            Self::Tables { tables, idx, cur } => loop {
                let Some((id, info)) = tables.get(*idx) else {
                    return Ok(None);
                };
                let src = LogSource {
                    store: ctx.store,
                    log: *id,
                };
                if let Some(r) = cur.next(info, &src)? {
                    return Ok(Some(r));
                }
                *idx += 1;
                cur.reset();
            },
        }
    }
}

/// The merge of sources, newest first.
pub struct Merger<Id, V> {
    sources: Vec<Source<Id>>,
    heads: Vec<Option<(u64, Option<V>)>>,
    started: bool,
}

impl<Id: Copy, V: LsmValue> Merger<Id, V> {
    /// A merge of `sources`, the newest first.
    pub fn new(sources: Vec<Source<Id>>) -> Result<Self> {
        let mut heads = Vec::new();
        heads.try_reserve_exact(sources.len())?;
        heads.resize_with(sources.len(), || None);
        Ok(Self {
            sources,
            heads,
            started: false,
        })
    }

    /// The next key and its newest record, or `None` at the end.
    pub fn next<S: LogStore<LogId = Id>>(
        &mut self,
        ctx: &Ctx<'_, S, V>,
    ) -> Result<Option<(u64, Option<V>)>> {
        if !self.started {
            for (s, h) in self.sources.iter_mut().zip(self.heads.iter_mut()) {
                *h = s.next(ctx)?;
            }
            self.started = true;
        }
        let Some(min) = self.heads.iter().flatten().map(|(k, _)| *k).min() else {
            return Ok(None);
        };
        let mut out = None;
        for (s, h) in self.sources.iter_mut().zip(self.heads.iter_mut()) {
            if h.as_ref().is_some_and(|(k, _)| *k == min) {
                let rec = h.take();
                if out.is_none() {
                    out = rec;
                }
                *h = s.next(ctx)?;
            }
        }
        Ok(out)
    }
}
