//! A worker resumes from the offset in its SQLite file, never from Kafka's committed offset:
//! with Kafka's offsets moved past records the state has not seen, a restarted worker still
//! processes them, and counts are exact.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use weir_tests::*;

async fn resumes_from_sqlite_not_kafka(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "resume", 4).await;
    let first = keyed_records(0, 2_000, 50);
    broker.produce(&topic, None, first.clone()).await;
    let worker = broker
        .worker(&group, &topic, dir.path())
        .build(CountHandler::default())
        .expect("build");
    let worker = RunningWorker::spawn(worker);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&first),
        Duration::from_secs(60),
    )
    .await;
    worker.stop_cleanly().await;
    if matches!(kind, BrokerKind::Tansu) {
        // (The mock cluster cannot list groups; its group is empty once the worker left.)
        broker
            .wait_group_empty(&group, Duration::from_secs(30))
            .await;
    }

    // More records arrive while no worker runs, and Kafka's committed offsets of the group are
    // moved to the end of every partition, past them.
    let second = keyed_records(first.len(), 2_000, 50);
    broker.produce(&topic, None, second.clone()).await;
    let ends = end_offsets(&broker, &topic, 4);
    let mut tpl = TopicPartitionList::new();
    for (p, end) in &ends {
        tpl.add_partition_offset(&topic, *p, Offset::Offset(*end))
            .expect("offset");
    }
    // A member of the group commits them (the mock cluster refuses commits from outside).
    let committer: BaseConsumer = broker
        .client()
        .set("group.id", &group)
        .set("partition.assignment.strategy", "cooperative-sticky")
        // The mock cluster delays a rebalance by the group's session timeout less 1 s.
        .set("session.timeout.ms", "6000")
        .set("enable.auto.commit", "false")
        .create()
        .expect("committer");
    committer.subscribe(&[&topic]).expect("subscribe");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while committer.assignment().map_or(0, |a| a.count()) < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the committer never got the partitions"
        );
        let _ = committer.poll(Duration::from_millis(100));
    }
    committer.commit(&tpl, CommitMode::Sync).expect("commit");
    drop(committer);
    if matches!(kind, BrokerKind::Tansu) {
        broker
            .wait_group_empty(&group, Duration::from_secs(30))
            .await;
    }
    assert_eq!(
        broker.kafka_committed(&group, &topic, 4),
        ends,
        "Kafka's offsets are at the end"
    );

    // A new worker on the same state processes the second records all the same.
    let worker = broker
        .worker(&group, &topic, dir.path())
        .build(CountHandler::default())
        .expect("build");
    let worker = RunningWorker::spawn(worker);
    let all: Vec<_> = first.iter().chain(&second).cloned().collect();
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&all),
        Duration::from_secs(60),
    )
    .await;
    worker.stop_cleanly().await;
    let s = StoredCounts::read(dir.path(), &group, &topic);
    assert_counts_exact(&s.counts, &expected_counts(&all));
}
on_both_brokers!(resume_from_sqlite, resumes_from_sqlite_not_kafka);

/// Each partition's high watermark, as a fetch sees it (some brokers answer ListOffsets with
/// less than the end).
fn end_offsets(
    broker: &TestBroker,
    topic: &str,
    partitions: i32,
) -> std::collections::BTreeMap<i32, i64> {
    let c: BaseConsumer = broker.client().create().expect("consumer");
    (0..partitions)
        .map(|p| {
            let (_, high) = c
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            (p, high)
        })
        .collect()
}
