//! Records emitted by an upstream weir stage: each carries its source position
//! (`weir.source.topic`, `.partition`, `.offset`, `.seq`) and its writer (`weir.source.group`),
//! and a downstream partition keeps, per writer and upstream partition, the highest position
//! it applied, in the batch's transaction. A record at or below that mark was applied already
//! (an upstream crash sent it again) and is dropped; one writer's emits reach a downstream
//! partition in their upstream partition's order, so nothing newer is ever below the mark.
//! Two writers reading the same upstream partition (two stages, two applications) have a
//! mark each.

use weir_state::wire::SourcePosition;
use weir_state::{PartitionStore, WriteSet};

use crate::error::Result;
use crate::inbound::Inbound;

/// The store of the marks: key `[writer group, upstream topic, upstream partition]` (or
/// `[upstream topic, upstream partition]` for emits that name no writer), value
/// `[offset, seq]` of the newest record applied from there.
const SOURCES: &str = "__weir_sources";

/// A mark's key.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum MarkKey<'a> {
    Writer(&'a str, &'a str, i32),
    Source(&'a str, i32),
}

/// An input record's upstream position, if weir emitted it.
#[derive(Debug)]
pub(crate) struct Upstream(SourcePosition);

impl Upstream {
    pub(crate) fn of(msg: &Inbound) -> Option<Self> {
        SourcePosition::from_headers(msg.headers()).map(Self)
    }

    /// This record was applied already: its position is at or below the mark.
    pub(crate) fn seen(&self, store: &PartitionStore, writes: &WriteSet) -> Result<bool> {
        let mark: Option<(i64, u32)> = store.get_through(writes, SOURCES, &self.key())?;
        Ok(mark.is_some_and(|m| (self.0.offset, self.0.seq) <= m))
    }

    /// Moves the mark to this record (with the batch's writes).
    pub(crate) fn applied(&self, writes: &mut WriteSet) -> Result<()> {
        Ok(writes.put(SOURCES, &self.key(), &(self.0.offset, self.0.seq))?)
    }

    fn key(&self) -> MarkKey<'_> {
        match &self.0.group {
            Some(group) => MarkKey::Writer(group, &self.0.topic, self.0.partition),
            None => MarkKey::Source(&self.0.topic, self.0.partition),
        }
    }
}
