//! `delivery = at_most_once`: a batch's offset commits before it is processed, so a crash in
//! the middle of a batch skips the rest of it (and loses the writes of its first records): the
//! next owner goes on after the batch, nothing of it counted, nothing counted twice.

use std::time::Duration;

use weir::prelude::*;
use weir_tests::*;

#[derive(Debug, weir::Handler)]
#[handler(value = Utf8, delivery = at_most_once, batch_size = 100)]
struct AtMostOnce {
    inner: CountHandler,
}

impl Process for AtMostOnce {
    type Error = CountError;

    async fn process(&self, rec: Record<'_, String>, ctx: &mut Ctx<'_>) -> Result<(), CountError> {
        self.inner.process(rec, ctx).await
    }
}

async fn a_crash_mid_batch_skips_the_batch(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "at-most-once", 1).await;
    let records = keyed_records(0, 1_000, 10);
    broker.produce(&topic, Some(0), records.clone()).await;
    // The first worker hangs at record 150, inside some batch S..O.
    let inner = CountHandler {
        stall_on: Some("v150".into()),
        ..Default::default()
    };
    let stalled = inner.stalled.clone();
    let worker = RunningWorker::spawn(
        broker
            .worker(&group, &topic, dir.path())
            .build(AtMostOnce { inner })
            .expect("build"),
    );
    wait_stalled(&stalled).await;
    let before = StoredCounts::read(dir.path(), &group, &topic);
    // Records before the hanging batch are counted; its offset is committed already.
    let start = before.total() as usize;
    let end = before.offsets.get(&0).copied().unwrap_or(0) as usize;
    eprintln!("{kind:?}: hanging in batch {start}..{end}");
    assert!(
        start <= 150 && 150 < end,
        "at most once: the batch's offset ({end}) is committed before its records \
         ({start}..) are processed"
    );
    worker.crash().await;
    if kind == BrokerKind::Tansu {
        broker
            .wait_group_empty(&group, Duration::from_secs(30))
            .await;
    }

    // The next owner goes on after the crashed batch: its records are never counted.
    let worker = RunningWorker::spawn(
        broker
            .worker(&group, &topic, dir.path())
            .build(AtMostOnce {
                inner: CountHandler::default(),
            })
            .expect("build"),
    );
    let mut kept = records[..start].to_vec();
    kept.extend_from_slice(&records[end..]);
    let s = wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&kept),
        Duration::from_secs(60),
    )
    .await;
    worker.stop_cleanly().await;
    assert_eq!(s.offsets.get(&0), Some(&1_000));
}

on_both_brokers!(crash_mid_batch, a_crash_mid_batch_skips_the_batch);

/// On SQS, a batch's messages are taken (their ids committed with its position) before its
/// handler runs: after a crash while the handler hangs at the one message sent, the message
/// comes again (its visibility ran out, or the stopping worker gave it back), and the next
/// worker drops it by its id; what comes after is counted once each, and the queue ends empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_batch_skips_the_batch_on_sqs() {
    let (topic, group) = (unique("sqs-amo"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    python_sqs_create(&topic, Duration::from_secs(3));
    python_sqs_send(&topic, 0, 1, 1);
    let inner = CountHandler {
        stall_on: Some("v0".into()),
        ..Default::default()
    };
    let stalled = inner.stalled.clone();
    let worker = RunningWorker::spawn(
        sqs_worker(&group, &topic, dir.path())
            .build(AtMostOnce { inner })
            .expect("build"),
    );
    wait_stalled(&stalled).await;
    worker.crash().await;

    let inner = CountHandler::default();
    let attempts = std::sync::Arc::clone(&inner.attempts);
    let worker = RunningWorker::spawn(
        sqs_worker(&group, &topic, dir.path())
            .build(AtMostOnce { inner })
            .expect("build"),
    );
    python_sqs_send(&topic, 1, 20, 10);
    let kept = keyed_records(1, 20, 10);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&kept),
        Duration::from_secs(60),
    )
    .await;
    wait_for_empty_queues(std::slice::from_ref(&topic), Duration::from_secs(30)).await;
    worker.stop_cleanly().await;
    let stored = StoredCounts::read(dir.path(), &group, &topic);
    assert_counts_exact(&stored.counts, &expected_counts(&kept));
    assert_eq!(
        (
            attempts.load(std::sync::atomic::Ordering::SeqCst),
            stored.offsets[&0]
        ),
        (20, 22),
        "the second worker ran 20 messages of 21 deliveries (the crashed one came again)"
    );
}

/// On RabbitMQ as on SQS: the message a crash left unacknowledged comes again to the lane's
/// next consumer, which drops it by its `message_id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_batch_skips_the_batch_on_rabbitmq() {
    let (topic, group) = (unique("amqp-amo"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = CountHandler {
        stall_on: Some("v0".into()),
        ..Default::default()
    };
    let stalled = inner.stalled.clone();
    let worker = RunningWorker::spawn(
        rabbitmq_worker(&group, &topic, dir.path())
            .partitions(1)
            .build(AtMostOnce { inner })
            .expect("build"),
    );
    wait_for_lanes(&rabbitmq_url(), &topic, 1).await;
    python_amqp_publish(&topic, 0, 1, 1, true);
    wait_stalled(&stalled).await;
    worker.crash().await;

    let inner = CountHandler::default();
    let attempts = std::sync::Arc::clone(&inner.attempts);
    let worker = RunningWorker::spawn(
        rabbitmq_worker(&group, &topic, dir.path())
            .partitions(1)
            .build(AtMostOnce { inner })
            .expect("build"),
    );
    python_amqp_publish(&topic, 1, 20, 10, true);
    let kept = keyed_records(1, 20, 10);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&kept),
        Duration::from_secs(60),
    )
    .await;
    wait_for_empty_amqp_queues(&[format!("{topic}.0")], Duration::from_secs(30)).await;
    worker.stop_cleanly().await;
    let stored = StoredCounts::read(dir.path(), &group, &topic);
    assert_counts_exact(&stored.counts, &expected_counts(&kept));
    assert_eq!(
        (
            attempts.load(std::sync::atomic::Ordering::SeqCst),
            stored.offsets[&0]
        ),
        (20, 22),
        "the second worker ran 20 messages of 21 deliveries (the crashed one came again)"
    );
}
