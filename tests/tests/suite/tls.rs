//! TLS to a real broker (tansu behind stunnel, with a CA the test creates): server
//! verification, a wrong CA failing the start within the startup timeout naming the TLS
//! settings (exit 1, no hang), and mutual TLS with and without a client certificate.

use std::time::Duration;

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

fn borrowed<'a>(props: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    props.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn fails_naming(tansu: &TlsTansu, props: &[(&'static str, String)], setting: &str) {
    let (code, stderr, took) = start_failure(
        env!("CARGO_BIN_EXE_count-worker"),
        &tansu.bootstrap(),
        &borrowed(props),
    );
    eprintln!("exit {code:?} after {took:?}: {stderr}");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(
        stderr.contains("TLS") && stderr.contains(setting),
        "the error names {setting}: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_with_server_verification() {
    let pki = Pki::create();
    let tansu = TlsTansu::start(&pki, false);
    let ok = tls(&pki, "ca.pem");
    let broker = TestBroker::tansu_at(tansu.bootstrap()).with_connection(&borrowed(&ok));
    python_records_counted(&broker, "zstd").await;
    fails_naming(
        &tansu,
        &tls(&pki, "other-ca.pem"),
        "WEIR_KAFKA_SSL_CA_LOCATION",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = Pki::create();
    let tansu = TlsTansu::start(&pki, true);
    let ok = with_client_cert(&pki);
    let broker = TestBroker::tansu_at(tansu.bootstrap()).with_connection(&borrowed(&ok));
    python_records_counted(&broker, "gzip").await;
    fails_naming(
        &tansu,
        &tls(&pki, "ca.pem"),
        "WEIR_KAFKA_SSL_CERTIFICATE_LOCATION",
    );
}
