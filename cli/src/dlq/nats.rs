//! `weir dlq` on NATS JetStream: a dead-letter topic is a stream (`orders.dlq` is the stream
//! `orders_dlq`), a letter's "partition" its lane and its "offset" its stream sequence.
//! Redrive publishes each letter back to its source topic under its key (so the source
//! stream puts it in the lane of its key) and remembers how far it got as the acknowledgement
//! floor of the stream's durable consumer `weir-redrive`.

use std::io::Write as _;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream::Stream};
use async_nats::{HeaderMap, Message};
use futures::StreamExt;
use weir::state::header;
use weir::state::nats::{lane_and_key, publish_subject, stream_of};

use super::{print_letters, Letter, ListArgs, RedriveArgs, ShowArgs, Topic, STALL};
use crate::error::{Error, Result};
use crate::nats::{connect, failed, runtime};

/// The durable consumer whose acknowledgements say what was redriven.
const REDRIVE_CONSUMER: &str = "weir-redrive";

/// The dead-letter stream, connected.
async fn open(dlq: &Topic) -> Result<(jetstream::Context, Stream)> {
    let js = connect(&dlq.brokers).await?;
    let name = stream_of(&dlq.topic);
    let stream = js
        .get_stream(&name)
        .await
        .map_err(|e| Error::Input(format!("no stream {name} (of {}): {e}", dlq.topic)))?;
    Ok((js, stream))
}

/// The text of header `name` of `m`, if any.
fn text_header(m: &Message, name: &str) -> Option<String> {
    m.headers
        .as_ref()
        .and_then(|h| h.get_last(name))
        .map(|v| v.as_str().to_owned())
}

fn letter(stream: &str, m: &Message, seq: i64) -> Letter {
    let h = |name: &str| text_header(m, name);
    let n = |name: &str| h(name).and_then(|v| v.parse::<i64>().ok());
    let lane = lane_and_key(stream, &m.subject).and_then(|(lane, _)| lane);
    Letter {
        partition: lane.unwrap_or(0),
        offset: seq,
        source_topic: h(header::SOURCE_TOPIC),
        source_partition: n(header::SOURCE_PARTITION).map(|v| v as i32),
        source_offset: n(header::SOURCE_OFFSET),
        reason: h(header::REASON),
        attempts: n(header::ATTEMPTS).map(|v| v as u32),
        failed_at_ms: n(header::FAILED_AT_MS),
        error: h(header::ERROR),
    }
}

/// The stream's messages after sequence `after`, up to its last one when reading starts.
async fn read_after(stream: &mut Stream, after: u64) -> Result<Vec<(u64, Message)>> {
    let last = stream.info().await.map_err(failed)?.state.last_sequence;
    if last <= after {
        return Ok(Vec::new());
    }
    let ordered = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            ..Default::default()
        })
        .await
        .map_err(failed)?;
    let mut messages = ordered.messages().await.map_err(failed)?;
    let mut out = Vec::new();
    loop {
        let m = tokio::time::timeout(STALL, messages.next())
            .await
            .map_err(|_| Error::Nats(format!("no message for {STALL:?} before the stream's end")))?
            .ok_or_else(|| Error::Nats("the stream's messages ended".into()))?
            .map_err(failed)?;
        let info = m.info().map_err(failed)?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        out.push((seq, m.message));
        if seq >= last || pending == 0 {
            return Ok(out);
        }
    }
}

pub(super) fn list(args: &ListArgs) -> Result<()> {
    let letters = runtime()?.block_on(async {
        let (_, mut stream) = open(&args.dlq).await?;
        let name = stream_of(&args.dlq.topic);
        let read = read_after(&mut stream, 0).await?;
        Ok::<_, Error>(
            read.iter()
                .map(|(seq, m)| letter(&name, m, *seq as i64))
                .collect::<Vec<_>>(),
        )
    })?;
    print_letters(&letters, args.json)
}

pub(super) fn show(args: &ShowArgs) -> Result<()> {
    let json = runtime()?.block_on(async {
        let (_, stream) = open(&args.dlq).await?;
        let name = stream_of(&args.dlq.topic);
        let seq = u64::try_from(args.offset)
            .map_err(|_| Error::Input(format!("no sequence {}", args.offset)))?;
        let m = stream.get_raw_message(seq).await.map_err(|e| {
            Error::NotFound(format!(
                "no record at {} sequence {}: {e}",
                args.dlq.topic, args.offset
            ))
        })?;
        let (lane, key) = lane_and_key(&name, &m.subject).unwrap_or((None, None));
        if lane.unwrap_or(0) != args.partition {
            return Err(Error::NotFound(format!(
                "{} sequence {} is in lane {}, not {}",
                args.dlq.topic,
                args.offset,
                lane.unwrap_or(0),
                args.partition
            )));
        }
        let headers: Vec<(String, Option<String>)> = m
            .headers
            .iter()
            .flat_map(|(name, values)| {
                let name: &str = name.as_ref();
                values
                    .iter()
                    .map(move |v| (name.to_owned(), Some(v.as_str().to_owned())))
            })
            .collect();
        Ok(serde_json::json!({
            "partition": lane.unwrap_or(0),
            "offset": args.offset,
            "timestamp_ms": m.time.unix_timestamp_nanos() / 1_000_000,
            "key": key.map(|k| String::from_utf8_lossy(&k).into_owned()),
            "value": String::from_utf8_lossy(&m.payload),
            "headers": headers,
        }))
    })?;
    let pretty = serde_json::to_string_pretty(&json).map_err(std::io::Error::other)?;
    writeln!(std::io::stdout().lock(), "{pretty}")?;
    Ok(())
}

pub(super) fn redrive(args: &RedriveArgs) -> Result<()> {
    runtime()?.block_on(redrive_async(args))
}

async fn redrive_async(args: &RedriveArgs) -> Result<()> {
    let (js, mut stream) = open(&args.dlq).await?;
    let name = stream_of(&args.dlq.topic);
    let durable = stream
        .get_or_create_consumer(
            REDRIVE_CONSUMER,
            consumer::pull::Config {
                durable_name: Some(REDRIVE_CONSUMER.to_owned()),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .map_err(failed)?;
    let mut durable = durable;
    let floor = durable
        .info()
        .await
        .map_err(failed)?
        .ack_floor
        .stream_sequence;
    let letters = read_after(&mut stream, floor).await?;
    let list: Vec<Letter> = letters
        .iter()
        .map(|(seq, m)| letter(&name, m, *seq as i64))
        .collect();
    if !args.execute {
        print_letters(&list, false)?;
        eprintln!(
            "dry run: {} dead letters would be published back into their source topics; run again with --execute",
            letters.len()
        );
        return Ok(());
    }
    let Some(last) = letters.last().map(|(seq, _)| *seq) else {
        eprintln!("nothing to redrive");
        return Ok(());
    };
    let bar = indicatif::ProgressBar::new(letters.len() as u64);
    let mut skipped = 0;
    // The durable consumer delivers what the last run left, in order: each is published back
    // (with a Nats-Msg-Id of its own, so a run cut short and run again publishes it once),
    // then acknowledged.
    let mut batches = durable
        .stream()
        .max_messages_per_batch(100)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .map_err(failed)?;
    loop {
        let m = tokio::time::timeout(STALL, batches.next())
            .await
            .map_err(|_| Error::Nats(format!("no message for {STALL:?} while redriving")))?
            .ok_or_else(|| Error::Nats("the dead letters ended".into()))?
            .map_err(failed)?;
        let seq = m.info().map_err(failed)?.stream_sequence;
        let l = letter(&name, &m, seq as i64);
        match &l.source_topic {
            None => {
                eprintln!(
                    "weir: {} sequence {seq} has no {} header: not a weir dead letter, skipped",
                    args.dlq.topic,
                    header::SOURCE_TOPIC
                );
                skipped += 1;
            }
            Some(target) => {
                let key = lane_and_key(&name, &m.subject).and_then(|(_, k)| k);
                // The record's own headers; weir's dead-letter and source headers are replaced
                // by where it comes from (a downstream weir worker must not take it for a
                // re-send).
                let mut headers = HeaderMap::new();
                for (h, values) in m.headers.iter().flat_map(HeaderMap::iter) {
                    let h: &str = h.as_ref();
                    if h.starts_with("weir.") || h.starts_with("Nats-") {
                        continue;
                    }
                    for v in values {
                        headers.append(h, v.as_str());
                    }
                }
                let source = format!(
                    "{target}/{}/{}",
                    l.source_partition.unwrap_or(-1),
                    l.source_offset.unwrap_or(-1)
                );
                headers.append(
                    header::REDRIVE_FROM,
                    format!("{}/{}/{seq}", args.dlq.topic, l.partition).as_str(),
                );
                headers.append(header::REDRIVE_SOURCE, source.as_str());
                headers.append("Nats-Msg-Id", format!("redrive/{name}/{seq}").as_str());
                let subject = publish_subject(target, key.as_deref());
                let ack = js
                    .publish_with_headers(subject.clone(), headers, m.payload.clone())
                    .await
                    .map_err(|e| Error::Nats(format!("publishing to {subject}: {e}")))?;
                ack.await
                    .map_err(|e| Error::Nats(format!("publishing to {subject}: {e}")))?;
            }
        }
        m.double_ack().await.map_err(failed)?;
        bar.inc(1);
        if seq >= last {
            break;
        }
    }
    bar.finish_and_clear();
    eprintln!(
        "redrove {} dead letters into their source topics{}",
        letters.len() - skipped,
        if skipped > 0 {
            format!(" ({skipped} skipped)")
        } else {
            String::new()
        }
    );
    Ok(())
}
