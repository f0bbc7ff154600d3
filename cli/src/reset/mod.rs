//! `weir reset`: moves a stopped group to another position, in its partition stores and in
//! Kafka. A fold cannot un-apply records, so each store starts over empty at the new
//! position, as Kafka Streams' reset tool has applications wipe their local state; the
//! changelog learns the same (a tombstone per key, then the new offset), so a restore on
//! another machine does not bring the old state back. On RabbitMQ, a stream topic's stores
//! move (`rabbitmq`): a queue cannot be rewound.

mod rabbitmq;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use weir::state::{changelog_topic, StoreReader};
use weir_state::PartitionStore;

use crate::error::{Error, Result};
use crate::kafka;
use crate::locate::GroupDir;

#[derive(Debug, Args)]
pub(crate) struct ResetArgs {
    /// Kafka bootstrap servers, or a RabbitMQ server (`amqp://...`) for stream topics.
    #[arg(long)]
    brokers: String,
    /// The workers' state dir (WEIR_STATE_DIR).
    #[arg(long)]
    state_dir: PathBuf,
    /// The consumer group (a pipeline stage's is `<group>-<stage>`); it must have no live
    /// members.
    #[arg(long)]
    group: String,
    /// Only this topic's partitions (default: every topic the group has stores of).
    #[arg(long)]
    topic: Option<String>,
    /// Where to: `earliest`, `latest`, an offset (`1234`, every partition, within what the
    /// log holds), or a time, as ms since the epoch with `ms` (`1795687200000ms`) or UTC
    /// (`2026-11-26T10:00:00Z`): each partition's first record at or after it.
    #[arg(long)]
    to: String,
    /// Do it; without it, only show what would change.
    #[arg(long)]
    execute: bool,
}

/// Where to move the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Earliest,
    Latest,
    Offset(i64),
    /// Ms since the epoch.
    Time(i64),
}

/// One partition store's move.
struct Move {
    topic: String,
    partition: i32,
    path: PathBuf,
    from: Option<i64>,
    to: i64,
}

impl Move {
    /// The move of `topic`'s store of lane `partition` at `path`, from its position to `to`.
    fn of(topic: &str, partition: i32, path: PathBuf, to: i64) -> Result<Self> {
        let from = StoreReader::open(&path)?.next_offset(topic, partition)?;
        Ok(Self {
            topic: topic.to_owned(),
            partition,
            path,
            from,
            to,
        })
    }
}

pub(crate) fn run(args: &ResetArgs) -> Result<()> {
    let target = parse_target(&args.to)?;
    let group = GroupDir::open(&args.state_dir, &args.group)?;
    let topics = match &args.topic {
        Some(t) => {
            group.partitions(t, None)?;
            vec![t.clone()]
        }
        None => group.topics(),
    };
    if weir::state::rabbitmq::is_amqp(&args.brokers) {
        return rabbitmq::run(args, target, &group, &topics);
    }
    // Not subscribed: its commit is a "simple" one, which a broker refuses while the group
    // has members.
    let consumer: BaseConsumer = kafka::client(&args.brokers)?
        .set("group.id", &args.group)
        .set("enable.auto.commit", "false")
        .create()?;
    consumer
        .fetch_metadata(None, kafka::TIMEOUT)
        .map_err(|e| Error::Kafka(format!("the brokers {} did not answer: {e}", args.brokers)))?;
    check_no_members(&consumer, &args.group)?;
    let plan = plan(&consumer, &group, &topics, target)?;
    let changelogs: BTreeMap<&str, String> = topics
        .iter()
        .map(|t| (t.as_str(), changelog_topic(&args.group, t)))
        .filter(|(_, c)| topic_exists(&consumer, c))
        .collect();

    if !show(args, &plan, changelogs.values()) {
        return Ok(());
    }

    // Kafka first: a broker refuses a commit from outside the group while it has members
    // (also those the check above did not see: a broker may list groups without them, as
    // tansu does), and then nothing has changed yet.
    let mut commits = TopicPartitionList::new();
    for m in &plan {
        commits
            .add_partition_offset(&m.topic, m.partition, Offset::Offset(m.to))
            .map_err(|e| Error::Kafka(e.to_string()))?;
    }
    consumer
        .commit(&commits, CommitMode::Sync)
        .map_err(|e| match e.rdkafka_error_code() {
            Some(
                RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::RebalanceInProgress,
            ) => Error::Refused(format!(
                "group {:?} has live members (the broker refused the reset's commit: {e}); stop its workers first. Nothing was changed",
                args.group
            )),
            _ => Error::Kafka(format!("committing the new offsets: {e}")),
        })?;

    let producer = weir::state::OutboxProducer::connect(&args.brokers)
        .map_err(|e| Error::Kafka(format!("starting the producer: {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Kafka(format!("starting the producer's runtime: {e}")))?;
    rewind(&plan, &changelogs, Error::Kafka, |store| {
        runtime.block_on(producer.flush(store))
    })
}

/// Prints what the reset does (or would do); whether to go on (`--execute`).
fn show<'c>(args: &ResetArgs, plan: &[Move], changelogs: impl Iterator<Item = &'c String>) -> bool {
    eprintln!(
        "{} group {:?} to {}:",
        if args.execute {
            "resetting"
        } else {
            "dry run: would reset"
        },
        args.group,
        args.to
    );
    for m in plan {
        let from = m.from.map_or_else(|| "-".to_owned(), |n| n.to_string());
        println!(
            "{}/{}: next offset {from} -> {}",
            m.topic, m.partition, m.to
        );
    }
    eprintln!(
        "their stores start over empty at the new position: a store holds the result of every \
         record before it, which cannot be taken apart (to rebuild state from the whole log, \
         reset to earliest)"
    );
    for c in changelogs {
        eprintln!("changelog {c}: a tombstone per key and the new offset, so that restores agree");
    }
    if !args.execute {
        eprintln!("nothing changed; run again with --execute");
    }
    args.execute
}

/// Moves each store of `plan` (empty, at its new position, telling its topic's changelog in
/// `changelogs`) and sends its outbox with `flush` (whose failure is the broker's error).
fn rewind(
    plan: &[Move],
    changelogs: &BTreeMap<&str, String>,
    broker_error: fn(String) -> Error,
    flush: impl Fn(Arc<PartitionStore>) -> std::result::Result<usize, String>,
) -> Result<()> {
    let bar = indicatif::ProgressBar::new(plan.len() as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "resetting {pos}/{len} partitions [{bar:30}] {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    for m in plan {
        let store = Arc::new(PartitionStore::open(&m.path)?);
        let changelog = changelogs.get(m.topic.as_str()).map(String::as_str);
        store.rewind(&m.topic, m.partition, m.to, changelog)?;
        // The tombstones and the offset (and any records still waiting from before) go out
        // now, not when a worker next opens this file: the partition may restart elsewhere.
        flush(store).map_err(|e| {
            broker_error(format!(
                "{}/{} was reset, but its outbox was not sent ({e}); a worker starting here sends it, or run the reset again",
                m.topic, m.partition
            ))
        })?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    eprintln!("reset {} partitions", plan.len());
    Ok(())
}

/// Refuses (exit 5) unless the broker describes `group` as empty or unknown. (Describing goes
/// through the broker's list of groups; the commit that follows is the check every broker
/// makes.)
fn check_no_members(consumer: &BaseConsumer, group: &str) -> Result<()> {
    let list = consumer
        .fetch_group_list(Some(group), kafka::TIMEOUT)
        .map_err(|e| {
            Error::Kafka(format!(
                "the brokers did not describe group {group:?} ({e}), so the reset cannot tell whether it has live members; nothing was changed"
            ))
        })?;
    for g in list.groups().iter().filter(|g| g.name() == group) {
        if !matches!(g.state(), "Empty" | "Dead" | "") {
            return Err(Error::Refused(format!(
                "group {group:?} has live members (state {}{}): a running worker would overwrite the reset with its next commit; stop its workers first. Nothing was changed",
                g.state(),
                match g.members().len() {
                    0 => String::new(),
                    n => format!(", {n} members"),
                }
            )));
        }
    }
    Ok(())
}

/// Each partition store's move, with the target resolved against the log.
fn plan(
    consumer: &BaseConsumer,
    group: &GroupDir,
    topics: &[String],
    target: Target,
) -> Result<Vec<Move>> {
    let mut plan = Vec::new();
    for topic in topics {
        let files = group.partitions(topic, None)?;
        let at_time: BTreeMap<i32, Offset> = match target {
            Target::Time(ms) => {
                let mut tpl = TopicPartitionList::new();
                for (p, _) in &files {
                    tpl.add_partition_offset(topic, *p, Offset::Offset(ms))
                        .map_err(|e| Error::Kafka(e.to_string()))?;
                }
                consumer
                    .offsets_for_times(tpl, kafka::TIMEOUT)?
                    .elements()
                    .iter()
                    .map(|e| (e.partition(), e.offset()))
                    .collect()
            }
            _ => BTreeMap::new(),
        };
        for (partition, path) in files {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, kafka::TIMEOUT)
                .map_err(|e| {
                    Error::Kafka(format!(
                        "{topic}/{partition}: no offsets from the brokers ({e})"
                    ))
                })?;
            let to = match target {
                Target::Earliest => low,
                Target::Latest => high,
                Target::Offset(o) => o.clamp(low, high.max(low)),
                Target::Time(_) => match at_time.get(&partition) {
                    Some(Offset::Offset(o)) => *o,
                    // Nothing at or after that time yet.
                    _ => high,
                },
            };
            plan.push(Move::of(topic, partition, path, to)?);
        }
    }
    Ok(plan)
}

fn topic_exists(consumer: &BaseConsumer, topic: &str) -> bool {
    consumer
        .fetch_metadata(Some(topic), kafka::TIMEOUT)
        .is_ok_and(|md| {
            md.topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        })
}

fn parse_target(to: &str) -> Result<Target> {
    let bad = || {
        Error::Input(format!(
            "--to {to:?}: expected earliest, latest, an offset, ms since the epoch followed by `ms`, or a UTC time like 2026-11-26T10:00:00Z"
        ))
    };
    Ok(match to {
        "earliest" => Target::Earliest,
        "latest" => Target::Latest,
        t if t.ends_with("ms") => {
            Target::Time(t.trim_end_matches("ms").parse().map_err(|_| bad())?)
        }
        t if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => {
            Target::Offset(t.parse().map_err(|_| bad())?)
        }
        t => Target::Time(utc_ms(t).ok_or_else(bad)?),
    })
}

/// `YYYY-MM-DDTHH:MM:SS[Z]` as ms since the epoch (UTC).
fn utc_ms(t: &str) -> Option<i64> {
    let t = t.strip_suffix('Z').unwrap_or(t);
    let (date, time) = t.split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let h: Vec<i64> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let ([y, m, day], [hh, mm, ss]) = (d.as_slice(), h.as_slice()) else {
        return None;
    };
    if !(1..=12).contains(m) || !(1..=31).contains(day) || *hh > 23 || *mm > 59 || *ss > 59 {
        return None;
    }
    // Days since the epoch of a proleptic Gregorian date (the civil-from-days inverse).
    let y = if *m <= 2 { y - 1 } else { *y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(parse_target("earliest").ok(), Some(Target::Earliest));
        assert_eq!(parse_target("latest").ok(), Some(Target::Latest));
        assert_eq!(parse_target("42").ok(), Some(Target::Offset(42)));
        assert_eq!(parse_target("1000ms").ok(), Some(Target::Time(1000)));
        assert_eq!(
            parse_target("1970-01-02T00:00:01Z").ok(),
            Some(Target::Time(86_401_000))
        );
        assert_eq!(
            parse_target("2026-11-26T10:00:00Z").ok(),
            Some(Target::Time(1_795_687_200_000))
        );
        assert_eq!(
            parse_target("2024-02-29T23:59:59").ok(),
            Some(Target::Time(1_709_251_199_000))
        );
        for bad in [
            "yesterday",
            "",
            "ms",
            "-5",
            "2026-13-01T00:00:00Z",
            "2026-11-26",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }
}
