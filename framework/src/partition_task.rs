//! One tokio task per owned partition: takes batches from the partition's queue, runs the
//! handler on each record in order, and commits the batch's state and offset in one SQLite
//! transaction.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};
use weir_state::PartitionStore;

use crate::batch::{process_until_committed, Outcome, Policy};
use crate::dead_letter::DeadLetterSink;
use crate::inbound::Inbound;
use crate::metric_names::{BATCH_DURATION_SECONDS, MESSAGES_TOTAL};
use crate::outbox::OutboxSink;
use crate::Process;

/// Messages from partition tasks to the consumer thread.
#[derive(Debug)]
pub(crate) enum Control {
    /// A batch is durable in SQLite: `next_offset` may be committed to Kafka.
    Committed {
        topic: String,
        partition: i32,
        next_offset: i64,
    },
    /// A paused partition's queue drained below its low-water mark.
    Wake,
}

/// State shared between a partition's task and the consumer thread.
#[derive(Debug, Default)]
pub(crate) struct PartitionFlow {
    stop: AtomicBool,
    stop_notify: Notify,
    /// Records handed to the task and not yet taken into a batch.
    pub(crate) queued: AtomicUsize,
    /// Set by the consumer thread while the partition is paused.
    pub(crate) paused: AtomicBool,
    /// Set by the task once it asked to be woken, cleared by the consumer thread.
    pub(crate) wake_sent: AtomicBool,
    /// The next offset to process: from SQLite, then each commit; -1 while unknown.
    pub(crate) committed: AtomicI64,
    /// The partition's high watermark as librdkafka last learned it from fetch responses.
    pub(crate) high_watermark: AtomicI64,
    /// The partition's low watermark (where an unknown start offset begins).
    pub(crate) low_watermark: AtomicI64,
    /// Timestamp (ms) of the oldest record taken but not yet committed; 0 when none.
    pub(crate) oldest_pending_ms: AtomicI64,
    /// Records committed since the partition was assigned here.
    pub(crate) processed: AtomicU64,
}

impl PartitionFlow {
    pub(crate) fn new(next_offset: Option<i64>) -> Self {
        Self {
            committed: AtomicI64::new(next_offset.unwrap_or(-1)),
            high_watermark: AtomicI64::new(-1),
            low_watermark: AtomicI64::new(-1),
            ..Self::default()
        }
    }

    /// High watermark minus the next offset to process, once both are known.
    pub(crate) fn lag(&self) -> Option<i64> {
        let high = self.high_watermark.load(Ordering::Relaxed);
        if high < 0 {
            return None;
        }
        let next = match self.committed.load(Ordering::Relaxed) {
            n if n >= 0 => n,
            _ => self.low_watermark.load(Ordering::Relaxed).max(0),
        };
        Some((high - next).max(0))
    }

    /// Age in seconds of the oldest record not yet committed (0 when caught up).
    pub(crate) fn lag_seconds(&self, now_ms: i64) -> f64 {
        match self.oldest_pending_ms.load(Ordering::Relaxed) {
            ts if ts > 0 && self.lag().unwrap_or(0) > 0 => ((now_ms - ts).max(0) as f64) / 1000.0,
            _ => 0.0,
        }
    }

    /// Asks the task to finish its current batch and stop.
    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.stop_notify.notify_one();
    }

    pub(crate) fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub(crate) async fn stopped(&self) {
        while !self.stop_requested() {
            self.stop_notify.notified().await;
        }
    }

    pub(crate) fn committed_offset(&self) -> Option<i64> {
        Some(self.committed.load(Ordering::SeqCst)).filter(|o| *o >= 0)
    }
}

/// The partition's store, and the signal that it is closed: `closed` disconnects once the last
/// holder (the task or an in-flight commit) drops it.
#[derive(Debug)]
pub(crate) struct TaskStore {
    pub(crate) store: PartitionStore,
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

/// Batching settings of a partition task.
#[derive(Debug, Clone)]
pub(crate) struct BatchSettings {
    pub(crate) policy: Policy,
    pub(crate) batch_size: usize,
    pub(crate) linger: Duration,
    pub(crate) low_water: usize,
}

pub(crate) struct PartitionTask<H: Process> {
    pub(crate) handler: Arc<H>,
    pub(crate) store: Arc<TaskStore>,
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) queue: mpsc::UnboundedReceiver<Vec<Inbound>>,
    /// Records of a received chunk that did not fit in the current batch.
    pub(crate) carry: VecDeque<Inbound>,
    pub(crate) flow: Arc<PartitionFlow>,
    pub(crate) control: std_mpsc::Sender<Control>,
    /// The next offset to process, when known (from SQLite or the last commit).
    pub(crate) next_offset: Option<i64>,
    pub(crate) settings: BatchSettings,
    pub(crate) sink: DeadLetterSink,
    pub(crate) outbox: OutboxSink,
}

impl<H: Process> PartitionTask<H> {
    pub(crate) async fn run(mut self) {
        // What an earlier run committed but did not get acknowledged goes first.
        if !self.flush_outbox().await {
            return;
        }
        let mut batch: Vec<Inbound> = Vec::with_capacity(self.settings.batch_size);
        while self.next_batch(&mut batch).await {
            if let Some(next) = self.next_offset {
                // Refetched records (after pause/resume or a seek) that are already in state.
                batch.retain(|m| m.offset() >= next);
            }
            if batch.is_empty() {
                continue;
            }
            let oldest = batch.iter().filter_map(Inbound::timestamp_ms).min();
            self.flow
                .oldest_pending_ms
                .store(oldest.unwrap_or(0), Ordering::Relaxed);
            if !self.process_until_committed(&batch).await {
                break;
            }
            if self.next_offset < batch.last().map(|m| m.offset() + 1) {
                // A stop cut the batch short: the rest is the next owner's, never skipped.
                break;
            }
            batch.clear();
        }
        tracing::debug!(topic = %self.topic, partition = self.partition, "partition task stopped");
    }

    /// Fills `batch` with up to `batch_size` records, waiting at most `linger` after the first.
    /// Returns false when the task should stop instead.
    async fn next_batch(&mut self, batch: &mut Vec<Inbound>) -> bool {
        if self.flow.stop_requested() {
            return false;
        }
        if self.carry.is_empty() {
            let chunk = tokio::select! {
                biased;
                _ = self.flow.stopped() => return false,
                c = self.queue.recv() => match c {
                    Some(c) => c,
                    None => return false,
                },
            };
            self.carry.extend(chunk);
        }
        let deadline = tokio::time::Instant::now() + self.settings.linger;
        loop {
            self.take_carry(batch);
            if batch.len() >= self.settings.batch_size {
                break;
            }
            match self.queue.try_recv() {
                Ok(chunk) => self.carry.extend(chunk),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if self.settings.linger.is_zero() || self.flow.stop_requested() {
                        break;
                    }
                    tokio::select! {
                        biased;
                        _ = self.flow.stopped() => break,
                        _ = tokio::time::sleep_until(deadline) => break,
                        c = self.queue.recv() => match c {
                            Some(c) => self.carry.extend(c),
                            None => break,
                        },
                    }
                }
            }
        }
        self.wake_if_drained();
        true
    }

    /// Moves carried records into `batch`, up to the batch size.
    fn take_carry(&mut self, batch: &mut Vec<Inbound>) {
        let n = self
            .settings
            .batch_size
            .saturating_sub(batch.len())
            .min(self.carry.len());
        batch.extend(self.carry.drain(..n));
        self.flow.queued.fetch_sub(n, Ordering::SeqCst);
    }

    /// Produces the partition's outbox (emitted records, changelog entries), retrying with the
    /// retry policy's backoff until it is acknowledged. False if a stop came first (the rows
    /// stay in the store and are sent by its next run).
    async fn flush_outbox(&self) -> bool {
        let mut attempt = 0;
        loop {
            match self.outbox.flush(&self.store.store).await {
                Ok(_) => return true,
                Err(e) => {
                    attempt += 1;
                    let delay = self.settings.policy.retry.delay(attempt, attempt.into());
                    tracing::error!(
                        topic = %self.topic,
                        partition = self.partition,
                        attempt,
                        "outbox not sent, retrying in {delay:?}: {e}"
                    );
                    tokio::select! {
                        biased;
                        _ = self.flow.stopped() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    fn wake_if_drained(&self) {
        if self.flow.paused.load(Ordering::SeqCst)
            && self.flow.queued.load(Ordering::SeqCst) <= self.settings.low_water
            && !self.flow.wake_sent.swap(true, Ordering::SeqCst)
        {
            let _ = self.control.send(Control::Wake);
        }
    }

    /// Processes and commits `batch` under the partition's retry and dead-letter policy.
    /// Returns false if a stop was requested while waiting to retry (nothing of the batch is
    /// committed then, so it is processed again by the partition's next owner).
    async fn process_until_committed(&mut self, batch: &[Inbound]) -> bool {
        let started = Instant::now();
        let outcome = process_until_committed(
            &*self.handler,
            &self.store,
            &self.topic,
            self.partition,
            &self.settings.policy,
            &self.sink,
            batch,
            Some(&self.flow),
        )
        .await;
        match outcome {
            Outcome::Committed(next) => {
                // A stop may have committed only the batch's first records.
                let done = batch.iter().take_while(|m| m.offset() < next).count();
                metrics::histogram!(BATCH_DURATION_SECONDS).record(started.elapsed());
                metrics::counter!(MESSAGES_TOTAL, "outcome" => "ok").increment(done as u64);
                self.next_offset = Some(next);
                self.flow
                    .processed
                    .fetch_add(done as u64, Ordering::Relaxed);
                self.flow.oldest_pending_ms.store(0, Ordering::Relaxed);
                // The Kafka offset commit (here and the revoke's final one, which reads
                // `flow.committed`) waits until the batch's outbox is acknowledged.
                if !self.flush_outbox().await {
                    return false;
                }
                self.flow.committed.store(next, Ordering::SeqCst);
                let _ = self.control.send(Control::Committed {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    next_offset: next,
                });
                true
            }
            Outcome::Stopped | Outcome::GaveUp(_) => false,
        }
    }
}
