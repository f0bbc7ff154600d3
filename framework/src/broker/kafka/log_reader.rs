//! Reading partitions of a log from a position to their end (changelog restores, tables), on
//! a blocking thread.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;

use super::Connection;
use crate::broker::Polled;
use crate::inbound::Delivered;

impl Connection {
    /// A reader of logs, tuned to read as fast as the broker sends.
    pub(crate) fn log_reader(&self) -> Result<LogReader, String> {
        let consumer = self
            .client_config()
            .clone()
            .set("group.id", "weir-restore")
            .set("enable.auto.commit", "false")
            // The end is where a fetch response's high watermark says (some brokers answer
            // ListOffsets with less than the end), signalled as a partition EOF.
            .set("enable.partition.eof", "true")
            // Read as fast as the broker sends: no backoff once librdkafka's local queue fills
            // (the reader drains it at once), and large fetches.
            .set("fetch.queue.backoff.ms", "1")
            .set("queued.min.messages", "200000")
            // A restore reads the log's last record first, and its read from the start then
            // waits behind the fetch left waiting at the end: with librdkafka's 500 ms, the
            // first record came 0.56 s after the start of a 1.5 s restore (tansu).
            .set("fetch.wait.max.ms", "10")
            .create_with_context(ReaderContext("changelog restore consumer"))
            .map_err(|e| e.to_string())?;
        Ok(LogReader {
            consumer: Some(Arc::new(consumer)),
            asker: None,
        })
    }

    /// A reader of tables: a stored position the log no longer has (compacted or deleted below
    /// it, or the topic recreated shorter) reads the table again from its start, never skips
    /// to its end (librdkafka's default).
    ///
    /// Its ends are asked on a connection of its own: a broker answers a connection's requests
    /// in order, so on the reading one the offsets query waits behind the fetch that waits at
    /// the end for new records (`fetch.wait.max.ms`, 500 ms), before every batch.
    pub(crate) fn table_reader(&self) -> Result<LogReader, String> {
        let mut config = self.client_config().clone();
        config
            .set("group.id", "weir-table")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest");
        let consumer: BaseConsumer<ReaderContext> = config
            .create_with_context(ReaderContext("table consumer"))
            .map_err(|e| format!("cannot create the table consumer: {e}"))?;
        let asker: BaseConsumer<ReaderContext> = config
            .create_with_context(ReaderContext("table offsets"))
            .map_err(|e| format!("cannot create the table offsets client: {e}"))?;
        Ok(LogReader {
            consumer: Some(Arc::new(consumer)),
            asker: Some(Arc::new(asker)),
        })
    }
}

/// A record read from a log.
pub(crate) struct LogRecord<'a>(BorrowedMessage<'a>);

impl Delivered for LogRecord<'_> {
    fn topic(&self) -> &str {
        Delivered::topic(&self.0)
    }

    fn partition(&self) -> i32 {
        Delivered::partition(&self.0)
    }

    fn offset(&self) -> i64 {
        Delivered::offset(&self.0)
    }

    fn timestamp_ms(&self) -> Option<i64> {
        Delivered::timestamp_ms(&self.0)
    }

    fn key(&self) -> Option<&[u8]> {
        Delivered::key(&self.0)
    }

    fn payload(&self) -> Option<&[u8]> {
        Delivered::payload(&self.0)
    }

    fn headers(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        Delivered::headers(&self.0)
    }
}

/// Reads one partition of a log at a time; closed on a thread of its own when dropped
/// (closing may wait for requests in flight, and a stopped reader must not wait for a slow
/// broker).
pub(crate) struct LogReader {
    consumer: Option<Arc<BaseConsumer<ReaderContext>>>,
    /// A client that asks for [`end`](Self::end)s and reads nothing (tables), if not the
    /// consumer.
    asker: Option<Arc<BaseConsumer<ReaderContext>>>,
}

impl LogReader {
    fn consumer(&self) -> &Arc<BaseConsumer<ReaderContext>> {
        self.consumer.as_ref().expect("taken only on drop")
    }

    /// `topic`/`partition`'s low and high watermarks, asked on a helper thread so that a stop
    /// (`cancelled`) does not wait for a slow broker's answer.
    pub(crate) fn watermarks(
        &self,
        topic: &str,
        partition: i32,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<(i64, i64), String> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (asker, name) = (Arc::clone(self.consumer()), topic.to_owned());
        std::thread::Builder::new()
            .name("weir-log-offsets".into())
            .spawn(move || {
                let _ = tx.send(asker.fetch_watermarks(&name, partition, Duration::from_secs(60)));
            })
            .map_err(|e| e.to_string())?;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(answer) => {
                    return answer
                        .map_err(|e| format!("reading {topic}/{partition}'s offsets: {e}"));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !cancelled() => {}
                Err(_) => return Err(format!("stopped while reading {topic}'s offsets")),
            }
        }
    }

    /// Reads `topic`/`partition` from offset `from` (`None`: its beginning) on.
    pub(crate) fn read_from(
        &self,
        topic: &str,
        partition: i32,
        from: Option<i64>,
    ) -> Result<(), String> {
        self.read_each_from(&[(topic.to_owned(), partition, from)])
    }

    /// Reads each of `partitions` (topic, partition, offset or `None`: its beginning) from its
    /// offset on; the records of all of them come through [`poll`](Self::poll).
    pub(crate) fn read_each_from(
        &self,
        partitions: &[(String, i32, Option<i64>)],
    ) -> Result<(), String> {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, from) in partitions {
            let offset = from.map_or(Offset::Beginning, Offset::Offset);
            tpl.add_partition_offset(topic, *partition, offset)
                .map_err(|e| e.to_string())?;
        }
        self.consumer().assign(&tpl).map_err(|e| e.to_string())
    }

    /// Reads `topic`/`partition` again from its beginning.
    pub(crate) fn rewind(&self, topic: &str, partition: i32) -> Result<(), String> {
        self.consumer()
            .seek(topic, partition, Offset::Beginning, Duration::from_secs(10))
            .map_err(|e| format!("reading {topic}/{partition} from its start: {e}"))
    }

    /// The offset after `topic`/`partition`'s last record, as the broker says now.
    pub(crate) fn end(&self, topic: &str, partition: i32) -> Result<i64, String> {
        self.asker
            .as_ref()
            .unwrap_or_else(|| self.consumer())
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .map(|(_, high)| high)
            .map_err(|e| format!("reading {topic}/{partition}'s end: {e}"))
    }

    /// The next record, waiting at most `timeout`.
    pub(crate) fn poll(&self, timeout: Duration) -> Polled<LogRecord<'_>> {
        match self.consumer().poll(timeout) {
            None => Polled::Nothing,
            Some(Err(KafkaError::PartitionEOF(_))) => Polled::End,
            Some(Err(e)) => Polled::Failed(e.to_string()),
            Some(Ok(msg)) => Polled::Record(LogRecord(msg)),
        }
    }
}

impl Drop for LogReader {
    fn drop(&mut self) {
        let clients = (self.consumer.take(), self.asker.take());
        let _ = std::thread::Builder::new()
            .name("weir-log-close".into())
            .spawn(move || drop(clients));
    }
}

/// The context of a consumer that reads logs to their end (restores, tables): the end of a
/// partition is expected, not an error; other errors are logged with the reader's name.
struct ReaderContext(&'static str);

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::warn!("{}: {error}: {reason}", self.0);
        }
    }
}

impl ConsumerContext for ReaderContext {}
