//! The check at start that a broker answers, naming the settings to look at when none does.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};

use super::GroupSettings;
use crate::error::{Error, Result};

/// How long the broker check waits for librdkafka's reasons after a failed request, at least.
const PROBE_GRACE: Duration = Duration::from_secs(1);
/// Distinct client errors the broker check keeps (the message shows them all).
const PROBE_ERRORS_KEPT: usize = 32;

/// Fails unless a broker answers within `timeout`, with an error naming what to check: the
/// TLS settings after a TLS failure, the SASL settings after an authentication failure, else
/// `WEIR_BROKERS`.
pub(crate) async fn check_brokers(
    settings: &GroupSettings,
    brokers: &str,
    timeout: Duration,
) -> Result<()> {
    use rdkafka::consumer::Consumer;
    let probe: BaseConsumer<ProbeContext> = settings
        .client_config()
        .clone()
        .set_log_level(rdkafka::config::RDKafkaLogLevel::Warning)
        .create_with_context(ProbeContext::default())
        .map_err(super::error)?;
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
        assert!(
            classify(&late_alert)
                .0
                .contains("WEIR_KAFKA_SSL_CERTIFICATE_LOCATION")
        );
        assert!(classify(&late_alert).2);
        let tls = ["SSL handshake failed: certificate verify failed".to_owned()];
        assert!(classify(&tls).0.contains("WEIR_KAFKA_SSL_CA_LOCATION"));
        let sasl = ["SASL authentication error: Authentication failed".to_owned()];
        assert!(classify(&sasl).0.contains("WEIR_KAFKA_SASL_PASSWORD"));
        let down = ["Connect to ipv4#127.0.0.1:1 failed: Connection refused".to_owned()];
        assert!(classify(&down).0.contains("WEIR_BROKERS"));
    }
}
