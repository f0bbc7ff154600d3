//! The outbox rows a committed batch left: read oldest first, deleted once acknowledged.

use rusqlite::{Connection, TransactionBehavior};

use super::PartitionStore;
use crate::error::Result;
use crate::write_set::{decode, OutboxRecord};

impl PartitionStore {
    /// Up to `limit` records waiting in the outbox, oldest first, with their row ids.
    pub fn pending_outbox(&self, limit: usize) -> Result<Vec<(i64, OutboxRecord)>> {
        let rows: Vec<(i64, OutboxRecord, String)> = self
            .conn()
            .prepare_cached(
                "SELECT id, topic, partition, key, value, headers, timestamp_ms FROM outbox \
                 ORDER BY id LIMIT ?1",
            )
            .and_then(|mut s| {
                s.query_map([limit as i64], |r| {
                    Ok((
                        r.get(0)?,
                        OutboxRecord {
                            topic: r.get(1)?,
                            partition: r.get(2)?,
                            key: r.get(3)?,
                            value: r.get(4)?,
                            headers: Vec::new(),
                            timestamp: r.get(6)?,
                        },
                        r.get::<_, String>(5)?,
                    ))
                })?
                .collect()
            })
            .map_err(|source| self.sqlite_err(source))?;
        rows.into_iter()
            .map(|(id, mut rec, headers)| {
                rec.headers = decode("outbox", &headers)?;
                Ok((id, rec))
            })
            .collect()
    }

    /// Deletes acknowledged outbox rows.
    pub fn delete_outbox(&self, ids: &[i64]) -> Result<()> {
        let mut conn = self.conn();
        let run = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
                for id in ids {
                    delete.execute([id])?;
                }
            }
            tx.commit()
        };
        run(&mut conn).map_err(|source| self.sqlite_err(source))
    }
}
