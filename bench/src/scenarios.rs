//! One scenario's run in its child process: weir workers and pipelines watched to their last
//! commit, live traffic, restores.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use weir::prelude::*;

use crate::args::Args;
use crate::baselines::{consumer, hand_loop, hand_loop_batched, raw, raw_pipe, TUNED};
use crate::data::create_topic;
use crate::handlers::{
    customers_topic, BenchCustomers, BenchJoin, BenchRevenue, Counting, KeyedCount, Stateless,
    WindowCount, WINDOWS_CLOSED,
};
use crate::probe::{now_ms, peak_rss_mib, watch_commits, Histogram, Probe};
use crate::{Measured, Outcome};

pub(crate) async fn run_child(args: &Args, brokers: &str, topic: &str) -> Result<(), String> {
    let n = args.messages;
    let probe = Arc::new(Probe::default());
    let group = format!("bench-{}-{}", args.scenario, std::process::id());
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let measured = match args.scenario.as_str() {
        "weir-restore" => Some(restore(brokers, topic, &group, n, dir.path()).await?),
        "weir-live" => Some(live(brokers, topic, &group, n, args.rate, &probe, dir.path()).await?),
        "raw-live" => Some(raw_live(brokers, topic, &group, args.rate, args.partitions).await?),
        _ => None,
    };
    match args.scenario.as_str() {
        _ if measured.is_some() => {}
        "raw" => raw(consumer(brokers, topic, &group, TUNED)?, n, &probe)?,
        "raw-nats" => crate::nats::raw(brokers, topic, args.partitions, n, &probe).await?,
        "raw-amqp" => crate::rabbitmq::raw(brokers, topic, args.partitions, n, &probe).await?,
        "raw-sqs" => crate::sqs::raw(topic, n, &probe).await?,
        "raw-defaults" => raw(consumer(brokers, topic, &group, &[])?, n, &probe)?,
        "raw-pipe" => {
            let output = format!("{topic}.pipe-{}", std::process::id());
            if let Err(e) = create_topic(brokers, &output, args.partitions).await {
                eprintln!(
                    "raw pipe: creating {output} failed ({e}); relying on the broker creating it"
                );
            }
            raw_pipe(
                consumer(brokers, topic, &group, TUNED)?,
                brokers,
                &output,
                n,
                &probe,
            )?;
        }
        "hand-loop" => hand_loop(brokers, topic, &group, n, &probe, dir.path())?,
        "hand-loop-batched" => hand_loop_batched(brokers, topic, &group, n, &probe, dir.path())?,
        "weir-keyed-count" => {
            let worker = bench_worker(brokers, topic, &group, dir.path())
                .build(KeyedCount(Arc::clone(&probe), None))
                .map_err(|e| e.to_string())?;
            run_worker_until(worker, &probe, n, dir.path(), topic).await?;
        }
        "weir-keyed-count-emit" => {
            // The keyed count, emitting one record per input (its timestamp) to an output
            // topic with as many partitions: what every emitting handler pays.
            let output = format!("{topic}.emits-{}", std::process::id());
            if let Err(e) = create_topic(brokers, &output, args.partitions).await {
                eprintln!("keyed count emit: creating {output} failed ({e}); relying on the broker creating it");
            }
            let worker = bench_worker(brokers, topic, &group, dir.path())
                .build(KeyedCount(Arc::clone(&probe), Some(output)))
                .map_err(|e| e.to_string())?;
            run_worker_until(worker, &probe, n, dir.path(), topic).await?;
        }
        "weir-window-count" => {
            let output = format!("{topic}.windows-{}", std::process::id());
            if let Err(e) = create_topic(brokers, &output, 1).await {
                eprintln!("window count: creating {output} failed ({e}); relying on the broker creating it");
            }
            let worker = bench_worker(brokers, topic, &group, dir.path())
                .late_topic(None)
                .build(WindowCount(Arc::clone(&probe), output))
                .map_err(|e| e.to_string())?;
            run_worker_until(worker, &probe, n, dir.path(), topic).await?;
            eprintln!(
                "window count: {} windows closed",
                WINDOWS_CLOSED.load(Ordering::Relaxed)
            );
        }
        "weir-enrich" => {
            let customers = customers_topic(topic);
            let repartition = format!("{group}-revenue-repartition");
            let output = format!("{topic}.revenue-{}", std::process::id());
            for t in [&repartition, &output] {
                if let Err(e) = create_topic(brokers, t, args.partitions).await {
                    eprintln!(
                        "enrich: creating {t} failed ({e}); relying on the broker creating it"
                    );
                }
            }
            let input = topic.to_owned();
            let pipeline = bench_builder(brokers, &group, dir.path())
                .pipeline()
                .stage_with("join", BenchJoin(Arc::clone(&probe)), move |b| {
                    b.topic(input).table_topic::<BenchCustomers>(customers)
                })
                .repartitioned_stage("revenue", BenchRevenue(Arc::clone(&probe), output))
                .build()
                .map_err(|e| e.to_string())?;
            // Done when the second stage has committed every record.
            let watched = spawn_watched_run(
                |stop| pipeline.run(stop),
                &probe,
                n,
                dir.path(),
                &repartition,
            );
            wait_watched(watched, &probe, n).await?;
        }
        "weir-stateless" => {
            let worker = bench_worker(brokers, topic, &group, dir.path())
                .build(Stateless(Arc::clone(&probe)))
                .map_err(|e| e.to_string())?;
            run_worker_until(worker, &probe, n, dir.path(), topic).await?;
        }
        "weir-wordcount" => {
            let worker = bench_worker(brokers, topic, &group, dir.path())
                .build(Counting(
                    Arc::clone(&probe),
                    weir_examples::wordcount::WordCount,
                ))
                .map_err(|e| e.to_string())?;
            run_worker_until(worker, &probe, n, dir.path(), topic).await?;
        }
        other => return Err(format!("unknown scenario {other}")),
    }
    let Measured {
        messages,
        seconds,
        latencies_ms: [p50, p99, p999],
        output_latencies_ms,
    } = measured.unwrap_or_else(|| Measured {
        messages: n,
        seconds: probe.seconds(),
        latencies_ms: probe.percentiles(),
        output_latencies_ms: None,
    });
    let outcome = Outcome {
        scenario: args.scenario.clone(),
        messages,
        seconds,
        messages_per_second: messages as f64 / seconds,
        p50_latency_ms: p50,
        p99_latency_ms: p99,
        p999_latency_ms: p999,
        output_latency_ms: output_latencies_ms,
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
pub(crate) fn bench_worker(
    brokers: &str,
    topic: &str,
    group: &str,
    dir: &std::path::Path,
) -> weir::WorkerBuilder {
    bench_builder(brokers, group, dir).topic(topic)
}

/// [`bench_worker`] without its topic (a pipeline's stages have their own).
pub(crate) fn bench_builder(
    brokers: &str,
    group: &str,
    dir: &std::path::Path,
) -> weir::WorkerBuilder {
    bench_builder_with(brokers, group, dir, &[])
}

/// [`bench_builder`] with librdkafka `properties`, set before the environment (which still
/// overrides them).
pub(crate) fn bench_builder_with(
    brokers: &str,
    group: &str,
    dir: &std::path::Path,
    properties: &[(&str, &str)],
) -> weir::WorkerBuilder {
    let mut builder = Worker::builder()
        .brokers(brokers)
        .group(group)
        .state_dir(dir)
        .dead_letter_topic(None)
        .progress_interval(Duration::ZERO)
        .kafka("session.timeout.ms", "6000");
    for (name, value) in properties {
        builder = builder.kafka(*name, *value);
    }
    match builder.clone().with_env() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("weir-bench: ignoring the environment: {e}");
            builder
        }
    }
}

/// A worker running on its own task, with its SQLite commits watched into a probe.
pub(crate) struct Watched {
    /// Stops the worker gracefully.
    pub(crate) stop: tokio::sync::oneshot::Sender<()>,
    pub(crate) run: tokio::task::JoinHandle<weir::Result<()>>,
    /// Ends the watcher before it has seen all records.
    pub(crate) give_up: Arc<AtomicBool>,
    pub(crate) watch: tokio::task::JoinHandle<()>,
}

/// Starts `worker`, and a watcher that tells `probe` what its SQLite files say is committed,
/// until `n` records are.
pub(crate) fn spawn_watched<H: Process>(
    worker: Worker<H>,
    probe: &Arc<Probe>,
    n: u64,
    dir: &Path,
    topic: &str,
) -> Watched {
    spawn_watched_run(|stopped| worker.run(stopped), probe, n, dir, topic)
}

/// [`spawn_watched`] for what `run` starts (a worker, a pipeline) with a stop signal.
pub(crate) fn spawn_watched_run<F>(
    run: impl FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> F,
    probe: &Arc<Probe>,
    n: u64,
    dir: &Path,
    topic: &str,
) -> Watched
where
    F: std::future::Future<Output = weir::Result<()>> + Send + 'static,
{
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(run(Box::pin(async {
        let _ = stopped.await;
    })));
    let give_up = Arc::new(AtomicBool::new(false));
    let watch = {
        let (dir, topic, probe, give_up) = (
            dir.to_owned(),
            topic.to_owned(),
            Arc::clone(probe),
            Arc::clone(&give_up),
        );
        tokio::task::spawn_blocking(move || watch_commits(&dir, &topic, &probe, n, &give_up))
    };
    Watched {
        stop,
        run,
        give_up,
        watch,
    }
}

/// Runs `worker` until the state of all `n` records is committed (as its SQLite files say),
/// then stops it gracefully (not timed).
pub(crate) async fn run_worker_until<H: Process>(
    worker: Worker<H>,
    probe: &Arc<Probe>,
    n: u64,
    dir: &Path,
    topic: &str,
) -> Result<(), String> {
    wait_watched(spawn_watched(worker, probe, n, dir, topic), probe, n).await
}

/// Waits until all `n` records are committed, then stops what runs gracefully (not timed).
pub(crate) async fn wait_watched(
    watched: Watched,
    probe: &Arc<Probe>,
    n: u64,
) -> Result<(), String> {
    let Watched {
        stop,
        run,
        give_up,
        watch,
    } = watched;
    let deadline = Instant::now() + Duration::from_secs(600);
    while probe.committed.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline || run.is_finished() {
            give_up.store(true, Ordering::Relaxed);
            return Err(format!(
                "{} of {n} processed, {} committed, worker {}",
                probe.done.load(Ordering::Relaxed),
                probe.committed.load(Ordering::Relaxed),
                if run.is_finished() {
                    "ended"
                } else {
                    "still running after 600 s"
                }
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = watch.await;
    let _ = stop.send(());
    run.await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Live traffic: a keyed-count worker that emits each new count first catches up with the
/// backlog (untimed); then the bench produces `rate` records/s for 10 s, each stamped with its
/// produce time, and reports the latency from produce to state commit of those records, and
/// (on stderr and in `bench-results.json`) from produce to the arrival of their emitted
/// records on the output topic.
pub(crate) async fn live(
    brokers: &str,
    topic: &str,
    group: &str,
    n: u64,
    rate: u64,
    probe: &Arc<Probe>,
    dir: &Path,
) -> Result<Measured, String> {
    let live_n = rate * LIVE_SECONDS;
    // The backlog is the whole topic: with `--rounds` an earlier run's live records are in it.
    let n = n.max(records_in(brokers, topic)?);
    // Per run: `--rounds` runs the scenario again on the same topic.
    let output = format!("{topic}.counts-{}", std::process::id());
    if let Err(e) = create_topic(brokers, &output, 1).await {
        // The embedded broker does not answer CreateTopics from here; it creates a topic when
        // it is first produced to or asked about.
        eprintln!("live: creating {output} failed ({e}); relying on the broker creating it");
    }
    let worker = bench_builder_with(
        brokers,
        group,
        dir,
        &[("fetch.wait.max.ms", LIVE_FETCH_WAIT_MS)],
    )
    .topic(topic)
    .build(KeyedCount(Arc::clone(probe), Some(output.clone())))
    .map_err(|e| e.to_string())?;
    let Watched {
        stop,
        run,
        give_up,
        watch,
    } = spawn_watched(worker, probe, n + live_n, dir, topic);
    let wait_committed = |target: u64| {
        let probe = Arc::clone(probe);
        async move {
            let deadline = Instant::now() + Duration::from_secs(600);
            while probe.committed.load(Ordering::Relaxed) < target {
                if Instant::now() > deadline {
                    return Err(format!(
                        "{} of {target} committed after 600 s",
                        probe.committed.load(Ordering::Relaxed)
                    ));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(())
        }
    };
    wait_committed(n).await?;
    // Caught up: from here on only the live records' latencies count.
    *probe.latencies.lock().map_err(|e| e.to_string())? = Histogram::default();
    let live_from_ms = now_ms();
    let outputs = {
        // Read from the output's end as it is now: what was emitted for the backlog is not
        // read (it would delay the live records behind it).
        let reader = output_reader(brokers, &output, &format!("{group}-out"))?;
        // An output's value is its source record's produce time.
        spawn_latency_reader(reader, live_n, Arc::clone(&give_up), move |msg| {
            msg.payload()
                .and_then(|p| std::str::from_utf8(p).ok()?.parse::<i64>().ok())
                .filter(|ts| *ts >= live_from_ms)
        })
    };
    let produced_in = produce_live(brokers, topic, rate, live_n).await?;
    wait_committed(n + live_n).await?;
    let (p50, p99, p999) = probe
        .latencies
        .lock()
        .map(|h| (h.quantile(0.5), h.quantile(0.99), h.quantile(0.999)))
        .map_err(|e| e.to_string())?;
    eprintln!(
        "live: {live_n} records at {rate}/s produced in {produced_in:.1?}; produce to state \
         commit p50 {p50} ms, p99 {p99} ms, p999 {p999} ms"
    );
    let emitted = latencies_read(
        outputs,
        &give_up,
        live_n,
        &format!("emitted records on {output}"),
    )
    .await?;
    eprintln!(
        "live: produce to emitted output p50 {} ms, p99 {} ms, p999 {} ms",
        emitted[0], emitted[1], emitted[2]
    );
    let _ = watch.await;
    let _ = stop.send(());
    run.await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    // The rate is the offered one: the live records over the time they took to send.
    Ok(Measured {
        messages: live_n,
        seconds: produced_in.as_secs_f64(),
        latencies_ms: [p50, p99, p999],
        output_latencies_ms: Some(emitted),
    })
}

/// How long the live scenarios produce.
const LIVE_SECONDS: u64 = 10;
/// librdkafka's `fetch.wait.max.ms` of every reader in the live scenarios: the raw floor's, the
/// output's and weir's. Kafka answers a fetch as soon as a record comes; tansu holds it for the
/// whole wait, so with librdkafka's 500 ms the floor itself was 130 ms (p50) there, and 5 ms is
/// the best the raw consumer does. Both sides get it: it is one property of the worker's
/// (`WEIR_KAFKA_FETCH_WAIT_MAX_MS`, which still overrides it).
const LIVE_FETCH_WAIT_MS: &str = "5";

/// Produces `n` records to `topic` at `rate` a second (keys `k0`..`k9999`, the produce time
/// as the record's timestamp), as live traffic comes; the time they took to send.
async fn produce_live(brokers: &str, topic: &str, rate: u64, n: u64) -> Result<Duration, String> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "1")
        // Room for the whole run: the rate must not stall on a full local queue.
        .set("queue.buffering.max.messages", "2000000")
        .create()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(n as usize);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0u64;
    while sent < n {
        tick.tick().await;
        // Records due by now at `rate`, so a late tick catches up rather than lowering it.
        let due = (started.elapsed().as_secs_f64() * rate as f64).ceil() as u64;
        while sent < due.min(n) {
            let key = format!("k{}", sent % 10_000);
            let record = FutureRecord::to(topic)
                .key(&key)
                .payload("live")
                .timestamp(now_ms());
            deliveries.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| e.to_string())?,
            );
            sent += 1;
        }
    }
    for d in deliveries {
        d.await
            .map_err(|e| e.to_string())?
            .map_err(|(e, _)| e.to_string())?;
    }
    Ok(started.elapsed())
}

/// The floor of `weir-live`: the raw consumer (tuned as `raw`) reading a topic with the input's
/// partition count from its end while the same live traffic is produced into it; latency from
/// produce to receive. The topic is its own: what it produces must not add to the backlog of
/// a `weir-live` that runs after it.
pub(crate) async fn raw_live(
    brokers: &str,
    topic: &str,
    group: &str,
    rate: u64,
    partitions: i32,
) -> Result<Measured, String> {
    let live_n = rate * LIVE_SECONDS;
    let topic = &format!("{topic}.raw-live-{}", std::process::id());
    if let Err(e) = create_topic(brokers, topic, partitions).await {
        // The embedded broker does not answer CreateTopics from here: it creates the topic at
        // a first record (read past: the reader starts at the end).
        eprintln!("raw live: creating {topic} failed ({e}); producing a first record creates it");
        produce_live(brokers, topic, 1000, 1).await?;
    }
    let reader = output_reader(brokers, topic, group)?;
    let give_up = Arc::new(AtomicBool::new(false));
    let received = spawn_latency_reader(reader, live_n, Arc::clone(&give_up), |msg| {
        msg.timestamp().to_millis()
    });
    let produced_in = produce_live(brokers, topic, rate, live_n).await?;
    let floor = latencies_read(received, &give_up, live_n, "live records").await?;
    eprintln!(
        "raw live: {live_n} records at {rate}/s; produce to receive p50 {} ms, p99 {} ms, p999 {} ms",
        floor[0], floor[1], floor[2]
    );
    Ok(Measured {
        messages: live_n,
        seconds: produced_in.as_secs_f64(),
        latencies_ms: floor,
        output_latencies_ms: None,
    })
}

/// The records in `topic` now: the sum of its partitions' ends (the bench's topics start at
/// offset 0 and are not compacted).
fn records_in(brokers: &str, topic: &str) -> Result<u64, String> {
    let reader = output_reader(brokers, topic, &format!("{topic}-count"))?;
    let ends = reader.assignment().map_err(|e| e.to_string())?;
    Ok(ends
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(end) => u64::try_from(end).ok(),
            _ => None,
        })
        .sum())
}

/// A consumer of all of `topic`'s partitions, each from its current end, fetching as the live
/// scenarios do.
pub(crate) fn output_reader(
    brokers: &str,
    topic: &str,
    group: &str,
) -> Result<BaseConsumer, String> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    for (name, value) in TUNED {
        config.set(*name, *value);
    }
    config.set("fetch.wait.max.ms", LIVE_FETCH_WAIT_MS);
    let reader: BaseConsumer = config.create().map_err(|e| e.to_string())?;
    let timeout = Duration::from_secs(10);
    let metadata = reader
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("{topic}: {e}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(format!("{topic} has no partitions"));
    }
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in partitions {
        let (_, end) = reader
            .fetch_watermarks(topic, p, timeout)
            .map_err(|e| format!("{topic}/{p}: {e}"))?;
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(end))
            .map_err(|e| e.to_string())?;
    }
    reader.assign(&tpl).map_err(|e| e.to_string())?;
    Ok(reader)
}

/// Reads with `reader` on a thread of its own until `n` records have arrived whose produce
/// time `sent_ms` gives (the others are not counted), or `give_up`: their latencies from
/// produce to arrival.
fn spawn_latency_reader(
    reader: BaseConsumer,
    n: u64,
    give_up: Arc<AtomicBool>,
    sent_ms: impl Fn(&rdkafka::message::BorrowedMessage<'_>) -> Option<i64> + Send + 'static,
) -> std::thread::JoinHandle<Histogram> {
    std::thread::spawn(move || {
        let mut latencies = Histogram::default();
        while latencies.count < n && !give_up.load(Ordering::Relaxed) {
            let Some(Ok(msg)) = reader.poll(Duration::from_millis(100)) else {
                continue;
            };
            if let Some(ts) = sent_ms(&msg) {
                latencies.record(now_ms() - ts);
            }
        }
        latencies
    })
}

/// Waits up to 60 s for a [`spawn_latency_reader`] to have read its `n` records (`what`), then
/// stops it: their p50, p99 and p999.
async fn latencies_read(
    reader: std::thread::JoinHandle<Histogram>,
    give_up: &AtomicBool,
    n: u64,
    what: &str,
) -> Result<[i64; 3], String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reader.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    give_up.store(true, Ordering::Relaxed);
    let got = reader
        .join()
        .map_err(|_| format!("the reader of {what} panicked"))?;
    if got.count < n {
        return Err(format!("{} of {n} {what} arrived within 60 s", got.count));
    }
    Ok([0.5, 0.99, 0.999].map(|q| got.quantile(q)))
}

/// Changelog restore: a keyed-count worker with the changelog on processes the backlog
/// (untimed); then a worker with an empty state dir, in the same group, rebuilds every
/// partition's store from the changelog (on NATS and RabbitMQ, at the new records that give it
/// the lanes). Its rate is changelog records per second of one
/// partition's restore (`weir_restored_records_total` over the sum of
/// `weir_restore_duration_seconds`).
pub(crate) async fn restore(
    brokers: &str,
    topic: &str,
    group: &str,
    n: u64,
    dir: &Path,
) -> Result<Measured, String> {
    let fill = Arc::new(Probe::default());
    let worker = bench_worker(brokers, topic, group, dir)
        .changelog(true)
        .build(KeyedCount(Arc::clone(&fill), None))
        .map_err(|e| e.to_string())?;
    run_worker_until(worker, &fill, n, dir, topic).await?;
    if crate::nats::is_nats(brokers) {
        crate::nats::publish_more(brokers, topic).await?;
    }
    if crate::rabbitmq::is_amqp(brokers) {
        crate::rabbitmq::publish_more(brokers, topic).await?;
    }
    let fresh = tempfile::tempdir().map_err(|e| e.to_string())?;
    let worker = bench_worker(brokers, topic, group, fresh.path())
        .changelog(true)
        .metrics_addr("127.0.0.1:0")
        .build(KeyedCount(Arc::new(Probe::default()), None))
        .map_err(|e| e.to_string())?;
    let addr = worker
        .metrics_addr()
        .ok_or("the restoring worker has no metrics address")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let started = Instant::now();
    let (records, seconds, restored) = loop {
        let body = tokio::task::spawn_blocking(move || http_get_metrics(addr))
            .await
            .map_err(|e| e.to_string())??;
        // Summed over the metric's labels (the restored records are counted per topic).
        let value = |name: &str| {
            body.lines()
                .filter(|l| l.split([' ', '{']).next() == Some(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .reduce(|a, b| a + b)
        };
        let partitions = value("weir_owned_partitions").unwrap_or(0.0);
        let restored = value("weir_restore_duration_seconds_count").unwrap_or(0.0);
        if partitions > 0.0 && restored >= partitions {
            break (
                value("weir_restored_records_total").unwrap_or(0.0),
                value("weir_restore_duration_seconds_sum").unwrap_or(0.0),
                restored,
            );
        }
        if started.elapsed() > Duration::from_secs(600) || run.is_finished() {
            return Err(format!("{restored} of {partitions} partitions restored"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "restored {records} changelog records into {restored} partitions in {:.2?} wall time; \
         {seconds:.2} s of partition restores",
        started.elapsed()
    );
    let _ = stop.send(());
    run.await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if crate::nats::is_nats(brokers) {
        crate::nats::delete_streams_of(brokers, group).await?;
    }
    Ok(Measured {
        messages: records as u64,
        seconds,
        latencies_ms: [0; 3],
        output_latencies_ms: None,
    })
}

/// `GET /metrics` of a worker's endpoint.
pub(crate) fn http_get_metrics(addr: std::net::SocketAddr) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}
