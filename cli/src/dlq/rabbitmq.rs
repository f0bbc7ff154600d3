//! `weir dlq` on RabbitMQ: a dead-letter topic `T.dlq` is the exchange `T.dlq` and its lane
//! queues `T.dlq.0, T.dlq.1, ...`. A letter's "partition" is its lane, its "offset" its place
//! in the lane's queue when read (0: the head). Reading takes a lane's messages without
//! acknowledging them and gives them back (`list`, `show`). `redrive` publishes each letter
//! back to its source topic's exchange under its key, so the consistent-hash exchange puts it
//! in its key's lane, waits for the broker's confirm, then acknowledges it: what was redriven
//! leaves the dead-letter queue, and a second run finds only letters that came since.
//!
//! The broker's own dead letters (a message past the lane's delivery limit, `x-death`) are
//! listed and redriven too: their source is the exchange `x-death` names.

use std::io::Write as _;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use weir::state::header;
use weir::state::rabbitmq::{connect, header_bytes, lane_queue};

use super::{print_letters, Letter, ListArgs, RedriveArgs, ShowArgs, Topic, STALL};
use crate::error::{Error, Result};
use crate::nats::runtime;

fn failed(e: impl std::fmt::Display) -> Error {
    Error::RabbitMq(e.to_string())
}

/// The server, connected; an error naming it when it does not answer.
async fn open(dlq: &Topic) -> Result<Connection> {
    connect(&dlq.brokers, STALL).await.map_err(failed)
}

/// The messages ready in each lane queue of `topic` (`T.0`, `T.1`, ... until one is missing).
async fn lane_depths(connection: &Connection, topic: &str) -> Result<Vec<u32>> {
    let mut depths = Vec::new();
    loop {
        // A failed passive declare closes its channel: one channel per question.
        let channel = connection.create_channel().await.map_err(failed)?;
        let queue = lane_queue(topic, depths.len() as i32);
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match channel
            .queue_declare(&queue, passive, FieldTable::default())
            .await
        {
            Ok(q) => depths.push(q.message_count()),
            Err(_) if depths.is_empty() => {
                return Err(Error::Input(format!(
                    "topic {topic:?} has no lane queue {queue} on this server"
                )))
            }
            Err(_) => return Ok(depths),
        }
        let _ = channel.close(200, "done").await;
    }
}

/// Takes up to `count` messages of `queue` unacknowledged, on a channel of their own: they go
/// back to the queue when the channel closes, unless acknowledged on it first.
async fn take(
    connection: &Connection,
    queue: &str,
    count: u32,
) -> Result<(Channel, Vec<Delivery>)> {
    let channel = connection.create_channel().await.map_err(failed)?;
    let mut taken = Vec::new();
    if count == 0 {
        return Ok((channel, taken));
    }
    let mut consumer = channel
        .basic_consume(
            queue,
            "weir-dlq",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(failed)?;
    while taken.len() < count as usize {
        let next = tokio::time::timeout(STALL, consumer.next())
            .await
            .map_err(|_| {
                Error::RabbitMq(format!(
                    "{} of {count} messages of {queue} came within {STALL:?}: is another consumer active on it (single active consumer)?",
                    taken.len()
                ))
            })?
            .ok_or_else(|| Error::RabbitMq(format!("the consumer of {queue} ended")))?
            .map_err(failed)?;
        taken.push(next);
    }
    Ok((channel, taken))
}

/// Header `name` of `d` as text.
fn text_header(d: &Delivery, name: &str) -> Option<String> {
    let value = d.properties.headers().as_ref()?.inner().get(name)?;
    Some(String::from_utf8_lossy(&header_bytes(value)).into_owned())
}

/// Field `name` of the first `x-death` entry of `d`: where the broker dead-lettered it from.
fn death(d: &Delivery, name: &str) -> Option<String> {
    let Some(AMQPValue::FieldArray(deaths)) =
        d.properties.headers().as_ref()?.inner().get("x-death")
    else {
        return None;
    };
    let Some(AMQPValue::FieldTable(first)) = deaths.as_slice().first() else {
        return None;
    };
    let value = first.inner().get(name)?;
    Some(String::from_utf8_lossy(&header_bytes(value)).into_owned())
}

fn letter(lane: i32, index: usize, d: &Delivery) -> Letter {
    let h = |name: &str| text_header(d, name);
    let n = |name: &str| h(name).and_then(|v| v.parse::<i64>().ok());
    // The broker's dead letters name the lane queue `T.<lane>` they came from.
    let death_lane = || {
        death(d, "queue").and_then(|q| q.rsplit_once('.').and_then(|(_, l)| l.parse::<i32>().ok()))
    };
    Letter {
        partition: lane,
        offset: index as i64,
        source_topic: h(header::SOURCE_TOPIC).or_else(|| death(d, "exchange")),
        source_partition: n(header::SOURCE_PARTITION)
            .map(|v| v as i32)
            .or_else(death_lane),
        source_offset: n(header::SOURCE_OFFSET),
        reason: h(header::REASON).or_else(|| death(d, "reason")),
        // Not `x-delivery-count`: reading the queue (as `list` does) counts there too.
        attempts: n(header::ATTEMPTS).map(|v| v as u32),
        failed_at_ms: n(header::FAILED_AT_MS),
        error: h(header::ERROR),
    }
}

/// Every letter of the dead-letter topic, lane by lane, each lane's queue given back whole.
async fn read_all(dlq: &Topic) -> Result<Vec<Letter>> {
    let connection = open(dlq).await?;
    let mut letters = Vec::new();
    for (lane, depth) in lane_depths(&connection, &dlq.topic)
        .await?
        .into_iter()
        .enumerate()
    {
        let lane = lane as i32;
        let (channel, taken) = take(&connection, &lane_queue(&dlq.topic, lane), depth).await?;
        letters.extend(taken.iter().enumerate().map(|(i, d)| letter(lane, i, d)));
        let _ = channel.close(200, "listed").await;
    }
    let _ = connection.close(200, "done").await;
    Ok(letters)
}

pub(super) fn list(args: &ListArgs) -> Result<()> {
    let letters = runtime()?.block_on(read_all(&args.dlq))?;
    print_letters(&letters, args.json)
}

pub(super) fn show(args: &ShowArgs) -> Result<()> {
    let json = runtime()?.block_on(async {
        let connection = open(&args.dlq).await?;
        let depths = lane_depths(&connection, &args.dlq.topic).await?;
        let depth = usize::try_from(args.partition)
            .ok()
            .and_then(|lane| depths.get(lane).copied())
            .ok_or_else(|| {
                Error::Input(format!(
                    "{} has no lane {} (it has {})",
                    args.dlq.topic,
                    args.partition,
                    depths.len()
                ))
            })?;
        let index = usize::try_from(args.offset)
            .ok()
            .filter(|i| *i < depth as usize)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no letter at {}/{} offset {}: its queue holds {depth}",
                    args.dlq.topic, args.partition, args.offset
                ))
            })?;
        let queue = lane_queue(&args.dlq.topic, args.partition);
        let (channel, taken) = take(&connection, &queue, index as u32 + 1).await?;
        let d = &taken[index];
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let headers: Vec<(String, Option<String>)> = d
            .properties
            .headers()
            .as_ref()
            .map(|h| {
                h.inner()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), Some(text(&header_bytes(v)))))
                    .collect()
            })
            .unwrap_or_default();
        let json = serde_json::json!({
            "partition": args.partition,
            "offset": args.offset,
            "timestamp_ms": d.properties.timestamp().map(|s| (s as i64).saturating_mul(1000)),
            "key": text(d.routing_key.as_str().as_bytes()),
            "value": text(&d.data),
            "headers": headers,
            "message_id": d.properties.message_id().as_ref().map(|m| m.as_str().to_owned()),
        });
        let _ = channel.close(200, "shown").await;
        let _ = connection.close(200, "done").await;
        Ok::<_, Error>(json)
    })?;
    let pretty = serde_json::to_string_pretty(&json).map_err(std::io::Error::other)?;
    writeln!(std::io::stdout().lock(), "{pretty}")?;
    Ok(())
}

pub(super) fn redrive(args: &RedriveArgs) -> Result<()> {
    if !args.execute {
        let letters = runtime()?.block_on(read_all(&args.dlq))?;
        print_letters(&letters, false)?;
        eprintln!(
            "dry run: {} dead letters would be published back into their source topics; run again with --execute",
            letters.len()
        );
        return Ok(());
    }
    runtime()?.block_on(redrive_all(&args.dlq))
}

async fn redrive_all(dlq: &Topic) -> Result<()> {
    let connection = open(dlq).await?;
    let publisher = connection.create_channel().await.map_err(failed)?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(failed)?;
    let depths = lane_depths(&connection, &dlq.topic).await?;
    let bar = indicatif::ProgressBar::new(depths.iter().map(|d| u64::from(*d)).sum());
    let (mut redriven, mut skipped) = (0, 0);
    // A run cut short leaves each letter not yet acknowledged in its queue: published and not
    // acknowledged, it is published again by the next run (at least once).
    let run_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    for (lane, depth) in depths.into_iter().enumerate() {
        let lane = lane as i32;
        let (channel, taken) = take(&connection, &lane_queue(&dlq.topic, lane), depth).await?;
        for (i, d) in taken.iter().enumerate() {
            let l = letter(lane, i, d);
            let Some(target) = &l.source_topic else {
                eprintln!(
                    "weir: {}/{lane} offset {i} has neither a {} header nor an x-death: not a dead letter of weir's or the broker's, left in the queue",
                    dlq.topic,
                    header::SOURCE_TOPIC
                );
                skipped += 1;
                continue;
            };
            // The record's own headers; weir's dead-letter and source headers and the broker's
            // `x-` ones are replaced by where it comes from (a downstream weir worker must not
            // take it for a re-send).
            let mut headers = FieldTable::default();
            for (k, v) in d
                .properties
                .headers()
                .as_ref()
                .map(|h| h.inner().iter())
                .into_iter()
                .flatten()
            {
                if !k.as_str().starts_with("weir.") && !k.as_str().starts_with("x-") {
                    headers.insert(k.clone(), v.clone());
                }
            }
            let from_id = d
                .properties
                .message_id()
                .as_ref()
                .map_or_else(|| format!("{run_ms}/{i}"), |m| m.as_str().to_owned());
            let from = format!("{}/{lane}/{from_id}", dlq.topic);
            let source = format!(
                "{target}/{}/{}",
                l.source_partition.unwrap_or(-1),
                l.source_offset.unwrap_or(-1)
            );
            let text = |s: &str| AMQPValue::LongString(LongString::from(s));
            headers.insert(header::REDRIVE_FROM.into(), text(&from));
            headers.insert(header::REDRIVE_SOURCE.into(), text(&source));
            let mut properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers)
                .with_message_id(ShortString::from(format!("redrive/{from}")));
            if let Some(ts) = d.properties.timestamp() {
                properties = properties.with_timestamp(*ts);
            }
            let confirm = publisher
                .basic_publish(
                    target,
                    d.routing_key.as_str(),
                    // Returned when no queue takes it, rather than dropped.
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &d.data,
                    properties,
                )
                .await
                .map_err(|e| Error::RabbitMq(format!("publishing {from} to {target}: {e}")))?
                .await
                .map_err(|e| Error::RabbitMq(format!("publishing {from} to {target}: {e}")))?;
            match confirm {
                Confirmation::Ack(None) | Confirmation::NotRequested => {}
                Confirmation::Ack(Some(returned)) => {
                    return Err(Error::RabbitMq(format!(
                    "publishing {from} to {target}: no queue took it ({}); it stays a dead letter",
                    returned.reply_text
                )))
                }
                Confirmation::Nack(_) => {
                    return Err(Error::RabbitMq(format!(
                    "publishing {from} to {target}: the broker refused it; it stays a dead letter"
                )))
                }
            }
            d.acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(|e| Error::RabbitMq(format!("acknowledging {from}: {e}")))?;
            redriven += 1;
            bar.inc(1);
        }
        let _ = channel.close(200, "redriven").await;
    }
    bar.finish_and_clear();
    let _ = connection.close(200, "done").await;
    eprintln!(
        "redrove {redriven} dead letters ({skipped} skipped, left in the queue); redriven letters left the dead-letter queues"
    );
    Ok(())
}
