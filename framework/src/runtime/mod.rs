//! Running a worker: its builder, the consumer thread, its side of rebalances, flow control
//! and the partition tasks, its broker clients' settings and the topics it needs.

mod admin;
mod builder;
mod client;
mod consumer;
mod flow;
mod lifecycle;
mod partition_task;
#[cfg(feature = "kafka")]
mod pipeline;
mod rebalance;
mod shared;
mod signals;
#[cfg(feature = "kafka")]
mod stages;
#[cfg(feature = "kafka")]
mod tables;
mod worker;

#[cfg(feature = "kafka")]
pub use crate::broker::kafka::EmbeddedBroker;
pub use builder::WorkerBuilder;
#[cfg(feature = "kafka")]
pub use client::connection_from_env;
#[cfg(feature = "kafka")]
pub(crate) use client::producer_from_env;
#[cfg(feature = "kafka")]
pub use pipeline::{Pipeline, PipelineBuilder};
pub use worker::Worker;
