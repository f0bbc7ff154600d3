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
    wait_for_queue(&topic).await;
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
    wait_for_empty_queues(std::slice::from_ref(&topic), Duration::from_secs(30)).await;
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

/// A worker process is SIGKILLed mid-round, again and again, while messages keep coming, and
/// started again on the same state dir. What it received and had not deleted comes back once
/// the visibility timeout (2 s here) runs out: the messages its last batches committed are
/// recognised by id and dropped, the others counted. At the end every message is counted once
/// and the queue is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_sigkilled_again_and_again_counts_every_message_once() {
    const ROUNDS: usize = 4;
    const PER_ROUND: usize = 150;
    let (topic, group) = (unique("sqs-kill"), unique("g"));
    python_sqs_create(&topic, Duration::from_secs(2));
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let mut starts = 0;
    let mut start = || {
        starts += 1;
        let mut cmd = worker_command(env!("CARGO_BIN_EXE_count-worker"));
        cmd.envs(sqs_env())
            .env("WEIR_BROKERS", "sqs://")
            .env("WEIR_GROUP", &group)
            .env("WEIR_TOPICS", &topic)
            .env("WEIR_STATE_DIR", dir.path())
            .env("WEIR_BATCH_SIZE", "20")
            .env("COUNT_WORKER_DELAY_US", "10000");
        WorkerProcess::start(cmd, &logs.path().join(format!("{starts:03}.log")))
    };
    let mut worker = start();
    let mut all = Vec::new();
    let counted = || StoredCounts::read(dir.path(), &group, &topic).counts;
    for round in 0..ROUNDS {
        python_sqs_send(&topic, round * PER_ROUND, PER_ROUND, 20);
        all.extend(keyed_records(round * PER_ROUND, PER_ROUND, 20));
        let want = (all.len() - PER_ROUND / 2) as u64;
        wait_until("half the round counted", Duration::from_secs(60), || {
            let total: u64 = counted().values().sum();
            async move {
                if total >= want {
                    Ok(())
                } else {
                    Err(format!("{total} counted"))
                }
            }
        })
        .await;
        worker.kill();
        worker = start();
    }
    let expected = expected_counts(&all);
    let sent = all.len();
    wait_until("every message counted", Duration::from_secs(60), || {
        let counts = counted();
        let done = counts == expected;
        async move {
            if done {
                Ok(())
            } else {
                Err(format!(
                    "{} of {} counted",
                    counts.values().sum::<u64>(),
                    sent
                ))
            }
        }
    })
    .await;
    wait_for_empty_queues(std::slice::from_ref(&topic), Duration::from_secs(30)).await;
    worker.stop();
    assert_counts_exact(&counted(), &expected);
    let position = StoredCounts::read(dir.path(), &group, &topic).offsets[&0];
    eprintln!(
        "{} messages, {position} deliveries over {ROUNDS} SIGKILLs",
        ROUNDS * PER_ROUND
    );
    assert!(
        position > (ROUNDS * PER_ROUND) as i64,
        "the killed workers' messages came again ({position} deliveries)"
    );
}

/// A batch slower than twice the queue's visibility timeout (6 s; the handler takes 13 s over
/// one record): the worker extends the visibility of what it holds, so no message comes again
/// meanwhile; each is processed once. (A shorter timeout measures moto more than weir: on
/// this 2-core machine, beside other tests, one of its requests took 3.4 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_batch_keeps_its_messages_from_coming_again() {
    let (topic, group) = (unique("sqs-slow"), unique("g"));
    python_sqs_create(&topic, Duration::from_secs(6));
    let dir = tempfile::tempdir().expect("tempdir");
    let handler = CountHandler {
        slow_on: Some(("v5".to_owned(), Duration::from_secs(13))),
        ..CountHandler::default()
    };
    let attempts = std::sync::Arc::clone(&handler.attempts);
    // One receive in flight: moto sometimes hands a message to two concurrent receives (a CI
    // run saw 62 deliveries of 60), which would blur what this test measures.
    let running = RunningWorker::spawn(
        sqs_worker(&group, &topic, dir.path())
            .sqs_receives(1)
            .build(handler)
            .expect("build worker"),
    );
    python_sqs_send(&topic, 0, 60, 10);
    let records = keyed_records(0, 60, 10);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&records),
        Duration::from_secs(60),
    )
    .await;
    wait_for_empty_queues(std::slice::from_ref(&topic), Duration::from_secs(30)).await;
    running.stop_cleanly().await;
    let position = StoredCounts::read(dir.path(), &group, &topic).offsets[&0];
    assert_eq!(
        (attempts.load(std::sync::atomic::Ordering::SeqCst), position),
        (60, 60),
        "no message came again while the slow batch ran"
    );
}

/// A message that keeps failing goes, after weir's attempts, to the dead-letter queue
/// `T-dlq` (created by weir with the queue) with weir's error headers, its key and its own
/// attributes; every other message is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_message_is_dead_lettered_to_the_queues_dlq() {
    let (topic, group) = (unique("sqs-dlq"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    let running = RunningWorker::spawn(
        sqs_worker(&group, &topic, dir.path())
            .retry(weir::worker::RetryPolicy {
                max_attempts: 2,
                backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(50),
            })
            .build(CountHandler::with_poison("v7", u64::MAX))
            .expect("build worker"),
    );
    wait_for_queue(&topic).await;
    python_sqs_send(&topic, 0, 50, 10);
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
    let dead = python_sqs_read_until(&format!("{topic}-dlq"), 1, Duration::from_secs(30)).await;
    running.stop_cleanly().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    // Ten attributes at most: weir's headers travel packed when they do not fit.
    let headers = d.get("headers").unwrap_or(&d["attributes"]);
    assert_eq!(
        (d["attributes"]["key"].as_str(), d["body"].as_str()),
        (Some("k7"), Some("v7")),
        "{d}"
    );
    assert_eq!(headers["weir.attempts"], "2", "{d}");
    assert!(
        headers["weir.error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{d}"
    );
    assert_eq!(
        headers["origin"], "python",
        "the message's own attributes go with it: {d}"
    );
}

/// What weir emits lands in a queue it creates on first use (`T-tallies`), each emit once,
/// with its key, weir's headers and a distinct `weir.id`; Python's boto3 reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_reads_what_weir_emits() {
    use weir_tests::tally::{tallies_topic, TallyHandler};
    let (topic, group) = (unique("sqs-emit"), unique("g"));
    python_sqs_create(&topic, Duration::from_secs(30));
    let dir = tempfile::tempdir().expect("tempdir");
    let running = RunningWorker::spawn(
        sqs_worker(&group, &topic, dir.path())
            .build(TallyHandler::default())
            .expect("build worker"),
    );
    python_sqs_send(&topic, 0, 100, 10);
    let tallies = tallies_topic(&topic);
    let read = python_sqs_read_until(&tallies, 100, Duration::from_secs(60)).await;
    running.stop_cleanly().await;
    assert_eq!(read.len(), 100, "each emit once");
    let mut ids = std::collections::BTreeSet::new();
    for e in &read {
        let a = &e["attributes"];
        assert_eq!(a["weir.source.topic"], topic.as_str(), "{e}");
        let id = a["weir.id"].as_str().expect("weir's id");
        assert!(ids.insert(id.to_owned()), "ids are distinct: {id}");
        let key = a["key"].as_str().expect("a key");
        assert!(e["body"].as_str().expect("a body").contains(key), "{e}");
    }
}

/// A key's emits to a FIFO queue (`T-tallies.fifo`, made on first use, its message group the
/// key) arrive in the order they were emitted: 100 messages of 2 keys, each emitting its
/// key's new tally; read back, each key's tallies count up 1, 2, 3...
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_emits_to_a_fifo_queue_keep_their_order() {
    use weir_tests::tally::{assert_tallies_in_order, tallies_topic, TallyHandler};
    let (topic, group) = (unique("sqs-order"), unique("g"));
    python_sqs_create(&topic, Duration::from_secs(30));
    let out = format!("{}.fifo", tallies_topic(&topic));
    let dir = tempfile::tempdir().expect("tempdir");
    let running = RunningWorker::spawn(
        sqs_worker(&group, &topic, dir.path())
            .build(TallyHandler {
                to: Some(out.clone()),
                ..Default::default()
            })
            .expect("build worker"),
    );
    python_sqs_send(&topic, 0, 100, 2);
    let read = python_sqs_read_until(&out, 100, Duration::from_secs(60)).await;
    running.stop_cleanly().await;
    assert_eq!(read.len(), 100, "each emit once");
    assert_tallies_in_order(
        read.iter().map(|e| e["body"].as_str().expect("a payload")),
        2,
        50,
    );
}

/// The `wordcount` and `orders` examples run on SQS with nothing but the broker changed: the
/// words are counted in state, and `orders` emits its 3 totals (alice's order placed twice is
/// counted once) to the queue `<topic>-totals`, which weir creates on first use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_run_on_sqs() {
    use weir_examples::orders::{totals_topic, OrderTotals};
    use weir_examples::wordcount::WordCount;
    let group = unique("g");
    let dir = tempfile::tempdir().expect("tempdir");

    let lines = unique("lines");
    python_sqs_create(&lines, Duration::from_secs(30));
    let running = RunningWorker::spawn(
        sqs_worker(&group, &lines, dir.path())
            .build(WordCount)
            .expect("build wordcount"),
    );
    python_sqs_send_records(&lines, &wordcount_lines());
    wait_for_word_counts(dir.path(), &group, &lines).await;
    running.stop_cleanly().await;

    let orders = unique("orders");
    python_sqs_create(&orders, Duration::from_secs(30));
    let running = RunningWorker::spawn(
        sqs_worker(&group, &orders, dir.path())
            .build(OrderTotals)
            .expect("build orders"),
    );
    python_sqs_send_records(&orders, &placed_orders());
    let totals_queue = totals_topic(&orders);
    let totals = python_sqs_read_until(&totals_queue, 3, Duration::from_secs(30)).await;
    running.stop_cleanly().await;
    // A standard queue keeps no order: one CI run read alice's 150 before her 100, another
    // processed her o3 (50) before her o1 (100). What holds: one total per new order (alice's
    // o3, placed twice, once), and each customer's last total is the sum of their orders.
    let mut by_customer: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for t in &totals {
        let total: serde_json::Value =
            serde_json::from_str(t["body"].as_str().expect("body")).expect("a total");
        let customer = total["customer"].as_str().expect("customer").to_owned();
        let cents = total["cents"].as_i64().expect("cents");
        by_customer.entry(customer).or_default().push(cents);
    }
    for cents in by_customer.values_mut() {
        cents.sort_unstable();
    }
    let alice = by_customer.get("alice").cloned().unwrap_or_default();
    assert!(
        by_customer.len() == 2
            && by_customer.get("bob") == Some(&vec![250])
            && (alice == [100, 150] || alice == [50, 150]),
        "one total per new order (alice's o3, placed twice, once), in either order: {by_customer:?}"
    );
}

/// While the handler is stuck, the messages waiting in the queue are the lane's lag on
/// `/metrics` (and SQS's own counts, visible and not visible, in `weir_sqs_messages`); once
/// it goes on, the lag comes back to 0, on the status page too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_messages_are_the_lanes_lag() {
    let (topic, group) = (unique("sqs-lag"), unique("g"));
    python_sqs_create(&topic, Duration::from_secs(30));
    let dir = tempfile::tempdir().expect("tempdir");
    let handler = CountHandler {
        stall_on: Some("v0".into()),
        ..Default::default()
    };
    let release = handler.release.clone();
    let worker = sqs_worker(&group, &topic, dir.path())
        .metrics_addr("127.0.0.1:0")
        .queue_capacity(20)
        .batch_size(10)
        .build(handler)
        .expect("build worker");
    let addr = worker.metrics_addr().expect("a metrics address");
    let running = RunningWorker::spawn(worker);
    python_sqs_send(&topic, 0, 200, 20);
    let lag = |body: &str| {
        sample(
            body,
            "weir_consumer_lag",
            &[("topic", &topic), ("partition", "0")],
        )
    };
    let visible = |body: &str| {
        sample(
            body,
            "weir_sqs_messages",
            &[("topic", &topic), ("state", "visible")],
        )
    };
    wait_until("the lane lagging", Duration::from_secs(30), || async {
        let (_, body) = http_get(addr, "/metrics").await;
        let (lag, visible) = (lag(&body), visible(&body));
        // The worker holds at most its queue's capacity (20) and its receives' (10 each):
        // most of the 200 wait in the queue.
        if lag.is_some_and(|l| l >= 100.0) && visible.is_some_and(|v| v >= 100.0) {
            Ok(())
        } else {
            Err(format!("lag {lag:?}, visible {visible:?}"))
        }
    })
    .await;
    release.open();
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&keyed_records(0, 200, 20)),
        Duration::from_secs(60),
    )
    .await;
    wait_until("no lag", Duration::from_secs(30), || async {
        let (_, body) = http_get(addr, "/metrics").await;
        match lag(&body) {
            Some(0.0) => Ok(()),
            l => Err(format!("lag {l:?}")),
        }
    })
    .await;
    let (_, body) = http_get(addr, "/status.json").await;
    let status: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    let lanes = status["partitions"].as_array().expect("partitions");
    assert_eq!(lanes.len(), 1, "{status}");
    assert_eq!(lanes[0]["lag"], 0, "{status}");
    running.stop_cleanly().await;
}

/// A FIFO queue (`T.fifo`, its message group the key): each key's messages are processed in
/// the order they were sent, and each is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_queue_keeps_each_keys_order() {
    let group = unique("g");
    let topic = format!("{}.fifo", unique("sqs-fifo"));
    python_sqs_create(&topic, Duration::from_secs(30));
    let dir = tempfile::tempdir().expect("tempdir");
    let handler = CountHandler::default();
    let log = std::sync::Arc::clone(&handler.log);
    // One receive in flight: moto hands one group's messages to concurrent receives (a CI run
    // saw k0's 6 after its 9), which SQS never does while a group has messages in flight.
    let worker = sqs_worker(&group, &topic, dir.path())
        .sqs_receives(1)
        .build(handler)
        .expect("build worker");
    let running = RunningWorker::spawn(worker);
    // (moto delivers a FIFO queue's next messages only to receives that began after the
    // previous ones were deleted, a receive wait (5 s) at a time: a short backlog.)
    python_sqs_send(&topic, 0, 30, 3);
    let records = keyed_records(0, 30, 3);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&records),
        Duration::from_secs(60),
    )
    .await;
    running.stop_cleanly().await;
    let seen: Vec<u64> = log
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, v, _)| v.trim_start_matches('v').parse().expect("a numbered value"))
        .collect();
    assert_eq!(seen.len(), 30, "each processed once: {seen:?}");
    for key in 0..3 {
        let of_key: Vec<u64> = seen.iter().copied().filter(|v| v % 3 == key).collect();
        let mut sorted = of_key.clone();
        sorted.sort_unstable();
        assert_eq!(of_key, sorted, "key k{key} in the order sent");
    }
}

/// While SQS does not answer (the test's own moto server, killed) the worker says so
/// (`/health/ready` 503 naming the lost connection, after `unreadable_after`), and it is ready
/// again once SQS answers (the server started again, the queue made again: moto keeps
/// nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_answers_of_sqs() {
    let mut server = OwnSqs::start();
    let (topic, group) = (unique("sqs-ready"), unique("g"));
    python_sqs_create_at(&server.endpoint(), &topic, Duration::from_secs(30));
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], own_tansu::free_port()).into();
    let mut cmd = worker_command(env!("CARGO_BIN_EXE_count-worker"));
    cmd.envs(sqs_env_at(&server.endpoint()))
        .env("WEIR_BROKERS", "sqs://")
        .env("WEIR_GROUP", &group)
        .env("WEIR_TOPICS", &topic)
        .env("WEIR_STATE_DIR", dir.path())
        .env("WEIR_METRICS_ADDR", addr.to_string())
        .env("WEIR_UNREADABLE_AFTER_MS", "1000");
    let mut worker = WorkerProcess::start(cmd, &logs.path().join("worker.log"));
    own_tansu::wait_listening(addr, "the worker's metrics endpoint");
    let ready = |want: u16, needle: &'static str| async move {
        let (code, body) = http_get(addr, "/health/ready").await;
        if code == want && body.contains(needle) {
            Ok(())
        } else {
            Err(format!("{code} {body}"))
        }
    };
    wait_until("ready", Duration::from_secs(30), || ready(200, "")).await;
    server.stop();
    wait_until(
        "not ready while SQS does not answer",
        Duration::from_secs(30),
        || ready(503, "no connection to the broker"),
    )
    .await;
    server.start_again();
    python_sqs_create_at(&server.endpoint(), &topic, Duration::from_secs(30));
    wait_until("ready again", Duration::from_secs(30), || ready(200, "")).await;
    worker.stop();
}

/// The test endpoint is no test unless it behaves as SQS does under concurrent requests:
/// boto3 senders and receivers at once get each message once, every delete sticks, and no
/// request fails. moto's own threaded server did none of this (a receive handed a message out
/// twice, a delete undone by another left its message in the queue, a receive failed with a
/// 500 after hiding messages); Python switching threads every microsecond shows it in a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_endpoint_takes_concurrent_requests_as_sqs_does() {
    let own = OwnSqs::start_switching_every(1e-6);
    let seen = python_sqs_race(&own.endpoint(), &unique("sqs-race"), 100);
    assert_eq!(
        (
            &seen["received"],
            &seen["twice"],
            &seen["errors"],
            &seen["visible"],
            &seen["not_visible"]
        ),
        (
            &seen["sent"],
            &serde_json::json!(0),
            &serde_json::json!([]),
            &serde_json::json!(0),
            &serde_json::json!(0)
        ),
        "each message received once, nothing left, no request failed: {seen}"
    );
}
