//! One SQLite database per partition: keyed state and the partition's next offset, committed
//! with a batch's outbox rows (`outbox`: reading and deleting them) or written by a restore
//! (`restore`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{de::DeserializeOwned, Serialize};

use crate::cache::{CacheBudget, StateCache};
use crate::error::{Error, Result};
use crate::headers::HeaderSink;
use crate::outbox_run::{OutboxRun, Parts, Records};
use crate::reader::{
    decode_entries, query_entries, query_first_in_range, query_next_offset, query_range,
    query_value,
};
use crate::schema;
use crate::slot::decode_bytes;
use crate::wire::{ChangelogEntry, ChangelogPosition};
use crate::write_set::WriteSet;
use crate::write_set::{decode, key_text, with_key, with_key_bytes};

mod outbox;
mod restore;

/// Test builds only: how an interrupted commit ends.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
enum CommitEnd {
    /// The process dies: the caller sees nothing more.
    Crash,
    /// The commit fails with an error and the process goes on.
    Fail,
}

#[cfg(test)]
impl CommitEnd {
    fn result(self) -> rusqlite::Result<Option<i64>> {
        match self {
            Self::Crash => Ok(None),
            Self::Fail => Err(rusqlite::Error::InvalidQuery),
        }
    }
}

const UPSERT_STATE: &str = "INSERT INTO state (store, key, value) VALUES (?1, ?2, ?3) \
     ON CONFLICT (store, key) DO UPDATE SET value = excluded.value";
const DELETE_STATE: &str = "DELETE FROM state WHERE store = ?1 AND key = ?2";
const UPSERT_OFFSET: &str =
    "INSERT INTO offsets (topic, partition, next_offset, updated_at_ms) VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset, \
     updated_at_ms = excluded.updated_at_ms";
const SELECT_GENERATION: &str =
    "SELECT generation FROM rewinds WHERE topic = ?1 AND partition = ?2";
const UPSERT_GENERATION: &str =
    "INSERT INTO rewinds (topic, partition, generation) VALUES (?1, ?2, ?3) \
     ON CONFLICT (topic, partition) DO UPDATE SET generation = excluded.generation";

/// The SQLite store of one partition.
///
/// Reads may come from any thread; the connection sits behind a mutex so that a handler's
/// future holding `&PartitionStore` stays `Send`.
#[derive(Debug)]
pub struct PartitionStore {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// The (topic, partition, epoch) this handle claimed: its commits fail once another
    /// handle claims the partition after it.
    claim: Mutex<Option<(String, i32, i64)>>,
    /// Committed values read or written through this handle (see [`with_cache`](Self::with_cache)).
    cache: Option<Mutex<StateCache>>,
    /// The outbox rows this handle committed and has not handed out yet.
    outbox_tail: Mutex<outbox::OutboxTail>,
    /// Test builds only: abandon the next commit's transaction after this many row writes,
    /// the on-disk effect of a process that dies in the middle of a commit.
    #[cfg(test)]
    crash_after: Mutex<Option<(usize, CommitEnd)>>,
}

impl PartitionStore {
    /// Opens (creating if missing) the store at `path`, creating parent directories.
    ///
    /// A file that is not a weir store, or was written by a newer schema, is an error: state is
    /// never silently reset.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        // Opening switches the file to WAL and may initialise it; SQLite answers "busy" at
        // once (without waiting) in some of those steps while another process does the same.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut pause = std::time::Duration::from_millis(2);
        loop {
            match Self::open_once(path.as_ref()) {
                Err(Error::Open { source, .. })
                    if source.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    fn open_once(path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let open_err = |source| Error::Open {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        // Refuse a foreign or newer file before changing anything in it (reading in one
        // transaction, for a consistent view while another process initialises the file).
        {
            let read = conn.transaction().map_err(open_err)?;
            schema::check_header(&read, &path)?;
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        // WAL + NORMAL is durable against process crashes; a power loss may drop the newest
        // transactions, but state and offset roll back together, so counts stay exact.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        // Check again and initialise in one write transaction, so that two processes opening
        // the same new file never see it half-initialised.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(open_err)?;
        schema::initialise(&tx, &path)?;
        tx.commit().map_err(open_err)?;
        Ok(Self {
            conn: Mutex::new(conn),
            path,
            claim: Mutex::new(None),
            cache: None,
            outbox_tail: Mutex::default(),
            #[cfg(test)]
            crash_after: Mutex::new(None),
        })
    }

    /// Keeps the committed values this handle reads and writes in memory, within `budget`
    /// (shared by the caches of a worker), so that reading them again costs no SQLite query.
    /// Only this handle's own commits update the cache: a file written by another handle at
    /// the same time (a fenced owner) is not seen through it, which is fine because this
    /// handle's commits are then refused anyway.
    #[must_use]
    pub fn with_cache(mut self, budget: Arc<CacheBudget>) -> Self {
        self.cache = Some(Mutex::new(StateCache::new(budget)));
        self
    }

    /// Takes ownership of `topic`/`partition` in this file: bumps its owner epoch and remembers
    /// it. From then on this handle's commits check the epoch in the same transaction and fail
    /// with [`Error::Fenced`] once a later owner has claimed the partition, so a worker that
    /// lost a partition cannot overwrite its new owner's progress. Returns the epoch.
    pub fn claim(&self, topic: &str, partition: i32) -> Result<i64> {
        let mut conn = self.conn();
        let epoch = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let epoch: i64 = tx.query_row(
                "INSERT INTO owners (topic, partition, epoch) VALUES (?1, ?2, 1) \
                 ON CONFLICT (topic, partition) DO UPDATE SET epoch = epoch + 1 RETURNING epoch",
                params![topic, partition],
                |r| r.get(0),
            )?;
            tx.commit()?;
            Ok(epoch)
        })()
        .map_err(|source| self.sqlite_err(source))?;
        *self
            .claim
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((topic.to_owned(), partition, epoch));
        Ok(epoch)
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next offset to process for `topic`/`partition`, if a batch was ever committed.
    pub fn next_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>> {
        query_next_offset(&self.conn(), topic, partition).map_err(|source| self.sqlite_err(source))
    }

    /// Where `topic`/`partition`'s state stands against its changelog: its rewind generation
    /// and next offset, if a batch was ever committed.
    pub fn position(&self, topic: &str, partition: i32) -> Result<Option<ChangelogPosition>> {
        let conn = self.conn();
        let read = || -> rusqlite::Result<Option<ChangelogPosition>> {
            let Some(next_offset) = query_next_offset(&conn, topic, partition)? else {
                return Ok(None);
            };
            Ok(Some(ChangelogPosition {
                generation: query_generation(&conn, topic, partition)?,
                next_offset,
            }))
        };
        read().map_err(|source| self.sqlite_err(source))
    }

    /// Reads `key` from the named `store`.
    pub fn get<K: Serialize + ?Sized, V: DeserializeOwned>(
        &self,
        store: &str,
        key: &K,
    ) -> Result<Option<V>> {
        with_key(store, key, |key| self.get_committed(store, key))
    }

    /// Applies `f` to `key`'s current value as [`get_through`](Self::get_through) sees it and
    /// buffers the result in `pending` (`None` deletes), encoding the key once.
    pub fn update_through<
        K: Serialize + ?Sized,
        V: Serialize + DeserializeOwned + Send + 'static,
    >(
        &self,
        pending: &mut WriteSet,
        store: &'static str,
        key: &K,
        f: impl FnOnce(Option<V>) -> Option<V>,
    ) -> Result<()> {
        with_key_bytes(store, key, |key| {
            let committed = || self.get_committed(store, key_text(store, key)?);
            pending.update_with(store, key, committed, f)
        })
    }

    /// Reads `key` through the batch's `pending` changes first, then the committed state.
    pub fn get_through<K: Serialize + ?Sized, V: DeserializeOwned>(
        &self,
        pending: &WriteSet,
        store: &str,
        key: &K,
    ) -> Result<Option<V>> {
        with_key(store, key, |key| match pending.lookup_slot(store, key) {
            Some(slot) => slot.decode(store),
            None => self.get_committed(store, key),
        })
    }

    /// The JSON value of the JSON `key` in `store`, through the batch's `pending` changes.
    pub fn get_encoded_through(
        &self,
        pending: &WriteSet,
        store: &str,
        key: &str,
    ) -> Result<Option<String>> {
        match pending.lookup_slot(store, key) {
            Some(slot) => slot.to_json(store),
            None => {
                let cached = self.with_cache_locked(|cache| {
                    (cache.get(store, key))
                        .map(|hit| hit.map(|json| String::from_utf8_lossy(json).into_owned()))
                });
                if let Some(Some(hit)) = cached {
                    return Ok(hit);
                }
                query_value(&self.conn(), store, key).map_err(|source| self.sqlite_err(source))
            }
        }
    }

    /// Every committed entry of the named `store`, in key order.
    pub fn entries<K: DeserializeOwned, V: DeserializeOwned>(
        &self,
        store: &str,
    ) -> Result<Vec<(K, V)>> {
        let rows = query_entries(&self.conn(), store).map_err(|source| self.sqlite_err(source))?;
        decode_entries(store, rows)
    }

    /// The entries of `store` whose JSON keys lie in `[from, to)` (compared as text), as this
    /// batch sees them: committed rows with the batch's `pending` changes applied, in key order.
    pub fn range_through(
        &self,
        pending: &WriteSet,
        store: &str,
        from: &str,
        to: &str,
    ) -> Result<Vec<(String, String)>> {
        let rows =
            query_range(&self.conn(), store, from, to).map_err(|source| self.sqlite_err(source))?;
        let mut rows: std::collections::BTreeMap<String, String> = rows.into_iter().collect();
        for (key, change) in pending.iter_store(store) {
            if key >= from && key < to {
                match change.to_json(store)? {
                    Some(v) => rows.insert(key.to_owned(), v),
                    None => rows.remove(key),
                };
            }
        }
        Ok(rows.into_iter().collect())
    }

    /// The committed entry of `store` with the smallest JSON key in `[from, to)`.
    pub fn first_in_range(
        &self,
        store: &str,
        from: &str,
        to: &str,
    ) -> Result<Option<(String, String)>> {
        query_first_in_range(&self.conn(), store, from, to)
            .map_err(|source| self.sqlite_err(source))
    }

    /// Writes the batch's state changes and its next offset in ONE transaction.
    ///
    /// Either all of it is durable afterwards or none of it (on error, or a crash at any point).
    /// Once committed, the batch's emitted records move out of it (to be sent from memory); on
    /// an error it keeps them.
    pub fn commit(
        &self,
        batch: &mut WriteSet,
        topic: &str,
        partition: i32,
        next_offset: i64,
    ) -> Result<()> {
        self.commit_inner(batch, (topic, partition, next_offset), None, None)
    }

    /// [`commit`](Self::commit), also queueing in the same transaction the batch's changelog
    /// entries for `changelog` (its partition `partition`): one per changed key (`None` value:
    /// deleted) and one carrying `next_offset`, so that the store can be rebuilt elsewhere.
    pub fn commit_with_changelog(
        &self,
        batch: &mut WriteSet,
        topic: &str,
        partition: i32,
        next_offset: i64,
        changelog: &str,
    ) -> Result<()> {
        self.commit_inner(
            batch,
            (topic, partition, next_offset),
            Some(changelog),
            None,
        )
    }

    /// Rewinds `topic`/`partition` to `next_offset` (`weir reset`): every key of every store is
    /// deleted and the offset set, in one transaction, under a new rewind generation (above
    /// the current one, and the time in ms, so that it outranks any rewind before it on any
    /// machine). With a `changelog`, a tombstone per key and the new offset marker are queued
    /// under that generation, so restores elsewhere start over empty there too, and a store
    /// left behind on another volume loses to the changelog. Returns the generation.
    pub fn rewind(
        &self,
        topic: &str,
        partition: i32,
        next_offset: i64,
        changelog: Option<&str>,
    ) -> Result<i64> {
        let (keys, current) = {
            let conn = self.conn();
            let read = || -> rusqlite::Result<(Vec<(String, String)>, i64)> {
                let keys = conn
                    .prepare("SELECT store, key FROM state ORDER BY store, key")?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                Ok((keys, query_generation(&conn, topic, partition)?))
            };
            read().map_err(|source| self.sqlite_err(source))?
        };
        let mut emptied = WriteSet::default();
        for (store, key) in &keys {
            emptied.put_encoded(store, key, None)?;
        }
        let generation = (current + 1).max(now_ms());
        self.commit_inner(
            &mut emptied,
            (topic, partition, next_offset),
            changelog,
            Some(generation),
        )?;
        Ok(generation)
    }

    /// Test builds only: the next commit dies (its transaction is abandoned, as by a killed
    /// process) after `rows` row writes.
    #[cfg(test)]
    pub(crate) fn crash_next_commit_after(&self, rows: usize) {
        *self
            .crash_after
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((rows, CommitEnd::Crash));
    }

    /// Test builds only: the next commit fails (an I/O error) after `rows` row writes, and the
    /// process goes on.
    #[cfg(test)]
    pub(crate) fn fail_next_commit_after(&self, rows: usize) {
        *self
            .crash_after
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((rows, CommitEnd::Fail));
    }

    /// Commits `batch` at `(topic, partition, next_offset)`, with its changelog entries when
    /// `changelog` is given, raising the rewind generation to `rewind` when given.
    fn commit_inner(
        &self,
        batch: &mut WriteSet,
        (topic, partition, next_offset): (&str, i32, i64),
        changelog: Option<&str>,
        rewind: Option<i64>,
    ) -> Result<()> {
        batch.settle()?;
        #[cfg(test)]
        let crash_after = self
            .crash_after
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let claimed = self
            .claim
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .filter(|(t, p, _)| t == topic && *p == partition)
            .map(|(_, _, epoch)| *epoch);
        let mut conn = self.conn();
        // Ok(Some(current epoch)) when a later owner claimed the partition.
        let mut run = |conn: &mut Connection| -> rusqlite::Result<Option<i64>> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // The outbox records (changelog entries, the batch's emits, the offset marker, in
            // that order), and the runs written of them, for the outbox's tail in memory.
            let mut records = Records::default();
            let mut runs = Vec::new();
            if let Some(mine) = claimed {
                let current: i64 = tx
                    .query_row(
                        "SELECT epoch FROM owners WHERE topic = ?1 AND partition = ?2",
                        params![topic, partition],
                        |r| r.get(0),
                    )
                    .optional()?
                    .unwrap_or(0);
                if current != mine {
                    return Ok(Some(current));
                }
            }
            {
                let mut upsert = tx.prepare_cached(UPSERT_STATE)?;
                let mut delete = tx.prepare_cached(DELETE_STATE)?;
                #[cfg_attr(not(test), allow(unused_variables))]
                for (written, (store, key, value)) in batch.iter().enumerate() {
                    #[cfg(test)]
                    if let Some((rows, end)) = crash_after {
                        if rows == written {
                            // Dropping `tx` rolls back, as a dead process or a failed write
                            // would.
                            return end.result();
                        }
                    }
                    match value {
                        Some(value) => upsert.execute(params![store, key, value])?,
                        None => delete.execute(params![store, key])?,
                    };
                }
                #[cfg(test)]
                if let Some((_, end)) = crash_after {
                    return end.result();
                }
                // Order matters to restores elsewhere: the batch's offset marker goes last, and
                // the outbox sends it only once every record before it is acknowledged, so a
                // restored batch never lacks its emitted records (they are sent at least once
                // even if this machine is lost).
                if let Some(generation) = rewind {
                    tx.prepare_cached(UPSERT_GENERATION)?
                        .execute(params![topic, partition, generation])?;
                }
                if let Some(changelog) = changelog {
                    let generation = match rewind {
                        Some(g) => g,
                        None => query_generation(&tx, topic, partition)?,
                    };
                    let source = ChangelogPosition {
                        generation,
                        next_offset,
                    }
                    .headers();
                    let entry = |records: &mut Records, key: &[u8], value: Option<&[u8]>| {
                        let parts = Parts {
                            topic: changelog,
                            partition: Some(partition),
                            key: Some(key),
                            value,
                            timestamp: None,
                        };
                        records.push_with(parts, |h| {
                            source.iter().for_each(|(k, v)| h.push(k, v));
                        });
                    };
                    for (store, key, value) in batch.iter() {
                        let key = ChangelogEntry::key(store, key);
                        entry(&mut records, &key, value.map(str::as_bytes));
                    }
                    records.append(batch.outbox_records());
                    let (key, value) = ChangelogEntry::offset_marker(next_offset);
                    entry(&mut records, &key, Some(&value));
                } else {
                    records.append(batch.outbox_records());
                }
                let mut insert = tx.prepare_cached(schema::INSERT_OUTBOX_RUN)?;
                let written = std::mem::take(&mut records)
                    .into_runs()
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
                for (bytes, count) in written {
                    insert.execute(params![count as i64, &bytes[..]])?;
                    let id = tx.last_insert_rowid();
                    runs.push(OutboxRun { id, count, bytes });
                }
                tx.prepare_cached(UPSERT_OFFSET)?.execute(params![
                    topic,
                    partition,
                    next_offset,
                    now_ms()
                ])?;
            }
            tx.commit()?;
            batch.clear_outbox();
            self.outbox_tail().committed(runs);
            // Committed: the cache learns the batch's values (never before, so a failed or
            // abandoned transaction leaves it holding committed state only).
            self.with_cache_locked(|cache| {
                for (store, key, value) in batch.iter() {
                    cache.insert(store, key, value);
                }
            });
            Ok(None)
        };
        match run(&mut conn).map_err(|source| self.sqlite_err(source))? {
            None => Ok(()),
            Some(current) => Err(Error::Fenced {
                path: self.path.clone(),
                topic: topic.to_owned(),
                partition,
                claimed: claimed.unwrap_or(0),
                current,
            }),
        }
    }

    /// The committed value of `key` (JSON), from the cache or SQLite.
    fn get_committed<V: DeserializeOwned>(&self, store: &str, key: &str) -> Result<Option<V>> {
        let cached = self.with_cache_locked(|cache| {
            cache
                .get(store, key)
                .map(|hit| hit.map(|json| decode_bytes(store, json)).transpose())
        });
        if let Some(Some(hit)) = cached {
            return hit;
        }
        let value =
            query_value(&self.conn(), store, key).map_err(|source| self.sqlite_err(source))?;
        self.with_cache_locked(|cache| cache.insert(store, key, value.as_deref()));
        value.map(|json| decode(store, &json)).transpose()
    }

    /// Runs `f` on the cache, if this handle has one.
    fn with_cache_locked<T>(&self, f: impl FnOnce(&mut StateCache) -> T) -> Option<T> {
        let cache = self.cache.as_ref()?;
        // The cache holds plain data; a panic elsewhere cannot leave it half-updated in a way
        // that matters, as every entry is a committed value.
        let mut cache = cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(f(&mut cache))
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave the connection half-written: SQLite rolls
        // back an unfinished transaction, so a poisoned lock is safe to take over.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn sqlite_err(&self, source: rusqlite::Error) -> Error {
        Error::Sqlite {
            path: self.path.clone(),
            source,
        }
    }
}

/// `topic`/`partition`'s rewind generation (0 until its first rewind).
fn query_generation(conn: &Connection, topic: &str, partition: i32) -> rusqlite::Result<i64> {
    Ok(conn
        .prepare_cached(SELECT_GENERATION)?
        .query_row(params![topic, partition], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

impl AsRef<PartitionStore> for PartitionStore {
    fn as_ref(&self) -> &PartitionStore {
        self
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
