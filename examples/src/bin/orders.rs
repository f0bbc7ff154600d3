//! Order totals: sums JSON orders per customer, idempotent by order id, and logs the top
//! customers every 5 seconds. With no `WEIR_BROKERS` set it runs on the embedded broker and
//! produces sample orders itself, every tenth one a redelivery. New totals go to
//! `orders-totals`; `WEIR_CHANGELOG=true` also logs the state to a changelog topic:
//!
//! ```text
//! cargo run -p weir-examples --bin orders
//! ```

use std::time::Duration;

use weir::prelude::*;
use weir_examples::orders::{totals_topic, Order, OrderTotals, Totals};
use weir_examples::sample;

const CUSTOMERS: &[&str] = &["alice", "bob", "carol", "dave", "erin"];

#[tokio::main]
async fn main() {
    sample::init_logging();
    if let Err(e) = run().await {
        tracing::error!("orders failed: {e}");
        std::process::exit(1);
    }
}

async fn run() -> weir::Result<()> {
    let worker = Worker::from_env()?.build(OrderTotals)?;
    if let Some(broker) = worker.embedded_broker() {
        // Where the handler emits new totals.
        broker.create_topic(&totals_topic("orders"), 4)?;
        tokio::spawn(sample::produce_forever(
            broker,
            "orders",
            Duration::from_millis(20),
            |i| {
                // Every tenth record redelivers the previous order: totals must not change.
                let n = if i % 10 == 9 { i - 1 } else { i };
                let order = Order {
                    order_id: format!("o{n}"),
                    cents: 100 + n % 900,
                };
                let customer = CUSTOMERS[(n % CUSTOMERS.len() as u64) as usize];
                (
                    customer.to_owned(),
                    serde_json::to_string(&order).unwrap_or_default(),
                )
            },
        ));
    }
    let stores = worker.state_dir().join(worker.group()).join("orders");
    tokio::spawn(sample::report_forever(
        stores,
        Totals::NAME,
        "top customers (cents)",
    ));
    worker.run_until_signal().await
}
