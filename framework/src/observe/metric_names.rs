//! Prometheus metric names, in one place.

/// Records handled, by `outcome` (`ok`, `error`, `skipped`) and source `topic`.
pub(crate) const MESSAGES_TOTAL: &str = "weir_messages_total";
/// Time to process and commit one batch.
pub(crate) const BATCH_DURATION_SECONDS: &str = "weir_batch_duration_seconds";
/// Time of the SQLite commit of one batch.
pub(crate) const COMMIT_DURATION_SECONDS: &str = "weir_commit_duration_seconds";
/// Batch commits to SQLite that failed (disk full, I/O errors); the batch is retried.
pub(crate) const COMMIT_FAILURES_TOTAL: &str = "weir_commit_failures_total";
/// Offset commits to Kafka that the broker refused or that timed out (progress only: the
/// next commit carries the offsets again).
#[cfg(feature = "kafka")]
pub(crate) const KAFKA_COMMIT_FAILURES_TOTAL: &str = "weir_kafka_commit_failures_total";
/// Batches a stop (revoke, shutdown) cut short, by `topic`: their records done so far were
/// committed, the rest left to the partition's next owner.
pub(crate) const BATCHES_CUT_TOTAL: &str = "weir_batches_cut_total";
/// Batches refused because a later owner claimed the partition's state file (the task stops),
/// by `topic`.
pub(crate) const FENCED_TOTAL: &str = "weir_fenced_total";
/// Rebalances that moved partitions to or from this worker, by `group` and `kind` (`assign`,
/// `revoke`, `lost`); a cooperative rebalance that leaves this worker's partitions alone counts
/// nothing.
pub(crate) const REBALANCES_TOTAL: &str = "weir_rebalances_total";
/// Bytes the worker's state caches hold (committed values kept in memory, all partitions).
pub(crate) const STATE_CACHE_BYTES: &str = "weir_state_cache_bytes";
/// Records sent to a dead-letter topic, by source `topic` and `reason`.
pub(crate) const DEAD_LETTERS_TOTAL: &str = "weir_dead_letters_total";
/// Errors of the Kafka client (broker down, transport failures), by librdkafka error `kind`.
#[cfg(feature = "kafka")]
pub(crate) const CLIENT_ERRORS_TOTAL: &str = "weir_client_errors_total";
/// Emitted records and changelog entries produced from the outbox and acknowledged.
pub(crate) const OUTBOX_SENT_TOTAL: &str = "weir_outbox_sent_total";
/// Changelog records read to restore partition stores, by source `topic`.
pub(crate) const RESTORED_RECORDS_TOTAL: &str = "weir_restored_records_total";
/// Time to restore one partition's store from its changelog.
pub(crate) const RESTORE_DURATION_SECONDS: &str = "weir_restore_duration_seconds";
/// Times a partition was paused because its queue was full.
pub(crate) const PAUSES_TOTAL: &str = "weir_partition_pauses_total";

/// An SQS queue's messages as SQS counts them, by `state`: `visible` (waiting:
/// `ApproximateNumberOfMessages`) and `not_visible` (received by someone and not deleted:
/// `...NotVisible`).
#[cfg(feature = "sqs")]
pub(crate) const SQS_MESSAGES: &str = "weir_sqs_messages";

/// Gauge: a RabbitMQ lane queue's ready messages over its length limit (`queue_max_length`),
/// by `topic` and `partition`, while this worker owns the lane.
#[cfg(feature = "rabbitmq")]
pub(crate) const BROKER_QUEUE_FILL_RATIO: &str = "weir_broker_queue_fill_ratio";

// Per-partition series, rendered at scrape time from the partitions this worker owns right
// now (so a revoked partition's series are gone at once), by `observe::http`.

/// Partitions this worker owns.
pub(crate) const OWNED_PARTITIONS: &str = "weir_owned_partitions";
/// 1 while a partition is paused because its queue is full.
pub(crate) const PARTITION_PAUSED: &str = "weir_partition_paused";
/// High watermark minus the next offset to process (from SQLite).
pub(crate) const CONSUMER_LAG: &str = "weir_consumer_lag";
/// Age of the oldest record not yet committed, 0 when caught up.
pub(crate) const CONSUMER_LAG_SECONDS: &str = "weir_consumer_lag_seconds";
/// Records waiting in the partition's queue.
pub(crate) const QUEUE_DEPTH: &str = "weir_queue_depth";
/// Capacity of the partition's queue.
pub(crate) const QUEUE_CAPACITY: &str = "weir_queue_capacity";
/// 1 while a partition's store is being rebuilt from its changelog.
pub(crate) const PARTITION_RESTORING: &str = "weir_partition_restoring";
/// 1 while records wait on a partition that cannot be read (a decode or fetch error repeats).
pub(crate) const PARTITION_UNREADABLE: &str = "weir_partition_unreadable";
/// 1 while the broker rejects a partition's committed emits for good (too large, not
/// authorized, no such topic): its outbox cannot drain.
pub(crate) const PARTITION_EMITS_REJECTED: &str = "weir_partition_emits_rejected";
/// Errors the consumer reported (fetch and decompression failures, unreachable brokers).
pub(crate) const CONSUMER_ERRORS_TOTAL: &str = "weir_consumer_errors_total";
/// Records committed since the partition was assigned to this worker.
pub(crate) const PARTITION_PROCESSED: &str = "weir_partition_processed";
/// Gauge: a partition's event-time watermark, in seconds since the epoch.
pub(crate) const PARTITION_WATERMARK_SECONDS: &str = "weir_partition_watermark_seconds";
/// Counter: records whose windows were all closed (late), by topic.
pub(crate) const LATE_RECORDS_TOTAL: &str = "weir_late_records_total";
/// Counter: windows closed (and handed to `on_window_closed`), by store.
pub(crate) const WINDOWS_CLOSED_TOTAL: &str = "weir_windows_closed_total";
/// Counter: user timers fired.
pub(crate) const TIMERS_FIRED_TOTAL: &str = "weir_timers_fired_total";
/// Counter: input records emitted by an upstream weir stage and applied already (re-sends
/// after an upstream crash), and queue redeliveries of messages applied already, dropped, by
/// topic.
pub(crate) const DUPLICATES_DROPPED_TOTAL: &str = "weir_duplicates_dropped_total";
/// Counter: queue messages without a message id, by topic: a redelivery of one cannot be
/// recognised, so it is processed at least once rather than exactly once.
pub(crate) const MESSAGES_WITHOUT_ID_TOTAL: &str = "weir_messages_without_id_total";
/// Counter: table records read (co-partitioned and global tables), by table topic.
#[cfg(feature = "kafka")]
pub(crate) const TABLE_RECORDS_TOTAL: &str = "weir_table_records_total";
/// Counter: table records skipped (no key, a key that is not text, a value that is not
/// JSON), by table topic.
#[cfg(feature = "kafka")]
pub(crate) const TABLE_RECORDS_SKIPPED_TOTAL: &str = "weir_table_records_skipped_total";
