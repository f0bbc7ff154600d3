//! The outbox rows a committed batch left: read oldest first, deleted once acknowledged.
//!
//! The rows this handle committed stay in memory too ([`OutboxTail`]), so that sending them
//! needs no read back from SQLite (nor decoding their headers): [`take_outbox`] hands them
//! out from memory once the table holds nothing older, and reads SQLite only for rows it
//! cannot vouch for (written before this handle opened the file, or handed out and never
//! acknowledged).
//!
//! [`take_outbox`]: PartitionStore::take_outbox

use std::collections::VecDeque;

use rusqlite::types::{Type, ValueRef};
use rusqlite::{Connection, TransactionBehavior};

use super::PartitionStore;
use crate::error::Result;
use crate::headers::Headers;
use crate::write_set::{decode, OutboxRecord};

/// Rows kept in memory at most; past it the tail is dropped and the rows are read from SQLite
/// (an outbox that cannot drain must not grow the heap without bound).
const TAIL_LIMIT: usize = 100_000;

/// The newest outbox rows this handle committed, in id order.
#[derive(Debug, Default)]
pub(super) struct OutboxTail {
    rows: VecDeque<(i64, OutboxRecord)>,
    /// The table holds no row older than `rows` but those handed out and deleted since: every
    /// row of the table is in `rows`. False at first (rows may wait from an earlier run), after
    /// a hand-out that was never acknowledged, and after the tail overflowed.
    whole: bool,
    /// The last id handed out and not yet deleted.
    handed_out: Option<i64>,
}

impl OutboxTail {
    /// Appends rows a commit just wrote (ids ascending, above every row before).
    pub(super) fn committed(&mut self, rows: Vec<(i64, OutboxRecord)>) {
        if self.rows.len() + rows.len() > TAIL_LIMIT {
            self.rows.clear();
            self.whole = false;
            return;
        }
        self.rows.extend(rows);
    }

    /// `rows` topped up to `limit` from the tail's front, noted as handed out.
    fn hand_out(
        &mut self,
        mut rows: Vec<(i64, OutboxRecord)>,
        limit: usize,
    ) -> Vec<(i64, OutboxRecord)> {
        let n = limit.saturating_sub(rows.len()).min(self.rows.len());
        rows.extend(self.rows.drain(..n));
        self.handed_out = rows.last().map(|(id, _)| *id);
        rows
    }

    /// Forgets the rows (the table was emptied).
    pub(super) fn forget(&mut self) {
        *self = Self::default();
    }
}

impl PartitionStore {
    /// Hands out up to `limit` rows of the outbox, oldest first, with their ids: from memory
    /// when the table holds nothing older, else from SQLite. Delete them with
    /// [`delete_outbox`](Self::delete_outbox) once acknowledged; rows handed out and not
    /// deleted by the next call are read again from SQLite (a failed or abandoned send loses
    /// nothing).
    pub fn take_outbox(&self, limit: usize) -> Result<Vec<(i64, OutboxRecord)>> {
        {
            let mut tail = self.outbox_tail();
            if tail.handed_out.take().is_some() {
                tail.whole = false;
            }
            if tail.whole {
                // From memory alone, without waiting for a commit that holds the connection.
                return Ok(tail.hand_out(Vec::new(), limit));
            }
        }
        // The connection before the tail, as a commit takes them: a hand-out and a commit at
        // once (a batch commits while the one before is sent) must not wait on each other.
        let conn = self.conn();
        let mut tail = self.outbox_tail();
        let mut rows = Vec::new();
        if !tail.whole {
            let below = tail.rows.front().map_or(i64::MAX, |(id, _)| *id);
            rows = self.outbox_rows_below(&conn, below, limit)?;
            // Fewer than asked: every older row is handed out now.
            tail.whole = rows.len() < limit;
        }
        if tail.whole {
            return Ok(tail.hand_out(rows, limit));
        }
        tail.handed_out = rows.last().map(|(id, _)| *id);
        Ok(rows)
    }

    pub(super) fn outbox_tail(&self) -> std::sync::MutexGuard<'_, OutboxTail> {
        self.outbox_tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Up to `limit` records waiting in the outbox, oldest first, with their row ids.
    pub fn pending_outbox(&self, limit: usize) -> Result<Vec<(i64, OutboxRecord)>> {
        self.outbox_rows_below(&self.conn(), i64::MAX, limit)
    }

    /// Up to `limit` rows of the table with ids below `below`, oldest first.
    fn outbox_rows_below(
        &self,
        conn: &Connection,
        below: i64,
        limit: usize,
    ) -> Result<Vec<(i64, OutboxRecord)>> {
        // Headers: in their binary form, or kept as the JSON of an older row.
        let rows: Vec<(i64, OutboxRecord, Option<String>)> = conn
            .prepare_cached(
                "SELECT id, topic, partition, key, value, headers, timestamp_ms FROM outbox \
                 WHERE id < ?1 ORDER BY id LIMIT ?2",
            )
            .and_then(|mut s| {
                s.query_map([below, limit as i64], |r| {
                    let (headers, json) = match r.get_ref(5)? {
                        ValueRef::Blob(b) => (
                            Headers::from_bytes(b.to_vec()).map_err(|e| {
                                rusqlite::Error::FromSqlConversionFailure(5, Type::Blob, e.into())
                            })?,
                            None,
                        ),
                        other => (Headers::default(), Some(other.as_str()?.to_owned())),
                    };
                    Ok((
                        r.get(0)?,
                        OutboxRecord {
                            topic: r.get(1)?,
                            partition: r.get(2)?,
                            key: r.get(3)?,
                            value: r.get(4)?,
                            headers,
                            timestamp: r.get(6)?,
                        },
                        json,
                    ))
                })?
                .collect()
            })
            .map_err(|source| self.sqlite_err(source))?;
        rows.into_iter()
            .map(|(id, mut rec, json)| {
                if let Some(json) = json {
                    rec.headers = decode::<Vec<(String, Vec<u8>)>>("outbox", &json)?
                        .into_iter()
                        .collect();
                }
                Ok((id, rec))
            })
            .collect()
    }

    /// Deletes acknowledged outbox rows (`ids` ascending, as handed out): a run of
    /// consecutive ids in one statement.
    pub fn delete_outbox(&self, ids: &[i64]) -> Result<()> {
        let (Some(&first), Some(&last)) = (ids.first(), ids.last()) else {
            return Ok(());
        };
        let consecutive = last - first + 1 == ids.len() as i64;
        let mut conn = self.conn();
        let run = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if consecutive {
                tx.prepare_cached("DELETE FROM outbox WHERE id BETWEEN ?1 AND ?2")?
                    .execute([first, last])?;
            } else {
                let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
                for id in ids {
                    delete.execute([id])?;
                }
            }
            tx.commit()
        };
        run(&mut conn).map_err(|source| self.sqlite_err(source))?;
        let mut tail = self.outbox_tail();
        if tail.handed_out == Some(last) {
            tail.handed_out = None;
        }
        // (Rows read with `pending_outbox` may still be in memory.)
        while tail
            .rows
            .front()
            .is_some_and(|(id, _)| (first..=last).contains(id))
        {
            tail.rows.pop_front();
        }
        Ok(())
    }
}
