//! Read-only access to a partition store, for reports, tools and tests: it never creates,
//! migrates or writes a file, and reads safely beside a worker that writes it (WAL).

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::partition_store::check_header;
use crate::write_set::{decode, encode};
use crate::{Error, Result};

/// A partition store opened for reading.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("0.sqlite");
/// # let store = weir_state::PartitionStore::open(&path)?;
/// # let mut batch = weir_state::WriteSet::default();
/// # batch.put("totals", &"alice", &42u64)?;
/// # store.commit(&batch, "orders", 0, 7)?;
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
