//! The consumer thread: polls the one rdkafka consumer, dispatches records to partition
//! queues, pauses a partition whose queue is full and resumes it once drained, and commits
//! SQLite-committed offsets to Kafka.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::mpsc::error::TrySendError;

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
    while !shared.stopping() {
        let timeout = if any_paused { POLL_PAUSED } else { POLL_IDLE };
        match consumer.poll(timeout) {
            Some(Ok(msg)) => dispatch(&consumer, &shared, msg.detach()),
            Some(Err(e)) => tracing::warn!("consumer error: {e}"),
            None => {}
        }
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

fn dispatch<H: Process>(
    consumer: &BaseConsumer<WeirContext<H>>,
    shared: &Shared<H>,
    msg: OwnedMessage,
) {
    let mut owned = shared.owned();
    let Some(h) = owned
        .get_mut(msg.topic())
        .and_then(|m| m.get_mut(&msg.partition()))
    else {
        return; // a record of a partition released in the meantime: its next owner reads it
    };
    if !h.overflow.is_empty() {
        h.overflow.push_back(msg);
        return;
    }
    match h.queue.try_send(msg) {
        Ok(()) => {}
        Err(TrySendError::Full(msg)) => {
            let (topic, partition) = (msg.topic().to_owned(), msg.partition());
            h.overflow.push_back(msg);
            pause(consumer, h, &topic, partition);
        }
        Err(TrySendError::Closed(_)) => {} // the task ended; the partition is being released
    }
}

fn pause<H: Process>(
    consumer: &BaseConsumer<WeirContext<H>>,
    h: &PartitionHandle,
    topic: &str,
    partition: i32,
) {
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
    let mut owned = shared.owned();
    let mut still_paused = false;
    for (topic, partitions) in owned.iter_mut() {
        for (&partition, h) in partitions.iter_mut() {
            if !h.flow.paused.load(Ordering::SeqCst) {
                continue;
            }
            if h.queue.capacity() < h.queue.max_capacity() / 2 {
                still_paused = true;
                continue;
            }
            while let Some(msg) = h.overflow.pop_front() {
                if let Err(e) = h.queue.try_send(msg) {
                    match e {
                        TrySendError::Full(msg) => h.overflow.push_front(msg),
                        TrySendError::Closed(_) => h.overflow.clear(),
                    }
                    break;
                }
            }
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
