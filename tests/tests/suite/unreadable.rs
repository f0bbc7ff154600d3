//! A partition whose records cannot be read is never a silent stall: while records wait that
//! never arrive, the worker logs an ERROR naming the partition and the consumer's error,
//! exports `weir_partition_unreadable`, and `/health/ready` fails naming it; once records
//! arrive again all of it clears, and nothing is lost.
//!
//! Mock cluster only: its fault injection makes every fetch fail (here with "invalid
//! message") for a while, as a codec the build lacks or a corrupt partition would.

use std::time::Duration;

use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use weir_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_that_cannot_be_read_is_reported_then_clears() {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(BrokerKind::Mock, "unreadable", 1).await;
    let records = keyed_records(0, 500, 20);
    broker.produce(&topic, Some(0), records.clone()).await;
    // About 20 s of failing fetches (librdkafka backs off 500 ms after each).
    broker
        .embedded()
        .expect("mock")
        .inject_request_errors(
            RDKafkaApiKey::Fetch,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_MSG; 40],
        )
        .expect("inject");
    let worker = broker
        .worker(&group, &topic, dir.path())
        .metrics_addr("127.0.0.1:0")
        .unreadable_after(Duration::from_secs(3))
        .build(CountHandler::default())
        .expect("build");
    let addr = worker.metrics_addr().expect("metrics address");
    let worker = RunningWorker::spawn(worker);

    let partition = format!("{topic}/0");
    wait_until(
        "the partition to be reported unreadable",
        Duration::from_secs(30),
        || async {
            let (status, ready) = http_get(addr, "/health/ready").await;
            let (_, metrics) = http_get(addr, "/metrics").await;
            let flagged = sample(&metrics, "weir_partition_unreadable", &[("partition", "0")]);
            if status == 503 && ready.contains(&partition) && flagged == Some(1.0) {
                eprintln!("/health/ready: {ready}");
                Ok(())
            } else {
                Err(format!("ready {status} {ready:?}, unreadable {flagged:?}"))
            }
        },
    )
    .await;
    let (_, ready) = http_get(addr, "/health/ready").await;
    assert!(
        ready.contains("records wait") && ready.contains("nvalid"),
        "readiness names the cause: {ready}"
    );

    // The fetch errors run out: records arrive, the report clears, nothing is lost.
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&records),
        Duration::from_secs(60),
    )
    .await;
    wait_until("the report to clear", Duration::from_secs(10), || async {
        let (status, ready) = http_get(addr, "/health/ready").await;
        let (_, metrics) = http_get(addr, "/metrics").await;
        let flagged = sample(&metrics, "weir_partition_unreadable", &[("partition", "0")]);
        if status == 200 && flagged == Some(0.0) {
            Ok(())
        } else {
            Err(format!("ready {status} {ready:?}, unreadable {flagged:?}"))
        }
    })
    .await;
    worker.stop_cleanly().await;
}
