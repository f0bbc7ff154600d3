//! The worker's builder: settings first, then `build` checks them and prepares the worker.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::delivery::RetryPolicy;
#[cfg(feature = "kafka")]
use crate::error::Error;
use crate::error::Result;
use crate::processing::Process;
#[cfg(feature = "kafka")]
use crate::processing::repartition_topic;
use crate::runtime::Worker;
#[cfg(feature = "kafka")]
use crate::runtime::stages::Stages;
#[cfg(feature = "kafka")]
use std::sync::Arc;

/// Builds a [`Worker`]. Every setting can also come from the environment (see
/// [`with_env`](Self::with_env)).
#[derive(Debug, Clone, Default)]
pub struct WorkerBuilder {
    config: Config,
}

impl WorkerBuilder {
    /// The broker (`WEIR_BROKERS`): Kafka bootstrap servers, NATS servers (`nats://...`) or a
    /// RabbitMQ server (`amqp://...`). Without it the worker starts an embedded broker (Kafka's,
    /// with the `kafka` feature).
    pub fn brokers(mut self, brokers: impl Into<String>) -> Self {
        self.config.brokers = Some(brokers.into());
        self.config.given("brokers");
        self
    }

    /// The consumer group (`WEIR_GROUP`, default `weir`).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.config.group = group.into();
        self.config.given("group");
        self
    }

    /// Logs every state change to a compacted changelog topic, `<group>-<topic>-changelog`
    /// with as many partitions as `topic` (`WEIR_CHANGELOG`, default off). A worker assigned
    /// a partition whose local store is missing or behind rebuilds it from the changelog before
    /// processing, so state follows its partition to another machine. Workers create missing
    /// changelog topics at start (compacted, if the broker takes topic configs).
    pub fn changelog(mut self, on: bool) -> Self {
        self.config.changelog = on;
        self.config.given("changelog");
        self
    }

    /// Static group membership (`WEIR_INSTANCE_ID`, librdkafka's `group.instance.id`): give
    /// each worker process a stable, unique id (its host name, a pod's ordinal), and a restart
    /// within the session timeout gets its partitions back without a rebalance. Such a worker
    /// does not leave the group when it stops: its partitions wait for it until the session
    /// times out.
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.config.instance_id = Some(id.into());
        self.config.given("instance_id");
        self
    }

    /// Adds a topic to consume (`WEIR_TOPICS`, comma-separated, replaces the list). Without
    /// any, the handler's declared topics are used.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.config.topics.push(topic.into());
        self.config.given("topics");
        self
    }

    /// Where partition stores live (`WEIR_STATE_DIR`, default `weir-state`):
    /// `<state_dir>/<group>/<topic>/<partition>.sqlite`.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.state_dir = dir.into();
        self.config.given("state_dir");
        self
    }

    /// Most records per batch, i.e. per SQLite transaction (`WEIR_BATCH_SIZE`, default 10000).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.config.batch_size = n;
        self.config.given("batch_size");
        self
    }

    /// How long a batch waits for more records after its first (`WEIR_LINGER_MS`, default 5).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.config.linger = linger;
        self.config.given("linger");
        self
    }

    /// Records buffered per partition before it is paused (`WEIR_QUEUE_CAPACITY`, default 40000).
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.config.queue_capacity = n;
        self.config.given("queue_capacity");
        self
    }

    /// MiB of records (keys, payloads, headers) buffered per partition before it is paused,
    /// whichever of this and [`queue_capacity`](Self::queue_capacity) comes first
    /// (`WEIR_QUEUE_CAPACITY_MB`, default 16).
    pub fn queue_capacity_mb(mut self, mib: usize) -> Self {
        self.config.queue_capacity_mb = mib;
        self.config.given("queue_capacity_mb");
        self
    }

    /// MiB of committed state values the worker keeps in memory, all partitions together, so
    /// that reading a key again costs no SQLite query (`WEIR_STATE_CACHE_MB`, default 256;
    /// 0 turns the cache off). Values the partitions read least recently go first.
    pub fn state_cache_mb(mut self, mib: usize) -> Self {
        self.config.state_cache_mb = mib;
        self.config.given("state_cache_mb");
        self
    }

    /// Partitions of each topic the embedded broker creates (`WEIR_EMBEDDED_PARTITIONS`,
    /// default 4).
    pub fn embedded_partitions(mut self, n: i32) -> Self {
        self.config.embedded_partitions = n;
        self.config.given("embedded_partitions");
        self
    }

    /// Lanes of each stream weir creates on NATS (`WEIR_PARTITIONS`, default 4): a stream
    /// `T` that is missing is made with subjects `T.>`, partitioned by key into `n` lanes.
    pub fn partitions(mut self, n: i32) -> Self {
        self.config.partitions = n;
        self.config.given("partitions");
        self
    }

    /// SQS: long-polling receives in flight per queue, ten messages each (`WEIR_SQS_RECEIVES`,
    /// default 4).
    pub fn sqs_receives(mut self, n: usize) -> Self {
        self.config.sqs_receives = n;
        self.config.given("sqs_receives");
        self
    }

    /// RabbitMQ: the ready messages each lane queue holds at most (`WEIR_QUEUE_MAX_LENGTH`,
    /// default none). Lane queues weir declares get it as `x-max-length` with
    /// `x-overflow: reject-publish` (a full lane refuses publishes instead of dropping its
    /// oldest messages); for lanes declared elsewhere, say the limit they were given. Each
    /// lane's fill shows as `weir_queue_fill_ratio`, with a warning past 80%.
    pub fn queue_max_length(mut self, n: u32) -> Self {
        self.config.queue_max_length = Some(n);
        self.config.given("queue_max_length");
        self
    }

    /// An NKey/JWT credentials file to connect to NATS with (`WEIR_NATS_CREDS`).
    pub fn nats_creds(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config.nats_creds = Some(path.into());
        self.config.given("nats_creds");
        self
    }

    /// On NATS, how long a worker that stopped pulling keeps its lanes, and its delivered
    /// but unacknowledged messages wait, before another worker takes them
    /// (`WEIR_HAND_OFF_MS`, default 10 s): the bound of a hand-off after a crash. A graceful
    /// stop hands its lanes over at once.
    pub fn hand_off(mut self, after: Duration) -> Self {
        self.config.hand_off = after;
        self.config.given("hand_off");
        self
    }

    /// Serves `/metrics`, `/health/live` and `/health/ready` on `addr` (`WEIR_METRICS_ADDR`,
    /// e.g. `0.0.0.0:9464`; port 0 picks a free one, see [`Worker::metrics_addr`]).
    pub fn metrics_addr(mut self, addr: impl Into<String>) -> Self {
        self.config.metrics_addr = Some(addr.into());
        self.config.given("metrics_addr");
        self
    }

    /// Serves `GET /state/{store}/{key}` on the metrics address, answering with the value of
    /// `key` in `store` from the owned partition that holds it, for requests that carry this
    /// bearer token (`WEIR_HTTP_TOKEN`, at least 16 characters; default unset: off).
    pub fn http_token(mut self, token: impl Into<String>) -> Self {
        self.config.http_token = Some(crate::config::Secret(token.into()));
        self.config.given("http_token");
        self
    }

    /// How the input topics' producers partition keys, for finding a key's partition in
    /// `/state/...` queries (`WEIR_KEY_PARTITIONER`: `murmur2`, Kafka's Java client and weir's
    /// outputs, the default; or `crc32`, librdkafka's default).
    pub fn key_partitioner(mut self, partitioner: crate::config::KeyPartitioner) -> Self {
        self.config.key_partitioner = partitioner;
        self.config.given("key_partitioner");
        self
    }

    /// How often the progress line is logged (`WEIR_PROGRESS_INTERVAL_MS`, default 10 s; zero
    /// turns it off).
    pub fn progress_interval(mut self, every: Duration) -> Self {
        self.config.progress_interval = every;
        self.config.given("progress_interval");
        self
    }

    /// How long a graceful stop may take (`WEIR_DRAIN_TIMEOUT_MS`, default 30 s); past it,
    /// `run` returns [`Error::DrainTimeout`](crate::Error::DrainTimeout) naming the partitions not released.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self.config.given("drain_timeout");
        self
    }

    /// How long records may wait on a partition, none arriving from the broker although it is
    /// neither paused nor restoring, before the partition is reported unreadable
    /// (`WEIR_UNREADABLE_AFTER_MS`, default 60 s): an ERROR log naming it and the consumer's
    /// error (e.g. a compression codec this build lacks), `weir_partition_unreadable`, and
    /// `/health/ready` failing. It clears once records arrive.
    pub fn unreadable_after(mut self, after: Duration) -> Self {
        self.config.unreadable_after = after;
        self.config.given("unreadable_after");
        self
    }

    /// How failing records are retried (`WEIR_RETRY_MAX_ATTEMPTS`, `WEIR_RETRY_BACKOFF_MS`,
    /// `WEIR_RETRY_MAX_BACKOFF_MS`; default 5 attempts, 100 ms doubling to 10 s).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
        for s in ["max_attempts", "backoff", "max_backoff"] {
            self.config.given(s);
        }
        self
    }

    /// Where records go once their retries are used up (`WEIR_DEAD_LETTER_TOPIC`, default
    /// `{topic}.dlq`, where `{topic}` is the source topic); `None` turns dead letters off, so
    /// a failing record is retried forever and its partition waits.
    pub fn dead_letter_topic(mut self, template: Option<&str>) -> Self {
        self.config.dead_letter_topic = template.map(str::to_owned);
        self.config.given("dead_letter_topic");
        self
    }

    /// Keeps per-key order across dead letters (`WEIR_DEAD_LETTER_KEEP_KEY_ORDER`, default
    /// false): once a record is dead-lettered, later records with its key follow it to the
    /// dead-letter topic instead of being processed out of order.
    pub fn keep_key_order(mut self, keep: bool) -> Self {
        self.config.keep_key_order = keep;
        self.config.given("keep_key_order");
        self
    }

    /// Takes records' event time from the top-level field `name` of their JSON values
    /// (milliseconds since the Unix epoch, a number or a string of digits) instead of the
    /// handler's own (`WEIR_EVENT_TIME_FIELD`; by default the handler's, which is the
    /// record's Kafka timestamp unless it says otherwise). A record without the field takes
    /// the handler's event time.
    pub fn event_time_field(mut self, name: &str) -> Self {
        self.config.event_time_field = Some(name.to_owned());
        self.config.given("event_time_field");
        self
    }

    /// Where late records go: records whose windows are all closed (`WEIR_LATE_TOPIC`,
    /// default `{topic}.late`, where `{topic}` is the source topic). `None` drops them; they
    /// are counted in `weir_late_records_total` and logged either way.
    pub fn late_topic(mut self, template: Option<&str>) -> Self {
        self.config.late_topic = template.map(str::to_owned);
        self.config.given("late_topic");
        self
    }

    /// After this long without records, a partition's watermark advances with the wall clock
    /// (by the time passed since its last record), so that its last windows close and its
    /// event-time timers fire without new data (`WEIR_IDLE_CLOSE_AFTER_MS`, default off).
    /// Records arriving later with older event times may then be late.
    pub fn idle_close_after(mut self, after: Duration) -> Self {
        self.config.idle_close_after = (!after.is_zero()).then_some(after);
        self.config.given("idle_close_after");
        self
    }

    /// How long `run` waits at start for a broker to answer (`WEIR_STARTUP_TIMEOUT_MS`,
    /// default 30 s); past it, `run` fails with an error naming `WEIR_BROKERS`.
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.config.startup_timeout = timeout;
        self.config.given("startup_timeout");
        self
    }

    /// Takes a partition that has no stored state (and nothing in its changelog) although its
    /// first records were deleted by retention, folding only the history that is left
    /// (`WEIR_ALLOW_PARTIAL_HISTORY`, default false: such a partition stops the worker with
    /// an error naming it).
    pub fn allow_partial_history(mut self, allow: bool) -> Self {
        self.config.allow_partial_history = allow;
        self.config.given("allow_partial_history");
        self
    }

    /// Reads table `T` from `topic` instead of its declared topic (another environment's
    /// name, say).
    pub fn table_topic<T: crate::processing::TableDef>(mut self, topic: impl Into<String>) -> Self {
        self.config
            .table_topics
            .insert(T::NAME.to_owned(), topic.into());
        self
    }

    /// Sets a librdkafka consumer property (`WEIR_KAFKA_<PROPERTY>`, dots as underscores).
    pub fn kafka(mut self, property: impl Into<String>, value: impl Into<String>) -> Self {
        let property = property.into();
        let origin = format!("kafka property {property}");
        self.config.set_kafka(property, value.into(), origin);
        self
    }

    #[cfg(feature = "kafka")]
    pub(crate) fn from_config(config: Config) -> Self {
        Self { config }
    }

    #[cfg(feature = "kafka")]
    pub(crate) fn into_config(self) -> Config {
        self.config
    }

    /// Consumes the repartition topic of pipeline stage `stage`.
    #[cfg(feature = "kafka")]
    pub(crate) fn repartitioned_input(self, stage: &str) -> Self {
        let topic = repartition_topic(self.config.pipeline_group(), stage);
        self.topic(topic)
    }

    /// Builds the worker of pipeline stage `stage`.
    #[cfg(feature = "kafka")]
    pub(crate) fn build_stage<H: Process>(
        self,
        stage: &str,
        handler: H,
        stages: Arc<Stages>,
    ) -> Result<Worker<H>> {
        let mut config = self.config;
        config.apply_handler(&H::settings());
        if config.topics.is_empty() {
            return Err(Error::config(
                "pipeline stage",
                format!(
                    "stage {stage:?} has no input topic: declare one with the handler, give one with stage_with, or use repartitioned_stage"
                ),
            ));
        }
        config.validate()?;
        let stores = config.state_dir.join(&config.group);
        stages.add_inputs(stage, &config.topics, stores);
        Worker::prepare_in(config, handler, Some(stages))
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
        Worker::prepare(config, handler)
    }
}

impl Worker<()> {
    /// A builder with the defaults.
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder::default()
    }

    /// A builder with the defaults overridden by the `WEIR_*` environment variables. Called
    /// inside a tokio runtime (a worker's `main`), it also starts listening for SIGINT and
    /// SIGTERM, so that a signal during startup stops the worker gracefully (see
    /// [`run_until_signal`](Worker::run_until_signal)).
    pub fn from_env() -> Result<WorkerBuilder> {
        crate::runtime::signals::listen();
        WorkerBuilder::default().with_env()
    }
}
