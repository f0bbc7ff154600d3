//! SQS queues as the worker's [`Source`]: each topic's queue is one lane, this worker's from
//! the start (SQS has no owners: it hands any message to any receiver).
//!
//! Each lane has a task (`lane`) that receives, holds, extends and deletes its queue's
//! messages. A queue has no positions: a lane's positions count the deliveries it handed
//! over, going on from its store's. Every delivery is looked up by id
//! (`processing::message_ids`), and ids are kept for the queue's retention period: a standard
//! queue may deliver a message twice without any failure.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::lane::{Event, LaneKey, LaneTask, RECEIVE_WAIT_SECONDS, TICK, Taken};
use super::{Connection, lock};
use crate::broker::queue_message::QueueDelivery as Delivery;
use crate::broker::{Assignments, Lane, Source};
use crate::error::Result;
use crate::inbound::Queued;

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
            let task = LaneTask::new(
                self.connection.clone(),
                key,
                queue,
                self.sender.clone(),
                paused,
                ready,
            );
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
