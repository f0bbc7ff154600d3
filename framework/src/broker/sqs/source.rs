//! SQS queues as the worker's [`Source`]: each topic's queue is one lane, this worker's from
//! the start (SQS has no owners: it hands any message to any receiver).
//!
//! A lane's task keeps several long-polling receives in flight while the lane has room, and
//! holds every message it received until it is deleted: it extends their visibility before
//! it runs out (a slow batch is not handed to another receiver meanwhile), deletes them once
//! their batch committed (`DeleteMessageBatch`; entries that fail are tried again until they
//! go, or until SQS says their receipt is stale: then the message comes again and is
//! recognised by its id), and makes what it received and did not process visible again when
//! the worker stops. A queue has no positions: a lane's positions count the deliveries it
//! handed over, going on from its store's. Every delivery is looked up by id
//! (`processing::message_ids`), and ids are kept for the queue's retention period: a standard
//! queue may deliver a message twice without any failure.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, QueueAttributeName,
};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::{attributes, describe, lock, Connection, Queue};
use crate::broker::queue_message::{QueueDelivery as Delivery, QueueMessage};
use crate::broker::{Assignments, Lane, Source};
use crate::error::Result;
use crate::inbound::Queued;
use crate::observe::metric_names::SQS_MESSAGES;

/// How long a receive waits for messages (SQS allows up to 20 s; a stopping worker waits for
/// its receives to end).
const RECEIVE_WAIT_SECONDS: i32 = 5;
/// Messages one receive takes at most (SQS's limit).
const PER_RECEIVE: usize = 10;
/// Entries of one batch request at most (SQS's limit).
const PER_BATCH: usize = 10;
/// Batch requests (deletes, visibility changes) a lane has in flight at once.
const REQUESTS_IN_FLIGHT: usize = 16;
/// How long a lane waits after a failed request before it tries again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often a lane extends visibilities, retries deletes and reads its queue's depth.
const TICK: Duration = Duration::from_secs(1);

type LaneKey = (Arc<str>, i32);

/// A message as a lane's task hands it over (not yet numbered).
struct Taken {
    tag: u64,
    id: Option<Box<str>>,
    message: QueueMessage,
}

/// What a lane's task tells the consumer thread.
enum Event {
    Message { lane: LaneKey, taken: Taken },
    Error(String),
}

/// A message a lane's task holds: received, not yet deleted.
struct Held {
    receipt: String,
    /// When its visibility was last set (received or extended).
    visible_from: Instant,
    /// Its batch committed: to delete.
    committed: bool,
}

/// A lane as the consumer thread holds it.
struct LaneState {
    /// The position of the next delivery handed over.
    next: i64,
    paused: Arc<AtomicBool>,
    /// Messages of a paused lane, handed over at its resume.
    held: VecDeque<Taken>,
    /// Handed-over deliveries not yet deleted: position and tag.
    unacked: VecDeque<(i64, u64)>,
    /// Deletes for the lane's task: its messages up to this tag.
    deletes: mpsc::UnboundedSender<u64>,
    /// Messages ready in the queue, as last read.
    ready: Arc<AtomicI64>,
    /// How long the queue's ids are kept.
    retention: Duration,
}

/// The worker's queues.
pub(crate) struct SqsSource {
    connection: Connection,
    group: String,
    runtime: tokio::runtime::Handle,
    assignments: Arc<dyn Assignments>,
    events: std_mpsc::Receiver<Event>,
    sender: std_mpsc::Sender<Event>,
    lanes: Mutex<HashMap<LaneKey, LaneState>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Deliveries of a resumed lane, handed over before new ones.
    ready: Mutex<VecDeque<Delivery>>,
    watermarks_at: Mutex<Instant>,
}

impl std::fmt::Debug for SqsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsSource")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// The source of `group`'s queues (looked up or created at start), telling
    /// `assignments` of them.
    pub(crate) fn source(
        &self,
        group: &str,
        assignments: impl Assignments,
        runtime: tokio::runtime::Handle,
    ) -> SqsSource {
        let (sender, events) = std_mpsc::channel();
        SqsSource {
            connection: self.clone(),
            group: group.to_owned(),
            runtime,
            assignments: Arc::new(assignments),
            events,
            sender,
            lanes: Mutex::default(),
            tasks: Mutex::default(),
            ready: Mutex::default(),
            watermarks_at: Mutex::new(Instant::now()),
        }
    }
}

/// What a lane's task needs.
struct LaneTask {
    connection: Connection,
    lane: LaneKey,
    queue: Queue,
    to: std_mpsc::Sender<Event>,
    paused: Arc<AtomicBool>,
    ready: Arc<AtomicI64>,
}

impl LaneTask {
    /// Receives, extends, deletes and reads the depth, until the source is dropped (its
    /// deletes' sender with it); then lets its receives end and makes what is still held
    /// and not committed visible again.
    async fn run(self, mut deletes: mpsc::UnboundedReceiver<u64>) {
        let settings = &self.connection.settings;
        let mut held: BTreeMap<u64, Held> = BTreeMap::new();
        let mut next_tag = 0u64;
        let mut receives = FuturesUnordered::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while !self.paused.load(Ordering::Relaxed)
                && receives.len() < settings.receives
                && held.len() + (receives.len() + 1) * PER_RECEIVE
                    <= settings.capacity.max(PER_RECEIVE)
            {
                receives.push(self.receive());
            }
            tokio::select! {
                Some(received) = receives.next(), if !receives.is_empty() => {
                    match received {
                        Ok(messages) => {
                            for m in messages {
                                let Some(receipt) = m.receipt_handle().map(str::to_owned) else {
                                    continue;
                                };
                                next_tag += 1;
                                held.insert(next_tag, Held { receipt, visible_from: Instant::now(), committed: false });
                                let (message, id) = attributes::decode(&m);
                                let taken = Taken { tag: next_tag, id, message };
                                if self.to.send(Event::Message { lane: self.lane.clone(), taken }).is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            let _ = self.to.send(Event::Error(format!("{}: receiving from queue {} failed: {e}", self.lane.0, self.queue.url)));
                        }
                    }
                }
                upto = deletes.recv() => match upto {
                    Some(upto) => {
                        for h in held.range_mut(..=upto) {
                            h.1.committed = true;
                        }
                        self.delete_committed(&mut held).await;
                    }
                    None => {
                        // SQS answers a long poll whose caller has gone, and what it took stays
                        // hidden for the visibility timeout: the receives in flight finish,
                        // and what they took is given back with the rest.
                        while let Some(received) = receives.next().await {
                            for m in received.unwrap_or_default() {
                                if let Some(receipt) = m.receipt_handle().map(str::to_owned) {
                                    next_tag += 1;
                                    held.insert(next_tag, Held { receipt, visible_from: Instant::now(), committed: false });
                                }
                            }
                        }
                        self.delete_committed(&mut held).await;
                        self.release(&held).await;
                        return;
                    }
                },
                _ = tick.tick() => {
                    self.delete_committed(&mut held).await;
                    self.extend(&mut held).await;
                    self.read_depth(held.len()).await;
                }
            }
        }
    }

    /// One receive: up to ten messages with all their attributes.
    async fn receive(&self) -> Result<Vec<aws_sdk_sqs::types::Message>, String> {
        let received = self
            .connection
            .client
            .receive_message()
            .queue_url(&self.queue.url)
            .max_number_of_messages(PER_RECEIVE as i32)
            .wait_time_seconds(RECEIVE_WAIT_SECONDS)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await;
        match received {
            Ok(r) => {
                self.connection.answered(true);
                Ok(r.messages.unwrap_or_default())
            }
            Err(e) => {
                self.connection.failed(&e);
                tokio::time::sleep(RETRY_AFTER).await;
                Err(describe(&e))
            }
        }
    }

    /// Deletes the committed messages of `held`, ten a request; what failed stays to be tried
    /// again, unless SQS says its receipt is stale (it comes again, and is recognised).
    async fn delete_committed(&self, held: &mut BTreeMap<u64, Held>) {
        let committed: Vec<u64> = held
            .iter()
            .filter(|(_, h)| h.committed)
            .map(|(t, _)| *t)
            .collect();
        let requests: Vec<_> = committed
            .chunks(PER_BATCH)
            .map(|chunk| {
                let entries: Vec<DeleteMessageBatchRequestEntry> = chunk
                    .iter()
                    .filter_map(|t| {
                        DeleteMessageBatchRequestEntry::builder()
                            .id(t.to_string())
                            .receipt_handle(&held[t].receipt)
                            .build()
                            .ok()
                    })
                    .collect();
                let n = entries.len();
                let sent = self
                    .connection
                    .client
                    .delete_message_batch()
                    .queue_url(&self.queue.url)
                    .set_entries(Some(entries))
                    .send();
                async move { (n, sent.await) }
            })
            .collect();
        let answers: Vec<_> = futures::stream::iter(requests)
            .buffer_unordered(REQUESTS_IN_FLIGHT)
            .collect()
            .await;
        for (n, sent) in answers {
            let r = match sent {
                Ok(r) => r,
                Err(e) => {
                    self.connection.failed(&e);
                    tracing::warn!(lane = %self.lane.0, "deleting {n} committed messages failed (tried again): {}", describe(&e));
                    continue;
                }
            };
            self.connection.answered(true);
            for ok in r.successful() {
                if let Ok(t) = ok.id().parse::<u64>() {
                    held.remove(&t);
                }
            }
            for failed in r.failed() {
                if failed.code() == "ReceiptHandleIsInvalid" || failed.sender_fault() {
                    tracing::warn!(lane = %self.lane.0, "a committed message could not be deleted ({}: {}); it comes again, and is recognised by its id", failed.code(), failed.message().unwrap_or_default());
                    if let Ok(t) = failed.id().parse::<u64>() {
                        held.remove(&t);
                    }
                } else {
                    tracing::warn!(lane = %self.lane.0, "deleting a committed message failed ({}); tried again", failed.code());
                }
            }
        }
    }

    /// Extends the visibility of the messages held for half their timeout or more.
    async fn extend(&self, held: &mut BTreeMap<u64, Held>) {
        let timeout = self.queue.visibility;
        let due: Vec<u64> = held
            .iter()
            .filter(|(_, h)| h.visible_from.elapsed() >= timeout / 2)
            .map(|(t, _)| *t)
            .collect();
        self.set_visibility(held, &due, timeout).await;
        let now = Instant::now();
        for t in due {
            if let Some(h) = held.get_mut(&t) {
                h.visible_from = now;
            }
        }
    }

    /// Makes the messages held and not committed visible again at once, for other receivers.
    async fn release(&self, held: &BTreeMap<u64, Held>) {
        let unprocessed: Vec<u64> = held
            .iter()
            .filter(|(_, h)| !h.committed)
            .map(|(t, _)| *t)
            .collect();
        self.set_visibility(held, &unprocessed, Duration::ZERO)
            .await;
    }

    async fn set_visibility(&self, held: &BTreeMap<u64, Held>, tags: &[u64], timeout: Duration) {
        let seconds = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
        let requests: Vec<_> = tags
            .chunks(PER_BATCH)
            .map(|chunk| {
                let entries: Vec<_> = chunk
                    .iter()
                    .filter_map(|t| {
                        ChangeMessageVisibilityBatchRequestEntry::builder()
                            .id(t.to_string())
                            .receipt_handle(&held.get(t)?.receipt)
                            .visibility_timeout(seconds)
                            .build()
                            .ok()
                    })
                    .collect();
                let n = chunk.len();
                let sent = self
                    .connection
                    .client
                    .change_message_visibility_batch()
                    .queue_url(&self.queue.url)
                    .set_entries(Some(entries))
                    .send();
                async move { (n, sent.await) }
            })
            .collect();
        let answers: Vec<_> = futures::stream::iter(requests)
            .buffer_unordered(REQUESTS_IN_FLIGHT)
            .collect()
            .await;
        for (n, sent) in answers {
            match sent {
                Ok(r) if r.failed().is_empty() => {}
                Ok(r) => {
                    tracing::warn!(lane = %self.lane.0, "setting the visibility of {} of {n} messages to {seconds} s failed: {:?}", r.failed().len(), r.failed().first().map(|f| f.code()))
                }
                Err(e) => {
                    self.connection.failed(&e);
                    tracing::warn!(lane = %self.lane.0, "setting the visibility of {n} messages to {seconds} s failed: {}", describe(&e));
                }
            }
        }
    }

    /// Reads the queue's ready and in-flight counts (`/metrics`; the ready ones are lag).
    async fn read_depth(&self, held: usize) {
        let read = self
            .connection
            .client
            .get_queue_attributes()
            .queue_url(&self.queue.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await;
        let Ok(read) = read else {
            return;
        };
        let count = |name: QueueAttributeName| {
            read.attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0)
        };
        let ready = count(QueueAttributeName::ApproximateNumberOfMessages);
        let in_flight = count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible);
        self.ready.store(ready, Ordering::Relaxed);
        let topic = self.lane.0.to_string();
        metrics::gauge!(SQS_MESSAGES, "topic" => topic.clone(), "state" => "visible")
            .set(ready as f64);
        metrics::gauge!(SQS_MESSAGES, "topic" => topic, "state" => "not_visible")
            .set(in_flight as f64);
        tracing::trace!(lane = %self.lane.0, ready, in_flight, held, "queue depth");
    }
}

impl SqsSource {
    fn state(&self) -> MutexGuard<'_, HashMap<LaneKey, LaneState>> {
        lock(&self.lanes)
    }

    /// Numbers `taken` as the lane's next delivery.
    fn number(key: &LaneKey, state: &mut LaneState, taken: Taken) -> Delivery {
        let position = state.next;
        state.next += 1;
        state.unacked.push_back((position, taken.tag));
        let queued = Queued {
            id: taken.id,
            // A standard queue may deliver a message twice without saying so: every
            // message is looked up.
            redelivered: true,
            settled_below: 0,
            hold_start: 0,
            keep_ids_for: Some(state.retention),
        };
        Delivery::new(Arc::clone(&key.0), key.1, position, taken.message, queued)
    }

    /// Sends the deletes of `state`'s deliveries below `next`.
    fn delete_below(state: &mut LaneState, next: i64) {
        let mut last = None;
        while state.unacked.front().is_some_and(|(p, _)| *p < next) {
            last = state.unacked.pop_front();
        }
        if let Some((_, tag)) = last {
            let _ = state.deletes.send(tag);
        }
    }

    fn update_watermarks(&self) {
        {
            let mut at = lock(&self.watermarks_at);
            if at.elapsed() < TICK {
                return;
            }
            *at = Instant::now();
        }
        let lanes = self.state();
        self.assignments.watermarks(&|lane| {
            let s = lanes.get(&(Arc::from(lane.topic), lane.partition))?;
            // Lag is what waits: handed over and not deleted, held, and ready in the queue.
            let high = s.next + s.held.len() as i64 + s.ready.load(Ordering::Relaxed);
            Some((0, high))
        });
    }
}

impl Source for SqsSource {
    type Delivery<'s> = Delivery;

    fn subscribe(&self, topics: &[&str]) -> Result<()> {
        for topic in topics {
            let queue = self.runtime.block_on(self.connection.queue(topic, None))?;
            let key: LaneKey = (Arc::from(*topic), 0);
            let lane = Lane {
                topic,
                partition: 0,
            };
            let start = self
                .assignments
                .assigned(&[lane])
                .first()
                .copied()
                .flatten();
            let (deletes, deletes_rx) = mpsc::unbounded_channel();
            let paused = Arc::new(AtomicBool::new(start.is_some_and(|s| s.paused)));
            let ready = Arc::new(AtomicI64::new(0));
            self.state().insert(
                key.clone(),
                LaneState {
                    next: start.and_then(|s| s.next).unwrap_or(0),
                    paused: Arc::clone(&paused),
                    held: VecDeque::new(),
                    unacked: VecDeque::new(),
                    deletes,
                    ready: Arc::clone(&ready),
                    retention: queue.retention,
                },
            );
            tracing::info!(%topic, queue = %queue.url, fifo = queue.fifo, group = %self.group, "receiving from the topic's queue");
            let task = LaneTask {
                connection: self.connection.clone(),
                lane: key,
                queue,
                to: self.sender.clone(),
                paused,
                ready,
            };
            lock(&self.tasks).push(self.runtime.spawn(task.run(deletes_rx)));
        }
        Ok(())
    }

    fn poll(&self, timeout: Duration) -> Option<Result<Delivery, String>> {
        if let Some(d) = lock(&self.ready).pop_front() {
            return Some(Ok(d));
        }
        self.update_watermarks();
        let deadline = Instant::now() + timeout;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let event = self.events.recv_timeout(wait).ok()?;
            match event {
                Event::Message { lane, taken } => {
                    let mut lanes = self.state();
                    let Some(state) = lanes.get_mut(&lane) else {
                        continue;
                    };
                    if state.paused.load(Ordering::Relaxed) {
                        state.held.push_back(taken);
                        continue;
                    }
                    return Some(Ok(Self::number(&lane, state, taken)));
                }
                Event::Error(e) => return Some(Err(e)),
            }
        }
    }

    fn pause(&self, lane: Lane<'_>) -> Result<(), String> {
        if let Some(s) = self
            .state()
            .get_mut(&(Arc::from(lane.topic), lane.partition))
        {
            s.paused.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    fn resume(&self, lane: Lane<'_>) -> Result<(), String> {
        let key: LaneKey = (Arc::from(lane.topic), lane.partition);
        let mut lanes = self.state();
        if let Some(s) = lanes.get_mut(&key) {
            s.paused.store(false, Ordering::Relaxed);
            let held: Vec<Taken> = s.held.drain(..).collect();
            let mut ready = lock(&self.ready);
            for taken in held {
                ready.push_back(Self::number(&key, s, taken));
            }
        }
        Ok(())
    }

    /// A queue cannot be read from a position: the lane's deliveries are numbered from `next`
    /// on (a restore's position).
    fn seek(&self, lane: Lane<'_>, next: Option<i64>) -> Result<(), String> {
        if let Some(s) = self
            .state()
            .get_mut(&(Arc::from(lane.topic), lane.partition))
        {
            if s.unacked.is_empty() {
                s.next = next.unwrap_or(0);
                return Ok(());
            }
        }
        Err(format!(
            "{lane}: a queue's lane cannot be sought once it handed deliveries over"
        ))
    }

    fn settle(&self, done: &[(Lane<'_>, i64)]) -> Result<(), String> {
        let mut lanes = self.state();
        for (lane, next) in done {
            if let Some(s) = lanes.get_mut(&(Arc::from(lane.topic), lane.partition)) {
                Self::delete_below(s, *next);
            }
        }
        Ok(())
    }

    fn disconnected_since(&self) -> Option<Instant> {
        self.connection.disconnected_since()
    }
}

impl Drop for SqsSource {
    /// Releases the lanes (their tasks finish their batches), deletes what they committed,
    /// and makes what the worker received and did not process visible again.
    fn drop(&mut self) {
        let keys: Vec<LaneKey> = self.state().keys().cloned().collect();
        let lanes: Vec<Lane<'_>> = keys
            .iter()
            .map(|(topic, lane)| Lane {
                topic,
                partition: *lane,
            })
            .collect();
        let done = self.assignments.revoked(&lanes, false);
        {
            let mut state = self.state();
            for (topic, lane, next) in done {
                if let Some(s) = state.get_mut(&(topic, lane)) {
                    Self::delete_below(s, next);
                }
            }
            // Dropping the senders ends each task once its deletes are sent.
            state.clear();
        }
        let tasks: Vec<_> = lock(&self.tasks).drain(..).collect();
        self.runtime.block_on(async move {
            for t in tasks {
                let limit = Duration::from_secs(RECEIVE_WAIT_SECONDS as u64 + 10);
                if tokio::time::timeout(limit, t).await.is_err() {
                    tracing::warn!(
                        "a queue's last receives and deletes did not finish within {limit:?}"
                    );
                }
            }
        });
    }
}
