//! The progress line: per owned partition, records committed, rate and lag.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::observe::WorkerView;

/// Logs a compact line per interval, until the task is aborted.
pub(crate) async fn log_progress(view: Arc<dyn WorkerView>, every: Duration) {
    let mut last: HashMap<(String, i32), u64> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let parts: Vec<String> = view
            .partitions()
            .into_iter()
            .map(|r| {
                let before = last
                    .insert((r.topic.clone(), r.partition), r.processed)
                    .unwrap_or(0);
                let rate = r.processed.saturating_sub(before) as f64 / every.as_secs_f64();
                let lag = r.lag.map_or("?".to_owned(), |l| l.to_string());
                let state = match (r.restoring, r.paused) {
                    (true, _) => " restoring",
                    (false, true) => " paused",
                    (false, false) => "",
                };
                format!(
                    "{}/{} {} ({rate:.0}/s, lag {lag}{state})",
                    r.topic, r.partition, r.processed
                )
            })
            .collect();
        if !parts.is_empty() {
            tracing::info!("progress: {}", parts.join(" | "));
        }
    }
}
