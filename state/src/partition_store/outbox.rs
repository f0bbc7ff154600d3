//! The outbox records a committed batch left (a run of them per commit, see `outbox_run.rs`):
//! read oldest first, deleted once acknowledged.
//!
//! The runs this handle committed stay in memory too ([`OutboxTail`]), so that sending them
//! needs no read back from SQLite (nor decoding): [`take_outbox`] hands them out from memory
//! once the table holds nothing older, and reads SQLite only for runs it cannot vouch for
//! (written before this handle opened the file, or handed out and never acknowledged).
//!
//! [`take_outbox`]: PartitionStore::take_outbox

use std::collections::VecDeque;

use rusqlite::{Connection, TransactionBehavior};

use super::PartitionStore;
use crate::error::Result;
use crate::outbox_run::{run_of, OutboxRecord, OutboxRun, RecordView};

/// Records kept in memory at most; past it the tail is dropped and the records are read from
/// SQLite (an outbox that cannot drain must not grow the heap without bound).
const TAIL_LIMIT: usize = 100_000;

/// The newest runs this handle committed, in id order.
#[derive(Debug, Default)]
pub(super) struct OutboxTail {
    runs: VecDeque<OutboxRun>,
    /// The table holds no run older than `runs` but those handed out and deleted since: every
    /// run of the table is in `runs`. False at first (runs may wait from an earlier run), after
    /// a hand-out that was never acknowledged, and after the tail overflowed.
    whole: bool,
    /// The last record id handed out and not yet deleted.
    handed_out: Option<i64>,
}

impl OutboxTail {
    /// Appends runs a commit just wrote (ids ascending, above every run before).
    pub(super) fn committed(&mut self, runs: Vec<OutboxRun>) {
        let held: usize = (self.runs.iter().chain(&runs)).map(OutboxRun::len).sum();
        if held > TAIL_LIMIT {
            self.runs.clear();
            self.whole = false;
            return;
        }
        self.runs.extend(runs);
    }

    /// `runs` topped up from the tail's front with whole runs until they hold `limit` records
    /// or the tail is empty, noted as handed out.
    fn hand_out(&mut self, mut runs: Vec<OutboxRun>, limit: usize) -> Vec<OutboxRun> {
        let mut held: usize = runs.iter().map(OutboxRun::len).sum();
        while held < limit {
            let Some(run) = self.runs.pop_front() else {
                break;
            };
            held += run.len();
            runs.push(run);
        }
        self.handed_out = last_id(&runs);
        runs
    }

    /// Forgets the runs (the table was emptied).
    pub(super) fn forget(&mut self) {
        *self = Self::default();
    }
}

/// The id of the last record of `runs`.
fn last_id(runs: &[OutboxRun]) -> Option<i64> {
    runs.iter().rev().find_map(|run| run.ids().last())
}

/// The records of `runs`, owned, with their ids.
fn owned(runs: &[OutboxRun]) -> Result<Vec<(i64, OutboxRecord)>> {
    let mut records = Vec::new();
    for run in runs {
        let read = run.records()?;
        records.extend(run.ids().zip(read.iter().map(RecordView::to_record)));
    }
    Ok(records)
}

impl PartitionStore {
    /// Hands out the outbox's oldest runs (a commit's records each), until they hold `limit`
    /// records (or none is left): from memory when the table holds nothing older, else from
    /// SQLite. Delete their records with [`delete_outbox`](Self::delete_outbox) once
    /// acknowledged; records handed out and not deleted by the next call are read again from
    /// SQLite (a failed or abandoned send loses nothing).
    pub fn take_outbox_runs(&self, limit: usize) -> Result<Vec<OutboxRun>> {
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
        let mut runs = Vec::new();
        if !tail.whole {
            let below = tail.runs.front().map_or(i64::MAX, |r| r.id);
            let read_all;
            (runs, read_all) = self.outbox_runs_below(&conn, below, limit)?;
            tail.whole = read_all;
        }
        if tail.whole {
            return Ok(tail.hand_out(runs, limit));
        }
        tail.handed_out = last_id(&runs);
        Ok(runs)
    }

    /// [`take_outbox_runs`](Self::take_outbox_runs), as owned records with their ids.
    pub fn take_outbox(&self, limit: usize) -> Result<Vec<(i64, OutboxRecord)>> {
        owned(&self.take_outbox_runs(limit)?)
    }

    pub(super) fn outbox_tail(&self) -> std::sync::MutexGuard<'_, OutboxTail> {
        self.outbox_tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The oldest records waiting in the outbox, with their ids: whole commits until there are
    /// `limit`.
    pub fn pending_outbox(&self, limit: usize) -> Result<Vec<(i64, OutboxRecord)>> {
        owned(&self.outbox_runs_below(&self.conn(), i64::MAX, limit)?.0)
    }

    /// The oldest runs with ids below `below`, until they hold `limit` records; and whether
    /// that read every such run.
    fn outbox_runs_below(
        &self,
        conn: &Connection,
        below: i64,
        limit: usize,
    ) -> Result<(Vec<OutboxRun>, bool)> {
        let read = || -> rusqlite::Result<(Vec<OutboxRun>, bool)> {
            let mut select = conn.prepare_cached(
                "SELECT id, count, records FROM outbox_runs WHERE id < ?1 ORDER BY id",
            )?;
            let mut rows = select.query([below])?;
            let (mut runs, mut held) = (Vec::new(), 0);
            while held < limit {
                let Some(row) = rows.next()? else {
                    return Ok((runs, true));
                };
                let count: i64 = row.get(1)?;
                let run = OutboxRun {
                    id: row.get(0)?,
                    count: usize::try_from(count).unwrap_or(0),
                    bytes: row.get(2)?,
                };
                held += run.len();
                runs.push(run);
            }
            Ok((runs, rows.next()?.is_none()))
        };
        read().map_err(|source| self.sqlite_err(source))
    }

    /// Deletes acknowledged outbox records (`ids` ascending, as handed out): the runs they
    /// fill, a run of consecutive ones in one statement. A run of which only some records are
    /// given stays (to be sent again: at least once).
    pub fn delete_outbox(&self, ids: &[i64]) -> Result<()> {
        // Each run given, with how many of its records.
        let mut given: Vec<(i64, i64)> = Vec::new();
        for &id in ids {
            match given.last_mut() {
                Some((run, n)) if *run == run_of(id) => *n += 1,
                _ => given.push((run_of(id), 1)),
            }
        }
        let (Some(&(first, _)), Some(&(last, _))) = (given.first(), given.last()) else {
            return Ok(());
        };
        let mut conn = self.conn();
        let run = |conn: &mut Connection| -> rusqlite::Result<Vec<i64>> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let stored: Vec<(i64, i64)> = tx
                .prepare_cached("SELECT id, count FROM outbox_runs WHERE id BETWEEN ?1 AND ?2")?
                .query_map([first, last], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let filled: Vec<i64> = given
                .iter()
                .filter(|given| stored.contains(given))
                .map(|(run, _)| *run)
                .collect();
            if filled.len() == stored.len() && filled.len() as i64 == last - first + 1 {
                tx.prepare_cached("DELETE FROM outbox_runs WHERE id BETWEEN ?1 AND ?2")?
                    .execute([first, last])?;
            } else {
                let mut delete = tx.prepare_cached("DELETE FROM outbox_runs WHERE id = ?1")?;
                for id in &filled {
                    delete.execute([id])?;
                }
            }
            tx.commit()?;
            Ok(filled)
        };
        let deleted = run(&mut conn).map_err(|source| self.sqlite_err(source))?;
        let mut tail = self.outbox_tail();
        let all = deleted.len() == given.len();
        if all && tail.handed_out.is_some_and(|id| ids.last() == Some(&id)) {
            tail.handed_out = None;
        }
        // (Runs read with `pending_outbox` may still be in memory.)
        while let Some(run) = tail.runs.front() {
            if deleted.binary_search(&run.id).is_err() {
                break;
            }
            tail.runs.pop_front();
        }
        Ok(())
    }
}
