//! `weir status`: one row per partition store of a group, with the broker's view of it when
//! the brokers are given (Kafka's committed offsets and high watermarks; on NATS, each lane
//! consumer's acknowledgement floor and the messages it holds; on RabbitMQ, the messages
//! waiting in each lane's queue; on SQS, the messages waiting in each queue).

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
    /// Kafka bootstrap servers, for the committed offsets, high watermarks and lag; NATS
    /// servers (`nats://host:port`), for each lane consumer's acknowledged position and lag;
    /// a RabbitMQ server (`amqp://...`), for the messages waiting in each lane's queue; or
    /// `sqs://` (the AWS configuration in the environment), for the messages waiting in each
    /// queue.
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
    /// On NATS: the sequence after the lane consumer's acknowledgement floor (progress for
    /// tools, as `kafka_committed` on Kafka).
    #[serde(skip_serializing_if = "Option::is_none")]
    nats_acked: Option<i64>,
    high_watermark: Option<i64>,
    /// High watermark minus the next offset (0 when the broker reports less); on NATS, the
    /// messages the lane's consumer holds that the group has not acknowledged (waiting, and
    /// delivered unacknowledged); on RabbitMQ and SQS, the messages ready in the lane's queue.
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
                nats_acked: None,
                high_watermark: None,
                lag: None,
                owner_epoch: progress.owner_epoch,
                outbox: progress.outbox,
                last_commit_ms: progress.committed_at_ms,
                file_bytes: size(&path) + size(&wal),
            });
        }
    }
    match &args.brokers {
        Some(servers) if weir::state::nats::is_nats(servers) => {
            add_nats(&mut rows, servers, &args.group)?
        }
        Some(url) if weir::state::rabbitmq::is_amqp(url) => add_rabbitmq(&mut rows, url)?,
        Some(url) if weir::state::sqs::is_sqs(url) => add_sqs(&mut rows)?,
        Some(brokers) => add_kafka(&mut rows, brokers, &args.group)?,
        None => {}
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

/// Fills in each lane consumer's acknowledgement floor and the messages it holds (a lane
/// whose consumer does not exist keeps `-`).
fn add_nats(rows: &mut [Row], servers: &str, group: &str) -> Result<()> {
    use weir::state::nats::{consumer_name, stream_of};
    crate::nats::runtime()?.block_on(async {
        let js = crate::nats::connect(servers).await?;
        for r in rows.iter_mut() {
            let stream = stream_of(&r.topic);
            let Ok(s) = js.get_stream(&stream).await else {
                continue;
            };
            let Ok(info) = s.consumer_info(consumer_name(group, r.partition)).await else {
                continue;
            };
            r.nats_acked = Some(info.ack_floor.stream_sequence as i64 + 1);
            r.lag = Some((info.num_pending + info.num_ack_pending as u64) as i64);
        }
        Ok(())
    })
}

/// Fills in the messages ready in each lane's queue (a lane whose queue does not exist keeps
/// `-`).
fn add_rabbitmq(rows: &mut [Row], url: &str) -> Result<()> {
    use weir::state::rabbitmq::{lane_queue, queue_depths};
    let queues: Vec<String> = rows
        .iter()
        .map(|r| lane_queue(&r.topic, r.partition))
        .collect();
    let depths = crate::nats::runtime()?
        .block_on(queue_depths(url, &queues, crate::nats::STALL))
        .map_err(|e| Error::RabbitMq(e.to_string()))?;
    for (r, depth) in rows.iter_mut().zip(depths) {
        r.lag = depth.map(|d| d as i64);
    }
    Ok(())
}

/// Fills in the messages waiting in each topic's queue (a queue that does not exist keeps
/// `-`).
fn add_sqs(rows: &mut [Row]) -> Result<()> {
    use weir::state::sqs::{connect, queue_counts};
    crate::nats::runtime()?.block_on(async {
        let client = connect(crate::nats::STALL)
            .await
            .map_err(|e| Error::Sqs(e.to_string()))?;
        for r in rows.iter_mut() {
            let counts = queue_counts(&client, &r.topic).await.map_err(Error::Sqs)?;
            r.lag = counts.map(|(visible, _)| visible);
        }
        Ok(())
    })
}

fn table(out: &mut impl Write, rows: &[Row]) -> std::io::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let opt = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    writeln!(
        out,
        "{:<30} {:>5} {:>12} {:>12} {:>12} {:>10} {:>6} {:>7} {:>12} {:>10}",
        "topic", "part", "next", "broker", "high", "lag", "epoch", "outbox", "last commit", "size"
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
            opt(r.kafka_committed.or(r.nats_acked)),
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
