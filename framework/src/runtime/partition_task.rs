//! One tokio task per owned partition: prepares the partition's store (a changelog restore,
//! off the consumer thread), then takes batches from the partition's queue and runs them
//! through the batch runner, in order.

use std::collections::VecDeque;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use tokio::sync::mpsc;
use weir_state::PartitionStore;

use crate::delivery::restore::{self, Restore};
use crate::delivery::OutboxSink;
use crate::delivery::RetryPolicy;
use crate::inbound::Inbound;
use crate::observe::metric_names::{BATCHES_CUT_TOTAL, BATCH_DURATION_SECONDS, MESSAGES_TOTAL};
use crate::processing::batch::{BatchRunner, Outcome};
use crate::processing::Process;
use crate::runtime::flow::PartitionFlow;
use crate::runtime::lifecycle::Lifecycle;
use crate::Error;

/// The partition's store, and the signal that it is closed: `closed` disconnects once the last
/// holder (the task, an in-flight commit or restore) drops it.
#[derive(Debug)]
pub(crate) struct TaskStore {
    store: PartitionStore,
    _closed: std_mpsc::Sender<()>,
}

impl AsRef<PartitionStore> for TaskStore {
    fn as_ref(&self) -> &PartitionStore {
        &self.store
    }
}

impl TaskStore {
    pub(crate) fn new(store: PartitionStore) -> (Arc<Self>, std_mpsc::Receiver<()>) {
        let (tx, rx) = std_mpsc::channel();
        (Arc::new(Self { store, _closed: tx }), rx)
    }
}

/// How long a stop waits for outbox sends in flight (a slow broker must not hold up a revoke).
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A task tells the consumer thread where its partition starts once its store is ready.
#[derive(Debug)]
pub(crate) struct Ready {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    /// `None`: from the start of the partition.
    pub(crate) next_offset: Option<i64>,
}

/// What every partition task of a worker shares.
#[derive(Debug, Clone)]
pub(crate) struct TaskContext {
    pub(crate) batch_size: usize,
    pub(crate) linger: Duration,
    /// Take a partition with no stored offset whose earliest record is past offset 0.
    pub(crate) allow_partial_history: bool,
    pub(crate) outbox: OutboxSink,
    /// Connection settings for the task's own clients (changelog restore, watermarks).
    pub(crate) client: ClientConfig,
    /// Where a restoring task says that its store is ready.
    pub(crate) ready: std_mpsc::Sender<Ready>,
    pub(crate) lifecycle: Arc<Lifecycle>,
}

pub(crate) struct PartitionTask<H: Process> {
    runner: BatchRunner<H, TaskStore>,
    topic: Arc<str>,
    partition: i32,
    queue: mpsc::UnboundedReceiver<Vec<Inbound>>,
    /// Records of a received chunk that did not fit in the current batch.
    carry: VecDeque<Inbound>,
    flow: Arc<PartitionFlow>,
    /// The next offset to process, when known (from SQLite or the last commit).
    next_offset: Option<i64>,
    /// The changelog to restore the store from before processing, if the changelog is on.
    changelog: Option<String>,
    /// The outbox of the last committed batch, being sent while the next batch is processed.
    flushing: Option<tokio::task::JoinHandle<bool>>,
    ctx: TaskContext,
}

impl<H: Process> PartitionTask<H> {
    pub(crate) fn new(
        runner: BatchRunner<H, TaskStore>,
        (topic, partition): (Arc<str>, i32),
        queue: mpsc::UnboundedReceiver<Vec<Inbound>>,
        flow: Arc<PartitionFlow>,
        next_offset: Option<i64>,
        changelog: Option<String>,
        ctx: TaskContext,
    ) -> Self {
        Self {
            runner,
            topic,
            partition,
            queue,
            carry: VecDeque::new(),
            flow,
            next_offset,
            changelog,
            flushing: None,
            ctx,
        }
    }

    pub(crate) async fn run(mut self) {
        if let Some(changelog) = self.changelog.take() {
            if !self.restore(changelog).await {
                return;
            }
        }
        // What an earlier run committed but did not get acknowledged goes first.
        self.flush_in_background(None);
        if !self.flushed().await {
            return;
        }
        let mut batch: Vec<Inbound> = Vec::with_capacity(self.ctx.batch_size);
        while self.next_batch(&mut batch).await {
            self.drop_seen(&mut batch);
            if batch.is_empty() {
                continue;
            }
            if !self.check_history(&batch).await {
                break;
            }
            self.flow
                .batch_started(batch.iter().filter_map(Inbound::timestamp_ms).min());
            if !self.process_until_committed(&batch).await {
                break;
            }
            if self.next_offset < batch.last().map(|m| m.offset() + 1) {
                // A stop cut the batch short: the rest is the next owner's, never skipped.
                metrics::counter!(BATCHES_CUT_TOTAL).increment(1);
                break;
            }
            batch.clear();
        }
        // The last batch's outbox, before the partition's final Kafka commit.
        self.flushed().await;
        tracing::debug!(topic = %self.topic, partition = self.partition, "partition task stopped");
    }

    /// Keeps only records past the stored offset, each offset once, in order: refetched
    /// records (after pause/resume or a seek) that are already in state go.
    fn drop_seen(&self, batch: &mut Vec<Inbound>) {
        let mut next = self.next_offset.unwrap_or(i64::MIN);
        batch.retain(|m| {
            let keep = m.offset() >= next;
            if keep {
                next = m.offset() + 1;
            }
            keep
        });
    }

    /// Rebuilds the store from the changelog when it is missing or behind, on a blocking
    /// thread while the consumer keeps polling (the partition stays paused), then tells the
    /// consumer thread where to start. False if a stop came first.
    async fn restore(&mut self, changelog: String) -> bool {
        let store = Arc::clone(self.runner.store());
        let flow = Arc::clone(&self.flow);
        let (topic, partition, local) = (Arc::clone(&self.topic), self.partition, self.next_offset);
        let client = self.ctx.client.clone();
        let result = tokio::task::spawn_blocking(move || {
            let stop = flow.stop_signal();
            let outcome = restore::restore_if_behind(
                &client,
                &store.store,
                &topic,
                partition,
                &changelog,
                local,
                &|| stop.is_requested(),
            );
            match outcome {
                Ok(Restore::Local(n)) => Ok(n),
                Ok(Restore::Restored { next_offset }) => Ok(Some(next_offset)),
                Err(e) if stop.is_requested() => Err(e),
                Err(e) => {
                    // The store is untouched, or emptied without an offset: either way
                    // consistent, so go on from its offset (further back, not wrong).
                    let n = store.store.next_offset(&topic, partition).ok().flatten();
                    tracing::warn!(%topic, partition, %changelog, next_offset = ?n, "changelog restore failed, going on from the local store: {e}");
                    Ok(n)
                }
            }
        })
        .await;
        let next_offset = match result {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::info!(topic = %self.topic, partition = self.partition, "changelog restore stopped: {e}");
                return false;
            }
            Err(e) => {
                self.ctx.lifecycle.fail(Error::Panic {
                    context: format!("restoring {}/{}", self.topic, self.partition),
                    message: e.to_string(),
                });
                return false;
            }
        };
        self.next_offset = next_offset;
        self.flow.ready(next_offset);
        let _ = self.ctx.ready.send(Ready {
            topic: Arc::clone(&self.topic),
            partition: self.partition,
            next_offset,
        });
        !self.flow.stop_signal().is_requested()
    }

    /// A partition with no stored offset folds its whole history into state; if its first
    /// record is past offset 0 and the partition's start moved (retention deleted records),
    /// that history is partial: refuse, unless allowed. False when refused.
    async fn check_history(&self, batch: &[Inbound]) -> bool {
        let first = batch.first().map_or(0, Inbound::offset);
        if self.next_offset.is_some() || first == 0 || self.ctx.allow_partial_history {
            return true;
        }
        let client = self.ctx.client.clone();
        let (topic, partition) = (self.topic.to_string(), self.partition);
        let low =
            tokio::task::spawn_blocking(move || restore::low_watermark(&client, &topic, partition))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
        let low = match low {
            Ok(low) => low,
            Err(e) => {
                tracing::warn!(topic = %self.topic, partition = self.partition, "cannot read the partition's earliest offset, assuming its history is whole: {e}");
                return true;
            }
        };
        if low <= 0 {
            // Offsets before the first record may be compacted away or be transaction
            // markers: only a moved log start means deleted history.
            return true;
        }
        self.ctx.lifecycle.fail(Error::PartialHistory {
            topic: self.topic.to_string(),
            partition: self.partition,
            earliest: low,
        });
        false
    }

    /// Fills `batch` with up to `batch_size` records, waiting at most `linger` after the first.
    /// Returns false when the task should stop instead.
    async fn next_batch(&mut self, batch: &mut Vec<Inbound>) -> bool {
        let stop = Arc::clone(self.flow.stop_signal());
        if stop.is_requested() {
            return false;
        }
        if self.carry.is_empty() {
            let chunk = tokio::select! {
                biased;
                _ = stop.requested() => return false,
                c = self.queue.recv() => match c {
                    Some(c) => c,
                    None => return false,
                },
            };
            self.carry.extend(chunk);
        }
        let linger = self.ctx.linger;
        let deadline = tokio::time::Instant::now() + linger;
        loop {
            self.take_carry(batch);
            if batch.len() >= self.ctx.batch_size {
                break;
            }
            match self.queue.try_recv() {
                Ok(chunk) => self.carry.extend(chunk),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if linger.is_zero() || stop.is_requested() {
                        break;
                    }
                    tokio::select! {
                        biased;
                        _ = stop.requested() => break,
                        _ = tokio::time::sleep_until(deadline) => break,
                        c = self.queue.recv() => match c {
                            Some(c) => self.carry.extend(c),
                            None => break,
                        },
                    }
                }
            }
        }
        true
    }

    /// Moves carried records into `batch`, up to the batch size.
    fn take_carry(&mut self, batch: &mut Vec<Inbound>) {
        let n = self
            .ctx
            .batch_size
            .saturating_sub(batch.len())
            .min(self.carry.len());
        let start = batch.len();
        batch.extend(self.carry.drain(..n));
        self.flow.taken(&batch[start..]);
    }

    /// Starts sending the partition's outbox (emitted records, changelog entries) on its own
    /// task; once it is acknowledged, Kafka may be told `next` (if given). Call only after
    /// [`flushed`](Self::flushed): one flush runs at a time.
    fn flush_in_background(&mut self, next: Option<i64>) {
        let flush = flush_outbox(
            self.ctx.outbox.clone(),
            Arc::clone(self.runner.store()),
            Arc::clone(&self.flow),
            self.runner.policy().retry,
            (Arc::clone(&self.topic), self.partition),
        );
        let flow = Arc::clone(&self.flow);
        self.flushing = Some(tokio::spawn(async move {
            let sent = flush.await;
            if let (true, Some(next)) = (sent, next) {
                flow.set_committed(next);
            }
            sent
        }));
    }

    /// Waits for the outbox flush in flight, if any. False if it gave up (a stop came first,
    /// or sends stayed unacknowledged [`STOP_GRACE`] after it).
    async fn flushed(&mut self) -> bool {
        let Some(flushing) = self.flushing.take() else {
            return true;
        };
        match flushing.await {
            Ok(sent) => sent,
            Err(e) => {
                self.ctx.lifecycle.fail(Error::Panic {
                    context: format!("sending the outbox of {}/{}", self.topic, self.partition),
                    message: e.to_string(),
                });
                false
            }
        }
    }

    /// Processes and commits `batch` under the partition's retry and dead-letter policy.
    /// Returns false if a stop was requested while waiting to retry (nothing of the batch is
    /// committed then, so it is processed again by the partition's next owner).
    async fn process_until_committed(&mut self, batch: &[Inbound]) -> bool {
        let started = Instant::now();
        match self.runner.run_until_committed(batch).await {
            Outcome::Committed(next) => {
                // A stop may have committed only the batch's first records.
                let done = batch.iter().take_while(|m| m.offset() < next).count();
                metrics::histogram!(BATCH_DURATION_SECONDS).record(started.elapsed());
                metrics::counter!(MESSAGES_TOTAL, "outcome" => "ok").increment(done as u64);
                self.next_offset = Some(next);
                self.flow.batch_committed(done as u64);
                // The batch's outbox is sent while the next batch is processed; the one before
                // must be acknowledged first, so at most one batch's outbox is in flight. The
                // Kafka offset commit (the consumer thread's, and the revoke's final one) waits
                // until the batch's outbox is acknowledged.
                if !self.flushed().await {
                    return false;
                }
                self.flush_in_background(Some(next));
                true
            }
            Outcome::Stopped | Outcome::GaveUp(_) => false,
        }
    }
}

/// Sends everything in the store's outbox, retrying with the retry policy's backoff until it
/// is acknowledged. False if a stop came first, or a send is still unacknowledged
/// [`STOP_GRACE`] after a stop (the rows stay in the store and are sent again by the
/// partition's next run: at least once).
async fn flush_outbox(
    outbox: OutboxSink,
    store: Arc<TaskStore>,
    flow: Arc<PartitionFlow>,
    retry: RetryPolicy,
    (topic, partition): (Arc<str>, i32),
) -> bool {
    let stop = flow.stop_signal();
    let mut attempt = 0;
    loop {
        let give_up = async {
            stop.requested().await;
            tokio::time::sleep(STOP_GRACE).await;
        };
        let flushed = tokio::select! {
            r = outbox.flush(&store) => r,
            () = give_up => return false,
        };
        match flushed {
            Ok(_) => return true,
            Err(e) => {
                attempt += 1;
                let delay = retry.delay(attempt, attempt.into());
                tracing::error!(
                    %topic,
                    partition,
                    attempt,
                    "outbox not sent, retrying in {delay:?}: {e}"
                );
                tokio::select! {
                    biased;
                    _ = stop.requested() => return false,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
