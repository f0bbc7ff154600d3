//! Reading one lane of a changelog stream to its end (restores), for a blocking thread: a task
//! on the runtime reads with an ephemeral consumer that takes no acknowledgements, speaking
//! the pull protocol itself, and hands the records over in runs. A delivery missing on the
//! way (consumer sequences not one after another) fails the read, and with it the restore.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use futures::StreamExt;
use tokio::runtime::Handle;

use super::Connection;
use super::names::{self, AckInfo};
use crate::broker::Polled;
use crate::broker::log_runs::{LogRuns, Read, RunSender};
use crate::inbound::Delivered;

/// Records the reading task hands over at once (fewer at the end).
const RUN: usize = 128;
/// Messages one pull asks for.
const BATCH: usize = 8192;
/// How long a pull waits at the server for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// How often the server says a waiting pull is alive.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long the server keeps a reading consumer nobody pulls for (a reader that died).
const INACTIVE: Duration = Duration::from_secs(30);
/// How long the reading task waits for the stream's next message before it fails.
const STALL: Duration = Duration::from_secs(30);

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

/// A record of a changelog stream, copied out of the client's message at once (so the
/// client reuses its read buffers) into one buffer: its key (from the subject), its body (an
/// empty one is a deletion: a state value's JSON text is never empty) and weir's headers
/// (`weir.*`: a changelog entry has at most [`HEADERS`]).
#[derive(Debug)]
pub(crate) struct LogRecord {
    topic: Arc<str>,
    lane: i32,
    info: AckInfo,
    /// The key, then the body, then each header's name and value.
    buf: Vec<u8>,
    key: Option<usize>,
    payload: usize,
    /// Where each header's name and value end in `buf`.
    headers: [(usize, usize); HEADERS],
    header_count: usize,
}

/// weir's headers a changelog record keeps (its position's offset and generation).
const HEADERS: usize = 4;

impl LogRecord {
    /// `message` of `topic` (whose stream is `stream`), lane `lane`.
    fn new(
        (topic, stream): (&Arc<str>, &str),
        lane: i32,
        info: AckInfo,
        message: &async_nats::Message,
    ) -> Self {
        let mut buf = Vec::with_capacity(message.subject.len() + message.payload.len() + 64);
        let key = names::key_of(stream, &message.subject).map(|k| {
            buf.extend_from_slice(&k);
            buf.len()
        });
        buf.extend_from_slice(&message.payload);
        let payload = buf.len();
        let mut headers = [(0, 0); HEADERS];
        let mut header_count = 0;
        let weirs = message
            .headers
            .iter()
            .flat_map(async_nats::HeaderMap::iter)
            .filter(|(name, _)| AsRef::<str>::as_ref(name).starts_with("weir."));
        for (name, values) in weirs {
            for value in values {
                if header_count == HEADERS {
                    break;
                }
                buf.extend_from_slice(AsRef::<str>::as_ref(name).as_bytes());
                let name_end = buf.len();
                buf.extend_from_slice(value.as_str().as_bytes());
                headers[header_count] = (name_end, buf.len());
                header_count += 1;
            }
        }
        Self {
            topic: Arc::clone(topic),
            lane,
            info,
            buf,
            key,
            payload,
            headers,
            header_count,
        }
    }
}

impl Delivered for LogRecord {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn partition(&self) -> i32 {
        self.lane
    }

    fn offset(&self) -> i64 {
        self.info.stream_seq
    }

    fn timestamp_ms(&self) -> Option<i64> {
        Some(self.info.timestamp_ms)
    }

    fn key(&self) -> Option<&[u8]> {
        self.key.map(|end| &self.buf[..end])
    }

    fn payload(&self) -> Option<&[u8]> {
        let start = self.key.unwrap_or(0);
        (self.payload > start).then(|| &self.buf[start..self.payload])
    }

    fn headers(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        let mut start = self.payload;
        self.headers[..self.header_count]
            .iter()
            .map(move |&(name_end, value_end)| {
                let name = std::str::from_utf8(&self.buf[start..name_end]).unwrap_or_default();
                let value = &self.buf[name_end..value_end];
                start = value_end;
                (name, Some(value))
            })
    }
}

/// Reads one changelog lane at a time (see [`crate::broker::LogReader`]).
pub(crate) struct LogReader {
    connection: Connection,
    runs: LogRuns<LogRecord>,
}

impl LogReader {
    /// Reads `log`'s lane `lane` (its subjects `S.<lane>.*`) from its start, or from its last
    /// message when `last_only`.
    pub(crate) fn read(&self, log: &str, lane: i32, last_only: bool) -> Result<(), String> {
        let (connection, log) = (self.connection.clone(), Arc::from(log));
        self.runs
            .start(move |runs| read_lane(connection, log, lane, last_only, runs));
        Ok(())
    }

    /// The next record, waiting at most `timeout`.
    pub(crate) fn poll(&self, timeout: Duration) -> Polled<LogRecord> {
        self.runs.poll(timeout)
    }

    /// Deletes the messages at stream sequences `positions` from `log`'s stream.
    pub(crate) fn forget(&self, log: &str, positions: &[i64]) -> Result<(), String> {
        let stream = names::stream_of(log);
        self.runs.runtime().block_on(async {
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
    runs: RunSender<LogRecord>,
) {
    let stream = names::stream_of(&log);
    let failed = |e: &dyn std::fmt::Display| format!("reading stream {stream}: {e}");
    let read = async {
        let s = connection
            .js
            .get_stream(&stream)
            .await
            .map_err(|e| failed(&e))?;
        let mut consumer = s
            .create_consumer(pull::Config {
                filter_subject: names::lane_filter(&stream, lane, true),
                deliver_policy: if last_only {
                    DeliverPolicy::Last
                } else {
                    DeliverPolicy::All
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: INACTIVE,
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| failed(&e))?;
        let info = consumer.info().await.map_err(|e| failed(&e))?;
        if info.num_pending == 0 {
            let _ = runs.send(vec![Read::End]).await;
            return Ok(());
        }
        // The pull protocol spoken directly: the client's JetStream messages carry a clone of
        // its context each, which costs more than the rest of a restore's reading.
        let pull = format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{}", info.name);
        let request = serde_json::json!({
            "batch": BATCH,
            "expires": PULL_EXPIRES.as_nanos() as u64,
            "idle_heartbeat": HEARTBEAT.as_nanos() as u64,
        })
        .to_string();
        let inbox = connection.client.new_inbox();
        let mut replies = connection
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| failed(&e))?;
        let mut run = Vec::with_capacity(RUN);
        let mut delivered = 0;
        // Messages the pulls sent so far still owe. The next pull goes out while half of one
        // is still owed, so the server always has a pull to serve (one at a time, it waited
        // for each reply between them, and a restore read at 160k messages/s with the server
        // idle a fifth of the time).
        let mut owed = 0;
        // When the read last moved: status answers (a pull that ended, a heartbeat) do not
        // count, so pulls answered at once with nothing (a consumer gone for good) end the read.
        let mut moved_at = tokio::time::Instant::now();
        loop {
            if owed < BATCH / 2 {
                connection
                    .client
                    .publish_with_reply(pull.clone(), inbox.clone(), request.clone().into())
                    .await
                    .map_err(|e| failed(&e))?;
                owed += BATCH;
            }
            let message = match tokio::time::timeout_at(moved_at + STALL, replies.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => return Err(failed(&"the subscription ended")),
                Err(_) => return Err(failed(&format!("no message within {STALL:?}"))),
            };
            if let Some(status) = message.status {
                match status.as_u16() {
                    100 => continue,
                    409 if pull_refused_for_good(message.description.as_deref()) => {
                        let description = message.description.unwrap_or_default();
                        return Err(failed(&format!("the pull was answered 409 {description}")));
                    }
                    // A pull ended (expired, or its batch or bytes were served) owing an
                    // unknown number: the next one goes out now, and a pull still waiting
                    // at the server expires by itself.
                    404 | 408 | 409 => {
                        owed = 0;
                        continue;
                    }
                    code => {
                        let description = message.description.unwrap_or_default();
                        return Err(failed(&format!(
                            "the pull was answered {code} {description}"
                        )));
                    }
                }
            }
            owed = owed.saturating_sub(1);
            let Some(info) = message.reply.as_deref().and_then(names::ack_info) else {
                return Err(failed(&"a message without its sequence"));
            };
            // Consumer sequences follow one another: one missing was lost on the way.
            if info.consumer_seq != delivered + 1 {
                return Err(failed(&format!(
                    "message {} of the read came after {delivered}",
                    info.consumer_seq
                )));
            }
            delivered = info.consumer_seq;
            moved_at = tokio::time::Instant::now();
            let at_end = info.pending == 0;
            run.push(Read::Record(LogRecord::new(
                (&log, &stream),
                lane,
                info,
                &message,
            )));
            if at_end {
                run.push(Read::End);
            }
            if at_end || run.len() >= RUN {
                if runs.send(std::mem::take(&mut run)).await.is_err() || at_end {
                    return Ok(());
                }
                // (Waiting for the restore to take the run is not the server's stall.)
                moved_at = tokio::time::Instant::now();
                run.reserve(RUN);
            }
        }
    };
    if let Err(e) = read.await {
        let _ = runs.send(vec![Read::Failed(e)]).await;
    }
}

/// A pull answered 409 for a reason a next pull cannot change (the consumer was deleted or is
/// not a pull consumer, or the pull asked for more than the consumer allows), as against the
/// end of a pull (`Batch Completed`, a leadership change, too many pulls waiting).
fn pull_refused_for_good(description: Option<&str>) -> bool {
    let description = description.unwrap_or_default().to_ascii_lowercase();
    ["consumer deleted", "push based", "exceeded maxrequest"]
        .iter()
        .any(|reason| description.contains(reason))
}

#[cfg(test)]
mod tests {
    use super::pull_refused_for_good;

    #[test]
    fn a_deleted_consumer_ends_the_read_and_an_ended_pull_does_not() {
        for gone in [
            "Consumer Deleted",
            "Consumer is push based",
            "Exceeded MaxRequestBatch of 256",
            "Exceeded MaxRequestExpires of 1s",
            "Exceeded MaxRequestMaxBytes of 1024",
        ] {
            assert!(pull_refused_for_good(Some(gone)), "{gone}");
        }
        for ended in [
            "Batch Completed",
            "Leadership Change",
            "Exceeded MaxWaiting",
            "Message Size Exceeds MaxBytes",
            "",
        ] {
            assert!(!pull_refused_for_good(Some(ended)), "{ended}");
        }
        assert!(!pull_refused_for_good(None));
    }
}
