//! The consumer thread: polls the one rdkafka consumer, dispatches records to partition
//! queues, pauses a partition whose queue is full and resumes it once drained, and commits
//! SQLite-committed offsets to Kafka.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::inbound::Inbound;
use crate::metric_names::PAUSES_TOTAL;
use crate::partition_task::Control;
use crate::rebalance::WeirContext;
use crate::shared::{PartitionHandle, Shared};
use crate::{Process, Result};

/// How often SQLite-committed offsets are committed to Kafka (progress only).
const KAFKA_COMMIT_INTERVAL: Duration = Duration::from_millis(200);
/// Poll timeout while nothing is paused.
const POLL_IDLE: Duration = Duration::from_millis(100);
/// Poll timeout while a partition is paused, so it resumes promptly.
const POLL_PAUSED: Duration = Duration::from_millis(5);
/// Most records taken from librdkafka in one go before they are handed to partition queues.
const MAX_BURST: usize = 512;

pub(crate) fn run<H: Process>(
    consumer: BaseConsumer<WeirContext<H>>,
    shared: Arc<Shared<H>>,
    control: std_mpsc::Receiver<Control>,
) -> Result<()> {
    let topics: Vec<&str> = shared.config.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let mut pending: HashMap<(String, i32), i64> = HashMap::new();
    let mut last_commit = Instant::now();
    let mut any_paused = false;
    let mut scratch = Vec::new();
    while !shared.stopping() {
        let timeout = if any_paused { POLL_PAUSED } else { POLL_IDLE };
        let burst = poll_burst(&consumer, timeout);
        if !burst.is_empty() {
            dispatch(&consumer, &shared, &burst, &mut scratch);
        }
        drop(burst);
        for c in control.try_iter() {
            match c {
                Control::Committed {
                    topic,
                    partition,
                    next_offset,
                } => {
                    pending.insert((topic, partition), next_offset);
                }
                Control::Wake => {} // the refill below resumes it
            }
        }
        any_paused = refill_paused(&consumer, &shared);
        if !pending.is_empty() && last_commit.elapsed() >= KAFKA_COMMIT_INTERVAL {
            commit_owned(&consumer, &shared, &mut pending);
            last_commit = Instant::now();
        }
    }
    if !shared.abandon.load(Ordering::SeqCst) {
        commit_owned(&consumer, &shared, &mut pending);
    }
    tracing::info!("leaving the consumer group");
    // Dropping the consumer closes it: librdkafka revokes every partition through the
    // rebalance callback (tasks finish and close their stores), then leaves the group.
    drop(consumer);
    match shared.take_fatal() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Waits up to `timeout` for a record, then takes whatever else librdkafka already holds, up
/// to [`MAX_BURST`] records.
fn poll_burst<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    timeout: Duration,
) -> Vec<BorrowedMessage<'_>> {
    let mut burst = Vec::new();
    let mut wait = timeout;
    while burst.len() < MAX_BURST {
        match consumer.poll(wait) {
            Some(Ok(msg)) => burst.push(msg),
            Some(Err(e)) => tracing::warn!("consumer error: {e}"),
            None => break,
        }
        wait = Duration::ZERO;
    }
    burst
}

/// Hands the burst's records to their partitions' queues, one chunk per run of records of the
/// same partition, so a partition task is woken once per chunk rather than once per record.
fn dispatch<H: Process>(
    consumer: &BaseConsumer<WeirContext<H>>,
    shared: &Shared<H>,
    burst: &[BorrowedMessage<'_>],
    scratch: &mut Vec<u8>,
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
            deliver(consumer, h, partition, run, shared.config.queue_capacity);
        }
    }
}

/// Queues what fits of `run` and keeps the rest in the partition's overflow, pausing it.
fn deliver<H: Process>(
    consumer: &BaseConsumer<WeirContext<H>>,
    h: &mut PartitionHandle,
    partition: i32,
    mut run: Vec<Inbound>,
    capacity: usize,
) {
    if !h.overflow.is_empty() {
        h.overflow.extend(run);
        return;
    }
    let room = capacity.saturating_sub(h.flow.queued.load(Ordering::SeqCst));
    if run.len() > room {
        h.overflow.extend(run.drain(room..));
        pause(consumer, h, partition);
    }
    send(h, run);
}

/// Sends a chunk to the partition's task (nothing if it is empty or the task has ended).
fn send(h: &PartitionHandle, chunk: Vec<Inbound>) {
    if chunk.is_empty() {
        return;
    }
    let n = chunk.len();
    h.flow.queued.fetch_add(n, Ordering::SeqCst);
    if h.queue.send(chunk).is_err() {
        // The task ended; the partition is being released.
        h.flow.queued.fetch_sub(n, Ordering::SeqCst);
    }
}

fn pause<H: Process>(consumer: &BaseConsumer<WeirContext<H>>, h: &PartitionHandle, partition: i32) {
    let topic = &*h.topic;
    h.flow.wake_sent.store(false, Ordering::SeqCst);
    h.flow.paused.store(true, Ordering::SeqCst);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    if let Err(e) = consumer.pause(&tpl) {
        tracing::warn!(%topic, partition, "pause failed: {e}");
    }
    metrics::counter!(PAUSES_TOTAL).increment(1);
    tracing::debug!(%topic, partition, "queue full: partition paused");
}

/// Moves overflow into drained queues and resumes partitions whose overflow is empty.
/// Returns whether any partition is still paused.
fn refill_paused<H: Process>(consumer: &BaseConsumer<WeirContext<H>>, shared: &Shared<H>) -> bool {
    let capacity = shared.config.queue_capacity;
    let low_water = capacity / 2;
    let mut owned = shared.owned();
    let mut still_paused = false;
    for (topic, partitions) in owned.iter_mut() {
        for (&partition, h) in partitions.iter_mut() {
            if !h.flow.paused.load(Ordering::SeqCst) {
                continue;
            }
            let queued = h.flow.queued.load(Ordering::SeqCst);
            if queued > low_water {
                still_paused = true;
                continue;
            }
            let take = (capacity - queued).min(h.overflow.len());
            let chunk: Vec<Inbound> = h.overflow.drain(..take).collect();
            send(h, chunk);
            if !h.overflow.is_empty() {
                still_paused = true;
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(topic, partition);
            if let Err(e) = consumer.resume(&tpl) {
                tracing::warn!(%topic, partition, "resume failed: {e}");
            }
            h.flow.paused.store(false, Ordering::SeqCst);
            tracing::debug!(%topic, partition, "queue drained: partition resumed");
        }
    }
    still_paused
}

/// Commits to Kafka the pending offsets of partitions this worker still owns.
fn commit_owned<H: Process>(
    consumer: &BaseConsumer<WeirContext<H>>,
    shared: &Shared<H>,
    pending: &mut HashMap<(String, i32), i64>,
) {
    let mut tpl = TopicPartitionList::new();
    {
        let owned = shared.owned();
        for ((topic, partition), next) in pending.drain() {
            if owned
                .get(&topic)
                .is_some_and(|m| m.contains_key(&partition))
            {
                let _ = tpl.add_partition_offset(&topic, partition, Offset::Offset(next));
            }
        }
    }
    if tpl.count() > 0 {
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!("offset commit to Kafka not sent: {e}");
        }
    }
}
