//! State follows its partition: a worker with an empty state directory (another machine)
//! rebuilds the partitions' stores from the changelog and processes only what is new.

use std::collections::BTreeMap;
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

/// The restore's two branches on a worker that has a store: a current store is kept (no
/// restore, only new records processed); a store that is behind the changelog is rebuilt
/// from it (nothing processed again).
async fn a_current_store_is_kept_and_a_store_behind_is_restored(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "changelog-branches", 2).await;
    broker
        .create_one_topic(&format!("{group}-{topic}-changelog"), 2)
        .await;
    let first = keyed_records(0, 1_000, 50);
    broker.produce(&topic, None, first.clone()).await;
    let run = |dir: &std::path::Path, handler: CountHandler| {
        let worker = broker
            .worker(&group, &topic, dir)
            .changelog(true)
            .metrics_addr("127.0.0.1:0")
            .build(handler)
            .expect("build");
        let addr = worker.metrics_addr().expect("metrics");
        (RunningWorker::spawn(worker), addr)
    };
    let restored = |body: &str| {
        sample(body, "weir_restored_records_total", &[("topic", &topic)]).unwrap_or(0.0)
    };

    let (a, _) = run(dir.path(), CountHandler::default());
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&first),
        Duration::from_secs(60),
    )
    .await;
    a.stop_cleanly().await;
    let old = tempfile::tempdir().expect("tempdir");
    copy_dir(dir.path(), old.path());

    // The same machine again, its store current: kept, only the new records processed.
    let more = keyed_records(1_000, 500, 50);
    broker.produce(&topic, None, more.clone()).await;
    let mut all = first;
    all.extend(more);
    let handler = CountHandler::default();
    let processed = handler.attempts.clone();
    if kind == BrokerKind::Tansu {
        broker
            .wait_group_empty(&group, Duration::from_secs(30))
            .await;
    }
    let (a2, addr) = run(dir.path(), handler);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&all),
        Duration::from_secs(60),
    )
    .await;
    let (_, body) = http_get(addr, "/metrics").await;
    a2.stop_cleanly().await;
    assert_eq!(restored(&body), 0.0, "a current store is not restored");
    assert_eq!(
        processed.load(Ordering::SeqCst),
        500,
        "only the new records are processed"
    );

    // A machine whose disk holds the older store: behind the changelog, so rebuilt from it.
    if kind == BrokerKind::Tansu {
        broker
            .wait_group_empty(&group, Duration::from_secs(30))
            .await;
    }
    let handler = CountHandler::default();
    let processed = handler.attempts.clone();
    let (b, addr) = run(old.path(), handler);
    wait_until(
        "the old store to be restored",
        Duration::from_secs(60),
        || async {
            let (_, body) = http_get(addr, "/metrics").await;
            let s = StoredCounts::read(old.path(), &group, &topic);
            if restored(&body) > 0.0 && s.offsets.values().sum::<i64>() == all.len() as i64 {
                Ok(())
            } else {
                Err(format!(
                    "restored {}, offsets {:?}",
                    restored(&body),
                    s.offsets
                ))
            }
        },
    )
    .await;
    b.stop_cleanly().await;
    let s = StoredCounts::read(old.path(), &group, &topic);
    assert_counts_exact(&s.counts, &expected_counts(&all));
    assert_eq!(
        processed.load(Ordering::SeqCst),
        0,
        "the store behind came from the changelog, nothing processed again"
    );
}

on_both_brokers!(
    restore_branches,
    a_current_store_is_kept_and_a_store_behind_is_restored
);

/// Issue 25, item 6: a machine died in the middle of sending a batch's changelog entries, so
/// its marker never went out; the records were processed again in other batches. A restore
/// drops the orphaned entries instead of folding them in at the next marker (before the fix,
/// key `j`'s orphaned count 3 was applied at marker 7, and its three records at offsets 7..9
/// were then counted again: 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn entries_of_a_batch_whose_marker_never_came_are_not_restored() {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(BrokerKind::Mock, "orphans", 1).await;
    let changelog = weir::state::changelog_topic(&group, &topic);
    broker.create_one_topic(&changelog, 1).await;
    // Offsets 0..6: key k; 7..9: key j.
    let records: Vec<(String, String)> = (0..10)
        .map(|i| (if i < 7 { "k" } else { "j" }.to_owned(), format!("v{i}")))
        .collect();
    broker.produce(&topic, Some(0), records.clone()).await;
    broker
        .produce_with_headers(
            &changelog,
            0,
            &[
                // Batch 0..5, marked.
                entry("k", "5", 5),
                marker(5),
                // Batch 5..10: two of its entries went out, then the machine died.
                entry("k", "7", 10),
                entry("j", "3", 10),
                // The next owner processed 5..7 as a batch of its own, and died too.
                entry("k", "7", 7),
                marker(7),
            ],
        )
        .await;
    let worker = broker
        .worker(&group, &topic, dir.path())
        .changelog(true)
        .build(CountHandler::default())
        .expect("build");
    let worker = RunningWorker::spawn(worker);
    // Every record processed (the orphaned count alone would make the total right at 7).
    wait_until("offset 10", Duration::from_secs(60), || async {
        let now = StoredCounts::read(dir.path(), &group, &topic);
        if now.offsets == BTreeMap::from([(0, 10)]) {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    })
    .await;
    worker.stop_cleanly().await;
    let stored = StoredCounts::read(dir.path(), &group, &topic);
    assert_counts_exact(&stored.counts, &expected_counts(&records));
}

/// A changelog the log cleaner compacted keeps only the newest offset marker (every marker has
/// the same key): the entries of earlier batches lost theirs. They are restored all the same,
/// by the newest marker, which comes after them (this restore kept only the newest batch's
/// entries: key `k`'s count was lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compacted_changelog_restores_every_batch() {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(BrokerKind::Mock, "compacted", 1).await;
    let changelog = weir::state::changelog_topic(&group, &topic);
    broker.create_one_topic(&changelog, 1).await;
    // Offsets 0..5: key k; 5..10: key j.
    let records: Vec<(String, String)> = (0..10)
        .map(|i| (if i < 5 { "k" } else { "j" }.to_owned(), format!("v{i}")))
        .collect();
    broker.produce(&topic, Some(0), records.clone()).await;
    broker
        .produce_with_headers(
            &changelog,
            0,
            &[
                // Batch 0..5; its marker was compacted away by batch 5..10's.
                entry("k", "5", 5),
                // Batch 5..10, and its marker.
                entry("j", "5", 10),
                marker(10),
            ],
        )
        .await;
    let worker = broker
        .worker(&group, &topic, dir.path())
        .changelog(true)
        .build(CountHandler::default())
        .expect("build");
    let worker = RunningWorker::spawn(worker);
    wait_until(
        "the store restored to offset 10",
        Duration::from_secs(60),
        || async {
            let now = StoredCounts::read(dir.path(), &group, &topic);
            if now.offsets == BTreeMap::from([(0, 10)]) {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            }
        },
    )
    .await;
    worker.stop_cleanly().await;
    let stored = StoredCounts::read(dir.path(), &group, &topic);
    assert_counts_exact(&stored.counts, &expected_counts(&records));
}

/// A changelog state entry of `key` (counts store) with `value`, of the batch ending at
/// `batch_end`.
fn entry(key: &str, value: &str, batch_end: i64) -> HeadedRecord {
    let record_key = weir::state::ChangelogEntry::key(COUNTS, &format!("{key:?}"));
    (
        String::from_utf8(record_key).expect("utf-8"),
        value.to_owned(),
        position(batch_end),
    )
}

/// The offset marker of the batch ending at `batch_end`.
fn marker(batch_end: i64) -> HeadedRecord {
    let (key, value) = weir::state::ChangelogEntry::offset_marker(batch_end);
    (
        String::from_utf8(key).expect("utf-8"),
        String::from_utf8(value).expect("utf-8"),
        position(batch_end),
    )
}

/// The headers naming a changelog entry's batch.
fn position(batch_end: i64) -> Vec<(String, String)> {
    vec![(
        weir::state::header::SOURCE_NEXT_OFFSET.to_owned(),
        batch_end.to_string(),
    )]
}
