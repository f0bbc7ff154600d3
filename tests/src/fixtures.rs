//! What tests start from: a broker, topics and a group of their own, and test data.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::broker::{unique, BrokerKind, TestBroker};
use crate::waits::wait_until;

/// A record fails twice, 10 ms apart, before it is dead-lettered.
pub const TWO_QUICK_ATTEMPTS: weir::worker::RetryPolicy = weir::worker::RetryPolicy {
    max_attempts: 2,
    backoff: Duration::from_millis(10),
    max_backoff: Duration::from_millis(10),
};

/// What most tests start from: a broker, a topic (with its `.dlq`) and a group unique to the
/// test, and a state directory.
#[derive(Debug)]
pub struct Fixture {
    /// The broker.
    pub broker: TestBroker,
    /// The test's topic.
    pub topic: String,
    /// The test's consumer group.
    pub group: String,
    /// The state directory (removed when dropped).
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// Starts `kind`, creates a topic `<prefix>-…` with `partitions` partitions.
    pub async fn new(kind: BrokerKind, prefix: &str, partitions: i32) -> Self {
        let broker = TestBroker::start(kind);
        let (topic, group) = (unique(prefix), unique("g"));
        broker.create_topic(&topic, partitions).await;
        let dir = tempfile::tempdir().expect("tempdir");
        Self {
            broker,
            topic,
            group,
            dir,
        }
    }
}

/// `n` keyed records over `keys` distinct keys: key `k{i % keys}`, value `v{i}`.
pub fn keyed_records(start: usize, n: usize, keys: usize) -> Vec<(String, String)> {
    (start..start + n)
        .map(|i| (format!("k{}", i % keys), format!("v{i}")))
        .collect()
}

/// The per-key counts `records` should produce.
pub fn expected_counts(records: &[(String, String)]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for (k, _) in records {
        *m.entry(k.clone()).or_insert(0) += 1;
    }
    m
}

/// Partitions a handler processed records of (`CountHandler::seen_partitions`).
pub type Seen = Arc<Mutex<std::collections::BTreeSet<i32>>>;

/// Produces rounds of `per_round` keyed records into `topic` until, within one round, two
/// handlers both processed records and between them every one of its `partitions`, none by
/// both: the group has settled with both workers. Returns every record produced and the
/// partitions each handler processed in that round; the seen sets are cleared every round.
pub async fn produce_until_split(
    broker: &TestBroker,
    topic: &str,
    (seen_a, seen_b): (&Seen, &Seen),
    partitions: usize,
    per_round: usize,
) -> (Vec<(String, String)>, BTreeSet<i32>, BTreeSet<i32>) {
    let mut all = Vec::new();
    let mut split = (BTreeSet::new(), BTreeSet::new());
    wait_until(
        "both workers to process records, and every partition by one of them",
        Duration::from_secs(90),
        || {
            let sa = std::mem::take(&mut *seen_a.lock().expect("lock"));
            let sb = std::mem::take(&mut *seen_b.lock().expect("lock"));
            let settled = !sa.is_empty()
                && !sb.is_empty()
                && sa.is_disjoint(&sb)
                && sa.len() + sb.len() == partitions;
            let batch = keyed_records(all.len(), per_round, 300);
            if !settled {
                all.extend(batch.clone());
            }
            let seen = format!("in the last round A processed {sa:?}, B {sb:?}");
            split = (sa, sb);
            async move {
                if settled {
                    return Ok(());
                }
                broker.produce(topic, None, batch).await;
                Err(seen)
            }
        },
    )
    .await;
    (all, split.0, split.1)
}
