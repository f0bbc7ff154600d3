//! Redeliveries of a queue (RabbitMQ) recognised by message id: a queue has no positions, so a
//! message whose batch committed and whose acknowledgement was lost (a crash between the two, a
//! connection cut) comes again, and only its id tells it apart.
//!
//! A batch writes, in its own transaction, each message's id (store [`IDS`]: id → the
//! position it was committed at) and the list of its ids under its end position (store
//! [`BATCHES`]). A message the broker says it delivered before is looked up; found, it is
//! dropped (and settled with its batch). Ids are kept only while they can come again:
//!
//! - the worker's own batches until the broker confirmed their acknowledgements (the source
//!   says below which position: [`Queued::settled_below`]);
//! - the batches of the lane's earlier holders (ending at or below where this worker's hold
//!   began, [`Queued::hold_start`]) until this hold has gone past as many positions as they
//!   hold ids: what an earlier holder left unacknowledged comes back before anything new, so
//!   by then every one of those messages has come and been checked.
//!
//! So the stores hold the ids of a few batches, whatever the traffic. A queue whose settled
//! messages can still come again (SQS: a standard queue may deliver a copy of a deleted
//! message) keeps its ids for a time instead ([`Queued::keep_ids_for`], the queue's retention
//! period): its batches are listed by commit time (store [`TIMED`]). The stores are state like
//! any other: they travel in the changelog, so the ids follow the lane to its next worker.

use std::collections::HashMap;

use weir_state::{PartitionStore, WriteSet};

use crate::error::Result;
use crate::inbound::{Inbound, Queued};

/// Message id → the position its batch committed at.
const IDS: &str = "__weir_message_ids";
/// A batch's end position (zero-padded, so text order is numeric order) → its message ids.
const BATCHES: &str = "__weir_message_id_batches";

/// Commit time in ms and end position (each zero-padded) → the batch's message ids.
const TIMED: &str = "__weir_message_id_times";

/// The key of a batch ending at `next` in [`BATCHES`].
fn batch_key(next: i64) -> String {
    format!("{:020}", next.max(0))
}

/// The message ids a batch met.
#[derive(Default)]
pub(crate) struct MessageIds {
    /// Ids applied by this batch, with their positions.
    applied: Vec<(Box<str>, i64)>,
    /// The highest confirmed-settled position the batch's messages carried, and where the
    /// worker's hold of the lane began.
    settled: Option<(i64, i64)>,
    /// How long the ids are kept after their commit, when by time.
    keep_for: Option<std::time::Duration>,
    /// Messages without an id: processed at least once, not exactly once.
    anonymous: u64,
    /// Redeliveries dropped.
    dropped: u64,
}

impl MessageIds {
    /// Whether `msg` was applied already by a committed batch (or earlier in this one): a
    /// redelivery, to drop. Notes what it needs for [`write`](Self::write).
    pub(crate) fn seen(
        &mut self,
        msg: &Inbound,
        store: &PartitionStore,
        writes: &WriteSet,
    ) -> Result<bool> {
        let Some(q) = msg.queued() else {
            return Ok(false);
        };
        self.settled = Some(match self.settled {
            Some((below, _)) => (below.max(q.settled_below), q.hold_start),
            None => (q.settled_below, q.hold_start),
        });
        self.keep_for = self.keep_for.max(q.keep_ids_for);
        let Some(id) = &q.id else {
            self.anonymous += 1;
            return Ok(false);
        };
        // A message delivered for the first time cannot have been committed.
        if !q.redelivered {
            return Ok(false);
        }
        let seen = self.applied.iter().any(|(a, _)| a == id)
            || store.get_through::<_, i64>(writes, IDS, &**id)?.is_some();
        self.dropped += u64::from(seen);
        Ok(seen)
    }

    /// Redeliveries this batch dropped.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Notes that `msg` was applied (or dead-lettered) in this batch.
    pub(crate) fn applied(&mut self, msg: &Inbound) {
        if let Some(Queued { id: Some(id), .. }) = msg.queued() {
            self.applied.push((id.clone(), msg.offset()));
        }
    }

    /// Messages without an id this batch met.
    pub(crate) fn anonymous(&self) -> u64 {
        self.anonymous
    }

    /// Puts the batch's ids (ending at `next`) into its writes, and forgets the ids of the
    /// batches the broker confirmed settled.
    pub(crate) fn write(
        &self,
        store: &PartitionStore,
        writes: &mut WriteSet,
        next: i64,
    ) -> Result<()> {
        self.write_at(store, writes, next, crate::wall_clock::now_ms())
    }

    /// [`write`](Self::write), at `now` (ms since the Unix epoch).
    fn write_at(
        &self,
        store: &PartitionStore,
        writes: &mut WriteSet,
        next: i64,
        now: i64,
    ) -> Result<()> {
        if let Some(keep_for) = self.keep_for {
            return self.write_timed(store, writes, next, keep_for, now);
        }
        if let Some((below, hold_start)) = self.settled {
            let key = |p: i64| serde_json::to_string(&batch_key(p)).unwrap_or_default();
            let mut done = Vec::new();
            // Earlier holders' batches: once this hold has gone past as many positions as
            // they hold ids, each of their unacknowledged messages came back and was checked.
            let earlier = store.range_through(writes, BATCHES, "\"", &key(hold_start + 1))?;
            let ids_held: i64 = earlier
                .iter()
                .map(|(_, ids)| serde_json::from_str::<Vec<String>>(ids).map_or(0, |v| v.len()))
                .sum::<usize>() as i64;
            if next.saturating_sub(hold_start) >= ids_held {
                done.extend(earlier);
            }
            // This hold's batches whose acknowledgements the broker confirmed.
            if below > hold_start {
                done.extend(store.range_through(
                    writes,
                    BATCHES,
                    &key(hold_start + 1),
                    &key(below + 1),
                )?);
            }
            for (key, ids) in done {
                let ids: Vec<String> = serde_json::from_str(&ids).unwrap_or_default();
                for id in ids {
                    writes.delete(IDS, &id)?;
                }
                let key: String = serde_json::from_str(&key).unwrap_or_default();
                writes.delete(BATCHES, &key)?;
            }
        }
        let applied: Vec<_> = self.applied.iter().filter(|(_, p)| *p < next).collect();
        if applied.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(applied.len());
        let mut positions: HashMap<&str, i64> = HashMap::with_capacity(applied.len());
        for (id, position) in applied {
            positions.insert(id, *position);
            ids.push(&**id);
        }
        for (id, position) in positions {
            writes.put(IDS, id, &position)?;
        }
        writes.put(BATCHES, &batch_key(next), &ids)?;
        Ok(())
    }

    /// [`write`](Self::write) for ids kept `keep_for` after their batch committed: lists the
    /// batch's under its commit time, and forgets those of batches older than that.
    fn write_timed(
        &self,
        store: &PartitionStore,
        writes: &mut WriteSet,
        next: i64,
        keep_for: std::time::Duration,
        now: i64,
    ) -> Result<()> {
        let now = now.max(0);
        let horizon = now.saturating_sub(i64::try_from(keep_for.as_millis()).unwrap_or(i64::MAX));
        let upto = serde_json::to_string(&format!("{horizon:020}")).unwrap_or_default();
        for (key, ids) in store.range_through(writes, TIMED, "\"", &upto)? {
            for id in serde_json::from_str::<Vec<String>>(&ids).unwrap_or_default() {
                writes.delete(IDS, &id)?;
            }
            let key: String = serde_json::from_str(&key).unwrap_or_default();
            writes.delete(TIMED, &key)?;
        }
        let applied: Vec<&(Box<str>, i64)> =
            self.applied.iter().filter(|(_, p)| *p < next).collect();
        if applied.is_empty() {
            return Ok(());
        }
        for (id, position) in &applied {
            writes.put(IDS, &**id, position)?;
        }
        let ids: Vec<&str> = applied.iter().map(|(id, _)| &**id).collect();
        writes.put(TIMED, &format!("{now:020}{:020}", next.max(0)), &ids)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn message(offset: i64, id: &str, redelivered: bool, settled_below: i64) -> Inbound {
        held(offset, id, redelivered, settled_below, 0)
    }

    /// A message of a hold that began at `hold_start`.
    fn held(
        offset: i64,
        id: &str,
        redelivered: bool,
        settled_below: i64,
        hold_start: i64,
    ) -> Inbound {
        Inbound::new(Arc::from("t"), 0, offset, None, Some(b"k"), Some(b"v"), &[]).with_queued(
            Queued {
                id: Some(id.into()),
                redelivered,
                settled_below,
                hold_start,
                keep_ids_for: None,
            },
        )
    }

    /// Runs one batch of `msgs` through [`MessageIds`] and commits it: the ones applied.
    fn batch(store: &PartitionStore, msgs: &[Inbound]) -> Vec<i64> {
        batch_at(store, msgs, crate::wall_clock::now_ms())
    }

    /// [`batch`], committed at `now`.
    fn batch_at(store: &PartitionStore, msgs: &[Inbound], now: i64) -> Vec<i64> {
        let mut ids = MessageIds::default();
        let writes = WriteSet::default();
        let mut applied = Vec::new();
        for m in msgs {
            if !ids.seen(m, store, &writes).expect("seen") {
                ids.applied(m);
                applied.push(m.offset());
            }
        }
        let next = msgs.last().map_or(0, |m| m.offset() + 1);
        let mut writes = writes;
        ids.write_at(store, &mut writes, next, now).expect("write");
        store.commit(&mut writes, "t", 0, next).expect("commit");
        applied
    }

    #[test]
    fn a_redelivery_is_dropped_until_its_acknowledgement_is_confirmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = PartitionStore::open(dir.path().join("0.sqlite")).expect("open");
        assert_eq!(
            batch(
                &store,
                &[message(0, "a", false, 0), message(1, "b", false, 0)]
            ),
            [0, 1]
        );
        // The acknowledgement was lost: both come again, with a new message.
        let again = [
            message(2, "a", true, 0),
            message(3, "b", true, 0),
            message(4, "c", true, 0),
        ];
        assert_eq!(
            batch(&store, &again),
            [4],
            "only the new message is applied"
        );
        let kept: Vec<(String, i64)> = store.entries(IDS).expect("ids");
        assert_eq!(kept.len(), 3, "{kept:?}");
        // The broker confirmed everything below 5: the ids are forgotten.
        assert_eq!(batch(&store, &[message(5, "d", false, 5)]), [5]);
        let kept: Vec<(String, i64)> = store.entries(IDS).expect("ids");
        assert_eq!(kept, [("d".to_owned(), 5)]);
        let batches: Vec<(String, Vec<String>)> = store.entries(BATCHES).expect("batches");
        assert_eq!(batches, [(batch_key(6), vec!["d".to_owned()])]);
    }

    #[test]
    fn a_message_seen_for_the_first_time_is_not_looked_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = PartitionStore::open(dir.path().join("0.sqlite")).expect("open");
        assert_eq!(batch(&store, &[message(0, "a", false, 0)]), [0]);
        // Not redelivered: a producer reusing an id is not a redelivery (and costs no read).
        assert_eq!(batch(&store, &[message(1, "a", false, 0)]), [1]);
    }

    /// A worker took the lane over (its hold began at 6) from one that left six messages
    /// committed and unacknowledged: they come back first, over the new holder's first three
    /// batches, while the broker confirms the new holder's own acknowledgements. The earlier
    /// holder's ids are kept until all six came (forgetting them at the new holder's first
    /// confirmation applied the last two again).
    #[test]
    fn an_earlier_holders_ids_are_kept_until_its_messages_came_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = PartitionStore::open(dir.path().join("0.sqlite")).expect("open");
        let first: Vec<_> = (0..6)
            .map(|i| held(i, &format!("a{i}"), false, 0, 0))
            .collect();
        assert_eq!(batch(&store, &first), [0, 1, 2, 3, 4, 5]);
        let again = |p: i64, i: i64, confirmed: i64| held(p, &format!("a{i}"), true, confirmed, 6);
        assert!(batch(&store, &[again(6, 0, 0), again(7, 1, 0)]).is_empty());
        assert!(batch(&store, &[again(8, 2, 8), again(9, 3, 8)]).is_empty());
        assert!(
            batch(&store, &[again(10, 4, 10), again(11, 5, 10)]).is_empty(),
            "the earlier holder's last messages are recognised"
        );
        let kept: Vec<(String, i64)> = store.entries(IDS).expect("ids");
        assert!(kept.is_empty(), "all six came back: forgotten ({kept:?})");
    }

    /// SQS: a deleted message's copy may still come, so ids are kept for the queue's
    /// retention period, however far the confirmed deletions went; then forgotten.
    #[test]
    fn ids_kept_for_a_time_outlive_their_settling_and_then_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = PartitionStore::open(dir.path().join("0.sqlite")).expect("open");
        let timed = |offset: i64, id: &str, settled_below: i64, keep: u64| {
            message(offset, id, true, settled_below).with_queued(Queued {
                id: Some(id.into()),
                redelivered: true,
                settled_below,
                hold_start: 0,
                keep_ids_for: Some(std::time::Duration::from_secs(keep)),
            })
        };
        let hour = 3_600_000;
        assert_eq!(batch_at(&store, &[timed(0, "a", 0, 3600)], hour), [0]);
        assert_eq!(batch_at(&store, &[timed(1, "b", 1, 3600)], hour + 1), [1]);
        // Everything below 2 was deleted, and a copy of "a" comes: still recognised.
        assert!(batch_at(&store, &[timed(2, "a", 2, 3600)], 2 * hour).is_empty());
        let kept: Vec<(String, i64)> = store.entries(IDS).expect("ids");
        assert_eq!(kept.len(), 2, "{kept:?}");
        // An hour after "a" committed (and before "b" is an hour old): "a" is forgotten.
        assert_eq!(
            batch_at(&store, &[timed(3, "c", 3, 3600)], 2 * hour + 1),
            [3]
        );
        let kept: Vec<(String, i64)> = store.entries(IDS).expect("ids");
        assert_eq!(kept, [("b".to_owned(), 1), ("c".to_owned(), 3)]);
        let batches: Vec<(String, Vec<String>)> = store.entries(BATCHES).expect("batches");
        assert!(batches.is_empty(), "{batches:?}");
    }
}
