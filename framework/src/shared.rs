//! What the worker's consumer thread, its rebalance callbacks and its partition tasks share.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::config::Config;
use crate::dead_letter::DeadLetterSink;
use crate::inbound::Inbound;
use crate::outbox::OutboxSink;
use crate::partition_task::{Control, PartitionFlow};
use crate::Error;

/// The consumer-thread side of one owned partition.
#[derive(Debug)]
pub(crate) struct PartitionHandle {
    pub(crate) topic: Arc<str>,
    /// Chunks of records for the partition's task; `flow.queued` counts the records in it.
    pub(crate) queue: mpsc::UnboundedSender<Vec<Inbound>>,
    pub(crate) flow: Arc<PartitionFlow>,
    /// Records taken from the consumer while the queue was full, delivered first on resume.
    pub(crate) overflow: VecDeque<Inbound>,
    /// Disconnects when the partition's store is closed.
    pub(crate) closed: std_mpsc::Receiver<()>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

/// Owned partitions by topic, then partition.
pub(crate) type Owned = HashMap<String, HashMap<i32, PartitionHandle>>;

#[derive(Debug)]
pub(crate) struct Shared<H> {
    pub(crate) handler: Arc<H>,
    pub(crate) config: Config,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) owned: Arc<Mutex<Owned>>,
    pub(crate) control: std_mpsc::Sender<Control>,
    /// Where dead letters go.
    pub(crate) sink: DeadLetterSink,
    /// Where emitted records and changelog entries go.
    pub(crate) outbox: OutboxSink,
    /// The bootstrap servers (the embedded broker's too), for restore consumers.
    pub(crate) brokers: String,
    /// `topic/partition` of partitions taken out of `owned` whose stores are not closed yet.
    pub(crate) releasing: Mutex<std::collections::BTreeSet<String>>,
    /// True while the consumer thread runs and no stop was requested.
    pub(crate) running: Arc<AtomicBool>,
    /// Set once the first assignment arrived: the worker is in the group.
    pub(crate) joined: Arc<AtomicBool>,
    /// Graceful stop requested.
    pub(crate) stop: AtomicBool,
    /// The worker was dropped without a graceful stop: abort tasks, commit nothing more.
    pub(crate) abandon: AtomicBool,
    fatal: Mutex<Option<Error>>,
}

impl<H> Shared<H> {
    pub(crate) fn new(
        handler: Arc<H>,
        config: Config,
        runtime: tokio::runtime::Handle,
        control: std_mpsc::Sender<Control>,
        sink: DeadLetterSink,
        outbox: OutboxSink,
        brokers: String,
    ) -> Self {
        Self {
            handler,
            config,
            runtime,
            owned: Arc::default(),
            joined: Arc::default(),
            releasing: Mutex::default(),
            running: Arc::new(AtomicBool::new(true)),
            control,
            sink,
            outbox,
            brokers,
            stop: AtomicBool::new(false),
            abandon: AtomicBool::new(false),
            fatal: Mutex::new(None),
        }
    }

    pub(crate) fn owned(&self) -> MutexGuard<'_, Owned> {
        self.owned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn observed(&self) -> crate::metrics_server::Observed {
        crate::metrics_server::Observed {
            owned: Arc::clone(&self.owned),
            joined: Arc::clone(&self.joined),
            running: Arc::clone(&self.running),
            queue_capacity: self.config.queue_capacity,
        }
    }

    /// `topic/partition` of every partition owned or still being released, sorted.
    pub(crate) fn unreleased(&self) -> Vec<String> {
        let mut names: std::collections::BTreeSet<String> = self
            .releasing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for (t, ps) in self.owned().iter() {
            names.extend(ps.keys().map(|p| format!("{t}/{p}")));
        }
        names.into_iter().collect()
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.abandon.load(Ordering::SeqCst)
    }

    /// Records an error that stops the worker (the first one wins).
    pub(crate) fn fail(&self, error: Error) {
        tracing::error!("worker stopping: {error}");
        let mut fatal = self
            .fatal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        fatal.get_or_insert(error);
        self.stop.store(true, Ordering::SeqCst);
    }

    pub(crate) fn take_fatal(&self) -> Option<Error> {
        self.fatal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// Locks the owned-partitions map (a panic elsewhere cannot leave it inconsistent).
pub(crate) fn lock_owned(owned: &Mutex<Owned>) -> MutexGuard<'_, Owned> {
    owned
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
