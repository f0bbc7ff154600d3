//! A queue's lane task: keeps several long-polling receives in flight while the lane has
//! room, and holds every message it received until it is deleted. It extends their
//! visibility before it runs out (a slow batch is not handed to another receiver meanwhile),
//! deletes them once their batch committed (`DeleteMessageBatch`; entries that fail are tried
//! again until they go, or until SQS says their receipt is stale: then the message comes again
//! and is recognised by its id), and makes what it received and did not process visible again
//! when the worker stops.
//!
//! No request waits for another: receives, deletes, extensions and depth reads are all in
//! flight at once, so a slow answer (a delete, the queue's depth) never holds back an
//! extension that is due.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry,
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;

use super::{Connection, Queue, attributes, describe};
use crate::broker::queue_message::QueueMessage;
use crate::observe::metric_names::SQS_MESSAGES;

/// How long a receive waits for messages (SQS allows up to 20 s; a stopping worker waits for
/// its receives to end).
pub(super) const RECEIVE_WAIT_SECONDS: i32 = 5;
/// Messages one receive takes at most (SQS's limit).
const PER_RECEIVE: usize = 10;
/// Entries of one batch request at most (SQS's limit).
const PER_BATCH: usize = 10;
/// Deletes a lane has in flight at once (extensions are never held back).
const DELETES_IN_FLIGHT: usize = 16;
/// How long a lane waits after a failed receive before it tries again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often a lane extends visibilities, retries deletes and reads its queue's depth, at
/// most (a queue with a short visibility timeout ticks faster: [`Extension`]).
pub(super) const TICK: Duration = Duration::from_secs(1);
/// How often a lane ticks at most.
const MIN_TICK: Duration = Duration::from_millis(100);

/// The topic and lane of a queue.
pub(super) type LaneKey = (Arc<str>, i32);

/// A message as a lane's task hands it over (not yet numbered).
pub(super) struct Taken {
    /// The lane task's number for it, which deletes name.
    pub(super) tag: u64,
    pub(super) id: Option<Box<str>>,
    pub(super) message: QueueMessage,
}

/// What a lane's task tells the consumer thread.
pub(super) enum Event {
    Message { lane: LaneKey, taken: Taken },
    Error(String),
}

/// A message a lane's task holds: received, not yet deleted.
struct Held {
    receipt: String,
    /// When its visibility was last set (its receive or extension was sent: it was set
    /// later).
    visible_from: Instant,
    /// Its batch committed: to delete.
    committed: bool,
    /// A delete of it is in flight.
    deleting: bool,
}

/// When a lane extends the visibility of what it holds: it ticks at a quarter of the queue's
/// visibility timeout (at most [`TICK`]), and extends each message whose visibility would be
/// half gone before the next tick. So an extension leaves at least half the timeout for its
/// request to reach SQS, whenever in a tick the message came.
#[derive(Clone, Copy, Debug)]
struct Extension {
    timeout: Duration,
    tick: Duration,
}

impl Extension {
    fn of(timeout: Duration) -> Self {
        Self {
            timeout,
            tick: (timeout / 4).clamp(MIN_TICK, TICK),
        }
    }

    /// A message whose visibility was set `since` ago is extended at this tick.
    fn due(&self, since: Duration) -> bool {
        since + self.tick >= self.timeout / 2
    }
}

/// A request in flight, and what it was about.
enum Request {
    /// Deletes of these messages.
    Delete(Vec<u64>),
    /// Extensions of these messages, with when their visibility was set before.
    Extend(Vec<(u64, Instant)>),
    /// A read of the queue's depth.
    Depth,
}

/// A request's answer: the entries SQS refused, or why the request failed.
struct Answer {
    request: Request,
    outcome: Result<Vec<BatchResultErrorEntry>, String>,
}

/// SQS says the receipt is stale or wrong: trying again cannot help.
fn stale(failed: &BatchResultErrorEntry) -> bool {
    failed.code() == "ReceiptHandleIsInvalid" || failed.sender_fault()
}

/// What a lane's task needs.
pub(super) struct LaneTask {
    connection: Connection,
    lane: LaneKey,
    queue: Queue,
    to: std_mpsc::Sender<Event>,
    paused: Arc<AtomicBool>,
    /// Messages ready in the queue, as last read.
    ready: Arc<AtomicI64>,
}

/// What a lane's task holds while it runs.
#[derive(Default)]
struct Holding {
    held: BTreeMap<u64, Held>,
    next_tag: u64,
    deletes_in_flight: usize,
    reading_depth: bool,
}

impl Holding {
    fn hold(&mut self, receipt: String, visible_from: Instant) -> u64 {
        self.next_tag += 1;
        self.held.insert(
            self.next_tag,
            Held {
                receipt,
                visible_from,
                committed: false,
                deleting: false,
            },
        );
        self.next_tag
    }
}

impl LaneTask {
    pub(super) fn new(
        connection: Connection,
        lane: LaneKey,
        queue: Queue,
        to: std_mpsc::Sender<Event>,
        paused: Arc<AtomicBool>,
        ready: Arc<AtomicI64>,
    ) -> Self {
        Self {
            connection,
            lane,
            queue,
            to,
            paused,
            ready,
        }
    }

    /// Receives, extends, deletes and reads the depth, until the source is dropped (its
    /// deletes' sender with it); then lets its receives and requests end, deletes what
    /// committed and makes what is still held and not committed visible again.
    pub(super) async fn run(self, mut deletes: mpsc::UnboundedReceiver<u64>) {
        let settings = &self.connection.settings;
        let mut holding = Holding::default();
        let mut receives = FuturesUnordered::new();
        let mut requests: FuturesUnordered<BoxFuture<'_, Answer>> = FuturesUnordered::new();
        let extension = Extension::of(self.queue.visibility);
        let mut tick = tokio::time::interval(extension.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while !self.paused.load(Ordering::Relaxed)
                && receives.len() < settings.receives
                && holding.held.len() + (receives.len() + 1) * PER_RECEIVE
                    <= settings.capacity.max(PER_RECEIVE)
            {
                receives.push(self.receive());
            }
            tokio::select! {
                Some((sent, received)) = receives.next(), if !receives.is_empty() => {
                    match received {
                        Ok(messages) => {
                            for m in messages {
                                let Some(receipt) = m.receipt_handle().map(str::to_owned) else {
                                    continue;
                                };
                                let tag = holding.hold(receipt, sent);
                                let (message, id) = attributes::decode(&m);
                                let taken = Taken { tag, id, message };
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
                Some(answer) = requests.next(), if !requests.is_empty() => {
                    let retry = self.settle(&mut holding, answer);
                    if retry {
                        self.delete_committed(&mut holding, &mut requests);
                    }
                }
                upto = deletes.recv() => match upto {
                    Some(upto) => {
                        for h in holding.held.range_mut(..=upto) {
                            h.1.committed = true;
                        }
                        self.delete_committed(&mut holding, &mut requests);
                    }
                    None => {
                        self.finish(holding, receives, requests).await;
                        return;
                    }
                },
                _ = tick.tick() => {
                    self.extend(&mut holding, &mut requests, extension);
                    self.delete_committed(&mut holding, &mut requests);
                    if !holding.reading_depth {
                        holding.reading_depth = true;
                        requests.push(Box::pin(async {
                            self.read_depth().await;
                            Answer { request: Request::Depth, outcome: Ok(Vec::new()) }
                        }));
                    }
                }
            }
        }
    }

    /// The end of the lane. What is held and did not commit is given back at once (its
    /// visibility was kept up to now), and so is what each receive still in flight brings
    /// (SQS answers a long poll whose caller has gone, and hides what it took), as soon as it
    /// comes: held on while the other receives end, its visibility could run out, the message
    /// go to another receiver, and a late give-back cut that receiver's visibility short. The
    /// committed messages are deleted meanwhile, and once more those that failed.
    async fn finish<'a>(
        &'a self,
        mut holding: Holding,
        mut receives: FuturesUnordered<impl std::future::Future<Output = Received>>,
        mut requests: FuturesUnordered<BoxFuture<'a, Answer>>,
    ) {
        let mut giving_back = FuturesUnordered::new();
        let unprocessed: Vec<&str> = holding
            .held
            .values()
            .filter(|h| !h.committed)
            .map(|h| h.receipt.as_str())
            .collect();
        giving_back.push(self.give_back(&unprocessed));
        holding.held.retain(|_, h| h.committed);
        self.delete_committed(&mut holding, &mut requests);
        while !(receives.is_empty() && requests.is_empty() && giving_back.is_empty()) {
            tokio::select! {
                Some((_, received)) = receives.next(), if !receives.is_empty() => {
                    let received = received.unwrap_or_default();
                    let receipts: Vec<&str> = received.iter().filter_map(|m| m.receipt_handle()).collect();
                    giving_back.push(self.give_back(&receipts));
                }
                Some(answer) = requests.next(), if !requests.is_empty() => {
                    self.settle(&mut holding, answer);
                }
                Some(()) = giving_back.next(), if !giving_back.is_empty() => {}
            }
        }
        // Rounds of deletes of those that failed, while they delete something (not forever
        // while SQS is away).
        loop {
            let before = holding.held.len();
            self.delete_committed(&mut holding, &mut requests);
            if requests.is_empty() {
                break;
            }
            while let Some(answer) = requests.next().await {
                self.settle(&mut holding, answer);
            }
            if holding.held.len() == before {
                break;
            }
        }
    }

    /// Makes the messages of these receipts visible again (sent when polled).
    fn give_back(
        &self,
        receipts: &[&str],
    ) -> impl std::future::Future<Output = ()> + Send + use<'_> {
        let receipts: Vec<(u64, &str)> = (0..).zip(receipts.iter().copied()).collect();
        let sent: Vec<_> = receipts
            .chunks(PER_BATCH)
            .map(|chunk| self.set_visibility(chunk, Duration::ZERO))
            .collect();
        async move {
            for outcome in futures::future::join_all(sent).await {
                let failure = match outcome {
                    Ok(failed) => failed.first().map(|f| f.code().to_owned()),
                    Err(e) => Some(e),
                };
                if let Some(e) = failure {
                    tracing::warn!(lane = %self.lane.0, "making unprocessed messages visible again failed ({e}); they come again after their visibility timeout");
                }
            }
        }
    }

    /// One receive: up to ten messages with all their attributes, and when it was sent (their
    /// visibility started later: counting from then errs on the safe side).
    async fn receive(&self) -> Received {
        let sent = Instant::now();
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
        let received = match received {
            Ok(r) => {
                self.connection.answered(true);
                Ok(r.messages.unwrap_or_default())
            }
            Err(e) => {
                self.connection.failed(&e);
                tokio::time::sleep(RETRY_AFTER).await;
                Err(describe(&e))
            }
        };
        (sent, received)
    }

    /// Sends deletes of the committed messages not being deleted, ten a request, while fewer
    /// than [`DELETES_IN_FLIGHT`] are in flight.
    fn delete_committed<'a>(
        &'a self,
        holding: &mut Holding,
        requests: &mut FuturesUnordered<BoxFuture<'a, Answer>>,
    ) {
        while holding.deletes_in_flight < DELETES_IN_FLIGHT {
            let chunk: Vec<(&u64, &mut Held)> = holding
                .held
                .iter_mut()
                .filter(|(_, h)| h.committed && !h.deleting)
                .take(PER_BATCH)
                .collect();
            if chunk.is_empty() {
                return;
            }
            let mut tags = Vec::with_capacity(chunk.len());
            let entries: Vec<DeleteMessageBatchRequestEntry> = chunk
                .into_iter()
                .filter_map(|(t, h)| {
                    h.deleting = true;
                    tags.push(*t);
                    DeleteMessageBatchRequestEntry::builder()
                        .id(t.to_string())
                        .receipt_handle(&h.receipt)
                        .build()
                        .ok()
                })
                .collect();
            let sent = self
                .connection
                .client
                .delete_message_batch()
                .queue_url(&self.queue.url)
                .set_entries(Some(entries))
                .send();
            holding.deletes_in_flight += 1;
            requests.push(Box::pin(async move {
                Answer {
                    request: Request::Delete(tags),
                    outcome: self.outcome(sent.await, |r| r.failed),
                }
            }));
        }
    }

    /// Sends extensions of the held messages `extension` says are due.
    fn extend<'a>(
        &'a self,
        holding: &mut Holding,
        requests: &mut FuturesUnordered<BoxFuture<'a, Answer>>,
        extension: Extension,
    ) {
        let now = Instant::now();
        let mut due: Vec<(u64, Instant, String)> = Vec::new();
        for (t, h) in &mut holding.held {
            if extension.due(now.saturating_duration_since(h.visible_from)) {
                due.push((*t, h.visible_from, h.receipt.clone()));
                h.visible_from = now;
            }
        }
        for chunk in due.chunks(PER_BATCH) {
            let entries: Vec<(u64, &str)> =
                chunk.iter().map(|(t, _, r)| (*t, r.as_str())).collect();
            let sent = self.set_visibility(&entries, extension.timeout);
            let before: Vec<(u64, Instant)> = chunk.iter().map(|(t, at, _)| (*t, *at)).collect();
            requests.push(Box::pin(async move {
                Answer {
                    request: Request::Extend(before),
                    outcome: sent.await,
                }
            }));
        }
    }

    /// Sets the visibility of up to ten messages (tag and receipt) to `timeout` from now.
    fn set_visibility(
        &self,
        messages: &[(u64, &str)],
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Vec<BatchResultErrorEntry>, String>> + Send + use<'_>
    {
        let seconds = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
        let entries: Vec<_> = messages
            .iter()
            .filter_map(|(t, receipt)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(t.to_string())
                    .receipt_handle(*receipt)
                    .visibility_timeout(seconds)
                    .build()
                    .ok()
            })
            .collect();
        let sent = self
            .connection
            .client
            .change_message_visibility_batch()
            .queue_url(&self.queue.url)
            .set_entries(Some(entries))
            .send();
        async move { self.outcome(sent.await, |r| r.failed) }
    }

    /// A batch request's entries that SQS refused (`failed` of its output), or why it failed;
    /// noted as answered or not.
    fn outcome<T, E, R>(
        &self,
        sent: Result<T, aws_sdk_sqs::error::SdkError<E, R>>,
        failed: impl FnOnce(T) -> Vec<BatchResultErrorEntry>,
    ) -> Result<Vec<BatchResultErrorEntry>, String>
    where
        E: std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        match sent {
            Ok(r) => {
                self.connection.answered(true);
                Ok(failed(r))
            }
            Err(e) => {
                self.connection.failed(&e);
                Err(describe(&e))
            }
        }
    }

    /// Takes in a request's answer. Deletes that went, or whose receipt is stale (the message
    /// comes again, and is recognised by its id), are no longer held; the rest are tried
    /// again. An extension that failed is due again at once. Says whether the answer makes
    /// room for more deletes.
    fn settle(&self, holding: &mut Holding, answer: Answer) -> bool {
        let lane = &self.lane.0;
        match answer.request {
            Request::Depth => {
                holding.reading_depth = false;
                false
            }
            Request::Delete(tags) => {
                holding.deletes_in_flight -= 1;
                let failed = match answer.outcome {
                    Ok(failed) => failed,
                    Err(e) => {
                        tracing::warn!(%lane, "deleting {} committed messages failed (tried again): {e}", tags.len());
                        for t in &tags {
                            if let Some(h) = holding.held.get_mut(t) {
                                h.deleting = false;
                            }
                        }
                        // Tried again at the next tick, not at once.
                        return false;
                    }
                };
                let mut kept = Vec::new();
                for f in &failed {
                    let Ok(t) = f.id().parse::<u64>() else {
                        continue;
                    };
                    if stale(f) {
                        tracing::warn!(%lane, "a committed message could not be deleted ({}: {}); it comes again, and is recognised by its id", f.code(), f.message().unwrap_or_default());
                    } else {
                        tracing::warn!(%lane, "deleting a committed message failed ({}); tried again", f.code());
                        kept.push(t);
                    }
                }
                for t in tags {
                    if kept.contains(&t) {
                        if let Some(h) = holding.held.get_mut(&t) {
                            h.deleting = false;
                        }
                    } else {
                        holding.held.remove(&t);
                    }
                }
                true
            }
            Request::Extend(before) => {
                let failed: Vec<u64> = match &answer.outcome {
                    Ok(failed) => {
                        if let Some(f) = failed.first() {
                            tracing::warn!(%lane, "extending the visibility of {} of {} messages failed: {}", failed.len(), before.len(), f.code());
                        }
                        failed
                            .iter()
                            .filter(|f| !stale(f))
                            .filter_map(|f| f.id().parse().ok())
                            .collect()
                    }
                    Err(e) => {
                        tracing::warn!(%lane, "extending the visibility of {} messages failed: {e}", before.len());
                        before.iter().map(|(t, _)| *t).collect()
                    }
                };
                for (t, at) in before {
                    if failed.contains(&t) {
                        if let Some(h) = holding.held.get_mut(&t) {
                            h.visible_from = h.visible_from.min(at);
                        }
                    }
                }
                false
            }
        }
    }

    /// Reads the queue's ready and in-flight counts (`/metrics`; the ready ones are lag).
    async fn read_depth(&self) {
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
        tracing::trace!(lane = %self.lane.0, ready, in_flight, "queue depth");
    }
}

/// A receive's answer, and when it was sent.
type Received = (Instant, Result<Vec<aws_sdk_sqs::types::Message>, String>);

#[cfg(test)]
mod tests {
    use super::*;

    /// Ticks at multiples of the lane's tick; a message comes at any moment of a tick: its
    /// first extension goes out with at least half its timeout left, and not before a
    /// quarter of it has gone (no request for nothing).
    #[test]
    fn a_message_is_extended_with_half_its_timeout_left_whenever_it_came() {
        for seconds in [1, 2, 5, 30, 12 * 3600] {
            let timeout = Duration::from_secs(seconds);
            let extension = Extension::of(timeout);
            for step in 0..20u32 {
                let came = extension.tick * step / 20;
                let extended_after = (1..)
                    .map(|n| extension.tick * n - came)
                    .find(|since| extension.due(*since))
                    .expect("some tick extends it");
                assert!(
                    extended_after <= timeout / 2 && extended_after >= timeout / 4,
                    "timeout {timeout:?}, tick {:?}: a message that came {came:?} into a tick \
                     was extended {extended_after:?} after it came",
                    extension.tick
                );
            }
        }
    }
}
