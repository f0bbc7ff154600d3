//! Prometheus metric names, in one place.

/// Records handled, by `outcome` (`ok`, `error`).
pub(crate) const MESSAGES_TOTAL: &str = "weir_messages_total";
/// Time to process and commit one batch.
pub(crate) const BATCH_DURATION_SECONDS: &str = "weir_batch_duration_seconds";
/// Time of the SQLite commit of one batch.
pub(crate) const COMMIT_DURATION_SECONDS: &str = "weir_commit_duration_seconds";
/// Rebalances by `kind` (`assign`, `revoke`, `lost`).
pub(crate) const REBALANCES_TOTAL: &str = "weir_rebalances_total";
/// Partitions this worker owns.
pub(crate) const OWNED_PARTITIONS: &str = "weir_owned_partitions";
/// 1 while a partition is paused because its queue is full.
pub(crate) const PARTITION_PAUSED: &str = "weir_partition_paused";
