//! RabbitMQ, through `lapin`. Topic `T` is the exchange `T`, a consistent-hash exchange that
//! feeds its lanes, the quorum queues `T.0 .. T.<N-1>`, by routing key (the record's key), so
//! one key always reaches one lane. Each lane is consumed with single active consumer: the
//! broker gives it to one worker of the group at a time, and to the next when that one's
//! connection goes (`source`). weir publishes with publisher confirms and a deterministic
//! `message_id` (`publisher`). A changelog `C` is a stream per lane, `C.0 .. C.<N-1>`
//! (`log_reader`).

mod log_reader;
mod publisher;
mod source;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ConnectionProperties, ExchangeKind};

use crate::broker::WantedTopic;
use crate::error::{Error, Result};

pub use log_reader::StreamPoint;
pub(crate) use log_reader::{LogReader, LogRecord};
pub(crate) use publisher::Publisher;
pub(crate) use source::RabbitSource;

/// The exchange type that routes by a hash of the routing key (the
/// `rabbitmq_consistent_hash_exchange` plugin).
const CONSISTENT_HASH: &str = "x-consistent-hash";
/// Deliveries of a lane's message after which the broker dead-letters it on its own: a
/// backstop, above weir's own attempts, for a message that crashes every worker that takes it
/// (weir's retries run in the worker and are not redeliveries).
const DELIVERY_LIMIT: i64 = 20;
/// AMQP's persistent delivery mode.
const PERSISTENT: u8 = 2;

/// How a worker connects to RabbitMQ and lays out what it declares.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `amqp://user:pass@host:port/vhost` (`amqps://` for TLS).
    pub(crate) url: String,
    /// The lanes of a topic weir declares (`WEIR_PARTITIONS`).
    pub(crate) partitions: i32,
    /// Messages a lane's consumer holds unacknowledged at most (`basic.qos`): the lane's queue
    /// capacity, so the broker's flow control is the backpressure.
    pub(crate) prefetch: u16,
    /// The ready messages a lane queue holds at most (`queue_max_length`).
    pub(crate) max_length: Option<u32>,
}

/// A connection to RabbitMQ, shared by the worker's clients; made again when it drops.
#[derive(Clone)]
pub(crate) struct Connection(Arc<Inner>);

pub(crate) struct Inner {
    settings: Settings,
    connection: tokio::sync::Mutex<Option<lapin::Connection>>,
    /// The lanes of each topic read or declared.
    topics: Mutex<HashMap<String, i32>>,
    /// The topics that are streams (a stream `T` and no exchange `T`): one lane each.
    streams: Mutex<std::collections::HashSet<String>>,
    /// Since when no connection could be made, while none can.
    down_since: Mutex<Option<Instant>>,
    /// Held while a topic is looked up or declared.
    declaring: tokio::sync::Mutex<()>,
}

impl std::ops::Deref for Connection {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("rabbitmq::Connection")
            .field("url", &redacted(&self.settings.url))
            .finish_non_exhaustive()
    }
}

/// `url` without its password, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Connection {
    /// Connects, waiting up to `timeout` for the broker to answer.
    pub(crate) async fn connect(settings: Settings, timeout: Duration) -> Result<Self> {
        let connection = Self(Arc::new(Inner {
            settings,
            connection: tokio::sync::Mutex::new(None),
            topics: Mutex::default(),
            streams: Mutex::default(),
            down_since: Mutex::default(),
            declaring: tokio::sync::Mutex::new(()),
        }));
        match tokio::time::timeout(timeout, connection.channel()).await {
            Ok(Ok(_)) => Ok(connection),
            Ok(Err(e)) => Err(unreachable(&connection.settings.url, e, timeout)),
            Err(_) => Err(unreachable(
                &connection.settings.url,
                "the connection timed out".into(),
                timeout,
            )),
        }
    }

    /// A connection for a tool's few requests.
    async fn tool(url: &str, timeout: Duration) -> Result<Self> {
        let settings = Settings {
            url: url.to_owned(),
            partitions: 1,
            prefetch: 1,
            max_length: None,
        };
        Self::connect(settings, timeout).await
    }

    /// Closes the connection (a tool's, once done).
    async fn close(&self) {
        if let Some(c) = self.connection.lock().await.take() {
            let _ = c.close(200, "done").await;
        }
    }

    /// A new channel, on the connection, made again if it dropped.
    pub(crate) async fn channel(&self) -> Result<Channel, String> {
        let mut held = self.connection.lock().await;
        if let Some(c) = held.as_ref().filter(|c| c.status().connected()) {
            return c.create_channel().await.map_err(|e| e.to_string());
        }
        match lapin::Connection::connect(&self.settings.url, properties()).await {
            Ok(c) => {
                if lock(&self.down_since).take().is_some() {
                    tracing::info!("connected to RabbitMQ again");
                }
                let channel = c.create_channel().await.map_err(|e| e.to_string());
                *held = Some(c);
                channel
            }
            Err(e) => {
                let mut since = lock(&self.down_since);
                if since.is_none() {
                    tracing::warn!(
                        "cannot connect to RabbitMQ at {}: {e}; trying again",
                        redacted(&self.settings.url)
                    );
                    *since = Some(Instant::now());
                }
                Err(e.to_string())
            }
        }
    }

    /// Since when no connection could be made, while none can.
    pub(crate) fn disconnected_since(&self) -> Option<Instant> {
        *lock(&self.down_since)
    }

    /// Whether `topic` was found to be a stream (read or declared before).
    pub(crate) fn is_stream(&self, topic: &str) -> bool {
        lock(&self.streams).contains(topic)
    }

    /// The lanes of `topic` (read or declared before).
    pub(crate) fn lanes_of(&self, topic: &str) -> Option<i32> {
        lock(&self.topics).get(topic).copied()
    }

    /// The lane queues of `topic`: those of its exchange as it exists (`T.0`, `T.1`, ...), or,
    /// when the exchange is missing, the exchange and [`Settings::partitions`] lanes declared,
    /// each dead-lettering to `dead_letters` when given.
    pub(crate) async fn topic(&self, topic: &str, dead_letters: Option<&str>) -> Result<i32> {
        if let Some(n) = self.lanes_of(topic) {
            return Ok(n);
        }
        let lanes = self
            .ensure(topic, self.settings.partitions, dead_letters)
            .await
            .map_err(|e| Error::config("topics (WEIR_TOPICS)", format!("topic {topic}: {e}")))?;
        if lanes == 0 {
            return Err(Error::config(
                "topics (WEIR_TOPICS)",
                format!(
                    "exchange {topic} exists without lane queues {topic}.0, {topic}.1, ...: declare them (quorum queues with single active consumer, bound to it) or remove the exchange so that weir declares it"
                ),
            ));
        }
        Ok(lanes)
    }

    /// The messages ready in queue (or stream) `queue`; `None`: no such queue.
    async fn ready_in(&self, queue: &str) -> Result<Option<u32>, String> {
        // A failed passive declare closes its channel: one channel per question.
        let channel = self.channel().await?;
        let declared = channel
            .queue_declare(
                queue,
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        let ready = declared.ok().map(|q| q.message_count());
        if ready.is_some() {
            let _ = channel.close(200, "done").await;
        }
        Ok(ready)
    }

    /// How many of `T.0`, `T.1`, ... exist (a missing one ends the count).
    async fn count_lanes(&self, topic: &str) -> Result<i32, String> {
        let mut lanes = 0;
        loop {
            if self.ready_in(&lane_queue(topic, lanes)).await?.is_none() {
                return Ok(lanes);
            }
            lanes += 1;
        }
    }

    /// Declares `topic`'s lane queues, then its exchange, then the bindings: a topic whose
    /// exchange exists has all of its lanes, even where its declarer died half-way.
    async fn declare(
        &self,
        topic: &str,
        lanes: i32,
        dead_letters: Option<&str>,
    ) -> Result<(), String> {
        let channel = self.channel().await?;
        let queues: Vec<String> = (0..lanes).map(|lane| lane_queue(topic, lane)).collect();
        for queue in &queues {
            let mut args = FieldTable::default();
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(LongString::from("quorum")),
            );
            args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
            // A full lane refuses what is published to it (publishers with confirms get a
            // nack) rather than dropping its oldest messages.
            if let Some(limit) = self.settings.max_length {
                args.insert("x-max-length".into(), AMQPValue::LongLongInt(limit.into()));
                args.insert(
                    "x-overflow".into(),
                    AMQPValue::LongString(LongString::from("reject-publish")),
                );
            }
            // The broker's delivery limit only where its dead letters go somewhere: past it a
            // message without a dead-letter exchange would be dropped.
            if let Some(dlx) = dead_letters {
                args.insert(
                    "x-delivery-limit".into(),
                    AMQPValue::LongLongInt(DELIVERY_LIMIT),
                );
                args.insert(
                    "x-dead-letter-exchange".into(),
                    AMQPValue::LongString(LongString::from(dlx)),
                );
            }
            channel
                .queue_declare(
                    queue,
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    args,
                )
                .await
                .map_err(|e| e.to_string())?;
        }
        exchange(&channel, topic, false)
            .await
            .map_err(|e| e.to_string())?;
        for queue in &queues {
            // Equal weights: each lane takes an equal share of the hash space.
            channel
                .queue_bind(
                    queue,
                    topic,
                    "1",
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| e.to_string())?;
        }
        let _ = channel.close(200, "done").await;
        Ok(())
    }

    /// Holds the server-side lock on declaring `topic`: the exclusive queue `T.declaring`,
    /// which the server gives to one connection at a time and drops with a connection that
    /// dies. Waits up to [`DECLARING_WAIT`] for another client's declaration to end.
    async fn declaring_lock(&self, topic: &str) -> Result<DeclaringLock, String> {
        let name = format!("{topic}.declaring");
        let waited = Instant::now();
        loop {
            match self.exclusive(&name).await? {
                Some(channel) => return Ok(DeclaringLock { channel, name }),
                None if waited.elapsed() < DECLARING_WAIT => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                None => {
                    return Err(format!(
                        "another client has been declaring it for {DECLARING_WAIT:?} (it holds the exclusive queue {name})"
                    ));
                }
            }
        }
    }

    /// Declares the exclusive queue `name`, a lock the server gives to one connection at a
    /// time and drops with the connection that holds it: the channel it was declared on, or
    /// `None` while another connection holds it.
    async fn exclusive(&self, name: &str) -> Result<Option<Channel>, String> {
        let channel = self.channel().await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("classic")),
        );
        let held = channel
            .queue_declare(
                name,
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                args,
            )
            .await;
        match held {
            Ok(_) => Ok(Some(channel)),
            Err(e) if is_locked(&e) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Declares the topics of `wanted` that are missing (emits, dead letters, late records;
    /// changelogs as streams), with as many lanes as the largest topic they are like.
    pub(crate) async fn create_missing(&self, wanted: Vec<WantedTopic>) {
        for w in wanted {
            let like = w
                .partitions_like
                .iter()
                .filter_map(|t| self.lanes_of(t))
                .max()
                .unwrap_or(self.settings.partitions);
            if self.lanes_of(&w.name).is_some() {
                continue;
            }
            let declared = if w.compacted {
                self.changelog_streams(&w.name, like).await
            } else {
                self.ensure(&w.name, like, None).await.map(drop)
            };
            if let Err(e) = declared {
                tracing::warn!(topic = %w.name, kind = w.kind, "{e}");
            }
        }
    }

    /// Declares changelog `topic`'s streams `T.0 .. T.<lanes-1>` (a declaration of a stream
    /// that exists changes nothing). weir gives them no retention: a stream does not compact,
    /// and one that dropped its oldest records could drop a key's last value.
    async fn changelog_streams(&self, topic: &str, lanes: i32) -> Result<(), String> {
        for lane in 0..lanes.max(1) {
            let stream = lane_queue(topic, lane);
            // A stream that exists is used as it is (its arguments may be the user's).
            if self.ready_in(&stream).await?.is_some() {
                continue;
            }
            let channel = self.channel().await?;
            let mut args = FieldTable::default();
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(LongString::from("stream")),
            );
            channel
                .queue_declare(
                    &stream,
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    args,
                )
                .await
                .map_err(|e| format!("declaring stream {stream}: {e}"))?;
            let _ = channel.close(200, "done").await;
        }
        lock(&self.topics).insert(topic.to_owned(), lanes.max(1));
        Ok(())
    }

    /// The lanes of `topic` as its exchange has them, declaring the exchange and `lanes` lanes
    /// (dead-lettering to `dead_letters`) when it is missing; remembered for
    /// [`lanes_of`](Self::lanes_of). One declaration at a time, in this process and on the
    /// server: a record published while another task is still binding the lanes would find no
    /// queue, and a worker counting the lanes of a topic another is declaring would miss some.
    async fn ensure(
        &self,
        topic: &str,
        lanes: i32,
        dead_letters: Option<&str>,
    ) -> Result<i32, String> {
        let _one = self.declaring.lock().await;
        if let Some(n) = self.lanes_of(topic) {
            return Ok(n);
        }
        // Workers starting together on a new topic: one declares, the others then count.
        let held = self.declaring_lock(topic).await?;
        let lanes = self.look_up_or_declare(topic, lanes, dead_letters).await;
        held.release().await;
        let lanes = lanes?;
        if lanes > 0 {
            lock(&self.topics).insert(topic.to_owned(), lanes);
        }
        Ok(lanes)
    }

    async fn look_up_or_declare(
        &self,
        topic: &str,
        lanes: i32,
        dead_letters: Option<&str>,
    ) -> Result<i32, String> {
        let channel = self.channel().await?;
        let exists = exchange(&channel, topic, true).await.is_ok();
        let lanes = if exists {
            self.count_lanes(topic).await?
        } else if self.ready_in(topic).await?.is_some() {
            // No exchange, and a queue of the topic's own name: a stream, read as one lane.
            lock(&self.streams).insert(topic.to_owned());
            tracing::info!(%topic, "{topic} is a stream: read as one lane, from the stored position");
            1
        } else {
            let lanes = lanes.max(1);
            self.declare(topic, lanes, dead_letters).await?;
            tracing::info!(%topic, lanes, "declared exchange {topic} and its lane queues");
            lanes
        };
        let _ = channel.close(200, "done").await;
        Ok(lanes)
    }
}

/// How long a worker waits for another client's declaration of a topic.
const DECLARING_WAIT: Duration = Duration::from_secs(60);

/// The held lock on declaring a topic ([`Connection::declaring_lock`]).
struct DeclaringLock {
    channel: Channel,
    name: String,
}

impl DeclaringLock {
    /// Deletes the lock's queue (were that to fail, the server deletes it with the connection).
    async fn release(self) {
        if let Err(e) = self
            .channel
            .queue_delete(&self.name, Default::default())
            .await
        {
            tracing::warn!(queue = %self.name, "could not delete the declaration lock: {e}");
        }
        let _ = self.channel.close(200, "done").await;
    }
}

/// Lapin on the current tokio runtime.
fn properties() -> ConnectionProperties {
    ConnectionProperties::default()
        .with_connection_name("weir".into())
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
}

/// A connection to the RabbitMQ server at `url` on the current tokio runtime, for a tool's
/// own requests (`weir dlq`); gives up after `timeout` without an answer.
pub async fn connect(url: &str, timeout: Duration) -> Result<lapin::Connection> {
    match tokio::time::timeout(timeout, lapin::Connection::connect(url, properties())).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(unreachable(url, e.to_string(), timeout)),
        Err(_) => Err(unreachable(url, "the connection timed out".into(), timeout)),
    }
}

fn unreachable(url: &str, cause: String, timeout: Duration) -> Error {
    Error::config(
        "brokers (WEIR_BROKERS)",
        format!(
            "no RabbitMQ server answered at {} within {timeout:?}: {cause}",
            redacted(url)
        ),
    )
}

/// A header value (or table field) as bytes: strings as they are, other values as their text.
pub fn header_bytes(value: &AMQPValue) -> Vec<u8> {
    match value {
        AMQPValue::LongString(s) => s.as_bytes().to_vec(),
        AMQPValue::ShortString(s) => s.as_str().as_bytes().to_vec(),
        AMQPValue::ByteArray(b) => b.as_slice().to_vec(),
        AMQPValue::Boolean(b) => b.to_string().into_bytes(),
        AMQPValue::ShortShortInt(v) => v.to_string().into_bytes(),
        AMQPValue::ShortShortUInt(v) => v.to_string().into_bytes(),
        AMQPValue::ShortInt(v) => v.to_string().into_bytes(),
        AMQPValue::ShortUInt(v) => v.to_string().into_bytes(),
        AMQPValue::LongInt(v) => v.to_string().into_bytes(),
        AMQPValue::LongUInt(v) => v.to_string().into_bytes(),
        AMQPValue::LongLongInt(v) => v.to_string().into_bytes(),
        AMQPValue::Timestamp(v) => v.to_string().into_bytes(),
        AMQPValue::Float(v) => v.to_string().into_bytes(),
        AMQPValue::Double(v) => v.to_string().into_bytes(),
        other => format!("{other:?}").into_bytes(),
    }
}

/// Declares `topic`'s durable consistent-hash exchange, or only asks whether it exists
/// (`passive`: a missing one fails and closes the channel).
async fn exchange(channel: &Channel, topic: &str, passive: bool) -> lapin::Result<()> {
    let options = ExchangeDeclareOptions {
        passive,
        durable: true,
        ..Default::default()
    };
    let kind = ExchangeKind::Custom(CONSISTENT_HASH.into());
    channel
        .exchange_declare(topic, kind, options, FieldTable::default())
        .await
}

/// Whether the server refused `e` because another connection holds the resource (405).
fn is_locked(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 405)
}

/// The queue of `topic`'s lane `lane`: `T.<lane>`.
pub fn lane_queue(topic: &str, lane: i32) -> String {
    format!("{topic}.{lane}")
}

/// Declares topic `topic` on the RabbitMQ server at `url` as a worker does when it is missing:
/// the consistent-hash exchange and `lanes` lane queues, dead-lettering to `dead_letters` when
/// given; for tools (a topic that exists is left as it is).
pub async fn declare_topic(
    url: &str,
    topic: &str,
    lanes: i32,
    dead_letters: Option<&str>,
    timeout: Duration,
) -> Result<()> {
    let connection = Connection::tool(url, timeout).await?;
    let declared = connection.ensure(topic, lanes, dead_letters).await;
    connection.close().await;
    declared
        .map(drop)
        .map_err(|e| crate::error::BrokerError::new("rabbitmq", std::io::Error::other(e)).into())
}

/// What a tool (`weir reset`) needs of a stream topic on the RabbitMQ server at `url`.
#[derive(Debug)]
pub struct StreamTool(Connection);

impl StreamTool {
    /// Connects, waiting up to `timeout` for the server.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self> {
        Connection::tool(url, timeout).await.map(Self)
    }

    /// Whether `topic` is read as a stream: a queue of its name and no exchange (`false`: an
    /// exchange with lane queues, or nothing).
    pub async fn is_stream(&self, topic: &str) -> Result<bool> {
        let channel = self.0.channel().await.map_err(tool_error)?;
        if exchange(&channel, topic, true).await.is_ok() {
            let _ = channel.close(200, "done").await;
            return Ok(false);
        }
        Ok(self.0.ready_in(topic).await.map_err(tool_error)?.is_some())
    }

    /// Whether a worker of `group` reads stream `topic` or waits to (its ownership queue has
    /// consumers).
    pub async fn owned(&self, topic: &str, group: &str) -> Result<bool> {
        let lock = source::owner_lock(topic, group);
        let channel = self.0.channel().await.map_err(tool_error)?;
        let declared = channel
            .queue_declare(
                &lock,
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        let consumers = declared.map_or(0, |q| q.consumer_count());
        // (A missing queue closed the channel already.)
        let _ = channel.close(200, "done").await;
        Ok(consumers > 0)
    }

    /// Whether queue (or stream) `queue` exists.
    pub async fn exists(&self, queue: &str) -> Result<bool> {
        Ok(self.0.ready_in(queue).await.map_err(tool_error)?.is_some())
    }

    /// The offset of `stream` at `point`.
    pub async fn offset_at(&self, stream: &str, point: StreamPoint) -> Result<i64> {
        log_reader::offset_at(&self.0, stream, point)
            .await
            .map_err(tool_error)
    }

    /// A publisher on the tool's connection (`weir::state::OutboxProducer::rabbitmq`).
    pub(crate) fn publisher(&self) -> Publisher {
        Publisher::new(self.0.clone())
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.0.close().await;
    }
}

fn tool_error(e: String) -> Error {
    crate::error::BrokerError::new("rabbitmq", std::io::Error::other(e)).into()
}

/// The messages ready in each of `queues` on the RabbitMQ server at `url` (`None`: no such
/// queue), for tools; gives up after `timeout` without an answer.
pub async fn queue_depths(
    url: &str,
    queues: &[String],
    timeout: Duration,
) -> Result<Vec<Option<u64>>> {
    let connection = Connection::tool(url, timeout).await?;
    let mut depths = Vec::with_capacity(queues.len());
    for queue in queues {
        let ready = connection.ready_in(queue).await.map_err(tool_error)?;
        depths.push(ready.map(u64::from));
    }
    connection.close().await;
    Ok(depths)
}

/// A short string for AMQP, cut at its 255-byte limit (on a character boundary).
pub(crate) fn short(s: &str) -> ShortString {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(&s[..end])
}
