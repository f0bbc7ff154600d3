//! weir on SQS (moto's server, started by `scripts/sqs.sh`): topic `T` is the queue `T`, one
//! lane; a batch's state and its messages' ids commit in one transaction before the messages
//! are deleted, so a message that comes again (after a crash, or a standard queue's duplicate)
//! is applied once.
//!
//! moto's server takes time in proportion to a queue's length for every request (sending 2,000
//! messages ten a request took it 80 s), so these tests send a few hundred.

use std::time::Duration;

use weir_tests::*;

/// A worker creates a missing queue with its dead-letter queue `T-dlq` and a redrive policy;
/// messages sent by Python's boto3 are each counted once, the queue is emptied (deleted after
/// the commit), and the store's position counts the deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_messages_are_counted_once_and_deleted() {
    let (topic, group) = (unique("sqs-count"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    let running = RunningWorker::spawn(
        sqs_worker(&group, &topic, dir.path())
            .build(CountHandler::default())
            .expect("build worker"),
    );
    wait_until(
        "the worker's queue created",
        Duration::from_secs(30),
        || {
            let depth = python_sqs_depth(&[topic.clone()]);
            async move {
                match depth.values().next() {
                    Some(Some(_)) => Ok(()),
                    _ => Err(format!("{depth:?}")),
                }
            }
        },
    )
    .await;
    let records = keyed_records(0, 300, 20);
    python_sqs_send(&topic, 0, 300, 20);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&records),
        Duration::from_secs(60),
    )
    .await;
    wait_for_empty_queues(&[topic.clone()], Duration::from_secs(30)).await;
    running.stop_cleanly().await;
    let stored = StoredCounts::read(dir.path(), &group, &topic);
    assert_counts_exact(&stored.counts, &expected_counts(&records));
    // Positions count deliveries, a message received twice (after its visibility ran out)
    // twice.
    let position = stored.offsets.get(&0).copied().unwrap_or_default();
    assert!(position >= 300, "positions count deliveries: {position}");
    let attributes = python_sqs_attributes(&topic);
    let policy: serde_json::Value = serde_json::from_str(
        attributes["RedrivePolicy"]
            .as_str()
            .expect("a redrive policy"),
    )
    .expect("JSON policy");
    assert!(
        policy["deadLetterTargetArn"]
            .as_str()
            .is_some_and(|arn| arn.ends_with(&format!(":{topic}-dlq"))),
        "{policy}"
    );
    assert_eq!(
        policy["maxReceiveCount"].to_string().trim_matches('"'),
        "20"
    );
}
