//! # weir
//!
//! Stream-processing workers on partitioned logs (the Kafka protocol), with keyed state in
//! local SQLite that counts every record exactly once, even across crashes and rebalances.
//!
//! A [`Worker`] joins a consumer group; each partition it owns gets its own task, which runs
//! your [`Handler`] over the partition's records in order. A batch's state writes and its
//! offset commit in ONE SQLite transaction (one database per partition); only then is the
//! offset committed to Kafka. On restart or reassignment a partition resumes after the offset
//! stored in SQLite.
//!
//! ```no_run
//! use weir::prelude::*;
//!
//! #[derive(Handler)]
//! #[handler(topic = "lines", value = Utf8, store(Counts, key = str, value = u64))]
//! struct WordCount;
//!
//! impl Process for WordCount {
//!     type Error = weir::Error;
//!
//!     async fn process(&self, line: Record<'_, String>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
//!         let mut counts = ctx.store::<Counts>();
//!         for word in line.value().split_whitespace() {
//!             counts.update(word, |n| Some(n.unwrap_or(0) + 1))?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> weir::Result<()> {
//!     // No WEIR_BROKERS set: runs on an embedded in-process broker.
//!     Worker::from_env()?.build(WordCount)?.run_until_signal().await
//! }
//! ```
//!
//! A handler can also emit records to other topics ([`Ctx::emit`]): they go through an outbox
//! in the same transaction and are produced after it, at least once. With
//! [`WorkerBuilder::changelog`] state changes are logged to a changelog topic, and a worker on
//! another machine rebuilds a partition's store from it. `docs/delivery-guarantees.md` in the
//! repository says what is exactly-once and what is at-least-once.
//!
//! Windows by event time: declare a window store (`#[handler(window(PerMinute, key = String,
//! value = u64, size_ms = 60000, grace_ms = 10000))]` or a [`WindowDef`](time::WindowDef)),
//! fold records into it with [`Ctx::window`], and receive each closed window in [`Process::on_window_closed`]. Each
//! partition's watermark (the largest event time seen) closes windows past their end plus
//! grace; late records go to `<topic>.late`; [`Ctx::schedule_at`] sets timers. Windows, timers
//! and the watermark are state, committed with the batch. `docs/time.md` in the repository
//! explains event time, watermarks, grace, lateness and idle closing.
//!
//! Test a handler without a broker with [`testing::TestKit`] (which also drives event time and
//! the wall clock); read stores from outside a worker with [`state::StoreReader`].
//!
//! The crate root holds what a handler and its `main` name (also in [`prelude`]); the rest is
//! in modules: [`time`] (windows, timers), [`tables`], [`codec`], [`worker`] (builders,
//! pipelines, delivery and retry settings), [`testing`], [`state`] (stores and wire formats)
//! and `kafka` (for tools beside the workers).
//!
//! Brokers are features: `kafka` (on by default; also the embedded broker, tables and
//! pipelines), `nats`, `rabbitmq` and `sqs`. A worker on NATS, RabbitMQ or SQS alone builds
//! without librdkafka: `weir = { version = "0.1", default-features = false, features = ["nats"] }`.
//!
//! Inside, the crate is layered: `observe` (metrics, health, progress) below `delivery`
//! (retries, dead letters, outbox, changelog restore) below `processing` (codecs, handler
//! traits, the batch runner) below `config` (every setting, declared once) below `runtime`
//! (worker, consumer thread, rebalances, flow control, partition tasks); a layer imports only
//! from itself and the layers below.

// The modules, lowest layer first; a module imports only from its own layer or lower ones.
//
// - `wall_clock`, `error`, `inbound`, `stop`: time, errors, records as the runtime holds them,
//   and a partition's stop signal.
// - `observe`: metric names, the HTTP endpoint and the progress log, reading a view of the
//   worker through a trait the runtime implements.
// - `broker`: the broker seam, and each broker's implementation (`broker/kafka/`).
// - `delivery`: what leaves a partition: retries and dead letters, the outbox, changelog
//   restore.
// - `processing`: codecs, records, handler traits, the per-record context and the batch
//   runner (one SQLite transaction per batch).
// - `config`: every setting, declared once.
// - `runtime`: the worker, its consumer thread, rebalances, flow control and partition tasks.
// - `testing`: the test kit, which runs the batch runner without a broker.
mod broker;
mod config;
mod delivery;
mod error;
mod inbound;
mod observe;
mod processing;
mod runtime;
mod stop;
mod wall_clock;

#[cfg(not(any(
    feature = "kafka",
    feature = "nats",
    feature = "rabbitmq",
    feature = "sqs"
)))]
compile_error!(
    "weir needs at least one broker: turn on its `kafka`, `nats`, `rabbitmq` or `sqs` feature"
);

#[cfg(feature = "kafka")]
pub mod kafka;
pub mod state;
pub mod testing;

/// Event time: window stores, their results, and timers (`docs/time.md`).
pub mod time {
    pub use crate::processing::{
        FiredTimer, TimerAt, Window, WindowDef, WindowResult, WindowState, Windows,
    };
}

/// Tables: the newest value per key of another topic, read by handlers (`docs/tables.md`).
pub mod tables {
    pub use crate::processing::{Table, TableDef};
}

/// Codecs of keys and values, and what an undecodable record reports.
pub mod codec {
    pub use crate::processing::{
        Codec, DecodeError, Envelope, Enveloped, Json, Raw, UndecodableRecord, Utf8,
    };
}

/// Running handlers: workers and their builders, pipelines, the embedded broker, and the
/// delivery, retry and partitioning settings.
pub mod worker {
    pub use crate::config::KeyPartitioner;
    pub use crate::delivery::RetryPolicy;
    pub use crate::processing::Delivery;
    #[cfg(feature = "kafka")]
    pub use crate::runtime::{EmbeddedBroker, Pipeline, PipelineBuilder};
    pub use crate::runtime::{Worker, WorkerBuilder};
}

pub use error::{BoxError, BrokerError, Error, Result};
pub use processing::{Codec, Ctx, Handler, Json, Process, Raw, Record, State, StoreDef, Utf8};
#[cfg(feature = "kafka")]
pub use runtime::Pipeline;
pub use runtime::{Worker, WorkerBuilder};
/// Derives [`Handler`] from a `#[handler(...)]` attribute.
pub use weir_macros::Handler;

/// What `#[derive(Handler)]` expands to (and what a hand-written `Handler` implementation
/// names): not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::processing::{HandlerSettings, KeyOf, StoreInfo, TableInfo, ValueOf};
}

/// The types a handler and its `main` need.
pub mod prelude {
    pub use crate::codec::Envelope;
    pub use crate::tables::TableDef;
    pub use crate::time::{FiredTimer, TimerAt, Window, WindowDef, WindowResult, Windows};
    pub use crate::{
        Codec, Ctx, Handler, Json, Process, Raw, Record, State, StoreDef, Utf8, Worker,
    };
}
