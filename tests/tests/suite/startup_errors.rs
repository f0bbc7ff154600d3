//! A worker that cannot start says why, naming the setting or file, and exits non-zero:
//! unknown librdkafka property, unreachable broker, unwritable state dir, invalid topic, and a
//! corrupt or foreign state file (never silently reset).

use std::process::Stdio;
use std::time::{Duration, Instant};

use weir_tests::*;

/// Runs the count-worker with `env` until it exits (at most 60 s): (exit code, stderr).
fn run_worker(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = worker_command(env!("CARGO_BIN_EXE_count-worker"));
    cmd.envs(env.iter().copied())
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn count-worker");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            return (
                status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "the worker did not exit within 60 s; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_fails_naming(env: &[(&str, &str)], needle: &str) {
    let (code, stderr) = run_worker(env);
    assert_eq!(code, Some(1), "exit code; stderr: {stderr}");
    assert!(
        stderr.contains(needle),
        "stderr does not name {needle:?}: {stderr}"
    );
}

#[test]
fn a_mistyped_weir_variable_is_named_with_the_setting_meant() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_str().expect("utf8");
    assert_fails_naming(
        &[
            ("WEIR_TOPICS", "t"),
            ("WEIR_STATE_DIR", state),
            ("WEIR_BATCHSIZE", "10"),
        ],
        "WEIR_BATCHSIZE: no such setting (did you mean WEIR_BATCH_SIZE?)",
    );
}

#[test]
fn unknown_kafka_property_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_str().expect("utf8");
    assert_fails_naming(
        &[
            ("WEIR_TOPICS", "t"),
            ("WEIR_STATE_DIR", state),
            ("WEIR_KAFKA_NO_SUCH_PROPERTY", "1"),
        ],
        "WEIR_KAFKA_NO_SUCH_PROPERTY",
    );
}

#[test]
fn unreachable_broker_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_str().expect("utf8");
    // Nothing listens on port 1.
    assert_fails_naming(
        &[
            ("WEIR_TOPICS", "t"),
            ("WEIR_STATE_DIR", state),
            ("WEIR_BROKERS", "127.0.0.1:1"),
            ("WEIR_STARTUP_TIMEOUT_MS", "2000"),
        ],
        "WEIR_BROKERS",
    );
}

#[test]
fn unwritable_state_dir_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write");
    let state = file.join("state");
    assert_fails_naming(
        &[
            ("WEIR_TOPICS", "t"),
            ("WEIR_STATE_DIR", state.to_str().expect("utf8")),
        ],
        "WEIR_STATE_DIR",
    );
}

#[test]
fn invalid_topic_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_str().expect("utf8");
    assert_fails_naming(
        &[("WEIR_TOPICS", "orders/eu"), ("WEIR_STATE_DIR", state)],
        "WEIR_TOPICS",
    );
}

async fn corrupt_state_file_stops_the_worker(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "corrupt", 1).await;
    broker.produce(&topic, None, keyed_records(0, 10, 5)).await;
    let path = dir.path().join(&group).join(&topic).join("0.sqlite");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let junk = b"this is no database: a worker must refuse it and keep it as it is".to_vec();
    std::fs::write(&path, &junk).expect("write");

    let bootstrap = broker.bootstrap().to_owned();
    let state = dir.path().to_str().expect("utf8").to_owned();
    let (code, stderr) = tokio::task::spawn_blocking({
        let (group, topic) = (group.clone(), topic.clone());
        move || {
            run_worker(&[
                ("WEIR_BROKERS", &bootstrap),
                ("WEIR_GROUP", &group),
                ("WEIR_TOPICS", &topic),
                ("WEIR_STATE_DIR", &state),
                ("WEIR_KAFKA_SESSION_TIMEOUT_MS", SESSION_TIMEOUT_MS),
            ])
        }
    })
    .await
    .expect("join");
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("0.sqlite"),
        "the error names the file: {stderr}"
    );
    assert_eq!(
        std::fs::read(&path).expect("read"),
        junk,
        "the file was changed"
    );
}
on_both_brokers!(corrupt_state, corrupt_state_file_stops_the_worker);

/// Workers that share a state dir (one machine, or a shared volume) and start at the same
/// instant each find it writable: one's check does not remove another's probe file under it
/// (a clean-clone CI run failed a worker so, "... is not a writable directory: No such file or
/// directory").
#[test]
fn workers_starting_together_in_one_state_dir_each_find_it_writable() {
    const THREADS: usize = 8;
    const BUILDS: usize = 40;
    let dir = tempfile::tempdir().expect("tempdir");
    let failures: Vec<String> = std::thread::scope(|s| {
        let builds: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    (0..BUILDS)
                        .filter_map(|_| {
                            weir::Worker::builder()
                                .brokers("127.0.0.1:1")
                                .group("shared")
                                .topic("t")
                                .state_dir(dir.path())
                                .build(CountHandler::default())
                                .err()
                                .map(|e| e.to_string())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        builds
            .into_iter()
            .flat_map(|b| b.join().expect("a build thread"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} builds failed, e.g. {:?}",
        failures.len(),
        THREADS * BUILDS,
        failures.first()
    );
}
