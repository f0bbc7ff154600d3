//! JetStream lanes as the worker's [`Source`].
//!
//! Each lane of a subscribed topic has a durable pull consumer of the group
//! (`weir-<group>-<lane>`) filtered to the lane's subjects, with a priority group whose
//! `pinned_client` policy lets the server hand the lane to one worker at a time (ADR-42). A
//! task per lane pulls for it; the first message that carries a `Nats-Pin-Id` makes the lane
//! this worker's, and a pull the server answers with 423 (another client holds the pin) takes
//! it away. A worker that stops pulling for [`Settings::hand_off`] loses the pin, and its
//! unacknowledged messages come again to the next owner after the same time.
//!
//! Positions are stream sequences. A lane starts where its store says: what the consumer
//! delivers at or below the stored position is dropped by the partition task (and
//! acknowledged when the lane settles: the consumer acknowledges cumulatively, one
//! acknowledgement per lane and settle). When the server pins a lane here, everything its
//! consumer delivered so far (to this worker or an earlier owner) is read again from the
//! stored position with an ordered consumer first: the server mixes an earlier owner's
//! redeliveries with new messages, so the consumer's own deliveries are in order only past
//! that point. Settling acknowledges every delivered message below the committed position.
//!
//! [`Settings::hand_off`]: super::Settings::hand_off

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::{HeaderMap, Message, Subject};
use futures::StreamExt;
use tokio::sync::{Notify, oneshot};

use super::Connection;
use super::names::{self, AckInfo};
use super::streams::Layout;
use crate::broker::{Assignments, Lane, Source};
use crate::error::{Error, Result};
use crate::inbound::Delivered;

/// The priority group of every lane consumer.
const GROUP: &str = "weir";
/// The header that names the client a lane is pinned to.
const PIN_HEADER: &str = "Nats-Pin-Id";
/// [`PIN_HEADER`] as a header name made once: looked up by `&str`, the name is copied first.
const PIN_NAME: async_nats::HeaderName = async_nats::HeaderName::from_static(PIN_HEADER);
/// Messages one pull asks for (and at most [`BATCH_BYTES`] of them).
const BATCH: usize = 4096;
/// Bytes one pull asks for at most.
const BATCH_BYTES: usize = 8 << 20;
/// How long a pull waits at the server for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// How often the server says a waiting pull is alive.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// Messages a lane may have delivered and unacknowledged (the server stops delivering past
/// it): more than a lane's queue holds.
const MAX_ACK_PENDING: i64 = 50_000;
/// How long a lane waits after an error before it pulls again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long a read of the lane's history waits for its next message.
const REPLAY_WAIT: Duration = Duration::from_secs(10);
/// How often the owned lanes' watermarks are updated.
const WATERMARK_INTERVAL: Duration = Duration::from_secs(1);

type LaneKey = (Arc<str>, i32);

/// A message of a lane, copied out of the client.
#[derive(Debug)]
pub(crate) struct Delivery {
    topic: Arc<str>,
    lane: i32,
    seq: i64,
    timestamp_ms: i64,
    key: Option<Vec<u8>>,
    message: Message,
}

impl Delivery {
    /// `message`, stored under `info.stream_seq`, of `topic`'s lane `lane`.
    pub(super) fn new(
        topic: Arc<str>,
        lane: i32,
        info: AckInfo,
        key: Option<Vec<u8>>,
        message: Message,
    ) -> Self {
        Self {
            topic,
            lane,
            seq: info.stream_seq,
            timestamp_ms: info.timestamp_ms,
            key,
            message,
        }
    }
}

impl Delivered for Delivery {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn partition(&self) -> i32 {
        self.lane
    }

    fn offset(&self) -> i64 {
        self.seq
    }

    fn timestamp_ms(&self) -> Option<i64> {
        Some(self.timestamp_ms)
    }

    fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    fn payload(&self) -> Option<&[u8]> {
        Some(&self.message.payload)
    }

    fn headers(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.message
            .headers
            .iter()
            .flat_map(HeaderMap::iter)
            .filter(|(name, _)| AsRef::<str>::as_ref(name) != PIN_HEADER)
            .flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |v| (AsRef::<str>::as_ref(name), Some(v.as_str().as_bytes())))
            })
    }
}

/// What a lane's task tells the consumer thread.
enum Event {
    /// Messages of one lane, in order.
    Messages(Vec<Taken>),
    /// The server pinned the lane to this worker: the thread answers where it starts.
    Pinned {
        lane: LaneKey,
        start: oneshot::Sender<Option<i64>>,
    },
    /// The server pinned the lane to another client.
    Lost { lane: LaneKey, why: String },
    /// An error of the lane's pulls.
    Error(String),
}

/// A message as a lane's task hands it over; `ack` is its acknowledgement subject (none for
/// one read again from the stream, which the consumer acknowledged before), `pending` how many
/// the consumer still holds after it.
struct Taken {
    delivery: Delivery,
    ack: Option<Subject>,
    pending: i64,
}

/// Messages a lane's task hands over at once (fewer when no more are at hand).
const HAND_OVER: usize = 256;

/// The consumer thread's hold on a lane's task.
#[derive(Default)]
struct LaneControl {
    paused: AtomicBool,
    stopped: AtomicBool,
    changed: Notify,
}

impl LaneControl {
    fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

/// What the consumer thread keeps of a lane.
struct LaneState {
    control: Arc<LaneControl>,
    stream: String,
    consumer: String,
    owned: bool,
    /// Delivered messages not yet acknowledged, by stream sequence.
    unacked: VecDeque<(i64, Subject)>,
    /// The newest delivered message's sequence, and how many the consumer still holds after
    /// it.
    newest: Option<(i64, i64)>,
    /// A lane pinned here whose store is being prepared (a changelog restore): the lane's
    /// task waits for where it starts, told at the seek to the restored position or, with
    /// none, at the resume (the stored position, here).
    starting: Option<(oneshot::Sender<Option<i64>>, Option<i64>)>,
}

impl LaneState {
    /// Tells the lane's task where it starts, if it waits for that: `next`, or the position
    /// it was assigned with.
    fn start(&mut self, next: Option<Option<i64>>) {
        if let Some((start, assigned)) = self.starting.take() {
            let _ = start.send(next.unwrap_or(assigned));
        }
    }
}

/// The worker's lanes on JetStream.
pub(crate) struct NatsSource {
    connection: Connection,
    group: String,
    runtime: tokio::runtime::Handle,
    assignments: Arc<dyn Assignments>,
    events: std_mpsc::Receiver<Event>,
    sender: std_mpsc::Sender<Event>,
    lanes: Mutex<HashMap<LaneKey, LaneState>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    watermarks_at: Mutex<Instant>,
    /// Since when the client has had no connection.
    disconnected: Mutex<Option<Instant>>,
    /// Messages handed over and not yet polled.
    taken: Mutex<VecDeque<Delivery>>,
    /// A lane pinned here or taken away, held back until the runtime has dispatched what
    /// `poll` returned before it (see [`poll`](Source::poll)).
    held: Mutex<Option<Event>>,
    /// `poll` returned a message since it last returned nothing: the runtime holds a burst
    /// it has not dispatched yet.
    in_burst: AtomicBool,
}

impl std::fmt::Debug for NatsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSource")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Connection {
    /// The source of `group`'s lanes; `assignments` hears as the server pins lanes to this
    /// worker and takes them away. Its calls block on `runtime`: use it off the runtime.
    pub(crate) fn source(
        &self,
        group: &str,
        assignments: impl Assignments,
        runtime: tokio::runtime::Handle,
    ) -> NatsSource {
        let (sender, events) = std_mpsc::channel();
        NatsSource {
            connection: self.clone(),
            group: group.to_owned(),
            runtime,
            assignments: Arc::new(assignments),
            events,
            sender,
            lanes: Mutex::default(),
            tasks: Mutex::default(),
            watermarks_at: Mutex::new(Instant::now()),
            disconnected: Mutex::default(),
            taken: Mutex::default(),
            held: Mutex::default(),
            in_burst: AtomicBool::new(false),
        }
    }

    /// Creates (or updates) the durable consumer of lane `lane` of `layout`'s stream.
    async fn lane_consumer(&self, layout: &Layout, group: &str, lane: i32) -> Result<String> {
        let name = names::consumer_name(group, lane);
        let nanos = |d: Duration| d.as_nanos() as u64;
        let request = serde_json::json!({
            "stream_name": layout.stream,
            "config": {
                "name": name,
                "durable_name": name,
                "filter_subject": names::lane_filter(&layout.stream, lane, layout.partitioned),
                "deliver_policy": "all",
                "ack_policy": "all",
                "ack_wait": nanos(self.settings.hand_off),
                "max_ack_pending": MAX_ACK_PENDING,
                "priority_groups": [GROUP],
                "priority_policy": "pinned_client",
                "priority_timeout": nanos(self.settings.hand_off),
            },
        });
        let subject = format!("$JS.API.CONSUMER.CREATE.{}.{name}", layout.stream);
        let answer = self
            .client
            .request(subject, request.to_string().into())
            .await
            .map_err(super::error)?;
        let answer: serde_json::Value =
            serde_json::from_slice(&answer.payload).map_err(super::error)?;
        if let Some(e) = answer.get("error") {
            return Err(Error::config(
                "brokers (WEIR_BROKERS)",
                format!(
                    "cannot create the consumer {name} of stream {} (nats-server 2.11 or newer is needed for its priority group): {e}",
                    layout.stream
                ),
            ));
        }
        // Settling acknowledges only the newest message of each lane: a server that made the
        // consumer acknowledge one by one instead would hold the rest until it stops
        // delivering (or one that ignored the priority group would not pin).
        let config = &answer["config"];
        if config["ack_policy"] != "all" || config["priority_policy"] != "pinned_client" {
            return Err(Error::config(
                "brokers (WEIR_BROKERS)",
                format!(
                    "the server made the consumer {name} of stream {} with ack_policy {} and priority_policy {}, not all and pinned_client as asked",
                    layout.stream, config["ack_policy"], config["priority_policy"]
                ),
            ));
        }
        Ok(name)
    }

    /// The newest stream sequence `consumer` delivered (to any client).
    async fn delivered(&self, stream: &str, consumer: &str) -> Result<i64, String> {
        let subject = format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}");
        let answer = self
            .client
            .request(subject, Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let info: serde_json::Value =
            serde_json::from_slice(&answer.payload).map_err(|e| e.to_string())?;
        if let Some(e) = info.get("error") {
            return Err(e.to_string());
        }
        info.pointer("/delivered/stream_seq")
            .and_then(serde_json::Value::as_i64)
            .ok_or_else(|| format!("consumer info without delivered.stream_seq: {info}"))
    }

    /// Asks the server to pin `consumer`'s lane to another client (a graceful hand-off).
    async fn unpin(&self, stream: &str, consumer: &str) {
        let subject = format!("$JS.API.CONSUMER.UNPIN.{stream}.{consumer}");
        let body = serde_json::json!({ "group": GROUP }).to_string();
        if let Err(e) = self.client.request(subject, body.into()).await {
            tracing::debug!(%stream, %consumer, "unpin failed (the pin expires instead): {e}");
        }
    }
}

impl NatsSource {
    fn state(&self) -> MutexGuard<'_, HashMap<LaneKey, LaneState>> {
        lock(&self.lanes)
    }

    /// Acknowledges `subjects` (each the newest delivered message below a lane's committed
    /// position: the consumers acknowledge everything before it with it).
    fn ack(&self, subjects: Vec<Subject>) -> Result<(), String> {
        if subjects.is_empty() {
            return Ok(());
        }
        let client = self.connection.client.clone();
        self.runtime.block_on(async move {
            for s in subjects {
                client
                    .publish(s, Default::default())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            client.flush().await.map_err(|e| e.to_string())
        })
    }

    /// The acknowledgement of the lane's newest delivered message below `next` (which
    /// acknowledges all before it), taking them all from its unacknowledged.
    fn take_acks(state: &mut LaneState, next: i64) -> Vec<Subject> {
        // Delivery order, with redeliveries among them: the highest sequence acknowledges.
        let mut newest: Option<(i64, Subject)> = None;
        while state.unacked.front().is_some_and(|(seq, _)| *seq < next) {
            if let Some((seq, subject)) = state.unacked.pop_front() {
                if newest.as_ref().is_none_or(|(n, _)| seq > *n) {
                    newest = Some((seq, subject));
                }
            }
        }
        newest.map(|(_, s)| s).into_iter().collect()
    }

    /// Applies a lane pinned here or taken away.
    fn apply(&self, event: Event) {
        let lane = match &event {
            Event::Pinned { lane, .. } | Event::Lost { lane, .. } => lane.clone(),
            Event::Messages(_) | Event::Error(_) => return,
        };
        lock(&self.taken).retain(|d| !(d.lane == lane.1 && *d.topic == *lane.0));
        match event {
            Event::Pinned { lane, start } => {
                // Pinned anew while it was this worker's (a new pin id with no 423 between):
                // its earlier run ends first, as if lost.
                self.on_lost(lane.clone(), "pinned here again with a new pin id");
                self.on_pinned(lane, start);
            }
            Event::Lost { lane, why } => self.on_lost(lane, &why),
            Event::Messages(_) | Event::Error(_) => {}
        }
    }

    fn on_pinned(&self, lane: LaneKey, start: oneshot::Sender<Option<i64>>) {
        let starts = self.assignments.assigned(&[Lane {
            topic: &lane.0,
            partition: lane.1,
        }]);
        let next = starts.first().copied().flatten();
        let mut lanes = self.state();
        let Some(state) = lanes.get_mut(&lane) else {
            let _ = start.send(next.and_then(|s| s.next));
            return;
        };
        state.owned = true;
        state.unacked.clear();
        state.newest = None;
        match next {
            Some(s) if s.paused => {
                state.control.set_paused(true);
                state.starting = Some((start, s.next));
            }
            _ => {
                let _ = start.send(next.and_then(|s| s.next));
            }
        }
    }

    fn on_lost(&self, lane: LaneKey, why: &str) {
        let owned = self.state().get_mut(&lane).is_some_and(|s| {
            // A task waiting to start goes on (what it reads is dropped: the lane is not owned).
            s.start(None);
            std::mem::replace(&mut s.owned, false)
        });
        if owned {
            tracing::warn!(topic = %lane.0, lane = lane.1, "lane taken away: {why}");
            self.assignments.revoked(
                &[Lane {
                    topic: &lane.0,
                    partition: lane.1,
                }],
                true,
            );
        }
    }

    fn update_watermarks(&self) {
        let mut at = lock(&self.watermarks_at);
        if at.elapsed() < WATERMARK_INTERVAL {
            return;
        }
        *at = Instant::now();
        drop(at);
        // Each owned lane's high watermark, so that the runtime's lag (the high watermark less
        // the committed position) counts the lane's messages: those delivered and not yet
        // settled (the first of them stands about where the committed position does), plus
        // those the consumer still holds. Other lanes' sequences between the committed
        // position and the first unsettled one add a few at most.
        let highs: HashMap<LaneKey, i64> = self
            .state()
            .iter()
            .filter(|(_, s)| s.owned)
            .filter_map(|(k, s)| {
                let (newest, pending) = s.newest?;
                let first = s.unacked.front().map_or(newest + 1, |(seq, _)| *seq);
                Some((k.clone(), first + s.unacked.len() as i64 + pending))
            })
            .collect();
        self.assignments.watermarks(&|lane| {
            highs
                .get(&(Arc::from(lane.topic), lane.partition))
                .map(|high| (0, *high))
        });
    }
}

impl Source for NatsSource {
    type Delivery<'s> = Delivery;

    fn subscribe(&self, topics: &[&str]) -> Result<()> {
        for topic in topics {
            let layout = self
                .runtime
                .block_on(self.connection.stream(topic, true))?
                .ok_or_else(|| Error::config("topics", format!("no stream for {topic}")))?;
            tracing::info!(%topic, stream = %layout.stream, lanes = layout.lanes, partitioned = layout.partitioned, "subscribing");
            for lane in 0..layout.lanes {
                let consumer = self.runtime.block_on(self.connection.lane_consumer(
                    &layout,
                    &self.group,
                    lane,
                ))?;
                let key: LaneKey = (Arc::from(*topic), lane);
                let control = Arc::new(LaneControl::default());
                let task = LaneTask {
                    connection: self.connection.clone(),
                    lane: key.clone(),
                    layout: layout.clone(),
                    consumer: consumer.clone(),
                    control: Arc::clone(&control),
                    events: self.sender.clone(),
                    taking: Mutex::default(),
                    inbox: self.connection.client.new_inbox().into(),
                };
                lock(&self.tasks).push(self.runtime.spawn(task.run()));
                self.state().insert(
                    key,
                    LaneState {
                        control,
                        stream: layout.stream.clone(),
                        consumer,
                        owned: false,
                        unacked: VecDeque::new(),
                        newest: None,
                        starting: None,
                    },
                );
            }
        }
        // In the group now, owning no lane until the server pins one here (a worker of
        // stand-by lanes is ready).
        self.assignments.assigned(&[]);
        Ok(())
    }

    fn disconnected_since(&self) -> Option<Instant> {
        let connected =
            self.connection.client.connection_state() == async_nats::connection::State::Connected;
        let mut since = lock(&self.disconnected);
        match (connected, *since) {
            (true, _) => *since = None,
            (false, None) => *since = Some(Instant::now()),
            (false, Some(_)) => {}
        }
        *since
    }

    /// A lane pinned here or taken away changes where the runtime sends the lane's
    /// messages, so it is applied only between bursts: when one comes while the runtime
    /// holds messages `poll` returned (taken before it), `poll` holds it back and returns
    /// nothing, the runtime dispatches its burst, and the next `poll` applies it. Messages
    /// taken before it and not yet returned are dropped with it: they belong to the lane's
    /// earlier ownership, and the lane's new start reads them again where they are due.
    fn poll(&self, timeout: Duration) -> Option<Result<Delivery, String>> {
        let held = lock(&self.held).take();
        if let Some(event) = held {
            self.apply(event);
        }
        if let Some(d) = lock(&self.taken).pop_front() {
            self.in_burst.store(true, Ordering::Relaxed);
            return Some(Ok(d));
        }
        self.update_watermarks();
        let deadline = Instant::now() + timeout;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let event = match self.events.recv_timeout(wait) {
                Ok(e) => e,
                Err(_) => {
                    self.in_burst.store(false, Ordering::Relaxed);
                    return None;
                }
            };
            match event {
                Event::Messages(batch) => {
                    // A batch is one lane's: it is looked up once.
                    let Some(key) = batch
                        .first()
                        .map(|t| (Arc::clone(&t.delivery.topic), t.delivery.lane))
                    else {
                        continue;
                    };
                    let mut taken = lock(&self.taken);
                    let mut lanes = self.state();
                    let Some(state) = lanes.get_mut(&key).filter(|s| s.owned) else {
                        continue; // the lane is not (or no longer) this worker's
                    };
                    for t in batch {
                        if let Some(ack) = t.ack {
                            state.unacked.push_back((t.delivery.seq, ack));
                            state.newest = Some((t.delivery.seq, t.pending));
                        }
                        taken.push_back(t.delivery);
                    }
                    if let Some(d) = taken.pop_front() {
                        self.in_burst.store(true, Ordering::Relaxed);
                        return Some(Ok(d));
                    }
                }
                Event::Error(e) => return Some(Err(e)),
                event if self.in_burst.swap(false, Ordering::Relaxed) => {
                    *lock(&self.held) = Some(event);
                    return None;
                }
                event => self.apply(event),
            }
        }
    }

    fn pause(&self, lane: Lane<'_>) -> Result<(), String> {
        if let Some(s) = self.state().get(&(Arc::from(lane.topic), lane.partition)) {
            s.control.set_paused(true);
        }
        Ok(())
    }

    fn resume(&self, lane: Lane<'_>) -> Result<(), String> {
        if let Some(s) = self
            .state()
            .get_mut(&(Arc::from(lane.topic), lane.partition))
        {
            s.start(None);
            s.control.set_paused(false);
        }
        Ok(())
    }

    fn seek(&self, lane: Lane<'_>, next: Option<i64>) -> Result<(), String> {
        // A lane is sought once its store is ready (restored from its changelog): its task
        // waits to read the lane again from there. Once it reads, it cannot be sought (what
        // it delivers at or below the stored position is dropped by the partition task).
        match self
            .state()
            .get_mut(&(Arc::from(lane.topic), lane.partition))
        {
            Some(s) if s.starting.is_some() => {
                s.start(Some(next));
                Ok(())
            }
            _ => Err(format!(
                "{lane}: a NATS lane that started reading cannot be sought"
            )),
        }
    }

    fn settle(&self, done: &[(Lane<'_>, i64)]) -> Result<(), String> {
        let mut acks = Vec::new();
        {
            let mut lanes = self.state();
            for (lane, next) in done {
                if let Some(state) = lanes.get_mut(&(Arc::from(lane.topic), lane.partition)) {
                    acks.extend(Self::take_acks(state, *next));
                }
            }
        }
        self.ack(acks)
    }
}

impl Drop for NatsSource {
    /// Stops the lanes' pulls, releases the owned lanes (their tasks finish their batches),
    /// acknowledges what they committed, and unpins them so another worker takes them now.
    fn drop(&mut self) {
        let owned: Vec<(LaneKey, String, String)> = {
            let lanes = self.state();
            for s in lanes.values() {
                s.control.stop();
            }
            lanes
                .iter()
                .filter(|(_, s)| s.owned)
                .map(|(k, s)| (k.clone(), s.stream.clone(), s.consumer.clone()))
                .collect()
        };
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        let lanes: Vec<Lane<'_>> = owned
            .iter()
            .map(|((topic, lane), _, _)| Lane {
                topic,
                partition: *lane,
            })
            .collect();
        let done = self.assignments.revoked(&lanes, false);
        let mut acks = Vec::new();
        {
            let mut state = self.state();
            for (topic, lane, next) in done {
                if let Some(s) = state.get_mut(&(topic, lane)) {
                    acks.extend(Self::take_acks(s, next));
                }
            }
        }
        if let Err(e) = self.ack(acks) {
            tracing::warn!(
                "acknowledging the released lanes failed (they are delivered again and skipped): {e}"
            );
        }
        let connection = self.connection.clone();
        self.runtime.block_on(async move {
            for (_, stream, consumer) in &owned {
                connection.unpin(stream, consumer).await;
            }
        });
    }
}

/// The pulls of one lane.
struct LaneTask {
    connection: Connection,
    lane: LaneKey,
    layout: Layout,
    consumer: String,
    control: Arc<LaneControl>,
    events: std_mpsc::Sender<Event>,
    /// Messages not yet handed over.
    taking: Mutex<Vec<Taken>>,
    /// Where the lane's pulls are answered.
    inbox: Subject,
}

/// How a pull ended.
enum Pulled {
    /// Done or expired: pull again.
    Again,
    /// The consumer thread is gone.
    Gone,
}

impl LaneTask {
    async fn run(self) {
        let client = self.connection.client.clone();
        let mut replies = match client.subscribe(self.inbox.clone()).await {
            Ok(s) => s,
            Err(e) => {
                let _ = self.send(Event::Error(format!(
                    "{}/{}: cannot subscribe to its pulls' replies: {e}",
                    self.lane.0, self.lane.1
                )));
                return;
            }
        };
        // The pin id while the server pins the lane to this worker.
        let mut pin: Option<String> = None;
        let keep_alive = self.keep_alive();
        let mut last_pull: Option<Instant> = None;
        while !self.control.stopped.load(Ordering::SeqCst) {
            let paused = self.control.paused.load(Ordering::SeqCst) && pin.is_some();
            if paused {
                // A paused lane pulls one message now and then, so the pin stays.
                let due =
                    last_pull.map_or(Duration::ZERO, |t| keep_alive.saturating_sub(t.elapsed()));
                if !due.is_zero() {
                    let changed = self.control.changed.notified();
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep(due) => {}
                    }
                    continue;
                }
            }
            let batch = if paused { 1 } else { BATCH };
            if let Err(e) = self.pull(batch, pin.as_deref()).await {
                self.error(format!("pull failed: {e}"));
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
            last_pull = Some(Instant::now());
            match self.take_pull(&mut replies, batch, &mut pin).await {
                Pulled::Again => {}
                Pulled::Gone => return,
            }
        }
    }

    /// How often a lane that takes nothing (paused, or being read again) pulls all the same,
    /// so that the server keeps it pinned here.
    fn keep_alive(&self) -> Duration {
        self.connection.settings.hand_off / 3
    }

    /// Asks the lane's consumer for up to `batch` messages, answered to the lane's inbox
    /// (with the pin id once the lane is pinned here).
    async fn pull(&self, batch: usize, pin: Option<&str>) -> Result<(), String> {
        let mut request = serde_json::json!({
            "batch": batch,
            "max_bytes": BATCH_BYTES,
            "expires": PULL_EXPIRES.as_nanos() as u64,
            "idle_heartbeat": HEARTBEAT.as_nanos() as u64,
            "group": GROUP,
        });
        if let Some(id) = pin {
            request["id"] = id.into();
        }
        let subject = format!(
            "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
            self.layout.stream, self.consumer
        );
        self.connection
            .client
            .publish_with_reply(subject, self.inbox.clone(), request.to_string().into())
            .await
            .map_err(|e| e.to_string())
    }

    fn error(&self, message: String) {
        let _ = self.send(Event::Error(format!(
            "{}/{}: {message}",
            self.lane.0, self.lane.1
        )));
    }

    /// Takes one pull's replies: up to `batch` messages, heartbeats, and how it ended.
    async fn take_pull(
        &self,
        replies: &mut async_nats::Subscriber,
        batch: usize,
        pin: &mut Option<String>,
    ) -> Pulled {
        let mut got = 0;
        while got < batch {
            let at_hand = futures::FutureExt::now_or_never(replies.next());
            let next = match at_hand {
                Some(next) => Ok(next),
                None => {
                    // Nothing more at hand: what was taken goes to the consumer thread now.
                    if !self.hand_over() {
                        return Pulled::Gone;
                    }
                    tokio::time::timeout(PULL_EXPIRES + HEARTBEAT * 4, replies.next()).await
                }
            };
            let message = match next {
                Ok(Some(m)) => m,
                Ok(None) => return Pulled::Gone,
                // No heartbeat: the connection is down or being re-established; pull again.
                Err(_) => return Pulled::Again,
            };
            if let Some(status) = message.status {
                match status.as_u16() {
                    100 => continue,
                    404 | 408 => return Pulled::Again,
                    423 => {
                        if pin.take().is_some() {
                            let why = message
                                .description
                                .unwrap_or_else(|| "pinned to another client".into());
                            if !self.send(Event::Lost {
                                lane: self.lane.clone(),
                                why,
                            }) {
                                return Pulled::Gone;
                            }
                        }
                        return Pulled::Again;
                    }
                    code => {
                        let description = message.description.unwrap_or_default();
                        if code != 409
                            || !description.to_ascii_lowercase().contains("batch completed")
                        {
                            self.error(format!("pull answered {code} {description}"));
                            tokio::time::sleep(RETRY_AFTER).await;
                        }
                        return Pulled::Again;
                    }
                }
            }
            got += 1;
            let Some(info) = message.reply.as_deref().and_then(names::ack_info) else {
                self.error(format!(
                    "a message without an acknowledgement subject on {}",
                    message.subject
                ));
                continue;
            };
            let header_pin = message
                .headers
                .as_ref()
                .and_then(|h| h.get(PIN_NAME))
                .map(|v| v.as_str().to_owned());
            let Some(header_pin) = header_pin else {
                self.error(format!(
                    "message {} came without {PIN_HEADER}: the server ignores priority groups (nats-server 2.11 or newer is needed)",
                    info.stream_seq
                ));
                tokio::time::sleep(RETRY_AFTER).await;
                return Pulled::Again;
            };
            if pin.as_deref() != Some(header_pin.as_str()) {
                *pin = Some(header_pin.clone());
                if !self.pinned(info.stream_seq, &header_pin).await {
                    return Pulled::Gone;
                }
            }
            let ack = message.reply.clone();
            if !self.forward(message, info, ack) {
                return Pulled::Gone;
            }
        }
        if !self.hand_over() {
            return Pulled::Gone;
        }
        Pulled::Again
    }

    /// The lane is this worker's from the message at `first` on: the consumer thread opens
    /// its store and says where it starts. Everything the consumer delivered before (to this
    /// worker or to an earlier owner) is read again from the stream from there on: the
    /// server redelivers what an earlier owner left unacknowledged mixed with new messages,
    /// not before them, so the consumer's deliveries are in order only past that point.
    /// False if the consumer thread is gone.
    async fn pinned(&self, first: i64, pin: &str) -> bool {
        let (tx, rx) = oneshot::channel();
        let asked = Event::Pinned {
            lane: self.lane.clone(),
            start: tx,
        };
        if !self.send(asked) {
            return false;
        }
        // A lane whose store is being restored is told where it starts once that is done;
        // meanwhile it keeps its pin.
        let mut rx = rx;
        let next = loop {
            tokio::select! {
                answer = &mut rx => match answer {
                    Ok(next) => break next,
                    Err(_) => return false,
                },
                _ = tokio::time::sleep(self.keep_alive()) => {
                    if let Err(e) = self.pull(1, Some(pin)).await {
                        tracing::debug!(topic = %self.lane.0, lane = self.lane.1, "keep-alive pull failed: {e}");
                    }
                }
            }
        };
        let delivered = loop {
            match self
                .connection
                .delivered(&self.layout.stream, &self.consumer)
                .await
            {
                Ok(d) => break d,
                Err(e) => {
                    self.error(format!("reading its consumer's position failed (trying again in {RETRY_AFTER:?}): {e}"));
                    if self.control.stopped.load(Ordering::SeqCst) {
                        return false;
                    }
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            }
        };
        let until = first.max(delivered + 1);
        if next.is_some_and(|n| n >= until) {
            return true;
        }
        // Until it is read whole: a lane that went on past a gap would skip records.
        let mut from = next;
        loop {
            match self.replay(from, until, pin).await {
                Ok((n, _)) if n == 0 && from == next => return true,
                Ok((n, _)) => {
                    if !self.hand_over() {
                        return false;
                    }
                    tracing::info!(topic = %self.lane.0, lane = self.lane.1, from = ?next, until, messages = n, "read the lane again from its stored position up to where its consumer stands");
                    return true;
                }
                Err((e, read_up_to)) => {
                    from = read_up_to.map(|n| n + 1).or(from);
                    self.error(format!(
                        "reading the lane again from {from:?} up to {until} failed (trying again in {RETRY_AFTER:?}): {e}"
                    ));
                    if self.control.stopped.load(Ordering::SeqCst) {
                        return false;
                    }
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            }
        }
    }

    /// Sends the lane's messages from `from` (`None`: its start) up to before `until`, read
    /// with an ordered consumer: how many, and the last one's sequence. On error, the error
    /// and the last sequence sent.
    async fn replay(
        &self,
        from: Option<i64>,
        until: i64,
        pin: &str,
    ) -> Result<(usize, Option<i64>), (String, Option<i64>)> {
        let mut last = None;
        let stream = self
            .connection
            .js
            .get_stream(&self.layout.stream)
            .await
            .map_err(|e| (e.to_string(), None))?;
        let deliver_policy = match from {
            Some(n) => DeliverPolicy::ByStartSequence {
                start_sequence: n.max(1) as u64,
            },
            None => DeliverPolicy::All,
        };
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: names::lane_filter(
                    &self.layout.stream,
                    self.lane.1,
                    self.layout.partitioned,
                ),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| (e.to_string(), None))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| (e.to_string(), None))?;
        let mut sent = 0;
        // A long read must not cost the pin: the lane keeps pulling one message now and then
        // (what comes is taken after the read, in order), on its own timer, so a read that
        // waits for its next message (the ordered consumer recreating itself) pulls too.
        let mut keep_alive = tokio::time::interval(self.keep_alive());
        keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = tokio::time::sleep(REPLAY_WAIT);
        tokio::pin!(deadline);
        loop {
            let next = tokio::select! {
                biased;
                _ = keep_alive.tick() => {
                    if let Err(e) = self.pull(1, Some(pin)).await {
                        tracing::debug!(topic = %self.lane.0, lane = self.lane.1, "keep-alive pull failed: {e}");
                    }
                    continue;
                }
                () = &mut deadline => {
                    return Err((format!("no message within {REPLAY_WAIT:?}"), last));
                }
                next = messages.next() => next,
            };
            deadline
                .as_mut()
                .reset(tokio::time::Instant::now() + REPLAY_WAIT);
            let message = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err((e.to_string(), last)),
                None => return Err(("the stream's messages ended".into(), last)),
            };
            let Some(info) = message.reply.as_deref().and_then(names::ack_info) else {
                return Err(("a message without its stream sequence".into(), last));
            };
            if info.stream_seq >= until {
                return Ok((sent, last));
            }
            let done = info.pending == 0;
            if !self.forward(message.message, info, None) {
                return Ok((sent, last));
            }
            sent += 1;
            last = Some(info.stream_seq);
            if done {
                return Ok((sent, last));
            }
        }
    }

    /// Hands `message` to the consumer thread, with those taken before it once
    /// [`HAND_OVER`] are together; false if the thread is gone.
    fn forward(&self, message: Message, info: AckInfo, ack: Option<Subject>) -> bool {
        let key = names::key_of(&self.layout.stream, &message.subject);
        let delivery = Delivery::new(Arc::clone(&self.lane.0), self.lane.1, info, key, message);
        let full = {
            let mut taking = lock(&self.taking);
            taking.push(Taken {
                delivery,
                ack,
                pending: info.pending,
            });
            taking.len() >= HAND_OVER
        };
        !full || self.hand_over()
    }

    /// Hands the messages taken so far to the consumer thread; false if it is gone.
    fn hand_over(&self) -> bool {
        let taken = std::mem::take(&mut *lock(&self.taking));
        taken.is_empty() || self.events.send(Event::Messages(taken)).is_ok()
    }

    /// Sends `event` after the messages taken before it; false if the thread is gone.
    fn send(&self, event: Event) -> bool {
        self.hand_over() && self.events.send(event).is_ok()
    }
}
