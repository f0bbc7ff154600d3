//! A test kit: run a handler over records without a broker, then inspect its state.
//!
//! It drives the same batch code as the runtime (decode, handler, one SQLite transaction per
//! batch), on stores in a temporary directory: the role of Kafka Streams' TopologyTestDriver.
//!
//! ```
//! use weir::prelude::*;
//! use weir::testing::TestKit;
//!
//! struct Lengths;
//! impl Handler for Lengths {
//!     type Key = Utf8;
//!     type Value = Utf8;
//! }
//! impl Process for Lengths {
//!     type Error = weir::Error;
//!     async fn process(&self, rec: Record<'_, String, String>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
//!         ctx.state::<str, usize>("len").put(rec.key(), &rec.value().len())
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let mut kit = TestKit::new(Lengths)?;
//! kit.send("a", "hello").send("b", "hi");
//! assert_eq!(kit.run().await?, 2);
//! assert_eq!(kit.get::<str, usize>("len", "a")?, Some(5));
//! # Ok::<(), weir::Error>(())
//! # }).unwrap();
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Serialize, de::DeserializeOwned};
use weir_state::PartitionStore;

pub use weir_state::{Headers, OutboxRecord};

use crate::config::Config;
pub use crate::delivery::{DeadLetter, DeadLetterReason};
use crate::delivery::{DeadLetterSink, OutboxSink};
use crate::error::{Error, Result};
use crate::inbound::Inbound;
use crate::processing::batch::{BatchError, BatchRunner, BatchTime, Mode, Outcome};
use crate::processing::table;
use crate::processing::time;
use crate::processing::{Process, Scope, TableDef, Window, WindowDef};
use crate::wall_clock::now_ms;
use weir_state::CacheBudget;

/// An open window of `W` as [`TestKit::open_windows`] lists it: key, window, aggregate.
pub type OpenWindow<W> = (<W as WindowDef>::Key, Window, <W as WindowDef>::Value);

/// Runs a handler over records given in the test, with real SQLite stores and no broker.
#[derive(Debug)]
pub struct TestKit<H> {
    handler: Arc<H>,
    dir: PathBuf,
    remove_dir: bool,
    default_topic: String,
    batch_size: usize,
    config: Config,
    sink: DeadLetterSink,
    outbox: OutboxSink,
    emitted: Arc<std::sync::Mutex<Vec<OutboxRecord>>>,
    dead_letters: Arc<std::sync::Mutex<Vec<DeadLetter>>>,
    partitions: BTreeMap<(String, i32), PartitionLog>,
    /// The wall clock the kit's batches see (ms since the epoch); `None`: the real one.
    wall_clock: Option<i64>,
    scope: Scope,
}

#[derive(Debug, Default)]
struct PartitionLog {
    records: Vec<Inbound>,
    /// Index of the first record not yet processed.
    processed: usize,
    store: Option<Arc<PartitionStore>>,
}

impl<H: Process> TestKit<H> {
    /// A kit with stores in a fresh temporary directory, removed when the kit is dropped.
    pub fn new(handler: H) -> Result<Self> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "weir-testkit-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let mut kit = Self::in_dir(handler, &dir)?;
        kit.remove_dir = true;
        Ok(kit)
    }

    /// A kit with stores in `dir` (kept afterwards, e.g. to open them with `sqlite3`).
    pub fn in_dir(handler: H, dir: impl AsRef<Path>) -> Result<Self> {
        let settings = H::settings();
        let mut config = Config::default();
        config.apply_handler(&settings);
        let dead_letters = Arc::new(std::sync::Mutex::new(Vec::new()));
        let emitted = Arc::new(std::sync::Mutex::new(Vec::new()));
        let scope = Scope {
            group: Arc::from(config.group.as_str()),
            ..Scope::default()
        };
        Ok(Self {
            handler: Arc::new(handler),
            dir: dir.as_ref().to_path_buf(),
            remove_dir: false,
            default_topic: settings.topics.first().unwrap_or(&"test").to_string(),
            batch_size: config.batch_size,
            sink: DeadLetterSink::Memory(Arc::clone(&dead_letters)),
            outbox: OutboxSink::Memory(Arc::clone(&emitted)),
            emitted,
            dead_letters,
            config,
            partitions: BTreeMap::new(),
            wall_clock: None,
            scope,
        })
    }

    /// The consumer group the handler runs as (default: the handler's, else `weir`): what its
    /// emits name as their writer (`weir.source.group`).
    pub fn group(mut self, group: &str) -> Self {
        self.config.group = group.to_owned();
        self.scope.group = Arc::from(group);
        self
    }

    /// Records per batch (default: the handler's, else 1000).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Attempts per failing record before it is dead-lettered (0: `run` returns the first
    /// failure instead).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.config.retry.max_attempts = n;
        self
    }

    /// Dead-letter topic template, or `None` to turn dead letters off (then `run` returns the
    /// error of a record that exhausted its attempts).
    pub fn dead_letter_topic(mut self, template: Option<&str>) -> Self {
        self.config.dead_letter_topic = template.map(str::to_owned);
        self
    }

    /// Keep per-key order across dead letters.
    pub fn keep_key_order(mut self, keep: bool) -> Self {
        self.config.keep_key_order = keep;
        self
    }

    /// Takes event time from this top-level field of JSON values, as
    /// [`WorkerBuilder::event_time_field`](crate::WorkerBuilder::event_time_field) does.
    pub fn event_time_field(mut self, name: &str) -> Self {
        self.config.event_time_field = Some(name.to_owned());
        self
    }

    /// Log state changes to the changelog topic (`<group>-<topic>-changelog`); its entries
    /// then show in [`emitted`](Self::emitted).
    pub fn changelog(mut self, on: bool) -> Self {
        self.config.changelog = on;
        self
    }

    /// The records the handler emitted (`ctx.emit`), and changelog entries when the changelog
    /// is on, as they would have been produced after each batch commit, in order.
    pub fn emitted(&self) -> Vec<OutboxRecord> {
        self.emitted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The records dead-lettered so far, in order.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead_letters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Appends a record with `key` and `value` to partition 0 of the handler's first topic.
    pub fn send(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut Self {
        let topic = self.default_topic.clone();
        self.send_to(&topic, 0, Some(key.as_ref()), Some(value.as_ref()), &[])
    }

    /// Appends a record with Kafka timestamp `timestamp_ms` (its event time, unless the
    /// handler takes event time from the value) to partition 0 of the handler's first topic.
    pub fn send_at(
        &mut self,
        timestamp_ms: i64,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> &mut Self {
        let topic = self.default_topic.clone();
        self.append(
            &topic,
            0,
            timestamp_ms,
            Some(key.as_ref()),
            Some(value.as_ref()),
            &[],
        )
    }

    /// Processes what is pending, then sets `key` of table `T` to `value` (`None`: a
    /// tombstone), as a record of its topic would: in partition 0, the partition
    /// [`send`](Self::send) uses, or in the worker-wide global table.
    pub async fn update_table<T: TableDef>(
        &mut self,
        key: &str,
        value: Option<&T::Value>,
    ) -> Result<()> {
        self.run().await?;
        let value = value
            .map(|v| {
                serde_json::to_vec(v).map_err(|e| {
                    Error::State(weir_state::Error::Codec {
                        store: T::NAME.to_owned(),
                        source: e,
                    })
                })
            })
            .transpose()?;
        let (_, key, value) = table::entry(T::NAME, Some(key.as_bytes()), value.as_deref())
            .map_err(|e| Error::Table {
                topics: vec![T::TOPIC.to_owned()],
                message: e.to_string(),
            })?;
        if T::GLOBAL {
            self.scope.globals.apply(T::NAME, key, value);
        } else {
            let topic = self.default_topic.clone();
            let (store, _) = self.runner(&topic, 0)?;
            store.apply_unlogged(&[(T::NAME.to_owned(), key, value)])?;
        }
        Ok(())
    }

    /// Sets the wall clock the kit's batches see (ms since the epoch): wall-clock timers due
    /// by then fire at the next [`run`](Self::run) or [`advance_watermark`](Self::advance_watermark).
    /// Until it is set, the kit uses the real clock.
    pub fn set_wall_clock(&mut self, now_ms: i64) -> &mut Self {
        self.wall_clock = Some(now_ms);
        self
    }

    /// Moves the kit's wall clock forward by `ms` (from the real clock if it was not set).
    pub fn advance_wall_clock(&mut self, ms: i64) -> &mut Self {
        let now = self.wall_clock.unwrap_or_else(now_ms);
        self.wall_clock = Some(now.saturating_add(ms));
        self
    }

    /// Processes what is pending, then moves every partition's watermark to at least
    /// `watermark_ms`, as an idle partition's clock would, closing the windows and firing the
    /// event-time timers that makes due (and the wall-clock timers due by the kit's clock).
    pub async fn advance_watermark(&mut self, watermark_ms: i64) -> Result<()> {
        self.run().await?;
        self.run_clock(Some(watermark_ms)).await
    }

    /// Processes what is pending, then fires what the kit's wall clock made due (wall-clock
    /// timers) in every partition, without records.
    pub async fn tick(&mut self) -> Result<()> {
        self.run().await?;
        self.run_clock(None).await
    }

    /// The watermark of `topic`/`partition`: the largest event time it has seen (or that
    /// [`advance_watermark`](Self::advance_watermark) gave it).
    pub fn watermark(&self, topic: &str, partition: i32) -> Result<Option<i64>> {
        match self.store_of(topic, partition) {
            Some(s) => time::watermark(s, &weir_state::WriteSet::default()),
            None => Ok(None),
        }
    }

    /// The open (not yet closed) windows of `W` over all partitions: key, window, aggregate,
    /// in the store's order.
    pub fn open_windows<W: WindowDef>(&self) -> Result<Vec<OpenWindow<W>>> {
        let mut out = Vec::new();
        for s in self.stores() {
            if W::WINDOWS.is_session() {
                for (key, sessions) in s.entries::<W::Key, Vec<(i64, i64, W::Value)>>(W::NAME)? {
                    for (start_ms, end_ms, v) in sessions {
                        out.push((
                            serde_json::from_value(serde_json::to_value(&key).map_err(codec)?)
                                .map_err(codec)?,
                            Window { start_ms, end_ms },
                            v,
                        ));
                    }
                }
            } else {
                for ((key, start_ms), v) in s.entries::<(W::Key, i64), W::Value>(W::NAME)? {
                    let end_ms = W::WINDOWS.end_of(start_ms);
                    out.push((key, Window { start_ms, end_ms }, v));
                }
            }
        }
        Ok(out)
    }

    /// The records emitted to `topic` so far, in order (e.g. the late topic `orders.late`).
    pub fn emitted_to(&self, topic: &str) -> Vec<OutboxRecord> {
        self.emitted()
            .into_iter()
            .filter(|r| r.topic == topic)
            .collect()
    }

    /// Appends a record whose value is `value` as JSON.
    pub fn send_json<T: Serialize>(&mut self, key: impl AsRef<[u8]>, value: &T) -> &mut Self {
        let json = serde_json::to_vec(value).unwrap_or_else(|e| format!("{e}").into_bytes());
        self.send(key, json)
    }

    /// Appends a record to `topic`/`partition`; its offset is the partition's next, its
    /// timestamp the kit's wall clock.
    pub fn send_to(
        &mut self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, &[u8])],
    ) -> &mut Self {
        let now = self.wall_clock.unwrap_or_else(now_ms);
        self.append(topic, partition, now, key, value, headers)
    }

    /// Appends a record with Kafka timestamp `timestamp_ms` to `topic`/`partition`.
    pub fn append(
        &mut self,
        topic: &str,
        partition: i32,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, &[u8])],
    ) -> &mut Self {
        let log = self
            .partitions
            .entry((topic.to_owned(), partition))
            .or_default();
        let headers: Vec<(&str, Option<&[u8]>)> =
            headers.iter().map(|(k, v)| (*k, Some(*v))).collect();
        log.records.push(Inbound::new(
            std::sync::Arc::from(topic),
            partition,
            log.records.len() as i64,
            Some(timestamp_ms),
            key,
            value,
            &headers,
        ));
        self
    }

    /// Processes every record not yet processed, in batches, partition by partition, under the
    /// handler's retry and dead-letter policy (retries without waiting; dead letters are kept
    /// in memory, see [`dead_letters`](Self::dead_letters)). Returns how many records were
    /// taken. A failure that would be retried forever (no attempt limit, or no dead-letter
    /// topic) stops it with the error instead, with nothing of that batch committed; a later
    /// `run` retries it.
    pub async fn run(&mut self) -> Result<usize> {
        let mut done = 0;
        let keys: Vec<(String, i32)> = self.partitions.keys().cloned().collect();
        for (topic, partition) in keys {
            let (store, runner) = self.runner(&topic, partition)?;
            loop {
                let log = &self.partitions[&(topic.clone(), partition)];
                if log.processed >= log.records.len() {
                    break;
                }
                let end = (log.processed + self.batch_size).min(log.records.len());
                let clock = BatchTime {
                    now_ms: self.wall_clock.unwrap_or_else(now_ms),
                    ..BatchTime::now()
                };
                let batch = &log.records[log.processed..end];
                let taken = batch.len();
                self.run_batch(&runner, &store, batch, clock, (&topic, partition))
                    .await?;
                done += taken;
                if let Some(log) = self.partitions.get_mut(&(topic.clone(), partition)) {
                    log.processed = end;
                }
            }
        }
        Ok(done)
    }

    /// Runs a batch without records in every partition: the clock moves (to `watermark` at
    /// least, and the kit's wall clock).
    async fn run_clock(&mut self, watermark: Option<i64>) -> Result<()> {
        let keys: Vec<(String, i32)> = self.partitions.keys().cloned().collect();
        for (topic, partition) in keys {
            let (store, runner) = self.runner(&topic, partition)?;
            let next_offset = store.next_offset(&topic, partition)?.unwrap_or(0);
            let clock = BatchTime {
                now_ms: self.wall_clock.unwrap_or_else(now_ms),
                idle_watermark: watermark,
                next_offset,
            };
            self.run_batch(&runner, &store, &[], clock, (&topic, partition))
                .await?;
        }
        Ok(())
    }

    /// The store of `topic`/`partition` (opened on first use) and a batch runner over it.
    #[allow(clippy::type_complexity)]
    fn runner(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<(Arc<PartitionStore>, BatchRunner<H, PartitionStore>)> {
        let log = self
            .partitions
            .entry((topic.to_owned(), partition))
            .or_default();
        let store = match &log.store {
            Some(s) => Arc::clone(s),
            None => {
                let path = self.dir.join(topic).join(format!("{partition}.sqlite"));
                // Cached as in a worker, so tests see what a worker does.
                let budget = CacheBudget::new(self.config.state_cache_mb << 20);
                let s = Arc::new(PartitionStore::open(path)?.with_cache(budget));
                log.store = Some(Arc::clone(&s));
                s
            }
        };
        let runner = BatchRunner::new(
            Arc::clone(&self.handler),
            Arc::clone(&store),
            (Arc::from(topic), partition),
            self.config.policy_for(topic),
            self.sink.clone(),
            Mode::TestKit,
        )
        .with_scope(self.scope.clone());
        Ok((store, runner))
    }

    /// Runs one batch to its commit and sends its outbox; a failure that would be retried
    /// for ever is returned.
    async fn run_batch(
        &self,
        runner: &BatchRunner<H, PartitionStore>,
        store: &Arc<PartitionStore>,
        batch: &[Inbound],
        clock: BatchTime,
        (topic, partition): (&str, i32),
    ) -> Result<()> {
        match runner.run_until_committed(batch, clock).await {
            Outcome::Committed(..) => {
                self.outbox.flush(store).await.map_err(|e| Error::Emit {
                    topic: topic.to_owned(),
                    reason: e.to_string(),
                })?;
                Ok(())
            }
            Outcome::GaveUp(BatchError::Record { offset, error, .. }) => Err(Error::Record {
                topic: topic.to_owned(),
                partition,
                offset,
                source: error,
            }),
            Outcome::GaveUp(BatchError::Commit(e) | BatchError::Unencodable(e)) => {
                Err(Error::State(e))
            }
            Outcome::GaveUp(BatchError::Bookkeeping(e)) => Err(e),
            Outcome::GaveUp(BatchError::CommitPanicked(message)) => Err(Error::Panic {
                context: format!("committing a batch of {topic}/{partition}"),
                message,
            }),
            Outcome::Stopped => Err(Error::Panic {
                context: format!("running a batch of {topic}/{partition}"),
                message: "the test kit's batch stopped".into(),
            }),
        }
    }

    /// The committed value of `key` in the named store, from whichever partition holds it.
    pub fn get<K: Serialize + ?Sized, V: DeserializeOwned>(
        &self,
        store: &str,
        key: &K,
    ) -> Result<Option<V>> {
        for s in self.stores() {
            if let Some(v) = s.get(store, key)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// Every committed entry of the named store, over all partitions.
    pub fn entries<K: DeserializeOwned + Ord, V: DeserializeOwned>(
        &self,
        store: &str,
    ) -> Result<BTreeMap<K, V>> {
        let mut out = BTreeMap::new();
        for s in self.stores() {
            out.extend(s.entries::<K, V>(store)?);
        }
        Ok(out)
    }

    /// The next offset committed for `topic`/`partition`.
    pub fn committed_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>> {
        match self.store_of(topic, partition) {
            Some(s) => Ok(s.next_offset(topic, partition)?),
            None => Ok(None),
        }
    }

    fn store_of(&self, topic: &str, partition: i32) -> Option<&Arc<PartitionStore>> {
        self.partitions
            .get(&(topic.to_owned(), partition))
            .and_then(|l| l.store.as_ref())
    }

    fn stores(&self) -> impl Iterator<Item = &Arc<PartitionStore>> {
        self.partitions.values().filter_map(|l| l.store.as_ref())
    }
}

impl<H> Drop for TestKit<H> {
    fn drop(&mut self) {
        if self.remove_dir {
            for log in self.partitions.values_mut() {
                log.store = None;
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn codec(source: serde_json::Error) -> Error {
    Error::State(weir_state::Error::Codec {
        store: "window".to_owned(),
        source,
    })
}
