//! What the worker's consumer thread, its rebalance callbacks and its partition tasks share:
//! the owned partitions and the worker's settings.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, mpsc as std_mpsc};

use tokio::sync::mpsc;
use weir_state::CacheBudget;

use crate::broker::Connection;
use crate::broker::{Lane, Source};
use crate::config::Config;
use crate::config::KeyPartitioner;
use crate::delivery::DeadLetterSink;
use crate::inbound::Inbound;
use crate::observe::metric_names::PAUSES_TOTAL;
use crate::observe::{PartitionRow, StateAnswer, WorkerView};
use crate::runtime::flow::PartitionFlow;
use crate::runtime::lifecycle::Lifecycle;
use crate::runtime::partition_task::TaskContext;
use crate::wall_clock::now_ms;

/// The consumer-thread side of one owned partition.
#[derive(Debug)]
pub(crate) struct PartitionHandle {
    pub(crate) topic: Arc<str>,
    /// The partition's store file (read by `/state/...` queries).
    pub(crate) store_path: std::path::PathBuf,
    /// Chunks of records for the partition's task.
    pub(crate) queue: mpsc::UnboundedSender<Vec<Inbound>>,
    pub(crate) flow: Arc<PartitionFlow>,
    /// Records taken from the consumer while the queue was full (or the store was still being
    /// restored), delivered first on resume.
    pub(crate) overflow: VecDeque<Inbound>,
    /// Disconnects when the partition's store is closed.
    pub(crate) closed: std_mpsc::Receiver<()>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

/// Owned partitions by topic, then partition.
pub(crate) type Owned = HashMap<String, HashMap<i32, PartitionHandle>>;

impl PartitionHandle {
    /// Pauses the partition (its queue is full, or its store is being restored).
    pub(crate) fn pause(&self, source: &impl Source, partition: i32) {
        let topic = &*self.topic;
        self.flow.set_paused(true);
        if let Err(e) = source.pause(Lane { topic, partition }) {
            tracing::warn!(%topic, partition, "pause failed: {e}");
        }
        metrics::counter!(PAUSES_TOTAL).increment(1);
        tracing::debug!(%topic, partition, "partition paused");
    }
}

#[derive(Debug)]
pub(crate) struct Shared<H> {
    pub(crate) handler: Arc<H>,
    pub(crate) config: Config,
    pub(crate) runtime: tokio::runtime::Handle,
    owned: Arc<Mutex<Owned>>,
    /// Where dead letters go.
    pub(crate) sink: DeadLetterSink,
    /// What every partition task gets.
    pub(crate) task_ctx: TaskContext,
    /// `topic/partition` of partitions taken out of `owned` whose stores are not closed yet.
    releasing: Mutex<BTreeSet<String>>,
    pub(crate) lifecycle: Arc<Lifecycle>,
    /// The memory the partitions' state caches share.
    pub(crate) cache_budget: Arc<CacheBudget>,
}

impl<H> Shared<H> {
    pub(crate) fn new(
        handler: Arc<H>,
        config: Config,
        runtime: tokio::runtime::Handle,
        sink: DeadLetterSink,
        task_ctx: TaskContext,
    ) -> Self {
        let cache_budget = CacheBudget::new(config.state_cache_mb << 20);
        Self {
            handler,
            config,
            runtime,
            owned: Arc::default(),
            sink,
            lifecycle: Arc::clone(&task_ctx.lifecycle),
            task_ctx,
            releasing: Mutex::default(),
            cache_budget,
        }
    }

    pub(crate) fn owned(&self) -> MutexGuard<'_, Owned> {
        lock(&self.owned)
    }

    /// Marks `topic/partition` as being released (its store not closed yet), or released.
    pub(crate) fn set_releasing(&self, name: String, releasing: bool) {
        let mut set = lock(&self.releasing);
        if releasing {
            set.insert(name);
        } else {
            set.remove(&name);
        }
    }

    /// `topic/partition` of every partition owned or still being released, sorted.
    pub(crate) fn unreleased(&self) -> Vec<String> {
        let mut names = lock(&self.releasing).clone();
        for (t, ps) in self.owned().iter() {
            names.extend(ps.keys().map(|p| format!("{t}/{p}")));
        }
        names.into_iter().collect()
    }
}

/// Locks a mutex whose data a panic elsewhere cannot leave inconsistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<H: crate::processing::Handler> Shared<H> {
    /// The worker as the endpoint and the progress log see it.
    pub(crate) fn view(&self) -> Arc<dyn WorkerView> {
        Arc::new(View {
            owned: Arc::clone(&self.owned),
            lifecycle: Arc::clone(&self.lifecycle),
            group: self.config.group.clone(),
            topics: self.config.topics.clone(),
            partitioner: self.config.key_partitioner,
            connection: self.task_ctx.connection.clone(),
            partition_counts: Mutex::default(),
            stores: declared_stores(&H::settings()),
        })
    }
}

struct View {
    owned: Arc<Mutex<Owned>>,
    lifecycle: Arc<Lifecycle>,
    group: String,
    topics: Vec<String>,
    partitioner: KeyPartitioner,
    /// Connection settings, to ask the brokers for partition counts.
    connection: Connection,
    /// Partition count per topic, and when it was asked.
    partition_counts: Mutex<HashMap<String, (i32, std::time::Instant)>>,
    /// The stores, windows and tables the handler declares.
    stores: Vec<&'static str>,
}

/// The names of the stores, windows and tables `settings` declare.
fn declared_stores(settings: &crate::processing::HandlerSettings) -> Vec<&'static str> {
    settings
        .stores
        .iter()
        .map(|s| s.name)
        .chain(settings.windows.iter().copied())
        .chain(settings.tables.iter().map(|t| t.name))
        .collect()
}

/// How long a topic's partition count is taken as known (a topic may get more partitions).
const PARTITION_COUNT_TTL: std::time::Duration = std::time::Duration::from_secs(60);

impl View {
    /// `topic`'s partition count, from the brokers' metadata (cached for a minute).
    fn partition_count(&self, topic: &str) -> Result<i32, String> {
        if let Some((n, at)) = lock(&self.partition_counts).get(topic) {
            if at.elapsed() < PARTITION_COUNT_TTL {
                return Ok(*n);
            }
        }
        let n = self
            .connection
            .partition_counts(std::iter::once(topic))?
            .get(topic)
            .copied()
            .flatten()
            .ok_or_else(|| format!("the brokers do not know {topic}"))?;
        lock(&self.partition_counts).insert(topic.to_owned(), (n, std::time::Instant::now()));
        Ok(n)
    }
}

impl WorkerView for View {
    fn declares_store(&self, store: &str) -> bool {
        self.stores.contains(&store)
    }

    fn state(&self, topic: Option<&str>, store: &str, key: &str) -> StateAnswer {
        let topic = match (topic, self.topics.as_slice()) {
            (Some(t), _) if self.topics.iter().any(|x| x == t) => t.to_owned(),
            (Some(t), all) => {
                return StateAnswer::Invalid(format!(
                    "this worker does not consume {t:?} (it consumes {})",
                    all.join(", ")
                ));
            }
            (None, [only]) => only.clone(),
            (None, all) => {
                return StateAnswer::Invalid(format!(
                    "say which topic with ?topic= (this worker consumes {})",
                    all.join(", ")
                ));
            }
        };
        let n = match self.partition_count(&topic) {
            Ok(n) => n,
            Err(e) => return StateAnswer::Unavailable(e),
        };
        let partition = self.partitioner.partition(key.as_bytes(), n);
        let owned = lock(&self.owned)
            .get(&topic)
            .and_then(|ps| ps.get(&partition))
            .map(|h| (h.store_path.clone(), h.flow.is_restoring()));
        let Some((path, restoring)) = owned else {
            return StateAnswer::NotOwned { topic, partition };
        };
        if restoring {
            // Its store holds part of the state until the restore ends.
            return StateAnswer::Restoring { topic, partition };
        }
        let read = weir_state::StoreReader::open(&path)
            .and_then(|r| r.get::<str, serde_json::Value>(store, key));
        match read {
            Ok(Some(value)) => StateAnswer::Found {
                topic,
                partition,
                value: value.to_string(),
            },
            Ok(None) => StateAnswer::Absent { topic, partition },
            Err(e) => StateAnswer::Unavailable(format!("{topic}/{partition}: {e}")),
        }
    }

    fn live(&self) -> bool {
        self.lifecycle.is_running()
    }

    fn not_ready(&self) -> Option<String> {
        if !self.lifecycle.is_running() {
            Some("stopping".into())
        } else if let Some(why) = self.lifecycle.unreachable() {
            Some(why)
        } else if !self.lifecycle.has_joined() {
            Some("not in the group yet".into())
        } else {
            let rows = self.partitions();
            let unreadable: Vec<String> = rows
                .iter()
                .filter_map(|r| {
                    Some(format!(
                        "{}/{}: {}",
                        r.topic,
                        r.partition,
                        r.unreadable.as_ref()?
                    ))
                })
                .collect();
            let rejected: Vec<String> = rows
                .iter()
                .filter_map(|r| {
                    let why = r.emits_rejected.as_ref()?;
                    Some(format!("{}/{}: {why}", r.topic, r.partition))
                })
                .collect();
            let mut why = Vec::new();
            if !unreadable.is_empty() {
                why.push(format!(
                    "partitions cannot be read: {}",
                    unreadable.join("; ")
                ));
            }
            if !rejected.is_empty() {
                why.push(format!(
                    "the broker rejects partitions' emits: {}",
                    rejected.join("; ")
                ));
            }
            (!why.is_empty()).then(|| why.join("; "))
        }
    }

    fn partitions(&self) -> Vec<PartitionRow> {
        let now = now_ms();
        let mut rows: Vec<PartitionRow> = lock(&self.owned)
            .iter()
            .flat_map(|(t, ps)| {
                ps.iter()
                    .map(move |(p, h)| h.flow.row(t, *p, h.overflow.len(), now))
            })
            .collect();
        rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        rows
    }

    fn groups(&self) -> Vec<String> {
        vec![self.group.clone()]
    }
}
