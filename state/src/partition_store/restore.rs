//! Writing state that did not come from a batch: a restore's entries from the changelog, and
//! state that follows a topic of its own (tables).

use rusqlite::{params, Connection, TransactionBehavior};

use super::{now_ms, PartitionStore, DELETE_STATE, UPSERT_GENERATION, UPSERT_OFFSET, UPSERT_STATE};
use crate::cache::StateCache;
use crate::error::Result;
use crate::wire::ChangelogPosition;

impl PartitionStore {
    /// Empties the store for a restore: state, outbox and `topic`/`partition`'s offset go, in
    /// one transaction (the owner epoch stays).
    pub fn reset(&self, topic: &str, partition: i32) -> Result<()> {
        self.with_cache_locked(StateCache::clear);
        let mut conn = self.conn();
        let run = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute("DELETE FROM state", [])?;
            tx.execute("DELETE FROM outbox_runs", [])?;
            tx.execute(
                "DELETE FROM offsets WHERE topic = ?1 AND partition = ?2",
                params![topic, partition],
            )?;
            tx.commit()
        };
        run(&mut conn).map_err(|source| self.sqlite_err(source))?;
        self.outbox_tail().forget();
        Ok(())
    }

    /// Writes restored entries `(store, JSON key, JSON value or None to delete)` in one
    /// transaction, and the position (offset and rewind generation) when `end` is given (the
    /// end of a restore).
    pub fn apply_restored(
        &self,
        entries: &[(String, String, Option<String>)],
        topic: &str,
        partition: i32,
        end: Option<ChangelogPosition>,
    ) -> Result<()> {
        self.with_cache_locked(StateCache::clear);
        self.write_entries(entries, end.map(|p| (topic, partition, p)))
    }

    /// Writes entries `(store, JSON key, JSON value or None to delete)` in one transaction
    /// of their own: not with a batch, not to the changelog, no offset. For state that follows
    /// another topic by itself (a table, which keeps its position among its own entries): a
    /// restore from the changelog empties it, and it is read again from its topic.
    pub fn apply_unlogged(&self, entries: &[(String, String, Option<String>)]) -> Result<()> {
        self.write_entries(entries, None)?;
        self.with_cache_locked(|cache| {
            for (store, key, value) in entries {
                cache.insert(store, key, value.as_deref());
            }
        });
        Ok(())
    }

    fn write_entries(
        &self,
        entries: &[(String, String, Option<String>)],
        offset: Option<(&str, i32, ChangelogPosition)>,
    ) -> Result<()> {
        let mut conn = self.conn();
        let run = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut upsert = tx.prepare_cached(UPSERT_STATE)?;
                let mut delete = tx.prepare_cached(DELETE_STATE)?;
                for (store, key, value) in entries {
                    match value {
                        Some(v) => upsert.execute(params![store, key, v])?,
                        None => delete.execute(params![store, key])?,
                    };
                }
                if let Some((topic, partition, at)) = offset {
                    tx.prepare_cached(UPSERT_OFFSET)?.execute(params![
                        topic,
                        partition,
                        at.next_offset,
                        now_ms()
                    ])?;
                    tx.prepare_cached(UPSERT_GENERATION)?.execute(params![
                        topic,
                        partition,
                        at.generation
                    ])?;
                }
            }
            tx.commit()
        };
        run(&mut conn).map_err(|source| self.sqlite_err(source))
    }
}
