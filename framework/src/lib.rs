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
//! Test a handler without a broker with [`testing::TestKit`].

mod batch;
mod codec;
mod config;
mod consumer_loop;
mod context;
mod dead_letter;
mod embedded_broker;
mod error;
mod handler;
mod inbound;
mod metric_names;
mod metrics_server;
mod outbox;
mod partition_task;
mod rebalance;
mod record;
mod restore;
mod shared;
mod worker;

pub mod testing;

pub use codec::{Codec, DecodeError, Envelope, Enveloped, Json, Raw, UndecodableRecord, Utf8};
pub use context::{Ctx, State, StoreDef};
pub use dead_letter::{DeadLetter, DeadLetterReason, RetryPolicy};
pub use embedded_broker::EmbeddedBroker;
pub use error::{Error, Result};
pub use handler::{
    BoxError, Delivery, Handler, HandlerSettings, KeyOf, Process, StoreInfo, ValueOf,
};
pub use record::Record;
/// Derives [`Handler`] from a `#[handler(...)]` attribute.
pub use weir_macros::Handler;
pub use weir_state::OutboxRecord;
pub use worker::{Worker, WorkerBuilder};

/// The SQLite partition stores, for reading state outside a handler (reports, tests, SQL).
pub use weir_state as state;

/// The types a handler and its `main` need.
pub mod prelude {
    pub use crate::{
        Codec, Ctx, Envelope, Handler, Json, Process, Raw, Record, State, StoreDef, Utf8, Worker,
    };
}
