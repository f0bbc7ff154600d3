//! Broker outages: the worker is cut off from the broker mid-stream (every connection dropped,
//! new ones refused) and recovers by itself; faults injected into the mock cluster's fetch,
//! offset-commit and heartbeat requests; a state disk that fills up. Final state is exact in
//! every case.

use std::time::Duration;

use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use weir_tests::outage::ProxiedTansu;
use weir_tests::*;

const N: usize = 40_000;

/// Starts a slow worker, waits for progress, runs `outage`, then checks the exact end state.
/// Returns the worker's `/metrics` once every record is counted.
async fn survives(broker: &TestBroker, outage: impl std::future::Future<Output = ()>) -> String {
    let (topic, group) = (unique("outage"), unique("g"));
    broker.create_topic(&topic, 4).await;
    let records = keyed_records(0, N, 300);
    broker.produce(&topic, None, records.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let handler = CountHandler {
        delay: Some(Duration::from_micros(100)),
        ..Default::default()
    };
    let worker = broker
        .worker(&group, &topic, dir.path())
        .batch_size(200)
        .metrics_addr("127.0.0.1:0")
        .build(handler)
        .expect("build");
    let addr = worker.metrics_addr().expect("metrics");
    let worker = RunningWorker::spawn(worker);
    wait_for_total(dir.path(), &group, &topic, 5_000, Duration::from_secs(60)).await;
    let before = StoredCounts::read(dir.path(), &group, &topic).total();
    outage.await;
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&records),
        Duration::from_secs(180),
    )
    .await;
    let (_, metrics) = http_get(addr, "/metrics").await;
    eprintln!(
        "{:?}: {before} of {N} counted at the outage; client errors {}, consumer errors {}, \
         Kafka commit failures {}, rebalances assign/revoke/lost {}/{}/{}, fenced {}",
        broker.kind(),
        sum(&metrics, "weir_client_errors_total"),
        sum(&metrics, "weir_consumer_errors_total"),
        sum(&metrics, "weir_kafka_commit_failures_total"),
        rebalances(&metrics, "assign"),
        rebalances(&metrics, "revoke"),
        rebalances(&metrics, "lost"),
        sum(&metrics, "weir_fenced_total"),
    );
    assert!(before < N as u64, "the outage must come mid-stream");
    worker.stop_cleanly().await;
    let s = StoredCounts::read(dir.path(), &group, &topic);
    assert_counts_exact(&s.counts, &expected_counts(&records));
    metrics
}

/// The sum of every series of `metric` (0 when absent).
fn sum(metrics: &str, metric: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.split([' ', '{']).next() == Some(metric))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |total, v| total + v)
}

fn rebalances(metrics: &str, kind: &str) -> f64 {
    sample(metrics, "weir_rebalances_total", &[("kind", kind)]).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tansu_connections_cut_for_20_seconds() {
    let tansu = ProxiedTansu::start().await;
    let broker = TestBroker::tansu_at(tansu.bootstrap());
    let metrics = survives(&broker, tansu.proxy.cut_for(Duration::from_secs(20))).await;
    let errors = sum(&metrics, "weir_client_errors_total");
    assert!(errors > 0.0, "the outage shows in weir_client_errors_total");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mock_broker_down_for_10_seconds() {
    let broker = TestBroker::start(BrokerKind::Mock);
    let mock = broker.embedded().expect("mock");
    let metrics = survives(&broker, async {
        mock.broker_down(1).expect("down");
        tokio::time::sleep(Duration::from_secs(10)).await;
        mock.broker_up(1).expect("up");
    })
    .await;
    let errors = sum(&metrics, "weir_client_errors_total");
    assert!(errors > 0.0, "the outage shows in weir_client_errors_total");
}

/// Fetch and offset-commit requests fail (fault injection): each fault shows in its metric,
/// and the state is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mock_fetch_and_commit_errors() {
    use RDKafkaRespErr::*;
    let broker = TestBroker::start(BrokerKind::Mock);
    let mock = broker.embedded().expect("mock");
    let metrics = survives(&broker, async {
        mock.inject_request_errors(RDKafkaApiKey::Fetch, &[RD_KAFKA_RESP_ERR_INVALID_MSG; 5])
            .expect("fetch errors");
        mock.inject_request_errors(
            RDKafkaApiKey::OffsetCommit,
            &[RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE; 3],
        )
        .expect("commit errors");
    })
    .await;
    assert!(
        sum(&metrics, "weir_consumer_errors_total") > 0.0,
        "the fetch errors show in weir_consumer_errors_total"
    );
    assert!(
        sum(&metrics, "weir_kafka_commit_failures_total") > 0.0,
        "the commit errors show in weir_kafka_commit_failures_total"
    );
}

/// The group coordinator forgets the worker (its heartbeat answered with UNKNOWN_MEMBER_ID):
/// the worker's assignment is lost. Its tasks are released at once, it rejoins and takes the
/// partitions again from SQLite: counts exact, and no task of the lost assignment is left to
/// be fenced by the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mock_lost_assignment_is_released_and_taken_again() {
    let broker = TestBroker::start(BrokerKind::Mock);
    let mock = broker.embedded().expect("mock");
    let metrics = survives(&broker, async {
        mock.inject_request_errors(
            RDKafkaApiKey::Heartbeat,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID],
        )
        .expect("heartbeat error");
    })
    .await;
    assert!(
        rebalances(&metrics, "lost") >= 1.0,
        "the assignment was lost"
    );
    assert!(
        rebalances(&metrics, "assign") >= 2.0,
        "the partitions were taken again"
    );
    assert_eq!(
        sum(&metrics, "weir_fenced_total"),
        0.0,
        "a task of the lost assignment was still running when the partitions came back"
    );
}

/// Unmounts the tmpfs when the test ends, however it ends.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn mount_tmpfs(dir: &std::path::Path, size: &str, remount: bool) {
    let opts = if remount {
        format!("remount,size={size}")
    } else {
        format!("size={size}")
    };
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
        .arg(dir)
        .status()
        .expect("run mount");
    assert!(
        status.success(),
        "mounting a tmpfs for the full-disk test needs root: mount {opts} failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_state_disk_commits_nothing_and_loses_nothing() {
    let broker = TestBroker::start(BrokerKind::Mock);
    let (topic, group) = (unique("full"), unique("g"));
    broker.create_topic(&topic, 4).await;
    // Distinct long keys: the state outgrows a 1 MiB disk.
    let records: Vec<(String, String)> = (0..30_000)
        .map(|i| {
            (
                format!("customer-{i:06}-with-a-long-identifier-to-fill-pages"),
                format!("v{i}"),
            )
        })
        .collect();
    broker.produce(&topic, None, records.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    mount_tmpfs(dir.path(), "1m", false);
    let _mount = Mount(dir.path().to_path_buf());

    let worker = broker
        .worker(&group, &topic, dir.path())
        .batch_size(500)
        .metrics_addr("127.0.0.1:0")
        .build(CountHandler::default())
        .expect("build");
    let addr = worker.metrics_addr().expect("metrics");
    let worker = RunningWorker::spawn(worker);
    wait_until(
        "commits failing on the full disk",
        Duration::from_secs(60),
        || async {
            let failures = sum(
                &http_get(addr, "/metrics").await.1,
                "weir_commit_failures_total",
            );
            if failures >= 2.0 {
                Ok(())
            } else {
                Err(format!("{failures} commit failures"))
            }
        },
    )
    .await;
    let stuck = StoredCounts::read(dir.path(), &group, &topic);
    assert!(stuck.total() < records.len() as u64, "{stuck:?}");
    // What is stored is exactly the records before each stored offset: counts equal offsets.
    assert_eq!(stuck.total() as i64, stuck.offsets.values().sum::<i64>());

    mount_tmpfs(dir.path(), "256m", true);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&records),
        Duration::from_secs(120),
    )
    .await;
    eprintln!(
        "full disk: {} of {} committed while full; all exact after space came back",
        stuck.total(),
        records.len()
    );
    worker.stop_cleanly().await;
}
