//! Fencing: when a later owner claims a partition's state file (another worker sharing the
//! state dir), the running worker's next commit for it is refused and its task stops; nothing
//! of the refused batch reaches the file.

use std::time::Duration;

use weir_state::PartitionStore;
use weir_tests::*;

async fn a_later_owner_fences_the_running_worker(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "fencing", 1).await;
    let records = keyed_records(0, 400, 10);
    broker.produce(&topic, Some(0), records).await;
    let worker = broker
        .worker(&group, &topic, dir.path())
        .batch_size(10)
        .metrics_addr("127.0.0.1:0")
        .build(CountHandler {
            delay: Some(Duration::from_millis(5)),
            ..Default::default()
        })
        .expect("build");
    let addr = worker.metrics_addr().expect("metrics");
    let worker = RunningWorker::spawn(worker);
    wait_for_total(dir.path(), &group, &topic, 20, Duration::from_secs(60)).await;

    // Another owner claims the file; from this transaction on, the worker's commits fail.
    let path = dir.path().join(&group).join(&topic).join("0.sqlite");
    let other = PartitionStore::open(&path).expect("open");
    other.claim(&topic, 0).expect("claim");
    let fenced_at = other.next_offset(&topic, 0).expect("offset");
    let counted_at = StoredCounts::read(dir.path(), &group, &topic).total();
    wait_until(
        "the worker to be fenced",
        Duration::from_secs(30),
        || async {
            let (_, body) = http_get(addr, "/metrics").await;
            match sample(&body, "weir_fenced_total", &[]) {
                Some(n) if n >= 1.0 => Ok(()),
                other => Err(format!("weir_fenced_total {other:?}")),
            }
        },
    )
    .await;
    let after = StoredCounts::read(dir.path(), &group, &topic);
    eprintln!("{kind:?}: fenced at offset {fenced_at:?} with {counted_at} counted");
    assert_eq!(
        after.offsets.get(&0).copied(),
        fenced_at,
        "the refused batch moved the offset"
    );
    assert_eq!(
        after.total(),
        counted_at,
        "the refused batch's writes reached the file"
    );
    assert!(fenced_at.is_some_and(|o| o < 400), "fenced before the end");
    worker.stop_cleanly().await;
}

on_both_brokers!(fenced, a_later_owner_fences_the_running_worker);
