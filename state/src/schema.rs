//! The SQLite layout of a partition store: its tables, its version, and how a file is checked
//! and brought up to this build's version.

use std::path::Path;

use rusqlite::{Connection, Transaction};

use crate::error::{Error, Result};

/// `PRAGMA application_id` of every weir store: ASCII "weir".
const APPLICATION_ID: i32 = 0x7765_6972;

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i32 = 5;

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
-- Version 3: records to produce once their batch committed, deleted once acknowledged.
CREATE TABLE IF NOT EXISTS outbox (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    topic     TEXT    NOT NULL,
    partition INTEGER,
    key       BLOB,
    value     BLOB,
    -- A JSON array up to version 4; from version 5 a BLOB of length-prefixed parts
    -- (`partition_store/outbox.rs`), older rows staying as they are.
    headers   TEXT    NOT NULL,
    -- Version 4 (added to older files by ALTER TABLE): the record's timestamp, if it has one.
    timestamp_ms INTEGER
);
-- Version 4: the rewind generation of a partition's state (no row: 0), raised by every rewind
-- (`weir reset`) and carried on its changelog entries.
CREATE TABLE IF NOT EXISTS rewinds (
    topic      TEXT    NOT NULL,
    partition  INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
";

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
        if version == 3 {
            tx.execute_batch("ALTER TABLE outbox ADD COLUMN timestamp_ms INTEGER")
                .map_err(open_err)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(open_err)?;
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
