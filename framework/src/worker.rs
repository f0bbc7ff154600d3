//! The worker: configuration, the embedded broker, the consumer thread and shutdown.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::FutureProducer;

use crate::config::{self, Config, KafkaProperty};
use crate::dead_letter::{DeadLetterSink, RetryPolicy};
use crate::outbox::OutboxSink;
use crate::rebalance::WeirContext;
use crate::shared::Shared;
use crate::{consumer_loop, metrics_server, EmbeddedBroker, Error, Process, Result};

/// Builds a [`Worker`]. Every setting can also come from the environment (see
/// [`with_env`](Self::with_env)).
#[derive(Debug, Clone, Default)]
pub struct WorkerBuilder {
    config: Config,
}

impl WorkerBuilder {
    /// Kafka bootstrap servers (`WEIR_BROKERS`). Without them the worker starts an embedded
    /// broker.
    pub fn brokers(mut self, brokers: impl Into<String>) -> Self {
        self.config.brokers = Some(brokers.into());
        self
    }

    /// The consumer group (`WEIR_GROUP`, default `weir`).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.config.group = group.into();
        self.config.explicit.insert(config::GROUP);
        self
    }

    /// Logs every state change to a compacted changelog topic, `<group>-<topic>-changelog`
    /// with as many partitions as `topic` (`WEIR_CHANGELOG`, default off). A worker assigned
    /// a partition whose local store is missing or behind rebuilds it from the changelog before
    /// processing, so state follows its partition to another machine. Workers create missing
    /// changelog topics at start (compacted, if the broker takes topic configs).
    pub fn changelog(mut self, on: bool) -> Self {
        self.config.changelog = on;
        self
    }

    /// Static group membership (`WEIR_INSTANCE_ID`, librdkafka's `group.instance.id`): give
    /// each worker process a stable, unique id (its host name, a pod's ordinal), and a restart
    /// within the session timeout gets its partitions back without a rebalance. Such a worker
    /// does not leave the group when it stops: its partitions wait for it until the session
    /// times out.
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.config.instance_id = Some(id.into());
        self
    }

    /// Adds a topic to consume (`WEIR_TOPICS`, comma-separated, replaces the list). Without
    /// any, the handler's declared topics are used.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.config.topics.push(topic.into());
        self.config.explicit.insert(config::TOPICS);
        self
    }

    /// Where partition stores live (`WEIR_STATE_DIR`, default `weir-state`):
    /// `<state_dir>/<group>/<topic>/<partition>.sqlite`.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.state_dir = dir.into();
        self
    }

    /// Most records per batch, i.e. per SQLite transaction (`WEIR_BATCH_SIZE`, default 5000).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.config.batch_size = n;
        self.config.explicit.insert(config::BATCH_SIZE);
        self
    }

    /// How long a batch waits for more records after its first (`WEIR_LINGER_MS`, default 5).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.config.linger = linger;
        self.config.explicit.insert(config::LINGER);
        self
    }

    /// Records buffered per partition before it is paused (`WEIR_QUEUE_CAPACITY`, default 10000).
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.config.queue_capacity = n;
        self.config.explicit.insert(config::QUEUE_CAPACITY);
        self
    }

    /// Partitions of each topic the embedded broker creates (`WEIR_EMBEDDED_PARTITIONS`,
    /// default 4).
    pub fn embedded_partitions(mut self, n: i32) -> Self {
        self.config.embedded_partitions = n;
        self
    }

    /// Serves `/metrics`, `/health/live` and `/health/ready` on `addr` (`WEIR_METRICS_ADDR`,
    /// e.g. `0.0.0.0:9464`; port 0 picks a free one, see [`Worker::metrics_addr`]).
    pub fn metrics_addr(mut self, addr: impl Into<String>) -> Self {
        self.config.metrics_addr = Some(addr.into());
        self
    }

    /// How often the progress line is logged (`WEIR_PROGRESS_INTERVAL_MS`, default 10 s; zero
    /// turns it off).
    pub fn progress_interval(mut self, every: Duration) -> Self {
        self.config.progress_interval = every;
        self
    }

    /// How long a graceful stop may take (`WEIR_DRAIN_TIMEOUT_MS`, default 30 s); past it,
    /// `run` returns [`Error::DrainTimeout`] naming the partitions not released.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self
    }

    /// How failing records are retried (`WEIR_RETRY_MAX_ATTEMPTS`, `WEIR_RETRY_BACKOFF_MS`,
    /// `WEIR_RETRY_MAX_BACKOFF_MS`; default 5 attempts, 100 ms doubling to 10 s).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
        for s in [config::MAX_ATTEMPTS, config::BACKOFF, config::MAX_BACKOFF] {
            self.config.explicit.insert(s);
        }
        self
    }

    /// Where records go once their retries are used up (`WEIR_DEAD_LETTER_TOPIC`, default
    /// `{topic}.dlq`, where `{topic}` is the source topic); `None` turns dead letters off, so
    /// a failing record is retried forever and its partition waits.
    pub fn dead_letter_topic(mut self, template: Option<&str>) -> Self {
        self.config.dead_letter_topic = template.map(str::to_owned);
        self.config.explicit.insert(config::DEAD_LETTER_TOPIC);
        self
    }

    /// Keeps per-key order across dead letters (`WEIR_DEAD_LETTER_KEEP_KEY_ORDER`, default
    /// false): once a record is dead-lettered, later records with its key follow it to the
    /// dead-letter topic instead of being processed out of order.
    pub fn keep_key_order(mut self, keep: bool) -> Self {
        self.config.keep_key_order = keep;
        self.config.explicit.insert(config::KEEP_KEY_ORDER);
        self
    }

    /// How long `run` waits at start for a broker to answer (`WEIR_STARTUP_TIMEOUT_MS`,
    /// default 30 s); past it, `run` fails with an error naming `WEIR_BROKERS`.
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.config.startup_timeout = timeout;
        self
    }

    /// Sets a librdkafka consumer property (`WEIR_KAFKA_<PROPERTY>`, dots as underscores).
    pub fn kafka(mut self, property: impl Into<String>, value: impl Into<String>) -> Self {
        let property = property.into();
        let origin = format!("kafka property {property}");
        self.config.set_kafka(property, value.into(), origin);
        self
    }

    /// Overrides settings with the `WEIR_*` environment variables that are set.
    pub fn with_env(mut self) -> Result<Self> {
        self.config.apply_env(std::env::vars())?;
        Ok(self)
    }

    /// Checks the settings and prepares the worker; starts the embedded broker (creating the
    /// topics) when no broker is configured.
    ///
    /// An embedded broker forgets everything when the process exits, so its stores go to a
    /// fresh `embedded-<pid>-<time>` folder inside the state dir: offsets from an earlier
    /// broker's life would not match the new one's.
    pub fn build<H: Process>(self, handler: H) -> Result<Worker<H>> {
        let mut config = self.config;
        config.apply_handler(&H::settings());
        config.validate()?;
        if config.brokers.is_none() {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            config.state_dir = config
                .state_dir
                .join(format!("embedded-{}-{secs}", std::process::id()));
        }
        check_state_dir(&config)?;
        let (brokers, embedded) = match &config.brokers {
            Some(b) => (b.clone(), None),
            None => {
                let broker = EmbeddedBroker::start(1)?;
                for topic in &config.topics {
                    broker.create_topic(topic, config.embedded_partitions)?;
                }
                tracing::warn!(
                    bootstrap = broker.bootstrap_servers(),
                    state_dir = %config.state_dir.display(),
                    "no broker configured (WEIR_BROKERS): running on the embedded in-process \
                     broker; it keeps only the newest ~5 MiB per partition and forgets \
                     everything on exit"
                );
                (
                    broker.bootstrap_servers().to_owned(),
                    Some(Arc::new(broker)),
                )
            }
        };
        if let Some(broker) = &embedded {
            for topic in &config.topics {
                if let Some(dl) = config.dead_letter_topic_of(topic) {
                    broker.create_topic(&dl, config.embedded_partitions)?;
                }
                if let Some(cl) = config.changelog_topic_of(topic) {
                    broker.create_topic(&cl, config.embedded_partitions)?;
                }
            }
        }
        let client = client_config(&config, &brokers)?;
        let producer = Arc::new(
            producer_config(&config, &brokers)
                .create::<FutureProducer>()
                .map_err(|e| {
                    Error::config(
                        "kafka properties",
                        format!("cannot create the producer (dead letters, outbox): {e}"),
                    )
                })?,
        );
        let metrics_listener = match &config.metrics_addr {
            Some(addr) => {
                // Install the recorder now, so that nothing recorded from here on is lost.
                metrics_server::prometheus();
                Some(bind_metrics(addr)?)
            }
            None => None,
        };
        Ok(Worker {
            config,
            brokers,
            client,
            metrics_listener,
            sink: DeadLetterSink::Kafka(Arc::clone(&producer)),
            outbox: OutboxSink::Kafka(producer),
            handler: Arc::new(handler),
            embedded,
        })
    }
}

/// A worker process's runtime: one consumer in the group, one task per owned partition.
///
/// ```no_run
/// # use weir::prelude::*;
/// # #[derive(Handler)]
/// # #[handler(value = Utf8)]
/// # struct Count;
/// # impl Process for Count {
/// #     type Error = weir::Error;
/// #     async fn process(&self, _: Record<'_, String>, _: &mut Ctx<'_>) -> weir::Result<()> { Ok(()) }
/// # }
/// # async fn run() -> weir::Result<()> {
/// Worker::builder().topic("lines").with_env()?.build(Count)?.run_until_signal().await
/// # }
/// ```
#[derive(Debug)]
pub struct Worker<H> {
    config: Config,
    brokers: String,
    client: ClientConfig,
    metrics_listener: Option<std::net::TcpListener>,
    sink: DeadLetterSink,
    outbox: OutboxSink,
    handler: Arc<H>,
    embedded: Option<Arc<EmbeddedBroker>>,
}

impl Worker<()> {
    /// A builder with the defaults.
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder::default()
    }

    /// A builder with the defaults overridden by the `WEIR_*` environment variables.
    pub fn from_env() -> Result<WorkerBuilder> {
        WorkerBuilder::default().with_env()
    }
}

impl<H: Process> Worker<H> {
    /// The bootstrap servers the worker uses (the embedded broker's when it runs embedded).
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The address `/metrics` and `/health/*` are served on, when a metrics address is set.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Where this worker's partition stores live.
    pub fn state_dir(&self) -> &std::path::Path {
        &self.config.state_dir
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.config.group
    }

    /// The embedded broker, when no broker was configured. It lives as long as the worker or
    /// any clone of this handle (keep one in a producer so it outlives the worker).
    pub fn embedded_broker(&self) -> Option<Arc<EmbeddedBroker>> {
        self.embedded.clone()
    }

    /// Runs until SIGINT or SIGTERM, then stops gracefully.
    pub async fn run_until_signal(self) -> Result<()> {
        self.run(shutdown_signal()).await
    }

    /// Runs until `shutdown` completes, then stops gracefully: in-flight batches finish and
    /// commit, stores close, the worker leaves the group.
    ///
    /// Dropping this future instead abandons the work like a crash would: tasks are aborted,
    /// uncommitted batches are lost from memory and processed again by the next owner.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let (control_tx, control_rx) = std_mpsc::channel();
        let shared = Arc::new(Shared::new(
            Arc::clone(&self.handler),
            self.config.clone(),
            tokio::runtime::Handle::current(),
            control_tx,
            self.sink.clone(),
            self.outbox.clone(),
            self.brokers.clone(),
        ));
        if self.embedded.is_none() {
            check_brokers(&self.client, &self.brokers, self.config.startup_timeout).await?;
            ensure_topics(&self.config, &self.brokers).await;
        }
        let consumer: BaseConsumer<WeirContext<H>> =
            self.client.create_with_context(WeirContext {
                shared: Arc::clone(&shared),
            })?;
        tracing::info!(
            group = %self.config.group, topics = ?self.config.topics, brokers = %self.brokers,
            embedded = self.embedded.is_some(), "worker starting"
        );
        let mut background = Vec::new();
        if let Some(listener) = self.metrics_listener {
            let listener =
                tokio::net::TcpListener::from_std(listener).map_err(|source| Error::Io {
                    context: "serving the metrics endpoint",
                    source,
                })?;
            background.push(tokio::spawn(metrics_server::serve(
                listener,
                shared.observed(),
            )));
        }
        if !self.config.progress_interval.is_zero() {
            background.push(tokio::spawn(metrics_server::log_progress(
                shared.observed(),
                self.config.progress_interval,
            )));
        }
        let _background = AbortOnDrop(background);
        let guard = AbandonOnDrop(Arc::clone(&shared));
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("weir-consumer".into())
            .spawn(move || {
                let result = consumer_loop::run(consumer, thread_shared, control_rx);
                let _ = done_tx.send(result);
            })
            .map_err(|source| Error::Io {
                context: "starting the consumer thread",
                source,
            })?;
        tokio::pin!(shutdown);
        let result = tokio::select! {
            r = &mut done_rx => r,
            () = &mut shutdown => {
                tracing::info!("shutdown requested: finishing in-flight batches");
                shared.stop.store(true, Ordering::SeqCst);
                shared.running.store(false, Ordering::SeqCst);
                let drain = self.config.drain_timeout;
                match tokio::time::timeout(drain, done_rx).await {
                    Ok(r) => r,
                    Err(_) => {
                        // Dropping `guard` abandons what is left, like a crash.
                        let partitions = shared.unreleased();
                        tracing::error!(?partitions, "graceful stop exceeded {drain:?}");
                        return Err(Error::DrainTimeout { timeout: drain, partitions });
                    }
                }
            }
        };
        shared.running.store(false, Ordering::SeqCst);
        std::mem::forget(guard);
        let result = result.unwrap_or_else(|_| Err(Error::Embedded("consumer thread died".into())));
        if result.is_ok() {
            tracing::info!("worker stopped");
        }
        result
    }
}

/// Aborts background tasks (metrics endpoint, progress log) when `run` ends.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

fn bind_metrics(addr: &str) -> Result<std::net::TcpListener> {
    let err = |e: std::io::Error| {
        Error::config(
            "metrics_addr (WEIR_METRICS_ADDR)",
            format!("cannot listen on {addr:?}: {e}"),
        )
    };
    let listener = std::net::TcpListener::bind(addr).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// Abandons the worker when its `run` future is dropped before finishing.
struct AbandonOnDrop<H>(Arc<Shared<H>>);

impl<H> Drop for AbandonOnDrop<H> {
    fn drop(&mut self) {
        self.0.abandon.store(true, Ordering::SeqCst);
    }
}

fn client_config(config: &Config, brokers: &str) -> Result<ClientConfig> {
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

/// The producer of dead letters, emitted records and changelog entries: idempotent, acks=all, with
/// the connection and security properties of the consumer.
fn producer_config(config: &Config, brokers: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all");
    for p in &config.kafka {
        let shared = [
            "security.",
            "sasl.",
            "ssl.",
            "client.",
            "socket.",
            "broker.",
        ];
        if shared.iter().any(|prefix| p.name.starts_with(prefix)) {
            client.set(&p.name, &p.value);
        }
    }
    client
}

/// Fails with an error naming `WEIR_BROKERS` unless a broker answers within `timeout`.
async fn check_brokers(client: &ClientConfig, brokers: &str, timeout: Duration) -> Result<()> {
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

/// Creates missing dead-letter topics (with the source topic's partition count). A broker that
/// cannot create topics gets a warning: the topic must then exist or be auto-created.
/// Creates missing dead-letter and changelog topics (a changelog compacted, with as many
/// partitions as its source topic); failures are warnings, since the topics may exist or be
/// auto-created.
async fn ensure_topics(config: &Config, brokers: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    // (source topic, topic, what it is, compacted)
    let mut wanted: Vec<(String, String, &str, bool)> = Vec::new();
    for t in &config.topics {
        if let Some(d) = config.dead_letter_topic_of(t) {
            wanted.push((t.clone(), d, "dead-letter topic", false));
        }
        if let Some(c) = config.changelog_topic_of(t) {
            wanted.push((t.clone(), c, "changelog topic", true));
        }
    }
    if wanted.is_empty() {
        return;
    }
    let admin: AdminClient<DefaultClientContext> = match ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("allow.auto.create.topics", "false")
        .create()
    {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!("cannot check dead-letter and changelog topics: {e}");
            return;
        }
    };
    let admin = Arc::new(admin);
    let meta_admin = Arc::clone(&admin);
    let metadata = tokio::task::spawn_blocking(move || {
        meta_admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
    })
    .await;
    let Ok(Ok(metadata)) = metadata else {
        tracing::warn!("cannot read topic metadata to check dead-letter and changelog topics");
        return;
    };
    let partitions = |name: &str| {
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
    };
    let missing: Vec<(NewTopic<'_>, &str)> = wanted
        .iter()
        .filter(|(_, name, _, _)| partitions(name).is_none())
        .map(|(src, name, kind, compacted)| {
            let t = NewTopic::new(
                name,
                partitions(src).unwrap_or(1).max(1),
                TopicReplication::Fixed(-1),
            );
            (
                if *compacted {
                    t.set("cleanup.policy", "compact")
                } else {
                    t
                },
                *kind,
            )
        })
        .collect();
    if missing.is_empty() {
        return;
    }
    let kind_of = |name: &str| {
        missing
            .iter()
            .find(|(t, _)| t.name == name)
            .map_or("topic", |(_, k)| *k)
    };
    let topics: Vec<&NewTopic<'_>> = missing.iter().map(|(t, _)| t).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
    let created =
        tokio::time::timeout(Duration::from_secs(10), admin.create_topics(topics, &opts)).await;
    match created {
        Ok(Ok(results)) => {
            for r in results {
                match r {
                    Ok(t) => tracing::info!(topic = %t, "{} created", kind_of(&t)),
                    Err((t, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                        tracing::debug!(topic = %t, "{} exists", kind_of(&t))
                    }
                    Err((t, e)) => {
                        tracing::warn!(topic = %t, "cannot create {} ({e}); it must exist or be auto-created", kind_of(&t))
                    }
                }
            }
        }
        Ok(Err(e)) => tracing::warn!(
            "cannot create dead-letter and changelog topics ({e}); they must exist or be auto-created"
        ),
        Err(_) => tracing::warn!(
            "creating dead-letter and changelog topics timed out; they must exist or be auto-created"
        ),
    }
}

fn check_state_dir(config: &Config) -> Result<()> {
    let dir = config.state_dir.join(&config.group);
    let err = |e: std::io::Error| {
        Error::config(
            "state_dir (WEIR_STATE_DIR)",
            format!("{} is not a writable directory: {e}", dir.display()),
        )
    };
    std::fs::create_dir_all(&dir).map_err(err)?;
    let probe = dir.join(".weir-write-probe");
    std::fs::write(&probe, b"ok").map_err(err)?;
    std::fs::remove_file(&probe).map_err(err)?;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                tracing::error!("cannot listen for SIGINT/SIGTERM; stop with Ctrl-C");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
