//! What weir is measured against: the raw consumer (the ceiling), the hand-written loops, Quix
//! Streams.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use weir::state::header;

use crate::data::producer_config;
use crate::probe::Probe;

/// The `quix` scenario: installs Quix Streams (bench/setup.sh) if needed, then runs
/// bench/quix/wordcount.py.
pub(crate) fn quix_command(
    brokers: &str,
    topic: &str,
    n: u64,
    state: &Path,
) -> Result<Command, String> {
    let bench = Path::new(env!("CARGO_MANIFEST_DIR"));
    let setup = Command::new("bash")
        .arg(bench.join("setup.sh"))
        .status()
        .map_err(|e| format!("bench/setup.sh: {e}"))?;
    if !setup.success() {
        return Err(format!("bench/setup.sh failed: {setup}"));
    }
    let mut cmd = Command::new(bench.join(".venv/bin/python"));
    cmd.arg(bench.join("quix/wordcount.py"))
        .args([
            brokers,
            topic,
            &format!("bench-quix-{}", std::process::id()),
        ])
        .arg(state)
        .arg(n.to_string());
    Ok(cmd)
}

/// A plain consumer of `topic` in `group`, with librdkafka's defaults but for `tuning`.
pub(crate) fn consumer(
    brokers: &str,
    topic: &str,
    group: &str,
    tuning: &[(&str, &str)],
) -> Result<BaseConsumer, String> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("partition.assignment.strategy", "cooperative-sticky");
    for (name, value) in tuning {
        config.set(*name, *value);
    }
    let c: BaseConsumer = config.create().map_err(|e| e.to_string())?;
    c.subscribe(&[topic]).map_err(|e| e.to_string())?;
    Ok(c)
}

/// The fetch settings weir's own consumer uses (the best tried: see docs/performance.md).
pub(crate) const TUNED: &[(&str, &str)] = &[
    ("enable.partition.eof", "false"),
    ("fetch.queue.backoff.ms", "20"),
];

/// The ceiling: a plain consumer that touches every record. Its measurement is batched (one
/// clock read and one lock per 1000 records), as weir's is on its watcher thread.
pub(crate) fn raw(c: BaseConsumer, n: u64, probe: &Probe) -> Result<(), String> {
    let mut bytes = 0usize;
    let mut seen = 0u64;
    let mut timestamps = Vec::with_capacity(1000);
    while seen < n {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.map_err(|e| e.to_string())?;
            if seen == 0 {
                probe.first.get_or_init(Instant::now);
            }
            seen += 1;
            bytes += m.payload_len();
            timestamps.push(m.timestamp().to_millis().unwrap_or(0));
            if timestamps.len() == 1000 || seen == n {
                probe
                    .done
                    .fetch_add(timestamps.len() as u64, Ordering::Relaxed);
                probe.commit(timestamps.drain(..));
            }
        }
    }
    std::hint::black_box(bytes);
    Ok(())
}

/// The ceiling of the emitting scenarios: [`raw`] producing one record per input to `output`
/// (its key, the input's timestamp as the value, as `weir-keyed-count-emit` does), with no
/// state and none of weir's guarantees (no idempotence, no headers, nothing stored). Timed to
/// the delivery of the last record it produced.
///
/// `WEIR_BENCH_PIPE=guarantees` gives its producer weir's settings (idempotent, `acks=all`,
/// gapless, murmur2), and `WEIR_BENCH_PIPE=weir` adds the five `weir.source.*` headers weir
/// puts on every emit, to show what each costs.
pub(crate) fn raw_pipe(
    c: BaseConsumer,
    brokers: &str,
    output: &str,
    n: u64,
    probe: &Probe,
) -> Result<(), String> {
    let like = std::env::var("WEIR_BENCH_PIPE").unwrap_or_default();
    let (guarantees, headers) = match like.as_str() {
        "" => (false, false),
        "guarantees" => (true, false),
        "weir" => (true, true),
        other => {
            return Err(format!(
                "WEIR_BENCH_PIPE={other}: expected guarantees or weir"
            ))
        }
    };
    let mut config = producer_config(brokers);
    if guarantees {
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("enable.gapless.guarantee", "true")
            .set("message.timeout.ms", "0")
            .set("partitioner", "murmur2_random");
    }
    let producer: BaseProducer = config.create().map_err(|e| e.to_string())?;
    let mut offset = String::new();
    let mut seen = 0u64;
    let mut timestamps = Vec::with_capacity(1000);
    let mut value = String::new();
    while seen < n {
        producer.poll(Duration::ZERO);
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.map_err(|e| e.to_string())?;
        if seen == 0 {
            probe.first.get_or_init(Instant::now);
        }
        seen += 1;
        let ts = m.timestamp().to_millis().unwrap_or(0);
        value.clear();
        std::fmt::Write::write_fmt(&mut value, format_args!("{ts}")).map_err(|e| e.to_string())?;
        let mut record = BaseRecord::<[u8], str>::to(output).payload(value.as_str());
        if let Some(key) = m.key() {
            record = record.key(key);
        }
        if headers {
            offset.clear();
            std::fmt::Write::write_fmt(&mut offset, format_args!("{}", m.offset()))
                .map_err(|e| e.to_string())?;
            let partition = m.partition().to_string();
            record = record.headers(
                [
                    (header::SOURCE_TOPIC, m.topic()),
                    (header::SOURCE_PARTITION, partition.as_str()),
                    (header::SOURCE_OFFSET, offset.as_str()),
                    (header::SOURCE_SEQ, "0"),
                    (header::SOURCE_GROUP, "bench-weir-keyed-count-emit-1234"),
                ]
                .into_iter()
                .fold(OwnedHeaders::new_with_capacity(5), |h, (key, value)| {
                    h.insert(Header {
                        key,
                        value: Some(value),
                    })
                }),
            );
        }
        while let Err((e, back)) = producer.send(record) {
            if e != KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) {
                return Err(e.to_string());
            }
            record = back;
            producer.poll(Duration::from_millis(1));
        }
        timestamps.push(ts);
        // The last records count once all are delivered (below).
        if timestamps.len() == 1000 && seen < n {
            probe
                .done
                .fetch_add(timestamps.len() as u64, Ordering::Relaxed);
            probe.commit(timestamps.drain(..));
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| format!("flushing the pipe's producer: {e}"))?;
    probe
        .done
        .fetch_add(timestamps.len() as u64, Ordering::Relaxed);
    probe.commit(timestamps.drain(..));
    Ok(())
}

/// The hand loops' SQLite file: word counts and offsets, WAL, as weir's.
pub(crate) fn counts_db(dir: &Path) -> Result<rusqlite::Connection, String> {
    let db = rusqlite::Connection::open(dir.join("state.sqlite")).map_err(|e| e.to_string())?;
    db.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
         CREATE TABLE counts (word TEXT PRIMARY KEY, n INTEGER NOT NULL);
         CREATE TABLE offsets (partition INTEGER PRIMARY KEY, next INTEGER NOT NULL);",
    )
    .map_err(|e| e.to_string())?;
    Ok(db)
}

/// What a competent user writes: rdkafka + rusqlite, cached statements, one transaction per
/// poll burst (up to 1000 records, or what arrived within 5 ms).
pub(crate) fn hand_loop_batched(
    brokers: &str,
    topic: &str,
    group: &str,
    n: u64,
    probe: &Probe,
    dir: &std::path::Path,
) -> Result<(), String> {
    let c = consumer(brokers, topic, group, TUNED)?;
    let mut db = counts_db(dir)?;
    let mut seen = 0u64;
    let mut timestamps = Vec::with_capacity(1000);
    let mut next = std::collections::HashMap::new();
    while seen < n {
        let tx = db.transaction().map_err(|e| e.to_string())?;
        {
            let mut count = tx
                .prepare_cached(
                    "INSERT INTO counts (word, n) VALUES (?1, 1) \
                     ON CONFLICT (word) DO UPDATE SET n = n + 1",
                )
                .map_err(|e| e.to_string())?;
            let burst = Instant::now();
            while timestamps.len() < 1000 && seen < n && burst.elapsed() < Duration::from_millis(5)
            {
                let Some(m) = c.poll(Duration::from_millis(5)) else {
                    continue;
                };
                let m = m.map_err(|e| e.to_string())?;
                probe.first.get_or_init(Instant::now);
                let text = m.payload().map(String::from_utf8_lossy).unwrap_or_default();
                for word in text.split_whitespace() {
                    count.execute([word]).map_err(|e| e.to_string())?;
                }
                next.insert(m.partition(), m.offset() + 1);
                timestamps.push(m.timestamp().to_millis().unwrap_or(0));
                seen += 1;
            }
            let mut offset = tx
                .prepare_cached(
                    "INSERT INTO offsets (partition, next) VALUES (?1, ?2) \
                     ON CONFLICT (partition) DO UPDATE SET next = excluded.next",
                )
                .map_err(|e| e.to_string())?;
            for (p, o) in next.drain() {
                offset.execute((p, o)).map_err(|e| e.to_string())?;
            }
        }
        tx.commit().map_err(|e| e.to_string())?;
        probe
            .done
            .fetch_add(timestamps.len() as u64, Ordering::Relaxed);
        probe.commit(timestamps.drain(..));
    }
    Ok(())
}

/// What users write today: rdkafka + rusqlite, one transaction per record.
pub(crate) fn hand_loop(
    brokers: &str,
    topic: &str,
    group: &str,
    n: u64,
    probe: &Probe,
    dir: &std::path::Path,
) -> Result<(), String> {
    let c = consumer(brokers, topic, group, &[])?;
    let mut db = counts_db(dir)?;
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
        probe.committed_now(m.timestamp().to_millis());
    }
    Ok(())
}
