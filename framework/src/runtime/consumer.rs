//! The consumer thread: polls the worker's one [`Source`], dispatches records to partition
//! queues, pauses a partition whose queue is full (or whose store is being restored) and
//! resumes it once drained, and settles SQLite-committed offsets with the broker. It never
//! blocks on SQLite, restores or produces.

use std::sync::{Arc, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use crate::broker::{Lane, Source};
use crate::error::Result;
use crate::inbound::{Delivered, Inbound};
use crate::observe::metric_names::{CONSUMER_ERRORS_TOTAL, STATE_CACHE_BYTES};
use crate::processing::Process;
use crate::runtime::partition_task::Ready;
use crate::runtime::shared::{PartitionHandle, Shared};

/// How often SQLite-committed offsets are settled with the broker (progress only).
const SETTLE_INTERVAL: Duration = Duration::from_millis(200);
/// Poll timeout while nothing is paused.
const POLL_IDLE: Duration = Duration::from_millis(100);
/// Poll timeout while a partition is paused, so it resumes promptly.
const POLL_PAUSED: Duration = Duration::from_millis(5);
/// Most records taken from librdkafka in one go before they are handed to partition queues.
const MAX_BURST: usize = 512;
/// How often partitions are checked for records that wait but never arrive.
const UNREADABLE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The same consumer error is logged at most this often.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

pub(crate) fn run<H: Process, S: Source>(
    source: S,
    shared: Arc<Shared<H>>,
    ready: std_mpsc::Receiver<Ready>,
) -> Result<()> {
    let topics: Vec<&str> = shared.config.topics.iter().map(String::as_str).collect();
    source.subscribe(&topics)?;
    let mut last_settle = Instant::now();
    let mut last_check = Instant::now();
    let mut errors = ConsumerErrors::default();
    let mut any_paused = false;
    let mut scratch = Vec::new();
    while !shared.lifecycle.stopping() {
        let timeout = if any_paused { POLL_PAUSED } else { POLL_IDLE };
        let burst = poll_burst(&source, timeout, &mut errors);
        if !burst.is_empty() {
            dispatch(&shared, &burst, &mut scratch, |h, p| h.pause(&source, p));
        }
        drop(burst);
        for r in ready.try_iter() {
            start_restored(&source, &shared, r);
        }
        any_paused = refill_paused(&source, &shared);
        if last_settle.elapsed() >= SETTLE_INTERVAL {
            settle_owned(&source, &shared);
            last_settle = Instant::now();
        }
        if last_check.elapsed() >= UNREADABLE_CHECK_INTERVAL {
            mark_unreachable(&source, &shared);
            mark_unreadable(&shared, &errors);
            metrics::gauge!(STATE_CACHE_BYTES).set(shared.cache_budget.used() as f64);
            last_check = Instant::now();
        }
    }
    if !shared.lifecycle.is_abandoned() {
        settle_owned(&source, &shared);
    }
    tracing::info!("leaving the consumer group");
    // Dropping the source closes it: Kafka's revokes every partition through the rebalance
    // callback (tasks finish and close their stores), then leaves the group.
    drop(source);
    match shared.lifecycle.take_fatal() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A restored partition's store is ready: its consumption starts at the restored offset
/// (records taken meanwhile are dropped, if the seek worked), and it resumes once its queue
/// has room.
fn start_restored<H: Process>(source: &impl Source, shared: &Shared<H>, r: Ready) {
    let mut owned = shared.owned();
    let Some(h) = owned
        .get_mut(&*r.topic)
        .and_then(|m| m.get_mut(&r.partition))
    else {
        return; // released meanwhile
    };
    let lane = Lane {
        topic: &r.topic,
        partition: r.partition,
    };
    match source.seek(lane, r.next_offset) {
        Ok(()) => h.overflow.clear(),
        // The records taken meanwhile are delivered; the task drops those already in state.
        Err(e) => {
            tracing::warn!(topic = %r.topic, partition = r.partition, next_offset = ?r.next_offset, "seek after the restore failed, reading on from where the consumer is: {e}")
        }
    }
    h.flow.ready(r.next_offset);
    tracing::info!(topic = %r.topic, partition = r.partition, next_offset = ?r.next_offset, "partition store ready");
}

/// Waits up to `timeout` for a record, then takes whatever else librdkafka already holds, up
/// to [`MAX_BURST`] records.
fn poll_burst<'s, S: Source>(
    source: &'s S,
    timeout: Duration,
    errors: &mut ConsumerErrors,
) -> Vec<S::Delivery<'s>> {
    let mut burst = Vec::new();
    let mut wait = timeout;
    while burst.len() < MAX_BURST {
        match source.poll(wait) {
            Some(Ok(msg)) => burst.push(msg),
            Some(Err(e)) => errors.record(e),
            None => break,
        }
        wait = Duration::ZERO;
    }
    burst
}

/// The errors the consumer reported (librdkafka does not say of which partition).
#[derive(Debug, Default)]
struct ConsumerErrors {
    /// The newest error and when it came.
    last: Option<(Instant, String)>,
    /// When each distinct error was last logged.
    logged: std::collections::HashMap<String, Instant>,
}

impl ConsumerErrors {
    fn record(&mut self, error: String) {
        metrics::counter!(CONSUMER_ERRORS_TOTAL).increment(1);
        let now = Instant::now();
        let due = self
            .logged
            .get(&error)
            .is_none_or(|t| now.duration_since(*t) >= ERROR_LOG_INTERVAL);
        if due {
            tracing::warn!("consumer error (logged at most every {ERROR_LOG_INTERVAL:?}): {error}");
            self.logged.insert(error.clone(), now);
        }
        self.last = Some((now, error));
    }

    /// The newest error, if it came within `within`.
    fn recent(&self, within: Duration) -> Option<&str> {
        self.last
            .as_ref()
            .filter(|(at, _)| at.elapsed() <= within)
            .map(|(_, e)| e.as_str())
    }
}

/// Marks the worker not ready while its broker has been out of reach for `unreadable_after`
/// (and ready again once it is back), with an ERROR line.
fn mark_unreachable<H: Process>(source: &impl Source, shared: &Shared<H>) {
    let after = shared.config.unreadable_after;
    let why = source
        .disconnected_since()
        .filter(|since| since.elapsed() >= after)
        .map(|since| {
            format!(
                "no connection to the broker for {} s (the client keeps reconnecting)",
                since.elapsed().as_secs()
            )
        });
    if shared.lifecycle.set_unreachable(why.clone()) {
        match why {
            Some(why) => tracing::error!("{why}"),
            None => tracing::info!("connected to the broker again"),
        }
    }
}

/// Marks partitions unreadable whose records wait beyond where fetching stands while none
/// arrived for `unreadable_after` (neither paused nor restoring): an ERROR naming the
/// partition and the consumer's newest error, a metric, and a readiness failure.
fn mark_unreadable<H: Process>(shared: &Shared<H>, errors: &ConsumerErrors) {
    let after = shared.config.unreadable_after;
    let now = crate::wall_clock::now_ms();
    for (topic, partitions) in shared.owned().iter() {
        for (&partition, h) in partitions {
            let Some((waiting, idle_ms)) = h.flow.stalled(now, after.as_millis() as i64) else {
                continue;
            };
            let cause = errors.recent(after).map_or_else(
                || "the consumer reports no error".to_owned(),
                |e| format!("the consumer reports: {e}"),
            );
            let reason = format!(
                "{waiting} records wait but none arrived for {} s; {cause}",
                idle_ms / 1000
            );
            if h.flow.set_unreadable(reason.clone()) {
                tracing::error!(%topic, partition, "partition cannot be read: {reason}");
            }
        }
    }
}

/// Hands the burst's records to their partitions' queues, one chunk per run of records of the
/// same partition, so a partition task is woken once per chunk rather than once per record.
fn dispatch<H: Process>(
    shared: &Shared<H>,
    burst: &[impl Delivered],
    scratch: &mut Vec<u8>,
    pause: impl Fn(&PartitionHandle, i32),
) {
    let mut owned = shared.owned();
    let mut rest = burst;
    while let Some(first) = rest.first() {
        let (topic, partition) = (first.topic(), first.partition());
        let len = rest
            .iter()
            .position(|m| m.partition() != partition || m.topic() != topic)
            .unwrap_or(rest.len());
        let (run, tail) = rest.split_at(len);
        rest = tail;
        // Records of a partition released in the meantime are dropped: its next owner reads them.
        if let Some(h) = owned.get_mut(topic).and_then(|m| m.get_mut(&partition)) {
            let run = Inbound::copy_run(&h.topic, run, scratch);
            deliver(h, partition, run, &pause);
        }
    }
}

/// Queues what fits of `run` and keeps the rest in the partition's overflow, pausing it.
/// While the partition's store is restored, all of it waits in the overflow.
fn deliver(
    h: &mut PartitionHandle,
    partition: i32,
    mut run: Vec<Inbound>,
    pause: impl Fn(&PartitionHandle, i32),
) {
    if let Some(last) = run.last() {
        if let Some(was) = h.flow.delivered(last.offset()) {
            tracing::info!(topic = %h.topic, partition, "partition readable again (it was not: {was})");
        }
    }
    if !h.overflow.is_empty() || h.flow.is_restoring() {
        h.overflow.extend(run);
        return;
    }
    let fits = h.flow.fits(&run);
    if run.len() > fits {
        h.overflow.extend(run.drain(fits..));
        pause(h, partition);
    }
    send(h, run);
}

/// Sends a chunk to the partition's task (nothing if it is empty or the task has ended).
fn send(h: &PartitionHandle, chunk: Vec<Inbound>) {
    if chunk.is_empty() {
        return;
    }
    h.flow.queued_more(&chunk);
    if let Err(unsent) = h.queue.send(chunk) {
        // The task ended; the partition is being released.
        h.flow.taken(&unsent.0);
    }
}

/// Moves overflow into drained queues and resumes partitions whose overflow is empty.
/// Returns whether any partition is still paused.
fn refill_paused<H: Process>(source: &impl Source, shared: &Shared<H>) -> bool {
    let mut owned = shared.owned();
    let mut still_paused = false;
    for (topic, partitions) in owned.iter_mut() {
        for (&partition, h) in partitions.iter_mut() {
            if !h.flow.is_paused() {
                continue;
            }
            if h.flow.is_restoring() {
                continue; // resumed after its restore, at the next refill
            }
            if !h.flow.drained() {
                still_paused = true;
                continue;
            }
            let take = h.flow.fits(h.overflow.make_contiguous());
            let chunk: Vec<Inbound> = h.overflow.drain(..take).collect();
            send(h, chunk);
            if !h.overflow.is_empty() {
                still_paused = true;
                continue;
            }
            if let Err(e) = source.resume(Lane { topic, partition }) {
                tracing::warn!(%topic, partition, "resume failed: {e}");
            }
            h.flow.set_paused(false);
            tracing::debug!(%topic, partition, "queue drained: partition resumed");
        }
    }
    still_paused
}

/// Settles with the broker the positions of owned partitions that moved since the last time.
fn settle_owned<H: Process>(source: &impl Source, shared: &Shared<H>) {
    let owned = shared.owned();
    let mut done = Vec::new();
    for (topic, partitions) in owned.iter() {
        for (&partition, h) in partitions {
            if let Some(next) = h.flow.take_kafka_commit() {
                done.push((Lane { topic, partition }, next));
            }
        }
    }
    if let Err(e) = source.settle(&done) {
        tracing::debug!("positions not settled with the broker: {e}");
    }
}
