//! SASL/SCRAM-SHA-512 against an authenticating broker front (the harness's SCRAM gateway in
//! front of tansu, see `weir_tests::sasl`): good credentials count exactly; a wrong password
//! fails the start within the startup timeout with exit 1 and an error naming the SASL
//! settings.

use std::time::Duration;

use weir_tests::sasl::ScramGateway;
use weir_tests::*;

fn scram(password: &str) -> [(&'static str, &str); 4] {
    [
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanisms", "SCRAM-SHA-512"),
        ("sasl.username", "worker"),
        ("sasl.password", password),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scram_sha_512_with_good_and_bad_credentials() {
    let gateway = ScramGateway::start("worker", "s3cret").await;
    let broker = TestBroker::tansu_at(gateway.bootstrap()).with_connection(&scram("s3cret"));
    python_records_counted(&broker, "lz4").await;

    let (code, stderr, took) = start_failure(
        env!("CARGO_BIN_EXE_count-worker"),
        &gateway.bootstrap(),
        &scram("wrong"),
    );
    eprintln!("wrong password: exit {code:?} after {took:?}: {stderr}");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(
        stderr.contains("SASL") && stderr.contains("WEIR_KAFKA_SASL_PASSWORD"),
        "the error names the SASL settings: {stderr}"
    );
}
