//! Reading one lane of a changelog to its end (restores), for a blocking thread. A changelog
//! `C` on RabbitMQ is a stream per lane, `C.<lane>`, which a task on the runtime reads over
//! AMQP from its first record (or its last chunk) and hands over in runs.
//!
//! An AMQP read of a stream never says where the stream ends. So once its consumer is
//! attached, the task publishes an end mark to the stream (a message with the header
//! `weir.read_end`: a fresh id) and the read ends at that mark: everything published before it
//! comes first. Marks stay in the stream (a stream keeps everything), and reads skip them.

use std::fmt::Display;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel};
use tokio::runtime::Handle;
use weir_state::wire::header;

use super::{Connection, header_bytes, lane_queue, short};
use crate::broker::Polled;
use crate::broker::log_runs::{LogRuns, Read, RunSender};
use crate::broker::queue_message::{QueueDelivery, QueueMessage};

/// Records the reading task hands over at once (fewer at the end).
const RUN: usize = 256;
/// Deliveries the server sends ahead of their acknowledgement (a stream consumer's credit).
const PREFETCH: u16 = 4096;
/// How long the reading task waits for the stream's next message before it fails.
const STALL: Duration = Duration::from_secs(30);
/// The consumer argument that says where a stream read starts, and the header that gives a
/// stream message's offset.
pub(super) const STREAM_OFFSET: &str = "x-stream-offset";

/// A record of a changelog stream: its position is its stream offset.
pub(crate) type LogRecord = QueueDelivery;

impl Connection {
    /// A reader of changelog lanes, for a thread off the runtime that runs `Connection`'s
    /// client (a restore's).
    pub(crate) fn log_reader(&self) -> LogReader {
        LogReader {
            connection: self.clone(),
            runs: LogRuns::new(Handle::current()),
        }
    }
}

/// Reads one changelog lane at a time (see [`crate::broker::LogReader`]).
pub(crate) struct LogReader {
    connection: Connection,
    runs: LogRuns<LogRecord>,
}

impl LogReader {
    /// Reads `log`'s lane `lane` (the stream `<log>.<lane>`) from its start, or from its last
    /// chunk (which holds its last record) when `last_only`.
    pub(crate) fn read(&self, log: &str, lane: i32, last_only: bool) {
        let (connection, log) = (self.connection.clone(), Arc::from(log));
        self.runs
            .start(move |runs| read_lane(connection, log, lane, last_only, runs));
    }

    /// The next record, waiting at most `timeout`.
    pub(crate) fn poll(&self, timeout: Duration) -> Polled<LogRecord> {
        self.runs.poll(timeout)
    }
}

/// Reads the lane into `runs` up to the end mark it publishes, and says so with
/// [`Read::End`]; a failure is the last thing it hands over.
async fn read_lane(
    connection: Connection,
    log: Arc<str>,
    lane: i32,
    last_only: bool,
    runs: RunSender<LogRecord>,
) {
    let stream = lane_queue(&log, lane);
    let failed = |e: &dyn Display| format!("reading stream {stream}: {e}");
    let read = async {
        let channel = connection.channel().await.map_err(|e| failed(&e))?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .map_err(|e| failed(&e))?;
        let mut args = FieldTable::default();
        let from = if last_only { "last" } else { "first" };
        args.insert(STREAM_OFFSET.into(), AMQPValue::LongString(from.into()));
        let mut consumer = channel
            .basic_consume(&stream, "", BasicConsumeOptions::default(), args)
            .await
            .map_err(|e| failed(&e))?;
        // The consumer is attached: everything published from now on comes after where it
        // starts, the mark too.
        let mark = new_mark();
        publish_mark(&connection, &stream, &mark)
            .await
            .map_err(|e| failed(&format!("publishing the read's end mark: {e}")))?;
        let mut run = Vec::with_capacity(RUN);
        let mut unacked = 0;
        loop {
            let delivery = match tokio::time::timeout(STALL, consumer.next()).await {
                Ok(Some(Ok(d))) => d,
                Ok(Some(Err(e))) => return Err(failed(&e)),
                Ok(None) => return Err(failed(&"the consumer was cancelled")),
                Err(_) => return Err(failed(&format!("no message within {STALL:?}"))),
            };
            unacked += 1;
            if unacked >= PREFETCH / 2 {
                // The acknowledgements only give the server credit to send more.
                channel
                    .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                    .await
                    .map_err(|e| failed(&e))?;
                unacked = 0;
            }
            match Logged::of(delivery, &log, lane) {
                Logged::Mark(id) if id == mark => break,
                Logged::Mark(_) => {}
                Logged::Unnumbered => {
                    return Err(failed(&format!("a message without its {STREAM_OFFSET}")));
                }
                Logged::Record(r) => {
                    run.push(Read::Record(r));
                    if run.len() >= RUN && runs.send(std::mem::take(&mut run)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
        run.push(Read::End);
        let _ = runs.send(run).await;
        let _ = channel.close(200, "read").await;
        Ok(())
    };
    if let Err(e) = read.await {
        let _ = runs.send(vec![Read::Failed(e)]).await;
    }
}

/// A place in a stream, whose offset a tool asks for (`StreamTool::offset_at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamPoint {
    /// Its first record.
    First,
    /// Its end: the offset the next record gets.
    End,
    /// Its first record at or after this time (ms since the epoch), at RabbitMQ's resolution:
    /// the stream's chunk of that time, which may begin with a few records before it; the end
    /// when nothing came since.
    Time(i64),
}

/// The offset of `stream` at `point`: a consumer attached there gets, first, the record at
/// that offset, or else the end mark published once it is attached (whose offset is the
/// stream's end).
pub(crate) async fn offset_at(
    connection: &Connection,
    stream: &str,
    point: StreamPoint,
) -> Result<i64, String> {
    let channel = connection.channel().await?;
    channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let at = match point {
        StreamPoint::First => AMQPValue::LongString("first".into()),
        StreamPoint::End => AMQPValue::LongString("next".into()),
        StreamPoint::Time(ms) => AMQPValue::Timestamp(u64::try_from(ms / 1000).unwrap_or(0)),
    };
    let mut args = FieldTable::default();
    args.insert(STREAM_OFFSET.into(), at);
    let mut consumer = channel
        .basic_consume(stream, "", BasicConsumeOptions::default(), args)
        .await
        .map_err(|e| e.to_string())?;
    publish_mark(connection, stream, &new_mark()).await?;
    let first = match tokio::time::timeout(STALL, consumer.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => return Err(e.to_string()),
        Ok(None) => return Err("the consumer was cancelled".into()),
        Err(_) => return Err(format!("no message within {STALL:?}")),
    };
    let offset = first
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(STREAM_OFFSET))
        .and_then(integer)
        .ok_or_else(|| format!("a message without its {STREAM_OFFSET}"))?;
    let _ = channel.close(200, "done").await;
    Ok(offset)
}

/// A message of a changelog stream.
enum Logged {
    Record(LogRecord),
    /// A read's end mark, with the read's id.
    Mark(String),
    /// A message without its stream offset (not a stream's).
    Unnumbered,
}

impl Logged {
    fn of(d: lapin::message::Delivery, log: &Arc<str>, lane: i32) -> Self {
        let mut offset = None;
        let mut key = None;
        let mut headers = Vec::new();
        for (name, value) in d.properties.headers().iter().flat_map(|h| h.inner()) {
            match name.as_str() {
                STREAM_OFFSET => offset = integer(value),
                header::READ_END => {
                    return Self::Mark(String::from_utf8_lossy(&header_bytes(value)).into_owned());
                }
                header::KEY => key = Some(header_bytes(value)),
                name => headers.push((name.to_owned(), Some(header_bytes(value)))),
            }
        }
        let Some(offset) = offset else {
            return Self::Unnumbered;
        };
        let message = QueueMessage {
            timestamp_ms: d
                .properties
                .timestamp()
                .map(|s| (s as i64).saturating_mul(1000)),
            key,
            // An empty body is a deletion: a state value's JSON text is never empty.
            payload: Some(d.data).filter(|b| !b.is_empty()),
            headers,
        };
        Self::Record(QueueDelivery::logged(
            Arc::clone(log),
            lane,
            offset,
            message,
        ))
    }
}

/// An AMQP integer as an `i64`.
pub(super) fn integer(value: &AMQPValue) -> Option<i64> {
    match *value {
        AMQPValue::LongLongInt(v) => Some(v),
        AMQPValue::LongInt(v) => Some(v.into()),
        AMQPValue::LongUInt(v) => Some(v.into()),
        AMQPValue::ShortInt(v) => Some(v.into()),
        AMQPValue::ShortUInt(v) => Some(v.into()),
        AMQPValue::Timestamp(v) => i64::try_from(v).ok(),
        _ => None,
    }
}

/// A read's id, unique across processes and reads.
fn new_mark() -> String {
    static READS: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let n = READS.fetch_add(1, Ordering::Relaxed);
    format!("{}-{now}-{n}", std::process::id())
}

/// Publishes the end mark `mark` to `stream` and waits for the broker's confirm.
async fn publish_mark(connection: &Connection, stream: &str, mark: &str) -> Result<(), String> {
    let channel: Channel = connection.channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut headers = FieldTable::default();
    headers.insert(
        short(header::READ_END),
        AMQPValue::LongString(LongString::from(mark)),
    );
    let confirm = channel
        .basic_publish(
            "",
            stream,
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &[],
            BasicProperties::default()
                .with_delivery_mode(super::PERSISTENT)
                .with_headers(headers),
        )
        .await
        .map_err(|e| e.to_string())?;
    let confirmed = match confirm.await.map_err(|e| e.to_string())? {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(format!("no stream {stream}")),
        Confirmation::Nack(_) => Err("the broker refused it (nack)".into()),
    };
    let _ = channel.close(200, "done").await;
    confirmed
}
