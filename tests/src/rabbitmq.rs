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
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/py/amqp_client.py");
    let out = std::process::Command::new(crate::python())
        .arg(script)
        .args(args)
        .output()
        .expect("run amqp_client.py");
    assert!(
        out.status.success(),
        "amqp_client.py {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Publishes records `start..start + count` to exchange `topic` with Python's pika, as
/// [`keyed_records`](crate::keyed_records)`(start, count, keys)` (key `k{i % keys}`, value
/// `v{i}`), each with message id `py-{i}` (none with `ids` false), header `origin: python`,
/// persistent, confirmed.
pub fn python_amqp_publish(topic: &str, start: usize, count: usize, keys: usize, ids: bool) {
    let (start, count, keys) = (start.to_string(), count.to_string(), keys.to_string());
    let mut args = vec!["publish", "", topic, &start, &count, "--keys", &keys];
    let url = rabbitmq_url();
    args[1] = &url;
    if !ids {
        args.push("--no-id");
    }
    let confirmed: usize = amqp_client_py(&args).trim().parse().expect("a count");
    assert_eq!(confirmed.to_string(), count, "every record confirmed");
}

/// The ready messages of each of `queues`.
pub fn python_amqp_depth(queues: &[String]) -> BTreeMap<String, u64> {
    let url = rabbitmq_url();
    let mut args = vec!["depth", url.as_str()];
    args.extend(queues.iter().map(String::as_str));
    serde_json::from_str(amqp_client_py(&args).trim()).expect("JSON depths")
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
