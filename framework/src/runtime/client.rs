//! The worker's broker clients, from its settings: the broker its `brokers` setting names
//! (Kafka's bootstrap servers, or NATS servers), checked and connected at start, and the
//! source of its lanes.

use std::sync::Arc;

#[cfg(feature = "kafka")]
use crate::broker::kafka::{self, GroupSettings, Property, check_brokers};
use crate::broker::{Connection, Producer};
use crate::config::Config;
#[cfg(feature = "kafka")]
use crate::config::KAFKA_ENV_PREFIX;
use crate::error::{Error, Result};
use crate::processing::Process;
use crate::runtime::admin::ensure_topics;
use crate::runtime::rebalance::Rebalances;
use crate::runtime::shared::Shared;

#[cfg(feature = "kafka")]
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

#[cfg(feature = "kafka")]
/// The worker's group consumer.
pub(crate) fn group_settings(config: &Config, brokers: &str) -> Result<GroupSettings> {
    GroupSettings::new(
        brokers,
        &config.group,
        config.instance_id.as_deref(),
        &properties(config),
    )
}

#[cfg(feature = "kafka")]
/// The connection of the worker's other clients (producer, changelog restores, tables,
/// watermark and topic checks): the consumer's connection and security properties.
pub(crate) fn connection(config: &Config, brokers: &str) -> kafka::Connection {
    kafka::Connection::new(brokers, &properties(config))
}

#[cfg(feature = "kafka")]
/// The settings of the `WEIR_KAFKA_*` environment variables.
fn kafka_env() -> Result<Config> {
    let mut config = Config::default();
    config.apply_env(std::env::vars().filter(|(name, _)| name.starts_with(KAFKA_ENV_PREFIX)))?;
    Ok(config)
}

#[cfg(feature = "kafka")]
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

#[cfg(feature = "kafka")]
/// A worker's producer, connected as the `WEIR_KAFKA_*` environment variables say, for tools.
pub(crate) fn producer_from_env(brokers: &str) -> Result<kafka::Producer> {
    connection(&kafka_env()?, brokers).producer()
}

/// The worker's broker clients, as settings until the worker runs.
#[derive(Debug)]
pub(crate) enum Clients {
    #[cfg(feature = "kafka")]
    Kafka {
        /// The group consumer's settings.
        consumer: GroupSettings,
        /// Connection settings for the worker's other clients.
        connection: kafka::Connection,
        producer: Arc<Producer>,
    },
    #[cfg(feature = "nats")]
    Nats(crate::broker::nats::Settings),
    #[cfg(feature = "rabbitmq")]
    RabbitMq(crate::broker::rabbitmq::Settings),
    #[cfg(feature = "sqs")]
    Sqs(crate::broker::sqs::Settings, String),
}

/// The clients of a running worker.
pub(crate) struct Started {
    pub(crate) connection: Connection,
    pub(crate) producer: Arc<Producer>,
    pub(crate) reader: Reader,
}

/// What makes the source of a running worker's lanes.
pub(crate) enum Reader {
    #[cfg(feature = "kafka")]
    Kafka(GroupSettings),
    /// The connection, the group, and whether it reads core NATS subjects
    /// (`delivery = at_most_once`) rather than JetStream streams.
    #[cfg(feature = "nats")]
    Nats(crate::broker::nats::Connection, String, bool),
    /// The connection and the group.
    #[cfg(feature = "rabbitmq")]
    RabbitMq(crate::broker::rabbitmq::Connection, String),
    /// The connection and the group.
    #[cfg(feature = "sqs")]
    Sqs(crate::broker::sqs::Connection, String),
}

/// The worker's source, made for its consumer thread.
pub(crate) enum Made<C> {
    #[cfg(feature = "kafka")]
    Kafka(C),
    /// (Only Kafka's source is a type of its own here.)
    #[cfg(not(feature = "kafka"))]
    #[allow(dead_code)]
    Never(std::convert::Infallible, std::marker::PhantomData<C>),
    #[cfg(feature = "nats")]
    Nats(Box<crate::broker::nats::NatsSource>),
    #[cfg(feature = "nats")]
    NatsCore(Box<crate::broker::nats::CoreSource>),
    #[cfg(feature = "rabbitmq")]
    RabbitMq(Box<crate::broker::rabbitmq::RabbitSource>),
    #[cfg(feature = "sqs")]
    Sqs(Box<crate::broker::sqs::SqsSource>),
}

impl Clients {
    /// The clients `brokers` call for (a `nats://` or `tls://` URL: NATS; else Kafka's
    /// bootstrap servers), checking that the worker's settings are ones its broker supports.
    pub(crate) fn new(config: &Config, brokers: &str, in_pipeline: bool) -> Result<Self> {
        if crate::broker::nats_url(brokers) {
            return Self::nats(config, brokers, in_pipeline);
        }
        if crate::broker::amqp_url(brokers) {
            return Self::rabbitmq(config, brokers, in_pipeline);
        }
        if crate::broker::sqs_url(brokers) {
            return Self::sqs(config, brokers, in_pipeline);
        }
        Self::kafka(config, brokers)
    }

    #[cfg(not(feature = "kafka"))]
    fn kafka(_: &Config, brokers: &str) -> Result<Self> {
        Err(without_feature(brokers, KAFKA))
    }

    #[cfg(feature = "kafka")]
    fn kafka(config: &Config, brokers: &str) -> Result<Self> {
        let consumer = group_settings(config, brokers)?;
        let connection = connection(config, brokers);
        let producer = Arc::new(Producer::Kafka(connection.producer()?));
        Ok(Self::Kafka {
            consumer,
            connection,
            producer,
        })
    }

    #[cfg(not(feature = "nats"))]
    fn nats(_: &Config, brokers: &str, _: bool) -> Result<Self> {
        Err(without_feature(brokers, NATS))
    }

    #[cfg(not(feature = "rabbitmq"))]
    fn rabbitmq(_: &Config, brokers: &str, _: bool) -> Result<Self> {
        Err(without_feature(brokers, RABBITMQ))
    }

    #[cfg(not(feature = "sqs"))]
    fn sqs(_: &Config, brokers: &str, _: bool) -> Result<Self> {
        Err(without_feature(brokers, SQS))
    }

    #[cfg(feature = "sqs")]
    fn sqs(config: &Config, brokers: &str, in_pipeline: bool) -> Result<Self> {
        kafka_and_nats_only(
            config,
            in_pipeline,
            &format!("{brokers:?} selects SQS"),
            Some(" (one worker per queue keeps its state in its state dir)"),
        )?;
        let settings = crate::broker::sqs::Settings {
            receives: config.sqs_receives,
            capacity: config.queue_capacity,
        };
        Ok(Self::Sqs(settings, brokers.to_owned()))
    }

    #[cfg(feature = "rabbitmq")]
    fn rabbitmq(config: &Config, brokers: &str, in_pipeline: bool) -> Result<Self> {
        kafka_and_nats_only(
            config,
            in_pipeline,
            &format!("{brokers:?} names a RabbitMQ server"),
            None,
        )?;
        Ok(Self::RabbitMq(crate::broker::rabbitmq::Settings {
            url: brokers.trim().to_owned(),
            partitions: config.partitions,
            prefetch: u16::try_from(config.queue_capacity)
                .unwrap_or(u16::MAX)
                .max(1),
            max_length: config.queue_max_length,
        }))
    }

    #[cfg(feature = "nats")]
    fn nats(config: &Config, brokers: &str, in_pipeline: bool) -> Result<Self> {
        let unsupported = |what: &str| {
            Error::config(
                "brokers (WEIR_BROKERS)",
                format!("{what} run on Kafka only so far, and {brokers:?} names NATS servers"),
            )
        };
        if in_pipeline {
            return Err(unsupported("pipelines"));
        }
        if !config.tables(false).is_empty() || !config.tables(true).is_empty() {
            return Err(unsupported("tables"));
        }
        if config.delivery == crate::processing::Delivery::AtMostOnce && config.changelog {
            return Err(Error::config(
                "changelog (WEIR_CHANGELOG)",
                "at most once, NATS topics are core NATS subjects, which keep no position to restore a changelog to: turn the changelog off, or use JetStream (at least once)",
            ));
        }
        Ok(Self::Nats(crate::broker::nats::Settings {
            servers: brokers.to_owned(),
            creds: config.nats_creds.clone(),
            partitions: config.partitions,
            hand_off: config.hand_off,
        }))
    }

    /// Checks the broker and makes the topics the worker writes to; the worker's clients.
    #[cfg_attr(not(feature = "kafka"), allow(unused_variables))]
    pub(crate) async fn start(
        &self,
        config: &Config,
        brokers: &str,
        embedded: bool,
    ) -> Result<Started> {
        match self {
            #[cfg(feature = "kafka")]
            Self::Kafka {
                consumer,
                connection,
                producer,
            } => {
                let connection = Connection::Kafka(connection.clone());
                if !embedded {
                    check_brokers(consumer, brokers, config.startup_timeout).await?;
                    ensure_topics(config, &connection).await;
                }
                Ok(Started {
                    connection,
                    producer: Arc::clone(producer),
                    reader: Reader::Kafka(consumer.clone()),
                })
            }
            #[cfg(feature = "nats")]
            Self::Nats(settings) => {
                let nats = crate::broker::nats::Connection::connect(
                    settings.clone(),
                    config.startup_timeout,
                )
                .await?;
                // At most once, topics are core NATS subjects: no stream is read or made.
                let core = config.delivery == crate::processing::Delivery::AtMostOnce;
                if !core {
                    for topic in &config.topics {
                        nats.stream(topic, true).await?;
                    }
                }
                let connection = Connection::Nats(nats.clone());
                ensure_topics(config, &connection).await;
                Ok(Started {
                    connection,
                    producer: Arc::new(Producer::Nats(crate::broker::nats::Publisher::new(
                        nats.clone(),
                    ))),
                    reader: Reader::Nats(nats, config.group.clone(), core),
                })
            }
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(settings) => {
                let rabbit = crate::broker::rabbitmq::Connection::connect(
                    settings.clone(),
                    config.startup_timeout,
                )
                .await?;
                for topic in &config.topics {
                    rabbit
                        .topic(topic, config.dead_letter_topic_of(topic).as_deref())
                        .await?;
                }
                let connection = Connection::RabbitMq(rabbit.clone());
                ensure_topics(config, &connection).await;
                Ok(Started {
                    connection,
                    producer: Arc::new(Producer::RabbitMq(
                        crate::broker::rabbitmq::Publisher::new(rabbit.clone()),
                    )),
                    reader: Reader::RabbitMq(rabbit, config.group.clone()),
                })
            }
            #[cfg(feature = "sqs")]
            Self::Sqs(settings, brokers) => {
                let sqs = crate::broker::sqs::Connection::connect(
                    brokers,
                    settings.clone(),
                    config.startup_timeout,
                )
                .await?;
                for topic in &config.topics {
                    sqs.queue(topic, config.dead_letter_topic_of(topic).as_deref())
                        .await?;
                }
                let connection = Connection::Sqs(sqs.clone());
                ensure_topics(config, &connection).await;
                Ok(Started {
                    connection,
                    producer: Arc::new(Producer::Sqs(crate::broker::sqs::Publisher::new(
                        sqs.clone(),
                    ))),
                    reader: Reader::Sqs(sqs, config.group.clone()),
                })
            }
        }
    }
}

impl Reader {
    /// The source of the worker's lanes, telling `shared` of assignments.
    #[cfg(feature = "kafka")]
    pub(crate) fn source<H: Process>(
        &self,
        shared: Arc<Shared<H>>,
    ) -> Result<Made<impl crate::broker::Source + Send + 'static + use<H>>> {
        let assignments = Rebalances::new(shared);
        match self {
            Self::Kafka(consumer) => Ok(Made::Kafka(consumer.consumer(assignments)?)),
            #[cfg(any(feature = "nats", feature = "rabbitmq", feature = "sqs"))]
            other => other.queue_source(assignments),
        }
    }

    /// The source of the worker's lanes, telling `shared` of assignments.
    #[cfg(not(feature = "kafka"))]
    pub(crate) fn source<H: Process>(
        &self,
        shared: Arc<Shared<H>>,
    ) -> Result<Made<std::convert::Infallible>> {
        self.queue_source(Rebalances::new(shared))
    }

    /// The source of a worker on NATS or RabbitMQ (whose sources are boxed in [`Made`]).
    #[cfg(any(feature = "nats", feature = "rabbitmq", feature = "sqs"))]
    fn queue_source<H: Process, C>(&self, assignments: Rebalances<H>) -> Result<Made<C>> {
        match self {
            #[cfg(feature = "kafka")]
            Self::Kafka(_) => Err(Error::config(
                "brokers (WEIR_BROKERS)",
                "Kafka's bootstrap servers are read by a consumer group, not a queue source",
            )),
            #[cfg(feature = "nats")]
            Self::Nats(nats, group, true) => Ok(Made::NatsCore(Box::new(nats.core_source(
                group,
                assignments,
                tokio::runtime::Handle::current(),
            )))),
            #[cfg(feature = "nats")]
            Self::Nats(nats, group, false) => Ok(Made::Nats(Box::new(nats.source(
                group,
                assignments,
                tokio::runtime::Handle::current(),
            )))),
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(rabbit, group) => Ok(Made::RabbitMq(Box::new(rabbit.source(
                group,
                assignments,
                tokio::runtime::Handle::current(),
            )))),
            #[cfg(feature = "sqs")]
            Self::Sqs(sqs, group) => Ok(Made::Sqs(Box::new(sqs.source(
                group,
                assignments,
                tokio::runtime::Handle::current(),
            )))),
        }
    }
}

/// Refuses what runs on Kafka and NATS only (pipelines, tables) on a queue broker, and a
/// changelog where `changelog_refused` says why (what the refusal adds): `on` says which
/// broker (`"amqp://..." names a RabbitMQ server`).
#[cfg(any(feature = "rabbitmq", feature = "sqs"))]
fn kafka_and_nats_only(
    config: &Config,
    in_pipeline: bool,
    on: &str,
    changelog_refused: Option<&str>,
) -> Result<()> {
    let unsupported = |what: &str| {
        Error::config(
            "brokers (WEIR_BROKERS)",
            format!("{what} run on Kafka and NATS only so far, and {on}"),
        )
    };
    if in_pipeline {
        return Err(unsupported("pipelines"));
    }
    if !config.tables(false).is_empty() || !config.tables(true).is_empty() {
        return Err(unsupported("tables"));
    }
    if let (true, Some(why)) = (config.changelog, changelog_refused) {
        return Err(Error::config(
            "changelog (WEIR_CHANGELOG)",
            format!(
                "changelogs run on Kafka, NATS and RabbitMQ only so far, and {on}{why}: turn the changelog off"
            ),
        ));
    }
    Ok(())
}

/// A broker weir supports behind a cargo feature: what `WEIR_BROKERS` names, the broker's
/// name and the feature.
type BrokerFeature = (&'static str, &'static str, &'static str);
#[cfg_attr(feature = "kafka", allow(dead_code))]
const KAFKA: BrokerFeature = (
    "Kafka's bootstrap servers (not nats://, amqp:// or sqs://)",
    "Kafka",
    "kafka",
);
#[cfg_attr(feature = "nats", allow(dead_code))]
const NATS: BrokerFeature = ("NATS servers", "NATS", "nats");
#[cfg_attr(feature = "rabbitmq", allow(dead_code))]
const RABBITMQ: BrokerFeature = ("a RabbitMQ server", "RabbitMQ", "rabbitmq");
#[cfg_attr(feature = "sqs", allow(dead_code))]
const SQS: BrokerFeature = ("Amazon SQS", "SQS", "sqs");

/// The error for `brokers` naming a broker this build of weir was built without. (Built in
/// every build, so that the test below checks it where the features are all on.)
#[cfg_attr(
    all(
        feature = "kafka",
        feature = "nats",
        feature = "rabbitmq",
        feature = "sqs"
    ),
    allow(dead_code)
)]
fn without_feature(brokers: &str, (names, broker, feature): BrokerFeature) -> Error {
    Error::config(
        "brokers (WEIR_BROKERS)",
        format!(
            "{brokers:?} names {names}, and this build of weir has no {broker} support: enable weir's `{feature}` feature"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_left_out_of_the_build_is_refused_by_its_feature() {
        let e = without_feature("localhost:9092", KAFKA).to_string();
        assert!(
            e.contains("\"localhost:9092\" names Kafka's bootstrap servers"),
            "{e}"
        );
        assert!(e.contains("enable weir's `kafka` feature"), "{e}");
        let e = without_feature("nats://h:4222", NATS).to_string();
        assert!(
            e.contains("no NATS support: enable weir's `nats` feature"),
            "{e}"
        );
        let e = without_feature("amqp://h", RABBITMQ).to_string();
        assert!(
            e.contains("no RabbitMQ support: enable weir's `rabbitmq` feature"),
            "{e}"
        );
    }
}
