//! The brokers a test runs on (the embedded mock cluster and tansu), and what a test does with
//! them: topics, producing, offsets.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use weir::prelude::*;
use weir::worker::EmbeddedBroker;

use crate::waits::wait_until;

/// Environment variable with the real broker's address, set by `scripts/test.sh`.
pub const TANSU_ENV: &str = "WEIR_TEST_TANSU";

/// Session timeout for tests: short, so a killed member leaves the group quickly.
pub const SESSION_TIMEOUT_MS: &str = "6000";

/// Which broker a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// librdkafka's in-process mock cluster.
    Mock,
    /// tansu on 127.0.0.1, started by `scripts/broker.sh`.
    Tansu,
}

/// A broker a test talks to.
#[derive(Debug)]
pub struct TestBroker {
    kind: BrokerKind,
    bootstrap: String,
    embedded: Option<EmbeddedBroker>,
    /// Connection properties every client of the test sets (TLS, SASL).
    connection: Vec<(String, String)>,
}

impl TestBroker {
    /// A broker at `bootstrap` that behaves like tansu (a private instance, e.g. behind a proxy).
    pub fn tansu_at(bootstrap: String) -> Self {
        init_tracing();
        Self {
            kind: BrokerKind::Tansu,
            bootstrap,
            embedded: None,
            connection: Vec::new(),
        }
    }

    /// A fresh mock cluster of `brokers` brokers (for partition leaders and fault injection
    /// per broker).
    pub fn mock_cluster(brokers: i32) -> Self {
        init_tracing();
        let broker = EmbeddedBroker::start(brokers).expect("start mock cluster");
        Self {
            kind: BrokerKind::Mock,
            bootstrap: broker.bootstrap_servers().to_owned(),
            embedded: Some(broker),
            connection: Vec::new(),
        }
    }

    /// A fresh mock cluster, or the shared tansu broker.
    pub fn start(kind: BrokerKind) -> Self {
        init_tracing();
        match kind {
            BrokerKind::Mock => Self::mock_cluster(1),
            BrokerKind::Tansu => {
                let bootstrap = std::env::var(TANSU_ENV).unwrap_or_else(|_| {
                    panic!(
                        "{TANSU_ENV} is not set: the real-broker tests need tansu running. \
                         Run the suite with scripts/test.sh, which installs and starts it."
                    )
                });
                Self {
                    kind,
                    bootstrap,
                    embedded: None,
                    connection: Vec::new(),
                }
            }
        }
    }

    /// The connection properties (TLS, SASL) every client of this broker uses.
    pub fn connection(&self) -> &[(String, String)] {
        &self.connection
    }

    /// The same broker, reached with these connection properties (TLS, SASL) by every
    /// client the harness makes and every worker it builds.
    pub fn with_connection(mut self, properties: &[(&str, &str)]) -> Self {
        self.connection = properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }

    /// A client configuration for this broker.
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in &self.connection {
            c.set(k, v);
        }
        c
    }

    /// Which broker this is.
    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    /// Its bootstrap servers.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The mock cluster, for fault injection.
    pub fn embedded(&self) -> Option<&EmbeddedBroker> {
        self.embedded.as_ref()
    }

    /// Creates `topic` with `partitions` partitions, and its dead-letter topic `<topic>.dlq`.
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        self.create_one_topic(topic, partitions).await;
        self.create_one_topic(&format!("{topic}.dlq"), partitions)
            .await;
    }

    /// Creates `topic` alone (no dead-letter topic).
    pub async fn create_one_topic(&self, topic: &str, partitions: i32) {
        self.create_topic_once(topic, partitions, false).await;
    }

    /// Deletes `topic` and waits until the broker's metadata no longer has it.
    pub async fn delete_topic(&self, topic: &str) {
        use rdkafka::admin::{AdminClient, AdminOptions};
        use rdkafka::client::DefaultClientContext;
        let admin: AdminClient<DefaultClientContext> = self.client().create().expect("admin");
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for r in admin.delete_topics(&[topic], &opts).await.expect("delete") {
            r.unwrap_or_else(|(t, e)| panic!("deleting {t}: {e}"));
        }
        let (broker_client, name) = (self.client(), topic.to_owned());
        wait_until("the topic to be gone", Duration::from_secs(30), move || {
            let (client, name) = (broker_client.clone(), name.clone());
            async move {
                let gone = tokio::task::spawn_blocking(move || {
                    use rdkafka::consumer::{BaseConsumer, Consumer};
                    let c: BaseConsumer = client
                        .clone()
                        .set("allow.auto.create.topics", "false")
                        .create()
                        .map_err(|e| e.to_string())?;
                    let md = c
                        .fetch_metadata(Some(&name), Duration::from_secs(5))
                        .map_err(|e| e.to_string())?;
                    Ok::<bool, String>(
                        !md.topics()
                            .iter()
                            .any(|t| t.name() == name && t.error().is_none()),
                    )
                })
                .await
                .map_err(|e| e.to_string())??;
                if gone {
                    Ok(())
                } else {
                    Err("still listed".to_owned())
                }
            }
        })
        .await;
    }

    /// Creates `topic` unless it exists (a topic with a fixed name that several tests share,
    /// such as an example's output topic).
    pub async fn ensure_topic(&self, topic: &str, partitions: i32) {
        self.create_topic_once(topic, partitions, true).await;
    }

    async fn create_topic_once(&self, topic: &str, partitions: i32, may_exist: bool) {
        if let Some(broker) = &self.embedded {
            if let Err(e) = broker.create_topic(topic, partitions) {
                assert!(
                    may_exist && e.to_string().to_lowercase().contains("exist"),
                    "create topic {topic}: {e}"
                );
            }
            return;
        }
        let admin: AdminClient<DefaultClientContext> =
            self.client().create().expect("admin client");
        // tansu answers DescribeConfigs with {}: give topics explicit retention settings.
        let topic_def = NewTopic::new(topic, partitions, TopicReplication::Fixed(1))
            .set("retention.ms", "-1")
            .set("retention.bytes", "-1");
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics([&topic_def], &opts)
            .await
            .expect("create topics");
        for r in results {
            match r {
                Ok(_) => {}
                Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) if may_exist => {}
                Err((t, e)) => panic!("creating topic {t}: {e}"),
            }
        }
    }

    /// A worker builder for this broker, with test-friendly group timings.
    pub fn worker(&self, group: &str, topic: &str, state_dir: &Path) -> weir::WorkerBuilder {
        let mut builder = Worker::builder()
            .brokers(&self.bootstrap)
            .group(group)
            .topic(topic)
            .state_dir(state_dir)
            .kafka("session.timeout.ms", SESSION_TIMEOUT_MS)
            .kafka("heartbeat.interval.ms", "500");
        for (k, v) in &self.connection {
            builder = builder.kafka(k, v);
        }
        builder
    }

    /// Waits until `group` has no members (a dropped worker's consumer has left) and is
    /// described as empty. Not on the mock cluster, which does not describe groups.
    pub async fn wait_group_empty(&self, group: &str, timeout: Duration) {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let client: BaseConsumer = self.client().create().expect("client");
        let client = Arc::new(client);
        wait_until(&format!("group {group} to be empty"), timeout, || {
            let client = Arc::clone(&client);
            let group = group.to_owned();
            async move {
                tokio::task::spawn_blocking(move || {
                    let list = client
                        .fetch_group_list(Some(&group), Duration::from_secs(5))
                        .map_err(|e| e.to_string())?;
                    // Its state too: tansu describes a group's state but lists no members.
                    let busy: Vec<String> = list
                        .groups()
                        .iter()
                        .filter(|g| {
                            !g.members().is_empty() || !matches!(g.state(), "Empty" | "Dead" | "")
                        })
                        .map(|g| format!("{} members, state {}", g.members().len(), g.state()))
                        .collect();
                    if busy.is_empty() {
                        Ok(())
                    } else {
                        Err(busy.join("; "))
                    }
                })
                .await
                .map_err(|e| e.to_string())?
            }
        })
        .await;
    }

    /// The offsets `group` has committed to Kafka for partitions `0..partitions` of `topic`.
    pub fn kafka_committed(&self, group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::{Offset, TopicPartitionList};
        let client: BaseConsumer = self
            .client()
            .set("group.id", group)
            .create()
            .expect("client");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let committed = client
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect()
    }

    /// Reads records of `topic` from the beginning until `n` arrived; panics past `timeout`.
    pub async fn consume(
        &self,
        topic: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<rdkafka::message::OwnedMessage> {
        use rdkafka::consumer::{Consumer, StreamConsumer};
        let consumer: StreamConsumer = self
            .client()
            .set("group.id", unique("reader"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", SESSION_TIMEOUT_MS)
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while out.len() < n {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(m)) => out.push(m.detach()),
                Ok(Err(e)) => panic!("reading {topic}: {e}"),
                Err(_) => panic!(
                    "read {} of {n} records of {topic} within {timeout:?}",
                    out.len()
                ),
            }
        }
        out
    }

    /// Produces `(key, value, headers)` records to `partition` and waits until every one is
    /// acknowledged.
    pub async fn produce_with_headers(
        &self,
        topic: &str,
        partition: i32,
        records: &[HeadedRecord],
    ) {
        use rdkafka::message::{Header, OwnedHeaders};
        let producer: FutureProducer = self
            .client()
            .set("linger.ms", "5")
            .set("message.timeout.ms", "60000")
            .create()
            .expect("producer");
        for (key, value, headers) in records {
            let mut hs = OwnedHeaders::new();
            for (k, v) in headers {
                hs = hs.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let rec = FutureRecord::to(topic)
                .key(key)
                .payload(value)
                .partition(partition)
                .headers(hs);
            if let Err((e, _)) = producer.send(rec, Duration::from_secs(60)).await {
                panic!("delivery failed: {e}");
            }
        }
    }

    /// Produces `(key, value)` records (to `partition` when given, else by key hash) and waits
    /// until every one is acknowledged.
    pub async fn produce(
        &self,
        topic: &str,
        partition: Option<i32>,
        records: impl IntoIterator<Item = (String, String)>,
    ) {
        let producer: FutureProducer = self
            .client()
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "1000000")
            .set("message.timeout.ms", "60000")
            .create()
            .expect("producer");
        let mut inflight = Vec::new();
        for (key, value) in records {
            let mut rec = FutureRecord::to(topic).key(&key).payload(&value);
            if let Some(p) = partition {
                rec = rec.partition(p);
            }
            let fut = producer
                .send_result(rec)
                .unwrap_or_else(|(e, _)| panic!("enqueue record: {e}"));
            inflight.push(fut);
            if inflight.len() >= 50_000 {
                await_all(&mut inflight).await;
            }
        }
        await_all(&mut inflight).await;
        producer.flush(Duration::from_secs(30)).expect("flush");
    }
}

async fn await_all(inflight: &mut Vec<rdkafka::producer::DeliveryFuture>) {
    for fut in inflight.drain(..) {
        match fut.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => panic!("delivery failed: {e}"),
            Err(_) => panic!("delivery canceled"),
        }
    }
}

/// A record to produce with headers: key, value, (header name, value) pairs.
pub type HeadedRecord = (String, String, Vec<(String, String)>);

pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,librdkafka=warn,rdkafka=warn".into()),
        )
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

/// Runs `test` once per broker kind, as two `#[tokio::test]`s named `<name>_mock` and
/// `<name>_tansu`.
#[macro_export]
macro_rules! on_both_brokers {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn mock() {
                super::$body($crate::BrokerKind::Mock).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn tansu() {
                super::$body($crate::BrokerKind::Tansu).await
            }
        }
    };
}

/// A name unique to this test run: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}
