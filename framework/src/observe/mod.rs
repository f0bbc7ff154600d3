//! What a worker shows of itself: metric names, the HTTP endpoint (`/metrics`, `/health/*`)
//! and the progress log. They read the worker through [`WorkerView`], which the runtime
//! implements, so this layer knows nothing of how partitions are run.

mod http;
pub(crate) mod metric_names;
mod progress;

pub(crate) use http::{prometheus, serve};
pub(crate) use progress::log_progress;

/// One owned partition's numbers at one instant (also `status.json`'s rows).
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct PartitionRow {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    /// High watermark minus the next offset to process; `None` until both are known.
    pub(crate) lag: Option<i64>,
    /// Age in seconds of the oldest record taken but not committed (0 when caught up).
    pub(crate) lag_seconds: f64,
    /// Records waiting for the partition's task.
    pub(crate) depth: usize,
    pub(crate) capacity: usize,
    pub(crate) paused: bool,
    /// True while the partition's store is being rebuilt from its changelog.
    pub(crate) restoring: bool,
    /// Why the partition cannot be read, while records wait that never arrive.
    pub(crate) unreadable: Option<String>,
    /// Why the broker rejects the partition's committed emits, while it does.
    pub(crate) emits_rejected: Option<String>,
    /// Records committed since the partition was assigned to this worker.
    pub(crate) processed: u64,
    /// Records of those sent to the dead-letter topic.
    pub(crate) dead_letters: u64,
    /// When this worker last committed a batch of the partition (ms since the epoch).
    pub(crate) last_commit_ms: Option<i64>,
    /// The partition's event-time watermark (ms since the epoch), once it has one.
    pub(crate) event_watermark_ms: Option<i64>,
}

/// What `GET /state/{store}/{key}` finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StateAnswer {
    /// The key's value (JSON) in the owned partition that holds it.
    Found {
        topic: String,
        partition: i32,
        value: String,
    },
    /// This worker owns the key's partition, which does not hold it.
    Absent { topic: String, partition: i32 },
    /// Another worker owns the key's partition.
    NotOwned { topic: String, partition: i32 },
    /// This worker owns the key's partition, whose store is being restored: ask again soon.
    Restoring { topic: String, partition: i32 },
    /// The request cannot be answered as asked (e.g. which topic is meant).
    Invalid(String),
    /// Not now (the partition count is not known yet, the store cannot be read).
    Unavailable(String),
}

/// The worker as the endpoint and the progress log see it.
pub(crate) trait WorkerView: Send + Sync + 'static {
    /// The committed value of `key` (text) in `store`, from the owned partition of `topic`
    /// (the only input topic when `None`) that holds it. Blocks on SQLite.
    fn state(&self, topic: Option<&str>, store: &str, key: &str) -> StateAnswer;

    /// The handler declares `store` (a store, window or table of its derive): a pipeline asks
    /// the stages that declare a store for it, not the others.
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    fn declares_store(&self, _store: &str) -> bool {
        false
    }

    /// The consumer thread runs and no stop was requested.
    fn live(&self) -> bool;
    /// Why the worker is not ready to be sent traffic, if it is not.
    fn not_ready(&self) -> Option<String>;
    /// Every owned partition, sorted by topic and partition.
    fn partitions(&self) -> Vec<PartitionRow>;
    /// The consumer groups the worker's partitions belong to (one per pipeline stage).
    fn groups(&self) -> Vec<String>;
}
