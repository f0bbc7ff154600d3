//! The NATS test server (nats-server with JetStream, started by `scripts/nats.sh`; its URL in
//! `WEIR_TEST_NATS`), streams laid out as weir's contract says, and publishing to them.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use weir::prelude::*;

/// The environment variable with the NATS test server's URL.
pub const NATS_ENV: &str = "WEIR_TEST_NATS";

/// The NATS test server's URL. Panics, saying how to start it, when it is not set.
pub fn nats_url() -> String {
    std::env::var(NATS_ENV).unwrap_or_else(|_| {
        panic!("{NATS_ENV} is not set: start the server with scripts/nats.sh start and set {NATS_ENV}=nats://127.0.0.1:14222 (scripts/test.sh does both)")
    })
}

/// A client of the test server.
pub async fn nats_client() -> async_nats::Client {
    async_nats::connect(nats_url())
        .await
        .expect("connect to the NATS test server")
}

/// Creates stream `topic` with `lanes` lanes, as the README tells a user to: subjects
/// `topic.>`, and `topic.*` put into lane `partition(lanes)` of the key token.
pub async fn create_nats_stream(topic: &str, lanes: i32) {
    let js = jetstream::new(nats_client().await);
    js.create_stream(stream::Config {
        name: topic.to_owned(),
        subjects: vec![format!("{topic}.>")],
        subject_transform: Some(stream::SubjectTransform {
            source: format!("{topic}.*"),
            destination: format!("{topic}.{{{{partition({lanes},1)}}}}.{{{{wildcard(1)}}}}"),
        }),
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("create the stream");
}

/// Waits until stream `topic` exists (a worker makes it at start).
pub async fn wait_for_stream(js: &jetstream::Context, topic: &str) {
    crate::wait_until(
        "the worker made its stream",
        Duration::from_secs(30),
        || async {
            js.get_stream(topic)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
    .await;
}

/// Publishes `records` (key, value) to `topic`'s stream, key as the subject's last token,
/// and waits until every one is acknowledged.
pub async fn nats_publish(topic: &str, records: &[(String, String)]) {
    let js = jetstream::new(nats_client().await);
    let mut acks = Vec::with_capacity(records.len());
    for (key, value) in records {
        let ack = js
            .publish(format!("{topic}.{key}"), value.clone().into())
            .await
            .expect("publish");
        acks.push(ack);
        if acks.len() >= 1000 {
            for a in acks.drain(..) {
                a.await.expect("acknowledged");
            }
        }
    }
    for a in acks {
        a.await.expect("acknowledged");
    }
}

/// A worker of `group` on the NATS test server reading `topic`, with its stores in
/// `state_dir`, handing a dead worker's lanes over after 3 s.
pub fn nats_worker(group: &str, topic: &str, state_dir: &Path) -> weir::WorkerBuilder {
    crate::broker::init_tracing();
    Worker::builder()
        .brokers(nats_url())
        .group(group)
        .topic(topic)
        .state_dir(state_dir)
        .hand_off(Duration::from_secs(3))
}

fn nats_client_py(args: &[&str]) -> String {
    crate::python::run_script("nats_client.py", args)
}

/// Publishes `count` records to `topic` with Python's nats-py (key `k{i % 50}`, value `v{i}`,
/// header `origin: python`, `Nats-Msg-Id: py-{i}`, record 0 twice); the number of distinct
/// records the stream took.
pub fn python_nats_publish(topic: &str, count: usize) -> usize {
    let out = nats_client_py(&["publish", &nats_url(), topic, &count.to_string()]);
    out.trim().parse().expect("a count")
}

/// Reads `stream` from its start with Python's nats-py until `count` messages came or
/// `wait` passed: each message's subject, data, headers and sequence.
pub fn python_nats_read(stream: &str, count: usize, wait: Duration) -> Vec<serde_json::Value> {
    let wait = wait.as_secs_f64().to_string();
    let out = nats_client_py(&[
        "read",
        &nats_url(),
        stream,
        &count.to_string(),
        "--wait",
        &wait,
    ]);
    out.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// A nats-server of a test's own (the binary `scripts/nats.sh` installed), on its own port
/// and store dir, for tests that stop and start it. Killed when dropped.
#[derive(Debug)]
pub struct OwnNats {
    port: u16,
    store: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl OwnNats {
    /// Starts a server with JetStream on a free port of 127.0.0.1.
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut own = Self {
            port,
            store: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        own.run();
        own
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn run(&mut self) {
        let bin = concat!(env!("CARGO_MANIFEST_DIR"), "/../.nats/bin/nats-server");
        let child = std::process::Command::new(bin)
            .args([
                "--addr",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--jetstream",
            ])
            .arg("--store_dir")
            .arg(self.store.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin} (scripts/nats.sh start installs it): {e}"));
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (SIGKILL, so nothing is flushed on the way out but what JetStream
    /// synced) and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Stops the server (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the stopped server again, on its port and store.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server runs");
        self.run();
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
