//! Reading partition stores outside a handler (reports, tools, tests), and the formats weir
//! writes to Kafka. Read-only: a worker's stores are written only by the worker.
//!
//! ```no_run
//! let store = weir::state::StoreReader::open("weir-state/wordcount/lines/0.sqlite")?;
//! let top: Vec<(String, u64)> = store.entries("counts")?;
//! # Ok::<(), weir::state::Error>(())
//! ```

pub use weir_state::wire::{CHANGELOG_OFFSET_STORE, ChangelogEntry, changelog_topic, header};
pub use weir_state::{Error, Progress, SCHEMA_VERSION, StoreReader};

/// The workers' producer, for tools that change a store while no worker runs (`weir reset`):
/// it sends what waits in a store's outbox as a worker does when it takes the partition
/// (Kafka: `connect`; RabbitMQ: `rabbitmq`).
#[cfg(any(feature = "kafka", feature = "rabbitmq"))]
#[derive(Debug)]
pub struct OutboxProducer(std::sync::Arc<crate::broker::Producer>);

#[cfg(any(feature = "kafka", feature = "rabbitmq"))]
impl OutboxProducer {
    /// Connects to `brokers` as a worker with the same `WEIR_KAFKA_*` environment would.
    #[cfg(feature = "kafka")]
    pub fn connect(brokers: &str) -> crate::error::Result<Self> {
        let producer = crate::runtime::producer_from_env(brokers)?;
        Ok(Self::of(crate::broker::Producer::Kafka(producer)))
    }

    /// Publishes on `tool`'s connection to RabbitMQ (a reset's changelog entries).
    #[cfg(feature = "rabbitmq")]
    pub fn rabbitmq(tool: &rabbitmq::StreamTool) -> Self {
        Self::of(crate::broker::Producer::RabbitMq(tool.publisher()))
    }

    /// Sends through `producer`.
    fn of(producer: crate::broker::Producer) -> Self {
        Self(std::sync::Arc::new(producer))
    }

    /// Sends what waits in `store`'s outbox, in order: each changelog offset marker only after
    /// every row before it is acknowledged, and rows deleted once acknowledged. Returns how
    /// many were sent. Call it within a tokio runtime.
    pub async fn flush(
        &self,
        store: std::sync::Arc<weir_state::PartitionStore>,
    ) -> Result<usize, String> {
        crate::delivery::OutboxSink::Broker(std::sync::Arc::clone(&self.0))
            .flush(&store)
            .await
            .map_err(|e| e.to_string())
    }
}

/// How weir names things on NATS JetStream, for tools that read and write its streams: whether
/// a `brokers` setting names NATS servers, a topic's stream, the subject a keyed record is published to, and a stored record's lane and
/// key.
///
/// ```
/// use weir::state::nats::{lane_and_key, publish_subject, stream_of};
/// assert_eq!(stream_of("orders.dlq"), "orders_dlq");
/// assert_eq!(publish_subject("orders", Some(b"alice")), "orders.alice");
/// // As a stream of 4 lanes stores it, in lane 2:
/// assert_eq!(lane_and_key("orders", "orders.2.alice"), Some((Some(2), Some(b"alice".to_vec()))));
/// ```
#[cfg(feature = "nats")]
pub mod nats {
    pub use crate::broker::nats::names::{consumer_name, lane_and_key, publish_subject, stream_of};
    pub use crate::broker::nats_url as is_nats;
}

/// How weir lays out topics on RabbitMQ, for tools: whether a `brokers` setting names a
/// RabbitMQ server, a topic's lane queues, declaring a topic as a worker does, how many
/// messages wait in queues, and a connection (lapin's) with header values as bytes.
///
/// ```
/// use weir::state::rabbitmq::{is_amqp, lane_queue};
/// assert!(is_amqp("amqp://guest:guest@localhost:5672/%2f"));
/// assert_eq!(lane_queue("orders", 2), "orders.2");
/// ```
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq {
    pub use crate::broker::amqp_url as is_amqp;
    pub use crate::broker::rabbitmq::{
        StreamPoint, StreamTool, connect, declare_topic, header_bytes, lane_queue, queue_depths,
    };
}

/// How weir lays out SQS queues and messages, for tools: whether a `brokers` setting selects
/// SQS, a client of the AWS configuration in the environment, a queue's counts, a topic
/// template's queue name (`{topic}.dlq` of `orders` is `orders-dlq`), and a message as weir
/// reads it and writes it.
///
/// ```
/// use weir::state::sqs::{is_sqs, message_of, queue_name};
/// assert!(is_sqs("sqs://"));
/// assert_eq!(queue_name("{topic}.dlq", "orders.fifo"), "orders-dlq.fifo");
/// let (body, attributes) = message_of(Some(b"alice"), Some(b"{\"cents\":100}"), &[], None);
/// assert_eq!(body, "{\"cents\":100}");
/// assert!(attributes.contains_key("key"));
/// ```
#[cfg(feature = "sqs")]
pub mod sqs {
    pub use crate::broker::sqs::{
        SqsRecord, checked_client as connect, describe, message_of, queue_counts, queue_name,
        record_of,
    };
    pub use crate::broker::sqs_url as is_sqs;
}
