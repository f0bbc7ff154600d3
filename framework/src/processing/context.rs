//! The per-record context: typed access to the partition's state.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::{Serialize, de::DeserializeOwned};
use weir_state::wire::header;
use weir_state::{HeaderSink, PartitionStore, WriteSet};

use crate::inbound::Inbound;
use crate::processing::table::{GlobalTables, Table, TableDef};

/// What a batch's records see of their worker besides their partition: the global tables,
/// and the pipeline's group (which names repartition topics).
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    pub(crate) globals: Arc<GlobalTables>,
    /// The group of the worker, or of the pipeline the worker's stage belongs to.
    pub(crate) pipeline_group: Arc<str>,
    /// The worker's own group (a stage's `<pipeline>-<stage>`): who wrote what it emits.
    pub(crate) group: Arc<str>,
}

impl Default for Scope {
    fn default() -> Self {
        Self {
            globals: Arc::default(),
            pipeline_group: Arc::from("weir"),
            group: Arc::from("weir"),
        }
    }
}

/// The repartition topic feeding pipeline stage `stage` of the pipeline whose group is
/// `group`: `<group>-<stage>-repartition`.
pub(crate) fn repartition_topic(group: &str, stage: &str) -> String {
    format!("{group}-{stage}-repartition")
}
use crate::error::Result;
use crate::processing::time::{self, RecordTime, TimerAt, WindowDef, WindowState};

/// Where emitted records come from: a record, or the partition's clock (a timer or a window
/// closing).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source<'a> {
    Record(&'a Inbound),
    Time { topic: &'a str, partition: i32 },
}

impl Source<'_> {
    fn topic(&self) -> &str {
        match self {
            Self::Record(m) => m.topic(),
            Self::Time { topic, .. } => topic,
        }
    }

    fn partition(&self) -> i32 {
        match self {
            Self::Record(m) => m.partition(),
            Self::Time { partition, .. } => *partition,
        }
    }
}

/// What a handler can do besides reading its record: read and write keyed state, and emit
/// records to other topics.
///
/// Reads see the writes of earlier records of the same batch; writes become durable when the
/// batch commits, together with its offset. Emitted records are written to the partition's
/// outbox in that same transaction and produced after it.
#[derive(Debug)]
pub struct Ctx<'a> {
    store: &'a PartitionStore,
    scope: &'a Scope,
    writes: &'a mut WriteSet,
    source: Source<'a>,
    time: &'a mut RecordTime,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        (store, scope): (&'a PartitionStore, &'a Scope),
        writes: &'a mut WriteSet,
        source: Source<'a>,
        time: &'a mut RecordTime,
    ) -> Self {
        Self {
            store,
            scope,
            writes,
            source,
            time,
        }
    }

    /// The table `T`: the newest value per key of its topic. A co-partitioned table's
    /// partition is read up to its end before the input partition's first record and before
    /// every batch, so a record joins with every table record produced before it (and
    /// possibly later ones); a global table is current as of the worker's start, then follows
    /// its topic as it comes.
    ///
    /// ```
    /// # #[derive(serde::Serialize, serde::Deserialize)]
    /// # struct Customer { country: String }
    /// # struct Customers;
    /// # impl weir::tables::TableDef for Customers {
    /// #     const NAME: &'static str = "customers";
    /// #     const TOPIC: &'static str = "customers";
    /// #     const GLOBAL: bool = false;
    /// #     type Value = Customer;
    /// # }
    /// # fn f(ctx: &mut weir::Ctx<'_>) -> weir::Result<()> {
    /// let country = ctx.table::<Customers>().get("c1")?.map(|c| c.country);
    /// # Ok(()) }
    /// ```
    pub fn table<T: TableDef>(&self) -> Table<'_, T> {
        Table::new(self.store, self.writes, &self.scope.globals)
    }

    /// The record's event time in milliseconds since the Unix epoch (in a timer or window
    /// callback: the time it was due).
    pub fn event_time(&self) -> i64 {
        self.time.event_time()
    }

    /// The partition's watermark before this record: the largest event time seen on the
    /// partition (`None` before the first record).
    pub fn watermark(&self) -> Option<i64> {
        self.time.watermark()
    }

    /// The window store `W`, to fold this record into its windows.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # struct PerMinute;
    /// # impl weir::time::WindowDef for PerMinute {
    /// #     const NAME: &'static str = "per_minute";
    /// #     const WINDOWS: weir::time::Windows = weir::time::Windows::tumbling(Duration::from_secs(60));
    /// #     type Key = String;
    /// #     type Value = u64;
    /// # }
    /// # fn f(ctx: &mut weir::Ctx<'_>) -> weir::Result<()> {
    /// let counted = ctx.window::<PerMinute>().add("home", |n| n.unwrap_or(0) + 1)?;
    /// # Ok(()) }
    /// ```
    pub fn window<W: WindowDef>(&mut self) -> WindowState<'_, W> {
        WindowState::new(self.store, self.writes, self.time)
    }

    /// Schedules a call of [`Process::on_timer`](crate::Process::on_timer) for `key` at `at`:
    /// when the partition's watermark (event time) or the wall clock reaches it. The timer
    /// commits with the batch, survives restarts and moves with the partition; it fires once.
    /// Scheduling the same key and time again keeps one timer.
    pub fn schedule_at<K: Serialize + ?Sized>(&mut self, at: TimerAt, key: &K) -> Result<()> {
        time::schedule(self.writes, at, self.encode_key(key)?)
    }

    /// Cancels the timer for `key` at `at`, if one is scheduled.
    pub fn cancel_timer<K: Serialize + ?Sized>(&mut self, at: TimerAt, key: &K) -> Result<()> {
        let key = self.encode_key(key)?;
        time::cancel(self.writes, at, &key)
    }

    fn encode_key<K: Serialize + ?Sized>(&self, key: &K) -> Result<String> {
        serde_json::to_string(key).map_err(|e| {
            crate::error::Error::State(weir_state::Error::Codec {
                store: time::TIMERS.to_owned(),
                source: e,
            })
        })
    }

    /// Produces a record to `topic` (partitioned by key) once this record's batch commits.
    ///
    /// Delivery is at least once: a crash after the commit and before the broker's
    /// acknowledgement sends it again, and so does reprocessing after a failure elsewhere in
    /// the batch. Each emitted record carries the headers `weir.source.topic`,
    /// `weir.source.partition` and `weir.source.offset` of the record it came from, and
    /// `weir.source.seq`, its place among that record's emits, by which a consumer can drop
    /// duplicates, and `weir.source.group`, the writer; the outbox adds
    /// `weir.source.acked_below` as it sends. A weir worker downstream drops duplicates by
    /// itself (emitted from a timer or a closing window: topic and partition only, which no
    /// one de-duplicates by). If the record's processing fails, nothing it emitted is sent.
    pub fn emit(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, &[u8])],
    ) {
        // A passed-along `weir.source.acked_below` speaks for another writer: only the
        // outbox sets this writer's. weir's own (at most five) follow.
        let (topic_in, partition) = (self.source.topic(), self.source.partition());
        let group = &self.scope.group;
        // The record's emits so far (its savepoint holds only its own).
        let seq = self.writes.emitted_since_savepoint();
        let source = &self.source;
        let timestamp = Some(self.time.emit_time());
        self.writes
            .emit_with((topic, None), key, Some(value), timestamp, |all| {
                for (k, v) in headers {
                    if *k != header::SOURCE_ACKED_BELOW {
                        all.push(k, v);
                    }
                }
                match source {
                    Source::Record(m) => {
                        header::push_emitted(all, topic_in, partition, m.offset(), seq, group);
                    }
                    Source::Time { .. } => header::push_source(all, topic_in, partition, None),
                }
            });
    }

    /// Re-keys the record: emits `value` (as JSON) with `key` to the repartition topic of the
    /// pipeline stage `stage` (`<group>-<stage>-repartition`, created by the pipeline with the
    /// partition count of this stage's input), where records with the same key meet in one
    /// partition. The downstream stage applies each emit once (see [`emit`](Self::emit)).
    pub fn repartition<V: Serialize + ?Sized>(
        &mut self,
        stage: &str,
        key: &str,
        value: &V,
    ) -> Result<()> {
        let topic = repartition_topic(&self.scope.pipeline_group, stage);
        self.emit_json(&topic, Some(key.as_bytes()), value)
    }

    /// [`emit`](Self::emit) with the value serialized as JSON.
    pub fn emit_json<V: Serialize + ?Sized>(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: &V,
    ) -> Result<()> {
        let json = serde_json::to_vec(value).map_err(|e| crate::error::Error::Emit {
            topic: topic.to_owned(),
            reason: e.to_string(),
        })?;
        self.emit(topic, key, &json, &[]);
        Ok(())
    }

    /// The named keyed state store with keys `K` and values `V` (both serde, stored as JSON).
    pub fn state<K, V>(&mut self, name: &'static str) -> State<'_, K, V>
    where
        K: Serialize + ?Sized,
        V: Serialize + DeserializeOwned,
    {
        State {
            name,
            store: self.store,
            writes: self.writes,
            types: PhantomData,
        }
    }

    /// The store declared by `S`, with its key and value types checked at compile time.
    pub fn store<S: StoreDef>(&mut self) -> State<'_, S::Key, S::Value> {
        self.state(S::NAME)
    }
}

/// A named state store with fixed key and value types.
///
/// ```
/// struct Totals;
/// impl weir::StoreDef for Totals {
///     const NAME: &'static str = "totals";
///     type Key = str;
///     type Value = u64;
/// }
/// ```
pub trait StoreDef {
    /// The store's name (its rows carry it in the `store` column).
    const NAME: &'static str;
    /// The key type.
    type Key: Serialize + ?Sized;
    /// The value type.
    type Value: Serialize + DeserializeOwned + Send + 'static;
}

/// A typed view of one named store for the current batch.
#[derive(Debug)]
pub struct State<'c, K: ?Sized, V> {
    name: &'static str,
    store: &'c PartitionStore,
    writes: &'c mut WriteSet,
    types: PhantomData<fn(&K) -> V>,
}

impl<K: Serialize + ?Sized, V: Serialize + DeserializeOwned + Send + 'static> State<'_, K, V> {
    /// The current value of `key`, including this batch's earlier writes.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        Ok(self.store.get_through(self.writes, self.name, key)?)
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: &K, value: &V) -> Result<()> {
        Ok(self.writes.put(self.name, key, value)?)
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: &K) -> Result<()> {
        Ok(self.writes.delete(self.name, key)?)
    }

    /// Applies `f` to the current value (or `None`) and stores its result; `None` deletes.
    pub fn update(&mut self, key: &K, f: impl FnOnce(Option<V>) -> Option<V>) -> Result<()> {
        Ok(self.store.update_through(self.writes, self.name, key, f)?)
    }
}
