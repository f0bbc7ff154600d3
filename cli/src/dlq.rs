//! `weir dlq list | show | redrive`: the dead letters of a topic, and putting them back into
//! their source topic (RabbitMQ's requeue, done on a log).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Serialize;
use weir::state::header;

use crate::error::{Error, Result};
use crate::kafka;

mod nats;
mod rabbitmq;
mod sqs;

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// One line per dead letter: where it is, its source record, reason, attempts, age and
    /// error.
    List(ListArgs),
    /// One dead letter in full, as JSON: key, value and every header.
    Show(ShowArgs),
    /// Produce dead letters back into their source topic, with a `weir.redrive.from` header
    /// naming the dead letter. A dry run unless --execute. What was redriven is remembered (as
    /// the offsets of the consumer group `weir-redrive-<topic>`; on NATS, the acknowledgements
    /// of the stream's durable consumer `weir-redrive`; on RabbitMQ and SQS, redriven letters
    /// leave the dead-letter queues), so a second run redrives only dead letters that came
    /// since.
    Redrive(RedriveArgs),
}

/// The dead-letter topic.
#[derive(Debug, Args)]
pub(crate) struct Topic {
    /// Kafka bootstrap servers, NATS servers (`nats://host:port`), a RabbitMQ server
    /// (`amqp://user:pass@host:port/vhost`) or `sqs://` (with the AWS configuration in the
    /// environment): the workers' `WEIR_BROKERS`.
    #[arg(long)]
    brokers: String,
    /// The dead-letter topic, e.g. `orders.dlq` (a worker's default for `orders`; on SQS
    /// `orders-dlq`).
    #[arg(long)]
    topic: String,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    dlq: Topic,
    /// JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    #[command(flatten)]
    dlq: Topic,
    /// The dead letter's partition in the dead-letter topic (on NATS and RabbitMQ: its lane).
    #[arg(long)]
    partition: i32,
    /// Its offset (on NATS: its stream sequence; on RabbitMQ: its place in the lane's queue,
    /// 0 the head, as `list` shows it).
    #[arg(long)]
    offset: i64,
}

#[derive(Debug, Args)]
pub(crate) struct RedriveArgs {
    #[command(flatten)]
    dlq: Topic,
    /// Produce them; without it, only list what would be redriven.
    #[arg(long)]
    execute: bool,
}

/// How long reading waits without any record or end of partition.
const STALL: Duration = Duration::from_secs(30);

pub(crate) fn run(cmd: &DlqCommand) -> Result<()> {
    let on_nats = |t: &Topic| weir::state::nats::is_nats(&t.brokers);
    let on_rabbitmq = |t: &Topic| weir::state::rabbitmq::is_amqp(&t.brokers);
    let on_sqs = |t: &Topic| weir::state::sqs::is_sqs(&t.brokers);
    match cmd {
        DlqCommand::List(args) if on_sqs(&args.dlq) => sqs::list(args),
        DlqCommand::Show(args) if on_sqs(&args.dlq) => sqs::show(args),
        DlqCommand::Redrive(args) if on_sqs(&args.dlq) => sqs::redrive(args),
        DlqCommand::List(args) if on_rabbitmq(&args.dlq) => rabbitmq::list(args),
        DlqCommand::Show(args) if on_rabbitmq(&args.dlq) => rabbitmq::show(args),
        DlqCommand::Redrive(args) if on_rabbitmq(&args.dlq) => rabbitmq::redrive(args),
        DlqCommand::List(args) if on_nats(&args.dlq) => nats::list(args),
        DlqCommand::Show(args) if on_nats(&args.dlq) => nats::show(args),
        DlqCommand::Redrive(args) if on_nats(&args.dlq) => nats::redrive(args),
        DlqCommand::List(args) => list(args),
        DlqCommand::Show(args) => show(args),
        DlqCommand::Redrive(args) => redrive(args),
    }
}

/// A dead letter as `list` prints it.
#[derive(Debug, Serialize)]
struct Letter {
    partition: i32,
    offset: i64,
    source_topic: Option<String>,
    source_partition: Option<i32>,
    source_offset: Option<i64>,
    reason: Option<String>,
    attempts: Option<u32>,
    failed_at_ms: Option<i64>,
    error: Option<String>,
}

impl Letter {
    fn of(m: &OwnedMessage) -> Self {
        let h = |name: &str| text_header(m, name);
        let n = |name: &str| h(name).and_then(|v| v.parse().ok());
        Self {
            partition: m.partition(),
            offset: m.offset(),
            source_topic: h(header::SOURCE_TOPIC),
            source_partition: n(header::SOURCE_PARTITION).map(|v: i64| v as i32),
            source_offset: n(header::SOURCE_OFFSET),
            reason: h(header::REASON),
            attempts: n(header::ATTEMPTS).map(|v: i64| v as u32),
            failed_at_ms: n(header::FAILED_AT_MS),
            error: h(header::ERROR),
        }
    }
}

/// The last header `name` of `m`, as text.
fn text_header(m: &OwnedMessage, name: &str) -> Option<String> {
    let headers = m.headers()?;
    headers
        .iter()
        .filter(|h| h.key == name)
        .last()
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn consumer(dlq: &Topic, group: Option<&str>) -> Result<BaseConsumer> {
    Ok(kafka::client(&dlq.brokers)?
        .set("group.id", group.unwrap_or("weir-dlq-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("allow.auto.create.topics", "false")
        .create()?)
}

/// The partitions of `topic`; an error naming it when it does not exist.
fn partitions(consumer: &BaseConsumer, dlq: &Topic) -> Result<Vec<i32>> {
    let md = consumer
        .fetch_metadata(Some(&dlq.topic), kafka::TIMEOUT)
        .map_err(|e| Error::Kafka(format!("the brokers {} did not answer: {e}", dlq.brokers)))?;
    let ps: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == dlq.topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if ps.is_empty() {
        return Err(Error::Input(format!(
            "topic {:?} does not exist",
            dlq.topic
        )));
    }
    Ok(ps)
}

/// Reads every partition of the topic from `from` (per partition; the start when absent) to
/// its end.
fn read_to_end(
    consumer: &BaseConsumer,
    dlq: &Topic,
    from: &BTreeMap<i32, i64>,
) -> Result<Vec<OwnedMessage>> {
    let ps = partitions(consumer, dlq)?;
    let mut tpl = TopicPartitionList::new();
    for p in &ps {
        let offset = from
            .get(p)
            .map_or(Offset::Beginning, |o| Offset::Offset(*o));
        tpl.add_partition_offset(&dlq.topic, *p, offset)
            .map_err(|e| Error::Kafka(e.to_string()))?;
    }
    consumer.assign(&tpl)?;
    let mut open: std::collections::BTreeSet<i32> = ps.into_iter().collect();
    let mut out = Vec::new();
    let mut last = Instant::now();
    while !open.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            None if last.elapsed() > STALL => {
                return Err(Error::Kafka(format!(
                    "no answer from {} for {STALL:?} while reading {} (partitions not read to their end: {open:?})",
                    dlq.brokers, dlq.topic
                )))
            }
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
                last = Instant::now();
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => {
                last = Instant::now();
                out.push(m.detach());
            }
        }
    }
    out.sort_by_key(|m| (m.partition(), m.offset()));
    Ok(out)
}

fn list(args: &ListArgs) -> Result<()> {
    let consumer = consumer(&args.dlq, None)?;
    let letters: Vec<Letter> = read_to_end(&consumer, &args.dlq, &BTreeMap::new())?
        .iter()
        .map(Letter::of)
        .collect();
    print_letters(&letters, args.json)
}

fn print_letters(letters: &[Letter], json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        for l in letters {
            let line = serde_json::to_string(l).map_err(std::io::Error::other)?;
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    writeln!(
        out,
        "{:>4} {:>8}  {:<36} {:<20} {:>8} {:>9}  error",
        "part", "offset", "source", "reason", "attempts", "age"
    )?;
    for l in letters {
        let source = match (&l.source_topic, l.source_partition, l.source_offset) {
            (Some(t), Some(p), Some(o)) => format!("{t}/{p}@{o}"),
            _ => "-".to_owned(),
        };
        let age = l
            .failed_at_ms
            .map_or_else(|| "-".to_owned(), |t| format!("{}s", (now - t) / 1000));
        let mut error = l.error.clone().unwrap_or_default().replace('\n', " ");
        if error.chars().count() > 80 {
            error = error.chars().take(77).chain("...".chars()).collect();
        }
        writeln!(
            out,
            "{:>4} {:>8}  {:<36} {:<20} {:>8} {:>9}  {error}",
            l.partition,
            l.offset,
            source,
            l.reason.as_deref().unwrap_or("-"),
            l.attempts.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            age,
        )?;
    }
    writeln!(out, "{} dead letters", letters.len())?;
    Ok(())
}

fn show(args: &ShowArgs) -> Result<()> {
    let consumer = consumer(&args.dlq, None)?;
    if !partitions(&consumer, &args.dlq)?.contains(&args.partition) {
        return Err(Error::Input(format!(
            "{} has no partition {}",
            args.dlq.topic, args.partition
        )));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&args.dlq.topic, args.partition, Offset::Offset(args.offset))
        .map_err(|e| Error::Kafka(e.to_string()))?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + STALL;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) if m.offset() == args.offset => {
                let m = m.detach();
                let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
                let headers: Vec<(String, Option<String>)> = m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| (h.key.to_owned(), text(h.value)))
                            .collect()
                    })
                    .unwrap_or_default();
                let json = serde_json::json!({
                    "partition": m.partition(),
                    "offset": m.offset(),
                    "timestamp_ms": m.timestamp().to_millis(),
                    "key": text(m.key()),
                    "value": text(m.payload()),
                    "headers": headers,
                });
                let pretty = serde_json::to_string_pretty(&json).map_err(std::io::Error::other)?;
                writeln!(std::io::stdout().lock(), "{pretty}")?;
                return Ok(());
            }
            Some(Ok(_)) => break, // compacted away or not a record
        }
    }
    Err(Error::NotFound(format!(
        "no record at {}/{} offset {}",
        args.dlq.topic, args.partition, args.offset
    )))
}

/// How many partitions `topic` has now (0 when it is gone).
fn source_partitions(consumer: &BaseConsumer, topic: &str) -> Result<usize> {
    let md = consumer
        .fetch_metadata(Some(topic), kafka::TIMEOUT)
        .map_err(|e| Error::Kafka(format!("reading {topic}'s partitions: {e}")))?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .sum())
}

fn redrive(args: &RedriveArgs) -> Result<()> {
    let group = format!("weir-redrive-{}", args.dlq.topic);
    let consumer = consumer(&args.dlq, Some(&group))?;
    // Where the last redrive stopped, per partition.
    let ps = partitions(&consumer, &args.dlq)?;
    let mut tpl = TopicPartitionList::new();
    for p in &ps {
        tpl.add_partition(&args.dlq.topic, *p);
    }
    let from: BTreeMap<i32, i64> = consumer
        .committed_offsets(tpl, kafka::TIMEOUT)?
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect();
    let letters = read_to_end(&consumer, &args.dlq, &from)?;
    let list: Vec<Letter> = letters.iter().map(Letter::of).collect();
    if !args.execute {
        print_letters(&list, false)?;
        eprintln!(
            "dry run: {} dead letters would be produced back into their source topics; run again with --execute",
            letters.len()
        );
        return Ok(());
    }
    // Keyed records without a partition of their own go where the workers' outputs and
    // Kafka's Java client put them (murmur2), not where librdkafka's default would (crc32).
    let producer: FutureProducer = kafka::client(&args.dlq.brokers)?
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .create()?;
    // Partition counts of the source topics, asked once each.
    let mut partition_counts: BTreeMap<String, usize> = BTreeMap::new();
    let bar = indicatif::ProgressBar::new(letters.len() as u64);
    let mut done: BTreeMap<i32, i64> = BTreeMap::new();
    let mut skipped = 0;
    for (m, l) in letters.iter().zip(&list) {
        let Some(target) = &l.source_topic else {
            eprintln!(
                "weir: {}/{}@{} has no {} header: not a weir dead letter, skipped",
                args.dlq.topic,
                m.partition(),
                m.offset(),
                header::SOURCE_TOPIC
            );
            skipped += 1;
            done.insert(m.partition(), m.offset() + 1);
            continue;
        };
        // The record's own headers; weir's dead-letter and source headers are replaced by
        // where it comes from (a downstream weir worker must not take it for a re-send).
        let mut headers = OwnedHeaders::new();
        if let Some(hs) = m.headers() {
            for h in hs.iter().filter(|h| !h.key.starts_with("weir.")) {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        let from = format!("{}/{}/{}", args.dlq.topic, m.partition(), m.offset());
        let source = format!(
            "{target}/{}/{}",
            l.source_partition.unwrap_or(-1),
            l.source_offset.unwrap_or(-1)
        );
        headers = headers
            .insert(Header {
                key: header::REDRIVE_FROM,
                value: Some(from.as_bytes()),
            })
            .insert(Header {
                key: header::REDRIVE_SOURCE,
                value: Some(source.as_bytes()),
            });
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(target).headers(headers);
        // Back into the partition it came from, whose store holds its key's state, while the
        // topic still has it; else by the key. With the time it had.
        let count = match partition_counts.get(target) {
            Some(n) => *n,
            None => {
                let n = source_partitions(&consumer, target)?;
                partition_counts.insert(target.clone(), n);
                n
            }
        };
        if let Some(p) = l
            .source_partition
            .filter(|p| usize::try_from(*p).is_ok_and(|p| p < count))
        {
            record = record.partition(p);
        }
        if let Some(ms) = m.timestamp().to_millis() {
            record = record.timestamp(ms);
        }
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        if let Some(v) = m.payload() {
            record = record.payload(v);
        }
        let failed = |e: KafkaError| Error::Kafka(format!("producing {from} to {target}: {e}"));
        let delivery = producer.send_result(record).map_err(|(e, _)| failed(e))?;
        match futures::executor::block_on(delivery) {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(failed(e)),
            Err(_) => {
                return Err(Error::Kafka(format!(
                    "producing {from}: the producer went away"
                )))
            }
        }
        done.insert(m.partition(), m.offset() + 1);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if !done.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for (p, next) in &done {
            tpl.add_partition_offset(&args.dlq.topic, *p, Offset::Offset(*next))
                .map_err(|e| Error::Kafka(e.to_string()))?;
        }
        consumer.commit(&tpl, CommitMode::Sync)?;
    }
    eprintln!(
        "redrove {} dead letters ({skipped} skipped); remembered in the offsets of group {group}",
        letters.len() - skipped
    );
    Ok(())
}
