//! One batch: decode each record, run the handler, and commit the batch's state changes and
//! offset in one SQLite transaction. The runtime's partition tasks and the test kit both run
//! batches through here.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use weir_state::{PartitionStore, WriteSet};

use crate::dead_letter::{DeadLetterPolicy, DeadLetterReason, DeadLetterSink, RetryPolicy};
use crate::handler::{BoxError, Delivery};
use crate::inbound::Inbound;
use crate::metric_names::{COMMIT_DURATION_SECONDS, COMMIT_FAILURES_TOTAL, MESSAGES_TOTAL};
use crate::partition_task::PartitionFlow;
use crate::{Codec, Ctx, Process, Record, UndecodableRecord};

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
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Record { offset, error, .. } => write!(f, "record at offset {offset}: {error}"),
            Self::Commit(e) => write!(f, "commit failed: {e}"),
        }
    }
}

/// The store of keys whose records are dead-lettered, when key order is kept.
pub(crate) const DEAD_KEYS: &str = "__weir_dead_keys";

/// Records of the current batch already dead-lettered, skipped when the batch runs again.
#[derive(Debug, Default)]
pub(crate) struct DeadInBatch {
    pub(crate) offsets: HashSet<i64>,
    pub(crate) keep_key_order: bool,
}

/// How a partition's batches are run: delivery mode, retries, dead letters.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) delivery: Delivery,
    /// The changelog topic of the partition's stores, when state changes are logged.
    pub(crate) changelog: Option<String>,
    pub(crate) retry: RetryPolicy,
    pub(crate) dead_letter: Option<DeadLetterPolicy>,
}

/// How [`process_until_committed`] ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The batch is committed; the next offset.
    Committed(i64),
    /// A stop was requested while waiting to retry: nothing of the batch is committed.
    Stopped,
    /// The batch would be retried forever (no dead letters, or no attempt limit) and the
    /// caller asked not to wait for that (the test kit).
    GaveUp(BatchError),
}

/// Runs `batch` and commits it, retrying after a failure by the policy: the failing record's
/// batch runs again after a backoff; once a record's attempts are used up (at once, for an
/// undecodable one) it goes to the dead-letter topic, and the batch runs again without it.
/// The batch commits only after every dead letter of it is acknowledged.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn process_until_committed<H: Process>(
    handler: &H,
    store: &Arc<impl AsRef<PartitionStore> + Send + Sync + 'static>,
    topic: &str,
    partition: i32,
    policy: &Policy,
    sink: &DeadLetterSink,
    batch: &[Inbound],
    stop: Option<&PartitionFlow>,
) -> Outcome {
    let mut dead = DeadInBatch {
        offsets: HashSet::new(),
        keep_key_order: policy
            .dead_letter
            .as_ref()
            .is_some_and(|d| d.keep_key_order),
    };
    let mut attempts: HashMap<i64, u32> = HashMap::new();
    let mut commit_failures = 0u32;
    loop {
        let error =
            match run_batch(handler, store, topic, partition, policy, batch, &dead, stop).await {
                Ok(next) => return Outcome::Committed(next),
                Err(e) => e,
            };
        let (seed, wait_attempt) = match &error {
            BatchError::Record {
                offset,
                error: cause,
                reason,
            } => {
                let n = attempts.entry(*offset).or_insert(0);
                *n += 1;
                let n = *n;
                metrics::counter!(MESSAGES_TOTAL, "outcome" => "error").increment(1);
                let exhausted = policy.retry.max_attempts > 0 && n >= policy.retry.max_attempts;
                let to_dead_letter = match reason {
                    DeadLetterReason::Failed => exhausted,
                    DeadLetterReason::Undecodable | DeadLetterReason::FollowsDeadLetter => true,
                };
                if let (true, Some(dl)) = (to_dead_letter, &policy.dead_letter) {
                    let Some(msg) = batch.iter().find(|m| m.offset() == *offset) else {
                        return Outcome::GaveUp(error);
                    };
                    let text = cause.to_string();
                    let mut tries = 0;
                    loop {
                        match sink.send(dl, msg, &text, n, *reason).await {
                            Ok(()) => break,
                            Err(e) => {
                                tries += 1;
                                tracing::error!(topic, partition, offset, "{e}; retrying");
                                if !wait(stop, policy.retry.delay(tries, *offset as u64)).await {
                                    return Outcome::Stopped;
                                }
                            }
                        }
                    }
                    dead.offsets.insert(*offset);
                    continue;
                }
                // The test kit does not wait for what would be retried forever.
                let forever = policy.retry.max_attempts == 0
                    || exhausted
                    || !matches!(reason, DeadLetterReason::Failed);
                if stop.is_none() && forever {
                    return Outcome::GaveUp(error);
                }
                let delay = policy.retry.delay(n, *offset as u64);
                tracing::error!(
                    topic,
                    partition,
                    offset,
                    attempt = n,
                    retry_in_ms = delay.as_millis() as u64,
                    "record failed; its batch is not committed and will be retried: {cause}"
                );
                (*offset as u64, n)
            }
            BatchError::Commit(e @ weir_state::Error::Fenced { .. }) => {
                // Another worker owns the partition now: nothing of this batch is kept, and
                // retrying cannot succeed.
                tracing::warn!(topic, partition, "{e}");
                return Outcome::Stopped;
            }
            BatchError::Commit(e) => {
                commit_failures += 1;
                metrics::counter!(COMMIT_FAILURES_TOTAL).increment(1);
                tracing::error!(
                    topic,
                    partition,
                    attempt = commit_failures,
                    "batch commit failed; nothing of it is kept and it will be retried: {e}"
                );
                if stop.is_none() {
                    return Outcome::GaveUp(error);
                }
                (0, commit_failures)
            }
        };
        if !wait(stop, policy.retry.delay(wait_attempt, seed)).await {
            return Outcome::Stopped;
        }
    }
}

/// Sleeps `delay`, or less if a stop is requested; false when stopped.
async fn wait(stop: Option<&PartitionFlow>, delay: std::time::Duration) -> bool {
    match stop {
        Some(flow) => tokio::select! {
            biased;
            _ = flow.stopped() => false,
            _ = tokio::time::sleep(delay) => true,
        },
        None => {
            tokio::time::sleep(delay).await;
            true
        }
    }
}

/// Runs `batch` (records of one partition, in order) and commits it; returns the committed
/// next offset. When a stop is requested (a revoke, a shutdown) it commits the records done so
/// far and leaves the rest to the partition's next owner, so a large batch of slow records does
/// not hold up a rebalance.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_batch<H: Process>(
    handler: &H,
    store: &Arc<impl AsRef<PartitionStore> + Send + Sync + 'static>,
    topic: &str,
    partition: i32,
    policy: &Policy,
    batch: &[Inbound],
    dead: &DeadInBatch,
    stop: Option<&PartitionFlow>,
) -> Result<i64, BatchError> {
    let delivery = policy.delivery;
    let changelog = policy.changelog.as_deref();
    let mut next = batch.last().map_or(0, |m| m.offset() + 1);
    if delivery == Delivery::AtMostOnce {
        // The offset first: a crash from here on skips the batch rather than repeating it.
        commit(
            store,
            WriteSet::default(),
            topic,
            partition,
            next,
            changelog,
        )
        .await?;
    }
    let mut writes = WriteSet::default();
    let partition_store: &PartitionStore = store.as_ref().as_ref();
    for (i, msg) in batch.iter().enumerate() {
        // (At most once, the whole batch's offset is committed already: it runs to its end.)
        if i > 0
            && delivery != Delivery::AtMostOnce
            && stop.is_some_and(PartitionFlow::stop_requested)
        {
            next = msg.offset();
            break;
        }
        if dead.offsets.contains(&msg.offset()) {
            if let (true, Some(key)) = (dead.keep_key_order, msg.key()) {
                writes
                    .put(DEAD_KEYS, key, &true)
                    .map_err(BatchError::Commit)?;
            }
            continue;
        }
        if let (true, Some(key)) = (dead.keep_key_order, msg.key()) {
            let follows = partition_store
                .get_through::<_, bool>(&writes, DEAD_KEYS, key)
                .map_err(BatchError::Commit)?;
            if follows.is_some() {
                return Err(BatchError::Record {
                    offset: msg.offset(),
                    error: "an earlier record with this key was dead-lettered (key order is kept)"
                        .into(),
                    reason: DeadLetterReason::FollowsDeadLetter,
                });
            }
        }
        writes.savepoint();
        match run_record(handler, partition_store, &mut writes, msg).await {
            Ok(()) => writes.release(),
            Err(error) if delivery == Delivery::AtMostOnce => {
                writes.rollback();
                metrics::counter!(MESSAGES_TOTAL, "outcome" => "skipped").increment(1);
                tracing::error!(
                    topic,
                    partition,
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
    commit(store, writes, topic, partition, next, changelog).await?;
    Ok(next)
}

async fn run_record<H: Process>(
    handler: &H,
    store: &PartitionStore,
    writes: &mut WriteSet,
    msg: &Inbound,
) -> Result<(), BoxError> {
    let undecodable = |part, raw: Option<&[u8]>, error| UndecodableRecord {
        part,
        raw: raw.map(<[u8]>::to_vec),
        error,
    };
    let value = <H::Value as Codec>::decode(msg.payload())
        .map_err(|e| undecodable("value", msg.payload(), e))?;
    let key = <H::Key as Codec>::decode(msg.key()).map_err(|e| undecodable("key", msg.key(), e))?;
    let mut ctx = Ctx::new(store, writes, msg);
    let outcome = AssertUnwindSafe(handler.process(Record::new(msg, key, value), &mut ctx))
        .catch_unwind()
        .await;
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(panic) => {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".into());
            Err(format!("handler panicked: {text}").into())
        }
    }
}

async fn commit(
    store: &Arc<impl AsRef<PartitionStore> + Send + Sync + 'static>,
    writes: WriteSet,
    topic: &str,
    partition: i32,
    next: i64,
    changelog: Option<&str>,
) -> Result<(), BatchError> {
    let store = Arc::clone(store);
    let topic = topic.to_owned();
    let changelog = changelog.map(str::to_owned);
    let started = Instant::now();
    let committed = tokio::task::spawn_blocking(move || {
        let store = (*store).as_ref();
        match &changelog {
            Some(cl) => store.commit_with_changelog(&writes, &topic, partition, next, cl),
            None => store.commit(&writes, &topic, partition, next),
        }
    })
    .await;
    metrics::histogram!(COMMIT_DURATION_SECONDS).record(started.elapsed());
    match committed {
        Ok(result) => result.map_err(BatchError::Commit),
        Err(join) => Err(BatchError::Record {
            offset: next - 1,
            error: format!("commit task failed: {join}").into(),
            reason: DeadLetterReason::Failed,
        }),
    }
}
