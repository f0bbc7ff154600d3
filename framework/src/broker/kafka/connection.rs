//! How a worker's clients connect: the bootstrap servers and the user's connection and
//! security properties, shared by every client a worker makes (producer, restores, tables,
//! offset and topic checks).

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::Producer;
use crate::error::{Error, Result};

/// A librdkafka property the user set, with where it was set (a builder call, an environment
/// variable), which errors name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Property<'a> {
    pub(crate) name: &'a str,
    pub(crate) value: &'a str,
    pub(crate) origin: &'a str,
}

/// The prefixes of the properties every client of a worker shares.
const CONNECTION: [&str; 6] = [
    "security.",
    "sasl.",
    "ssl.",
    "client.",
    "socket.",
    "broker.",
];

/// How a worker's own clients connect: the worker's connection and security settings.
#[derive(Clone)]
pub(crate) struct Connection(ClientConfig);

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connection")
    }
}

impl Connection {
    /// `brokers`, with the connection and security properties among `properties`.
    pub(crate) fn new(brokers: &str, properties: &[Property<'_>]) -> Self {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", brokers);
        for p in properties {
            if CONNECTION.iter().any(|prefix| p.name.starts_with(prefix)) {
                client.set(p.name, p.value);
            }
        }
        Self(client)
    }

    /// The client settings, for this folder's clients.
    pub(super) fn client_config(&self) -> &ClientConfig {
        &self.0
    }

    /// The properties, as name and value.
    pub(crate) fn properties(&self) -> Vec<(String, String)> {
        self.0
            .config_map()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The producer of dead letters, emitted records and changelog entries: idempotent,
    /// acks=all, gapless and never timing a record out (see [`Producer`]). Keyed records are
    /// partitioned as Kafka's Java client does (murmur2 of the key), so that a topic weir
    /// writes is co-partitioned with one that Java, Kafka Streams or Python clients set to
    /// murmur2 write.
    pub(crate) fn producer(&self) -> Result<Producer> {
        let mut client = self.0.clone();
        client
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("enable.gapless.guarantee", "true")
            .set("message.timeout.ms", "0")
            .set("partitioner", "murmur2_random");
        Producer::new(client).map_err(|e| {
            Error::config(
                "kafka properties",
                format!("cannot create the producer (dead letters, outbox): {e}"),
            )
        })
    }

    /// The earliest offset of `topic`/`partition` (where a consumer from the beginning
    /// starts).
    pub(crate) fn low_watermark(&self, topic: &str, partition: i32) -> Result<i64, String> {
        let consumer: BaseConsumer = self.0.create().map_err(|e| e.to_string())?;
        consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .map(|(low, _)| low)
            .map_err(|e| format!("reading {topic}/{partition}'s offsets: {e}"))
    }
}
