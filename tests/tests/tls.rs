//! TLS to a real broker (tansu behind stunnel, with a CA the test creates): server
//! verification, a wrong CA failing the start within the startup timeout naming the TLS
//! settings (exit 1, no hang), and mutual TLS with and without a client certificate.

use std::process::Stdio;
use std::time::{Duration, Instant};

use weir_tests::tls::{Pki, TlsTansu};
use weir_tests::*;

fn tls(pki: &Pki, ca: &str) -> Vec<(&'static str, String)> {
    vec![
        ("security.protocol", "ssl".to_owned()),
        ("ssl.ca.location", pki.file(ca)),
    ]
}

fn with_client_cert(pki: &Pki) -> Vec<(&'static str, String)> {
    let mut props = tls(pki, "ca.pem");
    props.push(("ssl.certificate.location", pki.file("client.pem")));
    props.push(("ssl.key.location", pki.file("client.key")));
    props
}

fn broker(tansu: &TlsTansu, props: &[(&'static str, String)]) -> TestBroker {
    let props: Vec<(&str, &str)> = props.iter().map(|(k, v)| (*k, v.as_str())).collect();
    TestBroker::tansu_at(tansu.bootstrap()).with_connection(&props)
}

/// A worker over TLS counts records produced over TLS by the Python client, exactly.
async fn counts_over(broker: &TestBroker, props: &[(&'static str, String)]) {
    let (topic, group) = (unique("tls"), unique("g"));
    broker.create_topic(&topic, 2).await;
    let settings: Vec<(&str, &str)> = props.iter().map(|(k, v)| (*k, v.as_str())).collect();
    python_produce(broker.bootstrap(), &topic, 0, 300, "zstd", &settings);
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
}

/// Starts the count-worker with `props` as `WEIR_KAFKA_*` and a 5 s startup timeout: (exit
/// code, stderr, how long it ran).
fn start_fails(
    bootstrap: &str,
    props: &[(&'static str, String)],
) -> (Option<i32>, String, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = worker_command(env!("CARGO_BIN_EXE_count-worker"));
    cmd.env("WEIR_BROKERS", bootstrap)
        .env("WEIR_TOPICS", "t")
        .env("WEIR_STATE_DIR", dir.path())
        .env("WEIR_STARTUP_TIMEOUT_MS", "5000")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in props {
        cmd.env(
            format!("WEIR_KAFKA_{}", k.to_ascii_uppercase().replace('.', "_")),
            v,
        );
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn");
    loop {
        if child.try_wait().expect("wait").is_some() {
            let out = child.wait_with_output().expect("output");
            return (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
                started.elapsed(),
            );
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the worker hung at start with a bad TLS setup");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_with_server_verification() {
    let pki = Pki::create();
    let tansu = TlsTansu::start(&pki, false);
    counts_over(&broker(&tansu, &tls(&pki, "ca.pem")), &tls(&pki, "ca.pem")).await;

    let (code, stderr, took) = start_fails(&tansu.bootstrap(), &tls(&pki, "other-ca.pem"));
    eprintln!("wrong CA: exit {code:?} after {took:?}: {stderr}");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(
        stderr.contains("TLS") && stderr.contains("WEIR_KAFKA_SSL_CA_LOCATION"),
        "the error names the TLS settings: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = Pki::create();
    let tansu = TlsTansu::start(&pki, true);
    counts_over(
        &broker(&tansu, &with_client_cert(&pki)),
        &with_client_cert(&pki),
    )
    .await;

    let (code, stderr, took) = start_fails(&tansu.bootstrap(), &tls(&pki, "ca.pem"));
    eprintln!("no client certificate: exit {code:?} after {took:?}: {stderr}");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(
        stderr.contains("TLS") && stderr.contains("WEIR_KAFKA_SSL_CERTIFICATE_LOCATION"),
        "the error names the client certificate settings: {stderr}"
    );
}
