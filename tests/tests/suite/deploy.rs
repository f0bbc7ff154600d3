//! The deployment recipes cannot drift from the worker: `docs/deploy.md`,
//! `deploy/Dockerfile` and `deploy/kubernetes/worker.yaml` name only `WEIR_*` variables the
//! worker reads (the README's table, which a unit test holds to the settings' declaration),
//! librdkafka properties this build of librdkafka takes, one metrics port, paths the worker
//! serves, and a state directory that is the volume; a grace period above the drain timeout.
//! (No container engine runs here: the files are read, not run.)

use std::collections::{BTreeMap, BTreeSet};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use weir_tests::*;

fn read(path: &str) -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    std::fs::read_to_string(format!("{root}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `WEIR_*` names in `text`.
fn weir_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("WEIR_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].trim_end_matches('_').to_owned());
        rest = &tail[end..];
    }
    names
}

/// The settings the README's configuration table lists.
fn settings() -> BTreeSet<String> {
    read("README.md")
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l.split('|').nth(2))
        .flat_map(weir_names)
        .collect()
}

/// `NAME=value` lines of the sh blocks of deploy.md, one map per block.
fn sh_blocks(md: &str) -> Vec<BTreeMap<String, String>> {
    let mut blocks = Vec::new();
    let mut current: Option<BTreeMap<String, String>> = None;
    for line in md.lines() {
        match (line.trim(), current.as_mut()) {
            ("```sh", None) => current = Some(BTreeMap::new()),
            ("```", Some(_)) => blocks.extend(current.take()),
            (l, Some(block)) => {
                if let Some((k, v)) = l.split_once('=').filter(|(k, _)| k.starts_with("WEIR_")) {
                    block.insert(k.to_owned(), v.to_owned());
                }
            }
            _ => {}
        }
    }
    blocks
}

/// The `value:` given to each `- name: WEIR_...` in the manifest (secrets: none).
fn manifest_env(yaml: &str) -> BTreeMap<String, Option<String>> {
    let lines: Vec<&str> = yaml.lines().map(str::trim).collect();
    let mut env = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        if let Some(name) = l
            .strip_prefix("- name: ")
            .filter(|n| n.starts_with("WEIR_"))
        {
            let value = lines
                .get(i + 1)
                .and_then(|v| v.strip_prefix("value: "))
                .map(|v| v.trim_matches('"').to_owned());
            env.insert(name.to_owned(), value);
        }
    }
    env
}

/// The values of `key: value` lines (trimmed, quotes removed).
fn yaml_values<'a>(yaml: &'a str, key: &str) -> Vec<&'a str> {
    yaml.lines()
        .filter_map(|l| l.trim().trim_start_matches("- ").strip_prefix(key))
        .filter_map(|v| v.strip_prefix(':'))
        .map(|v| v.trim().trim_matches('"'))
        .collect()
}

fn kafka_property(env: &str) -> Option<String> {
    env.strip_prefix("WEIR_KAFKA_")
        .map(|p| p.to_ascii_lowercase().replace('_', "."))
}

#[test]
fn the_recipes_name_only_what_the_worker_reads() {
    let known = settings();
    assert!(known.len() >= 20, "README settings: {known:?}");
    let deploy = read("docs/deploy.md");
    let docker = read("deploy/Dockerfile");
    let yaml = read("deploy/kubernetes/worker.yaml");
    for (file, text) in [
        ("docs/deploy.md", &deploy),
        ("deploy/Dockerfile", &docker),
        ("deploy/kubernetes/worker.yaml", &yaml),
    ] {
        for name in weir_names(text) {
            if name == "WEIR" || name == "WEIR_KAFKA" {
                continue; // prefixes, in prose
            }
            if let Some(prop) = kafka_property(&name) {
                let mut c = ClientConfig::new();
                c.set(&prop, "x");
                // A value librdkafka may refuse is fine; an unknown property is not.
                if let Err(e) = c.create_native_config() {
                    assert!(
                        !e.to_string().contains("No such configuration property"),
                        "{file}: {name} is no librdkafka property: {e}"
                    );
                }
            } else {
                assert!(
                    known.contains(&name),
                    "{file}: {name} is not a worker setting"
                );
            }
        }
    }
}

#[test]
fn each_cluster_recipe_makes_a_client_this_build_can_create() {
    let blocks = sh_blocks(&read("docs/deploy.md"));
    assert!(blocks.len() >= 5, "{blocks:?}");
    for block in blocks
        .iter()
        .filter(|b| b.contains_key("WEIR_KAFKA_SECURITY_PROTOCOL"))
    {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", "127.0.0.1:1");
        let mut files = false;
        for (k, v) in block {
            if let Some(prop) = kafka_property(k) {
                files |= prop.ends_with(".location");
                c.set(prop, v);
            }
        }
        if files {
            // Certificate files exist only on the user's machine: the names must be known.
            c.create_native_config()
                .unwrap_or_else(|e| panic!("{block:?}: {e}"));
        } else {
            // TLS and SASL (PLAIN, SCRAM) are compiled in: the client can be created.
            c.create::<BaseConsumer>()
                .unwrap_or_else(|e| panic!("this build cannot make {block:?}: {e}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_and_the_manifest_agree_with_the_worker() {
    let docker = read("deploy/Dockerfile");
    let yaml = read("deploy/kubernetes/worker.yaml");
    let env = manifest_env(&yaml);

    // One metrics port everywhere.
    let metrics_addr = env["WEIR_METRICS_ADDR"].clone().expect("metrics address");
    let port = metrics_addr.rsplit(':').next().expect("port").to_owned();
    for p in yaml_values(&yaml, "port")
        .into_iter()
        .chain(yaml_values(&yaml, "containerPort"))
        .chain(yaml_values(&yaml, "prometheus.io/port"))
    {
        assert_eq!(
            p, port,
            "the manifest names port {p}, the worker serves {port}"
        );
    }
    assert!(
        docker.contains(&format!("EXPOSE {port}")),
        "the image exposes another port"
    );
    assert!(docker.contains(&format!("WEIR_METRICS_ADDR={metrics_addr}")));

    // The state dir is the volume.
    let state_dir = env["WEIR_STATE_DIR"].clone().expect("state dir");
    assert_eq!(yaml_values(&yaml, "mountPath"), [state_dir.as_str()]);
    assert!(docker.contains(&format!("VOLUME {state_dir}")));
    assert!(docker.contains(&format!("WEIR_STATE_DIR={state_dir}")));

    // Not root.
    let user = docker
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    assert!(user != "0" && user != "root", "the image runs as {user}");
    assert_eq!(yaml_values(&yaml, "runAsNonRoot"), ["true"]);

    // The grace period outlasts the drain.
    let drain_ms: u64 = env["WEIR_DRAIN_TIMEOUT_MS"]
        .as_deref()
        .expect("drain timeout")
        .parse()
        .expect("number");
    let grace_s: u64 = yaml_values(&yaml, "terminationGracePeriodSeconds")[0]
        .parse()
        .expect("number");
    assert!(
        grace_s * 1000 > drain_ms,
        "grace {grace_s} s <= drain {drain_ms} ms"
    );

    // Static membership from the pod's name.
    assert!(yaml.contains("- name: WEIR_INSTANCE_ID\n              valueFrom:\n                fieldRef:\n                  fieldPath: metadata.name"));

    // The binary the image builds exists.
    let bin = docker
        .lines()
        .find_map(|l| l.strip_prefix("ARG BIN="))
        .expect("ARG BIN");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    assert!(
        std::path::Path::new(&format!("{root}/examples/src/bin/{bin}.rs")).exists(),
        "no binary {bin}"
    );

    // The probed and scraped paths are served.
    let paths: BTreeSet<&str> = yaml_values(&yaml, "path")
        .into_iter()
        .chain(yaml_values(&yaml, "prometheus.io/path"))
        .collect();
    assert!(
        paths.contains("/health/live")
            && paths.contains("/health/ready")
            && paths.contains("/metrics"),
        "{paths:?}"
    );
    let broker = TestBroker::start(BrokerKind::Mock);
    let (topic, group) = (unique("deploy"), unique("g"));
    broker.create_topic(&topic, 1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = broker
        .worker(&group, &topic, dir.path())
        .metrics_addr("127.0.0.1:0")
        .build(CountHandler::default())
        .expect("build");
    let addr = worker.metrics_addr().expect("address");
    let worker = RunningWorker::spawn(worker);
    for path in paths {
        wait_until(
            &format!("{path} to answer"),
            std::time::Duration::from_secs(30),
            || async {
                match http_get(addr, path).await {
                    (200, _) => Ok(()),
                    (status, body) => Err(format!("{status}: {body}")),
                }
            },
        )
        .await;
    }
    worker.stop_cleanly().await;
}
