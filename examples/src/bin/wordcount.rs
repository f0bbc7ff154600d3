//! Word count: counts the words of the `lines` topic in SQLite state and logs the top words
//! every few seconds.
//!
//! With no `WEIR_BROKERS` set it runs on the embedded broker and produces sample text itself:
//!
//! ```text
//! cargo run -p weir-examples --bin wordcount
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use weir::prelude::*;
use weir_examples::wordcount::{Counts, WordCount};

const TOPIC: &str = "lines";

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,librdkafka=warn".into()),
        )
        .init();
    if let Err(e) = run().await {
        tracing::error!("wordcount failed: {e}");
        std::process::exit(1);
    }
}

async fn run() -> weir::Result<()> {
    let worker = Worker::from_env()?.build(WordCount)?;
    if let Some(broker) = worker.embedded_broker() {
        tokio::spawn(produce_sample_text(broker));
    }
    let stores = worker.state_dir().join(worker.group()).join(TOPIC);
    tokio::spawn(report_top_words(stores));
    worker.run_until_signal().await
}

/// Logs the ten most frequent words over every partition store, every 5 seconds.
async fn report_top_words(dir: PathBuf) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let dir = dir.clone();
        let top = tokio::task::spawn_blocking(move || top_words(&dir, 10)).await;
        match top {
            Ok(Ok(top)) if !top.is_empty() => {
                let line: Vec<String> = top.iter().map(|(w, n)| format!("{w}={n}")).collect();
                tracing::info!("top words: {}", line.join(" "));
            }
            Ok(Ok(_)) => tracing::info!("no words counted yet"),
            Ok(Err(e)) => tracing::warn!("cannot read the word counts: {e}"),
            Err(e) => tracing::warn!("report task failed: {e}"),
        }
    }
}

fn top_words(dir: &std::path::Path, n: usize) -> weir::Result<Vec<(String, u64)>> {
    let mut totals: HashMap<String, u64> = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "sqlite") {
            let store = weir::state::PartitionStore::open(&path)?;
            for (word, count) in store.entries::<String, u64>(Counts::NAME)? {
                *totals.entry(word).or_default() += count;
            }
        }
    }
    let mut top: Vec<(String, u64)> = totals.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(n);
    Ok(top)
}

const SAMPLE: &[&str] = &[
    "the quick brown fox jumps over the lazy dog",
    "a stream is a log and a log is a table",
    "state counts every message exactly once even across crashes",
    "partitions run in parallel and each partition runs in order",
    "the fox and the dog share the stream",
];

/// Produces sample lines into the embedded broker, 50 a second. Holding `broker` keeps it up
/// for as long as the producer lives.
async fn produce_sample_text(broker: std::sync::Arc<weir::EmbeddedBroker>) {
    let producer: FutureProducer = match ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .create()
    {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("sample producer: {e}");
            return;
        }
    };
    tracing::info!("producing sample text into the embedded broker's `{TOPIC}` topic");
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for i in 0u64.. {
        tick.tick().await;
        let line = SAMPLE[(i % SAMPLE.len() as u64) as usize];
        let key = i.to_string();
        if let Err((e, _)) = producer
            .send(
                FutureRecord::to(TOPIC).key(&key).payload(line),
                Duration::from_secs(5),
            )
            .await
        {
            tracing::warn!("sample producer: {e}");
        }
    }
    drop(producer);
    drop(broker);
}
