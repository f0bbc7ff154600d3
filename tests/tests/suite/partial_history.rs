//! A partition with no stored state whose first records were deleted by retention would fold
//! only part of its history into state: the worker refuses it, naming the partition and the
//! option that accepts it; with `allow_partial_history` it counts exactly what is left.
//!
//! Mock cluster only: it drops a partition's oldest records past 5 MiB, as retention does;
//! tansu keeps everything.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use weir_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_missing_its_first_records_is_refused_unless_allowed() {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(BrokerKind::Mock, "partial", 1).await;
    let padding = "x".repeat(1000);
    let records: Vec<(String, String)> = (0..7_000)
        .map(|i| (format!("k{}", i % 50), format!("v{i}-{padding}")))
        .collect();
    broker.produce(&topic, Some(0), records.clone()).await;
    let probe: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .expect("client");
    let (low, high) = probe
        .fetch_watermarks(&topic, 0, Duration::from_secs(10))
        .expect("watermarks");
    eprintln!("partition 0 holds offsets {low}..{high}");
    assert!(
        low > 0 && high == 7_000,
        "retention did not move the start: {low}..{high}"
    );

    let worker = broker
        .worker(&group, &topic, dir.path())
        .build(CountHandler::default())
        .expect("build");
    let result = tokio::time::timeout(Duration::from_secs(60), worker.run(std::future::pending()))
        .await
        .expect("the worker stops by itself");
    let err = result.expect_err("partial history is refused").to_string();
    eprintln!("refused: {err}");
    for part in [
        format!("{topic}/0"),
        format!("offset {low}"),
        "allow_partial_history".to_owned(),
        "WEIR_ALLOW_PARTIAL_HISTORY".to_owned(),
    ] {
        assert!(err.contains(&part), "{part:?} not in: {err}");
    }
    let s = StoredCounts::read(dir.path(), &group, &topic);
    assert_eq!(s.total(), 0, "nothing is counted from a partial history");
    assert!(s.offsets.is_empty(), "no offset is stored: {:?}", s.offsets);

    // Accepted: state is the fold of exactly the records that are left.
    let allowed = RunningWorker::spawn(
        broker
            .worker(&group, &topic, dir.path())
            .allow_partial_history(true)
            .build(CountHandler::default())
            .expect("build"),
    );
    let left = &records[low as usize..];
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(left),
        Duration::from_secs(60),
    )
    .await;
    allowed.stop_cleanly().await;
}
