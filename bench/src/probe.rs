//! What a scenario saw and committed, and when: the probe, latency histograms, the commits watched
//! in SQLite.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a scenario has seen and committed, shared with its handler and commit watcher.
#[derive(Debug, Default)]
pub(crate) struct Probe {
    /// When the first record arrived: throughput is timed from here, so the group join does
    /// not count.
    pub(crate) first: std::sync::OnceLock<Instant>,
    /// Records processed (state possibly not yet committed).
    pub(crate) done: AtomicU64,
    /// Records whose state (and offset) is committed.
    pub(crate) committed: AtomicU64,
    /// When the last record's state was committed.
    pub(crate) last_commit: std::sync::Mutex<Option<Instant>>,
    /// Producer timestamp to state commit, ms, as a histogram (constant memory, so peak RSS
    /// measures the scenario and not the bench).
    pub(crate) latencies: std::sync::Mutex<Histogram>,
    /// Processed records not yet known committed: (offset, timestamp ms), one lock per
    /// partition (`partition % PROBE_SHARDS`), so partition tasks do not contend for it.
    pub(crate) uncommitted: [std::sync::Mutex<VecDeque<(i64, i64)>>; PROBE_SHARDS],
}

/// Partitions a scenario's handler records into without sharing a lock.
pub(crate) const PROBE_SHARDS: usize = 32;

impl Probe {
    pub(crate) fn shard(&self, partition: i32) -> &std::sync::Mutex<VecDeque<(i64, i64)>> {
        &self.uncommitted[partition.unsigned_abs() as usize % PROBE_SHARDS]
    }

    /// A record processed whose state commits later (weir: seen by [`watch_commits`]).
    pub(crate) fn processed(&self, partition: i32, offset: i64, timestamp_ms: Option<i64>) {
        self.first.get_or_init(Instant::now);
        if let Ok(mut u) = self.shard(partition).lock() {
            u.push_back((offset, timestamp_ms.unwrap_or_else(now_ms)));
        }
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    /// A record processed and committed at once (raw: nothing to commit; hand-loop: after
    /// its transaction).
    pub(crate) fn committed_now(&self, timestamp_ms: Option<i64>) {
        self.first.get_or_init(Instant::now);
        self.done.fetch_add(1, Ordering::Relaxed);
        self.commit([timestamp_ms.unwrap_or_else(now_ms)].into_iter());
    }

    pub(crate) fn commit(&self, timestamps: impl Iterator<Item = i64>) {
        let now = now_ms();
        let mut n = 0;
        if let Ok(mut l) = self.latencies.lock() {
            for ts in timestamps {
                l.record(now - ts);
                n += 1;
            }
        }
        if n > 0 {
            if let Ok(mut t) = self.last_commit.lock() {
                *t = Some(Instant::now());
            }
            self.committed.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// `partition`'s state is committed up to (excluding) `next_offset`.
    pub(crate) fn committed_upto(&self, partition: i32, next_offset: i64) {
        let mut done = Vec::new();
        if let Ok(mut q) = self.shard(partition).lock() {
            while q.front().is_some_and(|(o, _)| *o < next_offset) {
                if let Some((_, ts)) = q.pop_front() {
                    done.push(ts);
                }
            }
        }
        self.commit(done.into_iter());
    }

    /// Seconds from the first record to the last commit.
    pub(crate) fn seconds(&self) -> f64 {
        let last = self.last_commit.lock().ok().and_then(|t| *t);
        match (self.first.get(), last) {
            (Some(first), Some(last)) => last.duration_since(*first).as_secs_f64(),
            _ => 0.0,
        }
        .max(1e-9)
    }

    pub(crate) fn percentiles(&self) -> [i64; 3] {
        self.latencies
            .lock()
            .map(|h| [0.5, 0.99, 0.999].map(|q| h.quantile(q)))
            .unwrap_or_default()
    }
}

/// Latencies in log-spaced buckets 1% wide: quantiles within 1%, in constant memory.
#[derive(Debug)]
pub(crate) struct Histogram {
    pub(crate) buckets: Vec<u64>,
    pub(crate) count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        // ln(1 + 10^8 ms) * 100 < 1900.
        Self {
            buckets: vec![0; 1900],
            count: 0,
        }
    }
}

impl Histogram {
    pub(crate) fn bucket(ms: i64) -> usize {
        ((ms.max(0) as f64).ln_1p() * 100.0) as usize
    }

    pub(crate) fn record(&mut self, ms: i64) {
        let i = Self::bucket(ms).min(self.buckets.len() - 1);
        self.buckets[i] += 1;
        self.count += 1;
    }

    /// The lower edge of the bucket holding quantile `q`.
    pub(crate) fn quantile(&self, q: f64) -> i64 {
        let rank = (q * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return ((i as f64) / 100.0).exp_m1().round() as i64;
            }
        }
        0
    }
}

/// Polls the next offsets a worker stored in SQLite (every `<dir>/*/<topic>/<p>.sqlite`) and
/// tells `probe` which records are committed, until all `n` are or `stop` is set.
pub(crate) fn watch_commits(dir: &Path, topic: &str, probe: &Probe, n: u64, stop: &AtomicBool) {
    let mut conns: std::collections::HashMap<i32, rusqlite::Connection> = Default::default();
    let mut seen: std::collections::HashMap<i32, i64> = Default::default();
    // The store files are looked for every 50 ms, their offsets read every 1 ms: the watch
    // shares the cores with the worker it measures, and listing the directories and parsing
    // the query each time took 8% of a NATS worker's samples.
    let mut listed_at: Option<std::time::Instant> = None;
    while probe.committed.load(Ordering::Relaxed) < n && !stop.load(Ordering::Relaxed) {
        let list = listed_at.is_none_or(|t| t.elapsed() >= Duration::from_millis(50));
        let groups = list.then(|| std::fs::read_dir(dir));
        if list {
            listed_at = Some(std::time::Instant::now());
        }
        for group in groups.into_iter().flatten().flatten().flatten() {
            let files = std::fs::read_dir(group.path().join(topic));
            for file in files.into_iter().flatten().flatten() {
                let path = file.path();
                let Some(p) = path
                    .file_name()
                    .and_then(|f| f.to_str())
                    .and_then(|f| f.strip_suffix(".sqlite"))
                    .and_then(|p| p.parse::<i32>().ok())
                else {
                    continue;
                };
                if let std::collections::hash_map::Entry::Vacant(e) = conns.entry(p) {
                    match rusqlite::Connection::open(&path) {
                        Ok(c) => e.insert(c),
                        Err(_) => continue,
                    };
                }
            }
        }
        for (&p, conn) in &conns {
            let next: Option<i64> = conn
                .prepare_cached(
                    "SELECT next_offset FROM offsets WHERE topic = ?1 AND partition = ?2",
                )
                .and_then(|mut q| q.query_row((topic, p), |r| r.get(0)))
                .ok();
            if let Some(next) = next.filter(|next| seen.get(&p) != Some(next)) {
                seen.insert(p, next);
                probe.committed_upto(p, next);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::Histogram;

    #[test]
    pub(crate) fn histogram_quantiles_are_within_one_percent() {
        let mut h = Histogram::default();
        for ms in 1..=10_000 {
            h.record(ms);
        }
        for (q, exact) in [(0.5, 5000.0), (0.99, 9900.0)] {
            let got = h.quantile(q) as f64;
            assert!(
                (got - exact).abs() / exact <= 0.011,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }
}
