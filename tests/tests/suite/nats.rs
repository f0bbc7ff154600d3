//! weir on NATS JetStream (the server `scripts/nats.sh` starts): the same handler counts
//! exactly, lanes move between workers, and a worker resumes at its stored position.

use std::time::{Duration, Instant};

use weir::prelude::*;
use weir_tests::*;

/// One worker, a stream of 4 lanes made as the README says, 20k keyed records: per-key counts
/// exact, each lane's stored position past its last message, and a second run adds exactly the
/// new records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_counts_exactly_and_resumes_at_its_position() {
    let (topic, group) = (unique("nats-count"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    create_nats_stream(&topic, 4).await;
    let first = keyed_records(0, 20_000, 500);
    nats_publish(&topic, &first).await;

    let worker = nats_worker(&group, &topic, dir.path())
        .build(CountHandler::default())
        .expect("build worker");
    let running = RunningWorker::spawn(worker);
    let started = Instant::now();
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&first),
        Duration::from_secs(60),
    )
    .await;
    eprintln!("20000 records counted exactly in {:.2?}", started.elapsed());
    running.stop_cleanly().await;
    let stored = StoredCounts::read(dir.path(), &group, &topic);
    assert_eq!(
        stored.offsets.len(),
        4,
        "every lane has a position: {:?}",
        stored.offsets
    );
    assert_eq!(
        stored.offsets.values().max().copied(),
        Some(20_001),
        "the newest position is past the stream's last sequence: {:?}",
        stored.offsets
    );

    let second = keyed_records(20_000, 5_000, 500);
    nats_publish(&topic, &second).await;
    let all: Vec<_> = first.iter().chain(&second).cloned().collect();
    let worker = nats_worker(&group, &topic, dir.path())
        .build(CountHandler::default())
        .expect("build worker");
    let running = RunningWorker::spawn(worker);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&all),
        Duration::from_secs(60),
    )
    .await;
    running.stop_cleanly().await;
    let stored = StoredCounts::read(dir.path(), &group, &topic);
    assert_counts_exact(&stored.counts, &expected_counts(&all));
}

/// Three worker processes, each with its own state dir (three machines), while records keep
/// coming: a random one is SIGKILLed and restarted each round, every third restart with its
/// state dir emptied. The server moves a dead worker's lanes to the others; a worker that
/// gets a lane back reads it again from its own stored position. At the end, per lane, the
/// store with the highest position counts exactly that lane's records, and every worker stops
/// cleanly. Says how long the hand-off after a SIGKILL took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_count_exactly_under_sigkills() {
    const ROUNDS: usize = 6;
    const PER_ROUND: usize = 3_000;
    let (topic, group) = (unique("nats-kill"), unique("g"));
    create_nats_stream(&topic, 4).await;
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    // Kept after a failed run: the workers' logs, for the failure's story.
    let logs = tempfile::Builder::new()
        .prefix("nats-kill-logs-")
        .tempdir()
        .expect("tempdir")
        .keep();
    eprintln!("worker logs in {}", logs.display());
    let mut starts = 0;
    // Each worker's current log.
    let mut log_of = vec![std::path::PathBuf::new(); 3];
    let mut start = |i: usize| {
        starts += 1;
        log_of[i] = logs.join(format!("{i}-{starts:03}.log"));
        let log = std::fs::File::create(&log_of[i]).expect("log");
        worker_command(env!("CARGO_BIN_EXE_count-worker"))
            .env("WEIR_BROKERS", nats_url())
            .env("WEIR_GROUP", &group)
            .env("WEIR_TOPICS", &topic)
            .env("WEIR_STATE_DIR", dirs[i].path())
            .env("WEIR_HAND_OFF_MS", "3000")
            .env("WEIR_BATCH_SIZE", "200")
            .env("WEIR_PROGRESS_INTERVAL_MS", "0")
            .env("COUNT_WORKER_DELAY_US", "200")
            .env(
                "RUST_LOG",
                "warn,weir::broker=info,weir::runtime::rebalance=info",
            )
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn count-worker")
    };
    let mut children: Vec<std::process::Child> = (0..3).map(&mut start).collect();
    let mut all = Vec::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(std::process::id());
    let mut hand_offs = Vec::new();
    for round in 0..ROUNDS {
        let records = keyed_records(round * PER_ROUND, PER_ROUND, 200);
        nats_publish(&topic, &records).await;
        all.extend(records);
        // Let some of the round be processed, then kill a worker in the middle of it.
        let want = (all.len() - PER_ROUND / 2) as u64;
        wait_until(
            "half the round counted",
            Duration::from_secs(60),
            || async {
                let StoredCounts {
                    counts,
                    offsets: positions,
                } = StoredCounts::newest(&dirs, &group, &topic);
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
        // A worker that owns lanes now (its newest log assigned more than it released).
        let owners: Vec<usize> = (0..3)
            .filter(|i| {
                let newest = std::fs::read_dir(&logs)
                    .expect("logs")
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{i}-")))
                    })
                    .max();
                let log = newest
                    .map(std::fs::read_to_string)
                    .transpose()
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                log.matches("partition assigned").count()
                    > log.matches("partition released").count()
            })
            .collect();
        assert!(
            !owners.is_empty(),
            "no worker owns a lane; logs in {}",
            logs.display()
        );
        let victim = owners[(rng % owners.len() as u64) as usize];
        let _ = children[victim].kill();
        let _ = children[victim].wait();
        let killed = Instant::now();
        if round % 3 == 2 {
            std::fs::remove_dir_all(dirs[victim].path().join(&group)).expect("empty the state dir");
        }
        // The others take its lanes: everything published so far gets counted.
        let expected = expected_counts(&all);
        wait_until(
            "the killed worker's lanes counted by the others",
            Duration::from_secs(60),
            || async {
                let StoredCounts {
                    counts,
                    offsets: positions,
                } = StoredCounts::newest(&dirs, &group, &topic);
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
        children[victim] = start(victim);
    }
    let expected = expected_counts(&all);
    wait_until("every record counted", Duration::from_secs(60), || async {
        let counts = StoredCounts::newest(&dirs, &group, &topic).counts;
        if counts == expected {
            Ok(())
        } else {
            Err(format!("{} of {}", counts.values().sum::<u64>(), all.len()))
        }
    })
    .await;
    // A worker just started may not listen for SIGTERM yet (it would die of it, not stop):
    // each has subscribed, which it does after it listens.
    wait_until(
        "every worker subscribed",
        Duration::from_secs(30),
        || async {
            let quiet: Vec<_> = log_of
                .iter()
                .filter(|log| {
                    !std::fs::read_to_string(log).is_ok_and(|text| text.contains("subscribing"))
                })
                .collect();
            if quiet.is_empty() {
                Ok(())
            } else {
                Err(format!("not yet: {quiet:?}"))
            }
        },
    )
    .await;
    for mut child in children {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = child.wait().expect("wait");
        assert!(
            status.success(),
            "a worker did not stop cleanly: {status}; logs in {}",
            logs.display()
        );
    }
    let StoredCounts {
        counts,
        offsets: positions,
    } = StoredCounts::newest(&dirs, &group, &topic);
    assert_counts_exact(&counts, &expected);
    assert_eq!(positions.len(), 4, "{positions:?}");
    eprintln!("hand-offs after SIGKILLs of lane owners (hand_off 3 s): {hand_offs:?}");
    let _ = std::fs::remove_dir_all(&logs);
}

/// Records published by Python's nats-py (with a header and a `Nats-Msg-Id`; one published
/// twice, which the stream drops) are counted exactly, in a stream weir created itself; what
/// weir emits lands in a stream it creates on first use, and nats-py reads each emit once,
/// with weir's headers and a `Nats-Msg-Id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_publishes_and_reads_what_weir_emits() {
    use weir_tests::tally::{tallies_topic, Tally, TallyHandler, TALLIES};
    let (topic, group) = (unique("nats-py"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = nats_worker(&group, &topic, dir.path())
        .build(TallyHandler::default())
        .expect("build worker");
    let running = RunningWorker::spawn(worker);
    // The worker makes the stream at start.
    let client = nats_client().await;
    let js = async_nats::jetstream::new(client);
    wait_for_stream(&js, &topic).await;
    assert_eq!(
        python_nats_publish(&topic, 300),
        300,
        "the stream dropped the duplicate"
    );

    let emitted = python_nats_read(&tallies_topic(&topic), 300, Duration::from_secs(30));
    running.stop_cleanly().await;
    assert_eq!(
        emitted.len(),
        300,
        "one emit per record: {:?}",
        emitted.last()
    );
    let mut tallies_stream = js
        .get_stream(tallies_topic(&topic))
        .await
        .expect("the emits' stream");
    let held = tallies_stream
        .info()
        .await
        .expect("stream info")
        .state
        .messages;
    assert_eq!(held, 300, "the emits' stream holds each emit once");
    let mut ids = std::collections::BTreeSet::new();
    for e in &emitted {
        let headers = &e["headers"];
        assert_eq!(headers["weir.source.topic"], topic.as_str(), "{e}");
        assert_eq!(
            headers["origin"],
            serde_json::Value::Null,
            "emits carry their own headers: {e}"
        );
        let id = headers["Nats-Msg-Id"].as_str().expect("a Nats-Msg-Id");
        assert!(ids.insert(id.to_owned()), "ids are distinct: {id}");
        let subject = e["subject"].as_str().expect("subject");
        assert!(
            subject.starts_with(&format!("{}.", tallies_topic(&topic))),
            "{subject}"
        );
    }
    let mut tallies: std::collections::BTreeMap<String, u64> = Default::default();
    for (_, path) in store_files(dir.path(), &group, &topic) {
        let store = weir_state::StoreReader::open(&path).expect("open store");
        for (k, t) in store.entries::<String, Tally>(TALLIES).expect("entries") {
            tallies.insert(k, t.count);
        }
    }
    assert_eq!(tallies.len(), 50, "{tallies:?}");
    assert!(
        tallies.values().all(|c| *c == 6),
        "each key counted 6 times: {tallies:?}"
    );
}

/// A key's emits land in the order they were emitted, also when their stream is missing and
/// the first of them make it: 200 records of 2 keys in a new stream, each emitting its key's
/// new tally to a topic no stream takes yet; read back in stream order, each key's tallies
/// count up 1, 2, 3...
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_emits_land_in_order_in_a_stream_made_for_them() {
    use weir_tests::tally::{assert_tallies_in_order, tallies_topic, TallyHandler};
    let (topic, group) = (unique("nats-order"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    create_nats_stream(&topic, 1).await;
    nats_publish(&topic, &keyed_records(0, 200, 2)).await;
    let running = RunningWorker::spawn(
        nats_worker(&group, &topic, dir.path())
            .build(TallyHandler::default())
            .expect("build worker"),
    );
    let emitted = python_nats_read(&tallies_topic(&topic), 200, Duration::from_secs(30));
    running.stop_cleanly().await;
    assert_eq!(emitted.len(), 200, "one emit per record");
    assert_tallies_in_order(
        emitted
            .iter()
            .map(|e| e["data"].as_str().expect("a payload")),
        2,
        100,
    );
}

/// Emits sent again (a worker crashed after the stream took them and before their outbox
/// rows were deleted: here, rows put back into a stopped worker's store) land once: each
/// carries the `Nats-Msg-Id` it had the first time, and the stream drops the copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emits_sent_again_land_once() {
    use weir_tests::tally::{tallies_topic, TallyHandler};
    let (topic, group) = (unique("nats-resend"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    create_nats_stream(&topic, 2).await;
    nats_publish(&topic, &keyed_records(0, 100, 10)).await;
    let run = || {
        let worker = nats_worker(&group, &topic, dir.path())
            .build(TallyHandler::default())
            .expect("build worker");
        RunningWorker::spawn(worker)
    };
    let running = run();
    let emitted = python_nats_read(&tallies_topic(&topic), 100, Duration::from_secs(30));
    running.stop_cleanly().await;
    assert_eq!(emitted.len(), 100);

    // Lane 0's emits go back into its store's outbox, as if never acknowledged.
    let stream = tallies_topic(&topic);
    let source_lane = |e: &serde_json::Value| e["headers"]["weir.source.partition"] == "0";
    let again: Vec<weir_state::OutboxRecord> = emitted
        .iter()
        .filter(|e| source_lane(e))
        .map(|e| {
            let subject = e["subject"].as_str().expect("subject");
            let key = subject.rsplit('.').next().expect("a key token");
            let headers = e["headers"]
                .as_object()
                .expect("headers")
                .iter()
                .filter(|(k, _)| *k != "Nats-Msg-Id" && *k != "weir.source.acked_below")
                .map(|(k, v)| (k.clone(), v.as_str().expect("text").as_bytes().to_vec()))
                .collect();
            weir_state::OutboxRecord {
                topic: stream.clone(),
                partition: None,
                key: Some(key.as_bytes().to_vec()),
                value: Some(e["data"].as_str().expect("data").as_bytes().to_vec()),
                headers,
                timestamp: None,
            }
        })
        .collect();
    assert!(!again.is_empty(), "lane 0 emitted");
    let key = again[0].key.clone().expect("key");
    let store_path = store_files(dir.path(), &group, &topic)[&0].clone();
    {
        let store = weir_state::PartitionStore::open(&store_path).expect("open the store");
        let next = store
            .next_offset(&topic, 0)
            .expect("offset")
            .expect("a position");
        let mut rows = weir_state::WriteSet::default();
        for r in &again {
            rows.emit(r.clone());
        }
        store
            .commit(&mut rows, &topic, 0, next)
            .expect("put the rows back");
    }
    // One more record of lane 0, so the worker takes the lane (and sends its outbox first).
    let key = String::from_utf8(key).expect("utf-8 key");
    nats_publish(&topic, &[(key, "v100".into())]).await;
    let running = run();
    let emitted = python_nats_read(&stream, 101, Duration::from_secs(30));
    assert_eq!(emitted.len(), 101, "the new record's emit came");
    running.stop_cleanly().await;
    let js = async_nats::jetstream::new(nats_client().await);
    let held = js
        .get_stream(&stream)
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .state
        .messages;
    assert_eq!(
        held,
        101,
        "{} emits were sent again; the stream holds each once",
        again.len()
    );
    let outbox = weir_state::PartitionStore::open(&store_path)
        .expect("open the store")
        .pending_outbox(10)
        .expect("outbox");
    assert!(outbox.is_empty(), "the rows went out: {outbox:?}");
}

/// A record the handler keeps failing on goes, after its attempts, to the dead-letter
/// topic's stream (`<topic>_dlq`: subjects outside `<topic>.>`, so it cannot loop back) with
/// weir's error headers; the other records are counted exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_record_is_dead_lettered_to_its_own_stream() {
    let (topic, group) = (unique("nats-dlq"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    create_nats_stream(&topic, 2).await;
    let mut records = keyed_records(0, 200, 20);
    records.insert(100, ("k3".into(), "poison".into()));
    nats_publish(&topic, &records).await;
    let worker = nats_worker(&group, &topic, dir.path())
        .retry(TWO_QUICK_ATTEMPTS)
        .build(CountHandler::with_poison("poison", u64::MAX))
        .expect("build worker");
    let running = RunningWorker::spawn(worker);
    let counted: Vec<_> = records
        .iter()
        .filter(|(_, v)| v != "poison")
        .cloned()
        .collect();
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&counted),
        Duration::from_secs(60),
    )
    .await;
    let dlq = format!("{topic}_dlq");
    let letters = python_nats_read(&dlq, 1, Duration::from_secs(30));
    running.stop_cleanly().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter["data"], "poison");
    assert_eq!(
        letter["subject"]
            .as_str()
            .map(|s| s.starts_with(&format!("{dlq}."))),
        Some(true),
        "{letter}"
    );
    assert_eq!(letter["headers"]["weir.source.topic"], topic.as_str());
    assert_eq!(letter["headers"]["weir.attempts"], "2");
    assert!(
        letter["headers"]["weir.error"]
            .as_str()
            .is_some_and(|e| e.contains("poison")),
        "{letter}"
    );
}

/// The `wordcount`, `orders` and `pageviews` examples' handlers run on NATS as on Kafka: word
/// counts in state; order totals in state (a redelivered order counted once) and emitted to
/// `<topic>-totals`; a closed minute of page views emitted to `pageviews-per-minute`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_run_on_nats() {
    use weir_examples::orders::{totals_topic, OrderTotals};
    use weir_examples::pageviews::{PageView, PageViews, PageViewsPerMinute, OUTPUT_TOPIC};
    use weir_examples::wordcount::WordCount;
    let group = unique("g");
    let dir = tempfile::tempdir().expect("tempdir");

    let lines = unique("lines");
    create_nats_stream(&lines, 2).await;
    nats_publish(&lines, &wordcount_lines()).await;
    let running = RunningWorker::spawn(
        nats_worker(&group, &lines, dir.path())
            .build(WordCount)
            .expect("build wordcount"),
    );
    wait_for_word_counts(dir.path(), &group, &lines).await;
    running.stop_cleanly().await;

    let orders = unique("orders");
    create_nats_stream(&orders, 2).await;
    nats_publish(&orders, &placed_orders()).await;
    let running = RunningWorker::spawn(
        nats_worker(&group, &orders, dir.path())
            .build(OrderTotals)
            .expect("build orders"),
    );
    let totals = python_nats_read(&totals_topic(&orders), 3, Duration::from_secs(30));
    running.stop_cleanly().await;
    let payloads: Vec<&str> = totals
        .iter()
        .map(|t| t["data"].as_str().expect("data"))
        .collect();
    assert_order_totals(&payloads);

    let views = unique("pageviews");
    create_nats_stream(&views, 2).await;
    let view = |ts_ms| {
        serde_json::to_string(&PageView {
            page: "home".into(),
            user: "u".into(),
            ts_ms,
        })
        .expect("json")
    };
    let minute = 60_000 * 29_000_000; // a minute boundary in 2025
    let seen = [
        view(minute + 1_000),
        view(minute + 2_000),
        view(minute + 59_000),
        view(minute + 3 * 60_000),
    ];
    nats_publish(&views, &seen.map(|v| ("home".to_owned(), v))).await;
    let running = RunningWorker::spawn(
        nats_worker(&group, &views, dir.path())
            .build(PageViews)
            .expect("build pageviews"),
    );
    let js = async_nats::jetstream::new(nats_client().await);
    let closed = wait_for_window(&js, &views).await;
    running.stop_cleanly().await;
    assert_eq!(
        closed,
        PageViewsPerMinute {
            page: "home".into(),
            window_start_ms: minute,
            window_end_ms: minute + 60_000,
            views: 3
        }
    );

    /// The first window result of source topic `topic` in `pageviews-per-minute`.
    async fn wait_for_window(
        js: &async_nats::jetstream::Context,
        topic: &str,
    ) -> PageViewsPerMinute {
        use futures::StreamExt;
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match js.get_stream(OUTPUT_TOPIC.replace('.', "_")).await {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => panic!("no {OUTPUT_TOPIC} stream: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
            .await
            .expect("consumer");
        let mut messages = consumer.messages().await.expect("messages");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = tokio::time::timeout(left, messages.next())
                .await
                .expect("a window closed within 30 s")
                .expect("a message")
                .expect("a message");
            let from = m
                .headers
                .as_ref()
                .and_then(|h| h.get("weir.source.topic"))
                .map(|v| v.as_str().to_owned());
            if from.as_deref() == Some(topic) {
                return serde_json::from_slice(&m.payload).expect("a window result");
            }
        }
    }
}

/// The server is killed and started again while a worker counts and records keep coming:
/// the worker reconnects, takes its lanes again and counts every record exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_stream_loses_and_doubles_nothing() {
    let mut server = OwnNats::start();
    let (topic, group) = (unique("nats-restart"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let publish = |records: Vec<(String, String)>| {
        let js = js.clone();
        let topic = topic.clone();
        async move {
            for (k, v) in records {
                // Retried until the stream takes it: the server may be coming back.
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let sent = js.publish(format!("{topic}.{k}"), v.clone().into()).await;
                    match sent {
                        Ok(ack) => match ack.await {
                            Ok(_) => break,
                            Err(e) => assert!(Instant::now() < deadline, "publish: {e}"),
                        },
                        Err(e) => assert!(Instant::now() < deadline, "publish: {e}"),
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    let worker = Worker::builder()
        .brokers(server.url())
        .group(&group)
        .topic(&topic)
        .state_dir(dir.path())
        .hand_off(Duration::from_secs(2))
        .build(CountHandler {
            delay: Some(Duration::from_micros(300)),
            ..Default::default()
        })
        .expect("build worker");
    let running = RunningWorker::spawn(worker);
    wait_for_stream(&js, &topic).await;
    let first = keyed_records(0, 3_000, 100);
    publish(first.clone()).await;
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
    let second = keyed_records(3_000, 2_000, 100);
    publish(second.clone()).await;
    let all: Vec<_> = first.into_iter().chain(second).collect();
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&all),
        Duration::from_secs(60),
    )
    .await;
    running.stop_cleanly().await;
    let stored = StoredCounts::read(dir.path(), &group, &topic);
    assert_counts_exact(&stored.counts, &expected_counts(&all));
}

/// `/metrics` says each lane's lag: the messages its consumer still holds plus those taken and
/// not yet committed, above zero while a slow handler is behind and zero once it caught up;
/// the status page (`/status.json`) says it per lane too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_per_lane_is_on_metrics() {
    let (topic, group) = (unique("nats-lag"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    create_nats_stream(&topic, 2).await;
    let records = keyed_records(0, 2_000, 40);
    nats_publish(&topic, &records).await;
    let worker = nats_worker(&group, &topic, dir.path())
        .metrics_addr("127.0.0.1:0")
        .batch_size(50)
        .build(CountHandler {
            delay: Some(Duration::from_millis(1)),
            ..Default::default()
        })
        .expect("build worker");
    let addr = worker.metrics_addr().expect("a metrics address");
    let running = RunningWorker::spawn(worker);
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
    let highest = *highest.lock().expect("lock");
    assert!(
        highest <= 2_000.0,
        "the lag counts the lane's messages, not sequences: {highest}"
    );
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&records),
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
    // The status page says the same per lane.
    let (_, body) = http_get(addr, "/status.json").await;
    let status: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    let lanes = status["partitions"].as_array().expect("partitions");
    assert_eq!(lanes.len(), 2, "{status}");
    for lane in lanes {
        assert_eq!(lane["topic"], topic.as_str(), "{lane}");
        assert_eq!(lane["lag"], 0, "{lane}");
        assert!(lane["processed"].as_u64().is_some_and(|n| n > 0), "{lane}");
    }
    running.stop_cleanly().await;
}

/// While the server is down the worker says so (`/health/ready` 503 naming the lost
/// connection, after `unreadable_after`) and is ready again once it reconnects; a stand-by
/// worker that owns no lane is ready too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_connection_to_the_server() {
    let mut server = OwnNats::start();
    let (topic, group) = (unique("nats-ready"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = Worker::builder()
        .brokers(server.url())
        .group(&group)
        .topic(&topic)
        .state_dir(dir.path())
        .metrics_addr("127.0.0.1:0")
        .unreadable_after(Duration::from_secs(1))
        .build(CountHandler::default())
        .expect("build worker");
    let addr = worker.metrics_addr().expect("metrics address");
    let running = RunningWorker::spawn(worker);
    let ready = |want: u16, needle: &'static str| async move {
        let (code, body) = http_get(addr, "/health/ready").await;
        if code == want && body.contains(needle) {
            Ok(())
        } else {
            Err(format!("{code} {body}"))
        }
    };
    wait_until("ready with no lane", Duration::from_secs(30), || {
        ready(200, "")
    })
    .await;
    server.stop();
    wait_until(
        "not ready while the server is down",
        Duration::from_secs(30),
        || ready(503, "no connection to the broker"),
    )
    .await;
    server.start_again();
    wait_until("ready again", Duration::from_secs(30), || ready(200, "")).await;
    running.stop_cleanly().await;
}

/// A worker with an empty state dir that takes a lane with a long history reads it all again
/// before its first new message, for longer than the pin lasts without pulls: it keeps
/// pulling meanwhile, so the server does not move the lane away in the middle (no lane lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_read_again_keeps_its_lane() {
    let (topic, group) = (unique("nats-replay"), unique("g"));
    create_nats_stream(&topic, 1).await;
    let records = keyed_records(0, 200_000, 100);
    nats_publish(&topic, &records).await;
    let first = tempfile::tempdir().expect("tempdir");
    let running = RunningWorker::spawn(
        nats_worker(&group, &topic, first.path())
            .build(CountHandler::default())
            .expect("build worker"),
    );
    wait_for_counts(
        first.path(),
        &group,
        &topic,
        &expected_counts(&records),
        Duration::from_secs(120),
    )
    .await;
    running.stop_cleanly().await;

    // A new machine: everything is acknowledged, and its store is empty.
    let second = tempfile::tempdir().expect("tempdir");
    let worker = nats_worker(&group, &topic, second.path())
        .hand_off(Duration::from_secs(1))
        .metrics_addr("127.0.0.1:0")
        .build(CountHandler::default())
        .expect("build worker");
    let addr = worker.metrics_addr().expect("metrics address");
    let running = RunningWorker::spawn(worker);
    let more = keyed_records(200_000, 1, 100);
    nats_publish(&topic, &more).await;
    let all: Vec<_> = records.iter().chain(&more).cloned().collect();
    let started = Instant::now();
    wait_for_counts(
        second.path(),
        &group,
        &topic,
        &expected_counts(&all),
        Duration::from_secs(120),
    )
    .await;
    let took = started.elapsed();
    let (_, body) = http_get(addr, "/metrics").await;
    running.stop_cleanly().await;
    let lost = sample(
        &body,
        "weir_rebalances_total",
        &[("kind", "lost"), ("group", &group)],
    )
    .unwrap_or(0.0);
    assert!(
        took > Duration::from_secs(1),
        "the read took longer than the pin lasts: {took:?}"
    );
    assert_eq!(
        lost, 0.0,
        "the lane was taken away during the read ({took:?})"
    );
}

/// The server takes a lane away in the middle of a backlog (an operator's unpin, five times)
/// and pins it here again: messages taken under the earlier pin and not yet processed are
/// dropped with it and read again from the store's position, so every record is counted once
/// (they were processed after the new start's, which skipped its read: records were lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_unpinned_mid_stream_counts_exactly() {
    let (topic, group) = (unique("nats-unpin"), unique("g"));
    create_nats_stream(&topic, 1).await;
    let records = keyed_records(0, 150_000, 100);
    nats_publish(&topic, &records).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = nats_worker(&group, &topic, dir.path())
        .metrics_addr("127.0.0.1:0")
        .build(CountHandler::default())
        .expect("build worker");
    let addr = worker.metrics_addr().expect("metrics address");
    let running = RunningWorker::spawn(worker);
    let client = nats_client().await;
    let unpin = format!("$JS.API.CONSUMER.UNPIN.{topic}.weir-{group}-0");
    let expected = expected_counts(&records);
    let mut unpinned = 0;
    wait_until("every record counted", Duration::from_secs(120), || {
        let (client, unpin) = (client.clone(), unpin.clone());
        let stored = StoredCounts::read(dir.path(), &group, &topic);
        let done = stored.counts == expected;
        let total = stored.total();
        // Five unpins, each after 5,000 more records, while the backlog is processed.
        let unpin_now = !done && total > 5_000 * unpinned && unpinned < 5;
        if unpin_now {
            unpinned += 1;
        }
        async move {
            if done {
                return Ok(());
            }
            if unpin_now {
                let body = serde_json::json!({ "group": "weir" }).to_string();
                let _ = client.request(unpin, body.into()).await;
            }
            Err(format!("{total} counted"))
        }
    })
    .await;
    let (_, body) = http_get(addr, "/metrics").await;
    running.stop_cleanly().await;
    let stored = StoredCounts::read(dir.path(), &group, &topic);
    assert_counts_exact(&stored.counts, &expected);
    let lost = sample(
        &body,
        "weir_rebalances_total",
        &[("kind", "lost"), ("group", &group)],
    )
    .unwrap_or(0.0);
    assert!(lost >= 1.0, "the lane was taken away at least once: {lost}");
}

/// State follows its lane through the changelog stream: a worker with no store (on another
/// machine, as far as it knows) restores each lane from `<group>-<T>-changelog` before its first
/// record, even though the stream no longer holds the records the state came from. An entry of
/// a batch whose offset marker never came (its writer was lost mid-flush; forged here) is
/// dropped, the key's version before it restored (the stream keeps a key's last two), and the
/// orphan deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_follows_its_lane_through_the_changelog() {
    use async_nats::jetstream::consumer::{pull, DeliverPolicy};
    use futures::StreamExt;
    use weir::state::{changelog_topic, header, ChangelogEntry};

    let (topic, group) = (unique("nats-changelog"), unique("g"));
    let (first_dir, second_dir) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    create_nats_stream(&topic, 4).await;
    let first = keyed_records(0, 10_000, 500);
    nats_publish(&topic, &first).await;
    let worker = nats_worker(&group, &topic, first_dir.path())
        .changelog(true)
        .build(CountHandler::default())
        .expect("build worker");
    let running = RunningWorker::spawn(worker);
    wait_for_counts(
        first_dir.path(),
        &group,
        &topic,
        &expected_counts(&first),
        Duration::from_secs(60),
    )
    .await;
    running.stop_cleanly().await;

    // The newest entry of one key, read from the changelog stream as another program would.
    let js = async_nats::jetstream::new(nats_client().await);
    let changelog = weir::state::nats::stream_of(&changelog_topic(&group, &topic));
    let stream = js
        .get_stream(&changelog)
        .await
        .expect("the changelog stream exists");
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("{changelog}.>"),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .expect("read the changelog");
    let mut messages = consumer.messages().await.expect("read the changelog");
    let (subject, headers) = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("a changelog entry within 10 s")
            .expect("the changelog's messages go on")
            .expect("a changelog message");
        let (lane, key) =
            weir::state::nats::lane_and_key(&changelog, &m.subject).expect("a changelog subject");
        assert!(
            lane.is_some(),
            "changelog subjects name the lane: {}",
            m.subject
        );
        if let Some(ChangelogEntry::State { .. }) =
            ChangelogEntry::parse(key.as_deref(), Some(&m.payload))
        {
            break (
                m.subject.to_string(),
                m.headers.clone().expect("changelog entries have headers"),
            );
        }
    };
    drop(messages);
    // The same key's entry of a batch past the lane's last marker: the batch's marker never came.
    let next: i64 = headers
        .get(header::SOURCE_NEXT_OFFSET)
        .expect("a position header")
        .as_str()
        .parse()
        .expect("a number");
    let mut orphan = async_nats::HeaderMap::new();
    orphan.insert(
        header::SOURCE_NEXT_OFFSET,
        (next + 1_000).to_string().as_str(),
    );
    js.publish_with_headers(subject.clone(), orphan, "1000000".into())
        .await
        .expect("publish")
        .await
        .expect("acknowledged");

    // Nothing of the first records is left to read again: state must come from the changelog.
    js.get_stream(&topic)
        .await
        .expect("stream")
        .purge()
        .await
        .expect("purge the stream");
    let second = keyed_records(10_000, 2_000, 500);
    nats_publish(&topic, &second).await;
    let all: Vec<_> = first.iter().chain(&second).cloned().collect();
    let worker = nats_worker(&group, &topic, second_dir.path())
        .changelog(true)
        .build(CountHandler::default())
        .expect("build worker");
    let running = RunningWorker::spawn(worker);
    let stored = wait_for_counts(
        second_dir.path(),
        &group,
        &topic,
        &expected_counts(&all),
        Duration::from_secs(60),
    )
    .await;
    assert_counts_exact(&stored.counts, &expected_counts(&all));
    running.stop_cleanly().await;
    let stored = StoredCounts::read(second_dir.path(), &group, &topic);
    assert_counts_exact(&stored.counts, &expected_counts(&all));
    let newest = js
        .get_stream(&changelog)
        .await
        .expect("stream")
        .get_last_raw_message_by_subject(&subject)
        .await
        .expect("the key's newest entry");
    assert_ne!(
        &newest.payload[..],
        b"1000000",
        "the orphaned entry was deleted from {subject}"
    );
}

#[derive(Debug, weir::Handler)]
#[handler(value = Utf8, delivery = at_most_once)]
struct CoreCount {
    inner: CountHandler,
}

impl Process for CoreCount {
    type Error = CountError;

    async fn process(&self, rec: Record<'_, String>, ctx: &mut Ctx<'_>) -> Result<(), CountError> {
        self.inner.process(rec, ctx).await
    }
}

/// `delivery = at_most_once` on NATS reads core NATS subjects `T.>` (no JetStream stream is
/// read or made): what comes while the worker listens is counted once, and what was published
/// before any worker listened is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_reads_core_subjects_and_misses_what_no_worker_heard() {
    let (topic, group) = (unique("nats-core"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    let client = nats_client().await;
    for i in 0..20 {
        client
            .publish(format!("{topic}.early{i}"), "x".into())
            .await
            .expect("publish");
    }
    client.flush().await.expect("flush");
    let worker = nats_worker(&group, &topic, dir.path())
        .build(CoreCount {
            inner: CountHandler::default(),
        })
        .expect("build worker");
    let running = RunningWorker::spawn(worker);
    // Core NATS has no backlog: probes until the worker's subscription hears them.
    wait_until(
        "the worker hears core NATS",
        Duration::from_secs(30),
        || async {
            client
                .publish(format!("{topic}.probe"), "p".into())
                .await
                .map_err(|e| e.to_string())?;
            client.flush().await.map_err(|e| e.to_string())?;
            let counts = StoredCounts::read(dir.path(), &group, &topic).counts;
            match counts.get("probe") {
                Some(_) => Ok(()),
                None => Err(format!("counts {counts:?}")),
            }
        },
    )
    .await;
    let records = keyed_records(0, 2_000, 50);
    for (key, value) in &records {
        client
            .publish(format!("{topic}.{key}"), value.clone().into())
            .await
            .expect("publish");
    }
    client.flush().await.expect("flush");
    let expected = expected_counts(&records);
    wait_until("every record counted", Duration::from_secs(60), || async {
        let counts = StoredCounts::read(dir.path(), &group, &topic).counts;
        let counted: u64 = expected.keys().filter_map(|k| counts.get(k)).sum();
        if counted >= 2_000 {
            Ok(())
        } else {
            Err(format!("{counted} of 2000 counted"))
        }
    })
    .await;
    running.stop_cleanly().await;
    let counts = StoredCounts::read(dir.path(), &group, &topic).counts;
    for (key, n) in &expected {
        assert_eq!(counts.get(key), Some(n), "{key}: {counts:?}");
    }
    assert!(
        !counts.keys().any(|k| k.starts_with("early")),
        "what was published before any worker listened is gone: {counts:?}"
    );
    let js = async_nats::jetstream::new(client.clone());
    assert!(
        js.get_stream(&topic).await.is_err(),
        "no stream is made for a core NATS topic"
    );
}
