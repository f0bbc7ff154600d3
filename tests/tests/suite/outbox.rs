//! The outbox's two promises, each with its mechanism in view:
//! - rows a crash left in a store (committed, never acknowledged) are sent when the
//!   partition's store is next opened, before anything else and even if no record ever comes;
//! - the Kafka offset commit waits for the batch's outbox to be acknowledged: while emitted
//!   records are unacknowledged, Kafka's committed offset stays behind SQLite's.

use std::time::Duration;

use rdkafka::message::{Headers, Message};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use weir_state::{OutboxRecord, PartitionStore, WriteSet};
use weir_tests::tally::{tallies_topic, TallyHandler};
use weir_tests::*;

async fn rows_left_by_a_crash_are_sent_when_the_store_opens(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "outbox-left", 1).await;
    let out = unique("out");
    broker.create_one_topic(&out, 1).await;
    // What a worker that died after its commit, before the broker acknowledged, leaves: a
    // committed batch with its emitted row still in the outbox.
    {
        let path = dir.path().join(&group).join(&topic).join("0.sqlite");
        let store = PartitionStore::open(&path).expect("open");
        let mut batch = WriteSet::default();
        batch.put(COUNTS, "k", &1u64).expect("put");
        batch.emit(OutboxRecord {
            topic: out.clone(),
            partition: None,
            key: Some(b"k".to_vec()),
            value: Some(b"left by a crash".to_vec()),
            headers: [("weir.source.offset", b"0")].into_iter().collect(),
            timestamp: None,
        });
        store.commit(&mut batch, &topic, 0, 1).expect("commit");
    }
    // The input topic stays empty: only opening the store can send the row.
    let worker = RunningWorker::spawn(
        broker
            .worker(&group, &topic, dir.path())
            .build(CountHandler::default())
            .expect("build"),
    );
    let sent = broker.consume(&out, 1, Duration::from_secs(60)).await;
    assert_eq!(sent[0].payload(), Some(&b"left by a crash"[..]));
    assert_eq!(sent[0].key(), Some(&b"k"[..]));
    let header = sent[0]
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == "weir.source.offset"))
        .and_then(|h| h.value);
    assert_eq!(header, Some(&b"0"[..]), "the row's headers travel with it");
    worker.stop_cleanly().await;
    let store = PartitionStore::open(dir.path().join(&group).join(&topic).join("0.sqlite"))
        .expect("reopen");
    assert!(
        store.pending_outbox(10).expect("outbox").is_empty(),
        "an acknowledged row leaves the outbox"
    );
}

on_both_brokers!(
    left_rows,
    rows_left_by_a_crash_are_sent_when_the_store_opens
);

/// Mock cluster only: its fault injection makes the broker refuse the emitted records for a
/// while (the producer retries them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_kafka_commit_waits_for_the_outbox() {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(BrokerKind::Mock, "outbox-wait", 1).await;
    broker.create_one_topic(&tallies_topic(&topic), 1).await;
    let records = keyed_records(0, 200, 10);
    broker.produce(&topic, Some(0), records.clone()).await;
    broker
        .embedded()
        .expect("mock")
        .inject_request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 25],
        )
        .expect("inject");
    let worker = RunningWorker::spawn(
        broker
            .worker(&group, &topic, dir.path())
            .build(TallyHandler::default())
            .expect("build"),
    );
    let path = dir.path().join(&group).join(&topic).join("0.sqlite");
    let mut held_back = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        // Kafka's committed offset first: it can only move forward after this sample.
        let kafka = broker.kafka_committed(&group, &topic, 1).get(&0).copied();
        let (sqlite, pending) = match PartitionStore::open(&path) {
            Ok(store) => (
                store.next_offset(&topic, 0).expect("offset"),
                store.pending_outbox(1).expect("outbox").len(),
            ),
            Err(_) => (None, 0), // not created yet
        };
        if pending > 0 {
            if let Some(k) = kafka {
                assert!(
                    sqlite.is_some_and(|s| k < s) || sqlite.is_none(),
                    "Kafka's committed offset {k} reached SQLite's {sqlite:?} while emitted \
                     records were unacknowledged"
                );
            }
            if sqlite == Some(200) {
                held_back += 1;
            }
        }
        if pending == 0 && kafka == Some(200) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not done: Kafka {kafka:?}, SQLite {sqlite:?}, outbox rows pending {pending}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("Kafka's commit was held back in {held_back} samples while the outbox waited");
    assert!(
        held_back > 0,
        "never saw the whole batch committed in SQLite with its outbox unacknowledged"
    );
    let s = broker
        .consume(&tallies_topic(&topic), 200, Duration::from_secs(60))
        .await;
    assert_eq!(s.len(), 200);
    worker.stop_cleanly().await;
}

/// Issue 25, item 5: the broker rejects the emits for good (topic authorization): the worker
/// says so, naming the topic, in its readiness (503) and a gauge, and keeps the rows; when
/// the broker takes them again, they are sent and the worker is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn emits_the_broker_rejects_for_good_make_the_worker_unready() {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(BrokerKind::Mock, "outbox-rejected", 1).await;
    let out = tallies_topic(&topic);
    broker.create_one_topic(&out, 1).await;
    let mock = broker.embedded().expect("mock");
    broker
        .produce(&topic, Some(0), keyed_records(0, 5, 5))
        .await;
    mock.inject_request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 1000],
    )
    .expect("inject");
    let worker = broker
        .worker(&group, &topic, dir.path())
        .metrics_addr("127.0.0.1:0")
        .build(TallyHandler::default())
        .expect("build");
    let addr = worker.metrics_addr().expect("metrics address");
    let worker = RunningWorker::spawn(worker);
    wait_until(
        "unready, naming the topic",
        Duration::from_secs(60),
        || async {
            let (status, body) = http_get(addr, "/health/ready").await;
            if status == 503 && body.contains("rejects") && body.contains(&out) {
                Ok(())
            } else {
                Err(format!("{status}: {body}"))
            }
        },
    )
    .await;
    let (_, metrics) = http_get(addr, "/metrics").await;
    assert_eq!(
        sample(
            &metrics,
            "weir_partition_emits_rejected",
            &[("partition", "0")]
        ),
        Some(1.0),
        "{metrics}"
    );
    mock.clear_request_errors(RDKafkaApiKey::Produce)
        .expect("clear");
    let sent = broker.consume(&out, 5, Duration::from_secs(60)).await;
    assert_eq!(sent.len(), 5);
    wait_until("ready again", Duration::from_secs(60), || async {
        match http_get(addr, "/health/ready").await {
            (200, _) => Ok(()),
            (status, body) => Err(format!("{status}: {body}")),
        }
    })
    .await;
    worker.stop_cleanly().await;
}

/// Emits a value of the size its record asks for (`<n>` bytes) to `<topic>-big`, keyed like
/// it.
#[derive(weir::Handler)]
#[handler(topic = "in", key = weir::Utf8, value = weir::Utf8)]
struct SizedEmits;

impl weir::Process for SizedEmits {
    type Error = weir::Error;

    async fn process(
        &self,
        r: weir::Record<'_, String, String>,
        ctx: &mut weir::Ctx<'_>,
    ) -> weir::Result<()> {
        let n: usize = r.value().parse().unwrap_or(0);
        let out = format!("{}-big", r.topic());
        ctx.emit(&out, Some(r.key().as_bytes()), &vec![b'x'; n], &[]);
        Ok(())
    }
}

/// Issue 25, item 5: an emit larger than the producer sends (`message.max.bytes`) fails its
/// record before the batch commits (retried, then dead-lettered with the topic and size in
/// its error), instead of being committed and rejected by the broker forever after.
#[tokio::test]
async fn an_emit_too_large_to_send_fails_its_record() {
    let mut kit = weir::testing::TestKit::new(SizedEmits)
        .expect("kit")
        .max_attempts(2);
    kit.send("a", "10").send("b", "2000000").send("c", "20");
    kit.run().await.expect("run");
    let dead = kit.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].key.as_deref(), Some(&b"b"[..]));
    assert!(
        dead[0].error.contains("in-big") && dead[0].error.contains("message.max.bytes"),
        "{}",
        dead[0].error
    );
    let sent: Vec<usize> = kit
        .emitted_to("in-big")
        .iter()
        .map(|r| r.value.as_ref().map_or(0, Vec::len))
        .collect();
    assert_eq!(sent, [10, 20]);
}

/// Issue 25, item 5, end to end on the mock cluster: the broker refuses one produce request
/// of a flush for good (topic authorization), so its records are sent again after later
/// ones may have landed. Every emit carries how far its writer's emits were acknowledged
/// (`weir.source.acked_below`, never above its own source offset), and a downstream worker
/// applies each exactly once, whatever order the log holds them in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn emits_sent_again_out_of_order_are_applied_once_downstream() {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(BrokerKind::Mock, "outbox-order", 1).await;
    let out = format!("{topic}-big");
    // With its dead-letter topic: the downstream worker reads it.
    broker.create_topic(&out, 1).await;
    // 150 kB emits: a batch's emits fill several produce requests.
    let records: Vec<(String, String)> = (0..20)
        .map(|i| (format!("k{i}"), "150000".to_owned()))
        .collect();
    broker.produce(&topic, Some(0), records.clone()).await;
    broker
        .embedded()
        .expect("mock")
        .inject_request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
        )
        .expect("inject");
    let upstream = RunningWorker::spawn(
        broker
            .worker(&group, &topic, dir.path())
            .build(SizedEmits)
            .expect("build"),
    );
    let path = dir.path().join(&group).join(&topic).join("0.sqlite");
    wait_until("every emit acknowledged", Duration::from_secs(90), || {
        let path = path.clone();
        let topic = topic.clone();
        async move {
            let store = PartitionStore::open(&path).map_err(|e| e.to_string())?;
            let next = store.next_offset(&topic, 0).map_err(|e| e.to_string())?;
            let pending = store.pending_outbox(1).map_err(|e| e.to_string())?.len();
            match (next, pending) {
                (Some(20), 0) => Ok(()),
                seen => Err(format!("(next offset, outbox rows) {seen:?}")),
            }
        }
    })
    .await;
    upstream.stop_cleanly().await;

    let log = read_all(broker.bootstrap(), &out, 1);
    let positions: Vec<(i64, i64)> = log
        .iter()
        .map(|m| {
            let number = |name: &str| -> i64 {
                header(m, name)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{name} on every emit"))
            };
            (
                number("weir.source.offset"),
                number("weir.source.acked_below"),
            )
        })
        .collect();
    eprintln!("the log's (source offset, acked below): {positions:?}");
    assert!(
        positions.iter().all(|(offset, below)| below <= offset),
        "a floor above its own record: {positions:?}"
    );
    let sent: std::collections::BTreeSet<i64> = positions.iter().map(|(o, _)| *o).collect();
    assert_eq!(sent, (0..20).collect(), "every emit reached the log");

    let downstream_group = unique("outbox-order-down");
    let downstream = RunningWorker::spawn(
        broker
            .worker(&downstream_group, &out, dir.path())
            .build(CountHandler::default())
            .expect("build"),
    );
    let total = log.len() as i64;
    wait_processed(Duration::from_secs(60), total, || {
        StoredCounts::read(dir.path(), &downstream_group, &out)
            .offsets
            .values()
            .sum()
    })
    .await;
    downstream.stop_cleanly().await;
    let counts = StoredCounts::read(dir.path(), &downstream_group, &out).counts;
    assert_counts_exact(&counts, &expected_counts(&records));
}
