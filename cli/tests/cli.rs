//! The `weir` command against the stores and the group of a real worker, on both brokers:
//! every subcommand's output, and its errors and exit codes for bad input.

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use rdkafka::Message;
use serde_json::Value;
use weir::state::changelog_topic;
use weir_tests::*;

const PARTITIONS: i32 = 2;

/// Runs `weir` with `args`.
fn weir(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .output()
        .expect("run weir")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the exit code, showing the output when it differs.
fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
}

fn json_lines(out: &Output) -> Vec<Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// `weir dlq show` of the letter at `partition`/`offset` of `dlq`.
fn dlq_show(brokers: &str, dlq: &str, partition: &str, offset: &str) -> Output {
    weir(&[
        "dlq",
        "show",
        "--brokers",
        brokers,
        "--topic",
        dlq,
        "--partition",
        partition,
        "--offset",
        offset,
    ])
}

/// `weir dlq show` of `letter` (a line of `weir dlq list --json`), as JSON.
fn show_letter(brokers: &str, dlq: &str, letter: &Value) -> Value {
    let (partition, offset) = (
        letter["partition"].to_string(),
        letter["offset"].to_string(),
    );
    let out = dlq_show(brokers, dlq, &partition, &offset);
    assert_exit(&out, 0);
    serde_json::from_str(&stdout(&out)).expect("json")
}

/// A dry run of `weir dlq redrive` on `dlq` that says `dry`, then the redrive, which says
/// `done`.
fn redrive_dry_then_executed(brokers: &str, dlq: &str, dry: &str, done: &str) {
    let out = dlq_redrive(brokers, dlq, false);
    assert_exit(&out, 0);
    assert!(stderr(&out).contains(dry), "{}", stderr(&out));
    let out = dlq_redrive(brokers, dlq, true);
    assert_exit(&out, 0);
    assert!(stderr(&out).contains(done), "{}", stderr(&out));
}

/// Waits until `weir dlq list` shows `count` letters of `dlq` on `brokers`, checks that a
/// second list reads the same (reading gives the letters back), and returns the letters and
/// weir's letter of `topic` (2 attempts, an error).
async fn weirs_letter_listed(
    brokers: &str,
    dlq: &str,
    count: usize,
    topic: &str,
) -> (Vec<Value>, Value) {
    let list = || {
        weir(&[
            "dlq",
            "list",
            "--brokers",
            brokers,
            "--topic",
            dlq,
            "--json",
        ])
    };
    wait_until(
        "the dead letter listed",
        Duration::from_secs(30),
        || async {
            let out = list();
            match stdout(&out).lines().count() {
                n if n == count => Ok(()),
                n => Err(format!("{n} letters: {}{}", stdout(&out), stderr(&out))),
            }
        },
    )
    .await;
    let first = list();
    assert_exit(&first, 0);
    assert_eq!(
        stdout(&list()),
        stdout(&first),
        "a second list reads the same"
    );
    let letters = json_lines(&first);
    let letter = letters
        .iter()
        .find(|l| l["source_topic"] == topic)
        .unwrap_or_else(|| panic!("weir's dead letter among {letters:?}"))
        .clone();
    assert_eq!(letter["attempts"], 2, "{letter}");
    assert!(
        letter["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{letter}"
    );
    (letters, letter)
}

/// `weir dlq redrive` of `dlq`, a dry run unless `execute`.
fn dlq_redrive(brokers: &str, dlq: &str, execute: bool) -> Output {
    let mut args = vec!["dlq", "redrive", "--brokers", brokers, "--topic", dlq];
    if execute {
        args.push("--execute");
    }
    weir(&args)
}

/// A group whose worker counted `records` and stopped cleanly.
struct Counted {
    fixture: Fixture,
    expected: BTreeMap<String, u64>,
    /// Records per partition.
    offsets: BTreeMap<i32, i64>,
}

async fn counted(kind: BrokerKind) -> Counted {
    let fixture = Fixture::new(kind, "cli", PARTITIONS).await;
    let records = keyed_records(0, 400, 20);
    fixture
        .broker
        .produce(&fixture.topic, None, records.clone())
        .await;
    let worker = fixture
        .broker
        .worker(&fixture.group, &fixture.topic, fixture.dir.path())
        .build(CountHandler::default())
        .expect("build");
    let worker = RunningWorker::spawn(worker);
    let expected = expected_counts(&records);
    wait_for_counts(
        fixture.dir.path(),
        &fixture.group,
        &fixture.topic,
        &expected,
        Duration::from_secs(60),
    )
    .await;
    worker.stop_cleanly().await;
    let offsets = StoredCounts::read(fixture.dir.path(), &fixture.group, &fixture.topic).offsets;
    Counted {
        fixture,
        expected,
        offsets,
    }
}

async fn state_commands_read_the_stores(kind: BrokerKind) {
    let Counted {
        fixture, expected, ..
    } = counted(kind).await;
    let dir = fixture.dir.path().to_str().expect("utf-8 path").to_owned();
    let (group, topic) = (fixture.group.as_str(), fixture.topic.as_str());
    let at = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["--state-dir", &dir, "--group", group, "--topic", topic]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let run = |cmd: &[&str], extra: &[&str]| {
        let mut args: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        args.extend(at(extra));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        weir(&args)
    };

    // get: every partition searched, the hit printed with its partition.
    let out = run(&["state", "get"], &["--store", COUNTS, "k7"]);
    assert_exit(&out, 0);
    let hits = json_lines(&out);
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0]["value"], Value::from(expected["k7"]));
    let p = hits[0]["partition"]
        .as_i64()
        .expect("partition")
        .to_string();
    // With --partition: the value alone.
    let out = run(
        &["state", "get"],
        &["--store", COUNTS, "--partition", &p, "k7"],
    );
    assert_exit(&out, 0);
    assert_eq!(stdout(&out).trim(), expected["k7"].to_string());
    // A key no partition holds: exit 1; a store that does not exist: exit 3, naming those
    // that do.
    let out = run(&["state", "get"], &["--store", COUNTS, "nope"]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("no key \"nope\""), "{}", stderr(&out));
    let out = run(&["state", "get"], &["--store", "totals", "k7"]);
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("no store \"totals\"") && stderr(&out).contains(COUNTS),
        "{}",
        stderr(&out)
    );

    // scan: keys with a prefix, up to a limit, over all partitions.
    let out = run(&["state", "scan"], &["--store", COUNTS, "--prefix", "k1"]);
    assert_exit(&out, 0);
    let got: BTreeMap<String, u64> = json_lines(&out)
        .iter()
        .map(|l| {
            (
                l["key"].as_str().expect("key").to_owned(),
                l["value"].as_u64().expect("value"),
            )
        })
        .collect();
    let want: BTreeMap<String, u64> = expected
        .iter()
        .filter(|(k, _)| k.starts_with("k1"))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(got, want);
    let out = run(
        &["state", "scan"],
        &["--store", COUNTS, "--prefix", "k", "--limit", "5"],
    );
    assert_exit(&out, 0);
    assert_eq!(json_lines(&out).len(), 5);

    // export: every entry of every store, the counts exactly.
    let out = run(&["state", "export"], &[]);
    assert_exit(&out, 0);
    let mut counts = BTreeMap::new();
    for l in json_lines(&out) {
        if l["store"] == COUNTS {
            counts.insert(
                l["key"].as_str().expect("key").to_owned(),
                l["value"].as_u64().expect("value"),
            );
        }
    }
    assert_eq!(counts, expected);
    let out = run(&["state", "export"], &["--store", COUNTS]);
    assert_exit(&out, 0);
    assert_eq!(json_lines(&out).len(), expected.len());

    // Bad input: a missing state dir, an unknown group, a topic without stores, a corrupt
    // file. Exit 3, naming what is wrong (and what is there).
    let out = weir(&[
        "state",
        "get",
        "--state-dir",
        "/no/such/dir",
        "--group",
        group,
        "--topic",
        topic,
        "--store",
        COUNTS,
        "k1",
    ]);
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("/no/such/dir"), "{}", stderr(&out));
    let out = weir(&[
        "state",
        "get",
        "--state-dir",
        &dir,
        "--group",
        "nogroup",
        "--topic",
        topic,
        "--store",
        COUNTS,
        "k1",
    ]);
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("no group \"nogroup\"") && stderr(&out).contains(group),
        "{}",
        stderr(&out)
    );
    let out = weir(&[
        "state",
        "scan",
        "--state-dir",
        &dir,
        "--group",
        group,
        "--topic",
        "notopic",
        "--store",
        COUNTS,
    ]);
    assert_exit(&out, 3);
    assert!(stderr(&out).contains(topic), "{}", stderr(&out));
    let broken = tempfile::tempdir().expect("tempdir");
    let broken_topic = broken.path().join(group).join(topic);
    std::fs::create_dir_all(&broken_topic).expect("mkdir");
    std::fs::write(broken_topic.join("0.sqlite"), b"not a database, not at all").expect("write");
    let out = weir(&[
        "state",
        "export",
        "--state-dir",
        broken.path().to_str().expect("utf-8"),
        "--group",
        group,
        "--topic",
        topic,
    ]);
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("0.sqlite"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
}

on_both_brokers!(state_commands, state_commands_read_the_stores);

async fn status_shows_each_partition(kind: BrokerKind) {
    let Counted {
        fixture, offsets, ..
    } = counted(kind).await;
    let dir = fixture.dir.path().to_str().expect("utf-8 path").to_owned();
    let group = fixture.group.as_str();
    let out = weir(&[
        "status",
        "--state-dir",
        &dir,
        "--group",
        group,
        "--brokers",
        fixture.broker.bootstrap(),
        "--json",
    ]);
    assert_exit(&out, 0);
    let rows: Vec<Value> = serde_json::from_str(&stdout(&out)).expect("a JSON array");
    assert_eq!(rows.len(), offsets.len(), "{rows:?}");
    for row in &rows {
        let p = row["partition"].as_i64().expect("partition") as i32;
        let next = offsets[&p];
        assert_eq!(row["topic"], Value::from(fixture.topic.as_str()));
        assert_eq!(row["next_offset"], Value::from(next), "{row}");
        // The clean stop committed the SQLite offsets to Kafka.
        assert_eq!(row["kafka_committed"], Value::from(next), "{row}");
        assert!(row["high_watermark"].as_i64().is_some(), "{row}");
        assert_eq!(row["lag"], Value::from(0), "{row}");
        assert!(row["owner_epoch"].as_i64().is_some_and(|e| e >= 1), "{row}");
        assert_eq!(row["outbox"], Value::from(0), "{row}");
        assert!(row["last_commit_ms"].as_i64().is_some(), "{row}");
        assert!(row["file_bytes"].as_u64().is_some_and(|b| b > 0), "{row}");
    }
    // The table form names every partition.
    let out = weir(&["status", "--state-dir", &dir, "--group", group]);
    assert_exit(&out, 0);
    let table = stdout(&out);
    assert_eq!(table.lines().count(), 1 + offsets.len(), "{table}");
    // An unknown group: exit 3.
    let out = weir(&["status", "--state-dir", &dir, "--group", "nogroup"]);
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("no group"), "{}", stderr(&out));
}

on_both_brokers!(status, status_shows_each_partition);

#[test]
fn status_with_unreachable_brokers_exits_4() {
    let dir = tempfile::tempdir().expect("tempdir");
    let topic_dir = dir.path().join("g").join("t");
    std::fs::create_dir_all(&topic_dir).expect("mkdir");
    // A real (empty) store, made by the state crate.
    drop(weir_state::PartitionStore::open(topic_dir.join("0.sqlite")).expect("a store"));
    let out = weir(&[
        "status",
        "--state-dir",
        dir.path().to_str().expect("utf-8"),
        "--group",
        "g",
        "--brokers",
        "127.0.0.1:1",
    ]);
    assert_exit(&out, 4);
    assert!(stderr(&out).contains("127.0.0.1:1"), "{}", stderr(&out));
}

async fn dead_letters_are_listed_shown_and_redriven_once(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "cli-dlq", PARTITIONS).await;
    let dlq = format!("{topic}.dlq");
    // Three poison records, each failing its two attempts; then the handler heals. Their
    // producer put them where Kafka's Java client does (murmur2), and their keys are ones
    // librdkafka's default partitioner (crc32) would put elsewhere: a redrive must bring each
    // back to its own partition's store.
    let records = keyed_records(0, 30, 5);
    broker.produce(&topic, None, records.clone()).await;
    let poison: Vec<String> = (0..)
        .map(|i| format!("bad{i}"))
        .filter(|k| {
            let crc = (weir_state::wire::crc32(k.as_bytes()) % PARTITIONS as u32) as i32;
            crc != weir_state::wire::partition_for_key(k.as_bytes(), PARTITIONS)
        })
        .take(3)
        .collect();
    for key in &poison {
        let p = weir_state::wire::partition_for_key(key.as_bytes(), PARTITIONS);
        broker
            .produce(&topic, Some(p), [(key.clone(), "poison".to_owned())])
            .await;
    }
    let worker = broker
        .worker(&group, &topic, dir.path())
        .retry(TWO_QUICK_ATTEMPTS)
        .build(CountHandler::with_poison("poison", 6))
        .expect("build");
    let worker = RunningWorker::spawn(worker);
    let healthy: BTreeMap<String, u64> = expected_counts(&records[..30]);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &healthy,
        Duration::from_secs(60),
    )
    .await;
    let brokers = broker.bootstrap().to_owned();
    // `weir dlq <sub> --brokers .. --topic <dlq> <extra>`.
    let dlq_cmd = |sub: &str, extra: &[&str]| {
        let mut args = vec!["dlq", sub, "--brokers", &brokers, "--topic", &dlq];
        args.extend_from_slice(extra);
        weir(&args)
    };
    // The three dead letters arrive (each acknowledged before its batch commits).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let letters = loop {
        let out = weir(&[
            "dlq",
            "list",
            "--brokers",
            &brokers,
            "--topic",
            &dlq,
            "--json",
        ]);
        assert_exit(&out, 0);
        let letters = json_lines(&out);
        if letters.len() >= 3 {
            break letters;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letters: {letters:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(letters.len(), 3, "{letters:?}");
    for l in &letters {
        assert_eq!(l["source_topic"], Value::from(topic.as_str()), "{l}");
        assert_eq!(l["reason"], Value::from("failed"), "{l}");
        assert_eq!(l["attempts"], Value::from(2), "{l}");
        assert!(l["error"].as_str().is_some_and(|e| !e.is_empty()), "{l}");
    }
    // The table form, and one letter in full.
    let out = dlq_cmd("list", &[]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("3 dead letters"), "{}", stdout(&out));
    let (p, o) = (
        letters[0]["partition"].to_string(),
        letters[0]["offset"].to_string(),
    );
    let out = dlq_cmd("show", &["--partition", &p, "--offset", &o]);
    assert_exit(&out, 0);
    let shown: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(shown["value"], Value::from("poison"));
    assert!(shown["key"].as_str().is_some_and(|k| k.starts_with("bad")));
    let out = dlq_cmd("show", &["--partition", &p, "--offset", "999999"]);
    assert_exit(&out, 1);

    // A dry run produces nothing; --execute produces each once, and the healed worker counts
    // them; a second --execute finds nothing new.
    let redrive = |execute: bool| dlq_cmd("redrive", if execute { &["--execute"] } else { &[] });
    let out = redrive(false);
    assert_exit(&out, 0);
    assert!(stderr(&out).contains("dry run: 3"), "{}", stderr(&out));
    let out = redrive(true);
    assert_exit(&out, 0);
    assert!(stderr(&out).contains("redrove 3"), "{}", stderr(&out));
    let mut all = healthy.clone();
    for key in &poison {
        all.insert(key.clone(), 1);
    }
    wait_for_counts(dir.path(), &group, &topic, &all, Duration::from_secs(60)).await;
    let out = redrive(true);
    assert_exit(&out, 0);
    assert!(stderr(&out).contains("redrove 0"), "{}", stderr(&out));
    worker.stop_cleanly().await;
    let counts = StoredCounts::read(dir.path(), &group, &topic).counts;
    assert_counts_exact(&counts, &all);
    // The redriven records carry where they came from, and none of weir's dead-letter headers.
    let redriven: Vec<_> = read_all(&brokers, &topic, PARTITIONS)
        .into_iter()
        .filter(|m| header(m, "weir.redrive.from").is_some())
        .collect();
    assert_eq!(redriven.len(), 3);
    for m in &redriven {
        assert!(header(m, "weir.redrive.from").is_some_and(|f| f.starts_with(&dlq)));
        assert!(header(m, "weir.error").is_none() && header(m, "weir.source.offset").is_none());
        let key = String::from_utf8_lossy(m.key().expect("key")).into_owned();
        let source = weir_state::wire::partition_for_key(key.as_bytes(), PARTITIONS);
        assert_eq!(
            m.partition(),
            source,
            "{key} redriven into partition {}, not its source partition {source}",
            m.partition()
        );
        let store =
            weir_state::StoreReader::open(&store_files(dir.path(), &group, &topic)[&source])
                .expect("open store");
        assert_eq!(
            store.get::<_, u64>(COUNTS, &key).expect("read"),
            Some(1),
            "{key}"
        );
    }
    // A topic that does not exist: exit 3.
    let out = weir(&[
        "dlq",
        "list",
        "--brokers",
        &brokers,
        "--topic",
        "no-such-dlq",
    ]);
    assert_exit(&out, 3);
}

on_both_brokers!(dlq, dead_letters_are_listed_shown_and_redriven_once);

/// With `keep_key_order` (issue 25, item 3): a poison record and the key's records after it are
/// dead-lettered; once the handler is fixed, a redrive puts them back in order and clears the
/// key's mark, so the key's later records are processed again (before the fix, the redriven
/// poison was dead-lettered at once as following a dead letter).
async fn a_redrive_puts_a_dead_key_back_in_order(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "cli-dead-key", PARTITIONS).await;
    let dlq = format!("{topic}.dlq");
    let record = |v: &str| ("a".to_owned(), v.to_owned());
    broker
        .produce(
            &topic,
            None,
            [record("x1"), record("poison"), record("x2"), record("x3")],
        )
        .await;
    // The poison fails its two attempts, then the handler is "fixed".
    let handler = CountHandler::with_poison("poison", 2);
    let worker = broker
        .worker(&group, &topic, dir.path())
        .retry(TWO_QUICK_ATTEMPTS)
        .keep_key_order(true)
        .build(handler.clone())
        .expect("build");
    let worker = RunningWorker::spawn(worker);
    let brokers = broker.bootstrap().to_owned();
    let dlq_cmd = |sub: &str, extra: &[&str]| {
        let mut args = vec!["dlq", sub, "--brokers", &brokers, "--topic", &dlq];
        args.extend_from_slice(extra);
        weir(&args)
    };
    wait_until("3 dead letters", Duration::from_secs(60), || async {
        let out = dlq_cmd("list", &["--json"]);
        let letters = json_lines(&out);
        if letters.len() >= 3 {
            Ok(())
        } else {
            Err(format!("{letters:?}"))
        }
    })
    .await;
    let out = dlq_cmd("redrive", &["--execute"]);
    assert_exit(&out, 0);
    assert!(stderr(&out).contains("redrove 3"), "{}", stderr(&out));
    broker.produce(&topic, None, [record("x4")]).await;
    let want = BTreeMap::from([("a".to_owned(), 5)]);
    wait_for_counts(dir.path(), &group, &topic, &want, Duration::from_secs(60)).await;
    worker.stop_cleanly().await;
    // Each value's last attempt, in order: the key's records in their order.
    let mut order: Vec<String> = Vec::new();
    for (_, value, _) in handler.log.lock().expect("log").iter() {
        order.retain(|v| v != value);
        order.push(value.clone());
    }
    assert_eq!(order, ["x1", "poison", "x2", "x3", "x4"]);
    let letters = json_lines(&dlq_cmd("list", &["--json"]));
    assert_eq!(letters.len(), 3, "nothing dead-lettered again: {letters:?}");
}

on_both_brokers!(dead_key, a_redrive_puts_a_dead_key_back_in_order);

#[test]
fn exit_codes_are_documented_in_help_and_readme() {
    let out = weir(&["--help"]);
    assert_exit(&out, 0);
    let help = stdout(&out);
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    for code in 0..=5 {
        assert!(help.contains(&format!("\n  {code}  ")), "{code} in: {help}");
        assert!(
            readme.contains(&format!("\n| {code} | ")),
            "{code} in the README"
        );
    }
    // Usage errors exit 2.
    assert_exit(&weir(&["state", "get"]), 2);
}

const TOKEN: &str = "a-token-of-24-characters";

/// Produces `records` partitioned by murmur2 of their keys (as Kafka's Java client does).
async fn produce_murmur2(broker: &TestBroker, topic: &str, records: &[(String, String)]) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = broker
        .client()
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer");
    for (k, v) in records {
        producer
            .send(
                FutureRecord::to(topic).key(k).payload(v),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    }
}

async fn state_queries_answer_from_the_owning_worker(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "cli-query", PARTITIONS).await;
    let dir2 = tempfile::tempdir().expect("tempdir");
    let records = keyed_records(0, 200, 20);
    produce_murmur2(&broker, &topic, &records).await;
    let start = |dir: &std::path::Path| {
        let worker = broker
            .worker(&group, &topic, dir)
            .metrics_addr("127.0.0.1:0")
            .http_token(TOKEN)
            .build(CountHandler::default())
            .expect("build");
        let addr = worker.metrics_addr().expect("metrics address");
        (addr, RunningWorker::spawn(worker))
    };
    let ((a, wa), (b, wb)) = (start(dir.path()), start(dir2.path()));
    let expected = expected_counts(&records);
    wait_until(
        "both workers counted everything",
        Duration::from_secs(60),
        || {
            let (d1, d2) = (dir.path().to_owned(), dir2.path().to_owned());
            let (group, topic, expected) = (group.clone(), topic.clone(), expected.clone());
            async move {
                let (x, y) = (
                    StoredCounts::read(&d1, &group, &topic),
                    StoredCounts::read(&d2, &group, &topic),
                );
                let total = x.total() + y.total();
                if x.offsets.is_empty()
                    || y.offsets.is_empty()
                    || total != expected.values().sum::<u64>()
                {
                    return Err(format!("counted {} and {}", x.total(), y.total()));
                }
                Ok(())
            }
        },
    )
    .await;
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];
    // k7: one worker answers with its count, the other with the owning partition.
    let partition = weir_state::wire::partition_for_key(b"k7", PARTITIONS);
    let mut answers = Vec::new();
    for addr in [a, b] {
        answers.push(http_get_with(addr, "/state/counts/k7", &auth).await);
    }
    answers.sort();
    let (ok, misdirected) = (&answers[0], &answers[1]);
    assert_eq!(ok.0, 200, "{answers:?}");
    let ok: Value = serde_json::from_str(&ok.1).expect("json");
    assert_eq!(ok["value"], Value::from(expected["k7"]));
    assert_eq!(ok["partition"], Value::from(partition));
    assert_eq!(misdirected.0, 421, "{answers:?}");
    let m: Value = serde_json::from_str(&misdirected.1).expect("json");
    assert_eq!(m["partition"], Value::from(partition));
    // A key no partition holds: 404 from its partition's owner.
    let mut codes = Vec::new();
    for addr in [a, b] {
        codes.push(http_get_with(addr, "/state/counts/nope", &auth).await.0);
    }
    codes.sort();
    assert_eq!(codes, [404, 421]);
    // Without the token, or with another one: 401. /metrics and /health stay open.
    for addr in [a, b] {
        assert_eq!(http_get(addr, "/state/counts/k7").await.0, 401);
        let wrong = [("Authorization", "Bearer a-token-of-24-charactery")];
        assert_eq!(http_get_with(addr, "/state/counts/k7", &wrong).await.0, 401);
        assert_eq!(http_get(addr, "/metrics").await.0, 200);
        assert_eq!(http_get(addr, "/health/live").await.0, 200);
    }
    // weir query asks both.
    let workers = format!("http://{a},http://{b}");
    let query = |token: &str, key: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["query", "--workers", &workers, "counts", key])
            .env("WEIR_HTTP_TOKEN", token)
            .output()
            .expect("run weir")
    };
    let out = query(TOKEN, "k7");
    assert_exit(&out, 0);
    let got: Value = serde_json::from_str(stdout(&out).trim()).expect("json");
    assert_eq!(got["value"], Value::from(expected["k7"]));
    let out = query(TOKEN, "nope");
    assert_exit(&out, 1);
    let out = query("not-the-token-at-all", "k7");
    assert_exit(&out, 3);
    // Not from the command line.
    let out = weir(&[
        "query",
        "--workers",
        &workers,
        "--token",
        TOKEN,
        "counts",
        "k7",
    ]);
    assert_exit(&out, 2);
    let out = query("", "k7");
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("WEIR_HTTP_TOKEN"), "{}", stderr(&out));
    wa.stop_cleanly().await;
    wb.stop_cleanly().await;
    let out = query(TOKEN, "k7");
    assert_exit(&out, 4);
}

on_both_brokers!(query, state_queries_answer_from_the_owning_worker);

/// `weir query` speaks https to an https URL (a worker's endpoint behind a TLS proxy here),
/// verifying the certificate against `SSL_CERT_FILE`'s CA (issue 25, item 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn query_speaks_https() {
    let Counted {
        fixture, expected, ..
    } = counted(BrokerKind::Mock).await;
    let worker = fixture
        .broker
        .worker(&fixture.group, &fixture.topic, fixture.dir.path())
        .metrics_addr("127.0.0.1:0")
        .http_token(TOKEN)
        .build(CountHandler::default())
        .expect("build");
    let plain = worker.metrics_addr().expect("metrics address");
    let worker = RunningWorker::spawn(worker);
    let pki = weir_tests::tls::Pki::create();
    let tls: std::net::SocketAddr = format!("127.0.0.1:{}", weir_tests::own_tansu::free_port())
        .parse()
        .expect("addr");
    let proxy = weir_tests::tls::Stunnel::start(&pki, tls, plain, false);
    let query = |url: &str, ca: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["query", "--workers", url, "counts", "k7"])
            .env("WEIR_HTTP_TOKEN", TOKEN)
            .env("SSL_CERT_FILE", ca)
            .output()
            .expect("run weir")
    };
    let https = format!("https://{}", proxy.addr());
    // The worker may still be joining its group: 421/503 until it owns the partitions.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let out = loop {
        let out = query(&https, &pki.file("ca.pem"));
        if out.status.code() == Some(0) || std::time::Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_exit(&out, 0);
    let got: Value = serde_json::from_str(stdout(&out).trim()).expect("json");
    assert_eq!(got["value"], Value::from(expected["k7"]));
    // A certificate of another CA is refused (exit 4, naming TLS).
    let out = query(&https, &pki.file("other-ca.pem"));
    assert_exit(&out, 4);
    assert!(stderr(&out).contains("TLS"), "{}", stderr(&out));
    worker.stop_cleanly().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_queries_are_off_without_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = weir::Worker::builder()
        .topic("lines")
        .state_dir(dir.path())
        .metrics_addr("127.0.0.1:0")
        .build(CountHandler::default())
        .expect("build");
    let addr = worker.metrics_addr().expect("metrics address");
    let worker = RunningWorker::spawn(worker);
    let auth = [("Authorization", "Bearer whatever-you-like-here")];
    let (status, body) = http_get_with(addr, "/state/counts/k1", &auth).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("WEIR_HTTP_TOKEN"), "{body}");
    assert_eq!(http_get(addr, "/health/live").await.0, 200);
    worker.stop_cleanly().await;
}

async fn reset_moves_a_stopped_group_and_starts_its_state_over(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "cli-reset", PARTITIONS).await;
    let tansu = kind == BrokerKind::Tansu;
    if tansu {
        broker
            .create_one_topic(&changelog_topic(&group, &topic), PARTITIONS)
            .await;
    }
    let old = keyed_records(0, 100, 10);
    broker.produce(&topic, None, old.clone()).await;
    let start = |dir: &std::path::Path| {
        let worker = broker
            .worker(&group, &topic, dir)
            .changelog(tansu)
            .build(CountHandler::default())
            .expect("build");
        RunningWorker::spawn(worker)
    };
    let worker = start(dir.path());
    let expected = expected_counts(&old);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected,
        Duration::from_secs(60),
    )
    .await;
    let dir_s = dir.path().to_str().expect("utf-8").to_owned();
    let brokers = broker.bootstrap().to_owned();
    let reset_in = |state_dir: &str, group: &str, to: &str, execute: bool| {
        let mut args = vec![
            "reset",
            "--brokers",
            &brokers,
            "--state-dir",
            state_dir,
            "--group",
            group,
            "--to",
            to,
        ];
        if execute {
            args.push("--execute");
        }
        weir(&args)
    };
    let reset = |group: &str, to: &str, execute: bool| reset_in(&dir_s, group, to, execute);
    let unchanged = |what: &str| {
        let now = StoredCounts::read(dir.path(), &group, &topic);
        assert_counts_exact(&now.counts, &expected);
        assert_eq!(now.offsets.values().sum::<i64>(), 100, "{what}");
    };
    if !tansu {
        // The mock cluster does not describe groups: the reset cannot tell whether workers
        // run, and changes nothing.
        worker.stop_cleanly().await;
        let out = reset(&group, "earliest", true);
        assert_exit(&out, 4);
        assert!(
            stderr(&out).contains("did not describe"),
            "{}",
            stderr(&out)
        );
        unchanged("after a reset the broker could not check");
        return;
    }
    // While the worker runs: refused, nothing changed.
    let out = reset(&group, "earliest", true);
    assert_exit(&out, 5);
    assert!(
        stderr(&out).contains("has live members"),
        "{}",
        stderr(&out)
    );
    unchanged("after a refused reset");
    worker.stop_cleanly().await;
    broker
        .wait_group_empty(&group, Duration::from_secs(60))
        .await;
    let before = StoredCounts::read(dir.path(), &group, &topic);

    // Records after a point in time: the reset goes to the first of them in each partition.
    let cut = now_ms() + 1;
    while now_ms() <= cut {
        std::thread::yield_now();
    }
    // (Keys of their own: a restore that kept the old keys would show them.)
    let later: Vec<(String, String)> = keyed_records(100, 30, 5)
        .into_iter()
        .map(|(k, v)| (format!("new-{k}"), v))
        .collect();
    broker.produce(&topic, None, later.clone()).await;

    // A dry run lists each partition's move and changes nothing.
    let out = reset(&group, "7", false);
    assert_exit(&out, 0);
    for (p, next) in &before.offsets {
        let line = format!("{topic}/{p}: next offset {next} -> 7");
        assert!(stdout(&out).contains(&line), "{line} in {}", stdout(&out));
    }
    unchanged("after a dry run");

    let out = reset(&group, &format!("{cut}ms"), true);
    assert_exit(&out, 0);
    for (p, next) in &before.offsets {
        let line = format!("{topic}/{p}: next offset {next} -> {next}");
        assert!(stdout(&out).contains(&line), "{line} in {}", stdout(&out));
    }
    let after = StoredCounts::read(dir.path(), &group, &topic);
    assert!(
        after.counts.is_empty(),
        "stores emptied: {:?}",
        after.counts
    );
    assert_eq!(
        after.offsets, before.offsets,
        "at the first record after the cut"
    );
    assert_eq!(
        broker.kafka_committed(&group, &topic, PARTITIONS),
        before.offsets
    );
    // A worker on the same stores counts only the later records...
    let want = expected_counts(&later);
    let worker = start(dir.path());
    wait_for_counts(dir.path(), &group, &topic, &want, Duration::from_secs(60)).await;
    worker.stop_cleanly().await;
    broker
        .wait_group_empty(&group, Duration::from_secs(60))
        .await;
    // ...and so does one that restores them from the changelog on another machine: the reset
    // logged a tombstone per old key there.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let worker = start(elsewhere.path());
    wait_for_counts(
        elsewhere.path(),
        &group,
        &topic,
        &want,
        Duration::from_secs(60),
    )
    .await;
    worker.stop_cleanly().await;

    // Bad input: an unknown group, a bad position, a missing state dir.
    assert_exit(&reset("nogroup", "earliest", false), 3);
    assert_exit(&reset(&group, "yesterday", false), 3);
    assert_exit(&reset_in("/nonexistent", &group, "earliest", false), 3);
}

/// A reset backwards, then another forwards (issue 25, item 1): a restore follows the newest
/// rewind in log order, not the largest offset marker, and a copy of the stores from before a
/// reset, kept on another volume, loses to the changelog. (tansu: the mock cluster cannot tell
/// whether a group has members, so it refuses resets.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restores_follow_the_newest_reset_not_the_largest_offset() {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(BrokerKind::Tansu, "cli-rewind", PARTITIONS).await;
    broker
        .create_one_topic(&changelog_topic(&group, &topic), PARTITIONS)
        .await;
    let records = keyed_records(0, 1000, 20);
    broker.produce(&topic, None, records.clone()).await;
    let brokers = broker.bootstrap().to_owned();
    let count_in = |dir, expected| count_exactly(&broker, &group, &topic, dir, expected);
    let reset = |dir: &std::path::Path, to: &str| {
        let dir = dir.to_str().expect("utf-8");
        let out = weir(&[
            "reset",
            "--brokers",
            &brokers,
            "--state-dir",
            dir,
            "--group",
            &group,
            "--to",
            to,
            "--execute",
        ]);
        assert_exit(&out, 0);
    };
    let all = expected_counts(&records);
    count_in(dir.path(), all.clone()).await;
    // This machine's disk as it was before the resets, kept elsewhere.
    let stale = tempfile::tempdir().expect("tempdir");
    copy_dir(dir.path(), stale.path());

    // Back to the start: a new machine restores empty state at the start and counts every
    // record once (before the fix: empty state at the old end, nothing counted).
    reset(dir.path(), "earliest");
    let fresh = tempfile::tempdir().expect("tempdir");
    count_in(fresh.path(), all).await;

    // Records of keys of their own after a point in time, and a reset to it: the copy from
    // before the resets is behind the changelog's newest reset although its offsets are as
    // high, so it is rebuilt and counts only the later records (before the fix: it kept every
    // old count). (A time, not `latest`: tansu answers ListOffsets with less than the end.)
    let cut = now_ms() + 1;
    while now_ms() <= cut {
        std::thread::yield_now();
    }
    let later: Vec<(String, String)> = keyed_records(1000, 30, 5)
        .into_iter()
        .map(|(k, v)| (format!("new-{k}"), v))
        .collect();
    broker.produce(&topic, None, later.clone()).await;
    reset(fresh.path(), &format!("{cut}ms"));
    count_in(stale.path(), expected_counts(&later)).await;
}

/// A worker with a changelog on `dir` until its stores hold exactly `expected` (a store that
/// holds more before a restore does not pass), stopped.
async fn count_exactly(
    broker: &TestBroker,
    group: &str,
    topic: &str,
    dir: &std::path::Path,
    expected: BTreeMap<String, u64>,
) {
    let worker = broker
        .worker(group, topic, dir)
        .changelog(true)
        .build(CountHandler::default())
        .expect("build");
    let worker = RunningWorker::spawn(worker);
    wait_until("the expected counts", Duration::from_secs(60), || async {
        let now = StoredCounts::read(dir, group, topic);
        if now.counts == expected {
            Ok(())
        } else {
            Err(format!(
                "{} counted, offsets {:?}",
                now.total(),
                now.offsets
            ))
        }
    })
    .await;
    worker.stop_cleanly().await;
    broker
        .wait_group_empty(group, Duration::from_secs(60))
        .await;
    assert_counts_exact(&StoredCounts::read(dir, group, topic).counts, &expected);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

on_both_brokers!(reset, reset_moves_a_stopped_group_and_starts_its_state_over);

/// Over TLS (tansu behind stunnel): the command connects as the workers do, with the
/// `WEIR_KAFKA_*` connection settings of the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_connect_with_the_workers_tls_settings() {
    let pki = weir_tests::tls::Pki::create();
    let tansu = weir_tests::tls::TlsTansu::start(&pki, false);
    let ca = pki.file("ca.pem");
    let broker = TestBroker::tansu_at(tansu.bootstrap())
        .with_connection(&[("security.protocol", "ssl"), ("ssl.ca.location", &ca)]);
    let dlq = format!("{}.dlq", unique("cli-tls"));
    broker.create_topic(&dlq, 1).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "dlq",
            "list",
            "--json",
            "--brokers",
            &tansu.bootstrap(),
            "--topic",
            &dlq,
        ])
        .env("WEIR_KAFKA_SECURITY_PROTOCOL", "ssl")
        .env("WEIR_KAFKA_SSL_CA_LOCATION", &ca)
        .output()
        .expect("run weir");
    assert_exit(&out, 0);
    assert!(json_lines(&out).is_empty(), "no dead letters yet");
}

/// On NATS: a record that fails its attempts is listed and shown from the dead-letter stream,
/// redriven (a dry run first) back into its source topic's stream under its key, counted by
/// the healed handler once, and a second redrive finds nothing left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_on_nats_are_listed_shown_and_redriven_once() {
    let (topic, group) = (unique("cli-nats-dlq"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    let url = nats_url();
    let dlq = format!("{topic}.dlq");
    create_nats_stream(&topic, 2).await;
    let mut records = keyed_records(0, 30, 5);
    records.push(("bad".into(), "poison".into()));
    nats_publish(&topic, &records).await;
    let handler = CountHandler::with_poison("poison", 2);
    let worker = nats_worker(&group, &topic, dir.path())
        .retry(TWO_QUICK_ATTEMPTS)
        .build(handler.clone())
        .expect("build worker");
    let running = RunningWorker::spawn(worker);
    let good: Vec<_> = records[..30].to_vec();
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&good),
        Duration::from_secs(60),
    )
    .await;
    wait_until(
        "the dead letter listed",
        Duration::from_secs(30),
        || async {
            let out = weir(&["dlq", "list", "--brokers", &url, "--topic", &dlq, "--json"]);
            match stdout(&out).lines().count() {
                1 => Ok(()),
                n => Err(format!("{n} letters: {}{}", stdout(&out), stderr(&out))),
            }
        },
    )
    .await;
    let out = weir(&["dlq", "list", "--brokers", &url, "--topic", &dlq, "--json"]);
    let letter: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("json");
    assert_eq!(letter["source_topic"], topic.as_str(), "{letter}");
    assert_eq!(letter["attempts"], 2, "{letter}");
    let shown = show_letter(&url, &dlq, &letter);
    assert_eq!(shown["key"], "bad", "{shown}");
    assert_eq!(shown["value"], "poison", "{shown}");

    redrive_dry_then_executed(
        &url,
        &dlq,
        "dry run: 1 dead letters",
        "redrove 1 dead letters",
    );
    let all: Vec<_> = records.clone();
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&all),
        Duration::from_secs(60),
    )
    .await;
    let out = dlq_redrive(&url, &dlq, false);
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains("dry run: 0 dead letters"),
        "{}",
        stderr(&out)
    );
    running.stop_cleanly().await;
    assert_eq!(handler.poison_left("poison"), 0);
}

/// `weir status --brokers nats://...` on a group that read its lanes to the end and stopped:
/// each lane's stored position, its consumer's acknowledged position (the same: the stop
/// acknowledged what it committed) and a lag of 0; while records wait, the lag counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_on_nats_shows_each_lanes_acknowledged_position_and_lag() {
    let (topic, group) = (unique("cli-nats-status"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    let url = nats_url();
    create_nats_stream(&topic, 2).await;
    let records = keyed_records(0, 200, 20);
    nats_publish(&topic, &records).await;
    let worker = nats_worker(&group, &topic, dir.path())
        .build(CountHandler::default())
        .expect("build worker");
    let running = RunningWorker::spawn(worker);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&records),
        Duration::from_secs(60),
    )
    .await;
    running.stop_cleanly().await;
    let state_dir = dir.path().to_str().expect("utf-8 path");
    let status = |lanes: usize| {
        let out = weir(&[
            "status",
            "--state-dir",
            state_dir,
            "--group",
            &group,
            "--brokers",
            &url,
            "--json",
        ]);
        assert_exit(&out, 0);
        let rows: Vec<Value> = serde_json::from_str(&stdout(&out)).expect("a JSON array");
        assert_eq!(rows.len(), lanes, "{rows:?}");
        rows
    };
    for row in status(2) {
        assert_eq!(row["nats_acked"], row["next_offset"], "{row}");
        assert_eq!(row["lag"], Value::from(0), "{row}");
    }
    // 30 more wait for the stopped group: the lanes' lags add up to them.
    nats_publish(&topic, &keyed_records(200, 30, 20)).await;
    let lag: i64 = status(2)
        .iter()
        .map(|r| r["lag"].as_i64().expect("a lag"))
        .sum();
    assert_eq!(lag, 30);
    // The table names the broker's position.
    let out = weir(&[
        "status",
        "--state-dir",
        state_dir,
        "--group",
        &group,
        "--brokers",
        &url,
    ]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out)
            .lines()
            .next()
            .is_some_and(|h| h.contains("broker")),
        "{}",
        stdout(&out)
    );
}

/// `weir status --brokers amqp://...` after a worker counted and stopped: each lane's stored
/// position and a lag of 0 (every message acknowledged); while messages wait for the stopped
/// group, the lanes' lags (their queues' ready messages) add up to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_on_rabbitmq_shows_each_lanes_waiting_messages() {
    let (topic, group) = (unique("cli-amqp-status"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    let url = rabbitmq_url();
    let worker = rabbitmq_worker(&group, &topic, dir.path())
        .partitions(2)
        .build(CountHandler::default())
        .expect("build worker");
    let running = RunningWorker::spawn(worker);
    wait_for_lanes(&url, &topic, 2).await;
    python_amqp_publish(&topic, 0, 200, 20, true);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&keyed_records(0, 200, 20)),
        Duration::from_secs(60),
    )
    .await;
    running.stop_cleanly().await;
    let state_dir = dir.path().to_str().expect("utf-8 path");
    let status = || {
        let out = weir(&[
            "status",
            "--state-dir",
            state_dir,
            "--group",
            &group,
            "--brokers",
            &url,
            "--json",
        ]);
        assert_exit(&out, 0);
        let rows: Vec<Value> = serde_json::from_str(&stdout(&out)).expect("a JSON array");
        assert_eq!(rows.len(), 2, "{rows:?}");
        rows
    };
    let positions: i64 = status()
        .iter()
        .map(|r| {
            assert_eq!(r["lag"], Value::from(0), "{r}");
            r["next_offset"].as_i64().expect("a position")
        })
        .sum();
    assert_eq!(positions, 200, "positions count deliveries");
    python_amqp_publish(&topic, 200, 30, 20, true);
    let lag: i64 = status()
        .iter()
        .map(|r| r["lag"].as_i64().expect("a lag"))
        .sum();
    assert_eq!(lag, 30);
}

/// On RabbitMQ: a message that fails its attempts is listed (twice alike: reading gives the
/// messages back) and shown from its lane's dead-letter queue, redriven (a dry run first) back
/// into its source exchange under its key, counted by the healed handler once, and gone from
/// the dead-letter queue. A dead letter of the broker's (its `x-death` names the source
/// exchange and lane queue) is listed and redriven as well; a message with neither is left in
/// the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_on_rabbitmq_are_listed_shown_and_redriven_once() {
    let (topic, group) = (unique("cli-amqp-dlq"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    let url = rabbitmq_url();
    let dlq = format!("{topic}.dlq");
    let handler = CountHandler::with_poison("v7", 2);
    let worker = rabbitmq_worker(&group, &topic, dir.path())
        .partitions(2)
        .retry(TWO_QUICK_ATTEMPTS)
        .build(handler.clone())
        .expect("build worker");
    let running = RunningWorker::spawn(worker);
    wait_for_lanes(&url, &topic, 2).await;
    wait_for_lanes(&url, &dlq, 2).await;
    python_amqp_publish(&topic, 0, 40, 10, true);
    // Not a dead letter: published to the dead-letter exchange by hand.
    python_amqp_publish(&dlq, 100, 1, 1, true);
    // A dead letter of the broker's (past lane 1's delivery limit), as RabbitMQ's `x-death`
    // describes it.
    let broker_dead = ("k3".to_owned(), "v3-again".to_owned());
    python_amqp_publish_with_headers(
        &dlq,
        std::slice::from_ref(&broker_dead),
        &serde_json::json!({"x-death": [{
            "exchange": topic,
            "queue": format!("{topic}.1"),
            "reason": "delivery_limit",
            "count": 1,
            "routing-keys": ["k3"],
        }]}),
    );
    let mut records = keyed_records(0, 40, 10);
    let good: Vec<_> = records.iter().filter(|(_, v)| v != "v7").cloned().collect();
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&good),
        Duration::from_secs(60),
    )
    .await;
    let list = || weir(&["dlq", "list", "--brokers", &url, "--topic", &dlq, "--json"]);
    let (letters, letter) = weirs_letter_listed(&url, &dlq, 3, &topic).await;
    let by_broker = letters
        .iter()
        .find(|l| l["reason"] == "delivery_limit")
        .unwrap_or_else(|| panic!("the broker's dead letter among {letters:?}"));
    assert_eq!(by_broker["source_topic"], topic.as_str(), "{by_broker}");
    assert_eq!(by_broker["source_partition"], 1, "{by_broker}");
    let shown = show_letter(&url, &dlq, &letter);
    assert_eq!(shown["key"], "k7", "{shown}");
    assert_eq!(shown["value"], "v7", "{shown}");
    let out = dlq_show(&url, &dlq, &letter["partition"].to_string(), "9");
    assert_exit(&out, 1);

    redrive_dry_then_executed(
        &url,
        &dlq,
        "dry run: 3 dead letters",
        "redrove 2 dead letters (1 skipped",
    );
    records.push(broker_dead);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&records),
        Duration::from_secs(60),
    )
    .await;
    let left = json_lines(&list());
    assert_eq!(left.len(), 1, "only the foreign message is left: {left:?}");
    assert_eq!(left[0]["source_topic"], Value::Null, "{left:?}");
    running.stop_cleanly().await;
    assert_eq!(handler.poison_left("v7"), 0);
    let stored = StoredCounts::read(dir.path(), &group, &topic);
    assert_counts_exact(&stored.counts, &expected_counts(&records));
}

/// `weir status --brokers sqs://` after a worker counted and stopped: the queue's stored
/// position and a lag of 0 (every message deleted); while messages wait for the stopped
/// worker, the lag is their number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_on_sqs_shows_the_queues_waiting_messages() {
    let (topic, group) = (unique("cli-sqs-status"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = sqs_worker(&group, &topic, dir.path())
        .build(CountHandler::default())
        .expect("build worker");
    let running = RunningWorker::spawn(worker);
    wait_for_queue(&topic).await;
    python_sqs_send(&topic, 0, 100, 20);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&keyed_records(0, 100, 20)),
        Duration::from_secs(60),
    )
    .await;
    wait_for_empty_queues(std::slice::from_ref(&topic), Duration::from_secs(30)).await;
    running.stop_cleanly().await;
    let state_dir = dir.path().to_str().expect("utf-8 path");
    let status = || {
        let out = weir(&[
            "status",
            "--state-dir",
            state_dir,
            "--group",
            &group,
            "--brokers",
            "sqs://",
            "--json",
        ]);
        assert_exit(&out, 0);
        let rows: Vec<Value> = serde_json::from_str(&stdout(&out)).expect("a JSON array");
        assert_eq!(rows.len(), 1, "{rows:?}");
        rows.into_iter().next().expect("a row")
    };
    let row = status();
    assert_eq!(row["lag"], Value::from(0), "{row}");
    assert!(
        row["next_offset"].as_i64().is_some_and(|n| n >= 100),
        "positions count deliveries: {row}"
    );
    python_sqs_send(&topic, 100, 30, 20);
    assert_eq!(status()["lag"], Value::from(30));
}

/// On SQS: a message that fails its attempts is listed (twice alike: reading gives the
/// messages back) and shown from the queue's dead-letter queue `T-dlq`, redriven (a dry run
/// first) back into its source queue with its key, counted by the healed handler once, and
/// gone from the dead-letter queue; a message sent there by hand is left in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_on_sqs_are_listed_shown_and_redriven_once() {
    let (topic, group) = (unique("cli-sqs-dlq"), unique("g"));
    let dir = tempfile::tempdir().expect("tempdir");
    let dlq = format!("{topic}-dlq");
    let handler = CountHandler::with_poison("v7", 2);
    let worker = sqs_worker(&group, &topic, dir.path())
        .retry(TWO_QUICK_ATTEMPTS)
        .build(handler.clone())
        .expect("build worker");
    let running = RunningWorker::spawn(worker);
    wait_for_queue(&topic).await;
    wait_for_queue(&dlq).await;
    python_sqs_send(&topic, 0, 40, 10);
    // Not a dead letter: sent to the dead-letter queue by hand.
    python_sqs_send(&dlq, 100, 1, 1);
    let records = keyed_records(0, 40, 10);
    let good: Vec<_> = records.iter().filter(|(_, v)| v != "v7").cloned().collect();
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&good),
        Duration::from_secs(60),
    )
    .await;
    let list = || {
        weir(&[
            "dlq",
            "list",
            "--brokers",
            "sqs://",
            "--topic",
            &dlq,
            "--json",
        ])
    };
    let (_, letter) = weirs_letter_listed("sqs://", &dlq, 2, &topic).await;
    let shown = show_letter("sqs://", &dlq, &letter);
    assert_eq!(shown["key"], "k7", "{shown}");
    assert_eq!(shown["value"], "v7", "{shown}");
    let out = dlq_show("sqs://", &dlq, "0", "9");
    assert_exit(&out, 1);

    redrive_dry_then_executed(
        "sqs://",
        &dlq,
        "dry run: 2 dead letters",
        "redrove 1 dead letters (1 skipped",
    );
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&records),
        Duration::from_secs(60),
    )
    .await;
    let left = json_lines(&list());
    assert_eq!(left.len(), 1, "only the foreign message is left: {left:?}");
    assert_eq!(left[0]["source_topic"], Value::Null, "{left:?}");
    running.stop_cleanly().await;
    assert_eq!(handler.poison_left("v7"), 0);
    let stored = StoredCounts::read(dir.path(), &group, &topic);
    assert_counts_exact(&stored.counts, &expected_counts(&records));
}

/// `weir reset` on a RabbitMQ stream topic: refused while a worker of the group holds the
/// stream (exit 5), a dry run changes nothing, and an executed reset to offset 100 starts the
/// store over there and tells the RabbitMQ changelog, so that a worker on another machine
/// (a fresh state dir) restores the reset state, not the old one, and counts only records
/// 100.. of the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_on_rabbitmq_moves_a_stream_topic() {
    let (stream, group) = (unique("cli-amqp-reset"), unique("g"));
    let url = rabbitmq_url();
    python_amqp_stream(&stream);
    python_amqp_publish(&format!("{stream}-in"), 0, 300, 20, true);
    let (dir, fresh) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let start = |dir: &std::path::Path| {
        RunningWorker::spawn(
            rabbitmq_worker(&group, &stream, dir)
                .changelog(true)
                .build(CountHandler::default())
                .expect("build worker"),
        )
    };
    let running = start(dir.path());
    wait_for_counts(
        dir.path(),
        &group,
        &stream,
        &expected_counts(&keyed_records(0, 300, 20)),
        Duration::from_secs(60),
    )
    .await;
    let state_dir = dir.path().to_str().expect("utf-8 path").to_owned();
    let reset = |to: &str, execute: bool| {
        let mut args = vec![
            "reset",
            "--brokers",
            &url,
            "--state-dir",
            &state_dir,
            "--group",
            &group,
            "--to",
            to,
        ];
        if execute {
            args.push("--execute");
        }
        weir(&args)
    };
    let refused = reset("100", true);
    assert_exit(&refused, 5);
    assert!(
        stderr(&refused).contains("holds stream"),
        "{}",
        stderr(&refused)
    );
    running.stop_cleanly().await;

    let dry = reset("100", false);
    assert_exit(&dry, 0);
    assert_eq!(
        stdout(&dry).trim(),
        format!("{stream}/0: next offset 300 -> 100")
    );
    let stored = StoredCounts::read(dir.path(), &group, &stream);
    assert_eq!(
        stored.offsets.get(&0),
        Some(&300),
        "a dry run changes nothing"
    );

    let done = reset("100", true);
    assert_exit(&done, 0);
    let stored = StoredCounts::read(dir.path(), &group, &stream);
    assert_eq!(stored.offsets.get(&0), Some(&100));
    assert_eq!(stored.total(), 0, "the store starts over");

    let running = start(fresh.path());
    let stored = wait_for_counts(
        fresh.path(),
        &group,
        &stream,
        &expected_counts(&keyed_records(100, 200, 20)),
        Duration::from_secs(60),
    )
    .await;
    running.stop_cleanly().await;
    assert_counts_exact(
        &stored.counts,
        &expected_counts(&keyed_records(100, 200, 20)),
    );
    let stored = StoredCounts::read(fresh.path(), &group, &stream);
    assert_eq!(stored.offsets.get(&0), Some(&300));
}
