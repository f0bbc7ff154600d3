//! SASL/SCRAM-SHA-512 against an authenticating broker front (the harness's SCRAM gateway in
//! front of tansu, see `weir_tests::sasl`): good credentials count exactly; a wrong password
//! fails the start within the startup timeout with exit 1 and an error naming the SASL
//! settings.

use std::process::Stdio;
use std::time::{Duration, Instant};

use weir_tests::sasl::ScramGateway;
use weir_tests::*;

fn scram(password: &str) -> [(&'static str, String); 4] {
    [
        ("security.protocol", "SASL_PLAINTEXT".to_owned()),
        ("sasl.mechanisms", "SCRAM-SHA-512".to_owned()),
        ("sasl.username", "worker".to_owned()),
        ("sasl.password", password.to_owned()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scram_sha_512_with_good_and_bad_credentials() {
    let gateway = ScramGateway::start("worker", "s3cret").await;
    let good = scram("s3cret");
    let props: Vec<(&str, &str)> = good.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let broker = TestBroker::tansu_at(gateway.bootstrap()).with_connection(&props);
    let (topic, group) = (unique("sasl"), unique("g"));
    broker.create_topic(&topic, 2).await;
    python_produce(broker.bootstrap(), &topic, 0, 300, "lz4", &props);
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = RunningWorker::spawn(
        broker
            .worker(&group, &topic, dir.path())
            .changelog(true)
            .build(CountHandler::default())
            .expect("build"),
    );
    let expected = expected_counts(
        &(0..300)
            .map(|i| (format!("k{}", i % 50), format!("v{i}")))
            .collect::<Vec<_>>(),
    );
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected,
        Duration::from_secs(60),
    )
    .await;
    worker.stop_cleanly().await;

    // A wrong password: exit 1 within the startup timeout, naming the SASL settings.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = worker_command(env!("CARGO_BIN_EXE_count-worker"));
    cmd.env("WEIR_BROKERS", gateway.bootstrap())
        .env("WEIR_TOPICS", &topic)
        .env("WEIR_STATE_DIR", dir.path())
        .env("WEIR_STARTUP_TIMEOUT_MS", "5000")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in scram("wrong") {
        cmd.env(
            format!("WEIR_KAFKA_{}", k.to_ascii_uppercase().replace('.', "_")),
            v,
        );
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn");
    let out = loop {
        if child.try_wait().expect("wait").is_some() {
            break child.wait_with_output().expect("output");
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the worker hung at start with a wrong password");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "wrong password: {:?} after {:?}: {stderr}",
        out.status.code(),
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("SASL") && stderr.contains("WEIR_KAFKA_SASL_PASSWORD"),
        "the error names the SASL settings: {stderr}"
    );
}
