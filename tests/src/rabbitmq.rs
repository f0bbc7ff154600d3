//! The RabbitMQ test server (Debian's rabbitmq-server, started by `scripts/rabbitmq.sh`; its
//! URL in `WEIR_TEST_RABBITMQ`), and publishing to it and reading it with Python's pika.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use weir::prelude::*;

/// The environment variable with the RabbitMQ test server's URL.
pub const RABBITMQ_ENV: &str = "WEIR_TEST_RABBITMQ";

/// The RabbitMQ test server's URL. Panics, saying how to start it, when it is not set.
pub fn rabbitmq_url() -> String {
    std::env::var(RABBITMQ_ENV).unwrap_or_else(|_| {
        panic!("{RABBITMQ_ENV} is not set: start the server with scripts/rabbitmq.sh start and set {RABBITMQ_ENV}=amqp://guest:guest@127.0.0.1:15673/%2f (scripts/test.sh does both)")
    })
}

/// A worker of `group` on the RabbitMQ test server reading `topic`, with its stores in
/// `state_dir`.
pub fn rabbitmq_worker(group: &str, topic: &str, state_dir: &Path) -> weir::WorkerBuilder {
    crate::broker::init_tracing();
    Worker::builder()
        .brokers(rabbitmq_url())
        .group(group)
        .topic(topic)
        .state_dir(state_dir)
}

fn amqp_client_py(args: &[&str]) -> String {
    crate::python::run_script("amqp_client.py", args)
}

/// Publishes records `start..start + count` to exchange `topic` with Python's pika, as
/// [`keyed_records`](crate::keyed_records)`(start, count, keys)` (key `k{i % keys}`, value
/// `v{i}`), each with message id `py-{i}` (none with `ids` false), header `origin: python`,
/// persistent, confirmed.
pub fn python_amqp_publish(topic: &str, start: usize, count: usize, keys: usize, ids: bool) {
    python_amqp_publish_at(&rabbitmq_url(), topic, start, count, keys, ids);
}

/// [`python_amqp_publish`], except that the broker may refuse records (a full queue): how
/// many it confirmed.
pub fn python_amqp_publish_refusable(
    topic: &str,
    start: usize,
    count: usize,
    keys: usize,
) -> usize {
    let (start, count, keys) = (start.to_string(), count.to_string(), keys.to_string());
    let url = rabbitmq_url();
    let args = [
        "publish", &url, topic, &start, &count, "--keys", &keys, "--nacks",
    ];
    amqp_client_py(&args).trim().parse().expect("a count")
}

/// Declares the stream `stream` with Python's pika, fed by the fanout exchange `<stream>-in`:
/// [`python_amqp_publish`] to that exchange puts records in the stream with their keys.
pub fn python_amqp_stream(stream: &str) {
    amqp_client_py(&["stream", &rabbitmq_url(), stream]);
}

/// [`python_amqp_publish`] to the server at `url`.
pub fn python_amqp_publish_at(
    url: &str,
    topic: &str,
    start: usize,
    count: usize,
    keys: usize,
    ids: bool,
) {
    let (start, count, keys) = (start.to_string(), count.to_string(), keys.to_string());
    let mut args = vec!["publish", url, topic, &start, &count, "--keys", &keys];
    if !ids {
        args.push("--no-id");
    }
    let confirmed: usize = amqp_client_py(&args).trim().parse().expect("a count");
    assert_eq!(confirmed.to_string(), count, "every record confirmed");
}

/// Publishes `records` (key, value) to exchange `topic` with Python's pika, record `i` with
/// message id `py-<topic>-<i>`, otherwise as [`python_amqp_publish`].
pub fn python_amqp_publish_records(topic: &str, records: &[(String, String)]) {
    python_amqp_publish_with_headers(topic, records, &serde_json::json!({}));
}

/// [`python_amqp_publish_records`] with `headers` (a JSON object) on each message besides
/// `origin`.
pub fn python_amqp_publish_with_headers(
    topic: &str,
    records: &[(String, String)],
    headers: &serde_json::Value,
) {
    let json = serde_json::to_string(records).expect("records as JSON");
    let headers = headers.to_string();
    let url = rabbitmq_url();
    let confirmed = amqp_client_py(&["records", &url, topic, &json, "--headers", &headers]);
    assert_eq!(
        confirmed.trim(),
        records.len().to_string(),
        "every record confirmed"
    );
}

/// The ready messages of each of `queues`.
pub fn python_amqp_depth(queues: &[String]) -> BTreeMap<String, u64> {
    python_amqp_depth_at(&rabbitmq_url(), queues)
}

/// [`python_amqp_depth`] on the server at `url`.
pub fn python_amqp_depth_at(url: &str, queues: &[String]) -> BTreeMap<String, u64> {
    let mut args = vec!["depth", url];
    args.extend(queues.iter().map(String::as_str));
    serde_json::from_str(amqp_client_py(&args).trim()).expect("JSON depths")
}

/// Waits until none of `queues` holds a ready message.
pub async fn wait_for_empty_amqp_queues(queues: &[String], timeout: Duration) {
    crate::wait_until("every queue empty", timeout, || {
        let depth = python_amqp_depth(queues);
        async move {
            if depth.values().all(|d| *d == 0) {
                Ok(())
            } else {
                Err(format!("{depth:?}"))
            }
        }
    })
    .await;
}

/// Takes up to `count` messages from `queue` with pika (waiting up to `wait`): routing key,
/// body, headers and message id of each.
pub fn python_amqp_read(queue: &str, count: usize, wait: Duration) -> Vec<serde_json::Value> {
    let url = rabbitmq_url();
    let (count, wait) = (count.to_string(), wait.as_secs_f64().to_string());
    amqp_client_py(&["read", &url, queue, &count, "--wait", &wait])
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Takes messages from `queues` with pika until `want` came (a queue not declared yet reads
/// as empty), waiting at most `timeout`: every message taken.
pub async fn python_amqp_read_until(
    queues: &[String],
    want: usize,
    timeout: Duration,
) -> Vec<serde_json::Value> {
    let mut read = Vec::new();
    crate::wait_until(&format!("{want} messages read"), timeout, || {
        for q in queues {
            read.extend(
                std::panic::catch_unwind(|| python_amqp_read(q, want, Duration::from_millis(200)))
                    .unwrap_or_default(),
            );
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

/// Waits until the lane queues of `topic` (`lanes` of them) exist on the server at `url`: a
/// worker declared them.
pub async fn wait_for_lanes(url: &str, topic: &str, lanes: i32) {
    let queues: Vec<String> = (0..lanes).map(|i| format!("{topic}.{i}")).collect();
    crate::wait_until(
        "the worker declared its lanes",
        Duration::from_secs(30),
        || {
            let queues = queues.clone();
            let url = url.to_owned();
            async move {
                std::panic::catch_unwind(|| python_amqp_depth_at(&url, &queues))
                    .map(drop)
                    .map_err(|_| format!("{queues:?} not declared yet"))
            }
        },
    )
    .await;
}

/// A RabbitMQ server of a test's own (Debian's, as `scripts/rabbitmq.sh` runs it), on free
/// ports and its own database folder, for tests that kill and start it. Killed when dropped.
#[derive(Debug)]
pub struct OwnRabbit {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl OwnRabbit {
    /// Starts a server on a free port of 127.0.0.1 (about 7 s), with the consistent-hash
    /// exchange plugin.
    pub fn start() -> Self {
        let mut own = Self {
            port: crate::own_tansu::free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        let d = own.dir.path();
        std::fs::write(
            d.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{}\nloopback_users = none\n",
                own.port
            ),
        )
        .expect("config");
        std::fs::write(
            d.join("enabled_plugins"),
            "[rabbitmq_consistent_hash_exchange].",
        )
        .expect("plugins");
        own.run();
        own
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn run(&mut self) {
        let d = self.dir.path();
        let _ = std::fs::remove_file(d.join("beam.pid"));
        let log = std::fs::File::create(d.join("server.log")).expect("log");
        let child = std::process::Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .env("HOME", d)
            .env(
                "RABBITMQ_NODENAME",
                format!("weir-own-{}@localhost", self.port),
            )
            .env(
                "RABBITMQ_DIST_PORT",
                crate::own_tansu::free_port().to_string(),
            )
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("logs"))
            .env("RABBITMQ_PID_FILE", d.join("beam.pid"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start rabbitmq-server (scripts/rabbitmq.sh start installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "rabbitmq-server did not listen on {} within 60 s; its log: {}",
                self.port,
                std::fs::read_to_string(d.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server (SIGKILL to the Erlang VM: nothing but what it synced survives) and
    /// starts it again on the same port and database.
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }

    fn kill(&mut self) {
        // The start script waits on the VM, whose pid it writes: the VM is what is killed.
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("beam.pid")) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", pid.trim()])
                .status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for OwnRabbit {
    fn drop(&mut self) {
        self.kill();
    }
}
