//! `weir status`: one row per partition store of a group, with Kafka's view of it when the
//! brokers are given.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Serialize;
use weir::state::StoreReader;

use crate::error::{Error, Result};
use crate::kafka;
use crate::locate::GroupDir;

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The workers' state dir (WEIR_STATE_DIR).
    #[arg(long)]
    state_dir: PathBuf,
    /// The consumer group (WEIR_GROUP; a pipeline stage's is `<group>-<stage>`).
    #[arg(long)]
    group: String,
    /// Kafka bootstrap servers, for the committed offsets, high watermarks and lag.
    #[arg(long)]
    brokers: Option<String>,
    /// Only this topic's partitions.
    #[arg(long)]
    topic: Option<String>,
    /// A JSON array of rows instead of a table.
    #[arg(long)]
    json: bool,
}

/// One partition store.
#[derive(Debug, Serialize)]
struct Row {
    topic: String,
    partition: i32,
    /// The next offset to process, as committed with the state.
    next_offset: Option<i64>,
    /// The group's committed offset in Kafka (progress for tools; SQLite's is the truth).
    kafka_committed: Option<i64>,
    high_watermark: Option<i64>,
    /// High watermark minus the next offset (0 when the broker reports less).
    lag: Option<i64>,
    owner_epoch: Option<i64>,
    /// Records committed and not yet produced.
    outbox: u64,
    last_commit_ms: Option<i64>,
    /// The store's size on disk (with its write-ahead log).
    file_bytes: u64,
}

pub(crate) fn run(args: &StatusArgs) -> Result<()> {
    let group = GroupDir::open(&args.state_dir, &args.group)?;
    let topics = match &args.topic {
        Some(t) => vec![t.clone()],
        None => group.topics(),
    };
    let mut rows = Vec::new();
    for topic in &topics {
        for (partition, path) in group.partitions(topic, None)? {
            let progress = StoreReader::open(&path)?.progress(topic, partition)?;
            let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
            let wal = path.with_extension("sqlite-wal");
            rows.push(Row {
                topic: topic.clone(),
                partition,
                next_offset: progress.next_offset,
                kafka_committed: None,
                high_watermark: None,
                lag: None,
                owner_epoch: progress.owner_epoch,
                outbox: progress.outbox,
                last_commit_ms: progress.committed_at_ms,
                file_bytes: size(&path) + size(&wal),
            });
        }
    }
    if let Some(brokers) = &args.brokers {
        add_kafka(&mut rows, brokers, &args.group)?;
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let json = serde_json::to_string_pretty(&rows).map_err(std::io::Error::other)?;
        writeln!(out, "{json}")?;
    } else {
        table(&mut out, &rows)?;
    }
    Ok(())
}

/// Fills in the group's committed offsets and the high watermarks.
fn add_kafka(rows: &mut [Row], brokers: &str, group: &str) -> Result<()> {
    let consumer: BaseConsumer = kafka::client(brokers)?
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    consumer
        .fetch_metadata(None, kafka::TIMEOUT)
        .map_err(|e| Error::Kafka(format!("the brokers {brokers} did not answer: {e}")))?;
    let mut tpl = TopicPartitionList::new();
    for r in rows.iter() {
        tpl.add_partition(&r.topic, r.partition);
    }
    let committed: BTreeMap<(String, i32), i64> = consumer
        .committed_offsets(tpl, kafka::TIMEOUT)?
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
            _ => None,
        })
        .collect();
    for r in rows.iter_mut() {
        r.kafka_committed = committed.get(&(r.topic.clone(), r.partition)).copied();
        let (_, high) = consumer.fetch_watermarks(&r.topic, r.partition, kafka::TIMEOUT)?;
        r.high_watermark = Some(high);
        r.lag = r.next_offset.map(|n| (high - n).max(0)).or(Some(high));
    }
    Ok(())
}

fn table(out: &mut impl Write, rows: &[Row]) -> std::io::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let opt = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    writeln!(
        out,
        "{:<30} {:>5} {:>12} {:>12} {:>12} {:>10} {:>6} {:>7} {:>12} {:>10}",
        "topic", "part", "next", "kafka", "high", "lag", "epoch", "outbox", "last commit", "size"
    )?;
    for r in rows {
        let age = r
            .last_commit_ms
            .map_or_else(|| "-".to_owned(), |t| format!("{}s ago", (now - t) / 1000));
        writeln!(
            out,
            "{:<30} {:>5} {:>12} {:>12} {:>12} {:>10} {:>6} {:>7} {:>12} {:>10}",
            r.topic,
            r.partition,
            opt(r.next_offset),
            opt(r.kafka_committed),
            opt(r.high_watermark),
            opt(r.lag),
            opt(r.owner_epoch),
            r.outbox,
            age,
            format!("{} KiB", r.file_bytes / 1024),
        )?;
    }
    Ok(())
}
