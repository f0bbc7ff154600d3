//! Kafka, through librdkafka (`rdkafka`).

mod delivered;
mod embedded;
pub(crate) mod log;
mod producer;

pub use embedded::EmbeddedBroker;
pub(crate) use producer::Producer;

/// A failure of the Kafka client, as weir's error.
pub(crate) fn error(e: rdkafka::error::KafkaError) -> crate::error::Error {
    crate::error::BrokerError::new("kafka", e).into()
}
