//! Errors of the state crate.

use std::path::PathBuf;

/// What can go wrong with a partition store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The state file could not be opened or read as a weir store (corrupt, unreadable).
    #[error("state file {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The file is a SQLite database, but not one written by weir.
    #[error("state file {path} is not a weir state store (application_id {found:#x}); refusing to use or reset it")]
    Foreign {
        /// The file.
        path: PathBuf,
        /// The application id found in the file.
        found: i32,
    },
    /// The file was written by a newer weir with a schema this version does not know.
    #[error("state file {path} has schema version {found}, newer than {supported} supported by this weir; upgrade weir or move the file away")]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: i32,
        /// The newest version this build knows.
        supported: i32,
    },
    /// The state directory could not be created.
    #[error("cannot create state directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Another owner claimed the partition after this handle did (see
    /// [`PartitionStore::claim`](crate::PartitionStore::claim)): the commit was refused.
    #[error("state file {path}: {topic}/{partition} was taken over (owner epoch {current}, this worker's {claimed}); commit refused")]
    Fenced {
        /// The file.
        path: PathBuf,
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The epoch this handle claimed.
        claimed: i64,
        /// The epoch in the file.
        current: i64,
    },
    /// A read or a commit failed.
    #[error("state file {path}: {source}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// A run of outbox records could not be read (a damaged file).
    #[error("outbox run {run}: {reason}")]
    Outbox {
        /// The run's id (0: a batch's records, not committed yet).
        run: i64,
        /// What is wrong with it.
        reason: String,
    },
    /// A key or value could not be encoded or decoded as JSON.
    #[error("state store {store:?}: cannot encode or decode a key or value: {source}")]
    Codec {
        /// The named store.
        store: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

/// `Result` with this crate's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
