//! Orders enriched with their customer's country (a table), re-keyed by country (a
//! repartition topic), and revenue per country, in one process: a two-stage pipeline. With no
//! `WEIR_BROKERS` set it runs on the embedded broker, produces sample customers (one in ten
//! orders comes from an unknown customer, which goes to `orders.unmatched`) and orders itself,
//! and logs the totals every 5 seconds:
//!
//! ```text
//! cargo run -p weir-examples --bin enrich
//! ```

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use weir::prelude::*;
use weir_examples::enrich::{
    self, Customer, Order, Revenue, CUSTOMERS_TOPIC, GROUP, ORDERS_TOPIC, OUTPUT_TOPIC,
    REVENUE_STAGE, UNMATCHED_TOPIC,
};
use weir_examples::sample;

const COUNTRIES: &[&str] = &["FR", "DE", "IT", "ES", "NL", "BE", "PL"];
const CUSTOMERS: u64 = 50;

#[tokio::main]
async fn main() {
    sample::init_logging();
    if let Err(e) = run().await {
        tracing::error!("enrich failed: {e}");
        std::process::exit(1);
    }
}

async fn run() -> weir::Result<()> {
    let builder = Worker::builder().group(GROUP).with_env()?;
    let pipeline = enrich::pipeline(builder).build()?;
    if let Some(broker) = pipeline.embedded_broker() {
        broker.create_topic(OUTPUT_TOPIC, 4)?;
        broker.create_topic(UNMATCHED_TOPIC, 4)?;
        produce_customers(broker.bootstrap_servers()).await?;
        tokio::spawn(sample::produce_forever(
            broker,
            ORDERS_TOPIC,
            Duration::from_millis(20),
            |i| {
                // One order in ten comes from a customer the table does not know.
                let customer = if i % 10 == 9 {
                    CUSTOMERS + i % 5
                } else {
                    i % CUSTOMERS
                };
                let order = Order {
                    order_id: format!("o{i}"),
                    amount_cents: 100 + (i % 17) as i64 * 25,
                };
                (
                    format!("c{customer}"),
                    serde_json::to_string(&order).unwrap_or_default(),
                )
            },
        ));
    }
    let stage = pipeline.stage_state_dir(REVENUE_STAGE);
    let stores = stage.join(pipeline.repartition_topic(REVENUE_STAGE));
    tokio::spawn(sample::report_forever(
        stores,
        Revenue::NAME,
        "revenue by country (cents)",
    ));
    pipeline.run_until_signal().await
}

/// The sample customers, before any order.
async fn produce_customers(bootstrap: &str) -> weir::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|e| weir::BrokerError::new("kafka", e))?;
    for c in 0..CUSTOMERS {
        let customer = Customer {
            country: COUNTRIES[(c % COUNTRIES.len() as u64) as usize].to_owned(),
        };
        let (key, value) = (
            format!("c{c}"),
            serde_json::to_string(&customer).unwrap_or_default(),
        );
        let record = FutureRecord::to(CUSTOMERS_TOPIC).key(&key).payload(&value);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| weir::BrokerError::new("kafka", e))?;
    }
    tracing::info!(customers = CUSTOMERS, "sample customers produced");
    Ok(())
}
