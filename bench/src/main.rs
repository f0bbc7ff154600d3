//! weir's benchmark: pre-produces keyed records, then reads them all in one run with each
//! scenario, each in a fresh process and consumer group, and prints messages/s as a ratio to
//! the raw rdkafka consumer of the same run.
//!
//! ```text
//! cargo run --release -p weir-bench -- --scenario all [--messages N] [--partitions P]
//! ```
//!
//! Without `WEIR_BROKERS` it runs on the embedded broker (which keeps only ~5 MiB per
//! partition, so the default backlog there is 200k records over 8 partitions); with it, the
//! default is 1M records. Results also go to `bench-results.json`.
//!
//! Throughput is timed from the first record a scenario sees to the last one done (for weir,
//! including the graceful stop that commits the last batches), so the group join is not in
//! it. Latency is producer timestamp to processing; with the backlog produced up front it
//! mostly measures time spent waiting in the backlog.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::{Deserialize, Serialize};
use weir::prelude::*;

const SCENARIOS: &[&str] = &["raw", "weir-stateless", "weir-wordcount", "hand-loop"];
const WORDS: &[&str] = &[
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta",
];

/// What one scenario measured.
#[derive(Debug, Serialize, Deserialize)]
struct Outcome {
    scenario: String,
    messages: u64,
    seconds: f64,
    messages_per_second: f64,
    /// Producer timestamp to processing, milliseconds (the backlog is produced up front, so
    /// this is dominated by the wait in the backlog).
    p50_latency_ms: i64,
    p99_latency_ms: i64,
    peak_rss_mib: f64,
}

struct Args {
    scenario: String,
    messages: u64,
    partitions: i32,
    child: Option<(String, String)>,
}

fn parse_args() -> Result<Args, String> {
    let embedded = std::env::var("WEIR_BROKERS").map_or(true, |b| b.trim().is_empty());
    let mut args = Args {
        scenario: "all".into(),
        messages: if embedded { 200_000 } else { 1_000_000 },
        partitions: if embedded { 8 } else { 4 },
        child: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--scenario" => args.scenario = value()?,
            "--messages" => {
                args.messages = value()?.parse().map_err(|e| format!("--messages: {e}"))?
            }
            "--partitions" => {
                args.partitions = value()?.parse().map_err(|e| format!("--partitions: {e}"))?
            }
            "--child" => {
                let brokers = value()?;
                let topic = value()?;
                args.child = Some((brokers, topic));
            }
            other => return Err(format!("unknown argument {other}; see the crate docs")),
        }
    }
    if args.scenario != "all" && !SCENARIOS.contains(&args.scenario.as_str()) {
        return Err(format!(
            "--scenario is one of all, {}",
            SCENARIOS.join(", ")
        ));
    }
    Ok(args)
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("weir-bench: {e}");
            std::process::exit(2);
        }
    };
    let result = match &args.child {
        Some((brokers, topic)) => run_child(&args, brokers, topic).await,
        None => run_parent(&args).await,
    };
    if let Err(e) = result {
        eprintln!("weir-bench: {e}");
        std::process::exit(1);
    }
}

async fn run_parent(args: &Args) -> Result<(), String> {
    let embedded = match std::env::var("WEIR_BROKERS") {
        Ok(b) if !b.trim().is_empty() => None,
        _ => Some(weir::EmbeddedBroker::start(1).map_err(|e| e.to_string())?),
    };
    let brokers = match &embedded {
        Some(b) => b.bootstrap_servers().to_owned(),
        None => std::env::var("WEIR_BROKERS").map_err(|e| e.to_string())?,
    };
    let topic = format!("bench-{}", std::process::id());
    match &embedded {
        Some(b) => b
            .create_topic(&topic, args.partitions)
            .map_err(|e| e.to_string())?,
        None => create_topic(&brokers, &topic, args.partitions).await?,
    }
    let started = Instant::now();
    produce(&brokers, &topic, args.messages).await?;
    eprintln!(
        "produced {} records of 100 bytes into {} partitions of {topic} in {:.1?} ({})",
        args.messages,
        args.partitions,
        started.elapsed(),
        if embedded.is_some() {
            "embedded broker"
        } else {
            brokers.as_str()
        }
    );
    let scenarios: Vec<&str> = match args.scenario.as_str() {
        "all" => SCENARIOS.to_vec(),
        one => vec![one],
    };
    let mut outcomes = Vec::new();
    for scenario in scenarios {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let out = Command::new(exe)
            .args([
                "--scenario",
                scenario,
                "--messages",
                &args.messages.to_string(),
            ])
            .args(["--child", &brokers, &topic])
            .env_remove("WEIR_BROKERS")
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "{scenario} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let outcome: Outcome = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "{scenario}: bad result ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        eprintln!("{scenario}: {:.0} msg/s", outcome.messages_per_second);
        outcomes.push(outcome);
    }
    let raw = outcomes
        .iter()
        .find(|o| o.scenario == "raw")
        .map(|o| o.messages_per_second);
    println!(
        "{:<16} {:>12} {:>8} {:>10} {:>10} {:>10}",
        "scenario", "msg/s", "vs raw", "p50 ms", "p99 ms", "peak MiB"
    );
    for o in &outcomes {
        let ratio = raw.map_or("-".to_owned(), |r| {
            format!("{:.2}", o.messages_per_second / r)
        });
        println!(
            "{:<16} {:>12.0} {:>8} {:>10} {:>10} {:>10.0}",
            o.scenario,
            o.messages_per_second,
            ratio,
            o.p50_latency_ms,
            o.p99_latency_ms,
            o.peak_rss_mib
        );
    }
    let json = serde_json::to_string_pretty(&outcomes).map_err(|e| e.to_string())?;
    std::fs::write("bench-results.json", json).map_err(|e| e.to_string())?;
    Ok(())
}

async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<(), String> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| e.to_string())?;
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1))
        .set("retention.ms", "-1")
        .set("retention.bytes", "-1");
    let results = admin
        .create_topics([&t], &AdminOptions::new())
        .await
        .map_err(|e| e.to_string())?;
    for r in results {
        r.map_err(|(t, e)| format!("creating {t}: {e}"))?;
    }
    Ok(())
}

async fn produce(brokers: &str, topic: &str, n: u64) -> Result<(), String> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .map_err(|e| e.to_string())?;
    let mut inflight = Vec::new();
    for i in 0..n {
        let key = format!("k{}", i % 10_000);
        // 100 bytes of words.
        let mut value = String::with_capacity(100);
        let mut w = i as usize;
        while value.len() < 94 {
            value.push_str(WORDS[w % WORDS.len()]);
            value.push(' ');
            w = w.wrapping_mul(31).wrapping_add(7);
        }
        value.truncate(100);
        while value.len() < 100 {
            value.push('.');
        }
        let fut = producer
            .send_result(FutureRecord::to(topic).key(&key).payload(&value))
            .map_err(|(e, _)| e.to_string())?;
        inflight.push(fut);
        if inflight.len() >= 100_000 {
            for f in inflight.drain(..) {
                f.await
                    .map_err(|e| e.to_string())?
                    .map_err(|(e, _)| e.to_string())?;
            }
        }
    }
    for f in inflight {
        f.await
            .map_err(|e| e.to_string())?
            .map_err(|(e, _)| e.to_string())?;
    }
    producer
        .flush(Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Collected latencies (ms) and a counter, shared with handlers.
#[derive(Debug, Default)]
struct Probe {
    /// When the first record arrived: throughput is timed from here, so the group join does
    /// not count.
    first: std::sync::OnceLock<Instant>,
    done: AtomicU64,
    latencies: std::sync::Mutex<Vec<i64>>,
}

impl Probe {
    fn record(&self, timestamp_ms: Option<i64>) {
        self.first.get_or_init(Instant::now);
        if let Some(ts) = timestamp_ms {
            if let Ok(mut l) = self.latencies.lock() {
                l.push(now_ms() - ts);
            }
        }
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    fn percentiles(&self) -> (i64, i64) {
        let mut l = self.latencies.lock().map(|l| l.clone()).unwrap_or_default();
        l.sort_unstable();
        let at = |q: f64| {
            l.get(((l.len() as f64 - 1.0) * q) as usize)
                .copied()
                .unwrap_or(0)
        };
        (at(0.5), at(0.99))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Counts records in memory: the framework's overhead without state.
#[derive(Debug, Handler)]
#[handler(value = Raw)]
struct Stateless(Arc<Probe>);

impl Process for Stateless {
    type Error = weir::Error;

    async fn process(&self, rec: Record<'_, Vec<u8>>, _ctx: &mut Ctx<'_>) -> weir::Result<()> {
        self.0.record(rec.timestamp_ms());
        Ok(())
    }
}

/// Word count in SQLite state, the normal commit path.
#[derive(Debug, Handler)]
#[handler(value = Utf8)]
struct Counting(Arc<Probe>, weir_examples::wordcount::WordCount);

impl Process for Counting {
    type Error = weir::Error;

    async fn process(&self, rec: Record<'_, String>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        let ts = rec.timestamp_ms();
        self.1.process(rec, ctx).await?;
        self.0.record(ts);
        Ok(())
    }
}

async fn run_child(args: &Args, brokers: &str, topic: &str) -> Result<(), String> {
    let n = args.messages;
    let probe = Arc::new(Probe::default());
    let group = format!("bench-{}-{}", args.scenario, std::process::id());
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    match args.scenario.as_str() {
        "raw" => raw(brokers, topic, &group, n, &probe)?,
        "hand-loop" => hand_loop(brokers, topic, &group, n, &probe, dir.path())?,
        "weir-stateless" => {
            let worker = bench_worker(brokers, topic, &group, dir.path())
                .build(Stateless(Arc::clone(&probe)))
                .map_err(|e| e.to_string())?;
            run_worker_until(worker, &probe, n).await?;
        }
        "weir-wordcount" => {
            let worker = bench_worker(brokers, topic, &group, dir.path())
                .build(Counting(
                    Arc::clone(&probe),
                    weir_examples::wordcount::WordCount,
                ))
                .map_err(|e| e.to_string())?;
            run_worker_until(worker, &probe, n).await?;
        }
        other => return Err(format!("unknown scenario {other}")),
    }
    let seconds = probe
        .first
        .get()
        .map_or(0.0, |t| t.elapsed().as_secs_f64())
        .max(1e-9);
    let (p50, p99) = probe.percentiles();
    let outcome = Outcome {
        scenario: args.scenario.clone(),
        messages: n,
        seconds,
        messages_per_second: n as f64 / seconds,
        p50_latency_ms: p50,
        p99_latency_ms: p99,
        peak_rss_mib: peak_rss_mib(),
    };
    println!(
        "{}",
        serde_json::to_string(&outcome).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// A worker for the run; `WEIR_*` variables (e.g. `WEIR_QUEUE_CAPACITY`) override its
/// settings, to measure them.
fn bench_worker(
    brokers: &str,
    topic: &str,
    group: &str,
    dir: &std::path::Path,
) -> weir::WorkerBuilder {
    let builder = Worker::builder()
        .brokers(brokers)
        .group(group)
        .topic(topic)
        .state_dir(dir)
        .dead_letter_topic(None)
        .progress_interval(Duration::ZERO)
        .kafka("session.timeout.ms", "6000");
    match builder.clone().with_env() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("weir-bench: ignoring the environment: {e}");
            builder
        }
    }
}

async fn run_worker_until<H: Process>(
    worker: Worker<H>,
    probe: &Probe,
    n: u64,
) -> Result<(), String> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(600);
    while probe.done.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {n} processed in 600 s",
                probe.done.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The graceful stop commits the last batches: the time includes them.
    let _ = stop.send(());
    run.await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

fn consumer(brokers: &str, topic: &str, group: &str) -> Result<BaseConsumer, String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create()
        .map_err(|e| e.to_string())?;
    c.subscribe(&[topic]).map_err(|e| e.to_string())?;
    Ok(c)
}

/// The ceiling: a plain consumer that touches every record.
fn raw(brokers: &str, topic: &str, group: &str, n: u64, probe: &Probe) -> Result<(), String> {
    let c = consumer(brokers, topic, group)?;
    let mut bytes = 0usize;
    while probe.done.load(Ordering::Relaxed) < n {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.map_err(|e| e.to_string())?;
            bytes += m.payload_len();
            probe.record(m.timestamp().to_millis());
        }
    }
    std::hint::black_box(bytes);
    Ok(())
}

/// What users write today: rdkafka + rusqlite, one transaction per record.
fn hand_loop(
    brokers: &str,
    topic: &str,
    group: &str,
    n: u64,
    probe: &Probe,
    dir: &std::path::Path,
) -> Result<(), String> {
    let c = consumer(brokers, topic, group)?;
    let mut db = rusqlite::Connection::open(dir.join("state.sqlite")).map_err(|e| e.to_string())?;
    db.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
         CREATE TABLE counts (word TEXT PRIMARY KEY, n INTEGER NOT NULL);
         CREATE TABLE offsets (partition INTEGER PRIMARY KEY, next INTEGER NOT NULL);",
    )
    .map_err(|e| e.to_string())?;
    while probe.done.load(Ordering::Relaxed) < n {
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.map_err(|e| e.to_string())?;
        let text = m.payload().map(String::from_utf8_lossy).unwrap_or_default();
        let tx = db.transaction().map_err(|e| e.to_string())?;
        for word in text.split_whitespace() {
            tx.execute(
                "INSERT INTO counts (word, n) VALUES (?1, 1) ON CONFLICT (word) DO UPDATE SET n = n + 1",
                [word],
            )
            .map_err(|e| e.to_string())?;
        }
        tx.execute(
            "INSERT INTO offsets (partition, next) VALUES (?1, ?2) ON CONFLICT (partition) DO UPDATE SET next = excluded.next",
            (m.partition(), m.offset() + 1),
        )
        .map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
        probe.record(m.timestamp().to_millis());
    }
    Ok(())
}
