//! The broker seam: what the runtime asks of a broker, in weir's own words, and each broker's
//! implementation in a folder of its own (`kafka/`, the only place that knows Kafka's client).
//!
//! The runtime needs from a broker: lanes assigned and revoked (a Kafka partition is a lane),
//! deliveries per lane ([`Delivered`]: key, value, headers, timestamp and position), pause,
//! resume and a new read position per lane, settling what a committed batch covered (all of
//! these: [`Source`]), producing with an acknowledgement ([`SendError`] when it fails),
//! reading a lane of a log to its end ([`LogReader`]: changelog restores), and making sure
//! topics exist. Lanes come and go as the broker decides; the broker's client tells the
//! runtime through [`Assignments`]. (Tables still read their logs with Kafka's types, in
//! `runtime/tables.rs`.)

use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::inbound::Delivered;

#[cfg(feature = "kafka")]
pub(crate) mod kafka;
#[cfg(any(feature = "nats", feature = "rabbitmq"))]
mod log_runs;
#[cfg(feature = "nats")]
pub(crate) mod nats;
#[cfg(any(feature = "rabbitmq", feature = "sqs"))]
mod queue_message;
#[cfg(feature = "rabbitmq")]
pub(crate) mod rabbitmq;
#[cfg(feature = "sqs")]
pub(crate) mod sqs;

/// Whether `brokers` names NATS servers (`nats://` or `tls://` URLs) rather than Kafka's
/// (`weir::state::nats::is_nats`, for tools).
#[cfg_attr(not(feature = "nats"), allow(unreachable_pub))]
pub fn nats_url(brokers: &str) -> bool {
    let b = brokers.trim_start();
    b.starts_with("nats://") || b.starts_with("tls://")
}

/// The broker's id of a record weir publishes (NATS `Nats-Msg-Id`, AMQP `message_id`), from
/// weir's own headers, so that a record sent again is recognised: an emit is named by its destination,
/// group, source lane, position and index; a dead letter (or late record) by its destination
/// and source lane and position. `None` for a record weir's headers do not name.
#[cfg_attr(
    not(any(feature = "nats", feature = "rabbitmq", feature = "sqs")),
    allow(dead_code)
)]
pub(crate) fn message_id(topic: &str, headers: &[(&str, Option<&[u8]>)]) -> Option<String> {
    use weir_state::wire::header;
    let value = |name: &str| {
        headers
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.and_then(|v| std::str::from_utf8(v).ok()))
    };
    let (t, p, o) = (
        value(header::SOURCE_TOPIC)?,
        value(header::SOURCE_PARTITION)?,
        value(header::SOURCE_OFFSET)?,
    );
    let mut id = format!("{topic}/{t}/{p}/{o}");
    if let Some(seq) = value(header::SOURCE_SEQ) {
        id = format!("{id}/{seq}/{}", value(header::SOURCE_GROUP).unwrap_or(""));
    }
    Some(id)
}

/// Whether `brokers` names a RabbitMQ server (`amqp://` or `amqps://` URL)
/// (`weir::state::rabbitmq::is_amqp`, for tools).
#[cfg_attr(not(feature = "rabbitmq"), allow(unreachable_pub))]
pub fn amqp_url(brokers: &str) -> bool {
    let b = brokers.trim_start();
    b.starts_with("amqp://") || b.starts_with("amqps://")
}

/// Whether `brokers` selects Amazon SQS (`sqs://`) (`weir::state::sqs::is_sqs`, for tools).
#[cfg_attr(not(feature = "sqs"), allow(unreachable_pub))]
pub fn sqs_url(brokers: &str) -> bool {
    brokers.trim_start().starts_with("sqs://")
}

/// How a worker's clients reach its broker.
#[derive(Debug, Clone)]
pub(crate) enum Connection {
    #[cfg(feature = "kafka")]
    Kafka(kafka::Connection),
    #[cfg(feature = "nats")]
    Nats(nats::Connection),
    #[cfg(feature = "rabbitmq")]
    RabbitMq(rabbitmq::Connection),
    #[cfg(feature = "sqs")]
    Sqs(sqs::Connection),
}

impl Connection {
    /// The Kafka connection, for what only Kafka does yet (tables).
    #[cfg(feature = "kafka")]
    #[cfg_attr(
        not(any(feature = "nats", feature = "rabbitmq", feature = "sqs")),
        allow(unused_variables)
    )]
    pub(crate) fn kafka(&self, what: &str) -> Result<&kafka::Connection, String> {
        match self {
            #[cfg(feature = "kafka")]
            Self::Kafka(k) => Ok(k),
            #[cfg(feature = "nats")]
            Self::Nats(_) => Err(format!("{what} is not available on NATS yet")),
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(_) => Err(format!("{what} is not available on RabbitMQ yet")),
            #[cfg(feature = "sqs")]
            Self::Sqs(_) => Err(format!("{what} is not available on SQS yet")),
        }
    }

    /// The earliest position of `topic`'s lane `partition`. Blocks: call it off the runtime's
    /// workers (on its blocking pool).
    #[cfg_attr(not(feature = "kafka"), allow(unused_variables))]
    pub(crate) fn low_watermark(&self, topic: &str, partition: i32) -> Result<i64, String> {
        match self {
            #[cfg(feature = "kafka")]
            Self::Kafka(k) => k.low_watermark(topic, partition),
            #[cfg(feature = "nats")]
            Self::Nats(n) => tokio::runtime::Handle::current().block_on(n.low_watermark(topic)),
            // A queue's positions count its deliveries: none was lost before the first.
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(_) => Ok(0),
            #[cfg(feature = "sqs")]
            Self::Sqs(_) => Ok(0),
        }
    }

    /// The lane counts of `topics` (`None`: no such topic). Blocks, as
    /// [`low_watermark`](Self::low_watermark).
    pub(crate) fn partition_counts<'t>(
        &self,
        topics: impl Iterator<Item = &'t str>,
    ) -> Result<std::collections::HashMap<&'t str, Option<i32>>, String> {
        match self {
            #[cfg(feature = "kafka")]
            Self::Kafka(k) => k.partition_counts(topics),
            #[cfg(feature = "nats")]
            Self::Nats(n) => Ok(topics.map(|t| (t, n.lanes_of(t))).collect()),
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(r) => Ok(topics.map(|t| (t, r.lanes_of(t))).collect()),
            #[cfg(feature = "sqs")]
            Self::Sqs(s) => Ok(topics.map(|t| (t, s.lanes_of(t))).collect()),
        }
    }

    /// A reader of changelogs, for a blocking thread (a restore runs on one).
    pub(crate) fn log_reader(&self) -> Result<LogReader, String> {
        match self {
            #[cfg(feature = "kafka")]
            Self::Kafka(k) => k.log_reader().map(LogReader::Kafka),
            #[cfg(feature = "nats")]
            Self::Nats(n) => Ok(LogReader::Nats(n.log_reader())),
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(r) => Ok(LogReader::RabbitMq(r.log_reader())),
            #[cfg(feature = "sqs")]
            Self::Sqs(_) => Err("changelogs are not available on SQS yet".into()),
        }
    }

    /// Creates the topics of `wanted` that are missing.
    pub(crate) async fn create_missing(&self, wanted: Vec<WantedTopic>) {
        match self {
            #[cfg(feature = "kafka")]
            Self::Kafka(k) => k.create_missing(wanted).await,
            #[cfg(feature = "nats")]
            Self::Nats(n) => n.create_missing(wanted).await,
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(r) => r.create_missing(wanted).await,
            #[cfg(feature = "sqs")]
            Self::Sqs(s) => s.create_missing(wanted).await,
        }
    }
}

/// The worker's producer: emits, dead letters, late records and changelog entries.
#[derive(Debug)]
// One per worker, behind an `Arc`: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Producer {
    #[cfg(feature = "kafka")]
    Kafka(kafka::Producer),
    #[cfg(feature = "nats")]
    Nats(nats::Publisher),
    #[cfg(feature = "rabbitmq")]
    RabbitMq(rabbitmq::Publisher),
    #[cfg(feature = "sqs")]
    Sqs(sqs::Publisher),
}

impl Producer {
    /// Produces `r` and waits for the broker's acknowledgement.
    pub(crate) async fn send(&self, r: Outgoing<'_>) -> Result<(), SendError> {
        match self {
            #[cfg(feature = "kafka")]
            Self::Kafka(k) => k.send(r).await,
            #[cfg(feature = "nats")]
            Self::Nats(n) => n.send_all(std::slice::from_ref(&r)).await,
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(p) => p.send(r).await,
            #[cfg(feature = "sqs")]
            Self::Sqs(p) => p.send(r).await,
        }
    }

    /// Produces `records`, pipelined, in their order where the broker keeps one (a partition,
    /// a lane, an SQS FIFO queue's message group), and waits for the broker's acknowledgement
    /// of all of them; the first failure if any failed.
    pub(crate) async fn send_all(&self, records: &[Outgoing<'_>]) -> Result<(), SendError> {
        match self {
            // One delivery report per record, counted, rather than a future per record.
            #[cfg(feature = "kafka")]
            Self::Kafka(k) => k.send_all(records).await,
            // In order: a stream made for them first, then published one after another.
            #[cfg(feature = "nats")]
            Self::Nats(n) => n.send_all(records).await,
            // A FIFO queue's message group one after another.
            #[cfg(feature = "sqs")]
            Self::Sqs(s) => s.send_all(records).await,
            // RabbitMQ: a future per record, polled in order, so lapin queues their frames in
            // order on the one channel (awaiting each publish before the next was 6× slower).
            #[allow(unreachable_patterns)]
            _ => {
                let sent = futures::future::join_all(records.iter().map(|r| self.send(*r))).await;
                sent.into_iter().collect()
            }
        }
    }
}

/// What a read of a log gave.
#[cfg_attr(
    not(any(feature = "kafka", feature = "nats", feature = "rabbitmq")),
    allow(dead_code)
)]
pub(crate) enum Polled<R> {
    /// Nothing within the poll's time.
    Nothing,
    /// The end of the lane as the broker knows it now.
    End,
    /// A record.
    Record(R),
    /// The client failed.
    Failed(String),
}

impl<R> Polled<R> {
    /// The record, made into another.
    #[cfg_attr(
        not(any(feature = "kafka", feature = "nats", feature = "rabbitmq")),
        allow(dead_code)
    )]
    fn map<S>(self, f: impl FnOnce(R) -> S) -> Polled<S> {
        match self {
            Self::Record(r) => Polled::Record(f(r)),
            Self::Nothing => Polled::Nothing,
            Self::End => Polled::End,
            Self::Failed(e) => Polled::Failed(e),
        }
    }
}

/// Reads one lane of a log (a changelog) at a time, to its end, on a blocking thread.
pub(crate) enum LogReader {
    #[cfg(feature = "kafka")]
    Kafka(kafka::LogReader),
    #[cfg(feature = "nats")]
    Nats(nats::LogReader),
    #[cfg(feature = "rabbitmq")]
    RabbitMq(rabbitmq::LogReader),
    /// (No broker of this build has logs to read.)
    #[cfg(not(any(feature = "kafka", feature = "nats", feature = "rabbitmq")))]
    #[allow(dead_code)]
    None(std::convert::Infallible),
}

/// A record a [`LogReader`] read. (Each is used where it is read: boxing a NATS record to
/// shrink Kafka's would cost an allocation each.)
#[allow(clippy::large_enum_variant)]
pub(crate) enum LogRecord<'a> {
    #[cfg(feature = "kafka")]
    Kafka(kafka::LogRecord<'a>),
    #[cfg(feature = "nats")]
    Nats(nats::LogRecord),
    #[cfg(feature = "rabbitmq")]
    RabbitMq(rabbitmq::LogRecord),
    /// (Only Kafka's records borrow from their reader.)
    #[cfg(not(feature = "kafka"))]
    #[allow(dead_code)]
    Never(std::convert::Infallible, std::marker::PhantomData<&'a ()>),
}

/// `$body` with `$r` bound to the record inside the [`LogRecord`] `$record`.
macro_rules! each_log_record {
    ($record:expr_2021, $r:ident => $body:expr_2021) => {
        match $record {
            #[cfg(feature = "kafka")]
            LogRecord::Kafka($r) => $body,
            #[cfg(feature = "nats")]
            LogRecord::Nats($r) => $body,
            #[cfg(feature = "rabbitmq")]
            LogRecord::RabbitMq($r) => $body,
            #[cfg(not(feature = "kafka"))]
            LogRecord::Never(never, _) => match *never {},
        }
    };
}

#[cfg_attr(
    not(any(feature = "kafka", feature = "nats", feature = "rabbitmq")),
    allow(unused_variables)
)]
impl LogReader {
    /// Reads `log`'s lane `lane` from its start on.
    pub(crate) fn read_all(&self, log: &str, lane: i32) -> Result<(), String> {
        match self {
            #[cfg(feature = "kafka")]
            Self::Kafka(k) => k.read_from(log, lane, None),
            #[cfg(feature = "nats")]
            Self::Nats(n) => n.read(log, lane, false),
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(r) => {
                r.read(log, lane, false);
                Ok(())
            }
            #[cfg(not(any(feature = "kafka", feature = "nats", feature = "rabbitmq")))]
            Self::None(never) => match *never {},
        }
    }

    /// Reads `log`'s lane `lane` from its last record on (an empty lane: only its end).
    /// `cancelled` cuts short a wait for a slow broker.
    #[cfg_attr(not(feature = "kafka"), allow(unused_variables))]
    pub(crate) fn read_last(
        &self,
        log: &str,
        lane: i32,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<(), String> {
        match self {
            #[cfg(feature = "kafka")]
            Self::Kafka(k) => {
                // Some brokers (tansu) answer ListOffsets with less than the end, even with
                // the low watermark, so reading goes on to the EOF.
                let (low, high) = k.watermarks(log, lane, cancelled)?;
                k.read_from(log, lane, (high > low).then_some(high - 1))
            }
            #[cfg(feature = "nats")]
            Self::Nats(n) => n.read(log, lane, true),
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(r) => {
                r.read(log, lane, true);
                Ok(())
            }
            #[cfg(not(any(feature = "kafka", feature = "nats", feature = "rabbitmq")))]
            Self::None(never) => match *never {},
        }
    }

    /// The next record of what is read, waiting at most `timeout`.
    pub(crate) fn poll(&self, timeout: Duration) -> Polled<LogRecord<'_>> {
        match self {
            #[cfg(feature = "kafka")]
            Self::Kafka(k) => k.poll(timeout).map(LogRecord::Kafka),
            #[cfg(feature = "nats")]
            Self::Nats(n) => n.poll(timeout).map(LogRecord::Nats),
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(r) => r.poll(timeout).map(LogRecord::RabbitMq),
            #[cfg(not(any(feature = "kafka", feature = "nats", feature = "rabbitmq")))]
            Self::None(never) => match *never {},
        }
    }

    /// Removes the records at `positions` from `log`, where the broker can (NATS, whose
    /// changelog keeps two records per key); a Kafka log keeps them (and compaction never
    /// removes a key's last record, so nothing depends on it there), and so does a RabbitMQ
    /// stream (which keeps every record).
    #[cfg_attr(not(feature = "nats"), allow(unused_variables))]
    pub(crate) fn forget(&self, log: &str, positions: &[i64]) -> Result<(), String> {
        match self {
            #[cfg(feature = "kafka")]
            Self::Kafka(_) => Ok(()),
            #[cfg(feature = "nats")]
            Self::Nats(n) => n.forget(log, positions),
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(_) => Ok(()),
            #[cfg(not(any(feature = "kafka", feature = "nats", feature = "rabbitmq")))]
            Self::None(never) => match *never {},
        }
    }
}

impl Delivered for LogRecord<'_> {
    fn topic(&self) -> &str {
        each_log_record!(self, r => r.topic())
    }

    fn partition(&self) -> i32 {
        each_log_record!(self, r => r.partition())
    }

    fn offset(&self) -> i64 {
        each_log_record!(self, r => r.offset())
    }

    fn timestamp_ms(&self) -> Option<i64> {
        each_log_record!(self, r => r.timestamp_ms())
    }

    fn key(&self) -> Option<&[u8]> {
        each_log_record!(self, r => r.key())
    }

    fn payload(&self) -> Option<&[u8]> {
        each_log_record!(self, r => r.payload())
    }

    // (No log to read without Kafka, NATS or RabbitMQ: there is no such record.)
    #[cfg_attr(
        not(any(feature = "kafka", feature = "nats", feature = "rabbitmq")),
        allow(unreachable_code, unused_variables)
    )]
    fn headers(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        let headers = match self {
            #[cfg(feature = "kafka")]
            Self::Kafka(r) => OneOf::Kafka(r.headers()),
            #[cfg(feature = "nats")]
            Self::Nats(r) => OneOf::Nats(r.headers()),
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(r) => OneOf::RabbitMq(r.headers()),
            #[cfg(not(feature = "kafka"))]
            Self::Never(never, _) => match *never {},
        };
        // The iterator types of the brokers this build lacks (never made).
        #[cfg(not(feature = "kafka"))]
        let headers: OneOf<std::iter::Empty<_>, _, _> = headers;
        #[cfg(not(feature = "nats"))]
        let headers: OneOf<_, std::iter::Empty<_>, _> = headers;
        #[cfg(not(feature = "rabbitmq"))]
        let headers: OneOf<_, _, std::iter::Empty<_>> = headers;
        headers
    }
}

/// One broker's iterator or another's, as one type (no allocation per record).
#[cfg_attr(
    not(all(feature = "kafka", feature = "nats", feature = "rabbitmq")),
    allow(dead_code)
)]
enum OneOf<K, N, R> {
    Kafka(K),
    Nats(N),
    RabbitMq(R),
}

impl<T, K, N, R> Iterator for OneOf<K, N, R>
where
    K: Iterator<Item = T>,
    N: Iterator<Item = T>,
    R: Iterator<Item = T>,
{
    type Item = T;

    fn next(&mut self) -> Option<T> {
        match self {
            Self::Kafka(k) => k.next(),
            Self::Nats(n) => n.next(),
            Self::RabbitMq(r) => r.next(),
        }
    }
}

/// A lane: a topic's partition on Kafka.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lane<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
}

impl std::fmt::Display for Lane<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// What a worker consumes from: deliveries of the lanes the broker assigned it, and per lane
/// pause, resume, a new read position, and settling. Used by the worker's one consumer
/// thread.
pub(crate) trait Source {
    /// A delivery, borrowed from the source until the runtime copies it out.
    type Delivery<'s>: Delivered
    where
        Self: 's;

    /// Starts taking `topics`' lanes, as the broker assigns them.
    fn subscribe(&self, topics: &[&str]) -> Result<()>;

    /// The next delivery, waiting up to `timeout`; `Some(Err)`: an error the client reports,
    /// of no lane in particular.
    fn poll(&self, timeout: Duration) -> Option<Result<Self::Delivery<'_>, String>>;

    /// Stops deliveries of `lane` (those already taken still come) until [`resume`](Self::resume).
    fn pause(&self, lane: Lane<'_>) -> Result<(), String>;

    fn resume(&self, lane: Lane<'_>) -> Result<(), String>;

    /// Delivers `lane` from position `next` on (`None`: from its beginning).
    fn seek(&self, lane: Lane<'_>, next: Option<i64>) -> Result<(), String>;

    /// Tells the broker that the lanes' records below these positions are done, without
    /// waiting (progress only: the lanes' stores hold what was committed).
    fn settle(&self, done: &[(Lane<'_>, i64)]) -> Result<(), String>;

    /// Since when the client has had no connection to the broker, while it has none (a
    /// client that cannot tell says `None`: its lanes' stalls say it instead).
    fn disconnected_since(&self) -> Option<std::time::Instant> {
        None
    }
}

/// Why a record was not produced.
#[derive(Debug, Clone)]
pub(crate) struct SendError {
    /// The broker's or the client's reason.
    pub(crate) message: String,
    /// The broker refuses the record for good (too large, not authorized, no such topic):
    /// sending it again fails the same way until someone changes the topic or the cluster.
    pub(crate) permanent: bool,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A record to produce.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outgoing<'a> {
    pub(crate) topic: &'a str,
    /// The partition; `None`: by key (murmur2, as Kafka's Java client), or any without a key.
    #[cfg_attr(not(any(feature = "kafka", feature = "nats")), allow(dead_code))]
    pub(crate) partition: Option<i32>,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: Option<&'a [u8]>,
    pub(crate) headers: HeaderList<'a>,
    /// Milliseconds since the Unix epoch; `None`: the producer's clock.
    #[cfg_attr(not(any(feature = "kafka", feature = "rabbitmq")), allow(dead_code))]
    pub(crate) timestamp: Option<i64>,
}

/// A record's headers as a producer takes them: a list, or headers as the outbox stores them
/// and one more added as they are sent (`weir.source.acked_below`), without a list built per
/// record.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HeaderList<'a> {
    List(&'a [(&'a str, Option<&'a [u8]>)]),
    Stored(weir_state::HeadersView<'a>, Option<(&'a str, &'a [u8])>),
}

impl<'a> HeaderList<'a> {
    /// How many headers there are.
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    pub(crate) fn len(self) -> usize {
        match self {
            Self::List(list) => list.len(),
            Self::Stored(stored, extra) => stored.len() + usize::from(extra.is_some()),
        }
    }

    /// The headers, in order.
    pub(crate) fn iter(self) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + 'a {
        let (list, stored, extra): (&[_], _, _) = match self {
            Self::List(list) => (list, None, None),
            Self::Stored(stored, extra) => (&[], Some(stored), extra),
        };
        let stored = stored
            .into_iter()
            .flat_map(|h| h.iter().map(|(k, v)| (k, Some(v))));
        let extra = extra.map(|(k, v)| (k, Some(v)));
        list.iter().copied().chain(stored).chain(extra)
    }

    /// The headers as a list.
    #[cfg_attr(
        not(any(feature = "nats", feature = "rabbitmq", feature = "sqs")),
        allow(dead_code)
    )]
    pub(crate) fn to_vec(self) -> Vec<(&'a str, Option<&'a [u8]>)> {
        self.iter().collect()
    }
}

/// A topic a worker writes to, created when missing.
#[derive(Debug, Clone)]
pub(crate) struct WantedTopic {
    pub(crate) name: String,
    /// Created with as many partitions as the largest of these topics (at least 1; an SQS
    /// queue is one lane).
    #[cfg_attr(
        not(any(feature = "kafka", feature = "nats", feature = "rabbitmq")),
        allow(dead_code)
    )]
    pub(crate) partitions_like: Vec<String>,
    /// What it is, for logs.
    pub(crate) kind: &'static str,
    /// (A queue is never compacted.)
    #[cfg_attr(
        not(any(feature = "kafka", feature = "nats", feature = "rabbitmq")),
        allow(dead_code)
    )]
    pub(crate) compacted: bool,
}

/// Where an assigned lane's deliveries start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Start {
    /// The position of its first delivery (`None`: the lane's beginning).
    pub(crate) next: Option<i64>,
    /// Deliveries wait until the runtime resumes the lane (its store is being prepared).
    pub(crate) paused: bool,
}

/// What the runtime does as the broker assigns lanes to this worker and takes them away.
/// The broker's client calls it on the consumer thread, in the middle of a
/// [`Source::poll`].
pub(crate) trait Assignments: Send + Sync + 'static {
    /// `lanes` are this worker's now: their stores are opened and claimed and their tasks
    /// started. Where each starts, in order (`None`: a lane whose store failed; the worker
    /// is failing, and the lane starts where the broker says).
    fn assigned(&self, lanes: &[Lane<'_>]) -> Vec<Option<Start>>;

    /// `lanes` are taken away (`lost`: another owner may have them already). Each lane's task
    /// finishes its batch and closes its store before this returns. The positions to settle
    /// before they go (none when lost, or when the worker is abandoned).
    fn revoked(&self, lanes: &[Lane<'_>], lost: bool) -> Vec<(Arc<str>, i32, i64)>;

    /// The owned lanes' low and high watermarks, as `of` reads them from the client.
    fn watermarks(&self, of: &dyn Fn(Lane<'_>) -> Option<(i64, i64)>);
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_state::wire::header;

    #[test]
    fn emits_and_dead_letters_have_stable_ids() {
        let emit = [
            (header::SOURCE_TOPIC, Some(&b"lines"[..])),
            (header::SOURCE_PARTITION, Some(b"2")),
            (header::SOURCE_OFFSET, Some(b"17")),
            (header::SOURCE_SEQ, Some(b"3")),
            (header::SOURCE_GROUP, Some(b"wc")),
        ];
        assert_eq!(
            message_id("counts", &emit).as_deref(),
            Some("counts/lines/2/17/3/wc")
        );
        assert_eq!(
            message_id("lines.dlq", &emit[..3]).as_deref(),
            Some("lines.dlq/lines/2/17")
        );
        assert_eq!(message_id("counts", &[]), None);
    }
}
