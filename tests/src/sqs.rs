//! The SQS test endpoint (moto's server, started by `scripts/sqs.sh`; its URL in
//! `WEIR_TEST_SQS`), and sending to it and reading it with Python's boto3.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use weir::prelude::*;

/// The environment variable with the SQS test endpoint's URL.
pub const SQS_ENV: &str = "WEIR_TEST_SQS";

/// The SQS test endpoint's URL. Panics, saying how to start it, when it is not set.
pub fn sqs_endpoint() -> String {
    std::env::var(SQS_ENV).unwrap_or_else(|_| {
        panic!("{SQS_ENV} is not set: start the endpoint with scripts/sqs.sh start and set {SQS_ENV}=http://127.0.0.1:14566 (scripts/test.sh does both)")
    })
}

/// The AWS configuration of a worker on the test endpoint (any credentials do), for a worker
/// process's environment.
pub fn sqs_env() -> Vec<(&'static str, String)> {
    sqs_env_at(&sqs_endpoint())
}

/// [`sqs_env`] for the endpoint `endpoint`.
pub fn sqs_env_at(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ENDPOINT_URL_SQS", endpoint.to_owned()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
    ]
}

/// A worker of `group` on the SQS test endpoint reading queue `topic`, with its stores in
/// `state_dir`. Sets the AWS configuration in this test's environment (each test is a process
/// of its own under nextest; with `cargo test`, every test sets the same values).
pub fn sqs_worker(group: &str, topic: &str, state_dir: &Path) -> weir::WorkerBuilder {
    crate::broker::init_tracing();
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| {
        for (name, value) in sqs_env() {
            std::env::set_var(name, value);
        }
    });
    Worker::builder()
        .brokers("sqs://")
        .group(group)
        .topic(topic)
        .state_dir(state_dir)
}

fn sqs_client_py(args: &[&str]) -> String {
    crate::python::run_script("sqs_client.py", args)
}

/// Creates `queue` with boto3 (FIFO for a `.fifo` name) with a visibility timeout of
/// `visibility`.
pub fn python_sqs_create(queue: &str, visibility: Duration) {
    python_sqs_create_at(&sqs_endpoint(), queue, visibility);
}

/// [`python_sqs_create`] on the endpoint `endpoint`.
pub fn python_sqs_create_at(endpoint: &str, queue: &str, visibility: Duration) {
    let visibility = visibility.as_secs().to_string();
    sqs_client_py(&["create", endpoint, queue, "--visibility", &visibility]);
}

/// A moto server of the test's own (`scripts/sqs-server.py`, as `scripts/sqs.sh` runs it) on a
/// free port of 127.0.0.1, to stop and start again. It keeps its queues in memory: a start is
/// empty.
#[derive(Debug)]
pub struct OwnSqs {
    port: u16,
    /// Python's thread switch interval, in seconds, when not its default.
    switch_interval: Option<f64>,
    child: Option<std::process::Child>,
}

impl OwnSqs {
    /// Starts the server and waits until it listens.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts the server with Python switching threads every `seconds` (its default is 5 ms):
    /// a race between its requests that is rare by default shows within a few.
    pub fn start_switching_every(seconds: f64) -> Self {
        Self::start_with(Some(seconds))
    }

    fn start_with(switch_interval: Option<f64>) -> Self {
        let mut own = Self {
            port: crate::own_tansu::free_port(),
            switch_interval,
            child: None,
        };
        own.start_again();
        own
    }

    /// Its URL, for `AWS_ENDPOINT_URL_SQS`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the server again after [`stop`](Self::stop), on the same port.
    pub fn start_again(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/sqs-server.py");
        let port = self.port.to_string();
        let switch = self
            .switch_interval
            .map(|s| format!("sys.setswitchinterval({s}); "))
            .unwrap_or_default();
        let launch = format!(
            "import runpy, sys; {switch}\
             sys.argv = ['sqs-server', '-H', '127.0.0.1', '-p', '{port}']; \
             runpy.run_path({script:?}, run_name='__main__')"
        );
        let child = std::process::Command::new(crate::python::python())
            .args(["-c", &launch])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {script} (scripts/sqs.sh start installs moto): {e}"));
        self.child = Some(child);
        crate::own_tansu::wait_listening(([127, 0, 0, 1], self.port).into(), "moto_server");
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnSqs {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends records `start..start + count` to `queue` with boto3, as
/// [`keyed_records`](crate::keyed_records)`(start, count, keys)` (attribute `key` =
/// `k{i % keys}`, body `v{i}`), each with attribute `origin: python`.
pub fn python_sqs_send(queue: &str, start: usize, count: usize, keys: usize) {
    let (start, count_s, keys) = (start.to_string(), count.to_string(), keys.to_string());
    let took = sqs_client_py(&[
        "send",
        &sqs_endpoint(),
        queue,
        &start,
        &count_s,
        "--keys",
        &keys,
    ]);
    assert_eq!(took.trim(), count_s, "SQS took every record");
}

/// Sends `records` (key, value) to `queue` with boto3, in order.
pub fn python_sqs_send_records(queue: &str, records: &[(String, String)]) {
    let json = serde_json::to_string(records).expect("records as JSON");
    let took = sqs_client_py(&["records", &sqs_endpoint(), queue, &json]);
    assert_eq!(
        took.trim(),
        records.len().to_string(),
        "SQS took every record"
    );
}

/// Each of `queues`' visible and not-visible counts (`None`: no such queue).
pub fn python_sqs_depth(queues: &[String]) -> BTreeMap<String, Option<serde_json::Value>> {
    let endpoint = sqs_endpoint();
    let mut args = vec!["depth", &endpoint];
    args.extend(queues.iter().map(String::as_str));
    serde_json::from_str(sqs_client_py(&args).trim()).expect("JSON depths")
}

/// Waits until every one of `queues` is empty: nothing visible, nothing received and not
/// deleted.
pub async fn wait_for_empty_queues(queues: &[String], timeout: Duration) {
    crate::wait_until("every queue empty", timeout, || {
        let depth = python_sqs_depth(queues);
        async move {
            let empty = depth.values().all(|d| {
                d.as_ref()
                    .is_some_and(|d| d["visible"] == 0 && d["not_visible"] == 0)
            });
            if empty {
                Ok(())
            } else {
                Err(format!("{depth:?}"))
            }
        }
    })
    .await;
}

/// What `sqs_client.py race` saw: senders and receivers at once on one queue of `endpoint`.
pub fn python_sqs_race(endpoint: &str, queue: &str, per_sender: usize) -> serde_json::Value {
    let out = sqs_client_py(&["race", endpoint, queue, &per_sender.to_string()]);
    serde_json::from_str(out.trim()).expect("the race's JSON")
}

/// The attributes of `queue`.
pub fn python_sqs_attributes(queue: &str) -> serde_json::Value {
    serde_json::from_str(sqs_client_py(&["attributes", &sqs_endpoint(), queue]).trim())
        .expect("JSON attributes")
}

/// Receives and deletes up to `count` messages of `queue` with boto3 (until none came for
/// `wait`): body and attributes of each.
pub fn python_sqs_read(queue: &str, count: usize, wait: Duration) -> Vec<serde_json::Value> {
    let (count, wait) = (count.to_string(), wait.as_secs_f64().to_string());
    sqs_client_py(&["read", &sqs_endpoint(), queue, &count, "--wait", &wait])
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Waits until `queue` exists (a worker creates it at start).
pub async fn wait_for_queue(queue: &str) {
    crate::wait_until(
        "the worker's queue created",
        Duration::from_secs(30),
        || {
            let depth = python_sqs_depth(&[queue.to_owned()]);
            async move {
                match depth.values().next() {
                    Some(Some(_)) => Ok(()),
                    _ => Err(format!("{depth:?}")),
                }
            }
        },
    )
    .await;
}

/// Receives and deletes messages of `queue` with boto3 until `want` came (a queue not made
/// yet reads as empty), waiting at most `timeout`: every message taken.
pub async fn python_sqs_read_until(
    queue: &str,
    want: usize,
    timeout: Duration,
) -> Vec<serde_json::Value> {
    let mut read = Vec::new();
    crate::wait_until(&format!("{want} messages read"), timeout, || {
        if python_sqs_depth(&[queue.to_owned()])[queue].is_some() {
            read.extend(python_sqs_read(queue, want, Duration::from_millis(300)));
        }
        let n = read.len();
        async move {
            if n >= want {
                Ok(())
            } else {
                Err(format!("{n} read"))
            }
        }
    })
    .await;
    read
}
