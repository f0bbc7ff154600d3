//! SIGTERM at any instant of a worker process's life ends it gracefully with exit 0: while it
//! builds (and starts the embedded broker), checks the broker, creates topics, joins the
//! group, restores its stores from the changelog (each run on tansu starts from an empty
//! state dir, as on a new machine) or processes; and nothing is lost: a last worker, also
//! from an empty dir, ends with exact counts.
//!
//! "0 ms" is the first instant the process can handle a signal at all: the test waits until
//! the kernel shows a SIGTERM handler installed (`SigCgt` in /proc/PID/status), which weir
//! does in `Worker::from_env`, the first thing the worker's `main` calls after setting up
//! logging. Before that the process is still being loaded and no program can catch a signal.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use weir_tests::*;

const DELAYS_MS: [u64; 4] = [0, 50, 300, 1_000];

/// Whether process `pid` catches SIGTERM (signal 15: bit 14 of `SigCgt`).
fn catches_sigterm(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << 14) != 0)
}

fn sigterm_after(child: &mut Child, delay: Duration) -> (Duration, std::process::ExitStatus) {
    let spawned = Instant::now();
    while !catches_sigterm(child.id()) {
        assert!(
            spawned.elapsed() < Duration::from_secs(10),
            "the worker never installed a SIGTERM handler"
        );
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("the worker exited before the signal: {status}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let ready = spawned.elapsed();
    std::thread::sleep(delay);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("send SIGTERM");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            return (ready, exit);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the worker did not stop within 40 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn worker(broker: Option<&TestBroker>, group: &str, topic: &str, dir: &std::path::Path) -> Child {
    let mut cmd = worker_command(env!("CARGO_BIN_EXE_count-worker"));
    if let Some(b) = broker {
        // A member stopped in the middle of its join is dropped by the broker after the
        // rebalance timeout (max.poll.interval.ms): keep it short, so the next worker's join
        // does not wait five minutes for it.
        cmd.env("WEIR_BROKERS", b.bootstrap())
            .env("WEIR_KAFKA_SESSION_TIMEOUT_MS", SESSION_TIMEOUT_MS)
            .env("WEIR_KAFKA_HEARTBEAT_INTERVAL_MS", "500")
            .env("WEIR_KAFKA_MAX_POLL_INTERVAL_MS", "10000");
    }
    cmd.env("WEIR_GROUP", group)
        .env("WEIR_TOPICS", topic)
        .env("WEIR_STATE_DIR", dir)
        .env("WEIR_CHANGELOG", "true")
        .env("WEIR_BATCH_SIZE", "100")
        .env("RUST_LOG", "warn")
        .env("COUNT_WORKER_DELAY_US", "2000")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd.spawn().expect("spawn count-worker")
}

#[test]
fn sigterm_at_any_instant_on_the_embedded_broker_exits_0() {
    for delay in DELAYS_MS {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = worker(None, &unique("g"), &unique("signals"), dir.path());
        let (ready, exit) = sigterm_after(&mut child, Duration::from_millis(delay));
        eprintln!("embedded: handler after {ready:?}, SIGTERM {delay} ms later: {exit}");
        assert_eq!(
            exit.code(),
            Some(0),
            "SIGTERM {delay} ms after start: {exit}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_at_any_instant_on_tansu_exits_0_and_loses_nothing() {
    let broker = TestBroker::start(BrokerKind::Tansu);
    let topic = unique("signals");
    broker.create_topic(&topic, 2).await;
    let records = keyed_records(0, 5_000, 50);
    broker.produce(&topic, None, records.clone()).await;
    // While starting: broker check, topic creation, the join. Each run has a group of its own:
    // tansu keeps a member that left in the middle of its join as the group's leader, and no
    // later member of that group is then ever assigned anything (a broker bug; Kafka expires
    // such a member after the session timeout).
    for delay in DELAYS_MS {
        let dir = tempfile::tempdir().expect("tempdir");
        let group = unique("g");
        let mut child = worker(Some(&broker), &group, &topic, dir.path());
        let (ready, exit) =
            tokio::task::block_in_place(|| sigterm_after(&mut child, Duration::from_millis(delay)));
        eprintln!("tansu: handler after {ready:?}, SIGTERM {delay} ms later: {exit}");
        assert_eq!(
            exit.code(),
            Some(0),
            "SIGTERM {delay} ms after start: {exit}"
        );
    }
    // While processing (it joins after about 3 s; 5000 records at 2 ms over 2 partitions take
    // about 5 s), and then nothing is lost nor counted twice: a worker on another machine (an
    // empty state dir) restores from the changelog and finishes the topic.
    let group = unique("g");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = worker(Some(&broker), &group, &topic, dir.path());
    let (_, exit) =
        tokio::task::block_in_place(|| sigterm_after(&mut child, Duration::from_secs(6)));
    let counted = StoredCounts::read(dir.path(), &group, &topic).total();
    eprintln!("tansu: SIGTERM 6 s after start, while processing: {exit}, {counted} counted");
    assert_eq!(exit.code(), Some(0), "SIGTERM while processing: {exit}");
    broker
        .wait_group_empty(&group, Duration::from_secs(30))
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut last = worker(Some(&broker), &group, &topic, dir.path());
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&records),
        Duration::from_secs(120),
    )
    .await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &last.id().to_string()])
        .status();
    let exit = last.wait().expect("wait");
    assert_eq!(exit.code(), Some(0));
}
