//! Test harness for weir: the brokers (Kafka's embedded mock cluster and tansu; NATS;
//! RabbitMQ; SQS), producing test data, a counting handler with fault injection, and readers of
//! partition stores.

mod broker;
mod count_handler;
mod examples;
mod fixtures;
mod http;
mod nats;
mod processes;
mod python;
mod rabbitmq;
mod readers;
mod running;
mod sqs;
mod stores;
mod waits;

pub mod outage;
pub mod own_tansu;
pub mod sasl;
pub mod tally;
pub mod tls;

pub use broker::*;
pub use count_handler::*;
pub use examples::*;
pub use fixtures::*;
pub use http::*;
pub use nats::*;
pub use processes::*;
pub use python::*;
pub use rabbitmq::*;
pub use readers::*;
pub use running::*;
pub use sqs::*;
pub use stores::*;
pub use waits::*;
