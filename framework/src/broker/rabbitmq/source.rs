//! RabbitMQ lane queues as the worker's [`Source`].
//!
//! Every worker of the group consumes every lane queue of its topics, with single active
//! consumer: the broker delivers a lane's messages to one of them at a time, and to the next
//! when that one's channel closes (it stopped, died, or lost its connection). The first
//! message of a lane makes it this worker's; a closed channel takes it away (lost: its
//! unacknowledged messages go back to the queue, for the next active consumer).
//!
//! A queue has no positions: a lane's positions count the deliveries it handed over, going on
//! from its store's. Settling acknowledges (`multiple`) the lane's deliveries below the
//! committed position, then makes a round trip on the channel: once it returns, the broker
//! has the acknowledgement, and those messages never come again. Deliveries carry that
//! confirmed position, so the batch forgets the ids it no longer needs to recognise
//! redeliveries (`processing::message_ids`).
//!
//! A topic that is a stream (`T`, with no exchange `T`) is one lane, read from the store's
//! position (`x-stream-offset`), its positions the stream's offsets. Single active consumer
//! needs the stream protocol for streams (RabbitMQ 3.11+), and an AMQP consumer's `exclusive`
//! flag is not enforced on them, so the broker arbitrates through a queue of the group's,
//! `<T>.<group>.owner`, with single active consumer and a token message in it (at most one
//! waits: `x-max-length` 1). Every worker consumes it on a channel of its own; the broker
//! delivers the token to the active one, which holds it unacknowledged while it owns the
//! stream; when that channel closes (a stop, a death) the token goes back and the broker
//! delivers it to the next. Acknowledgements on a stream only give the server credit.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use tokio::sync::mpsc;
use weir_state::wire::header;

use super::log_reader::{STREAM_OFFSET, integer};
use super::{Connection, lane_queue, lock};
use crate::broker::queue_message::{QueueDelivery as Delivery, QueueMessage};
use crate::broker::{Assignments, Lane, Source};
use crate::error::Result;
use crate::inbound::{Delivered, Queued};
use crate::observe::metric_names::BROKER_QUEUE_FILL_RATIO;

/// How long a lane waits after its channel failed before it consumes again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often a lane reads its queue's depth.
const DEPTH_INTERVAL: Duration = Duration::from_secs(1);
/// The fill of a length-limited lane queue past which the worker warns (past the limit the
/// broker refuses publishes), and below which it says the lane has room again.
const FILL_WARNING: f64 = 0.8;
const FILL_RELIEF: f64 = 0.7;

type LaneKey = (Arc<str>, i32);

/// A message as a lane's task hands it over (not yet numbered).
struct Taken {
    tag: u64,
    /// A stream message's offset.
    offset: Option<i64>,
    /// An end mark a read of the stream published (`weir.read_end`): not a record.
    mark: bool,
    redelivered: bool,
    message_id: Option<Box<str>>,
    message: QueueMessage,
}

impl Taken {
    fn of(d: lapin::message::Delivery) -> Self {
        let p = &d.properties;
        let (mut offset, mut key, mut mark) = (None, None, false);
        let mut headers = Vec::new();
        for (name, value) in p.headers().iter().flat_map(|h| h.inner()) {
            match name.as_str() {
                STREAM_OFFSET => offset = integer(value),
                header::READ_END => mark = true,
                // A record weir wrote to a stream (through the default exchange, so the
                // routing key is the stream's name).
                header::KEY => key = Some(super::header_bytes(value)),
                name => headers.push((name.to_owned(), Some(super::header_bytes(value)))),
            }
        }
        Self {
            tag: d.delivery_tag,
            offset,
            mark,
            redelivered: d.redelivered,
            message_id: p.message_id().as_ref().map(|m| m.as_str().into()),
            message: QueueMessage {
                timestamp_ms: p.timestamp().map(|s| (s as i64).saturating_mul(1000)),
                key: Some(key.unwrap_or_else(|| d.routing_key.as_str().as_bytes().to_vec())),
                payload: Some(d.data),
                headers,
            },
        }
    }
}

/// The exclusive queue whose holder owns stream `topic` for `group`: `<T>.<group>.owner`.
pub(super) fn owner_lock(topic: &str, group: &str) -> String {
    format!("{topic}.{group}.owner")
}

/// A stream's token, held: the channel it came on and its consumer (dropping either would let
/// the broker give the token to another worker).
struct Token {
    channel: lapin::Channel,
    consumer: lapin::Consumer,
}

/// The next event of the held token's channel (never, without one): any means it is lost.
async fn token_event(token: &mut Option<Token>) -> String {
    match token {
        Some(t) => match t.consumer.next().await {
            Some(Ok(_)) => "a second token came (the ownership queue was changed)".into(),
            Some(Err(e)) => format!("the stream's ownership channel failed: {e}"),
            None => "the stream's ownership consumer was cancelled".into(),
        },
        None => std::future::pending().await,
    }
}

/// Closes a lane's channel and, for a stream, the channel of its token, which goes back to its
/// queue for the next owner.
async fn close(channel: &lapin::Channel, token: Option<Token>, why: &str) {
    let _ = channel.close(200, why).await;
    if let Some(t) = token {
        let _ = t.channel.close(200, why).await;
    }
}

/// What a lane's task tells the consumer thread.
enum Event {
    /// The stream lane's channel of generation `generation` holds the stream's token: the
    /// lane is this worker's, and its task waits for [`Command::Start`].
    Owned { lane: LaneKey, generation: u64 },
    /// A message of the lane, from its channel of generation `generation`.
    Message {
        lane: LaneKey,
        generation: u64,
        taken: Taken,
    },
    /// The lane's channel of generation `generation` closed: its unacknowledged messages went
    /// back to the queue.
    Lost {
        lane: LaneKey,
        generation: u64,
        why: String,
    },
    /// An error of the lane's channel.
    Error(String),
}

/// What the consumer thread tells a lane's task.
enum Command {
    Ack(Ack),
    /// Consume the stream lane on the channel of `generation` from offset `from` (`None`: its
    /// first record).
    Start {
        generation: u64,
        from: Option<i64>,
    },
}

/// An acknowledgement for a lane's task to send.
struct Ack {
    generation: u64,
    tag: u64,
    /// Confirmed once the broker has it: deliveries below this position never come again.
    below: i64,
}

/// A lane as the consumer thread holds it.
struct LaneState {
    /// The generation of the channel whose messages this worker owns (`None`: not owned).
    owned: Option<u64>,
    /// The position of the next delivery handed over.
    next: i64,
    /// The position this worker's hold of the lane started at.
    hold_start: i64,
    paused: bool,
    /// Messages of a paused lane, handed over at its resume.
    held: VecDeque<Taken>,
    /// Handed-over deliveries not yet acknowledged: position and delivery tag.
    unacked: VecDeque<(i64, u64)>,
    /// The lane is a stream.
    stream: bool,
    /// A stream lane owned and not consumed yet (its store is being prepared): where its
    /// consumption is to start (`None`: the stream's first record).
    start_from: Option<Option<i64>>,
    commands: mpsc::UnboundedSender<Command>,
    /// Below this position, the broker confirmed the acknowledgements.
    confirmed: Arc<AtomicI64>,
    /// Messages ready in the queue, as last read.
    ready: Arc<AtomicI64>,
    /// Past [`FILL_WARNING`] of its length limit (and not yet back below [`FILL_RELIEF`]).
    near_full: bool,
}

/// The worker's lane queues.
pub(crate) struct RabbitSource {
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
    /// An event held back to hand over the deliveries before it first.
    held: Mutex<Option<Event>>,
    in_burst: std::sync::atomic::AtomicBool,
    watermarks_at: Mutex<Instant>,
}

impl std::fmt::Debug for RabbitSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitSource")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// The source of `group`'s lanes, telling `assignments` of them.
    pub(crate) fn source(
        &self,
        group: &str,
        assignments: impl Assignments,
        runtime: tokio::runtime::Handle,
    ) -> RabbitSource {
        let (sender, events) = std_mpsc::channel();
        RabbitSource {
            connection: self.clone(),
            group: group.to_owned(),
            runtime,
            assignments: Arc::new(assignments),
            events,
            sender,
            lanes: Mutex::default(),
            tasks: Mutex::default(),
            ready: Mutex::default(),
            held: Mutex::default(),
            in_burst: Default::default(),
            watermarks_at: Mutex::new(Instant::now()),
        }
    }
}

/// What a lane's task needs.
struct LaneTask {
    connection: Connection,
    lane: LaneKey,
    queue: String,
    /// A stream lane's ownership queue (its token makes the lane this worker's).
    owner_lock: Option<String>,
    tag: String,
    to: std_mpsc::Sender<Event>,
    confirmed: Arc<AtomicI64>,
    ready: Arc<AtomicI64>,
}

/// How a lane's task came to consume (or not). (Made once per channel: its size does not
/// matter.)
#[allow(clippy::large_enum_variant)]
enum Opened {
    /// With a stream's token.
    Consuming(lapin::Channel, lapin::Consumer, Option<Token>),
    Failed(String),
    /// The source was dropped.
    Stopped,
}

impl LaneTask {
    /// Consumes the lane's queue, on a new channel after each failure, until the source is
    /// dropped (its commands' sender with it).
    async fn run(self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let prefetch = self.connection.settings.prefetch;
        let mut generation = 0u64;
        loop {
            generation += 1;
            let (channel, mut consumer, mut token) =
                match self.open(generation, &mut commands).await {
                    Opened::Consuming(channel, consumer, token) => (channel, consumer, token),
                    Opened::Stopped => return,
                    Opened::Failed(e) => {
                        let _ = self.to.send(Event::Error(format!(
                            "{}/{}: cannot consume queue {}: {e}",
                            self.lane.0, self.lane.1, self.queue
                        )));
                        if self.wait_or_stop(&mut commands).await {
                            return;
                        }
                        continue;
                    }
                };
            let mut depth = tokio::time::interval(DEPTH_INTERVAL);
            // (A stream's depth is not its backlog: AMQP says nothing of where it ends.)
            let queue = self.owner_lock.is_none();
            let why = loop {
                tokio::select! {
                    next = consumer.next() => match next {
                        Some(Ok(d)) => {
                            let event = Event::Message {
                                lane: self.lane.clone(),
                                generation,
                                taken: Taken::of(d),
                            };
                            if self.to.send(event).is_err() {
                                return;
                            }
                        }
                        Some(Err(e)) => break e.to_string(),
                        None => break "the consumer was cancelled".to_owned(),
                    },
                    why = token_event(&mut token) => break why,
                    command = commands.recv() => match command {
                        Some(Command::Ack(a)) if a.generation == generation => {
                            let sent = channel
                                .basic_ack(a.tag, BasicAckOptions { multiple: true })
                                .await;
                            // A round trip on the channel after the acknowledgement: when it
                            // returns, the broker has it.
                            let confirmed = match sent {
                                Ok(()) => channel.basic_qos(prefetch, BasicQosOptions::default()).await,
                                Err(e) => Err(e),
                            };
                            match confirmed {
                                Ok(()) => {
                                    self.confirmed.fetch_max(a.below, Ordering::SeqCst);
                                }
                                Err(e) => break format!("acknowledging failed: {e}"),
                            }
                        }
                        Some(_) => {} // for a closed channel: those messages come again
                        None => {
                            close(&channel, token, "stopping").await;
                            return;
                        }
                    },
                    _ = depth.tick(), if queue => {
                        let declared = channel
                            .queue_declare(
                                &self.queue,
                                QueueDeclareOptions { passive: true, ..Default::default() },
                                FieldTable::default(),
                            )
                            .await;
                        match declared {
                            Ok(q) => self.ready.store(i64::from(q.message_count()), Ordering::Relaxed),
                            Err(e) => break format!("reading the queue's depth failed: {e}"),
                        }
                    }
                }
            };
            close(&channel, token, "lost").await;
            let _ = self.to.send(Event::Lost {
                lane: self.lane.clone(),
                generation,
                why,
            });
            if self.wait_or_stop(&mut commands).await {
                return;
            }
        }
    }

    /// A channel consuming the lane: a queue's at once; a stream's once the broker gave this
    /// worker the stream's token and the consumer thread said where to start.
    async fn open(
        &self,
        generation: u64,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Opened {
        let token = match &self.owner_lock {
            None => None,
            Some(lock) => match self.take_token(lock, commands).await {
                Ok(Some(token)) => Some(token),
                Ok(None) => return Opened::Stopped,
                Err(e) => return Opened::Failed(format!("waiting for the stream's token: {e}")),
            },
        };
        let channel = match self.connection.channel().await {
            Ok(c) => c,
            Err(e) => return Opened::Failed(e),
        };
        let prefetch = self.connection.settings.prefetch;
        if let Err(e) = channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
        {
            return Opened::Failed(e.to_string());
        }
        let mut args = FieldTable::default();
        if self.owner_lock.is_some() {
            let owned = Event::Owned {
                lane: self.lane.clone(),
                generation,
            };
            if self.to.send(owned).is_err() {
                return Opened::Stopped;
            }
            let from = loop {
                match commands.recv().await {
                    Some(Command::Start {
                        generation: g,
                        from,
                    }) if g == generation => break from,
                    Some(_) => {} // of an earlier channel
                    None => {
                        close(&channel, token, "stopping").await;
                        return Opened::Stopped;
                    }
                }
            };
            let from = match from {
                Some(offset) => AMQPValue::LongLongInt(offset),
                None => AMQPValue::LongString("first".into()),
            };
            args.insert(STREAM_OFFSET.into(), from);
        }
        match channel
            .basic_consume(&self.queue, &self.tag, BasicConsumeOptions::default(), args)
            .await
        {
            Ok(consumer) => Opened::Consuming(channel, consumer, token),
            Err(e) => Opened::Failed(e.to_string()),
        }
    }

    /// Waits, on a channel of its own, until the broker delivers the stream's token from its
    /// ownership queue `lock` (declared, with a token put in, first); `None` if the source was
    /// dropped first.
    async fn take_token(
        &self,
        lock: &str,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Result<Option<Token>, String> {
        let channel = self.connection.channel().await?;
        let e = |e: lapin::Error| e.to_string();
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("classic".into()),
        );
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(lock, durable, args)
            .await
            .map_err(e)?;
        let put = channel
            .basic_publish(
                "",
                lock,
                lapin::options::BasicPublishOptions::default(),
                b"token",
                lapin::BasicProperties::default().with_delivery_mode(super::PERSISTENT),
            )
            .await;
        put.map_err(e)?;
        channel
            .basic_qos(1, BasicQosOptions::default())
            .await
            .map_err(e)?;
        let mut consumer = channel
            .basic_consume(
                lock,
                &format!("{}-token", self.tag),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(e)?;
        loop {
            tokio::select! {
                first = consumer.next() => return match first {
                    Some(Ok(_)) => Ok(Some(Token { channel, consumer })),
                    Some(Err(err)) => Err(err.to_string()),
                    None => Err("the consumer was cancelled".into()),
                },
                command = commands.recv() => if command.is_none() {
                    let _ = channel.close(200, "stopping").await;
                    return Ok(None);
                },
            }
        }
    }

    /// Waits [`RETRY_AFTER`], dropping commands (their channel is gone); true if the source
    /// was dropped meanwhile.
    async fn wait_or_stop(&self, commands: &mut mpsc::UnboundedReceiver<Command>) -> bool {
        let wait = tokio::time::sleep(RETRY_AFTER);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => return false,
                command = commands.recv() => if command.is_none() { return true },
            }
        }
    }
}

impl RabbitSource {
    fn state(&self) -> MutexGuard<'_, HashMap<LaneKey, LaneState>> {
        lock(&self.lanes)
    }

    /// Numbers `taken` as the lane's next delivery (a stream's message: at its offset).
    fn number(key: &LaneKey, state: &mut LaneState, taken: Taken) -> Delivery {
        let position = taken.offset.filter(|_| state.stream).unwrap_or(state.next);
        state.next = position + 1;
        state.unacked.push_back((position, taken.tag));
        if state.stream {
            // A log's record: behind the stored position it is dropped by its offset.
            return Delivery::logged(Arc::clone(&key.0), key.1, position, taken.message);
        }
        let queued = Queued {
            id: taken.message_id,
            redelivered: taken.redelivered,
            settled_below: state.confirmed.load(Ordering::SeqCst),
            hold_start: state.hold_start,
            keep_ids_for: None,
        };
        Delivery::new(Arc::clone(&key.0), key.1, position, taken.message, queued)
    }

    /// A message of a lane: the first of a lane not owned makes it this worker's. `None`: it
    /// is held (its lane is paused) or dropped (its channel is gone).
    fn take(&self, lane: LaneKey, generation: u64, taken: Taken) -> Option<Delivery> {
        if taken.mark {
            return None; // (acknowledged with the records after it)
        }
        let (owned, stream) = self
            .state()
            .get(&lane)
            .map_or((None, false), |s| (s.owned, s.stream));
        match owned {
            Some(g) if g == generation => {}
            Some(_) => return None, // of a closed channel: it comes again
            None if stream => return None, // (a stream's lane is owned before it delivers)
            None => self.assign(&lane, generation),
        }
        let mut lanes = self.state();
        let state = lanes.get_mut(&lane)?;
        if state.owned != Some(generation) {
            return None;
        }
        if state.paused {
            state.held.push_back(taken);
            return None;
        }
        Some(Self::number(&lane, state, taken))
    }

    fn assign(&self, key: &LaneKey, generation: u64) {
        let lane = Lane {
            topic: &key.0,
            partition: key.1,
        };
        if self.state().get(key).is_some_and(|s| s.stream) {
            tracing::info!(%lane, "this worker owns the stream (the broker gave it the stream's token)");
        } else {
            tracing::info!(%lane, "the broker made this worker the lane's active consumer");
        }
        let start = self
            .assignments
            .assigned(&[lane])
            .first()
            .copied()
            .flatten();
        if let Some(state) = self.state().get_mut(key) {
            state.owned = Some(generation);
            state.next = start.and_then(|s| s.next).unwrap_or(0);
            state.hold_start = state.next;
            state.paused = start.is_some_and(|s| s.paused);
            state.held.clear();
            state.unacked.clear();
            state.confirmed.store(0, Ordering::SeqCst);
            if state.stream {
                state.start_from = Some(start.and_then(|s| s.next));
                Self::start_stream(state);
            }
        }
    }

    /// Has an owned stream lane that is not paused (its store is ready) start consuming.
    fn start_stream(state: &mut LaneState) {
        if state.paused {
            return;
        }
        if let (Some(from), Some(generation)) = (state.start_from, state.owned) {
            state.start_from = None;
            let _ = state.commands.send(Command::Start { generation, from });
        }
    }

    fn lose(&self, key: &LaneKey, generation: u64, why: &str) {
        let owned = self.state().get(key).and_then(|s| s.owned);
        if owned != Some(generation) {
            return;
        }
        let lane = Lane {
            topic: &key.0,
            partition: key.1,
        };
        tracing::warn!(%lane, "lane lost (its channel closed: {why}); its unacknowledged messages go to the next active consumer");
        self.assignments.revoked(&[lane], true);
        if let Some(state) = self.state().get_mut(key) {
            state.owned = None;
            state.start_from = None;
            state.held.clear();
            state.unacked.clear();
        }
        lock(&self.ready).retain(|d| (d.topic(), d.partition()) != (&*key.0, key.1));
    }

    /// Sends the acknowledgement of `state`'s deliveries below `next`.
    fn ack_below(state: &mut LaneState, next: i64) {
        let mut last = None;
        while state.unacked.front().is_some_and(|(p, _)| *p < next) {
            last = state.unacked.pop_front();
        }
        if let (Some((_, tag)), Some(generation)) = (last, state.owned) {
            let _ = state.commands.send(Command::Ack(Ack {
                generation,
                tag,
                below: next,
            }));
        }
    }

    fn update_watermarks(&self) {
        {
            let mut at = lock(&self.watermarks_at);
            if at.elapsed() < DEPTH_INTERVAL {
                return;
            }
            *at = Instant::now();
        }
        let mut lanes = self.state();
        self.assignments.watermarks(&|lane| {
            let s = lanes.get(&(Arc::from(lane.topic), lane.partition))?;
            // Lag is what waits: handed over and not acknowledged, held, and ready in the queue.
            let high = s.next + s.held.len() as i64 + s.ready.load(Ordering::Relaxed);
            Some((0, high))
        });
        if let Some(limit) = self.connection.settings.max_length {
            for ((topic, lane), s) in lanes.iter_mut() {
                if s.owned.is_some() && !s.stream {
                    Self::watch_fill(topic, *lane, s, limit);
                }
            }
        }
    }

    /// Shows how full a length-limited lane queue is, warning before the broker refuses
    /// publishes to it.
    fn watch_fill(topic: &Arc<str>, lane: i32, s: &mut LaneState, limit: u32) {
        let ready = s.ready.load(Ordering::Relaxed);
        let fill = ready as f64 / f64::from(limit.max(1));
        metrics::gauge!(BROKER_QUEUE_FILL_RATIO, "topic" => Arc::clone(topic), "partition" => lane.to_string())
            .set(fill);
        let lane = Lane {
            topic,
            partition: lane,
        };
        if !s.near_full && fill >= FILL_WARNING {
            s.near_full = true;
            tracing::warn!(%lane, ready, limit, "the lane's queue is {:.0}% full: past its length limit the broker refuses what is published to it", fill * 100.0);
        } else if s.near_full && fill < FILL_RELIEF {
            s.near_full = false;
            tracing::info!(%lane, ready, limit, "the lane's queue has room again");
        }
    }
}

impl Source for RabbitSource {
    type Delivery<'s> = Delivery;

    fn subscribe(&self, topics: &[&str]) -> Result<()> {
        for topic in topics {
            let lanes = self.connection.lanes_of(topic).unwrap_or(1);
            let stream = self.connection.is_stream(topic);
            for lane in 0..lanes {
                let key: LaneKey = (Arc::from(*topic), lane);
                let queue = if stream {
                    (*topic).to_owned()
                } else {
                    lane_queue(topic, lane)
                };
                let (commands, commands_rx) = mpsc::unbounded_channel();
                let confirmed = Arc::new(AtomicI64::new(0));
                let ready = Arc::new(AtomicI64::new(0));
                let task = LaneTask {
                    connection: self.connection.clone(),
                    lane: key.clone(),
                    tag: format!("weir-{}-{queue}", self.group),
                    owner_lock: stream.then(|| owner_lock(topic, &self.group)),
                    queue,
                    to: self.sender.clone(),
                    confirmed: Arc::clone(&confirmed),
                    ready: Arc::clone(&ready),
                };
                self.state().insert(
                    key,
                    LaneState {
                        owned: None,
                        next: 0,
                        hold_start: 0,
                        paused: false,
                        held: VecDeque::new(),
                        unacked: VecDeque::new(),
                        stream,
                        start_from: None,
                        near_full: false,
                        commands,
                        confirmed,
                        ready,
                    },
                );
                lock(&self.tasks).push(self.runtime.spawn(task.run(commands_rx)));
            }
            if stream {
                tracing::info!(%topic, group = %self.group, "reading the stream once the broker gives this worker its token (single active consumer on the stream's ownership queue)");
            } else {
                tracing::info!(%topic, lanes, group = %self.group, "consuming the topic's lane queues (single active consumer)");
            }
        }
        // Nothing is owned until the broker delivers: the worker has joined.
        self.assignments.assigned(&[]);
        Ok(())
    }

    fn poll(&self, timeout: Duration) -> Option<Result<Delivery, String>> {
        if let Some(Event::Lost {
            lane,
            generation,
            why,
        }) = lock(&self.held).take()
        {
            self.lose(&lane, generation, &why);
        }
        if let Some(d) = lock(&self.ready).pop_front() {
            self.in_burst.store(true, Ordering::Relaxed);
            return Some(Ok(d));
        }
        self.update_watermarks();
        let deadline = Instant::now() + timeout;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let Ok(event) = self.events.recv_timeout(wait) else {
                self.in_burst.store(false, Ordering::Relaxed);
                return None;
            };
            match event {
                Event::Message {
                    lane,
                    generation,
                    taken,
                } => {
                    if let Some(d) = self.take(lane, generation, taken) {
                        self.in_burst.store(true, Ordering::Relaxed);
                        return Some(Ok(d));
                    }
                }
                Event::Owned { lane, generation } => self.assign(&lane, generation),
                Event::Error(e) => return Some(Err(e)),
                // The deliveries handed over so far go to their lane's task first.
                event @ Event::Lost { .. } if self.in_burst.swap(false, Ordering::Relaxed) => {
                    *lock(&self.held) = Some(event);
                    return None;
                }
                Event::Lost {
                    lane,
                    generation,
                    why,
                } => self.lose(&lane, generation, &why),
            }
        }
    }

    fn pause(&self, lane: Lane<'_>) -> Result<(), String> {
        if let Some(s) = self
            .state()
            .get_mut(&(Arc::from(lane.topic), lane.partition))
        {
            s.paused = true;
        }
        Ok(())
    }

    fn resume(&self, lane: Lane<'_>) -> Result<(), String> {
        let key: LaneKey = (Arc::from(lane.topic), lane.partition);
        let mut lanes = self.state();
        if let Some(s) = lanes.get_mut(&key) {
            s.paused = false;
            Self::start_stream(s);
            let held: Vec<Taken> = s.held.drain(..).collect();
            let mut ready = lock(&self.ready);
            for taken in held {
                ready.push_back(Self::number(&key, s, taken));
            }
        }
        Ok(())
    }

    /// A queue cannot be read from a position: the lane's deliveries are numbered from `next`
    /// on (a restore's position). A stream lane not consumed yet starts at `next`.
    fn seek(&self, lane: Lane<'_>, next: Option<i64>) -> Result<(), String> {
        if let Some(s) = self
            .state()
            .get_mut(&(Arc::from(lane.topic), lane.partition))
        {
            if s.stream && s.start_from.is_some() {
                s.start_from = Some(next);
                return Ok(());
            }
            if s.unacked.is_empty() && !s.stream {
                s.next = next.unwrap_or(0);
                s.hold_start = s.next;
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
                Self::ack_below(s, *next);
            }
        }
        Ok(())
    }

    fn disconnected_since(&self) -> Option<Instant> {
        self.connection.disconnected_since()
    }
}

impl Drop for RabbitSource {
    /// Releases the owned lanes (their tasks finish their batches), acknowledges what they
    /// committed, and closes the channels, so the broker makes another consumer active.
    fn drop(&mut self) {
        let owned: Vec<LaneKey> = self
            .state()
            .iter()
            .filter(|(_, s)| s.owned.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        let lanes: Vec<Lane<'_>> = owned
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
                    Self::ack_below(s, next);
                }
            }
            // Dropping the senders ends each task once its acknowledgements are sent.
            state.clear();
        }
        let tasks: Vec<_> = lock(&self.tasks).drain(..).collect();
        self.runtime.block_on(async move {
            for t in tasks {
                if tokio::time::timeout(Duration::from_secs(5), t)
                    .await
                    .is_err()
                {
                    tracing::warn!("a lane's channel did not close within 5 s");
                }
            }
        });
    }
}
