//! Errors of the weir runtime.

/// The error type a handler may return: anything that converts into a boxed error
/// (`std::error::Error` types, `anyhow::Error`, `String`, `&str`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can stop a worker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is invalid; `setting` names it as the user wrote it (builder method or
    /// environment variable).
    #[error("invalid setting {setting}: {message}")]
    Config {
        /// The setting, e.g. `WEIR_BATCH_SIZE` or `kafka property session.timeout.ms`.
        setting: String,
        /// What is wrong with it.
        message: String,
    },
    /// A partition's state store failed (corrupt or foreign file, disk error, codec error).
    #[error(transparent)]
    State(#[from] weir_state::Error),
    /// A record failed: it could not be decoded, or the handler returned an error or panicked.
    #[error("{topic}/{partition} offset {offset}: {source}")]
    Record {
        /// The record's topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// A record to emit could not be encoded.
    #[error("cannot emit to {topic}: {reason}")]
    Emit {
        /// The destination topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// A window store was used the wrong way (e.g. `add` on session windows).
    #[error("window store {store}: {reason}")]
    Window {
        /// The window store.
        store: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A window or timer callback failed or panicked.
    #[error("{topic}/{partition}: {what} failed: {source}")]
    Timer {
        /// The partition's topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Which callback, e.g. `on_window_closed`.
        what: &'static str,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// The broker, or weir's client of it, failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The embedded broker could not be started or used.
    #[error("embedded broker: {0}")]
    Embedded(String),
    /// A graceful stop did not finish within the drain timeout.
    #[error(
        "graceful stop did not finish within {timeout:?}; partitions not released (their in-flight batches are not committed and will be processed again): {partitions:?}"
    )]
    DrainTimeout {
        /// The drain timeout.
        timeout: std::time::Duration,
        /// `topic/partition` of every partition still owned.
        partitions: Vec<String>,
    },
    /// A partition has no stored offset and its earliest record is past offset 0 (retention
    /// deleted records): its state would be the fold of only part of its history.
    #[error(
        "{topic}/{partition} has no stored state and its records before offset {earliest} are deleted: its state would fold only part of its history; restore its state (e.g. turn the changelog on) or accept this with allow_partial_history (WEIR_ALLOW_PARTIAL_HISTORY=true)"
    )]
    PartialHistory {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Its earliest available offset.
        earliest: i64,
    },
    /// A table cannot be read (its topic is missing, the broker does not answer).
    #[error("table {topics:?}: {message}")]
    Table {
        /// The table topics concerned.
        topics: Vec<String>,
        /// What is wrong.
        message: String,
    },
    /// A co-partitioned table's topic has another partition count than an input topic, so
    /// its partitions would not hold the keys of the input partitions.
    #[error(
        "table topic {table:?} has {table_partitions} partitions but input topic {input:?} has {input_partitions}: a table must be co-partitioned with its input (same partition count, same keys); recreate one of them, or declare the table global"
    )]
    NotCopartitioned {
        /// The table's topic.
        table: String,
        /// Its partition count.
        table_partitions: i32,
        /// The input topic.
        input: String,
        /// Its partition count.
        input_partitions: i32,
    },
    /// A pipeline's repartition topic is gone although its stage's stores hold offsets of it:
    /// it was deleted after records went through it.
    #[error("repartition topic {topic:?} does not exist, but stage {stage:?} has processed records of it (its stores are in {}): the topic was deleted, and the records in it that stage {stage:?} had not processed are lost with it. weir does not create it again, since a new topic's offsets start at 0 and the stores would skip its first records: replay the stage before it (reset its state and offsets) and remove {}, then start the pipeline again", stores.display(), stores.display())]
    RepartitionTopicDeleted {
        /// The repartition topic.
        topic: String,
        /// The stage it feeds.
        stage: String,
        /// The folder of the stage's stores of it.
        stores: std::path::PathBuf,
    },
    /// Something panicked inside weir (a bug; please report it).
    #[error("{context} panicked: {message}")]
    Panic {
        /// What was being done.
        context: String,
        /// The panic.
        message: String,
    },
    /// An I/O error outside the state stores (threads, signals).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A broker's failure: which broker, and its client's error as the source.
#[derive(Debug, thiserror::Error)]
#[error("{broker}: {source}")]
pub struct BrokerError {
    broker: &'static str,
    #[source]
    source: BoxError,
}

impl BrokerError {
    /// A failure of `broker` (`"kafka"`, ...) with its client's `source` error.
    pub fn new(broker: &'static str, source: impl Into<BoxError>) -> Self {
        Self {
            broker,
            source: source.into(),
        }
    }

    /// The broker, e.g. `"kafka"`.
    pub fn broker(&self) -> &'static str {
        self.broker
    }

    /// The client's error, for a caller that knows its type (`downcast_ref`).
    pub fn source_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }
}

impl Error {
    pub(crate) fn config(setting: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config {
            setting: setting.into(),
            message: message.into(),
        }
    }
}

/// `Result` with weir's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
