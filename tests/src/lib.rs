//! Test harness for weir: the two brokers (embedded mock cluster and tansu), producing test
//! data, a counting handler with fault injection, and readers of partition stores.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use weir::prelude::*;
use weir::worker::EmbeddedBroker;
use weir_state::PartitionStore;

pub mod outage;
pub mod own_tansu;
pub mod sasl;
pub mod tally;
pub mod tls;

/// Environment variable with the real broker's address, set by `scripts/test.sh`.
pub const TANSU_ENV: &str = "WEIR_TEST_TANSU";

/// A command for a worker binary of this crate that inherits no `WEIR_*` variable from the
/// test's environment (a worker refuses variables that are no setting, such as
/// [`TANSU_ENV`]); the test sets the ones it means.
pub fn worker_command(bin: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(bin);
    for (name, _) in std::env::vars() {
        if name.starts_with("WEIR_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// The Python interpreter with confluent-kafka (`scripts/python-env.sh`, which
/// `scripts/test.sh` runs before the tests; run here too, so a single test works alone).
pub fn python() -> &'static Path {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let out = std::process::Command::new("bash")
            .arg(format!("{root}/scripts/python-env.sh"))
            .output()
            .expect("run scripts/python-env.sh");
        assert!(
            out.status.success(),
            "scripts/python-env.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// Produces `count` records (key `k{i % 50}`, value `v{i}`, i from `start`) to `topic` with
/// the Python confluent-kafka client, compressed with `codec`, plus librdkafka properties
/// `settings`; panics unless all are acknowledged.
pub fn python_produce(
    bootstrap: &str,
    topic: &str,
    start: usize,
    count: usize,
    codec: &str,
    settings: &[(&str, &str)],
) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/py/produce.py");
    let mut cmd = std::process::Command::new(python());
    cmd.args([script, bootstrap, topic, &count.to_string()])
        .args(["--codec", codec, "--start", &start.to_string()]);
    for (k, v) in settings {
        cmd.args(["--set", &format!("{k}={v}")]);
    }
    let out = cmd.output().expect("run produce.py");
    assert!(
        out.status.success(),
        "produce.py ({codec}) failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let acked: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert_eq!(
        acked, count,
        "produce.py ({codec}) acknowledged {acked} of {count}"
    );
}

/// Produces 300 records with the Python client (compressed with `codec`) through `broker`'s
/// connection properties (TLS, SASL), and checks that a worker (changelog on) over the same
/// connection counts them exactly.
pub async fn python_records_counted(broker: &TestBroker, codec: &str) {
    let (topic, group) = (unique("secured"), unique("g"));
    broker.create_topic(&topic, 2).await;
    let props: Vec<(&str, &str)> = broker
        .connection
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    python_produce(broker.bootstrap(), &topic, 0, 300, codec, &props);
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = RunningWorker::spawn(
        broker
            .worker(&group, &topic, dir.path())
            .changelog(true)
            .build(CountHandler::default())
            .expect("build"),
    );
    let expected = expected_counts(&keyed_records(0, 300, 50));
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected,
        Duration::from_secs(60),
    )
    .await;
    worker.stop_cleanly().await;
}

/// Starts worker binary `bin` (a test's `env!("CARGO_BIN_EXE_count-worker")`) against
/// `bootstrap` with `props` as `WEIR_KAFKA_*` variables and a 5 s startup timeout, expecting
/// it to fail at start: (exit code, stderr, how long it ran). Panics if it is still running
/// after 30 s.
pub fn start_failure(
    bin: &str,
    bootstrap: &str,
    props: &[(&str, &str)],
) -> (Option<i32>, String, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = worker_command(bin);
    cmd.env("WEIR_BROKERS", bootstrap)
        .env("WEIR_TOPICS", "t")
        .env("WEIR_STATE_DIR", dir.path())
        .env("WEIR_STARTUP_TIMEOUT_MS", "5000")
        .env("RUST_LOG", "error")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in props {
        cmd.env(
            format!("WEIR_KAFKA_{}", k.to_ascii_uppercase().replace('.', "_")),
            v,
        );
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn the worker");
    loop {
        if child.try_wait().expect("wait").is_some() {
            let out = child.wait_with_output().expect("output");
            return (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
                started.elapsed(),
            );
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the worker hung at start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

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

/// A record fails twice, 10 ms apart, before it is dead-lettered.
pub const TWO_QUICK_ATTEMPTS: weir::worker::RetryPolicy = weir::worker::RetryPolicy {
    max_attempts: 2,
    backoff: Duration::from_millis(10),
    max_backoff: Duration::from_millis(10),
};

/// What most tests start from: a broker, a topic (with its `.dlq`) and a group unique to the
/// test, and a state directory.
#[derive(Debug)]
pub struct Fixture {
    /// The broker.
    pub broker: TestBroker,
    /// The test's topic.
    pub topic: String,
    /// The test's consumer group.
    pub group: String,
    /// The state directory (removed when dropped).
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// Starts `kind`, creates a topic `<prefix>-…` with `partitions` partitions.
    pub async fn new(kind: BrokerKind, prefix: &str, partitions: i32) -> Self {
        let broker = TestBroker::start(kind);
        let (topic, group) = (unique(prefix), unique("g"));
        broker.create_topic(&topic, partitions).await;
        let dir = tempfile::tempdir().expect("tempdir");
        Self {
            broker,
            topic,
            group,
            dir,
        }
    }
}

/// `n` keyed records over `keys` distinct keys: key `k{i % keys}`, value `v{i}`.
pub fn keyed_records(start: usize, n: usize, keys: usize) -> Vec<(String, String)> {
    (start..start + n)
        .map(|i| (format!("k{}", i % keys), format!("v{i}")))
        .collect()
}

/// The per-key counts `records` should produce.
pub fn expected_counts(records: &[(String, String)]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for (k, _) in records {
        *m.entry(k.clone()).or_insert(0) += 1;
    }
    m
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

/// Waits until `check` returns `Ok`, polling every 100 ms; past `timeout` panics with the last
/// thing `check` saw.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(()) => return,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Partitions a handler processed records of (`CountHandler::seen_partitions`).
pub type Seen = Arc<Mutex<std::collections::BTreeSet<i32>>>;

/// Produces rounds of `per_round` keyed records into `topic` until, within one round, two
/// handlers both processed records and between them every one of its `partitions`, none by
/// both: the group has settled with both workers. Returns every record produced and the
/// partitions each handler processed in that round; the seen sets are cleared every round.
pub async fn produce_until_split(
    broker: &TestBroker,
    topic: &str,
    (seen_a, seen_b): (&Seen, &Seen),
    partitions: usize,
    per_round: usize,
) -> (Vec<(String, String)>, BTreeSet<i32>, BTreeSet<i32>) {
    let mut all = Vec::new();
    let mut split = (BTreeSet::new(), BTreeSet::new());
    wait_until(
        "both workers to process records, and every partition by one of them",
        Duration::from_secs(90),
        || {
            let sa = std::mem::take(&mut *seen_a.lock().expect("lock"));
            let sb = std::mem::take(&mut *seen_b.lock().expect("lock"));
            let settled = !sa.is_empty()
                && !sb.is_empty()
                && sa.is_disjoint(&sb)
                && sa.len() + sb.len() == partitions;
            let batch = keyed_records(all.len(), per_round, 300);
            if !settled {
                all.extend(batch.clone());
            }
            let seen = format!("in the last round A processed {sa:?}, B {sb:?}");
            split = (sa, sb);
            async move {
                if settled {
                    return Ok(());
                }
                broker.produce(topic, None, batch).await;
                Err(seen)
            }
        },
    )
    .await;
    (all, split.0, split.1)
}

/// The partition stores of `topic` in `state_dir` for `group`, by partition.
pub fn store_files(state_dir: &Path, group: &str, topic: &str) -> BTreeMap<i32, PathBuf> {
    let dir = state_dir.join(group).join(topic);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let path = e.path();
            let name = path.file_name()?.to_str()?;
            let p = name.strip_suffix(".sqlite")?.parse().ok()?;
            Some((p, path))
        })
        .collect()
}

/// Copies the files of `from` into `to` (a stopped worker's state dir: a machine's disk as it
/// was at that moment).
pub fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// What the stores of one topic hold: per-key counts summed over partitions, and each
/// partition's next offset.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoredCounts {
    /// Per key, summed over partitions.
    pub counts: BTreeMap<String, u64>,
    /// Next offset per partition.
    pub offsets: BTreeMap<i32, i64>,
}

impl StoredCounts {
    /// Reads the committed state of every partition store of `topic`.
    pub fn read(state_dir: &Path, group: &str, topic: &str) -> Self {
        let mut out = Self::default();
        for (p, path) in store_files(state_dir, group, topic) {
            let store = PartitionStore::open(&path).expect("open store");
            if let Some(o) = store.next_offset(topic, p).expect("offset") {
                out.offsets.insert(p, o);
            }
            for (k, v) in store.entries::<String, u64>(COUNTS).expect("entries") {
                *out.counts.entry(k).or_insert(0) += v;
            }
        }
        out
    }

    /// Records counted in all.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// Waits until a [`CountHandler`] made with `stall_on` hangs at its record (`stalled`).
pub async fn wait_stalled(stalled: &std::sync::atomic::AtomicBool) {
    wait_until(
        "the handler to hang at its record",
        Duration::from_secs(60),
        || async {
            if stalled.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("not reached yet".into())
            }
        },
    )
    .await;
}

/// Waits until the stores of `topic` count at least `min` records in all.
pub async fn wait_for_total(
    state_dir: &Path,
    group: &str,
    topic: &str,
    min: u64,
    timeout: Duration,
) {
    wait_until(&format!("{min} records counted"), timeout, || async {
        let total = StoredCounts::read(state_dir, group, topic).total();
        if total >= min {
            Ok(())
        } else {
            Err(format!("{total} counted"))
        }
    })
    .await;
}

/// Waits until the stores count `expected` records in all, then checks per-key equality.
pub async fn wait_for_counts(
    state_dir: &Path,
    group: &str,
    topic: &str,
    expected: &BTreeMap<String, u64>,
    timeout: Duration,
) -> StoredCounts {
    let want: u64 = expected.values().sum();
    wait_until(&format!("{want} records counted"), timeout, || async {
        let s = StoredCounts::read(state_dir, group, topic);
        if s.total() >= want {
            Ok(())
        } else {
            Err(format!("{} counted, offsets {:?}", s.total(), s.offsets))
        }
    })
    .await;
    let s = StoredCounts::read(state_dir, group, topic);
    assert_counts_exact(&s.counts, expected);
    s
}

/// Panics, listing the differing keys, unless `got == expected`.
pub fn assert_counts_exact(got: &BTreeMap<String, u64>, expected: &BTreeMap<String, u64>) {
    if got == expected {
        return;
    }
    let diffs: Vec<String> = expected
        .keys()
        .chain(got.keys())
        .filter(|k| got.get(*k) != expected.get(*k))
        .take(10)
        .map(|k| format!("{k}: got {:?}, expected {:?}", got.get(k), expected.get(k)))
        .collect();
    panic!(
        "counts differ (got {} in all, expected {}): {}",
        got.values().sum::<u64>(),
        expected.values().sum::<u64>(),
        diffs.join("; ")
    );
}

/// The state store the counting handler writes.
pub const COUNTS: &str = "counts";

/// Counts records per key in state. Optionally fails on records whose value is `poison`, and
/// notes which partitions it processed.
#[derive(Debug, Default, Clone, weir::Handler)]
#[handler(value = Utf8)]
pub struct CountHandler {
    /// Failures left per poison value: each failing attempt takes one; `u64::MAX` never heals.
    pub poison: Arc<Mutex<HashMap<String, u64>>>,
    /// Partitions this handler processed records of.
    pub seen_partitions: Arc<Mutex<std::collections::BTreeSet<i32>>>,
    /// Records processed (attempts, including failed ones).
    pub attempts: Arc<AtomicU64>,
    /// Panic instead of returning an error on poison.
    pub panic_on_poison: bool,
    /// Hang forever at the record with this value (to crash a worker mid-batch).
    pub stall_on: Option<String>,
    /// Set once the handler reached `stall_on`.
    pub stalled: Arc<std::sync::atomic::AtomicBool>,
    /// Opens the stall: `release.open()` lets a stalled record finish.
    pub release: Gate,
    /// Sleep this long on every record (a slow handler).
    pub delay: Option<Duration>,
    /// Sleep this long on the record with this value.
    pub slow_on: Option<(String, Duration)>,
    /// Every attempt, in order: partition, value, when it started.
    pub log: Arc<Mutex<Vec<(i32, String, std::time::Instant)>>>,
}

impl CountHandler {
    /// A handler that fails `times` attempts at a record whose value is `value`.
    pub fn with_poison(value: &str, times: u64) -> Self {
        let h = Self::default();
        h.poison
            .lock()
            .expect("lock")
            .insert(value.to_owned(), times);
        h
    }

    /// Failing attempts left for `value`.
    pub fn poison_left(&self, value: &str) -> u64 {
        self.poison
            .lock()
            .expect("lock")
            .get(value)
            .copied()
            .unwrap_or(0)
    }
}

/// A gate that starts closed; once opened, every waiter passes.
#[derive(Debug, Clone)]
pub struct Gate(Arc<tokio::sync::Semaphore>);

impl Default for Gate {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(0)))
    }
}

impl Gate {
    /// Lets every waiter, now and later, pass.
    pub fn open(&self) {
        self.0.close();
    }

    /// Waits until the gate is open.
    pub async fn passed(&self) {
        // A closed semaphore fails every acquire at once: that is the open gate.
        let _ = self.0.acquire().await;
    }
}

/// Error of the counting handler.
#[derive(Debug, thiserror::Error)]
pub enum CountError {
    /// An injected failure.
    #[error("poison record {0}")]
    Poison(String),
    /// A state error.
    #[error(transparent)]
    Weir(#[from] weir::Error),
}

impl Process for CountHandler {
    type Error = CountError;

    async fn process(&self, rec: Record<'_, String>, ctx: &mut Ctx<'_>) -> Result<(), CountError> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        self.log.lock().expect("lock").push((
            rec.partition(),
            rec.value().clone(),
            std::time::Instant::now(),
        ));
        self.seen_partitions
            .lock()
            .expect("lock")
            .insert(rec.partition());
        let failing = {
            let mut poison = self.poison.lock().expect("lock");
            match poison.get_mut(rec.value().as_str()) {
                Some(left) if *left > 0 => {
                    if *left != u64::MAX {
                        *left -= 1;
                    }
                    true
                }
                _ => false,
            }
        };
        let key = rec.key_str().unwrap_or("").to_owned();
        if self.stall_on.as_deref() == Some(rec.value().as_str()) {
            ctx.state::<str, u64>(COUNTS)
                .update(&key, |n| Some(n.unwrap_or(0) + 1))?;
            self.stalled.store(true, Ordering::SeqCst);
            self.release.passed().await;
            return Ok(());
        }
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        if let Some((v, d)) = &self.slow_on {
            if v == rec.value() {
                tokio::time::sleep(*d).await;
            }
        }
        let mut counts = ctx.state::<str, u64>(COUNTS);
        // Write before failing, so a failed batch really has writes to throw away.
        counts.update(&key, |n| Some(n.unwrap_or(0) + 1))?;
        if failing {
            if self.panic_on_poison {
                panic!("injected panic at {}", rec.value());
            }
            return Err(CountError::Poison(rec.value().clone()));
        }
        Ok(())
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,librdkafka=warn,rdkafka=warn".into()),
        )
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

/// A worker running on the test's runtime until [`stop`](Self::stop)ped.
#[derive(Debug)]
pub struct RunningWorker {
    stop: tokio::sync::oneshot::Sender<()>,
    run: tokio::task::JoinHandle<weir::Result<()>>,
}

impl RunningWorker {
    /// Spawns `worker.run(...)` with a shutdown that [`stop`](Self::stop) triggers.
    pub fn spawn<H: Process>(worker: Worker<H>) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(worker.run(async {
            let _ = stopped.await;
        }));
        Self { stop, run }
    }

    /// Asks for a graceful stop and returns what `run` returned.
    pub async fn stop(self) -> weir::Result<()> {
        let _ = self.stop.send(());
        self.run.await.expect("the worker task panicked")
    }

    /// Asks for a graceful stop and panics unless it succeeds.
    pub async fn stop_cleanly(self) {
        self.stop().await.expect("the worker stops cleanly");
    }

    /// Drops the running worker without a graceful stop, like a crash.
    pub async fn crash(self) {
        self.run.abort();
        assert!(self.run.await.expect_err("aborted").is_cancelled());
    }
}

/// How many times `needle` occurs in the files of `dir` (worker logs).
pub fn count_in_logs(dir: &Path, needle: &str) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|f| {
            std::fs::read_to_string(f.path())
                .unwrap_or_default()
                .matches(needle)
                .count()
        })
        .sum()
}

/// Waits until `done()` (records processed, as the test counts them) reaches `want`; past
/// `timeout` panics with the last count.
pub async fn wait_processed(timeout: Duration, want: i64, mut done: impl FnMut() -> i64) {
    wait_until("records processed", timeout, || {
        let done = done();
        async move {
            if done >= want {
                Ok(())
            } else {
                Err(format!("{done} of {want} processed"))
            }
        }
    })
    .await;
}

/// [`read_all`] over every partition `topic` has: a topic several tests share (an example's
/// output topic) may have been created by another test, with another partition count.
pub fn read_every_partition(bootstrap: &str, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("client");
    let partitions = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata")
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len() as i32);
    read_all(bootstrap, topic, partitions)
}

/// Every record of `topic` (with `partitions` partitions), read from the beginning to its end
/// (a partition EOF: tansu's ListOffsets answer can be short of the end, a fetch response's
/// high watermark is not); panics after 60 s.
pub fn read_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut at_end = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while at_end.len() < partitions as usize {
        assert!(
            std::time::Instant::now() < deadline,
            "reading {topic}: {} records, partitions at their end {at_end:?}",
            out.len()
        );
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(m.detach()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// The value of header `name` of `m`, as text.
pub fn header(m: &rdkafka::message::OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::{Headers, Message};
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// GETs `path` from a worker's metrics endpoint: (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_get_with(addr, path, &[]).await
}

/// [`http_get`] with extra request headers, e.g. `[("Authorization", "Bearer t")]`.
pub async fn http_get_with(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    sock.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").as_bytes())
        .await
        .expect("send");
    let mut buf = String::new();
    sock.read_to_string(&mut buf).await.expect("read");
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `name{labels}` in a Prometheus text body, e.g.
/// `sample(&body, "weir_consumer_lag", &[("partition", "0")])`.
pub fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|(_, v)| v.parse().ok())
}

/// Resident memory of this process in MiB (Linux).
pub fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
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

/// A worker process of a kill test: SIGKILLed, or stopped with SIGTERM (and expected to exit
/// 0); killed when dropped.
#[derive(Debug)]
pub struct WorkerProcess(pub Option<std::process::Child>);

impl WorkerProcess {
    /// Starts `cmd` (a [`worker_command`] with the test's own `WEIR_*` settings) with the kill
    /// tests' group timings, no progress line, and its output in the file `log`.
    pub fn start(mut cmd: std::process::Command, log: &Path) -> Self {
        let log = std::fs::File::create(log).expect("log");
        let child = cmd
            .env("WEIR_KAFKA_SESSION_TIMEOUT_MS", SESSION_TIMEOUT_MS)
            .env("WEIR_KAFKA_HEARTBEAT_INTERVAL_MS", "500")
            .env("WEIR_PROGRESS_INTERVAL_MS", "0")
            .env("RUST_LOG", "warn,weir::delivery::restore=info")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn the worker process");
        Self(Some(child))
    }

    /// SIGKILLs the process and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and asserts a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let exit = c.wait().expect("wait");
            assert!(exit.success(), "graceful stop failed: {exit}");
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `main` of the test's worker binaries: logs to stdout (`RUST_LOG`, default info), runs
/// `handler` with the `WEIR_*` settings until SIGINT/SIGTERM, and exits 1 on an error.
pub async fn run_worker_process<H: Process>(name: &str, handler: H) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,librdkafka=warn".into()),
        )
        .init();
    let result = async { Worker::from_env()?.build(handler)?.run_until_signal().await }.await;
    if let Err(e) = result {
        eprintln!("{name}: {e}");
        std::process::exit(1);
    }
}
