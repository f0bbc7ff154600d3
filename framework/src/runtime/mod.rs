//! Running a worker: its builder, the consumer thread, its side of rebalances, flow control
//! and the partition tasks, its broker clients' settings and the topics it needs.

mod admin;
mod builder;
mod client;
mod consumer;
mod flow;
mod lifecycle;
mod partition_task;
mod pipeline;
mod rebalance;
mod shared;
mod signals;
mod stages;
mod tables;
mod worker;

pub use crate::broker::kafka::EmbeddedBroker;
pub use builder::WorkerBuilder;
pub use client::connection_from_env;
pub(crate) use client::producer_from_env;
pub use pipeline::{Pipeline, PipelineBuilder};
pub use worker::Worker;
