//! Crashes: a worker dropped mid-batch without the graceful path, and a worker process killed
//! with SIGKILL. After a restart every count is exact: nothing lost, nothing counted twice.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use weir_tests::*;

const N: usize = 60_000;
const STALL_AT: &str = "v30000";

async fn dropped_mid_batch(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "crash-drop", 4).await;
    let records = keyed_records(0, N, 500);
    broker.produce(&topic, None, records.clone()).await;

    // The first worker hangs inside a batch at STALL_AT, with that batch's writes uncommitted.
    let handler = CountHandler {
        stall_on: Some(STALL_AT.into()),
        ..Default::default()
    };
    let stalled = handler.stalled.clone();
    let worker = broker
        .worker(&group, &topic, dir.path())
        .batch_size(200)
        .build(handler)
        .expect("build");
    let worker = RunningWorker::spawn(worker);
    wait_stalled(&stalled).await;
    let before = StoredCounts::read(dir.path(), &group, &topic);
    assert!(
        before.total() < N as u64,
        "the crash must come before the end: {before:?}"
    );

    // Crash: drop the running worker; no graceful stop, no final commits.
    worker.crash().await;
    eprintln!(
        "{kind:?}: dropped worker A with {} of {N} counted",
        before.total()
    );
    // tansu leaves a member that sends LeaveGroup while another's JoinGroup is pending as the
    // group's leader forever, so the next worker starts once the dropped one has left.
    // (The mock cluster has no DescribeGroups, and handles the overlap.)
    if kind == BrokerKind::Tansu {
        broker
            .wait_group_empty(&group, Duration::from_secs(30))
            .await;
    }

    let worker = broker
        .worker(&group, &topic, dir.path())
        .build(CountHandler::default())
        .expect("build");
    let worker = RunningWorker::spawn(worker);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&records),
        Duration::from_secs(120),
    )
    .await;
    worker.stop_cleanly().await;
    let after = StoredCounts::read(dir.path(), &group, &topic);
    assert_counts_exact(&after.counts, &expected_counts(&records));
    assert_eq!(after.offsets.values().sum::<i64>(), N as i64);
}

on_both_brokers!(drop_mid_batch, dropped_mid_batch);

/// How the spawned count-worker behaves.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Normal,
    /// Hangs at STALL_AT forever.
    Stall,
    /// Takes 100 us a record.
    Slow,
}

fn spawn_worker(
    broker: &TestBroker,
    group: &str,
    topic: &str,
    dir: &std::path::Path,
    mode: Mode,
) -> Child {
    let mut cmd = weir_tests::worker_command(env!("CARGO_BIN_EXE_count-worker"));
    cmd.env("WEIR_BROKERS", broker.bootstrap())
        .env("WEIR_GROUP", group)
        .env("WEIR_TOPICS", topic)
        .env("WEIR_STATE_DIR", dir)
        .env("WEIR_BATCH_SIZE", "200")
        .env("WEIR_KAFKA_SESSION_TIMEOUT_MS", SESSION_TIMEOUT_MS)
        .env("WEIR_KAFKA_HEARTBEAT_INTERVAL_MS", "500")
        .env("RUST_LOG", "warn")
        .env_remove("COUNT_WORKER_STALL_ON")
        .env_remove("COUNT_WORKER_DELAY_US")
        .stdin(Stdio::null());
    match mode {
        Mode::Normal => {}
        Mode::Stall => {
            cmd.env("COUNT_WORKER_STALL_ON", STALL_AT);
        }
        Mode::Slow => {
            cmd.env("COUNT_WORKER_DELAY_US", "100");
        }
    }
    cmd.spawn().expect("spawn count-worker")
}

async fn sigkilled_process(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "crash-kill", 4).await;
    let records = keyed_records(0, N, 500);
    broker.produce(&topic, None, records.clone()).await;

    // The process never finishes: it hangs at STALL_AT, so the kill is always mid-stream.
    let mut child = spawn_worker(&broker, &group, &topic, dir.path(), Mode::Stall);
    wait_for_total(dir.path(), &group, &topic, 5_000, Duration::from_secs(60)).await;
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let before = StoredCounts::read(dir.path(), &group, &topic);
    assert!(
        before.total() < N as u64,
        "the kill must come before the end: {before:?}"
    );
    eprintln!(
        "{kind:?}: SIGKILLed the worker with {} of {N} counted",
        before.total()
    );

    let mut child = spawn_worker(&broker, &group, &topic, dir.path(), Mode::Normal);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&records),
        Duration::from_secs(120),
    )
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("send SIGTERM");
    assert!(status.success());
    let exit = child.wait().expect("wait");
    assert!(
        exit.success(),
        "SIGTERM must stop the worker with exit 0, got {exit}"
    );
    let after = StoredCounts::read(dir.path(), &group, &topic);
    assert_counts_exact(&after.counts, &expected_counts(&records));
    assert_eq!(after.offsets.values().sum::<i64>(), N as i64);
}

on_both_brokers!(sigkill_process, sigkilled_process);

fn sigterm(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("send SIGTERM");
    assert!(status.success());
    let exit = child.wait().expect("wait");
    assert!(
        exit.success(),
        "SIGTERM must stop the worker with exit 0, got {exit}"
    );
}

async fn sigterm_mid_stream(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "sigterm", 4).await;
    let records = keyed_records(0, N, 500);
    broker.produce(&topic, None, records.clone()).await;

    // A slow worker (100 us a record) is stopped while it works.
    let mut child = spawn_worker(&broker, &group, &topic, dir.path(), Mode::Slow);
    wait_for_total(dir.path(), &group, &topic, 5_000, Duration::from_secs(60)).await;
    sigterm(&mut child);
    let at_stop = StoredCounts::read(dir.path(), &group, &topic);
    assert!(
        at_stop.total() < N as u64,
        "the stop must come before the end: {at_stop:?}"
    );
    // The graceful path committed each partition's final SQLite offset to Kafka.
    assert_eq!(
        broker.kafka_committed(&group, &topic, 4),
        at_stop.offsets,
        "Kafka vs SQLite offsets"
    );
    eprintln!(
        "{kind:?}: SIGTERM with {} of {N} counted; offsets {:?}",
        at_stop.total(),
        at_stop.offsets
    );

    let mut child = spawn_worker(&broker, &group, &topic, dir.path(), Mode::Normal);
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&records),
        Duration::from_secs(120),
    )
    .await;
    sigterm(&mut child);
    let after = StoredCounts::read(dir.path(), &group, &topic);
    assert_counts_exact(&after.counts, &expected_counts(&records));
}

on_both_brokers!(sigterm_during_processing, sigterm_mid_stream);
