//! Dead letters on a real broker: a record that fails every attempt and one that cannot be
//! decoded go to `<topic>.dlq` with their key, value and error headers; the partition goes on
//! and every other record counts exactly once.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::message::{Headers, Message};
use weir_tests::*;

async fn failing_records_go_to_the_dead_letter_topic(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "dlq", 2).await;
    let mut good = keyed_records(0, 2_000, 20);
    broker
        .produce(&topic, Some(0), good[..1_000].to_vec())
        .await;
    broker
        .produce(&topic, Some(0), [("kp".to_owned(), "poison".to_owned())])
        .await;
    broker
        .produce(&topic, Some(0), good[1_000..].to_vec())
        .await;
    // Not UTF-8: the Utf8 codec cannot decode it. Its own header must reach the dead letter.
    let producer: rdkafka::producer::FutureProducer = broker.client().create().expect("producer");
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&topic)
                .partition(1)
                .key("kb")
                .payload(&[0xffu8, 0xfe][..])
                .headers(
                    rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                        key: "trace-id",
                        value: Some("t-42"),
                    }),
                ),
            Duration::from_secs(10),
        )
        .await
        .expect("produce undecodable");
    let more = keyed_records(2_000, 500, 20);
    broker.produce(&topic, Some(1), more.clone()).await;
    good.extend(more);

    let worker = broker
        .worker(&group, &topic, dir.path())
        .retry(weir::worker::RetryPolicy {
            max_attempts: 3,
            backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
        })
        .metrics_addr("127.0.0.1:0")
        .build(CountHandler::with_poison("poison", u64::MAX))
        .expect("build");
    let addr = worker.metrics_addr().expect("metrics");
    let worker = RunningWorker::spawn(worker);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&good),
        Duration::from_secs(90),
    )
    .await;
    let s = StoredCounts::read(dir.path(), &group, &topic);
    assert_eq!(
        s.offsets.values().sum::<i64>(),
        good.len() as i64 + 2,
        "offsets moved past both dead letters"
    );

    let letters = broker
        .consume(&format!("{topic}.dlq"), 2, Duration::from_secs(30))
        .await;
    let mut by_reason: HashMap<String, HashMap<String, String>> = HashMap::new();
    for m in &letters {
        let headers: HashMap<String, String> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        by_reason.insert(
            headers.get("weir.reason").cloned().unwrap_or_default(),
            headers,
        );
    }
    let failed = &by_reason["failed"];
    assert_eq!(failed["weir.source.topic"], topic);
    assert_eq!(failed["weir.source.partition"], "0");
    assert_eq!(failed["weir.source.offset"], "1000");
    assert_eq!(failed["weir.attempts"], "3");
    assert!(failed["weir.error"].contains("poison record"), "{failed:?}");
    let undecodable = &by_reason["undecodable"];
    assert_eq!(undecodable["weir.attempts"], "1");
    assert_eq!(
        undecodable.get("trace-id").map(String::as_str),
        Some("t-42"),
        "the record's own headers are kept: {undecodable:?}"
    );
    assert!(
        undecodable["weir.error"].contains("invalid UTF-8"),
        "{undecodable:?}"
    );
    let poison = letters
        .iter()
        .find(|m| m.payload() == Some(b"poison".as_slice()))
        .expect("poison letter");
    assert_eq!(
        poison.key(),
        Some(b"kp".as_slice()),
        "the original key is kept"
    );
    let raw = letters
        .iter()
        .find(|m| m.payload() == Some([0xffu8, 0xfe].as_slice()));
    assert!(raw.is_some(), "the undecodable bytes are kept as they were");

    let (_, body) = http_get(addr, "/metrics").await;
    let dead: f64 = body
        .lines()
        .filter(|l| l.starts_with("weir_dead_letters_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(dead, 2.0, "{body}");
    worker.stop_cleanly().await;
}
on_both_brokers!(dead_letters, failing_records_go_to_the_dead_letter_topic);

/// Dead-letter headers by reason, for each letter of `topic`'s dead-letter topic.
fn reasons(letters: &[rdkafka::message::OwnedMessage]) -> Vec<(String, String)> {
    letters
        .iter()
        .map(|m| {
            let reason = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "weir.reason"))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            (
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                reason,
            )
        })
        .collect()
}

/// With `keep_key_order`, a key whose record was dead-lettered stays dead-lettered across a
/// real restart (a new process opening the store): its later records follow it to the
/// dead-letter topic instead of being processed out of order.
async fn key_order_is_kept_across_a_restart(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "dlq-order", 1).await;
    let worker = |dir: &std::path::Path| {
        broker
            .worker(&group, &topic, dir)
            .keep_key_order(true)
            .retry(TWO_QUICK_ATTEMPTS)
            .build(CountHandler::with_poison("poison", u64::MAX))
            .expect("build")
    };
    let first: Vec<(String, String)> = vec![
        ("a".into(), "a1".into()),
        ("kx".into(), "poison".into()),
        ("kx".into(), "x1".into()),
        ("a".into(), "a2".into()),
    ];
    broker.produce(&topic, Some(0), first).await;
    let w = RunningWorker::spawn(worker(dir.path()));
    let letters = broker
        .consume(&format!("{topic}.dlq"), 2, Duration::from_secs(60))
        .await;
    assert_eq!(
        reasons(&letters),
        [
            ("poison".to_owned(), "failed".to_owned()),
            ("x1".to_owned(), "follows-dead-letter".to_owned())
        ]
    );
    wait_for_total(dir.path(), &group, &topic, 2, Duration::from_secs(30)).await;
    w.stop_cleanly().await;

    // A restart: the store is opened anew; a later record of the key follows it again.
    broker
        .produce(
            &topic,
            Some(0),
            [("kx".into(), "x2".into()), ("a".into(), "a3".into())],
        )
        .await;
    let w = RunningWorker::spawn(worker(dir.path()));
    let s = wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &[("a".to_owned(), 3u64)].into_iter().collect(),
        Duration::from_secs(60),
    )
    .await;
    w.stop_cleanly().await;
    assert_eq!(
        s.offsets.get(&0),
        Some(&6),
        "every record is behind the offset"
    );
    let letters = broker
        .consume(&format!("{topic}.dlq"), 3, Duration::from_secs(60))
        .await;
    assert_eq!(
        reasons(&letters).last(),
        Some(&("x2".to_owned(), "follows-dead-letter".to_owned())),
        "after the restart: {:?}",
        reasons(&letters)
    );
}
on_both_brokers!(key_order_after_restart, key_order_is_kept_across_a_restart);

/// A batch commits only after its dead letter is acknowledged: while the broker refuses the
/// dead letter (mock fault injection: the producer retries it), the partition's stored offset
/// stays at or before the failed record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_batch_commits_only_after_its_dead_letter_is_acknowledged() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(BrokerKind::Mock, "dlq-ack", 1).await;
    let mut records = keyed_records(0, 10, 5);
    records.push(("kp".into(), "poison".into()));
    records.extend(keyed_records(10, 10, 5));
    broker.produce(&topic, Some(0), records.clone()).await;
    broker
        .embedded()
        .expect("mock")
        .inject_request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 20],
        )
        .expect("inject");
    let worker = broker
        .worker(&group, &topic, dir.path())
        .retry(TWO_QUICK_ATTEMPTS)
        .metrics_addr("127.0.0.1:0")
        .build(CountHandler::with_poison("poison", u64::MAX))
        .expect("build");
    let addr = worker.metrics_addr().expect("metrics");
    let worker = RunningWorker::spawn(worker);
    let dlq = format!("{topic}.dlq");
    let probe: BaseConsumer = broker.client().create().expect("client");
    let mut window = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        // The stored offset first: the dead letter can only arrive after this sample.
        let stored = StoredCounts::read(dir.path(), &group, &topic)
            .offsets
            .get(&0)
            .copied();
        let (_, dlq_high) = probe
            .fetch_watermarks(&dlq, 0, Duration::from_secs(5))
            .expect("watermarks");
        let (_, body) = http_get(addr, "/metrics").await;
        let failures = sample(&body, "weir_messages_total", &[("outcome", "error")]).unwrap_or(0.0);
        if dlq_high == 0 {
            assert!(
                stored.is_none_or(|o| o <= 10),
                "the batch committed (offset {stored:?}) before its dead letter was acknowledged"
            );
            if failures >= 2.0 {
                window += 1;
            }
        }
        if stored == Some(records.len() as i64) && dlq_high == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not done: stored {stored:?}, dead letters {dlq_high}, failures {failures}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("{window} samples saw the dead letter pending and the batch uncommitted");
    assert!(
        window > 0,
        "never saw the dead letter pending after the last attempt"
    );
    worker.stop_cleanly().await;
}
