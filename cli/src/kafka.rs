//! The command's Kafka clients: they connect as the workers do, with the connection and
//! security settings (TLS, SASL) of the `WEIR_KAFKA_*` environment variables, and log nothing
//! themselves (the command reports what went wrong).

use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};

use crate::error::{Error, Result};

/// How long Kafka may take to answer each request.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// A client configuration for `brokers`.
pub(crate) fn client(brokers: &str) -> Result<ClientConfig> {
    let mut config = ClientConfig::new();
    for (property, value) in
        weir::kafka::connection_from_env(brokers).map_err(|e| Error::Input(e.to_string()))?
    {
        config.set(property, value);
    }
    config.set_log_level(RDKafkaLogLevel::Emerg);
    Ok(config)
}
