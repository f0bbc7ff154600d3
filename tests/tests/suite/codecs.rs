//! Records compressed with every codec Kafka knows (none, gzip, snappy, lz4, zstd), produced
//! by a client that is not weir's own librdkafka build (Python confluent-kafka), are consumed
//! with exact counts.

use std::time::Duration;

use weir_tests::*;

const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

async fn every_codec_is_consumed(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "codecs", 2).await;
    let per_codec = 1_000;
    for (i, codec) in CODECS.iter().enumerate() {
        python_produce(
            broker.bootstrap(),
            &topic,
            i * per_codec,
            per_codec,
            codec,
            &[],
        );
    }
    let n = CODECS.len() * per_codec;
    // The Python producer numbers records as `keyed_records` does.
    let expected = expected_counts(&keyed_records(0, n, 50));
    let worker = RunningWorker::spawn(
        broker
            .worker(&group, &topic, dir.path())
            .build(CountHandler::default())
            .expect("build"),
    );
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected,
        Duration::from_secs(60),
    )
    .await;
    worker.stop_cleanly().await;
    let s = StoredCounts::read(dir.path(), &group, &topic);
    assert_eq!(s.offsets.values().sum::<i64>(), n as i64);
}

on_both_brokers!(all_codecs, every_codec_is_consumed);
