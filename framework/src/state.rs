//! Reading partition stores outside a handler (reports, tools, tests), and the formats weir
//! writes to Kafka. Read-only: a worker's stores are written only by the worker.
//!
//! ```no_run
//! let store = weir::state::StoreReader::open("weir-state/wordcount/lines/0.sqlite")?;
//! let top: Vec<(String, u64)> = store.entries("counts")?;
//! # Ok::<(), weir::state::Error>(())
//! ```

pub use weir_state::wire::{changelog_topic, header, ChangelogEntry, CHANGELOG_OFFSET_STORE};
pub use weir_state::{Error, Progress, StoreReader, SCHEMA_VERSION};

/// Sends what waits in `store`'s outbox, in order, as a worker does when it takes the
/// partition: each changelog offset marker only after every row before it is acknowledged,
/// and rows deleted once acknowledged. Returns how many were sent. For tools that change a
/// store while no worker runs (`weir reset`); `producer` should be built as the workers' is:
/// idempotent, `acks=all`, `partitioner=murmur2_random`. Call it within a tokio runtime.
pub async fn flush_outbox(
    store: std::sync::Arc<weir_state::PartitionStore>,
    producer: std::sync::Arc<rdkafka::producer::FutureProducer>,
) -> Result<usize, String> {
    crate::delivery::OutboxSink::Kafka(producer)
        .flush(&store)
        .await
        .map_err(|e| e.to_string())
}
