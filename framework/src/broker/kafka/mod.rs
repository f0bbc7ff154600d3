//! Kafka, through librdkafka (`rdkafka`).

mod delivered;
pub(crate) mod log;
mod producer;

pub(crate) use producer::Producer;
