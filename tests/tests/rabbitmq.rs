//! weir on RabbitMQ (Debian's rabbitmq-server 3.10, started by `scripts/rabbitmq.sh`): topic
//! `T` is the consistent-hash exchange `T` feeding quorum queues `T.0 .. T.<N-1>`, each
//! consumed with single active consumer; a batch's state and its messages' ids commit in one
//! transaction before the acknowledgement, so a redelivered message is applied once.

use std::time::Duration;

use weir_tests::*;

/// A worker declares the exchange and its lanes at start; messages published by Python's pika
/// are each counted once, every lane's queue is emptied (acknowledged after the commit), and
/// the store's position counts the lane's deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_messages_are_counted_once_and_acknowledged() {
    let (topic, group) = (unique("amqp-count"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    let running = RunningWorker::spawn(
        rabbitmq_worker(&group, &topic, dir.path())
            .partitions(3)
            .build(CountHandler::default())
            .expect("build worker"),
    );
    let queues: Vec<String> = (0..3).map(|i| format!("{topic}.{i}")).collect();
    wait_until(
        "the worker declared its lanes",
        Duration::from_secs(30),
        || {
            let queues = queues.clone();
            async move {
                std::panic::catch_unwind(|| python_amqp_depth(&queues))
                    .map(drop)
                    .map_err(|_| "not yet".to_owned())
            }
        },
    )
    .await;
    let records = keyed_records(0, 3_000, 40);
    python_amqp_publish(&topic, 0, 3_000, 40, true);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&records),
        Duration::from_secs(60),
    )
    .await;
    wait_until("every lane's queue empty", Duration::from_secs(30), || {
        let queues = queues.clone();
        async move {
            let depth = python_amqp_depth(&queues);
            if depth.values().all(|d| *d == 0) {
                Ok(())
            } else {
                Err(format!("{depth:?}"))
            }
        }
    })
    .await;
    running.stop_cleanly().await;
    let stored = StoredCounts::read(dir.path(), &group, &topic);
    assert_counts_exact(&stored.counts, &expected_counts(&records));
    let positions: i64 = stored.offsets.values().sum();
    assert_eq!(
        positions, 3_000,
        "positions count deliveries: {:?}",
        stored.offsets
    );
    assert_eq!(
        stored.offsets.len(),
        3,
        "every lane took messages: {:?}",
        stored.offsets
    );
}
