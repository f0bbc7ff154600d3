//! A handler that fails (error or panic) on a record: its batch is not committed, nothing is
//! lost, other partitions go on, and once the record succeeds every count is exact.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use weir_tests::*;

const PER_PARTITION: usize = 5_000;
const POISON_AT: usize = 2_500;

/// Records of partition `p`: key `k{i % 50}`, value `p{p}-{i}`, the one at POISON_AT in
/// partition 0 is `poison`.
fn partition_records(p: i32) -> Vec<(String, String)> {
    (0..PER_PARTITION)
        .map(|i| {
            let value = if p == 0 && i == POISON_AT {
                "poison".to_owned()
            } else {
                format!("p{p}-{i}")
            };
            (format!("k{}", i % 50), value)
        })
        .collect()
}

async fn produce_partitions(broker: &TestBroker, topic: &str) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for p in 0..4 {
        let records = partition_records(p);
        broker.produce(topic, Some(p), records.clone()).await;
        all.extend(records);
    }
    all
}

async fn failing_record_heals(kind: BrokerKind, panic: bool) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "fail", 4).await;
    let all = produce_partitions(&broker, &topic).await;
    let handler = CountHandler {
        panic_on_poison: panic,
        ..CountHandler::with_poison("poison", 3)
    };
    let probe = handler.clone();
    let worker = broker
        .worker(&group, &topic, dir.path())
        .batch_size(100)
        .build(handler)
        .expect("build");
    let worker = RunningWorker::spawn(worker);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&all),
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(
        probe.poison_left("poison"),
        0,
        "the poison record failed 3 times before it passed"
    );
    worker.stop_cleanly().await;
    retried_in_place_after_backoff(&probe.log.lock().expect("lock"));
    let s = StoredCounts::read(dir.path(), &group, &topic);
    assert_counts_exact(&s.counts, &expected_counts(&all));
    assert_eq!(s.offsets.values().sum::<i64>(), all.len() as i64);
}

/// Partition 0's attempts, as the handler saw them: the poison record is tried 4 times, each
/// after the default backoff (100 ms doubling, ±25% jitter), and no record after it runs
/// before its last attempt (the batch is retried in place, so order holds).
fn retried_in_place_after_backoff(log: &[(i32, String, std::time::Instant)]) {
    let index = |v: &str| {
        if v == "poison" {
            POISON_AT
        } else {
            v.trim_start_matches("p0-").parse().expect("p0-i")
        }
    };
    let p0: Vec<(usize, std::time::Instant)> = log
        .iter()
        .filter(|(p, _, _)| *p == 0)
        .map(|(_, v, t)| (index(v), *t))
        .collect();
    let tries: Vec<usize> = (0..p0.len()).filter(|&i| p0[i].0 == POISON_AT).collect();
    assert_eq!(tries.len(), 4, "poison attempts");
    let gaps: Vec<Duration> = tries.windows(2).map(|w| p0[w[1]].1 - p0[w[0]].1).collect();
    eprintln!("poison retried after {gaps:?}");
    // Never sooner than the backoff; later by at most what a busy machine adds to re-running
    // the batch up to the record (two clean-clone runs sharing 2 cores made it 525 ms for a
    // 94 ms backoff), far below the 10 s cap a wrong backoff would show.
    const SCHEDULING_SLACK_MS: f64 = 2_000.0;
    for (i, gap) in gaps.iter().enumerate() {
        let nominal = 100.0 * f64::from(1u32 << i);
        let ms = gap.as_secs_f64() * 1000.0;
        assert!(
            ms >= nominal * 0.75 && ms <= nominal * 1.25 + SCHEDULING_SLACK_MS,
            "retry {} came after {ms:.0} ms; the backoff is {nominal} ms ±25%",
            i + 1
        );
    }
    let last = *tries.last().expect("tries");
    let early: Vec<usize> = p0[..last]
        .iter()
        .map(|(i, _)| *i)
        .filter(|&i| i > POISON_AT)
        .collect();
    assert!(
        early.is_empty(),
        "records after the failing one ran before it succeeded: {early:?}"
    );
    assert!(
        p0[last + 1..].iter().all(|(i, _)| *i > POISON_AT),
        "records before the failing one ran again after it succeeded"
    );
}

async fn handler_error_is_retried(kind: BrokerKind) {
    failing_record_heals(kind, false).await
}
on_both_brokers!(error_retried, handler_error_is_retried);

async fn handler_panic_is_retried(kind: BrokerKind) {
    failing_record_heals(kind, true).await
}
on_both_brokers!(panic_retried, handler_panic_is_retried);

/// How a record comes to be retried forever.
#[derive(Debug, Clone, Copy)]
enum Forever {
    /// `max_attempts = 0`.
    NoAttemptLimit,
    /// Attempts run out, but there is no dead-letter topic (`WEIR_DEAD_LETTER_TOPIC=`).
    NoDeadLetterTopic,
}

async fn record_that_always_fails(kind: BrokerKind, how: Forever) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "poison", 4).await;
    let all = produce_partitions(&broker, &topic).await;
    let handler = CountHandler::with_poison("poison", u64::MAX);
    let attempts = handler.attempts.clone();
    // Retried forever: the partition waits.
    let builder = broker.worker(&group, &topic, dir.path()).batch_size(100);
    let builder = match how {
        Forever::NoAttemptLimit => builder.retry(weir::worker::RetryPolicy {
            max_attempts: 0,
            ..Default::default()
        }),
        Forever::NoDeadLetterTopic => builder
            .retry(weir::worker::RetryPolicy {
                max_attempts: 2,
                backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(200),
            })
            .dead_letter_topic(None),
    };
    let worker = builder.build(handler).expect("build");
    let worker = RunningWorker::spawn(worker);

    // Partitions 1-3 finish; partition 0 stops before the poison record and stays there.
    let n = PER_PARTITION as i64;
    wait_until(
        "partitions 1-3 done, partition 0 held before the poison",
        Duration::from_secs(120),
        || async {
            let s = StoredCounts::read(dir.path(), &group, &topic);
            let done = (1..4).all(|p| s.offsets.get(&p) == Some(&n));
            let held = s
                .offsets
                .get(&0)
                .is_some_and(|o| *o > 0 && *o <= POISON_AT as i64);
            if done && held {
                Ok(())
            } else {
                Err(format!("offsets {:?}", s.offsets))
            }
        },
    )
    .await;
    // It keeps failing (retries with backoff), and the stored offset never passes it.
    let tried = attempts.load(Ordering::SeqCst);
    wait_until(
        "two more failed attempts",
        Duration::from_secs(30),
        || async {
            let now = attempts.load(Ordering::SeqCst);
            if now >= tried + 2 {
                Ok(())
            } else {
                Err(format!("{now} attempts"))
            }
        },
    )
    .await;
    worker.stop_cleanly().await;

    let s = StoredCounts::read(dir.path(), &group, &topic);
    let held = *s.offsets.get(&0).expect("partition 0 offset");
    assert!(
        held <= POISON_AT as i64,
        "offset passed the failing record: {held}"
    );
    // State is exactly the fold of the records before each stored offset.
    let mut expected = BTreeMap::new();
    for p in 0..4 {
        let upto = *s.offsets.get(&p).expect("offset") as usize;
        for (k, _) in &partition_records(p)[..upto] {
            *expected.entry(k.clone()).or_insert(0) += 1;
        }
    }
    assert_counts_exact(&s.counts, &expected);

    // A fixed handler picks up at the poison record: nothing was lost.
    let worker = broker
        .worker(&group, &topic, dir.path())
        .build(CountHandler::default())
        .expect("build");
    let worker = RunningWorker::spawn(worker);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&all),
        Duration::from_secs(120),
    )
    .await;
    worker.stop_cleanly().await;
}
async fn record_without_attempt_limit(kind: BrokerKind) {
    record_that_always_fails(kind, Forever::NoAttemptLimit).await
}
on_both_brokers!(always_failing, record_without_attempt_limit);

async fn record_without_dead_letter_topic(kind: BrokerKind) {
    record_that_always_fails(kind, Forever::NoDeadLetterTopic).await
}
on_both_brokers!(no_dead_letter_topic, record_without_dead_letter_topic);
