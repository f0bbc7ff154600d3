//! The worker's Kafka clients: their settings, and the check that a broker answers.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::ClientContext;

use crate::config::{Config, KafkaProperty, KAFKA_ENV_PREFIX};
use crate::error::{Error, Result};

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

/// The librdkafka properties of a client of `brokers`: `bootstrap.servers` and the
/// connection and security properties (`security.*`, `ssl.*`, `sasl.*`, `socket.*`, ...) of
/// the `WEIR_KAFKA_*` environment variables, so that a tool beside the workers (such as the
/// `weir` command) connects as a worker started with the same environment does.
///
/// ```
/// // With WEIR_KAFKA_SECURITY_PROTOCOL=ssl and WEIR_KAFKA_SSL_CA_LOCATION=ca.pem set, the
/// // properties say TLS, as the workers' do.
/// let properties = weir::kafka::connection_from_env("localhost:9092")?;
/// assert!(properties.contains(&("bootstrap.servers".into(), "localhost:9092".into())));
/// # Ok::<(), weir::Error>(())
/// ```
pub fn connection_from_env(brokers: &str) -> Result<Vec<(String, String)>> {
    let mut config = Config::default();
    config.apply_env(std::env::vars().filter(|(name, _)| name.starts_with(KAFKA_ENV_PREFIX)))?;
    let client = connection_config(&config, brokers);
    Ok(client
        .config_map()
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect())
}

/// [`producer_config`] from the `WEIR_KAFKA_*` environment variables, for tools.
pub(crate) fn producer_from_env(brokers: &str) -> Result<ClientConfig> {
    let mut config = Config::default();
    config.apply_env(std::env::vars().filter(|(name, _)| name.starts_with(KAFKA_ENV_PREFIX)))?;
    Ok(producer_config(&config, brokers))
}

/// The producer of dead letters, emitted records and changelog entries: idempotent, acks=all,
/// gapless and never timing a record out (see `delivery::Producer`), with the connection and
/// security properties of the consumer. Keyed records are partitioned
/// as Kafka's Java client does (murmur2 of the key), so that a topic weir writes is
/// co-partitioned with one that Java, Kafka Streams or Python clients set to murmur2 write.
pub(crate) fn producer_config(config: &Config, brokers: &str) -> ClientConfig {
    let mut client = connection_config(config, brokers);
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("enable.gapless.guarantee", "true")
        .set("message.timeout.ms", "0")
        .set("partitioner", "murmur2_random");
    client
}

/// How long the broker check waits for librdkafka's reasons after a failed request, at least.
const PROBE_GRACE: Duration = Duration::from_secs(1);
/// Distinct client errors the broker check keeps (the message shows them all).
const PROBE_ERRORS_KEPT: usize = 32;

/// Fails unless a broker answers within `timeout`, with an error naming what to check: the
/// TLS settings after a TLS failure, the SASL settings after an authentication failure, else
/// `WEIR_BROKERS`.
pub(crate) async fn check_brokers(
    client: &ClientConfig,
    brokers: &str,
    timeout: Duration,
) -> Result<()> {
    use rdkafka::consumer::Consumer;
    let probe: BaseConsumer<ProbeContext> = client
        .clone()
        .set_log_level(rdkafka::config::RDKafkaLogLevel::Warning)
        .create_with_context(ProbeContext::default())
        .map_err(crate::broker::kafka::error)?;
    let (answered, probe) = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let answered = probe.fetch_metadata(None, timeout).map(drop);
        if answered.is_err() {
            // The metadata request fails as soon as a connection breaks, and librdkafka's
            // reasons (a TLS alert, an authentication error) come after it, as logs from its
            // own threads and as error events: serve those until one names TLS or SASL, for
            // the rest of the startup window and at least a moment.
            let until = (started + timeout).max(std::time::Instant::now() + PROBE_GRACE);
            while std::time::Instant::now() < until {
                probe.poll(Duration::from_millis(50));
                if classify(&probe.context().errors()).2 {
                    break;
                }
            }
        }
        (answered, probe)
    })
    .await
    .map_err(|e| Error::Panic {
        context: "checking the brokers".into(),
        message: e.to_string(),
    })?;
    let Err(e) = answered else {
        return Ok(());
    };
    let seen = probe.context().errors();
    let (setting, what, _) = classify(&seen);
    // The reasons first (alerts, authentication errors), then the rest; a few of them.
    let mut seen = seen;
    seen.sort_by_key(|e| {
        let e = e.to_ascii_lowercase();
        !["alert", "handshake", "certificate", "authenticat", "sasl"]
            .iter()
            .any(|n| e.contains(n))
    });
    seen.truncate(4);
    let seen = if seen.is_empty() {
        e.to_string()
    } else {
        seen.join("; ")
    };
    Err(Error::config(
        setting,
        format!("{what} at {brokers} within {timeout:?}: {seen}"),
    ))
}

/// The settings to blame for the client errors `seen`, what failed, and whether that names
/// a cause (TLS, SASL) rather than the brokers' address. Every error counts, not only the
/// first: a connection refused by one bootstrap server comes before another's TLS alert.
fn classify(seen: &[String]) -> (&'static str, &'static str, bool) {
    let any = |needles: &[&str]| {
        seen.iter()
            .any(|e| needles.iter().any(|n| e.to_ascii_lowercase().contains(n)))
    };
    if any(&["sasl", "authenticat"]) {
        (
            "SASL settings (WEIR_KAFKA_SECURITY_PROTOCOL, WEIR_KAFKA_SASL_MECHANISMS, \
             WEIR_KAFKA_SASL_USERNAME, WEIR_KAFKA_SASL_PASSWORD)",
            "no broker accepted the credentials",
            true,
        )
    } else if any(&["ssl", "tls", "certificate", "handshake"]) {
        (
            "TLS settings (WEIR_KAFKA_SECURITY_PROTOCOL, WEIR_KAFKA_SSL_CA_LOCATION, \
             WEIR_KAFKA_SSL_CERTIFICATE_LOCATION, WEIR_KAFKA_SSL_KEY_LOCATION)",
            "no TLS connection to a broker could be made",
            true,
        )
    } else {
        ("brokers (WEIR_BROKERS)", "no broker answered", false)
    }
}

/// The broker check's client context: it keeps the client errors (TLS, SASL, connection
/// failures) to say why no broker answered.
#[derive(Default)]
struct ProbeContext {
    errors: Mutex<Vec<String>>,
}

impl ProbeContext {
    fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl ProbeContext {
    fn keep(&self, text: String) {
        let mut errors = self
            .errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if errors.len() < PROBE_ERRORS_KEPT && !errors.contains(&text) {
            errors.push(text);
        }
    }
}

impl ClientContext for ProbeContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.keep(format!("{error}: {reason}"));
    }

    /// librdkafka says why a connection failed (a TLS handshake, SASL authentication) in its
    /// log, not in the error it returns.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel::*;
        if matches!(level, Emerg | Alert | Critical | Error | Warning) {
            self.keep(format!("{fac}: {message}"));
        }
    }
}

impl ConsumerContext for ProbeContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_the_settings_to_check() {
        // The reason may come after other errors: every one counts.
        let late_alert = [
            "Meta data fetch error: BrokerTransportFailure".to_owned(),
            "Connect to ipv4#127.0.0.1:1 failed: Connection refused".to_owned(),
            "Receive failed: tlsv13 alert certificate required: SSL alert number 116".to_owned(),
        ];
        assert!(classify(&late_alert)
            .0
            .contains("WEIR_KAFKA_SSL_CERTIFICATE_LOCATION"));
        assert!(classify(&late_alert).2);
        let tls = ["SSL handshake failed: certificate verify failed".to_owned()];
        assert!(classify(&tls).0.contains("WEIR_KAFKA_SSL_CA_LOCATION"));
        let sasl = ["SASL authentication error: Authentication failed".to_owned()];
        assert!(classify(&sasl).0.contains("WEIR_KAFKA_SASL_PASSWORD"));
        let down = ["Connect to ipv4#127.0.0.1:1 failed: Connection refused".to_owned()];
        assert!(classify(&down).0.contains("WEIR_BROKERS"));
    }
}
