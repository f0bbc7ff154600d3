//! One tokio task per owned partition: prepares the partition's store (a changelog restore,
//! off the consumer thread), then takes batches from the partition's queue and runs them
//! through the batch runner, in order.

use std::collections::VecDeque;
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use crate::broker::Connection;
use tokio::sync::mpsc;
use weir_state::PartitionStore;

use crate::config::TableSource;
use crate::delivery::OutboxSink;
use crate::delivery::restore::{self, Restore};
use crate::error::Error;
use crate::inbound::Inbound;
use crate::observe::metric_names::{BATCH_DURATION_SECONDS, BATCHES_CUT_TOTAL, MESSAGES_TOTAL};
use crate::processing::Process;
use crate::processing::Scope;
use crate::processing::batch::{BatchRunner, BatchTime, Outcome};
use crate::processing::time;
use crate::runtime::flow::PartitionFlow;
use crate::runtime::lifecycle::Lifecycle;
#[cfg(feature = "kafka")]
use crate::runtime::tables::PartitionTables;

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
    pub(crate) connection: Connection,
    /// Where a restoring task says that its store is ready.
    pub(crate) ready: std_mpsc::Sender<Ready>,
    pub(crate) lifecycle: Arc<Lifecycle>,
    /// After this long without records a partition's watermark follows the wall clock.
    pub(crate) idle_close_after: Option<Duration>,
    /// The co-partitioned tables each partition reads into its store.
    pub(crate) tables: Arc<[TableSource]>,
    /// The worker's global tables and pipeline.
    pub(crate) scope: Scope,
}

/// What the task does next.
enum Step {
    /// Process the records taken into the batch.
    Records,
    /// No records came: let time pass (idle watermark, wall-clock timers).
    Tick,
    Stop,
}

/// How the partition's clock moves without records.
#[derive(Debug)]
struct Idle {
    /// When the last records were taken (or the task became ready to take them).
    last_records_at: Instant,
    /// Since when the partition is caught up: every record of its log processed, nothing
    /// restoring. Idle time counts only from then, so that a restore, an outage or a slow
    /// fetch never passes for a quiet partition.
    caught_up_since: Option<Instant>,
    /// The watermark after them.
    watermark: Option<i64>,
    /// The earliest pending wall-clock timer (ms since the epoch).
    next_wall_timer: Option<i64>,
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
    /// The partition's tables, once opened.
    #[cfg(feature = "kafka")]
    tables: Option<Arc<std::sync::Mutex<PartitionTables>>>,
    idle: Idle,
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
            #[cfg(feature = "kafka")]
            tables: None,
            idle: Idle {
                last_records_at: Instant::now(),
                caught_up_since: None,
                watermark: None,
                next_wall_timer: None,
            },
            ctx,
        }
    }

    pub(crate) async fn run(mut self) {
        if !self.prepare().await {
            return;
        }
        // What an earlier run committed but did not get acknowledged goes first.
        self.flush_in_background(None);
        if !self.flushed().await {
            return;
        }
        // Idle time counts from here, not from before a restore.
        self.idle.last_records_at = Instant::now();
        self.read_clock();
        let mut batch: Vec<Inbound> = Vec::with_capacity(self.ctx.batch_size);
        loop {
            match self.next_batch(&mut batch).await {
                Step::Stop => break,
                Step::Tick => {
                    if !self.tick().await {
                        break;
                    }
                    continue;
                }
                Step::Records => {}
            }
            self.drop_seen(&mut batch);
            if batch.is_empty() {
                continue;
            }
            if !self.check_history(&batch).await || !self.read_tables().await {
                break;
            }
            self.flow
                .batch_started(batch.iter().filter_map(Inbound::timestamp_ms).min());
            if !self.process_until_committed(&batch, BatchTime::now()).await {
                break;
            }
            self.idle.last_records_at = Instant::now();
            self.read_clock();
            if self.next_offset < batch.last().map(|m| m.offset() + 1) {
                // A stop cut the batch short: the rest is the next owner's, never skipped.
                metrics::counter!(BATCHES_CUT_TOTAL, "topic" => Arc::clone(&self.topic))
                    .increment(1);
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

    /// Prepares the store while the consumer keeps polling (the partition stays paused):
    /// rebuilds it from the changelog when it is missing or behind, reads its tables up to
    /// their end; then tells the consumer thread where to start. False if a stop came first
    /// (or the task failed).
    async fn prepare(&mut self) -> bool {
        if let Some(changelog) = self.changelog.take() {
            match self.restore(changelog).await {
                Some(next_offset) => self.next_offset = next_offset,
                None => return false,
            }
        }
        if !self.ctx.tables.is_empty() && !self.open_tables().await {
            return false;
        }
        if self.flow.is_restoring() {
            self.flow.ready(self.next_offset);
            let _ = self.ctx.ready.send(Ready {
                topic: Arc::clone(&self.topic),
                partition: self.partition,
                next_offset: self.next_offset,
            });
        }
        !self.flow.stop_signal().is_requested()
    }

    /// Opens the partition's co-partitioned tables and reads them to their end (tables are
    /// Kafka's). False if that failed for good (the worker fails) or a stop came first.
    #[cfg(feature = "kafka")]
    async fn open_tables(&mut self) -> bool {
        let store = Arc::clone(self.runner.store());
        let (connection, tables) = (self.ctx.connection.clone(), Arc::clone(&self.ctx.tables));
        let partition = self.partition;
        let opened = tokio::task::spawn_blocking(move || {
            let connection = connection.kafka("a table")?;
            PartitionTables::open(connection, &store.store, &tables, partition)
        })
        .await;
        match opened {
            Ok(Ok(t)) => self.tables = Some(Arc::new(std::sync::Mutex::new(t))),
            Ok(Err(e)) => {
                self.ctx.lifecycle.fail(Error::Table {
                    topics: self.ctx.tables.iter().map(|t| t.topic.clone()).collect(),
                    message: e,
                });
                return false;
            }
            Err(e) => {
                self.ctx.lifecycle.fail(Error::Panic {
                    context: format!("opening the tables of {}/{}", self.topic, self.partition),
                    message: e.to_string(),
                });
                return false;
            }
        }
        self.read_tables().await
    }

    /// Tables are Kafka's: a worker on another broker has none (its settings were refused).
    #[cfg(not(feature = "kafka"))]
    async fn open_tables(&mut self) -> bool {
        true
    }

    /// Reads the partition's tables up to their end into its store, retrying with the retry
    /// policy's backoff while they cannot be read. False if a stop came first.
    #[cfg(feature = "kafka")]
    async fn read_tables(&mut self) -> bool {
        let Some(tables) = &self.tables else {
            return true;
        };
        let mut attempt = 0u32;
        loop {
            let (tables, store) = (Arc::clone(tables), Arc::clone(self.runner.store()));
            let stop = Arc::clone(self.flow.stop_signal());
            let read = tokio::task::spawn_blocking(move || {
                let mut tables = tables
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                tables.catch_up(&store.store, &|| stop.is_requested())
            })
            .await;
            let error = match read {
                Ok(Ok(_)) => return true,
                Ok(Err(e)) => e,
                Err(e) => e.to_string(),
            };
            if self.flow.stop_signal().is_requested() {
                return false;
            }
            attempt += 1;
            let delay = self.runner.policy().retry.delay(attempt, attempt.into());
            tracing::error!(
                topic = %self.topic,
                partition = self.partition,
                attempt,
                "cannot read the partition's tables, retrying in {delay:?}: {error}"
            );
            let stop = Arc::clone(self.flow.stop_signal());
            tokio::select! {
                biased;
                _ = stop.requested() => return false,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Tables are Kafka's: there are none to read.
    #[cfg(not(feature = "kafka"))]
    async fn read_tables(&mut self) -> bool {
        true
    }

    /// Rebuilds the store from the changelog when it is missing or behind, on a blocking
    /// thread; the offset to go on from, `None` if a stop came first.
    async fn restore(&mut self, changelog: String) -> Option<Option<i64>> {
        let store = Arc::clone(self.runner.store());
        let flow = Arc::clone(&self.flow);
        let (topic, partition, local) = (Arc::clone(&self.topic), self.partition, self.next_offset);
        let connection = self.ctx.connection.clone();
        let result = tokio::task::spawn_blocking(move || {
            let stop = flow.stop_signal();
            let outcome = restore::restore_if_behind(
                &connection,
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
        match result {
            Ok(Ok(n)) => Some(n),
            Ok(Err(e)) => {
                tracing::info!(topic = %self.topic, partition = self.partition, "changelog restore stopped: {e}");
                None
            }
            Err(e) => {
                self.ctx.lifecycle.fail(Error::Panic {
                    context: format!("restoring {}/{}", self.topic, self.partition),
                    message: e.to_string(),
                });
                None
            }
        }
    }

    /// A partition with no stored offset folds its whole history into state; if its first
    /// record is past offset 0 and the partition's start moved (retention deleted records),
    /// that history is partial: refuse, unless allowed. False when refused.
    async fn check_history(&self, batch: &[Inbound]) -> bool {
        let first = batch.first().map_or(0, Inbound::offset);
        if self.next_offset.is_some() || first == 0 || self.ctx.allow_partial_history {
            return true;
        }
        let connection = self.ctx.connection.clone();
        let (topic, partition) = (self.topic.to_string(), self.partition);
        let low = tokio::task::spawn_blocking(move || connection.low_watermark(&topic, partition))
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

    /// Reads the partition's watermark and its next wall-clock timer from the store.
    fn read_clock(&mut self) {
        let store = (**self.runner.store()).as_ref();
        let read = time::watermark(store, &weir_state::WriteSet::default())
            .and_then(|w| Ok((w, time::next_wall_timer(store)?)));
        match read {
            Ok((watermark, next_wall_timer)) => {
                self.flow.set_event_watermark(watermark);
                self.idle.watermark = watermark;
                self.idle.next_wall_timer = next_wall_timer;
            }
            Err(e) => {
                tracing::warn!(topic = %self.topic, partition = self.partition, "cannot read the partition's watermark and timers: {e}");
            }
        }
    }

    /// How long the partition has been idle: since its last records, counted only while it
    /// is caught up (nothing waits in the log, the queue or a restore); `None` while it is not.
    fn idle_for(&mut self) -> Option<Duration> {
        let caught_up = self.carry.is_empty()
            && !self.flow.is_restoring()
            && !self.flow.is_paused()
            && self.flow.lag() == Some(0);
        if !caught_up {
            self.idle.caught_up_since = None;
            return None;
        }
        let since = *self.idle.caught_up_since.get_or_insert_with(Instant::now);
        Some(since.max(self.idle.last_records_at).elapsed())
    }

    /// The partition's watermark as the wall clock moves it while no records come, once
    /// `idle_close_after` has passed: the watermark after the last records plus the time
    /// idle since they came.
    fn idle_watermark(&mut self) -> Option<i64> {
        let after = self.ctx.idle_close_after?;
        let idle_for = self.idle_for()?;
        if idle_for < after {
            return None;
        }
        Some(
            self.idle
                .watermark?
                .saturating_add(idle_for.as_millis() as i64),
        )
    }

    /// When to look at the clock next without records: the next wall-clock timer, and while
    /// idle closing is on, from `idle_close_after` on in steps of a tenth of it (at least
    /// 50 ms, at most 1 s).
    fn next_tick(&mut self) -> Option<tokio::time::Instant> {
        self.next_offset?;
        let now = tokio::time::Instant::now();
        let wall = self.idle.next_wall_timer.map(|due| {
            let wait = due.saturating_sub(crate::wall_clock::now_ms()).max(0);
            now + Duration::from_millis(wait as u64)
        });
        let idle = match (self.ctx.idle_close_after, self.idle.watermark) {
            (Some(after), Some(_)) => {
                let step = (after / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
                Some(match self.idle_for() {
                    Some(since) if since < after => now + (after - since),
                    // Not caught up: look again soon.
                    _ => now + step,
                })
            }
            _ => None,
        };
        match (wall, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Lets time pass without records: fires what the wall clock (and an idle partition's
    /// watermark) made due, in a batch of no records. False when the task should stop.
    async fn tick(&mut self) -> bool {
        let Some(next_offset) = self.next_offset else {
            return true;
        };
        let clock = BatchTime {
            now_ms: crate::wall_clock::now_ms(),
            idle_watermark: self.idle_watermark(),
            next_offset,
        };
        let store = (**self.runner.store()).as_ref();
        let watermark = match (self.idle.watermark, clock.idle_watermark) {
            (Some(w), Some(idle)) => Some(w.max(idle)),
            (w, idle) => w.or(idle),
        };
        let due = time::due_timers(
            store,
            &weir_state::WriteSet::default(),
            watermark,
            clock.now_ms,
        );
        match due {
            Ok(due) if due.is_empty() => {
                // Nothing to fire: the next wall-clock timer may have been cancelled.
                self.read_clock();
                return true;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(topic = %self.topic, partition = self.partition, "cannot read the partition's timers: {e}");
                return true;
            }
        }
        let ok = self.process_until_committed(&[], clock).await;
        let last_watermark = self.idle.watermark;
        self.read_clock();
        // The stored watermark now includes the idle advance; later idle advances still count
        // from the last records.
        self.idle.watermark = last_watermark;
        ok
    }

    /// Fills `batch` with up to `batch_size` records, waiting at most `linger` after the first;
    /// or says that the clock should be looked at (no records for a while), or that the task
    /// should stop.
    async fn next_batch(&mut self, batch: &mut Vec<Inbound>) -> Step {
        let stop = Arc::clone(self.flow.stop_signal());
        if stop.is_requested() {
            return Step::Stop;
        }
        if self.carry.is_empty() {
            let tick = self.next_tick();
            let chunk = tokio::select! {
                biased;
                _ = stop.requested() => return Step::Stop,
                c = self.queue.recv() => match c {
                    Some(c) => c,
                    None => return Step::Stop,
                },
                _ = sleep_until_some(tick) => return Step::Tick,
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
        Step::Records
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
        let outbox = self.ctx.outbox.clone();
        let store = Arc::clone(self.runner.store());
        let retry = self.runner.policy().retry;
        let (topic, partition) = (Arc::clone(&self.topic), self.partition);
        let flow = Arc::clone(&self.flow);
        self.flushing = Some(tokio::spawn(async move {
            let rejected = |reason| flow.set_emits_rejected(reason);
            let sent = outbox
                .send_retrying(
                    &store,
                    retry,
                    flow.stop_signal(),
                    &rejected,
                    (&topic, partition),
                )
                .await;
            if let (true, Some(next)) = (sent, next) {
                flow.set_committed(next);
            }
            sent
        }));
    }

    /// Waits for the outbox flush in flight, if any. False if it gave up (a stop came first,
    /// or sends stayed unacknowledged a grace after it: `OutboxSink::send_retrying`).
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
    async fn process_until_committed(&mut self, batch: &[Inbound], clock: BatchTime) -> bool {
        let started = Instant::now();
        match self.runner.run_until_committed(batch, clock).await {
            Outcome::Committed(next, dead_letters) => {
                // A stop may have committed only the batch's first records.
                let done = batch.iter().take_while(|m| m.offset() < next).count();
                metrics::histogram!(BATCH_DURATION_SECONDS).record(started.elapsed());
                metrics::counter!(MESSAGES_TOTAL, "outcome" => "ok", "topic" => Arc::clone(&self.topic))
                    .increment(done as u64);
                self.next_offset = Some(next);
                self.flow.batch_committed(done as u64, dead_letters as u64);
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

/// Sleeps until `at`, or for ever when there is no `at`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
