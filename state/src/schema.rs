//! The SQLite layout of a partition store: its tables, its version, and how a file is checked
//! and brought up to this build's version.

use std::path::Path;

use rusqlite::types::{Type, ValueRef};
use rusqlite::Error::FromSqlConversionFailure;
use rusqlite::{params, Connection, Transaction};

use crate::error::{Error, Result};
use crate::headers::Headers;
use crate::outbox_run::OutboxRecord;
use crate::outbox_run::{in_form_2, Records};
use crate::write_set::decode;

/// `PRAGMA application_id` of every weir store: ASCII "weir".
const APPLICATION_ID: i32 = 0x7765_6972;

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i32 = 7;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS state (
    store TEXT NOT NULL,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (store, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offsets (
    topic         TEXT    NOT NULL,
    partition     INTEGER NOT NULL,
    next_offset   INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
-- Version 2: the owner epoch of the partition, bumped by every worker that takes it over.
CREATE TABLE IF NOT EXISTS owners (
    topic     TEXT    NOT NULL,
    partition INTEGER NOT NULL,
    epoch     INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
-- Version 4: the rewind generation of a partition's state (no row: 0), raised by every rewind
-- (`weir reset`) and carried on its changelog entries.
CREATE TABLE IF NOT EXISTS rewinds (
    topic      TEXT    NOT NULL,
    partition  INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
-- Version 6: the records a commit left to send, in order, in one row (more for a very large
-- commit) in the form `outbox_run.rs` writes; deleted once the broker acknowledged them all.
-- It replaces the table `outbox` of versions 3 to 5 (a row per record), whose rows move into
-- one run when a file of those versions is opened. Version 7 writes runs in a shorter form
-- (form 2); the runs of a version 6 file (form 1) are rewritten in it when it is opened.
CREATE TABLE IF NOT EXISTS outbox_runs (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    count   INTEGER NOT NULL,
    records BLOB    NOT NULL
);
";

/// Writes a run of outbox records (its count and its records).
pub(crate) const INSERT_OUTBOX_RUN: &str =
    "INSERT INTO outbox_runs (count, records) VALUES (?1, ?2)";

/// Makes the file behind `tx` a store of this build's schema: a new file gets every table, an
/// older one what later versions added; a foreign or newer file is refused.
pub(crate) fn initialise(tx: &Transaction<'_>, path: &Path) -> Result<()> {
    let open_err = |source| Error::Open {
        path: path.to_path_buf(),
        source,
    };
    let version: i32 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(open_err)?;
    if check_header(tx, path)? {
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(open_err)?;
    }
    if version < SCHEMA_VERSION {
        // A new file, or an older schema: every table is `IF NOT EXISTS`, so this adds what
        // later versions brought and keeps the rest; columns added to tables of earlier
        // versions follow.
        tx.execute_batch(SCHEMA).map_err(open_err)?;
        if (3..6).contains(&version) {
            move_outbox_rows(tx, version).map_err(open_err)?;
        }
        if version == 6 {
            rewrite_outbox_runs(tx).map_err(open_err)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(open_err)?;
    }
    Ok(())
}

/// Moves the rows of the outbox table of versions 3 to 5 (a row per record; headers a JSON
/// array up to version 4, length-prefixed parts in a BLOB from 5; no timestamps in version 3)
/// into runs, in order, and drops the table.
fn move_outbox_rows(tx: &Transaction<'_>, version: i32) -> rusqlite::Result<()> {
    let timestamp = if version == 3 { "NULL" } else { "timestamp_ms" };
    let conversion = |e: String| FromSqlConversionFailure(5, Type::Blob, e.into());
    let mut runs = Records::default();
    {
        let mut rows = tx.prepare(&format!(
            "SELECT topic, partition, key, value, headers, {timestamp} FROM outbox ORDER BY id"
        ))?;
        let mut rows = rows.query([])?;
        while let Some(r) = rows.next()? {
            let headers = match r.get_ref(4)? {
                ValueRef::Blob(b) => Headers::from_bytes(b.to_vec()).map_err(conversion)?,
                other => decode::<Vec<(String, Vec<u8>)>>("outbox", other.as_str()?)
                    .map_err(|e| conversion(e.to_string()))?
                    .into_iter()
                    .collect(),
            };
            let record = OutboxRecord {
                topic: r.get(0)?,
                partition: r.get(1)?,
                key: r.get(2)?,
                value: r.get(3)?,
                headers,
                timestamp: r.get(5)?,
            };
            runs.push(&record);
        }
    }
    for (records, count) in runs.into_runs().map_err(conversion)? {
        tx.execute(INSERT_OUTBOX_RUN, params![count as i64, records])?;
    }
    tx.execute_batch("DROP TABLE outbox")
}

/// Rewrites the outbox runs of version 6 (form 1) in form 2, each in its row.
fn rewrite_outbox_runs(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    let conversion = |e: String| FromSqlConversionFailure(1, Type::Blob, e.into());
    let mut rewritten = Vec::new();
    {
        let mut rows = tx.prepare("SELECT id, records FROM outbox_runs ORDER BY id")?;
        let mut rows = rows.query([])?;
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            if let Some(run) = in_form_2(r.get_ref(1)?.as_blob()?).map_err(conversion)? {
                rewritten.push((id, run));
            }
        }
    }
    let mut update = tx.prepare("UPDATE outbox_runs SET records = ?2 WHERE id = ?1")?;
    for (id, run) in rewritten {
        update.execute(params![id, run])?;
    }
    Ok(())
}

/// Checks that `conn` is a weir store of a known schema; returns true for a new, empty file.
pub(crate) fn check_header(conn: &Connection, path: &Path) -> Result<bool> {
    let open_err = |source| Error::Open {
        path: path.to_path_buf(),
        source,
    };
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(open_err)?;
    let version: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(open_err)?;
    if app_id == 0 {
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(open_err)?;
        if tables > 0 {
            return Err(Error::Foreign {
                path: path.to_path_buf(),
                found: 0,
            });
        }
        return Ok(true);
    }
    if app_id != APPLICATION_ID {
        return Err(Error::Foreign {
            path: path.to_path_buf(),
            found: app_id,
        });
    }
    if version > SCHEMA_VERSION {
        return Err(Error::NewerSchema {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(false)
}
