//! weir's benchmark: pre-produces keyed records, then reads them all in one run with each
//! scenario, each in a fresh process and consumer group, and prints messages/s as a ratio to
//! the best raw rdkafka consumer of the same run.
//!
//! ```text
//! cargo run --release -p weir-bench -- --scenario all [--messages N] [--partitions P] [--slow-messages M] [--keys K] [--values words|lines] [--rate R] [--rounds N]
//! ```
//!
//! Scenarios: `raw` and `raw-defaults` (with `all`, run first and again last), `raw-pipe` (the
//! raw consumer producing one record per input, `WEIR_BENCH_PIPE` for weir's guarantees and
//! headers), `weir-stateless`,
//! `weir-keyed-count`, `weir-window-count` (the keyed count in tumbling one-second windows of
//! the records' timestamps, each closed window's count emitted), `weir-enrich` (the `enrich`
//! example's two-stage pipeline: each record joined with its key's row of a co-partitioned
//! table, re-keyed by one of 64 countries, revenue per country with every new total emitted;
//! timed to the second stage's last commit), `weir-wordcount`,
//! `hand-loop-batched`, `hand-loop`, `quix` (Quix
//! Streams, installed by `bench/setup.sh` on first use; real broker only), `weir-restore`,
//! `weir-live` (latency under `--rate` records/s for 10 s, to the state commit and to the
//! emitted output) and `raw-live` (its floor: the raw consumer under the same traffic, produce
//! to receive; each live reader, weir's included, fetches with `fetch.wait.max.ms=5`).
//! `hand-loop` reads only `--slow-messages` records (default 50k), `quix` at most 50 s of them.
//! Records are 100 bytes of 8 words, or with `--values lines` lines of 16 words drawn with
//! Zipf frequencies from a 5000-word vocabulary.
//!
//! With `WEIR_BROKERS=nats://...` it runs on NATS JetStream: `raw-nats` (an `async-nats` pull
//! consumer per lane, the ceiling), `weir-stateless` and `weir-keyed-count` (`bench/src/nats.rs`).
//! With `WEIR_BROKERS=amqp://...` it runs on RabbitMQ: `raw-amqp` (a `lapin` consumer per lane
//! queue acknowledging every 500, the ceiling) and the same two, each scenario on a backlog of
//! its own (`bench/src/rabbitmq.rs`). With `WEIR_BROKERS=sqs://` (and the AWS configuration) it
//! runs on SQS: `raw-sqs` (weir's receive pattern without weir, the ceiling) and the same two,
//! each on a queue of its own (`bench/src/sqs.rs`).
//!
//! Without `WEIR_BROKERS` it runs on the embedded broker (which keeps only ~5 MiB per
//! partition, so the default backlog there is 200k records over 8 partitions); with it, the
//! default is 1M records. Results also go to `bench-results.json`. `WEIR_*` variables
//! (`WEIR_BATCH_SIZE`, `WEIR_QUEUE_CAPACITY`, `WEIR_KAFKA_*`...) change the weir scenarios'
//! settings, to measure them.
//!
//! Throughput is timed from the first record a scenario sees to the last record's state
//! commit (for weir, as its SQLite offsets show), so the group join and the graceful stop are
//! not in it. Latency is producer timestamp to state commit; with the backlog produced up
//! front it mostly measures time spent waiting in the backlog. `docs/performance.md` has the
//! method and the figures.

use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};

mod args;
mod baselines;
mod data;
mod handlers;
mod nats;
mod probe;
mod rabbitmq;
mod scenarios;
mod sqs;

use args::{parse_args, Args, OTHER_BROKERS_RAW, RAW, SCENARIOS, SLOW};
use baselines::quix_command;
use data::{create_topic, produce, produce_records};
use handlers::customers_topic;
use scenarios::run_child;

/// What one scenario measured.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Outcome {
    pub(crate) scenario: String,
    pub(crate) messages: u64,
    pub(crate) seconds: f64,
    pub(crate) messages_per_second: f64,
    /// Producer timestamp to processing, milliseconds (the backlog is produced up front, so
    /// this is dominated by the wait in the backlog).
    pub(crate) p50_latency_ms: i64,
    pub(crate) p99_latency_ms: i64,
    #[serde(default)]
    pub(crate) p999_latency_ms: i64,
    /// p50, p99, p999 from produce to the emitted output's arrival (`weir-live`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) output_latency_ms: Option<[i64; 3]>,
    pub(crate) peak_rss_mib: f64,
}

/// What a scenario measured itself, where the probe's first-record-to-last-commit timing does
/// not apply (a restore, live traffic).
pub(crate) struct Measured {
    pub(crate) messages: u64,
    pub(crate) seconds: f64,
    /// p50, p99, p999.
    pub(crate) latencies_ms: [i64; 3],
    /// p50, p99, p999 from produce to the emitted output's arrival, where measured.
    pub(crate) output_latencies_ms: Option<[i64; 3]>,
}

#[tokio::main]
pub(crate) async fn main() {
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
        _ => Some(weir::worker::EmbeddedBroker::start(1).map_err(|e| e.to_string())?),
    };
    let brokers = match &embedded {
        Some(b) => b.bootstrap_servers().to_owned(),
        None => std::env::var("WEIR_BROKERS").map_err(|e| e.to_string())?,
    };
    let topic = format!("bench-{}", std::process::id());
    let on_nats = embedded.is_none() && nats::is_nats(&brokers);
    // On RabbitMQ each scenario gets a topic and a backlog of its own (a queue is emptied by
    // whoever reads it), made just before it runs.
    let on_amqp = embedded.is_none() && rabbitmq::is_amqp(&brokers);
    let on_sqs = embedded.is_none() && sqs::is_sqs(&brokers);
    if on_nats {
        let started = Instant::now();
        nats::prepare(&brokers, &topic, args.partitions, args.messages, args.keys).await?;
        eprintln!(
            "published {} records of 100 bytes with {} keys into {} lanes of stream {topic} in {:.1?} ({brokers})",
            args.messages,
            args.keys,
            args.partitions,
            started.elapsed(),
        );
    }
    match &embedded {
        _ if on_nats || on_amqp || on_sqs => {}
        Some(b) => b
            .create_topic(&topic, args.partitions)
            .map_err(|e| e.to_string())?,
        None => create_topic(&brokers, &topic, args.partitions).await?,
    }
    let started = Instant::now();
    if !on_nats && !on_amqp && !on_sqs {
        produce(&brokers, &topic, args.messages, args.keys, args.lines).await?;
    }
    let enriching = args.scenario == "all" || args.scenario.split(',').any(|s| s == "weir-enrich");
    if !on_nats && !on_amqp && !on_sqs && enriching {
        // The `weir-enrich` scenario's table, co-partitioned with the records.
        let customers = customers_topic(&topic);
        match &embedded {
            Some(b) => b
                .create_topic(&customers, args.partitions)
                .map_err(|e| e.to_string())?,
            None => create_topic(&brokers, &customers, args.partitions).await?,
        }
        let rows = (0..args.keys.max(1)).map(|i| {
            let value = serde_json::json!({ "country": format!("C{}", i % 64) }).to_string();
            (format!("k{i}"), value)
        });
        produce_records(&brokers, &customers, rows).await?;
    }
    if !on_nats && !on_amqp && !on_sqs {
        eprintln!(
        "produced {} records of 100 bytes with {} keys into {} partitions of {topic} in {:.1?} ({})",
        args.messages,
        args.keys,
        args.partitions,
        started.elapsed(),
        if embedded.is_some() {
            "embedded broker"
        } else {
            brokers.as_str()
        }
    );
    }
    // With `all`, the raw consumers run first (straight after producing, when the broker's
    // page cache is warmest) and again last, and the ceiling is the best of them: no order
    // favours weir.
    // Scenarios vary by ±25% from one minute to the next on a shared machine: with
    // `--rounds N` the whole sequence runs N times and each scenario reports its best.
    let scenarios: Vec<&str> = match args.scenario.as_str() {
        "all" if on_nats => (0..args.rounds.max(1))
            .flat_map(|_| nats::SCENARIOS.iter().copied())
            .collect(),
        "all" if on_amqp => (0..args.rounds.max(1))
            .flat_map(|_| rabbitmq::SCENARIOS.iter().copied())
            .collect(),
        "all" if on_sqs => (0..args.rounds.max(1))
            .flat_map(|_| sqs::SCENARIOS.iter().copied())
            .collect(),
        // Kafka's: the other brokers' raw consumers are theirs alone.
        "all" => (0..args.rounds.max(1))
            .flat_map(|_| {
                SCENARIOS
                    .iter()
                    .chain(RAW)
                    .copied()
                    .filter(|s| !OTHER_BROKERS_RAW.contains(s))
            })
            .collect(),
        some => (0..args.rounds.max(1))
            .flat_map(|_| some.split(','))
            .collect(),
    };
    let mut outcomes = Vec::new();
    for (run, scenario) in scenarios.into_iter().enumerate() {
        let topic = if on_amqp {
            let topic = format!("{topic}-{run}");
            let started = Instant::now();
            rabbitmq::prepare(&brokers, &topic, args.partitions, args.messages, args.keys).await?;
            eprintln!(
                "published {} records of 100 bytes with {} keys into {} lanes of exchange {topic} in {:.1?} ({brokers})",
                args.messages,
                args.keys,
                args.partitions,
                started.elapsed(),
            );
            topic
        } else if on_sqs {
            let queue = format!("{topic}-{run}");
            let started = Instant::now();
            sqs::prepare(&queue, args.messages, args.keys).await?;
            eprintln!(
                "sent {} records of 100 bytes with {} keys to queue {queue} in {:.1?}",
                args.messages,
                args.keys,
                started.elapsed(),
            );
            queue
        } else {
            topic.clone()
        };
        if scenario == "quix" && embedded.is_some() {
            // Quix Streams inspects the topic's configuration (DescribeConfigs), which the
            // mock cluster does not serve.
            eprintln!("quix: skipped on the embedded broker (needs a real one: set WEIR_BROKERS)");
            continue;
        }
        let n = if SLOW.contains(&scenario) {
            args.slow_messages.min(args.messages)
        } else {
            args.messages
        };
        let out = if scenario == "quix" {
            let state =
                std::env::temp_dir().join(format!("weir-bench-quix-{}", std::process::id()));
            let out = quix_command(&brokers, &topic, n, &state)?.output();
            let _ = std::fs::remove_dir_all(&state);
            out
        } else {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            Command::new(exe)
                .args(["--scenario", scenario, "--messages", &n.to_string()])
                .args(["--keys", &args.keys.to_string()])
                .args(["--rate", &args.rate.to_string()])
                .args(["--partitions", &args.partitions.to_string()])
                .args(["--child", &brokers, &topic])
                .env_remove("WEIR_BROKERS")
                .output()
        }
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
    if args.rounds > 1 {
        outcomes = best_of_each(outcomes);
    }
    let raw = outcomes
        .iter()
        .filter(|o| RAW.contains(&o.scenario.as_str()))
        .map(|o| o.messages_per_second)
        .reduce(f64::max);
    if let Some(r) = raw {
        eprintln!("ceiling: the best raw consumer, {r:.0} msg/s");
    }
    println!(
        "{:<17} {:>12} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "scenario", "msg/s", "vs raw", "p50 ms", "p99 ms", "p999 ms", "peak MiB"
    );
    for o in &outcomes {
        let ratio = raw.map_or("-".to_owned(), |r| {
            format!("{:.2}", o.messages_per_second / r)
        });
        println!(
            "{:<17} {:>12.0} {:>8} {:>10} {:>10} {:>10} {:>10.0}",
            o.scenario,
            o.messages_per_second,
            ratio,
            o.p50_latency_ms,
            o.p99_latency_ms,
            o.p999_latency_ms,
            o.peak_rss_mib
        );
    }
    for o in &outcomes {
        if let Some([p50, p99, p999]) = o.output_latency_ms {
            println!(
                "{}: produce to emitted output p50 {p50} ms, p99 {p99} ms, p999 {p999} ms",
                o.scenario
            );
        }
    }
    let json = serde_json::to_string_pretty(&outcomes).map_err(|e| e.to_string())?;
    std::fs::write("bench-results.json", json).map_err(|e| e.to_string())?;
    Ok(())
}

/// The best outcome of each scenario, in the order scenarios first ran.
pub(crate) fn best_of_each(outcomes: Vec<Outcome>) -> Vec<Outcome> {
    let mut best: Vec<Outcome> = Vec::new();
    for o in outcomes {
        match best.iter_mut().find(|b| b.scenario == o.scenario) {
            Some(b) if b.messages_per_second < o.messages_per_second => *b = o,
            Some(_) => {}
            None => best.push(o),
        }
    }
    best
}
