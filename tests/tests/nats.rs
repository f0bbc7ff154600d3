//! weir on NATS JetStream (the server `scripts/nats.sh` starts): the same handler counts
//! exactly, lanes move between workers, and a worker resumes at its stored position.

use std::time::{Duration, Instant};

use weir_tests::*;

/// One worker, a stream of 4 lanes made as the README says, 20k keyed records: per-key counts
/// exact, each lane's stored position past its last message, and a second run adds exactly the
/// new records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_counts_exactly_and_resumes_at_its_position() {
    let (topic, group) = (unique("nats-count"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    create_nats_stream(&topic, 4).await;
    let first = keyed_records(0, 20_000, 500);
    nats_publish(&topic, &first).await;

    let worker = nats_worker(&group, &topic, dir.path())
        .build(CountHandler::default())
        .expect("build worker");
    let running = RunningWorker::spawn(worker);
    let started = Instant::now();
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&first),
        Duration::from_secs(60),
    )
    .await;
    eprintln!("20000 records counted exactly in {:.2?}", started.elapsed());
    running.stop_cleanly().await;
    let stored = StoredCounts::read(dir.path(), &group, &topic);
    assert_eq!(
        stored.offsets.len(),
        4,
        "every lane has a position: {:?}",
        stored.offsets
    );
    assert_eq!(
        stored.offsets.values().max().copied(),
        Some(20_001),
        "the newest position is past the stream's last sequence: {:?}",
        stored.offsets
    );

    let second = keyed_records(20_000, 5_000, 500);
    nats_publish(&topic, &second).await;
    let all: Vec<_> = first.iter().chain(&second).cloned().collect();
    let worker = nats_worker(&group, &topic, dir.path())
        .build(CountHandler::default())
        .expect("build worker");
    let running = RunningWorker::spawn(worker);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&all),
        Duration::from_secs(60),
    )
    .await;
    running.stop_cleanly().await;
    let stored = StoredCounts::read(dir.path(), &group, &topic);
    assert_counts_exact(&stored.counts, &expected_counts(&all));
}
