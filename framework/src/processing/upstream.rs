//! Records emitted by an upstream weir stage: each carries its source position
//! (`weir.source.topic`, `.partition`, `.offset`, `.seq`) and its writer (`weir.source.group`),
//! and a downstream partition keeps, per writer and upstream partition, a mark of what it
//! applied, in the batch's transaction: a record the mark covers was applied already (an
//! upstream crash or a failed send sent it again) and is dropped.
//!
//! A writer's sends can land out of order: a send the broker refused is made again after
//! later ones landed. So the mark is not just the newest position: it is a floor (everything
//! below it applied or never coming) and the positions applied at and above it. Emits say
//! how far the floor may rise (`weir.source.acked_below`: the writer's emits below that
//! source offset were acknowledged before this one was sent, so this partition has read
//! them all already); records that do not say so (late records, emits of earlier weir
//! versions) come in order, and raise the floor to themselves. Two writers reading the same
//! upstream partition (two stages, two applications) have a mark each.

use std::collections::{BTreeSet, HashMap};

use weir_state::wire::SourcePosition;
use weir_state::{PartitionStore, WriteSet};

use crate::error::Result;
use crate::inbound::Inbound;

/// The store of the marks: key `[writer group, upstream topic, upstream partition]` (or
/// `[upstream topic, upstream partition]` for records that name no writer), value
/// [`Stored`].
const SOURCES: &str = "__weir_sources";

/// A position in an upstream partition: source offset, then seq among its emits.
type Position = (i64, u32);

/// A mark's key.
#[derive(serde::Serialize, Debug, Clone, PartialEq, Eq, Hash)]
#[serde(untagged)]
enum MarkKey {
    Writer(String, String, i32),
    Source(String, i32),
}

/// A mark as stored.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum Stored {
    /// Everything below `below` was applied (or never comes); of what is at or above it,
    /// `applied`, ascending.
    Floor {
        below: Position,
        applied: Vec<Position>,
    },
    /// Written by earlier weir versions: the newest position applied, and so everything
    /// before it.
    Newest(Position),
}

/// What a partition applied of one writer's upstream partition.
#[derive(Debug, Default, PartialEq)]
struct Mark {
    below: Position,
    applied: BTreeSet<Position>,
}

impl Mark {
    fn from_stored(stored: Stored) -> Self {
        match stored {
            Stored::Floor { below, applied } => Self {
                below,
                applied: applied.into_iter().filter(|p| *p >= below).collect(),
            },
            Stored::Newest(newest) => Self {
                below: just_after(newest),
                applied: BTreeSet::new(),
            },
        }
    }

    fn to_stored(&self) -> Stored {
        Stored::Floor {
            below: self.below,
            applied: self.applied.iter().copied().collect(),
        }
    }

    fn covers(&self, p: Position) -> bool {
        p < self.below || self.applied.contains(&p)
    }

    fn apply(&mut self, p: Position, acked_below: Option<i64>) {
        match acked_below {
            // Never above the record itself: a floor from a confused header must not drop
            // records yet to come.
            Some(offset) => self.raise((offset.min(p.0), 0)),
            // A writer that does not say sends in order: nothing before this record comes.
            None => self.raise(just_after(p)),
        }
        if p >= self.below {
            self.applied.insert(p);
        }
    }

    fn raise(&mut self, floor: Position) {
        if floor > self.below {
            self.below = floor;
            self.applied = self.applied.split_off(&floor);
        }
    }
}

fn just_after((offset, seq): Position) -> Position {
    match seq.checked_add(1) {
        Some(next) => (offset, next),
        None => (offset.saturating_add(1), 0),
    }
}

/// An input record's upstream position, if weir emitted it.
#[derive(Debug)]
pub(crate) struct Upstream {
    key: MarkKey,
    position: Position,
    acked_below: Option<i64>,
}

impl Upstream {
    pub(crate) fn of(msg: &Inbound) -> Option<Self> {
        let p = SourcePosition::from_headers(msg.headers())?;
        let key = match p.group {
            Some(group) => MarkKey::Writer(group, p.topic, p.partition),
            None => MarkKey::Source(p.topic, p.partition),
        };
        Some(Self {
            key,
            position: (p.offset, p.seq),
            acked_below: p.acked_below,
        })
    }
}

/// The marks a batch met: each read from the store when first needed, kept in memory while
/// the batch runs, and written to the batch's writes once, before it commits.
#[derive(Default)]
pub(crate) struct UpstreamMarks {
    marks: HashMap<MarkKey, Mark>,
}

impl UpstreamMarks {
    /// This record was applied already.
    pub(crate) fn seen(&mut self, up: &Upstream, store: &PartitionStore) -> Result<bool> {
        Ok(self.mark(up, store)?.covers(up.position))
    }

    /// Marks this record applied (call after [`seen`](Self::seen) said it was not).
    pub(crate) fn applied(&mut self, up: &Upstream, store: &PartitionStore) -> Result<()> {
        self.mark(up, store)?.apply(up.position, up.acked_below);
        Ok(())
    }

    /// Puts the marks into the batch's writes.
    pub(crate) fn write(&self, writes: &mut WriteSet) -> Result<()> {
        for (key, mark) in &self.marks {
            writes.put(SOURCES, key, &mark.to_stored())?;
        }
        Ok(())
    }

    fn mark(&mut self, up: &Upstream, store: &PartitionStore) -> Result<&mut Mark> {
        if !self.marks.contains_key(&up.key) {
            let stored: Option<Stored> = store.get(SOURCES, &up.key)?;
            let mark = stored.map(Mark::from_stored).unwrap_or_default();
            self.marks.insert(up.key.clone(), mark);
        }
        Ok(self
            .marks
            .get_mut(&up.key)
            .expect("the mark was read above"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(mark: &Mark) -> Vec<Position> {
        mark.applied.iter().copied().collect()
    }

    #[test]
    fn a_send_made_again_after_later_ones_landed_is_applied_once() {
        let mut mark = Mark::default();
        // The first request (0..5) was refused; 6..11 landed; then all of it again.
        let order = (6..12).chain(0..12);
        let mut taken = Vec::new();
        for offset in order {
            if !mark.covers((offset, 0)) {
                mark.apply((offset, 0), Some(0));
                taken.push(offset);
            }
        }
        assert_eq!(taken, [6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5]);
        // The next flush says everything below 12 was acknowledged: forgotten, still covered.
        mark.apply((12, 0), Some(12));
        assert_eq!(mark.below, (12, 0));
        assert_eq!(applied(&mark), [(12, 0)]);
        assert!(mark.covers((3, 0)) && mark.covers((12, 0)) && !mark.covers((12, 1)));
    }

    #[test]
    fn records_that_give_no_floor_raise_it_to_themselves() {
        let mut mark = Mark::default();
        mark.apply((4, 1), None);
        assert_eq!((mark.below, applied(&mark)), ((4, 2), vec![]));
        assert!(mark.covers((4, 0)) && mark.covers((4, 1)) && !mark.covers((4, 2)));
        // A floor above the record itself is not believed past the record.
        mark.apply((6, 0), Some(50));
        assert_eq!((mark.below, applied(&mark)), ((6, 0), vec![(6, 0)]));
        assert!(!mark.covers((7, 0)));
        mark.apply((u32::MAX.into(), u32::MAX), None);
        assert_eq!(mark.below, (i64::from(u32::MAX) + 1, 0));
    }

    #[test]
    fn marks_of_earlier_versions_read_as_a_floor_just_after_them() {
        let old: Stored = serde_json::from_str("[41,2]").expect("legacy mark");
        let mark = Mark::from_stored(old);
        assert_eq!(mark.below, (41, 3));
        assert!(mark.covers((41, 2)) && !mark.covers((41, 3)));
        let json = serde_json::to_string(&mark.to_stored()).expect("encode");
        assert_eq!(json, r#"{"below":[41,3],"applied":[]}"#);
        let back: Stored = serde_json::from_str(&json).expect("decode");
        assert_eq!(Mark::from_stored(back), mark);
    }
}
