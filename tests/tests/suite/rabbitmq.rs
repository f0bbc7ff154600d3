//! weir on RabbitMQ (Debian's rabbitmq-server 3.10, started by `scripts/rabbitmq.sh`): topic
//! `T` is the consistent-hash exchange `T` feeding quorum queues `T.0 .. T.<N-1>`, each
//! consumed with single active consumer; a batch's state and its messages' ids commit in one
//! transaction before the acknowledgement, so a redelivered message is applied once.

use std::time::{Duration, Instant};

use weir::prelude::*;
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
    wait_for_lanes(&rabbitmq_url(), &topic, 3).await;
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
    wait_for_empty_amqp_queues(&queues, Duration::from_secs(30)).await;
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

/// Three worker processes, each with its own state dir (three machines) and the changelog on,
/// while messages keep coming: each round a worker that is some lane's active consumer is
/// SIGKILLed mid-round and started again, every third one with its state dir emptied. The
/// broker makes another worker the lane's active consumer and gives it the dead worker's
/// unacknowledged messages again; that worker first restores the lane's state (and the ids of
/// its committed messages) from the changelog's stream, so those the dead worker's last batches
/// committed are recognised by id and dropped. After each kill every lane gets a message, so
/// that a lane the dead worker had finished moves too (with no message, nothing tells the next
/// active consumer). At the end, per lane, the store with the highest position counts exactly
/// that lane's messages, and every worker stops cleanly. Says how long the hand-off after a
/// SIGKILL took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_count_exactly_under_sigkills() {
    const ROUNDS: usize = 6;
    const PER_ROUND: usize = 4_000;
    const KEYS: usize = 200;
    let (topic, group) = (unique("amqp-kill"), unique("g"));
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    // Kept after a failed run: the workers' logs, for the failure's story.
    let logs = tempfile::Builder::new()
        .prefix("amqp-kill-logs-")
        .tempdir()
        .expect("tempdir")
        .keep();
    eprintln!("worker logs in {}", logs.display());
    let mut starts = 0;
    let mut start = |i: usize| {
        starts += 1;
        let log = std::fs::File::create(logs.join(format!("{i}-{starts:03}.log"))).expect("log");
        worker_command(env!("CARGO_BIN_EXE_count-worker"))
            .env("WEIR_BROKERS", rabbitmq_url())
            .env("WEIR_GROUP", &group)
            .env("WEIR_TOPICS", &topic)
            .env("WEIR_STATE_DIR", dirs[i].path())
            .env("WEIR_CHANGELOG", "true")
            .env("WEIR_PARTITIONS", "4")
            .env("WEIR_BATCH_SIZE", "100")
            .env("WEIR_PROGRESS_INTERVAL_MS", "0")
            .env("COUNT_WORKER_DELAY_US", "2000")
            .env(
                "RUST_LOG",
                "warn,weir::broker=info,weir::processing::batch=info,weir::delivery::restore=info",
            )
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn count-worker")
    };
    // Killed when dropped: a failing run leaves no worker behind.
    let mut children: Vec<WorkerProcess> = vec![WorkerProcess(Some(start(0)))];
    // The first declares the topic; the others join it.
    let queues: Vec<String> = (0..4).map(|i| format!("{topic}.{i}")).collect();
    wait_for_lanes(&rabbitmq_url(), &topic, 4).await;
    children.push(WorkerProcess(Some(start(1))));
    children.push(WorkerProcess(Some(start(2))));
    let newest_log = |i: usize| {
        let newest = std::fs::read_dir(&logs)
            .expect("logs")
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{i}-")))
            })
            .max();
        newest
            .map(std::fs::read_to_string)
            .transpose()
            .ok()
            .flatten()
            .unwrap_or_default()
    };
    // A worker that holds lanes now: made some lane's active consumer more often than it lost
    // one (not "consuming ... (single active consumer)": every worker says that).
    let owns = |i: usize| {
        let log = newest_log(i);
        log.matches("made this worker the lane's active consumer")
            .count()
            > log.matches("lane lost").count()
    };
    // A worker is up once it consumes its lanes (a SIGTERM before its handler is installed
    // would end it by the signal's default).
    let up = |i: usize| async move {
        let log = newest_log(i);
        if log.contains("consuming the topic's lane queues") {
            Ok(())
        } else {
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            Err(format!(
                "worker {i} not consuming yet; its log ends {:?}",
                tail.into_iter().rev().collect::<Vec<_>>()
            ))
        }
    };
    for i in 0..3 {
        wait_until("the worker consuming", Duration::from_secs(60), || up(i)).await;
    }
    let mut all = Vec::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(std::process::id());
    let mut hand_offs = Vec::new();
    let counted = || {
        let s = StoredCounts::newest(&dirs, &group, &topic);
        (s.counts, s.offsets)
    };
    for round in 0..ROUNDS {
        python_amqp_publish(&topic, round * PER_ROUND, PER_ROUND, KEYS, true);
        all.extend(keyed_records(round * PER_ROUND, PER_ROUND, KEYS));
        let want = (all.len() - PER_ROUND / 2) as u64;
        wait_until(
            "half the round counted",
            Duration::from_secs(60),
            || async {
                let (counts, positions) = counted();
                let total: u64 = counts.values().sum();
                if total >= want {
                    Ok(())
                } else {
                    Err(format!("{total} counted, positions {positions:?}"))
                }
            },
        )
        .await;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let owners: Vec<usize> = (0..3).filter(|i| owns(*i)).collect();
        assert!(
            !owners.is_empty(),
            "no worker owns a lane; logs in {}",
            logs.display()
        );
        let victim = owners[(rng % owners.len() as u64) as usize];
        children[victim].kill();
        let killed = Instant::now();
        if round % 3 == 2 {
            std::fs::remove_dir_all(dirs[victim].path().join(&group)).expect("empty the state dir");
        }
        // A message for every lane (one per key), so that each of the dead worker's lanes moves:
        // the broker tells the next active consumer by delivering, so a lane whose messages
        // were all acknowledged has its newest state only in the changelog (and in the emptied
        // dir) until its next message.
        let after_kill = ROUNDS * PER_ROUND + round * KEYS;
        python_amqp_publish(&topic, after_kill, KEYS, KEYS, true);
        all.extend(keyed_records(after_kill, KEYS, KEYS));
        let expected = expected_counts(&all);
        wait_until(
            "the killed worker's lanes counted by the others",
            Duration::from_secs(60),
            || async {
                let (counts, positions) = counted();
                if counts == expected {
                    Ok(())
                } else {
                    Err(format!(
                        "{} of {} counted, positions {positions:?}",
                        counts.values().sum::<u64>(),
                        all.len()
                    ))
                }
            },
        )
        .await;
        hand_offs.push(killed.elapsed());
        children[victim] = WorkerProcess(Some(start(victim)));
        wait_until(
            "the restarted worker consuming",
            Duration::from_secs(60),
            || up(victim),
        )
        .await;
    }
    eprintln!("logs in {}", logs.display());
    for mut child in children {
        child.stop();
    }
    let (counts, positions) = counted();
    assert_counts_exact(&counts, &expected_counts(&all));
    assert_eq!(positions.len(), 4, "{positions:?}");
    let depth = python_amqp_depth(&queues);
    assert!(
        depth.values().all(|d| *d == 0),
        "every message acknowledged: {depth:?}"
    );
    let dropped = count_in_logs(&logs, "redelivered messages that a committed batch");
    let restored = count_in_logs(&logs, "partition store restored from its changelog");
    eprintln!("hand-offs after SIGKILLs of lane owners: {hand_offs:?}; restores: {restored}; redeliveries dropped (logged): {dropped}");
    assert!(
        restored > 0,
        "lanes moved between state dirs, so their state came from the changelog; logs in {}",
        logs.display()
    );
    let _ = std::fs::remove_dir_all(&logs);
}

/// What weir emits lands in an exchange it declares on first use (`T-tallies`, with its own
/// lane queues), each emit once, persistent, with weir's headers and a distinct
/// `message_id`, each key's in the order emitted; Python's pika reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_reads_what_weir_emits() {
    use weir_tests::tally::{assert_tallies_in_order, tallies_topic, TallyHandler};
    let (topic, group) = (unique("amqp-emit"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    let running = RunningWorker::spawn(
        rabbitmq_worker(&group, &topic, dir.path())
            .partitions(2)
            .build(TallyHandler::default())
            .expect("build worker"),
    );
    wait_for_lanes(&rabbitmq_url(), &topic, 2).await;
    python_amqp_publish(&topic, 0, 300, 30, true);
    let emits: Vec<String> = (0..2)
        .map(|i| format!("{}.{i}", tallies_topic(&topic)))
        .collect();
    let read = python_amqp_read_until(&emits, 300, Duration::from_secs(60)).await;
    running.stop_cleanly().await;
    assert_eq!(read.len(), 300, "each emit once");
    let mut ids = std::collections::BTreeSet::new();
    for e in &read {
        assert_eq!(e["headers"]["weir.source.topic"], topic.as_str(), "{e}");
        let id = e["message_id"].as_str().expect("a message id");
        assert!(ids.insert(id.to_owned()), "ids are distinct: {id}");
        let key = e["routing_key"].as_str().expect("a key");
        assert!(e["body"].as_str().expect("a body").contains(key), "{e}");
    }
    // Read queue by queue: each key's emits in the order emitted, although the first of them
    // declared the exchange.
    assert_tallies_in_order(
        read.iter().map(|e| e["body"].as_str().expect("a body")),
        30,
        10,
    );
}

/// A message that keeps failing goes, after weir's attempts, to the dead-letter exchange
/// `T.dlq` (declared by weir, the lanes' dead-letter exchange too) with weir's error headers,
/// under its key; every other message is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_message_is_dead_lettered_with_weirs_headers() {
    let (topic, group) = (unique("amqp-dlq"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    let running = RunningWorker::spawn(
        rabbitmq_worker(&group, &topic, dir.path())
            .partitions(2)
            .retry(weir::worker::RetryPolicy {
                max_attempts: 2,
                backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(50),
            })
            .build(CountHandler::with_poison("v7", u64::MAX))
            .expect("build worker"),
    );
    wait_for_lanes(&rabbitmq_url(), &topic, 2).await;
    python_amqp_publish(&topic, 0, 50, 10, true);
    let records: Vec<_> = keyed_records(0, 50, 10)
        .into_iter()
        .filter(|(_, v)| v != "v7")
        .collect();
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&records),
        Duration::from_secs(60),
    )
    .await;
    let dead: Vec<_> = (0..2)
        .flat_map(|i| python_amqp_read(&format!("{topic}.dlq.{i}"), 10, Duration::from_millis(500)))
        .collect();
    running.stop_cleanly().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!(
        (d["routing_key"].as_str(), d["body"].as_str()),
        (Some("k7"), Some("v7")),
        "{d}"
    );
    assert_eq!(d["headers"]["weir.attempts"], "2", "{d}");
    assert!(
        d["headers"]["weir.error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{d}"
    );
    assert_eq!(
        d["headers"]["origin"], "python",
        "the message's own headers go with it: {d}"
    );
}

/// The server is killed (SIGKILL) and started again while a worker counts and messages keep
/// coming: the worker's channels fail, it takes its lanes again once the server is back, the
/// messages it had not acknowledged come again, and every message is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_stream_loses_and_doubles_nothing() {
    let mut server = OwnRabbit::start();
    let (topic, group) = (unique("amqp-restart"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = Worker::builder()
        .brokers(server.url())
        .group(&group)
        .topic(&topic)
        .state_dir(dir.path())
        .partitions(2)
        .metrics_addr("127.0.0.1:0")
        .unreadable_after(Duration::from_secs(1))
        .build(CountHandler {
            delay: Some(Duration::from_micros(500)),
            ..Default::default()
        })
        .expect("build worker");
    let addr = worker.metrics_addr().expect("metrics address");
    let running = RunningWorker::spawn(worker);
    wait_for_lanes(&server.url(), &topic, 2).await;
    python_amqp_publish_at(&server.url(), &topic, 0, 3_000, 100, true);
    wait_until("some counted", Duration::from_secs(30), || async {
        let total = StoredCounts::read(dir.path(), &group, &topic).total();
        if total >= 1_000 {
            Ok(())
        } else {
            Err(format!("{total} counted"))
        }
    })
    .await;
    server.restart();
    python_amqp_publish_at(&server.url(), &topic, 3_000, 2_000, 100, true);
    let all = keyed_records(0, 5_000, 100);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&all),
        Duration::from_secs(90),
    )
    .await;
    let (status, _) = http_get(addr, "/health/ready").await;
    assert_eq!(status, 200, "ready again once reconnected");
    running.stop_cleanly().await;
    let stored = StoredCounts::read(dir.path(), &group, &topic);
    assert_counts_exact(&stored.counts, &expected_counts(&all));
}

/// Each lane's queue depth is its lag on `/metrics` and the status page: ready messages plus
/// those delivered and not yet committed; zero once the worker caught up. The handler stalls
/// at the first message until the test saw the lag, so the lag does not hang on how fast the
/// publisher is against the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depth_is_each_lanes_lag() {
    let (topic, group) = (unique("amqp-lag"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    let handler = CountHandler {
        stall_on: Some("v0".into()),
        ..Default::default()
    };
    let release = handler.release.clone();
    let worker = rabbitmq_worker(&group, &topic, dir.path())
        .partitions(2)
        .metrics_addr("127.0.0.1:0")
        .batch_size(50)
        .build(handler)
        .expect("build worker");
    let addr = worker.metrics_addr().expect("a metrics address");
    let running = RunningWorker::spawn(worker);
    wait_for_lanes(&rabbitmq_url(), &topic, 2).await;
    python_amqp_publish(&topic, 0, 2_000, 40, true);
    let lag = |body: &str, lane: &str| {
        sample(
            body,
            "weir_consumer_lag",
            &[("topic", &topic), ("partition", lane)],
        )
    };
    let highest = std::sync::Mutex::new(0.0_f64);
    wait_until("a lane lagging", Duration::from_secs(30), || async {
        let (_, body) = http_get(addr, "/metrics").await;
        let seen = [lag(&body, "0"), lag(&body, "1")];
        let mut high = highest.lock().expect("lock");
        *high = seen.iter().flatten().fold(*high, |a, b| a.max(*b));
        if *high >= 100.0 {
            Ok(())
        } else {
            Err(format!("lag {seen:?}"))
        }
    })
    .await;
    release.open();
    let highest = *highest.lock().expect("lock");
    assert!(
        highest <= 2_000.0,
        "the lag counts the lane's messages: {highest}"
    );
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&keyed_records(0, 2_000, 40)),
        Duration::from_secs(60),
    )
    .await;
    wait_until("no lag", Duration::from_secs(30), || async {
        let (_, body) = http_get(addr, "/metrics").await;
        let seen = [lag(&body, "0"), lag(&body, "1")];
        if seen == [Some(0.0), Some(0.0)] {
            Ok(())
        } else {
            Err(format!("lag {seen:?}"))
        }
    })
    .await;
    let (_, body) = http_get(addr, "/status.json").await;
    let status: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    let lanes = status["partitions"].as_array().expect("partitions");
    assert_eq!(lanes.len(), 2, "{status}");
    for lane in lanes {
        assert_eq!(lane["lag"], 0, "{lane}");
    }
    running.stop_cleanly().await;
}

/// Messages without a `message_id` are processed (at least once: a redelivery of one could
/// not be recognised) and counted in `weir_messages_without_id_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_without_an_id_are_counted_as_such() {
    let (topic, group) = (unique("amqp-noid"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = rabbitmq_worker(&group, &topic, dir.path())
        .partitions(2)
        .metrics_addr("127.0.0.1:0")
        .build(CountHandler::default())
        .expect("build worker");
    let addr = worker.metrics_addr().expect("a metrics address");
    let running = RunningWorker::spawn(worker);
    wait_for_lanes(&rabbitmq_url(), &topic, 2).await;
    python_amqp_publish(&topic, 0, 40, 8, false);
    python_amqp_publish(&topic, 40, 10, 8, true);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&keyed_records(0, 50, 8)),
        Duration::from_secs(60),
    )
    .await;
    let (_, body) = http_get(addr, "/metrics").await;
    running.stop_cleanly().await;
    let without = sample(
        &body,
        "weir_messages_without_id_total",
        &[("topic", &topic)],
    );
    assert_eq!(without, Some(40.0), "{body}");
}

/// Workers that start together on a topic nobody declared yet each find all of its lanes:
/// one declares the exchange and its queues while the others look, and none sees the exchange
/// before its lane queues (that worker would stop with "exchange exists without lane queues",
/// or consume fewer lanes than the topic has).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_starting_together_on_a_new_topic_each_find_all_its_lanes() {
    const WORKERS: usize = 6;
    let (topic, group) = (unique("amqp-together"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    let running: Vec<RunningWorker> = (0..WORKERS)
        .map(|_| {
            RunningWorker::spawn(
                rabbitmq_worker(&group, &topic, dir.path())
                    .partitions(8)
                    .build(CountHandler::default())
                    .expect("build worker"),
            )
        })
        .collect();
    wait_for_lanes(&rabbitmq_url(), &topic, 8).await;
    python_amqp_publish(&topic, 0, 800, 80, true);
    let records = keyed_records(0, 800, 80);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&records),
        Duration::from_secs(60),
    )
    .await;
    for (i, worker) in running.into_iter().enumerate() {
        if let Err(e) = worker.stop().await {
            panic!("worker {i} of {WORKERS} failed: {e}");
        }
    }
}

/// The `wordcount` and `orders` examples' handlers run on RabbitMQ as on Kafka, with nothing
/// but the brokers changed: word counts in state; order totals in state (an order placed
/// twice counted once) and emitted to `<topic>-totals`, which weir declares on first use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_run_on_rabbitmq() {
    use weir_examples::orders::{totals_topic, OrderTotals};
    use weir_examples::wordcount::WordCount;
    let group = unique("g");
    let dir = tempfile::tempdir().expect("tempdir");

    let lines = unique("lines");
    let running = RunningWorker::spawn(
        rabbitmq_worker(&group, &lines, dir.path())
            .build(WordCount)
            .expect("build wordcount"),
    );
    wait_for_lanes(&rabbitmq_url(), &lines, 4).await;
    python_amqp_publish_records(&lines, &wordcount_lines());
    wait_for_word_counts(dir.path(), &group, &lines).await;
    running.stop_cleanly().await;

    let orders = unique("orders");
    let running = RunningWorker::spawn(
        rabbitmq_worker(&group, &orders, dir.path())
            .partitions(1)
            .build(OrderTotals)
            .expect("build orders"),
    );
    wait_for_lanes(&rabbitmq_url(), &orders, 1).await;
    python_amqp_publish_records(&orders, &placed_orders());
    let totals_queue = format!("{}.0", totals_topic(&orders));
    let totals = python_amqp_read_until(&[totals_queue], 3, Duration::from_secs(30)).await;
    running.stop_cleanly().await;
    let payloads: Vec<&str> = totals
        .iter()
        .map(|t| t["body"].as_str().expect("body"))
        .collect();
    assert_order_totals(&payloads);
}

/// A RabbitMQ stream `S` (a queue of that name and no exchange `S`) is a topic of one lane,
/// read from the store's position, which is the stream's next offset. A worker counts what
/// Python's pika put in it (through a fanout exchange, so each record keeps its key), stops,
/// and started again counts only what came since. A second worker of the group, with its own
/// state dir, owns nothing while the first runs (the stream's owner lock); it takes the stream
/// when the first stops and, with no store of its own, folds the stream from its first record:
/// every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_one_lane_read_from_its_stored_position() {
    let (stream, group) = (unique("amqp-stream"), unique("g"));
    let input = format!("{stream}-in");
    python_amqp_stream(&stream);
    let (first_dir, second_dir) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let worker = |dir: &std::path::Path| {
        rabbitmq_worker(&group, &stream, dir)
            .build(CountHandler::default())
            .expect("build worker")
    };
    python_amqp_publish(&input, 0, 1_000, 40, true);
    let running = RunningWorker::spawn(worker(first_dir.path()));
    let counted = |n: usize| expected_counts(&keyed_records(0, n, 40));
    wait_for_counts(
        first_dir.path(),
        &group,
        &stream,
        &counted(1_000),
        Duration::from_secs(60),
    )
    .await;
    running.stop_cleanly().await;
    let stored = StoredCounts::read(first_dir.path(), &group, &stream);
    assert_eq!(
        stored.offsets.into_iter().collect::<Vec<_>>(),
        [(0, 1_000)],
        "one lane, at the stream's next offset"
    );

    python_amqp_publish(&input, 1_000, 500, 40, true);
    let running = RunningWorker::spawn(worker(first_dir.path()));
    wait_for_counts(
        first_dir.path(),
        &group,
        &stream,
        &counted(1_500),
        Duration::from_secs(60),
    )
    .await;
    let second = RunningWorker::spawn(worker(second_dir.path()));
    python_amqp_publish(&input, 1_500, 500, 40, true);
    wait_for_counts(
        first_dir.path(),
        &group,
        &stream,
        &counted(2_000),
        Duration::from_secs(60),
    )
    .await;
    assert!(
        store_files(second_dir.path(), &group, &stream).is_empty(),
        "the second worker owns nothing while the first holds the stream"
    );
    running.stop_cleanly().await;
    let stored = wait_for_counts(
        second_dir.path(),
        &group,
        &stream,
        &counted(2_000),
        Duration::from_secs(60),
    )
    .await;
    second.stop_cleanly().await;
    assert_counts_exact(&stored.counts, &counted(2_000));
    let stored = StoredCounts::read(second_dir.path(), &group, &stream);
    assert_counts_exact(&stored.counts, &counted(2_000));
    assert_eq!(stored.offsets.into_iter().collect::<Vec<_>>(), [(0, 2_000)]);
}

/// With `queue_max_length`, the lane queues weir declares hold that many ready messages at
/// most and refuse more (`x-overflow: reject-publish`: the publisher gets a nack rather than
/// the oldest messages being dropped), and a lane's fill shows before that: on `/metrics`
/// (`weir_broker_queue_fill_ratio`) and in a warning. The worker stalls at the first message
/// with a small prefetch, so the queue fills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_near_its_length_limit_is_visible_before_publishes_are_refused() {
    let (topic, group) = (unique("amqp-limit"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    let handler = CountHandler {
        stall_on: Some("v0".into()),
        ..Default::default()
    };
    let release = handler.release.clone();
    let worker = rabbitmq_worker(&group, &topic, dir.path())
        .partitions(1)
        .queue_capacity(10)
        .queue_max_length(200)
        .metrics_addr("127.0.0.1:0")
        .build(handler)
        .expect("build worker");
    let addr = worker.metrics_addr().expect("a metrics address");
    let running = RunningWorker::spawn(worker);
    wait_for_lanes(&rabbitmq_url(), &topic, 1).await;
    python_amqp_publish(&topic, 0, 180, 40, true);
    let fill = |body: &str| {
        sample(
            body,
            "weir_broker_queue_fill_ratio",
            &[("topic", &topic), ("partition", "0")],
        )
    };
    wait_until(
        "the lane shown nearly full",
        Duration::from_secs(30),
        || async {
            let (_, body) = http_get(addr, "/metrics").await;
            match fill(&body) {
                Some(f) if f >= 0.8 => Ok(()),
                seen => Err(format!("fill {seen:?}")),
            }
        },
    )
    .await;
    // Past the limit the broker refuses: nothing is dropped that it confirmed.
    let confirmed = python_amqp_publish_refusable(&topic, 180, 50, 40);
    assert!(
        confirmed < 50,
        "the full lane refused some of 50 more: {confirmed} confirmed"
    );
    release.open();
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&keyed_records(0, 180 + confirmed, 40)),
        Duration::from_secs(60),
    )
    .await;
    running.stop_cleanly().await;
}
