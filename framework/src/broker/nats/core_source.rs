//! Core NATS subjects (no JetStream) as the worker's [`Source`], for handlers with
//! `delivery = at_most_once`: topic `T` is the subjects `T.>` (dots in `T` as `_`), read by a
//! subscription in the group's queue group, so each message goes to one worker of the group.
//! A topic is one lane. Core NATS keeps nothing: a message published while no worker of the
//! group listens is gone, and so is one that comes while the client's buffer of a paused lane
//! is full. A lane's positions count its deliveries (the store's next offset goes on from
//! where it stood).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use async_nats::Message;
use futures::StreamExt;
use tokio::sync::Notify;

use super::Connection;
use super::names::{self, AckInfo};
use super::source::Delivery;
use crate::broker::{Assignments, Lane, Source};
use crate::error::Result;

/// A topic's subscription, as the consumer thread holds it.
struct CoreLane {
    /// The topic's stream name, the first token of its subjects.
    stream: String,
    /// The position of the lane's next delivery.
    next: i64,
    paused: Arc<AtomicBool>,
    resumed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

/// The worker's core NATS subscriptions.
pub(crate) struct CoreSource {
    connection: Connection,
    group: String,
    runtime: tokio::runtime::Handle,
    assignments: Arc<dyn Assignments>,
    messages: std_mpsc::Receiver<(Arc<str>, Message)>,
    sender: std_mpsc::Sender<(Arc<str>, Message)>,
    lanes: Mutex<HashMap<Arc<str>, CoreLane>>,
}

impl std::fmt::Debug for CoreSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreSource")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// The source of `group`'s core NATS subscriptions, telling `assignments` of its lanes.
    pub(crate) fn core_source(
        &self,
        group: &str,
        assignments: impl Assignments,
        runtime: tokio::runtime::Handle,
    ) -> CoreSource {
        let (sender, messages) = std_mpsc::channel();
        CoreSource {
            connection: self.clone(),
            group: group.to_owned(),
            runtime,
            assignments: Arc::new(assignments),
            messages,
            sender,
            lanes: Mutex::default(),
        }
    }
}

impl CoreSource {
    fn lanes(&self) -> MutexGuard<'_, HashMap<Arc<str>, CoreLane>> {
        self.lanes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_paused(&self, lane: Lane<'_>, paused: bool) {
        if let Some(l) = self.lanes().get(lane.topic) {
            l.paused.store(paused, Ordering::SeqCst);
            if !paused {
                l.resumed.notify_one();
            }
        }
    }
}

/// Forwards `subscriber`'s messages to the consumer thread, taking none while paused.
async fn forward(
    topic: Arc<str>,
    mut subscriber: async_nats::Subscriber,
    paused: Arc<AtomicBool>,
    resumed: Arc<Notify>,
    to: std_mpsc::Sender<(Arc<str>, Message)>,
) {
    loop {
        while paused.load(Ordering::SeqCst) {
            let woken = resumed.notified();
            if !paused.load(Ordering::SeqCst) {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), woken).await;
        }
        let Some(message) = subscriber.next().await else {
            return;
        };
        if to.send((Arc::clone(&topic), message)).is_err() {
            return;
        }
    }
}

impl Source for CoreSource {
    type Delivery<'s> = Delivery;

    fn subscribe(&self, topics: &[&str]) -> Result<()> {
        for topic in topics {
            let stream = names::stream_of(topic);
            let subject = format!("{stream}.>");
            let subscriber = self
                .runtime
                .block_on(
                    self.connection
                        .client
                        .queue_subscribe(subject.clone(), self.group.clone()),
                )
                .map_err(super::error)?;
            tracing::info!(%topic, %subject, queue = %self.group, "subscribed to core NATS (at most once)");
            let starts = self.assignments.assigned(&[Lane {
                topic,
                partition: 0,
            }]);
            let start = starts.first().copied().flatten();
            let key: Arc<str> = Arc::from(*topic);
            let paused = Arc::new(AtomicBool::new(start.is_some_and(|s| s.paused)));
            let resumed = Arc::new(Notify::new());
            let task = self.runtime.spawn(forward(
                Arc::clone(&key),
                subscriber,
                Arc::clone(&paused),
                Arc::clone(&resumed),
                self.sender.clone(),
            ));
            self.lanes().insert(
                key,
                CoreLane {
                    stream,
                    next: start.and_then(|s| s.next).unwrap_or(0),
                    paused,
                    resumed,
                    task,
                },
            );
        }
        if topics.is_empty() {
            self.assignments.assigned(&[]);
        }
        Ok(())
    }

    fn poll(&self, timeout: Duration) -> Option<Result<Delivery, String>> {
        let (topic, message) = self.messages.recv_timeout(timeout).ok()?;
        let (seq, key) = {
            let mut lanes = self.lanes();
            let lane = lanes.get_mut(&topic)?;
            let seq = lane.next;
            lane.next += 1;
            (seq, names::key_of(&lane.stream, &message.subject))
        };
        let info = AckInfo {
            stream_seq: seq,
            consumer_seq: seq,
            timestamp_ms: crate::wall_clock::now_ms(),
            pending: 0,
        };
        Some(Ok(Delivery::new(topic, 0, info, key, message)))
    }

    fn pause(&self, lane: Lane<'_>) -> Result<(), String> {
        self.set_paused(lane, true);
        Ok(())
    }

    fn resume(&self, lane: Lane<'_>) -> Result<(), String> {
        self.set_paused(lane, false);
        Ok(())
    }

    fn seek(&self, lane: Lane<'_>, _next: Option<i64>) -> Result<(), String> {
        Err(format!("{lane}: a core NATS subject cannot be sought"))
    }

    fn settle(&self, _done: &[(Lane<'_>, i64)]) -> Result<(), String> {
        Ok(()) // core NATS takes no acknowledgements
    }

    fn disconnected_since(&self) -> Option<Instant> {
        None
    }
}

impl Drop for CoreSource {
    fn drop(&mut self) {
        let lanes: Vec<_> = self.lanes().drain().collect();
        for (topic, lane) in lanes {
            lane.task.abort();
            self.assignments.revoked(
                &[Lane {
                    topic: &topic,
                    partition: 0,
                }],
                false,
            );
        }
    }
}
