//! The outbox: records a batch emitted (and its changelog entries) are written to the
//! partition's SQLite file in the batch's transaction, then produced, then deleted once the
//! broker acknowledged them. A crash in between sends them again: at least once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_state::wire::{ChangelogEntry, header};
use weir_state::{OutboxRecord, OutboxRun, PartitionStore, RecordView};

use super::retry::RetryPolicy;
use crate::broker::Producer;
use crate::broker::{HeaderList, Outgoing};
use crate::observe::metric_names::OUTBOX_SENT_TOTAL;
use crate::stop::StopSignal;

/// Rows read from the outbox per round.
const OUTBOX_CHUNK: usize = 5000;

/// Why an outbox flush stopped; the rows not acknowledged stay.
#[derive(Debug)]
pub(crate) struct OutboxError {
    message: String,
    permanent: bool,
}

impl OutboxError {
    fn transient(message: String) -> Self {
        Self {
            message,
            permanent: false,
        }
    }

    /// The broker rejected a record for good (too large, not authorized, no such topic):
    /// sending it again fails the same way until someone changes the topic or the cluster.
    pub(crate) fn is_permanent(&self) -> bool {
        self.permanent
    }
}

impl std::fmt::Display for OutboxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Where outbox records go.
#[derive(Clone)]
pub(crate) enum OutboxSink {
    /// The worker's producer.
    Broker(Arc<Producer>),
    /// The test kit's list of sent records.
    Memory(Arc<Mutex<Vec<OutboxRecord>>>),
}

impl std::fmt::Debug for OutboxSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Broker(_) => f.write_str("OutboxSink::Broker"),
            Self::Memory(_) => f.write_str("OutboxSink::Memory"),
        }
    }
}

impl OutboxSink {
    /// Sends every record waiting in `store`'s outbox, in order, deleting each round once all
    /// of it is acknowledged. Returns how many were sent; on error the unacknowledged rows stay.
    /// The SQLite reads and deletes run on the blocking pool, so that a batch commit holding
    /// the store meanwhile does not hold up an async worker.
    pub(crate) async fn flush<S>(&self, store: &Arc<S>) -> Result<usize, OutboxError>
    where
        S: AsRef<PartitionStore> + Send + Sync + 'static,
    {
        let mut sent = 0;
        loop {
            let runs = on_store(store, |s| s.take_outbox_runs(OUTBOX_CHUNK))
                .await
                .map_err(OutboxError::transient)?;
            if runs.is_empty() {
                return Ok(sent);
            }
            // Read in place from the runs the commit wrote.
            let mut rows = Vec::new();
            for run in &runs {
                rows.extend(
                    run.records()
                        .map_err(|e| OutboxError::transient(e.to_string()))?,
                );
            }
            match self {
                Self::Memory(out) => out
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend(rows.iter().map(RecordView::to_record)),
                Self::Broker(producer) => {
                    // Rows go out concurrently, but a batch's changelog offset marker only
                    // once every row before it is acknowledged: a restore elsewhere then never
                    // takes a batch as done whose emitted records might be lost with this
                    // machine.
                    let (floor, emitted) = acked_below(&rows);
                    let mut wave = Vec::new();
                    for (r, emitted) in rows.iter().zip(emitted) {
                        let floor = floor.as_deref().filter(|_| emitted);
                        let row = (r, floor.map(str::as_bytes));
                        if ChangelogEntry::is_offset_marker(r.key) {
                            send_all(producer, &wave).await?;
                            wave.clear();
                            send(producer, row).await?;
                        } else {
                            wave.push(row);
                        }
                    }
                    send_all(producer, &wave).await?;
                }
            }
            drop(rows);
            let ids: Vec<i64> = runs.iter().flat_map(OutboxRun::ids).collect();
            let n = ids.len();
            on_store(store, move |s| s.delete_outbox(&ids))
                .await
                .map_err(OutboxError::transient)?;
            metrics::counter!(OUTBOX_SENT_TOTAL).increment(n as u64);
            sent += n;
        }
    }
}

/// How long a stop waits for outbox sends in flight (a slow broker must not hold up a revoke).
const STOP_GRACE: Duration = Duration::from_secs(2);

impl OutboxSink {
    /// Sends everything in `store`'s outbox, retrying with `retry`'s backoff until it is
    /// acknowledged. False if a stop came first, or a send is still unacknowledged
    /// [`STOP_GRACE`] after a stop (the rows stay in the store and are sent again by the
    /// partition's next run: at least once). `rejected` hears when the broker rejects an emit
    /// for good (the reason) and when it takes them again (`None`), and says whether that
    /// changed.
    pub(crate) async fn send_retrying<S>(
        &self,
        store: &Arc<S>,
        retry: RetryPolicy,
        stop: &StopSignal,
        rejected: &impl Fn(Option<String>) -> bool,
        (topic, partition): (&str, i32),
    ) -> bool
    where
        S: AsRef<PartitionStore> + Send + Sync + 'static,
    {
        let mut attempt = 0;
        loop {
            let give_up = async {
                stop.requested().await;
                tokio::time::sleep(STOP_GRACE).await;
            };
            let flushed = tokio::select! {
                r = self.flush(store) => r,
                () = give_up => return false,
            };
            match flushed {
                Ok(_) => {
                    if rejected(None) {
                        tracing::info!(%topic, partition, "the broker takes the partition's emits again");
                    }
                    return true;
                }
                Err(e) => {
                    attempt += 1;
                    let delay = retry.delay(attempt, attempt.into());
                    if e.is_permanent() {
                        // Not a passing fault: say so (readiness, a gauge, the status page)
                        // while retrying, in case the topic or the cluster is changed to take
                        // them.
                        rejected(Some(e.to_string()));
                        tracing::error!(
                            %topic,
                            partition,
                            attempt,
                            "the broker rejects an emit of the partition for good; its outbox cannot drain until the topic or the cluster takes it (retrying in {delay:?}): {e}"
                        );
                    } else {
                        tracing::error!(
                            %topic,
                            partition,
                            attempt,
                            "outbox not sent, retrying in {delay:?}: {e}"
                        );
                    }
                    tokio::select! {
                        biased;
                        _ = stop.requested() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// Runs `f` on the store on the blocking pool.
async fn on_store<S, T>(
    store: &Arc<S>,
    f: impl FnOnce(&PartitionStore) -> weir_state::Result<T> + Send + 'static,
) -> Result<T, String>
where
    S: AsRef<PartitionStore> + Send + Sync + 'static,
    T: Send + 'static,
{
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(store.as_ref().as_ref()))
        .await
        .map_err(|e| format!("outbox access panicked: {e}"))?
        .map_err(|e| e.to_string())
}

/// The `weir.source.acked_below` of each of a round's rows: the lowest source offset among the
/// round's emits, on emits only. Rows are deleted only once acknowledged, so every emit from
/// below it was acknowledged before this round is sent (the rows are in commit order, source
/// offsets ascending).
fn acked_below(rows: &[RecordView<'_>]) -> (Option<String>, Vec<bool>) {
    let mut lowest: Option<i64> = None;
    let emitted = rows
        .iter()
        .map(|r| {
            let offset = header::emitted_offset_in(r.headers.iter(), r.headers.len());
            if let Some(o) = offset {
                lowest = Some(lowest.map_or(o, |l| l.min(o)));
            }
            offset.is_some()
        })
        .collect();
    (lowest.map(|l| l.to_string()), emitted)
}

/// A row to send, with its `weir.source.acked_below`, if any.
type Row<'a> = (&'a RecordView<'a>, Option<&'a [u8]>);

/// Sends `rows` together and waits for all of them.
async fn send_all(producer: &Producer, rows: &[Row<'_>]) -> Result<(), OutboxError> {
    if rows.is_empty() {
        return Ok(());
    }
    let records: Vec<Outgoing<'_>> = rows
        .iter()
        .map(|(r, acked_below)| Outgoing {
            topic: r.topic,
            partition: r.partition,
            key: r.key,
            value: r.value,
            headers: HeaderList::Stored(
                r.headers,
                acked_below.map(|v| (header::SOURCE_ACKED_BELOW, v)),
            ),
            timestamp: r.timestamp,
        })
        .collect();
    producer.send_all(&records).await.map_err(|e| {
        let mut topics: Vec<&str> = rows.iter().map(|(r, _)| r.topic).collect();
        topics.sort_unstable();
        topics.dedup();
        OutboxError {
            message: format!("sending to {} failed: {e}", topics.join(", ")),
            permanent: e.permanent,
        }
    })
}

async fn send(producer: &Producer, row: Row<'_>) -> Result<(), OutboxError> {
    send_all(producer, &[row]).await
}
