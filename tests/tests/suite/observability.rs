//! Flow control and observability: lag on /metrics, series of a moved partition gone, health,
//! bounded queues with a paused partition under a backlog, and a handler slower than
//! max.poll.interval.ms that does not get the worker evicted.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use weir_tests::*;

async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics: {body}");
    body
}

fn lag_of(body: &str, topic: &str, p: i32) -> Option<f64> {
    sample(
        body,
        "weir_consumer_lag",
        &[("topic", topic), ("partition", &p.to_string())],
    )
}

async fn lag_reads_produced_minus_processed(kind: BrokerKind) {
    const N: usize = 1_000;
    const M: usize = 600;
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "lag", 2).await;
    let p0: Vec<(String, String)> = (0..N)
        .map(|i| (format!("k{}", i % 10), format!("v{i}")))
        .collect();
    let p1: Vec<(String, String)> = (0..N)
        .map(|i| (format!("k{}", i % 10), format!("w{i}")))
        .collect();
    broker.produce(&topic, Some(0), p0.clone()).await;
    broker.produce(&topic, Some(1), p1.clone()).await;

    // Partition 0 holds at record M (batches of 1: exactly M records committed).
    let handler = CountHandler {
        stall_on: Some(format!("v{M}")),
        ..Default::default()
    };
    let gate = handler.release.clone();
    let worker = broker
        .worker(&group, &topic, dir.path())
        .batch_size(1)
        .metrics_addr("127.0.0.1:0")
        .build(handler)
        .expect("build");
    let addr = worker.metrics_addr().expect("metrics address");
    let worker_a = RunningWorker::spawn(worker);

    let (status, _) = http_get(addr, "/health/live").await;
    assert_eq!(status, 200, "live while running");
    let expect = (N - M) as f64;
    wait_until(
        &format!("lag {expect} on partition 0, 0 on partition 1"),
        Duration::from_secs(60),
        || async {
            let body = scrape(addr).await;
            let (l0, l1) = (lag_of(&body, &topic, 0), lag_of(&body, &topic, 1));
            if l0 == Some(expect) && l1 == Some(0.0) {
                Ok(())
            } else {
                Err(format!("lag p0 {l0:?}, p1 {l1:?}"))
            }
        },
    )
    .await;
    let body = scrape(addr).await;
    assert_eq!(sample(&body, "weir_owned_partitions", &[]), Some(2.0));
    assert!(
        sample(&body, "weir_consumer_lag_seconds", &[("partition", "0")]).is_some_and(|s| s > 0.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "weir_partition_processed", &[("partition", "1")]),
        Some(N as f64)
    );
    // The two partitions' 10 counts each sit in the state cache (the gauge is set every
    // second): about 100 bytes an entry.
    wait_until(
        "the state cache to hold the counts",
        Duration::from_secs(10),
        || async {
            let bytes = sample(&scrape(addr).await, "weir_state_cache_bytes", &[]);
            if bytes.is_some_and(|b| (1_000.0..10_000.0).contains(&b)) {
                Ok(())
            } else {
                Err(format!("weir_state_cache_bytes {bytes:?}"))
            }
        },
    )
    .await;
    let (status, _) = http_get(addr, "/health/ready").await;
    assert_eq!(status, 200, "ready once in the group");

    gate.open();
    wait_until("lag 0 on partition 0", Duration::from_secs(60), || async {
        let l0 = lag_of(&scrape(addr).await, &topic, 0);
        if l0 == Some(0.0) {
            Ok(())
        } else {
            Err(format!("lag p0 {l0:?}"))
        }
    })
    .await;

    // A second worker takes one partition: its series leave the first worker's /metrics.
    let worker = broker
        .worker(&group, &topic, dir.path())
        .build(CountHandler::default())
        .expect("build");
    let worker_b = RunningWorker::spawn(worker);
    wait_until(
        "one partition moved to the second worker",
        Duration::from_secs(60),
        || async {
            let body = scrape(addr).await;
            let owned = sample(&body, "weir_owned_partitions", &[]);
            let series = (0..2)
                .filter(|p| lag_of(&body, &topic, *p).is_some())
                .count();
            if owned == Some(1.0) && series == 1 {
                Ok(())
            } else {
                Err(format!("owned {owned:?}, lag series {series}"))
            }
        },
    )
    .await;
    let body = scrape(addr).await;
    let gone = (0..2)
        .find(|p| lag_of(&body, &topic, *p).is_none())
        .expect("a partition moved");
    for name in [
        "weir_consumer_lag",
        "weir_queue_depth",
        "weir_partition_paused",
        "weir_consumer_lag_seconds",
    ] {
        assert!(
            sample(&body, name, &[("partition", &gone.to_string())]).is_none(),
            "{name} of moved partition {gone} still exported:\n{body}"
        );
    }

    worker_b.stop_cleanly().await;
    worker_a.stop_cleanly().await;
    let mut all = p0;
    all.extend(p1);
    let s = StoredCounts::read(dir.path(), &group, &topic);
    assert_counts_exact(&s.counts, &expected_counts(&all));
}
on_both_brokers!(lag_metrics, lag_reads_produced_minus_processed);

async fn backlog_is_paused_not_buffered(kind: BrokerKind) {
    const N: usize = 1_000_000;
    const CAPACITY: usize = 200;
    let broker = TestBroker::start(kind);
    let (topic, group) = (unique("backlog"), unique("g"));
    // The mock cluster keeps ~5 MiB per partition: spread the backlog over 8.
    broker.create_topic(&topic, 8).await;
    broker
        .produce(
            &topic,
            None,
            (0..N).map(|i| (format!("k{}", i % 1000), i.to_string())),
        )
        .await;
    let rss_before = rss_mib();

    let dir = tempfile::tempdir().expect("tempdir");
    let handler = CountHandler {
        delay: Some(Duration::from_micros(200)),
        ..Default::default()
    };
    let worker = broker
        .worker(&group, &topic, dir.path())
        .queue_capacity(CAPACITY)
        .batch_size(100)
        .metrics_addr("127.0.0.1:0")
        .build(handler)
        .expect("build");
    let addr = worker.metrics_addr().expect("metrics address");
    let worker = RunningWorker::spawn(worker);

    let mut max_depth = 0.0f64;
    let mut paused_seen = 0;
    let mut max_rss = rss_before;
    let mut scrapes = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        scrapes += 1;
        let body = scrape(addr).await;
        for line in body.lines().filter(|l| l.starts_with("weir_queue_depth{")) {
            let v: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            max_depth = max_depth.max(v);
        }
        paused_seen += body
            .lines()
            .filter(|l| l.starts_with("weir_partition_paused{") && l.ends_with(" 1"))
            .count();
        max_rss = max_rss.max(rss_mib());
        let done = StoredCounts::read(dir.path(), &group, &topic).total();
        if done >= 30_000 && paused_seen > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for 30000 records with paused partitions: {done} done, paused seen {paused_seen}"
        );
        // Sampled often, so that a queue overrunning its bound is seen.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "{kind:?}: {N} backlog, {scrapes} scrapes: max queue depth {max_depth} (capacity {CAPACITY}), \
         paused seen {paused_seen}x, RSS {rss_before:.0} MiB before, max {max_rss:.0} MiB"
    );
    // The queue holds at most its capacity, plus what is left of the poll burst (at most
    // 512 records) that found it full.
    assert!(
        max_depth <= (CAPACITY + 512) as f64,
        "queue depth {max_depth} > capacity {CAPACITY} + one burst"
    );
    assert!(
        max_rss - rss_before < 150.0,
        "RSS grew {:.0} MiB while draining",
        max_rss - rss_before
    );
    worker.stop_cleanly().await;
}
on_both_brokers!(backpressure, backlog_is_paused_not_buffered);

async fn handler_slower_than_max_poll_interval(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "slow", 2).await;
    let records = keyed_records(0, 2_000, 50);
    broker.produce(&topic, None, records.clone()).await;
    // One record takes 9 s; max.poll.interval.ms is 6 s.
    let handler = CountHandler {
        slow_on: Some(("v1000".into(), Duration::from_secs(9))),
        ..Default::default()
    };
    let attempts = handler.attempts.clone();
    let worker = broker
        .worker(&group, &topic, dir.path())
        .kafka("max.poll.interval.ms", "6000")
        .metrics_addr("127.0.0.1:0")
        .build(handler)
        .expect("build");
    let addr = worker.metrics_addr().expect("metrics address");
    let worker = RunningWorker::spawn(worker);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&records),
        Duration::from_secs(90),
    )
    .await;
    let body = scrape(addr).await;
    let revokes = sample(
        &body,
        "weir_rebalances_total",
        &[("kind", "revoke"), ("group", &group)],
    )
    .unwrap_or(0.0)
        + sample(
            &body,
            "weir_rebalances_total",
            &[("kind", "lost"), ("group", &group)],
        )
        .unwrap_or(0.0);
    assert_eq!(
        revokes, 0.0,
        "the worker lost partitions while the handler was slow:\n{body}"
    );
    assert_eq!(
        sample(
            &body,
            "weir_rebalances_total",
            &[("kind", "assign"), ("group", &group)]
        ),
        Some(1.0)
    );
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        records.len() as u64,
        "a record was processed twice"
    );
    worker.stop_cleanly().await;
    let s = StoredCounts::read(dir.path(), &group, &topic);
    assert_counts_exact(&s.counts, &expected_counts(&records));
    assert_eq!(
        s.offsets.values().sum::<i64>(),
        records.len() as i64,
        "the stored offsets cover every record once"
    );
}
on_both_brokers!(slow_handler, handler_slower_than_max_poll_interval);

async fn drain_deadline_names_unreleased_partitions(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "drain", 2).await;
    broker
        .produce(&topic, Some(0), keyed_records(0, 100, 10))
        .await;
    broker
        .produce(&topic, Some(1), keyed_records(100, 100, 10))
        .await;
    // The record v50 (partition 0) never finishes.
    let handler = CountHandler {
        stall_on: Some("v50".into()),
        ..Default::default()
    };
    let stalled = handler.stalled.clone();
    let worker = broker
        .worker(&group, &topic, dir.path())
        .drain_timeout(Duration::from_secs(2))
        .build(handler)
        .expect("build");
    let worker = RunningWorker::spawn(worker);
    wait_stalled(&stalled).await;
    let asked = std::time::Instant::now();
    let err = worker.stop().await.expect_err("the drain cannot finish");
    let waited = asked.elapsed();
    match &err {
        weir::Error::DrainTimeout { partitions, .. } => {
            assert!(partitions.contains(&format!("{topic}/0")), "{err}");
        }
        other => panic!("expected DrainTimeout, got {other}"),
    }
    assert!(waited < Duration::from_secs(10), "gave up after {waited:?}");
    // Partition 0 committed nothing from the hung batch on.
    let s = StoredCounts::read(dir.path(), &group, &topic);
    assert!(
        s.offsets.get(&0).is_none_or(|o| *o <= 50),
        "offsets {:?}",
        s.offsets
    );
}
on_both_brokers!(drain_deadline, drain_deadline_names_unreleased_partitions);
