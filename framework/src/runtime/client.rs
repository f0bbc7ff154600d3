//! The worker's broker clients, from its settings: its group consumer's and its connection's.

use crate::broker::kafka::{Connection, GroupSettings, Producer, Property};
use crate::config::{Config, KAFKA_ENV_PREFIX};
use crate::error::Result;

/// The user's librdkafka properties.
fn properties(config: &Config) -> Vec<Property<'_>> {
    config
        .kafka
        .iter()
        .map(|p| Property {
            name: &p.name,
            value: &p.value,
            origin: &p.origin,
        })
        .collect()
}

/// The worker's group consumer.
pub(crate) fn group_settings(config: &Config, brokers: &str) -> Result<GroupSettings> {
    GroupSettings::new(
        brokers,
        &config.group,
        config.instance_id.as_deref(),
        &properties(config),
    )
}

/// The connection of the worker's other clients (producer, changelog restores, tables,
/// watermark and topic checks): the consumer's connection and security properties.
pub(crate) fn connection(config: &Config, brokers: &str) -> Connection {
    Connection::new(brokers, &properties(config))
}

/// The settings of the `WEIR_KAFKA_*` environment variables.
fn kafka_env() -> Result<Config> {
    let mut config = Config::default();
    config.apply_env(std::env::vars().filter(|(name, _)| name.starts_with(KAFKA_ENV_PREFIX)))?;
    Ok(config)
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
    Ok(connection(&kafka_env()?, brokers).properties())
}

/// A worker's producer, connected as the `WEIR_KAFKA_*` environment variables say, for tools.
pub(crate) fn producer_from_env(brokers: &str) -> Result<Producer> {
    connection(&kafka_env()?, brokers).producer()
}
