//! Kafka, through librdkafka (`rdkafka`).

pub(crate) mod client_log;
mod connection;
mod delivered;
mod embedded;
mod group;
mod log_reader;
mod probe;
mod producer;
mod source;
mod topics;

pub(crate) use connection::{Connection, Property};
pub use embedded::EmbeddedBroker;
pub(crate) use group::GroupSettings;
pub(crate) use log_reader::{LogReader, LogRecord};
pub(crate) use probe::check_brokers;
pub(crate) use producer::Producer;

/// A failure of the Kafka client, as weir's error.
pub(crate) fn error(e: rdkafka::error::KafkaError) -> crate::error::Error {
    crate::error::BrokerError::new("kafka", e).into()
}
