//! A changelog restore runs off the consumer thread: the restoring partition is paused while
//! the consumer keeps polling and the other partitions keep flowing, a restore longer than
//! `max.poll.interval.ms` evicts nobody, and a stop during a restore is prompt.
//!
//! The restore is made slow by the mock cluster's fault injection (tansu has none): partition
//! 0 of the changelog is led by a second broker whose every answer takes seconds.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use weir_tests::*;

/// Every answer of the changelog's broker takes this long: a restore is about ten round trips.
const SLOW_RTT: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_restore_blocks_neither_polling_nor_other_partitions() {
    let broker = TestBroker::mock_cluster(2);
    let mock = broker.embedded().expect("mock cluster");
    let (topic, group) = (unique("restore"), unique("g"));
    let changelog = format!("{group}-{topic}-changelog");
    broker.create_topic(&topic, 2).await;
    broker.create_one_topic(&changelog, 2).await;
    for p in 0..2 {
        mock.set_partition_leader(&topic, p, 1).expect("leader");
        mock.set_partition_leader(&format!("{topic}.dlq"), p, 1)
            .expect("leader");
    }
    mock.set_partition_leader(&changelog, 0, 2).expect("leader");
    mock.set_partition_leader(&changelog, 1, 1).expect("leader");
    mock.set_group_coordinator(&group, 1).expect("coordinator");

    // Machine A counts the first records of both partitions, logging its state changes.
    let mut all: Vec<(i32, (String, String))> = Vec::new();
    for p in 0..2 {
        let first = keyed_records(p as usize * 10_000, 2_000, 50);
        broker.produce(&topic, Some(p), first.clone()).await;
        all.extend(first.into_iter().map(|r| (p, r)));
    }
    let dir_a = tempfile::tempdir().expect("tempdir");
    let a = RunningWorker::spawn(
        broker
            .worker(&group, &topic, dir_a.path())
            .changelog(true)
            .build(CountHandler::default())
            .expect("build"),
    );
    let expected = |all: &[(i32, (String, String))]| {
        expected_counts(&all.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>())
    };
    wait_for_counts(
        dir_a.path(),
        &group,
        &topic,
        &expected(&all),
        Duration::from_secs(60),
    )
    .await;
    a.stop_cleanly().await;

    // From now on the changelog's partition 0 answers slowly.
    mock.set_round_trip_time(2, SLOW_RTT).expect("rtt");

    // Machine C, with an empty state dir, is stopped in the middle of its restore.
    let dir_c = tempfile::tempdir().expect("tempdir");
    let c = broker
        .worker(&group, &topic, dir_c.path())
        .changelog(true)
        .metrics_addr("127.0.0.1:0")
        .http_token("a-token-of-24-characters")
        .build(CountHandler::default())
        .expect("build");
    let c_addr = c.metrics_addr().expect("metrics address");
    let c = RunningWorker::spawn(c);
    wait_until(
        "C to restore partition 0",
        Duration::from_secs(60),
        || async {
            let (_, body) = http_get(c_addr, "/metrics").await;
            match sample(&body, "weir_partition_restoring", &[("partition", "0")]) {
                Some(1.0) => Ok(()),
                other => Err(format!("restoring = {other:?}")),
            }
        },
    )
    .await;
    // Restoring from here on: its every request takes SLOW_RTT, and a stop at any point of
    // it must be prompt. Meanwhile a state query of a key of partition 0 answers 503 (issue
    // 25, item 12: before the fix, it answered from the partial store).
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| weir_state::wire::partition_for_key(k.as_bytes(), 2) == 0)
        .expect("a key of partition 0");
    let auth = [("Authorization", "Bearer a-token-of-24-characters")];
    let (status, body) = http_get_with(c_addr, &format!("/state/counts/{key}"), &auth).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("restored"), "{body}");
    let asked = Instant::now();
    c.stop_cleanly().await;
    let took = asked.elapsed();
    eprintln!("a stop during a restore took {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "a stop during a restore took {took:?}"
    );

    // Machine B, with an empty state dir and max.poll.interval.ms=10000, restores partition 0
    // for longer than that while partition 1 processes new records.
    let dir_b = tempfile::tempdir().expect("tempdir");
    let handler_b = CountHandler::default();
    let processed_by_b = handler_b.attempts.clone();
    let b = broker
        .worker(&group, &topic, dir_b.path())
        .changelog(true)
        .metrics_addr("127.0.0.1:0")
        .kafka("max.poll.interval.ms", "10000")
        .build(handler_b)
        .expect("build");
    let b_addr = b.metrics_addr().expect("metrics address");
    let b = RunningWorker::spawn(b);
    let mut more = BTreeMap::new();
    for p in 0..2 {
        let records = keyed_records(50_000 + p as usize * 10_000, 500, 50);
        broker.produce(&topic, Some(p), records.clone()).await;
        all.extend(records.iter().cloned().map(|r| (p, r)));
        more.insert(p, records.len() as f64);
    }
    let started = Instant::now();
    let mut restoring_since: Option<Instant> = None;
    let mut restore_took = None;
    let mut p1_done_while_p0_restoring = false;
    let mut owned_max = 0.0f64;
    let deadline = started + Duration::from_secs(120);
    loop {
        let (_, body) = http_get(b_addr, "/metrics").await;
        let owned = sample(&body, "weir_owned_partitions", &[]).unwrap_or(0.0);
        if owned_max == 2.0 {
            assert_eq!(
                owned, 2.0,
                "B lost a partition during the restore (an eviction?):\n{body}"
            );
        }
        owned_max = owned_max.max(owned);
        let restoring = sample(&body, "weir_partition_restoring", &[("partition", "0")]);
        let p1 = sample(&body, "weir_partition_processed", &[("partition", "1")]);
        match (restoring, restoring_since) {
            (Some(1.0), None) => restoring_since = Some(Instant::now()),
            (Some(0.0), Some(since)) if restore_took.is_none() => {
                restore_took = Some(since.elapsed())
            }
            _ => {}
        }
        if restoring == Some(1.0) && p1 == Some(more[&1]) {
            p1_done_while_p0_restoring = true;
        }
        let counted = StoredCounts::read(dir_b.path(), &group, &topic).total();
        if restore_took.is_some() && counted == all.len() as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B did not finish: restoring {restoring:?} since {restoring_since:?}, partition 1 \
             processed {p1:?}, {counted} of {} counted",
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.stop_cleanly().await;
    let restore_took = restore_took.expect("restore seen");
    eprintln!(
        "partition 0 restored in {restore_took:?}; partition 1 processed its new records \
         meanwhile: {p1_done_while_p0_restoring}"
    );
    assert!(
        restore_took > Duration::from_secs(15),
        "the restore took only {restore_took:?}: the test proves nothing about \
         max.poll.interval.ms=10000"
    );
    assert!(
        p1_done_while_p0_restoring,
        "partition 1 did not process its new records while partition 0 restored"
    );
    let s = StoredCounts::read(dir_b.path(), &group, &topic);
    assert_counts_exact(&s.counts, &expected(&all));
    assert_eq!(
        processed_by_b.load(Ordering::SeqCst),
        1_000,
        "B processes only the new records: the rest came from the changelog"
    );
}
