//! The Python confluent-kafka client, for interoperability tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::broker::unique;
use crate::broker::TestBroker;
use crate::count_handler::CountHandler;
use crate::fixtures::{expected_counts, keyed_records};
use crate::running::RunningWorker;
use crate::waits::wait_for_counts;

/// The Python interpreter with confluent-kafka (`scripts/python-env.sh`, which
/// `scripts/test.sh` runs before the tests; run here too, so a single test works alone).
pub fn python() -> &'static Path {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let out = std::process::Command::new("bash")
            .arg(format!("{root}/scripts/python-env.sh"))
            .output()
            .expect("run scripts/python-env.sh");
        assert!(
            out.status.success(),
            "scripts/python-env.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// Runs `tests/py/<script>` with `args`; its stdout. Panics, with its output, when it fails.
pub(crate) fn run_script(script: &str, args: &[&str]) -> String {
    let path = format!("{}/py/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(python())
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Produces `count` records (key `k{i % 50}`, value `v{i}`, i from `start`) to `topic` with
/// the Python confluent-kafka client, compressed with `codec`, plus librdkafka properties
/// `settings`; panics unless all are acknowledged.
pub fn python_produce(
    bootstrap: &str,
    topic: &str,
    start: usize,
    count: usize,
    codec: &str,
    settings: &[(&str, &str)],
) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/py/produce.py");
    let mut cmd = std::process::Command::new(python());
    cmd.args([script, bootstrap, topic, &count.to_string()])
        .args(["--codec", codec, "--start", &start.to_string()]);
    for (k, v) in settings {
        cmd.args(["--set", &format!("{k}={v}")]);
    }
    let out = cmd.output().expect("run produce.py");
    assert!(
        out.status.success(),
        "produce.py ({codec}) failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let acked: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert_eq!(
        acked, count,
        "produce.py ({codec}) acknowledged {acked} of {count}"
    );
}

/// Produces 300 records with the Python client (compressed with `codec`) through `broker`'s
/// connection properties (TLS, SASL), and checks that a worker (changelog on) over the same
/// connection counts them exactly.
pub async fn python_records_counted(broker: &TestBroker, codec: &str) {
    let (topic, group) = (unique("secured"), unique("g"));
    broker.create_topic(&topic, 2).await;
    let props: Vec<(&str, &str)> = broker
        .connection()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    python_produce(broker.bootstrap(), &topic, 0, 300, codec, &props);
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = RunningWorker::spawn(
        broker
            .worker(&group, &topic, dir.path())
            .changelog(true)
            .build(CountHandler::default())
            .expect("build"),
    );
    let expected = expected_counts(&keyed_records(0, 300, 50));
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected,
        Duration::from_secs(60),
    )
    .await;
    worker.stop_cleanly().await;
}
