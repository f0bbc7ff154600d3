//! Read-only access to a partition store, for reports, tools and tests: it never creates,
//! migrates or writes a file, and reads safely beside a worker that writes it (WAL).

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::schema::check_header;
use crate::write_set::{decode, encode};

/// Where a store stands for its partition (see [`StoreReader::progress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The next offset to process, once a batch committed.
    pub next_offset: Option<i64>,
    /// When the last batch committed, ms since the Unix epoch.
    pub committed_at_ms: Option<i64>,
    /// The epoch of the partition's last owner (each owner claims a higher one).
    pub owner_epoch: Option<i64>,
    /// Records committed and waiting to be produced (emitted records, changelog entries).
    pub outbox: u64,
}

/// A partition store opened for reading.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("0.sqlite");
/// # let store = weir_state::PartitionStore::open(&path)?;
/// # let mut batch = weir_state::WriteSet::default();
/// # batch.put("totals", &"alice", &42u64)?;
/// # store.commit(&mut batch, "orders", 0, 7)?;
/// let reader = weir_state::StoreReader::open(&path)?;
/// assert_eq!(reader.get::<_, u64>("totals", &"alice")?, Some(42));
/// assert_eq!(reader.next_offset("orders", 0)?, Some(7));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct StoreReader {
    conn: Connection,
    path: PathBuf,
}

impl StoreReader {
    /// Opens the store at `path` read-only. A missing file, a file that is not a weir store or
    /// one of a newer schema is an error naming the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let open_err = |source| Error::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        if check_header(&conn, &path)? {
            return Err(Error::Foreign { path, found: 0 });
        }
        Ok(Self { conn, path })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next offset to process for `topic`/`partition`, if a batch was ever committed.
    pub fn next_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>> {
        query_next_offset(&self.conn, topic, partition).map_err(|source| self.err(source))
    }

    /// The committed value of `key` in the named `store`.
    pub fn get<K: Serialize + ?Sized, V: DeserializeOwned>(
        &self,
        store: &str,
        key: &K,
    ) -> Result<Option<V>> {
        let key = encode(store, key)?;
        query_value(&self.conn, store, &key)
            .map_err(|source| self.err(source))?
            .map(|j| decode(store, &j))
            .transpose()
    }

    /// Every committed entry of the named `store`, in key order.
    pub fn entries<K: DeserializeOwned, V: DeserializeOwned>(
        &self,
        store: &str,
    ) -> Result<Vec<(K, V)>> {
        decode_entries(
            store,
            query_entries(&self.conn, store).map_err(|source| self.err(source))?,
        )
    }

    /// The names of the stores with at least one entry, sorted.
    pub fn stores(&self) -> Result<Vec<String>> {
        self.conn
            .prepare_cached("SELECT DISTINCT store FROM state ORDER BY store")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(|source| self.err(source))
    }

    /// Entries of `store` (every store when `None`) as stored, `(store, JSON key, JSON value)`,
    /// in store and key order: up to `limit` of them after `after` (a `(store, key)` returned
    /// before), and only keys starting with `prefix` (a prefix of the JSON text). For paging
    /// through large stores without holding them in memory.
    pub fn scan(
        &self,
        store: Option<&str>,
        prefix: &str,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, String, String)>> {
        let (after_store, after_key) = after.unwrap_or(("", ""));
        // Keys starting with `prefix`: `[prefix, prefix + U+10FFFF)`.
        let end = format!("{prefix}\u{10FFFF}");
        self.conn
            .prepare_cached(
                "SELECT store, key, value FROM state \
                 WHERE (?1 IS NULL OR store = ?1) AND key >= ?2 AND key < ?3 \
                 AND (store > ?4 OR (store = ?4 AND key > ?5)) \
                 ORDER BY store, key LIMIT ?6",
            )
            .and_then(|mut s| {
                s.query_map(
                    params![store, prefix, end, after_store, after_key, limit as i64],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?
                .collect()
            })
            .map_err(|source| self.err(source))
    }

    /// Entries of `store` (every store when `None`).
    pub fn count(&self, store: Option<&str>) -> Result<u64> {
        self.conn
            .prepare_cached("SELECT COUNT(*) FROM state WHERE ?1 IS NULL OR store = ?1")
            .and_then(|mut s| s.query_row(params![store], |r| r.get::<_, i64>(0)))
            .map(|n| n as u64)
            .map_err(|source| self.err(source))
    }

    /// Where the store stands for `topic`/`partition`: next offset, the time of the last
    /// commit, the owner epoch, and the records waiting in the outbox.
    pub fn progress(&self, topic: &str, partition: i32) -> Result<Progress> {
        let read = || -> rusqlite::Result<Progress> {
            let offset: Option<(i64, i64)> = self
                .conn
                .prepare_cached(
                    "SELECT next_offset, updated_at_ms FROM offsets \
                     WHERE topic = ?1 AND partition = ?2",
                )?
                .query_row(params![topic, partition], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let epoch: Option<i64> = self
                .conn
                .prepare_cached("SELECT epoch FROM owners WHERE topic = ?1 AND partition = ?2")?
                .query_row(params![topic, partition], |r| r.get(0))
                .optional()?;
            // A file of version 5 or older (read-only here, so not brought up to date) has
            // a row per record in `outbox`.
            let version: i32 = self
                .conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))?;
            let count = match version {
                ..3 => "SELECT 0",
                3..6 => "SELECT COUNT(*) FROM outbox",
                _ => "SELECT COALESCE(SUM(count), 0) FROM outbox_runs",
            };
            let outbox: i64 = self
                .conn
                .prepare_cached(count)?
                .query_row([], |r| r.get(0))?;
            Ok(Progress {
                next_offset: offset.map(|o| o.0),
                committed_at_ms: offset.map(|o| o.1),
                owner_epoch: epoch,
                outbox: outbox as u64,
            })
        };
        read().map_err(|source| self.err(source))
    }

    fn err(&self, source: rusqlite::Error) -> Error {
        Error::Sqlite {
            path: self.path.clone(),
            source,
        }
    }
}

// The reads a store and a reader share.

pub(crate) fn query_next_offset(
    conn: &Connection,
    topic: &str,
    partition: i32,
) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT next_offset FROM offsets WHERE topic = ?1 AND partition = ?2")?
        .query_row(params![topic, partition], |r| r.get(0))
        .optional()
}

/// The JSON value of the JSON `key` in `store`.
pub(crate) fn query_value(
    conn: &Connection,
    store: &str,
    key: &str,
) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT value FROM state WHERE store = ?1 AND key = ?2")?
        .query_row(params![store, key], |r| r.get(0))
        .optional()
}

/// Every (JSON key, JSON value) of `store`, in key order.
pub(crate) fn query_entries(
    conn: &Connection,
    store: &str,
) -> rusqlite::Result<Vec<(String, String)>> {
    conn.prepare_cached("SELECT key, value FROM state WHERE store = ?1 ORDER BY key")?
        .query_map([store], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

/// Every (JSON key, JSON value) of `store` with keys in `[from, to)`, in key order.
pub(crate) fn query_range(
    conn: &Connection,
    store: &str,
    from: &str,
    to: &str,
) -> rusqlite::Result<Vec<(String, String)>> {
    conn.prepare_cached(
        "SELECT key, value FROM state WHERE store = ?1 AND key >= ?2 AND key < ?3 ORDER BY key",
    )?
    .query_map(params![store, from, to], |r| Ok((r.get(0)?, r.get(1)?)))?
    .collect()
}

/// The first (JSON key, JSON value) of `store` with a key in `[from, to)`.
pub(crate) fn query_first_in_range(
    conn: &Connection,
    store: &str,
    from: &str,
    to: &str,
) -> rusqlite::Result<Option<(String, String)>> {
    conn.prepare_cached(
        "SELECT key, value FROM state WHERE store = ?1 AND key >= ?2 AND key < ?3 \
         ORDER BY key LIMIT 1",
    )?
    .query_row(params![store, from, to], |r| Ok((r.get(0)?, r.get(1)?)))
    .optional()
}

pub(crate) fn decode_entries<K: DeserializeOwned, V: DeserializeOwned>(
    store: &str,
    rows: Vec<(String, String)>,
) -> Result<Vec<(K, V)>> {
    rows.iter()
        .map(|(k, v)| Ok((decode(store, k)?, decode(store, v)?)))
        .collect()
}
