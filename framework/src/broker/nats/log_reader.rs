//! Reading one lane of a changelog stream to its end (restores), for a blocking thread: a task
//! on the runtime reads with an ordered consumer and hands the records over in runs.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures::StreamExt;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::names::{self, AckInfo};
use super::source::Delivery;
use super::Connection;
use crate::broker::Polled;
use crate::inbound::Delivered;

/// Records the reading task hands over at once (fewer at the end).
const RUN: usize = 1024;
/// Runs waiting between the reading task and the reader.
const RUNS_AHEAD: usize = 16;
/// How long the reading task waits for the stream's next message before it fails.
const STALL: Duration = Duration::from_secs(30);

impl Connection {
    /// A reader of changelog lanes, for a thread off the runtime that runs `Connection`'s
    /// client (a restore's).
    pub(crate) fn log_reader(&self) -> LogReader {
        LogReader {
            connection: self.clone(),
            runtime: Handle::current(),
            reading: RefCell::default(),
        }
    }
}

/// A record of a changelog stream: a message whose subject names its key, and whose empty
/// body is a deletion (a state value's JSON text is never empty).
#[derive(Debug)]
pub(crate) struct LogRecord(Delivery);

impl Delivered for LogRecord {
    fn topic(&self) -> &str {
        self.0.topic()
    }

    fn partition(&self) -> i32 {
        self.0.partition()
    }

    fn offset(&self) -> i64 {
        self.0.offset()
    }

    fn timestamp_ms(&self) -> Option<i64> {
        self.0.timestamp_ms()
    }

    fn key(&self) -> Option<&[u8]> {
        self.0.key()
    }

    fn payload(&self) -> Option<&[u8]> {
        self.0.payload().filter(|p| !p.is_empty())
    }

    fn headers(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.0.headers()
    }
}

/// What the reading task hands over. (Mostly records: boxing them to shrink the rest would
/// cost an allocation each.)
#[allow(clippy::large_enum_variant)]
enum Read {
    Record(LogRecord),
    End,
    Failed(String),
}

/// Reads one changelog lane at a time (see [`crate::broker::LogReader`]).
pub(crate) struct LogReader {
    connection: Connection,
    runtime: Handle,
    reading: RefCell<Reading>,
}

#[derive(Default)]
struct Reading {
    runs: Option<mpsc::Receiver<Vec<Read>>>,
    ready: VecDeque<Read>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Reading {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl LogReader {
    /// Reads `log`'s lane `lane` (its subjects `S.<lane>.*`) from its start, or from its last
    /// message when `last_only`.
    pub(crate) fn read(&self, log: &str, lane: i32, last_only: bool) -> Result<(), String> {
        let (tx, rx) = mpsc::channel(RUNS_AHEAD);
        let task = self.runtime.spawn(read_lane(
            self.connection.clone(),
            Arc::from(log),
            lane,
            last_only,
            tx,
        ));
        *self.reading.borrow_mut() = Reading {
            runs: Some(rx),
            ready: VecDeque::new(),
            task: Some(task),
        };
        Ok(())
    }

    /// The next record, waiting at most `timeout`.
    pub(crate) fn poll(&self, timeout: Duration) -> Polled<LogRecord> {
        let mut reading = self.reading.borrow_mut();
        if reading.ready.is_empty() {
            let Some(runs) = reading.runs.as_mut() else {
                return Polled::Failed("nothing is being read".into());
            };
            match self
                .runtime
                .block_on(async { tokio::time::timeout(timeout, runs.recv()).await })
            {
                Err(_) => return Polled::Nothing,
                Ok(None) => return Polled::Failed("the changelog's reader stopped".into()),
                Ok(Some(run)) => reading.ready.extend(run),
            }
        }
        match reading.ready.pop_front() {
            Some(Read::Record(r)) => Polled::Record(r),
            Some(Read::End) => Polled::End,
            Some(Read::Failed(e)) => Polled::Failed(e),
            None => Polled::Nothing,
        }
    }

    /// Deletes the messages at stream sequences `positions` from `log`'s stream.
    pub(crate) fn forget(&self, log: &str, positions: &[i64]) -> Result<(), String> {
        let stream = names::stream_of(log);
        self.runtime.block_on(async {
            let s = self
                .connection
                .js
                .get_stream(&stream)
                .await
                .map_err(|e| format!("reading stream {stream}: {e}"))?;
            for &seq in positions {
                s.delete_message(seq as u64)
                    .await
                    .map_err(|e| format!("deleting message {seq} of stream {stream}: {e}"))?;
            }
            tracing::info!(%stream, messages = positions.len(), "orphaned changelog entries deleted");
            Ok(())
        })
    }
}

/// Reads the lane into `runs` up to the end the stream had when each message came, and says
/// so with [`Read::End`]; a failure is the last thing it hands over.
async fn read_lane(
    connection: Connection,
    log: Arc<str>,
    lane: i32,
    last_only: bool,
    runs: mpsc::Sender<Vec<Read>>,
) {
    let stream = names::stream_of(&log);
    let read = async {
        let s = connection
            .js
            .get_stream(&stream)
            .await
            .map_err(|e| format!("reading stream {stream}: {e}"))?;
        let mut consumer = s
            .create_consumer(pull::OrderedConfig {
                filter_subject: names::lane_filter(&stream, lane, true),
                deliver_policy: if last_only {
                    DeliverPolicy::Last
                } else {
                    DeliverPolicy::All
                },
                ..Default::default()
            })
            .await
            .map_err(|e| format!("reading stream {stream}: {e}"))?;
        let pending = consumer
            .info()
            .await
            .map_err(|e| format!("reading stream {stream}: {e}"))?
            .num_pending;
        if pending == 0 {
            let _ = runs.send(vec![Read::End]).await;
            return Ok(());
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| format!("reading stream {stream}: {e}"))?;
        let mut run = Vec::with_capacity(RUN);
        loop {
            let message = match tokio::time::timeout(STALL, messages.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(format!("reading stream {stream}: {e}")),
                Ok(None) => return Err(format!("reading stream {stream}: its messages ended")),
                Err(_) => return Err(format!("no message of stream {stream} within {STALL:?}")),
            };
            let info = message
                .info()
                .map_err(|e| format!("reading stream {stream}: {e}"))?;
            let info = AckInfo {
                stream_seq: info.stream_sequence as i64,
                timestamp_ms: (info.published.unix_timestamp_nanos() / 1_000_000) as i64,
                pending: info.pending as i64,
            };
            let key = names::key_of(&stream, &message.subject);
            let at_end = info.pending == 0;
            run.push(Read::Record(LogRecord(Delivery::new(
                Arc::clone(&log),
                lane,
                info,
                key,
                message.message,
            ))));
            if at_end {
                run.push(Read::End);
            }
            if at_end || run.len() >= RUN {
                if runs.send(std::mem::take(&mut run)).await.is_err() {
                    return Ok(());
                }
                if at_end {
                    return Ok(());
                }
                run.reserve(RUN);
            }
        }
    };
    if let Err(e) = read.await {
        let _ = runs.send(vec![Read::Failed(e)]).await;
    }
}
