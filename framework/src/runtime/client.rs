//! The worker's Kafka clients: their settings, and the check that a broker answers.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;

use crate::config::{Config, KafkaProperty};
use crate::{Error, Result};

/// The worker's group consumer: weir's defaults, then the user's librdkafka properties (each
/// checked on its own, so an error names the one that is wrong).
pub(crate) fn consumer_config(config: &Config, brokers: &str) -> Result<ClientConfig> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", brokers)
        .set("group.id", &config.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", "10000")
        // A member learns of a rebalance at its next heartbeat: librdkafka's 3 s default
        // would add up to 3 s to every hand-off.
        .set("heartbeat.interval.ms", "1000")
        .set("enable.partition.eof", "false")
        // librdkafka backs a partition's fetching off by this much once its local queue passes
        // queued.min.messages; the consumer thread drains that queue at once, so the default
        // 1000 ms only stalls the stream (docs/performance.md).
        .set("fetch.queue.backoff.ms", "20")
        // The statistics carry the high watermarks learned from fetch responses (lag).
        .set("statistics.interval.ms", "1000");
    if let Some(id) = &config.instance_id {
        client.set("group.instance.id", id);
    }
    for KafkaProperty {
        name,
        value,
        origin,
    } in &config.kafka
    {
        client.set(name, value);
        let mut single = ClientConfig::new();
        single.set(name, value);
        if let Err(e) = single.create_native_config() {
            return Err(Error::config(origin, e.to_string()));
        }
    }
    client
        .create_native_config()
        .map_err(|e| Error::config("kafka properties", e.to_string()))?;
    Ok(client)
}

/// The connection and security properties of the consumer, for the worker's other clients
/// (producer, changelog restores, watermark and topic checks).
pub(crate) fn connection_config(config: &Config, brokers: &str) -> ClientConfig {
    const CONNECTION: [&str; 6] = [
        "security.",
        "sasl.",
        "ssl.",
        "client.",
        "socket.",
        "broker.",
    ];
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", brokers);
    for p in &config.kafka {
        if CONNECTION.iter().any(|prefix| p.name.starts_with(prefix)) {
            client.set(&p.name, &p.value);
        }
    }
    client
}

/// The producer of dead letters, emitted records and changelog entries: idempotent, acks=all,
/// with the connection and security properties of the consumer.
pub(crate) fn producer_config(config: &Config, brokers: &str) -> ClientConfig {
    let mut client = connection_config(config, brokers);
    client.set("enable.idempotence", "true").set("acks", "all");
    client
}

/// Fails with an error naming `WEIR_BROKERS` unless a broker answers within `timeout`.
pub(crate) async fn check_brokers(
    client: &ClientConfig,
    brokers: &str,
    timeout: Duration,
) -> Result<()> {
    use rdkafka::consumer::Consumer;
    let probe: BaseConsumer = client.create()?;
    let answered = tokio::task::spawn_blocking(move || probe.fetch_metadata(None, timeout))
        .await
        .map_err(|e| Error::Embedded(format!("broker check failed: {e}")))?;
    answered.map(drop).map_err(|e| {
        Error::config(
            "brokers (WEIR_BROKERS)",
            format!("no broker answered at {brokers} within {timeout:?}: {e}"),
        )
    })
}
