//! For tools beside the workers on Kafka (such as the `weir` command): how a worker connects.

pub use crate::runtime::connection_from_env;
