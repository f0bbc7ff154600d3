//! Helpers of the example binaries: sample data for the embedded broker, and reading the
//! partition stores for periodic reports.

use std::collections::HashMap;
use std::hash::Hash;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::de::DeserializeOwned;

/// Produces `record(i)` = (key, value) into `topic` of the embedded broker every `every`.
/// Holding `broker` keeps it up for as long as the producer lives.
pub async fn produce_forever(
    broker: Arc<weir::worker::EmbeddedBroker>,
    topic: &'static str,
    every: Duration,
    record: impl Fn(u64) -> (String, String),
) {
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
    tracing::info!("producing sample records into the embedded broker's `{topic}` topic");
    let mut tick = tokio::time::interval(every);
    for i in 0u64.. {
        tick.tick().await;
        let (key, value) = record(i);
        let rec = FutureRecord::to(topic).key(&key).payload(&value);
        if let Err((e, _)) = producer.send(rec, Duration::from_secs(5)).await {
            tracing::warn!("sample producer: {e}");
        }
    }
    drop(producer);
    drop(broker);
}

/// The `n` largest values of the named store, summed by key over every partition store in
/// `dir` (one `<partition>.sqlite` per partition).
pub fn top_entries<K, V>(dir: &Path, store: &str, n: usize) -> weir::Result<Vec<(K, V)>>
where
    K: DeserializeOwned + Eq + Hash + Ord,
    V: DeserializeOwned + Ord + Copy + std::ops::Add<Output = V> + Default,
{
    let mut totals: HashMap<K, V> = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "sqlite") {
            let partition = weir::state::StoreReader::open(&path)?;
            for (k, v) in partition.entries::<K, V>(store)? {
                let t = totals.entry(k).or_default();
                *t = *t + v;
            }
        }
    }
    let mut top: Vec<(K, V)> = totals.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(n);
    Ok(top)
}

/// Logs `top_entries` of the named store every 5 seconds as `label: k=v k=v ...`.
pub async fn report_forever(dir: std::path::PathBuf, store: &'static str, label: &'static str) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let dir = dir.clone();
        let top =
            tokio::task::spawn_blocking(move || top_entries::<String, u64>(&dir, store, 10)).await;
        match top {
            Ok(Ok(top)) if !top.is_empty() => {
                let line: Vec<String> = top.iter().map(|(k, v)| format!("{k}={v}")).collect();
                tracing::info!("{label}: {}", line.join(" "));
            }
            Ok(Ok(_)) => tracing::info!("{label}: nothing yet"),
            Ok(Err(e)) => tracing::warn!("cannot read {store}: {e}"),
            Err(e) => tracing::warn!("report task failed: {e}"),
        }
    }
}

/// Logs to stderr with `RUST_LOG` (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,librdkafka=warn".into()),
        )
        .init();
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
