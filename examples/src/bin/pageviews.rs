//! Page views per minute by event time: tumbling 60 s windows with 10 s grace, one result per
//! page and window to `pageviews-per-minute` when the window closes, late views to
//! `pageviews.late`. With no `WEIR_BROKERS` set it runs on the embedded broker and produces
//! sample views itself, with event times running faster than the clock (one second per
//! record), some out of order within the grace period and some late, and logs each closed
//! window:
//!
//! ```text
//! cargo run -p weir-examples --bin pageviews
//! ```

use std::time::Duration;

use weir::prelude::*;
use weir_examples::pageviews::{PageView, PageViews, INPUT_TOPIC, OUTPUT_TOPIC};
use weir_examples::sample;

const PAGES: &[&str] = &["/", "/pricing", "/docs", "/blog", "/signup"];

#[tokio::main]
async fn main() {
    sample::init_logging();
    if let Err(e) = run().await {
        tracing::error!("pageviews failed: {e}");
        std::process::exit(1);
    }
}

async fn run() -> weir::Result<()> {
    let worker = Worker::from_env()?.build(PageViews)?;
    if let Some(broker) = worker.embedded_broker() {
        broker.create_topic(OUTPUT_TOPIC, 4)?;
        // Event time starts at a minute boundary an hour ago and moves one second per record.
        let start = (weir_examples::sample::now_ms() / 60_000 - 60) * 60_000;
        tokio::spawn(sample::produce_forever(
            broker,
            INPUT_TOPIC,
            Duration::from_millis(20),
            move |i| {
                let page = PAGES[(i % PAGES.len() as u64) as usize];
                let mut ts_ms = start + i as i64 * 1_000;
                if i % 7 == 3 {
                    // Out of order, within the grace period: still counted.
                    ts_ms -= 5_000;
                }
                if i % 40 == 39 {
                    // Three minutes behind: its window is closed, so it goes to the late topic.
                    ts_ms -= 180_000;
                }
                let view = PageView {
                    page: page.to_owned(),
                    user: format!("user{}", i % 13),
                    ts_ms,
                };
                (
                    page.to_owned(),
                    serde_json::to_string(&view).unwrap_or_default(),
                )
            },
        ));
    }
    worker.run_until_signal().await
}
