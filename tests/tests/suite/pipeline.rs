//! Pipelines: a record an upstream weir stage emitted carries its source position
//! (`weir.source.topic`, `.partition`, `.offset`, `.seq`); a downstream worker applies each
//! position once, so an upstream crash that sends its emits again never counts twice
//! downstream, and never drops a record it has not applied.

use std::collections::BTreeMap;
use std::time::Duration;

use weir::prelude::*;
use weir::testing::TestKit;
use weir_tests::*;

/// Emits every record twice to `copies`, keyed like it.
#[derive(Handler)]
#[handler(topic = "orders", key = Utf8, value = Utf8)]
struct Twice;

impl Process for Twice {
    type Error = weir::Error;

    async fn process(&self, r: Record<'_, String, String>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        for copy in ["a", "b"] {
            let value = format!("{}-{copy}", r.value());
            ctx.emit("copies", Some(r.key().as_bytes()), value.as_bytes(), &[]);
        }
        Ok(())
    }
}

fn header<'a>(r: &'a weir::testing::OutboxRecord, name: &str) -> &'a str {
    r.headers
        .iter()
        .filter(|(k, _)| *k == name)
        .last()
        .map(|(_, v)| std::str::from_utf8(v).expect("utf-8"))
        .unwrap_or_else(|| panic!("header {name}"))
}

#[tokio::test]
async fn emits_are_numbered_within_their_source_record_and_applied_once_downstream() {
    let mut upstream = TestKit::new(Twice).expect("kit");
    for i in 0..20 {
        upstream.send(format!("k{}", i % 3), format!("v{i}"));
    }
    upstream.run().await.expect("run");
    let emitted = upstream.emitted_to("copies");
    assert_eq!(emitted.len(), 40);
    for (i, r) in emitted.iter().enumerate() {
        assert_eq!(header(r, "weir.source.offset"), (i / 2).to_string());
        assert_eq!(header(r, "weir.source.seq"), (i % 2).to_string());
    }

    // Downstream: every emit, then (an upstream crash) the second half again, then all of it
    // once more in a later run.
    let mut downstream = TestKit::new(CountHandler::default()).expect("kit");
    let send = |kit: &mut TestKit<CountHandler>, records: &[weir::testing::OutboxRecord]| {
        for r in records {
            let headers: Vec<(&str, &[u8])> = r.headers.iter().collect();
            kit.send_to("copies", 0, r.key.as_deref(), r.value.as_deref(), &headers);
        }
    };
    send(&mut downstream, &emitted);
    send(&mut downstream, &emitted[20..]);
    downstream.run().await.expect("run");
    send(&mut downstream, &emitted);
    downstream.run().await.expect("run");
    let counts: BTreeMap<String, u64> = downstream.entries(COUNTS).expect("entries");
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..20 {
        *expected.entry(format!("k{}", i % 3)).or_insert(0) += 2;
    }
    assert_counts_exact(&counts, &expected);
    assert_eq!(
        downstream.committed_offset("copies", 0).expect("offset"),
        Some(100),
        "every record taken, the repeated ones dropped"
    );
}

#[tokio::test]
async fn records_without_a_source_position_are_all_applied() {
    let mut kit = TestKit::new(CountHandler::default()).expect("kit");
    kit.send("k", "1").send("k", "1");
    // A source without an offset (a timer's emit) identifies nothing: applied too.
    let no_offset: [(&str, &[u8]); 2] =
        [("weir.source.topic", b"t"), ("weir.source.partition", b"0")];
    kit.send_to("test", 0, Some(b"k"), Some(b"2"), &no_offset);
    kit.send_to("test", 0, Some(b"k"), Some(b"2"), &no_offset);
    kit.run().await.expect("run");
    assert_eq!(kit.get::<str, u64>(COUNTS, "k").expect("get"), Some(4));
}

/// An upstream stage's emits, as a crashed upstream would send them: each upstream partition's
/// records in order, then its second half again; two upstream partitions interleaved.
fn resent_emits(upstream_topic: &str, per_partition: i64) -> Vec<HeadedRecord> {
    let mut out = Vec::new();
    for pass in [0..per_partition, per_partition / 2..per_partition] {
        for offset in pass {
            for up_partition in 0..2 {
                for seq in 0..2 {
                    let key = format!("k{}", (offset + seq) % 5);
                    let headers = vec![
                        ("weir.source.topic".to_owned(), upstream_topic.to_owned()),
                        ("weir.source.partition".to_owned(), up_partition.to_string()),
                        ("weir.source.offset".to_owned(), offset.to_string()),
                        ("weir.source.seq".to_owned(), seq.to_string()),
                    ];
                    out.push((key, format!("{up_partition}/{offset}/{seq}"), headers));
                }
            }
        }
    }
    out
}

async fn a_downstream_stage_applies_each_upstream_emit_once(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "stage2", 1).await;
    let records = resent_emits("stage1", 100);
    broker.produce_with_headers(&topic, 0, &records).await;
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for offset in 0..100i64 {
        for seq in 0..2 {
            *expected
                .entry(format!("k{}", (offset + seq) % 5))
                .or_insert(0) += 2;
        }
    }
    let worker = broker
        .worker(&group, &topic, dir.path())
        .metrics_addr("127.0.0.1:0")
        .build(CountHandler::default())
        .expect("build");
    let addr = worker.metrics_addr().expect("metrics address");
    let worker = RunningWorker::spawn(worker);
    let total = records.len() as i64;
    wait_processed(Duration::from_secs(60), total, || {
        StoredCounts::read(dir.path(), &group, &topic)
            .offsets
            .values()
            .sum()
    })
    .await;
    let (_, body) = http_get(addr, "/metrics").await;
    worker.stop_cleanly().await;
    let stored = StoredCounts::read(dir.path(), &group, &topic);
    assert_counts_exact(&stored.counts, &expected);
    assert_eq!(
        sample(
            &body,
            "weir_duplicates_dropped_total",
            &[("topic", topic.as_str())]
        ),
        Some(200.0),
        "the re-sent half of each upstream partition's emits"
    );
}

on_both_brokers!(
    downstream_applies_once,
    a_downstream_stage_applies_each_upstream_emit_once
);

/// Issue 25, item 4: two writers (two stages, or two applications) read the same upstream
/// partition and emit into one downstream partition. Their emits carry the same source
/// positions, so the downstream mark must tell the writers apart (before the fix, one mark
/// per upstream partition dropped the second writer's emits as re-sends: totals short).
#[tokio::test]
async fn two_writers_of_one_source_partition_are_each_applied_once() {
    let mut emitted = Vec::new();
    for group in ["shop-a", "shop-b"] {
        let mut upstream = TestKit::new(Twice).expect("kit").group(group);
        for i in 0..20 {
            upstream.send(format!("k{}", i % 3), format!("v{i}"));
        }
        upstream.run().await.expect("run");
        let out = upstream.emitted_to("copies");
        assert!(out.iter().all(|r| header(r, "weir.source.group") == group));
        emitted.push(out);
    }
    // Interleaved as two producers' records land in one partition, then one writer's second
    // half again (its crash).
    let mut downstream = TestKit::new(CountHandler::default()).expect("kit");
    let mut send = |r: &weir::testing::OutboxRecord| {
        let headers: Vec<(&str, &[u8])> = r.headers.iter().collect();
        downstream.send_to("copies", 0, r.key.as_deref(), r.value.as_deref(), &headers);
    };
    for (a, b) in emitted[0].iter().zip(&emitted[1]) {
        send(a);
        send(b);
    }
    for r in &emitted[1][20..] {
        send(r);
    }
    downstream.run().await.expect("run");
    let counts: BTreeMap<String, u64> = downstream.entries(COUNTS).expect("entries");
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..20 {
        *expected.entry(format!("k{}", i % 3)).or_insert(0) += 4;
    }
    assert_counts_exact(&counts, &expected);
}

/// One writer's emit of upstream record `offset` (seq 0) of `stage1`/0, keyed `e<offset>`,
/// with the `weir.source.acked_below` its send carried.
fn emit_of(offset: i64, acked_below: i64) -> (String, Vec<(&'static str, String)>) {
    let headers = vec![
        ("weir.source.topic", "stage1".to_owned()),
        ("weir.source.partition", "0".to_owned()),
        ("weir.source.offset", offset.to_string()),
        ("weir.source.seq", "0".to_owned()),
        ("weir.source.group", "shop".to_owned()),
        ("weir.source.acked_below", acked_below.to_string()),
    ];
    (format!("e{offset}"), headers)
}

fn send_emit(kit: &mut TestKit<CountHandler>, offset: i64, acked_below: i64, value: &str) {
    let (key, headers) = emit_of(offset, acked_below);
    let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    kit.send_to(
        "copies",
        0,
        Some(key.as_bytes()),
        Some(value.as_bytes()),
        &headers,
    );
}

/// Issue 25, item 5: the broker refused the request holding an upstream flush's first emits
/// (0..5) and took the next (6..11); the flush is made again, all of it. The downstream log
/// holds 6..11 before 0..5. Each emit must be applied once (before the fix, the mark was
/// the newest position applied, 11, and dropped 0..5 as re-sends: lost).
#[tokio::test]
async fn emits_sent_again_after_later_ones_landed_are_applied_once() {
    let mut kit = TestKit::new(CountHandler::default()).expect("kit");
    let send = |kit: &mut TestKit<CountHandler>, offset: i64, acked_below: i64| {
        let (key, headers) = emit_of(offset, acked_below);
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        kit.send_to("copies", 0, Some(key.as_bytes()), Some(b"1"), &headers);
    };
    for offset in (6..12).chain(0..12) {
        send(&mut kit, offset, 0);
    }
    kit.run().await.expect("run");
    // The next flush: everything below 12 acknowledged. A crash re-sends 3 and 12 (dropped);
    // 13 is new.
    for (offset, acked_below) in [(12, 12), (3, 12), (12, 12), (13, 12)] {
        send(&mut kit, offset, acked_below);
    }
    kit.run().await.expect("run");
    let counts: BTreeMap<String, u64> = kit.entries(COUNTS).expect("entries");
    let expected: BTreeMap<String, u64> = (0..14).map(|o| (format!("e{o}"), 1)).collect();
    assert_counts_exact(&counts, &expected);
}

/// A dead-lettered upstream emit was handled: an upstream re-send of it is dropped, not
/// dead-lettered a second time.
#[tokio::test]
async fn a_dead_lettered_emit_sent_again_is_not_dead_lettered_twice() {
    let mut kit = TestKit::new(CountHandler::with_poison("poison", u64::MAX))
        .expect("kit")
        .max_attempts(1);
    send_emit(&mut kit, 0, 0, "1");
    send_emit(&mut kit, 1, 0, "poison");
    send_emit(&mut kit, 2, 0, "1");
    kit.run().await.expect("run");
    send_emit(&mut kit, 1, 0, "poison");
    kit.run().await.expect("run");
    let dead = kit.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let counts: BTreeMap<String, u64> = kit.entries(COUNTS).expect("entries");
    let expected: BTreeMap<String, u64> = [("e0".to_owned(), 1), ("e2".to_owned(), 1)].into();
    assert_counts_exact(&counts, &expected);
}

/// Emits every record to `copies` with all of its headers.
#[derive(Handler)]
#[handler(topic = "orders", key = Utf8, value = Utf8)]
struct PassHeaders;

impl Process for PassHeaders {
    type Error = weir::Error;

    async fn process(&self, r: Record<'_, String, String>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        let headers: Vec<(&str, &[u8])> = r
            .headers()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect();
        ctx.emit(
            "copies",
            Some(r.key().as_bytes()),
            r.value().as_bytes(),
            &headers,
        );
        Ok(())
    }
}

/// A stage that passes its input's headers along does not pass on the upstream writer's
/// `weir.source.acked_below`: it would speak for the wrong writer (only the outbox sets a
/// writer's own, as it sends).
#[tokio::test]
async fn an_upstream_writers_acked_below_is_not_passed_along() {
    let mut kit = TestKit::new(PassHeaders).expect("kit");
    let (key, headers) = emit_of(7, 5);
    let mut headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    headers.push(("app", b"kept"));
    kit.send_to("orders", 0, Some(key.as_bytes()), Some(b"v"), &headers);
    kit.run().await.expect("run");
    let out = kit.emitted_to("copies");
    assert_eq!(out.len(), 1);
    let names: Vec<&str> = out[0].headers.iter().map(|(k, _)| k).collect();
    assert!(!names.contains(&"weir.source.acked_below"), "{names:?}");
    assert!(names.contains(&"app"), "{names:?}");
    assert_ne!(
        header(&out[0], "weir.source.group"),
        "shop",
        "the stage's own writer comes last"
    );
}
