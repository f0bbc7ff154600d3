//! One batch: decode each record, run the handler, and commit the batch's state changes and
//! offset in one SQLite transaction, retrying and dead-lettering by the partition's policy.
//! The runtime's partition tasks and the test kit both run batches through [`BatchRunner`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_state::{PartitionStore, WriteSet};

use crate::delivery::{DeadLetterPolicy, DeadLetterReason, DeadLetterSink, RetryPolicy};
use crate::error::BoxError;
use crate::inbound::Inbound;
use crate::observe::metric_names::{
    COMMIT_DURATION_SECONDS, COMMIT_FAILURES_TOTAL, DUPLICATES_DROPPED_TOTAL, FENCED_TOTAL,
    LATE_RECORDS_TOTAL, MESSAGES_TOTAL, MESSAGES_WITHOUT_ID_TOTAL,
};
use crate::processing::context::Scope;
use crate::processing::handler::caught;
use crate::processing::message_ids::MessageIds;
use crate::processing::time::{self, RecordTime};
use crate::processing::upstream::{Upstream, UpstreamMarks};
use crate::processing::{
    Codec, Ctx, DecodeError, Delivery, Handler, Process, Record, Source, UndecodableRecord,
    WindowResult,
};
use crate::stop::StopSignal;
use weir_state::wire::header;
use weir_state::{Headers, OutboxRecord};

/// Why a batch failed; nothing of it was committed.
#[derive(Debug)]
pub(crate) enum BatchError {
    /// A record could not be decoded, or the handler failed or panicked on it.
    Record {
        offset: i64,
        error: BoxError,
        reason: DeadLetterReason,
    },
    /// The SQLite commit failed.
    Commit(weir_state::Error),
    /// A value an update kept as it is could not be encoded at the end of the batch: which
    /// record made it shows when the batch runs again encoding each value as it is written.
    Unencodable(weir_state::Error),
    /// The SQLite commit panicked (a bug, not the fault of any record).
    CommitPanicked(String),
    /// The partition's own bookkeeping (watermark, timers, upstream marks) could not be read,
    /// or a window or timer callback failed: not the fault of a record, so the batch is
    /// retried.
    Bookkeeping(crate::error::Error),
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Record { offset, error, .. } => write!(f, "record at offset {offset}: {error}"),
            Self::Commit(e) => write!(f, "commit failed: {e}"),
            Self::Unencodable(e) => write!(f, "a value could not be encoded: {e}"),
            Self::CommitPanicked(e) => write!(f, "commit panicked: {e}"),
            Self::Bookkeeping(e) => write!(f, "{e}"),
        }
    }
}

/// The store of keys whose records are dead-lettered, when key order is kept.
pub(crate) const DEAD_KEYS: &str = "__weir_dead_keys";

/// How a partition's batches are run: delivery mode, changelog, retries, dead letters.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) delivery: Delivery,
    /// The changelog topic of the partition's stores, when state changes are logged.
    pub(crate) changelog: Option<String>,
    pub(crate) retry: RetryPolicy,
    pub(crate) dead_letter: Option<DeadLetterPolicy>,
    /// Where late records go; `None` drops them.
    pub(crate) late_topic: Option<String>,
    /// Call `on_window_updated` after every window update.
    pub(crate) window_updates: bool,
    /// The JSON field of record values holding the event time, over the handler's.
    pub(crate) event_time_field: Option<Arc<str>>,
    /// How far past the wall clock a record's event time may be.
    pub(crate) event_time_max_ahead_ms: i64,
    /// The largest record the producer sends (`message.max.bytes`): a larger emit fails its
    /// record before the batch commits, instead of being rejected after it.
    pub(crate) max_emit_bytes: usize,
}

/// The partition's time for one batch: the wall clock, an idle watermark, the next offset.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchTime {
    /// The wall clock, in ms since the Unix epoch: wall-clock timers due by then fire.
    pub(crate) now_ms: i64,
    /// An idle partition's watermark, advanced by the wall clock (it only moves forward).
    pub(crate) idle_watermark: Option<i64>,
    /// The partition's next offset, for a batch without records.
    pub(crate) next_offset: i64,
}

impl BatchTime {
    /// The clock of a batch of records, read now.
    pub(crate) fn now() -> Self {
        Self {
            now_ms: crate::wall_clock::now_ms(),
            idle_watermark: None,
            next_offset: 0,
        }
    }
}

/// At most one log line about late records per this many milliseconds per partition.
const LATE_LOG_EVERY_MS: i64 = 10_000;

/// Who runs the batches.
#[derive(Debug, Clone)]
pub(crate) enum Mode {
    /// A worker's partition task: retries wait out their backoff, for ever if the policy says
    /// so, until the stop signal; a stop also cuts a batch short after the records done.
    Runtime(Arc<StopSignal>),
    /// The test kit: retries do not wait, and what would be retried for ever is given up and
    /// returned as the error.
    TestKit,
}

/// How [`BatchRunner::run_until_committed`] ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The batch is committed: the next offset, and how many of its records went to the
    /// dead-letter topic.
    Committed(i64, usize),
    /// A stop was requested while waiting to retry, or another worker took the partition over:
    /// nothing of the batch is committed.
    Stopped,
    /// The batch would be retried forever and the mode gives up on that (the test kit).
    GaveUp(BatchError),
}

/// What to do after a failed attempt.
enum Next {
    /// Run the batch again now (a record was just dead-lettered).
    Again,
    /// Wait this long, then run it again.
    RetryAfter(Duration),
    Return(Outcome),
}

/// Runs one partition's batches.
#[derive(Debug)]
pub(crate) struct BatchRunner<H, S> {
    handler: Arc<H>,
    store: Arc<S>,
    topic: Arc<str>,
    partition: i32,
    policy: Policy,
    sink: DeadLetterSink,
    mode: Mode,
    /// When late records were last logged, and how many came since.
    late_log: std::sync::Mutex<(i64, u64)>,
    /// The worker's global tables and pipeline.
    scope: Scope,
}

/// The attempts of one batch: failures per record, dead-lettered records.
#[derive(Debug, Default)]
struct Attempts {
    per_record: HashMap<i64, u32>,
    commit_failures: u32,
    /// Records of the batch already dead-lettered, skipped when it runs again.
    dead: HashSet<i64>,
    /// Encode each value as it is written ([`WriteSet::eager`]), after a value could not be
    /// encoded at the end of the batch.
    eager: bool,
}

impl<H: Process, S: AsRef<PartitionStore> + Send + Sync + 'static> BatchRunner<H, S> {
    pub(crate) fn new(
        handler: Arc<H>,
        store: Arc<S>,
        (topic, partition): (Arc<str>, i32),
        policy: Policy,
        sink: DeadLetterSink,
        mode: Mode,
    ) -> Self {
        Self {
            handler,
            store,
            topic,
            partition,
            policy,
            sink,
            mode,
            late_log: std::sync::Mutex::new((i64::MIN, 0)),
            scope: Scope::default(),
        }
    }

    /// Runs the records in `scope` (global tables, pipeline).
    pub(crate) fn with_scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    pub(crate) fn store(&self) -> &Arc<S> {
        &self.store
    }

    pub(crate) fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Runs `batch` and commits it, retrying after a failure by the policy: the failing
    /// record's batch runs again after a backoff; once a record's attempts are used up (at
    /// once, for an undecodable one) it goes to the dead-letter topic, and the batch runs
    /// again without it. The batch commits only after every dead letter of it is acknowledged.
    pub(crate) async fn run_until_committed(&self, batch: &[Inbound], clock: BatchTime) -> Outcome {
        let mut attempts = Attempts::default();
        loop {
            let error = match self.run_once(batch, &attempts, clock).await {
                Ok(next) => return Outcome::Committed(next, attempts.dead.len()),
                Err(e) => e,
            };
            let next = match error {
                BatchError::Record {
                    offset,
                    error,
                    reason,
                } => {
                    self.after_record_failure(batch, &mut attempts, offset, error, reason)
                        .await
                }
                BatchError::Commit(e @ weir_state::Error::Fenced { .. }) => {
                    // Another worker owns the partition now: nothing of this batch is kept, and
                    // retrying cannot succeed.
                    metrics::counter!(FENCED_TOTAL, "topic" => Arc::clone(&self.topic))
                        .increment(1);
                    tracing::warn!(topic = %self.topic, partition = self.partition, "{e}");
                    Next::Return(Outcome::Stopped)
                }
                BatchError::Unencodable(e) if !attempts.eager => {
                    tracing::warn!(
                        topic = %self.topic,
                        partition = self.partition,
                        "{e}; running the batch again, encoding each value as it is written, to \
                         find the record that made it"
                    );
                    attempts.eager = true;
                    Next::Again
                }
                other => self.after_commit_failure(&mut attempts, other),
            };
            match next {
                Next::Again => {}
                Next::RetryAfter(delay) => {
                    if !self.wait(delay).await {
                        return Outcome::Stopped;
                    }
                }
                Next::Return(outcome) => return outcome,
            }
        }
    }

    async fn after_record_failure(
        &self,
        batch: &[Inbound],
        attempts: &mut Attempts,
        offset: i64,
        error: BoxError,
        reason: DeadLetterReason,
    ) -> Next {
        let n = attempts.per_record.entry(offset).or_insert(0);
        *n += 1;
        let n = *n;
        metrics::counter!(MESSAGES_TOTAL, "outcome" => "error", "topic" => Arc::clone(&self.topic))
            .increment(1);
        let retry = &self.policy.retry;
        let exhausted = retry.max_attempts > 0 && n >= retry.max_attempts;
        let to_dead_letter = match reason {
            DeadLetterReason::Failed => exhausted,
            DeadLetterReason::Undecodable | DeadLetterReason::FollowsDeadLetter => true,
        };
        if let (true, Some(dl)) = (to_dead_letter, &self.policy.dead_letter) {
            let Some(msg) = batch.iter().find(|m| m.offset() == offset) else {
                return Next::Return(Outcome::GaveUp(BatchError::Record {
                    offset,
                    error,
                    reason,
                }));
            };
            if !self
                .dead_letter(dl, msg, &error.to_string(), n, reason)
                .await
            {
                return Next::Return(Outcome::Stopped);
            }
            attempts.dead.insert(offset);
            return Next::Again;
        }
        let forever = retry.max_attempts == 0 || to_dead_letter;
        if forever && matches!(self.mode, Mode::TestKit) {
            return Next::Return(Outcome::GaveUp(BatchError::Record {
                offset,
                error,
                reason,
            }));
        }
        let delay = retry.delay(n, offset as u64);
        tracing::error!(
            topic = %self.topic,
            partition = self.partition,
            offset,
            attempt = n,
            retry_in_ms = delay.as_millis() as u64,
            "record failed; its batch is not committed and will be retried: {error}"
        );
        Next::RetryAfter(delay)
    }

    /// Sends a dead letter, retrying until it is acknowledged; false if a stop came first.
    async fn dead_letter(
        &self,
        policy: &DeadLetterPolicy,
        msg: &Inbound,
        error: &str,
        attempts: u32,
        reason: DeadLetterReason,
    ) -> bool {
        let mut tries = 0;
        loop {
            match self.sink.send(policy, msg, error, attempts, reason).await {
                Ok(()) => return true,
                Err(e) => {
                    tries += 1;
                    tracing::error!(topic = %self.topic, partition = self.partition, offset = msg.offset(), "{e}; retrying");
                    if !self
                        .wait(self.policy.retry.delay(tries, msg.offset() as u64))
                        .await
                    {
                        return false;
                    }
                }
            }
        }
    }

    fn after_commit_failure(&self, attempts: &mut Attempts, error: BatchError) -> Next {
        attempts.commit_failures += 1;
        metrics::counter!(COMMIT_FAILURES_TOTAL).increment(1);
        tracing::error!(
            topic = %self.topic,
            partition = self.partition,
            attempt = attempts.commit_failures,
            "batch not committed; nothing of it is kept and it will be retried: {error}"
        );
        match self.mode {
            Mode::TestKit => Next::Return(Outcome::GaveUp(error)),
            Mode::Runtime(_) => {
                Next::RetryAfter(self.policy.retry.delay(attempts.commit_failures, 0))
            }
        }
    }

    /// Sleeps `delay` (not at all in the test kit), or less if a stop is requested; false
    /// when stopped.
    async fn wait(&self, delay: Duration) -> bool {
        match &self.mode {
            Mode::Runtime(stop) => tokio::select! {
                biased;
                _ = stop.requested() => false,
                _ = tokio::time::sleep(delay) => true,
            },
            Mode::TestKit => true,
        }
    }

    fn stop_requested(&self) -> bool {
        match &self.mode {
            Mode::Runtime(stop) => stop.is_requested(),
            Mode::TestKit => false,
        }
    }

    /// Runs `batch` (records of one partition, in order) once and commits it; returns the
    /// committed next offset. When a stop is requested (a revoke, a shutdown) it commits the
    /// records done so far and leaves the rest to the partition's next owner, so a large batch
    /// of slow records does not hold up a rebalance.
    async fn run_once(
        &self,
        batch: &[Inbound],
        attempts: &Attempts,
        clock: BatchTime,
    ) -> Result<i64, BatchError> {
        let dead = &attempts.dead;
        let delivery = self.policy.delivery;
        let keep_key_order = self
            .policy
            .dead_letter
            .as_ref()
            .is_some_and(|d| d.keep_key_order);
        let mut next = batch.last().map_or(clock.next_offset, |m| m.offset() + 1);
        let store: &PartitionStore = (*self.store).as_ref();
        let mut ids = MessageIds::default();
        // At most once, the messages a committed batch took already (a queue's redeliveries).
        let mut taken_before = HashSet::new();
        let at_most_once = delivery == Delivery::AtMostOnce;
        if at_most_once {
            // The offset first, with the messages' ids (a queue delivers again what a crash
            // left unacknowledged, and its id drops it): a crash from here on skips the batch
            // rather than repeating it.
            let mut taken = WriteSet::default();
            for msg in batch {
                if ids
                    .seen(msg, store, &taken)
                    .map_err(BatchError::Bookkeeping)?
                {
                    taken_before.insert(msg.offset());
                } else {
                    ids.applied(msg);
                }
            }
            ids.write(store, &mut taken, next)
                .map_err(BatchError::Bookkeeping)?;
            self.commit(taken, next).await?;
        }
        let mut writes = match attempts.eager {
            true => WriteSet::eager(),
            false => WriteSet::default(),
        };
        let stored_watermark = time::watermark(store, &writes).map_err(BatchError::Bookkeeping)?;
        let mut watermark = match (stored_watermark, clock.idle_watermark) {
            (Some(w), Some(idle)) => Some(w.max(idle)),
            (w, idle) => w.or(idle),
        };
        let mut marks = UpstreamMarks::default();
        for (i, msg) in batch.iter().enumerate() {
            // (At most once, the whole batch's offset is committed already: it runs to its end.)
            if i > 0 && !at_most_once && self.stop_requested() {
                next = msg.offset();
                break;
            }
            if dead.contains(&msg.offset()) {
                if let (true, Some(key)) = (keep_key_order, msg.key()) {
                    writes
                        .put(DEAD_KEYS, key, &true)
                        .map_err(BatchError::Commit)?;
                }
                // Handled: an upstream re-send of it is dropped, not dead-lettered again.
                if let Some(up) = Upstream::of(msg) {
                    marks.applied(&up, store).map_err(BatchError::Bookkeeping)?;
                }
                ids.applied(msg);
                continue;
            }
            // A redriven record of a dead key is the operator putting the key back in order:
            // it runs, and its success clears the key's mark.
            let mut revives = None;
            if let (true, Some(key)) = (keep_key_order, msg.key()) {
                let follows = store
                    .get_through::<_, bool>(&writes, DEAD_KEYS, key)
                    .map_err(BatchError::Commit)?;
                let redriven = msg.headers().any(|(name, _)| name == header::REDRIVE_FROM);
                if follows.is_some() && redriven {
                    revives = Some(key);
                } else if follows.is_some() {
                    return Err(BatchError::Record {
                        offset: msg.offset(),
                        error:
                            "an earlier record with this key was dead-lettered (key order is kept)"
                                .into(),
                        reason: DeadLetterReason::FollowsDeadLetter,
                    });
                }
            }
            let seen = if at_most_once {
                taken_before.contains(&msg.offset())
            } else {
                ids.seen(msg, store, &writes)
                    .map_err(BatchError::Bookkeeping)?
            };
            if seen {
                // A queue's redelivery of a message a committed batch applied.
                metrics::counter!(DUPLICATES_DROPPED_TOTAL, "topic" => Arc::clone(&self.topic))
                    .increment(1);
                continue;
            }
            let upstream = Upstream::of(msg);
            if let Some(up) = &upstream {
                if marks.seen(up, store).map_err(BatchError::Bookkeeping)? {
                    // Emitted by an upstream stage and applied already: a re-send.
                    metrics::counter!(DUPLICATES_DROPPED_TOTAL, "topic" => self.topic.to_string())
                        .increment(1);
                    continue;
                }
            }
            if at_most_once {
                // A failed record is skipped: its writes are undone, the batch goes on.
                writes.savepoint();
            } else {
                // A failed record fails the batch, which runs again from its start.
                writes.mark_emits();
            }
            let record_clock = RecordClock {
                watermark,
                now_ms: clock.now_ms,
                window_updates: self.policy.window_updates,
                event_time_field: self.policy.event_time_field.as_deref(),
                max_ahead_ms: self.policy.event_time_max_ahead_ms,
                max_emit_bytes: self.policy.max_emit_bytes,
            };
            let reads = (store, &self.scope);
            match run_record(&*self.handler, reads, &mut writes, msg, record_clock).await {
                Ok(time) => {
                    if time.is_late() {
                        self.late(&mut writes, msg);
                    }
                    if let Some(up) = &upstream {
                        marks.applied(up, store).map_err(BatchError::Bookkeeping)?;
                    }
                    if let Some(key) = revives {
                        writes.delete(DEAD_KEYS, key).map_err(BatchError::Commit)?;
                    }
                    if !at_most_once {
                        ids.applied(msg);
                    }
                    writes.release();
                    let t = time.event_time();
                    watermark = Some(watermark.map_or(t, |w| w.max(t)));
                }
                Err(error) if delivery == Delivery::AtMostOnce => {
                    writes.rollback();
                    metrics::counter!(MESSAGES_TOTAL, "outcome" => "skipped", "topic" => Arc::clone(&self.topic))
                        .increment(1);
                    tracing::error!(
                        topic = %self.topic,
                        partition = self.partition,
                        offset = msg.offset(),
                        "record failed and is skipped (at-most-once delivery): {error}"
                    );
                }
                Err(error) => {
                    let reason = if error.downcast_ref::<UndecodableRecord>().is_some() {
                        DeadLetterReason::Undecodable
                    } else {
                        DeadLetterReason::Failed
                    };
                    return Err(BatchError::Record {
                        offset: msg.offset(),
                        error,
                        reason,
                    });
                }
            }
        }
        marks.write(&mut writes).map_err(BatchError::Bookkeeping)?;
        if !at_most_once {
            ids.write(store, &mut writes, next)
                .map_err(BatchError::Bookkeeping)?;
        }
        if let (Some(w), true) = (watermark, watermark != stored_watermark) {
            time::set_watermark(&mut writes, w).map_err(BatchError::Bookkeeping)?;
        }
        self.fire_due(&mut writes, watermark, clock.now_ms).await?;
        writes.settle().map_err(BatchError::Unencodable)?;
        self.commit(writes, next).await?;
        if ids.dropped() > 0 {
            tracing::info!(
                topic = %self.topic,
                partition = self.partition,
                dropped = ids.dropped(),
                "redelivered messages that a committed batch applied already were dropped"
            );
        }
        if ids.anonymous() > 0 {
            metrics::counter!(MESSAGES_WITHOUT_ID_TOTAL, "topic" => Arc::clone(&self.topic))
                .increment(ids.anonymous());
        }
        Ok(next)
    }

    /// Counts, logs (at a bounded rate) and routes a late record: to the late topic through
    /// the outbox, with the weir.source.* headers, unless late records are dropped.
    fn late(&self, writes: &mut WriteSet, msg: &Inbound) {
        metrics::counter!(LATE_RECORDS_TOTAL, "topic" => self.topic.to_string()).increment(1);
        let now = crate::wall_clock::now_ms();
        {
            let mut log = self
                .late_log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            log.1 += 1;
            if now.saturating_sub(log.0) >= LATE_LOG_EVERY_MS {
                tracing::warn!(
                    topic = %self.topic,
                    partition = self.partition,
                    offset = msg.offset(),
                    late_records = log.1,
                    to = self.policy.late_topic.as_deref().unwrap_or("(dropped)"),
                    "late records: their windows were closed already, so they are counted in none"
                );
                *log = (now, 0);
            }
        }
        let Some(topic) = &self.policy.late_topic else {
            return;
        };
        let mut headers: Headers = msg
            .headers()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect();
        header::push_source(
            &mut headers,
            msg.topic(),
            msg.partition(),
            Some(msg.offset()),
        );
        writes.emit(OutboxRecord {
            topic: topic.clone(),
            partition: None,
            key: msg.key().map(<[u8]>::to_vec),
            value: msg.payload().map(<[u8]>::to_vec),
            headers,
            timestamp: msg.timestamp_ms(),
        });
    }

    /// Fires the timers due at `watermark` and `now` into `writes` (see [`time::fire_due`]).
    async fn fire_due(
        &self,
        writes: &mut WriteSet,
        watermark: Option<i64>,
        now: i64,
    ) -> Result<(), BatchError> {
        let store: &PartitionStore = (*self.store).as_ref();
        let lane = (&*self.topic, self.partition);
        time::fire_due(
            &*self.handler,
            (store, &self.scope),
            writes,
            lane,
            (watermark, now),
        )
        .await
        .map_err(BatchError::Bookkeeping)
    }

    /// Commits `writes` with the next offset `next` in one SQLite transaction, on a blocking
    /// thread.
    async fn commit(&self, mut writes: WriteSet, next: i64) -> Result<(), BatchError> {
        let store = Arc::clone(&self.store);
        let topic = Arc::clone(&self.topic);
        let partition = self.partition;
        let changelog = self.policy.changelog.clone();
        let started = Instant::now();
        let committed = tokio::task::spawn_blocking(move || {
            let store = (*store).as_ref();
            match &changelog {
                Some(cl) => store.commit_with_changelog(&mut writes, &topic, partition, next, cl),
                None => store.commit(&mut writes, &topic, partition, next),
            }
        })
        .await;
        metrics::histogram!(COMMIT_DURATION_SECONDS).record(started.elapsed());
        match committed {
            Ok(result) => result.map_err(BatchError::Commit),
            Err(join) => Err(BatchError::CommitPanicked(join.to_string())),
        }
    }
}

/// What a record's processing needs of the partition's clock.
struct RecordClock<'a> {
    watermark: Option<i64>,
    now_ms: i64,
    /// Whether every window update is reported.
    window_updates: bool,
    event_time_field: Option<&'a str>,
    /// How far past `now_ms` an event time may be.
    max_ahead_ms: i64,
    /// The largest record an emit may be.
    max_emit_bytes: usize,
}

/// The earliest event time taken as real: a year before the Unix epoch. Earlier times (and
/// later than the wall clock allows) are bad input, never a window or a watermark.
const EARLIEST_EVENT_TIME_MS: i64 = -365 * 24 * 3600 * 1000;

/// Decodes and processes one record; returns its time and what its window updates found.
async fn run_record<H: Process>(
    handler: &H,
    (store, scope): (&PartitionStore, &Scope),
    writes: &mut WriteSet,
    msg: &Inbound,
    clock: RecordClock<'_>,
) -> Result<RecordTime, BoxError> {
    let undecodable = |part, raw: Option<&[u8]>, error| UndecodableRecord {
        part,
        raw: raw.map(<[u8]>::to_vec),
        error,
    };
    let value = <H::Value as Codec>::decode(msg.payload())
        .map_err(|e| undecodable("value", msg.payload(), e))?;
    let key = <H::Key as Codec>::decode(msg.key()).map_err(|e| undecodable("key", msg.key(), e))?;
    let record = Record::new(msg, key, value);
    let given = clock
        .event_time_field
        .and_then(|field| time::json_field_ms(msg.payload()?, field))
        .or_else(|| <H as Handler>::event_time(&record));
    if let Some(t) = given {
        let latest = clock.now_ms.saturating_add(clock.max_ahead_ms);
        if !(EARLIEST_EVENT_TIME_MS..=latest).contains(&t) {
            return Err(undecodable(
                "event time",
                Some(t.to_string().as_bytes()),
                DecodeError::new(format!(
                    "event time {t} ms is outside the range taken as real, {EARLIEST_EVENT_TIME_MS} ms to the wall clock {} ms plus {} ms (event_time_max_ahead)",
                    clock.now_ms, clock.max_ahead_ms
                )),
            )
            .into());
        }
    }
    let event_time = given.or(clock.watermark).unwrap_or(clock.now_ms);
    let mut time = RecordTime::new(event_time, clock.watermark, clock.window_updates);
    let mut ctx = Ctx::new((store, scope), writes, Source::Record(msg), &mut time);
    caught(handler.process(record, &mut ctx)).await?;
    for (name, key, window) in time.take_updates() {
        // (A session a later update of the same record merged into another is gone.)
        let Some(value) = time::window_value(store, writes, name, &key, window)? else {
            continue;
        };
        let update = WindowResult::new(name.to_owned(), key, window, value);
        let mut ctx = Ctx::new((store, scope), writes, Source::Record(msg), &mut time);
        caught(handler.on_window_updated(update, &mut ctx)).await?;
    }
    check_emit_sizes(writes, clock.max_emit_bytes)?;
    Ok(time)
}

/// Fails the record if one of its emits is larger than the producer sends: the broker would
/// reject it after the batch committed, and it could never leave the outbox.
fn check_emit_sizes(writes: &WriteSet, max: usize) -> Result<(), BoxError> {
    for r in writes.emits_since_savepoint()? {
        let size = r.key.map_or(0, <[u8]>::len) + r.value.map_or(0, <[u8]>::len) + r.headers.size();
        if size > max {
            return Err(format!(
                "an emit to {} of {size} bytes is larger than the producer sends (message.max.bytes = {max})",
                r.topic
            )
            .into());
        }
    }
    Ok(())
}
