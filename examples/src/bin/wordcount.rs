//! Word count: counts the words of the `lines` topic in SQLite state and logs the top words
//! every 5 seconds. With no `WEIR_BROKERS` set it runs on the embedded broker and produces
//! sample text itself:
//!
//! ```text
//! cargo run -p weir-examples --bin wordcount
//! ```

use std::time::Duration;

use weir::prelude::*;
use weir_examples::sample;
use weir_examples::wordcount::{Counts, WordCount};

const SAMPLE: &[&str] = &[
    "the quick brown fox jumps over the lazy dog",
    "a stream is a log and a log is a table",
    "state counts every message exactly once even across crashes",
    "partitions run in parallel and each partition runs in order",
    "the fox and the dog share the stream",
];

#[tokio::main]
async fn main() {
    sample::init_logging();
    if let Err(e) = run().await {
        tracing::error!("wordcount failed: {e}");
        std::process::exit(1);
    }
}

async fn run() -> weir::Result<()> {
    let worker = Worker::from_env()?.build(WordCount)?;
    if let Some(broker) = worker.embedded_broker() {
        tokio::spawn(sample::produce_forever(
            broker,
            "lines",
            Duration::from_millis(20),
            |i| {
                (
                    i.to_string(),
                    SAMPLE[(i % SAMPLE.len() as u64) as usize].to_owned(),
                )
            },
        ));
    }
    let stores = worker.state_dir().join(worker.group()).join("lines");
    tokio::spawn(sample::report_forever(stores, Counts::NAME, "top words"));
    worker.run_until_signal().await
}
