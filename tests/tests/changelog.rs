//! State follows its partition: a worker with an empty state directory (another machine)
//! rebuilds the partitions' stores from the changelog and processes only what is new.

use std::sync::atomic::Ordering;
use std::time::Duration;

use weir_tests::*;

async fn a_new_machine_restores_from_the_changelog(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "changelog", 2).await;
    broker
        .create_one_topic(&format!("{group}-{topic}-changelog"), 2)
        .await;
    let first = keyed_records(0, 2_000, 100);
    broker.produce(&topic, None, first.clone()).await;

    // Machine A counts the first 2000 records, logging its state changes.
    let a = RunningWorker::spawn(
        broker
            .worker(&group, &topic, dir.path())
            .changelog(true)
            .build(CountHandler::default())
            .expect("build"),
    );
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&first),
        Duration::from_secs(60),
    )
    .await;
    a.stop_cleanly().await;
    if kind == BrokerKind::Tansu {
        broker
            .wait_group_empty(&group, Duration::from_secs(30))
            .await;
    }

    // Machine B, with an empty state directory, takes over; 1000 more records arrive.
    let more = keyed_records(2_000, 1_000, 100);
    broker.produce(&topic, None, more.clone()).await;
    let mut all = first;
    all.extend(more);
    let dir_b = tempfile::tempdir().expect("tempdir");
    let handler_b = CountHandler::default();
    let processed_by_b = handler_b.attempts.clone();
    let b = RunningWorker::spawn(
        broker
            .worker(&group, &topic, dir_b.path())
            .changelog(true)
            .build(handler_b)
            .expect("build"),
    );
    wait_for_counts(
        dir_b.path(),
        &group,
        &topic,
        &expected_counts(&all),
        Duration::from_secs(60),
    )
    .await;
    b.stop_cleanly().await;
    let s = StoredCounts::read(dir_b.path(), &group, &topic);
    assert_counts_exact(&s.counts, &expected_counts(&all));
    assert_eq!(s.offsets.values().sum::<i64>(), 3_000);
    // Exact counts from an empty directory with only the new records processed: the first
    // 2000 records' state came from the changelog.
    let processed = processed_by_b.load(Ordering::SeqCst);
    eprintln!("{kind:?}: B processed {processed} records after restoring");
    assert_eq!(processed, 1_000, "B processes only what A had not");
}

on_both_brokers!(
    restore_on_another_machine,
    a_new_machine_restores_from_the_changelog
);
