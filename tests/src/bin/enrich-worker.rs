//! A worker process running the `enrich` example's two-stage pipeline, configured by `WEIR_*`
//! variables, with its stage 1 input and table topics from `ENRICH_ORDERS_TOPIC` and
//! `ENRICH_CUSTOMERS_TOPIC` (`ENRICH_WORKER_DELAY_US` slows every record of both stages;
//! `ENRICH_JOIN_CHANGELOG=false` turns stage 1's changelog off); the pipeline's kill test
//! SIGKILLs and restarts it.

use std::time::Duration;

use weir::__private::{KeyOf, ValueOf};
use weir::prelude::*;
use weir_examples::enrich::{
    Customers, JoinCustomers, RevenueByCountry, JOIN_STAGE, REVENUE_STAGE,
};

/// A handler slowed down so that kills land while records are in flight.
struct Slow<H> {
    handler: H,
    delay: Option<Duration>,
}

impl<H: Handler> Handler for Slow<H> {
    type Key = H::Key;
    type Value = H::Value;

    fn settings() -> weir::__private::HandlerSettings {
        H::settings()
    }
}

impl<H: Process> Process for Slow<H> {
    type Error = H::Error;

    async fn process(
        &self,
        record: Record<'_, ValueOf<Self>, KeyOf<Self>>,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), H::Error> {
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        self.handler.process(record, ctx).await
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,librdkafka=warn".into()),
        )
        .init();
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let (orders, customers) = (var("ENRICH_ORDERS_TOPIC"), var("ENRICH_CUSTOMERS_TOPIC"));
    let delay = std::env::var("ENRICH_WORKER_DELAY_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_micros);
    let join_changelog = std::env::var("ENRICH_JOIN_CHANGELOG")
        .ok()
        .map(|v| v == "true");
    let result = async {
        Worker::from_env()?
            .pipeline()
            .stage_with(
                JOIN_STAGE,
                Slow {
                    handler: JoinCustomers,
                    delay,
                },
                move |b| {
                    let b = b.topic(orders).table_topic::<Customers>(customers);
                    match join_changelog {
                        Some(on) => b.changelog(on),
                        None => b,
                    }
                },
            )
            .repartitioned_stage(
                REVENUE_STAGE,
                Slow {
                    handler: RevenueByCountry,
                    delay,
                },
            )
            .build()?
            .run_until_signal()
            .await
    }
    .await;
    if let Err(e) = result {
        eprintln!("enrich-worker: {e}");
        std::process::exit(1);
    }
}
