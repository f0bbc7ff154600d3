//! What the worker's consumer thread, its rebalance callbacks and its partition tasks share.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, MutexGuard};

use rdkafka::message::OwnedMessage;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::partition_task::{Control, PartitionFlow};
use crate::Error;

/// The consumer-thread side of one owned partition.
#[derive(Debug)]
pub(crate) struct PartitionHandle {
    pub(crate) queue: mpsc::Sender<OwnedMessage>,
    pub(crate) flow: Arc<PartitionFlow>,
    /// Records taken from the consumer while the queue was full, delivered first on resume.
    pub(crate) overflow: VecDeque<OwnedMessage>,
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
    pub(crate) owned: Mutex<Owned>,
    pub(crate) control: std_mpsc::Sender<Control>,
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
    ) -> Self {
        Self {
            handler,
            config,
            runtime,
            owned: Mutex::default(),
            control,
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
