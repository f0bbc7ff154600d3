//! `weir dlq` on SQS: a dead-letter topic `T-dlq` is the queue `T-dlq`, one lane (partition
//! 0). A letter's "offset" is its place among the queue's letters ordered by the time they were
//! sent (then by message id), so that it is the same from one read to the next. Reading
//! receives every letter with a visibility timeout, so that each comes once, and gives them
//! back (visibility 0) once read (`list`, `show`). `redrive` sends each letter to its source
//! queue with its key and attributes, then deletes it: what was redriven leaves the
//! dead-letter queue, and a second run finds only letters that came since.

use std::io::Write as _;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, Message, MessageSystemAttributeName,
};
use aws_sdk_sqs::Client;
use weir::state::header;
use weir::state::sqs::{connect, describe, message_of, record_of, SqsRecord};

use super::{print_letters, Letter, ListArgs, RedriveArgs, ShowArgs, Topic, STALL};
use crate::error::{Error, Result};
use crate::nats::runtime;

/// How long letters being read stay hidden from others (a run cut short gives them back
/// after it).
const READING_SECONDS: i32 = 120;

fn failed(e: impl std::fmt::Display) -> Error {
    Error::Sqs(e.to_string())
}

/// The queue's URL; an error naming it when it does not exist.
async fn url_of(client: &Client, queue: &str) -> Result<String> {
    match client.get_queue_url().queue_name(queue).send().await {
        Ok(found) => Ok(found.queue_url().unwrap_or_default().to_owned()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_queue_does_not_exist()) =>
        {
            Err(Error::Input(format!("queue {queue:?} does not exist")))
        }
        Err(e) => Err(failed(describe(&e))),
    }
}

/// Every message of the queue at `url`, hidden from others while read (receives until one
/// comes back empty), ordered by when it was sent, then by id.
async fn receive_all(client: &Client, url: &str) -> Result<Vec<Message>> {
    let mut all: Vec<Message> = Vec::new();
    loop {
        let received = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(READING_SECONDS)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(|e| failed(describe(&e)))?;
        let messages = received.messages.unwrap_or_default();
        if messages.is_empty() {
            all.sort_by_cached_key(|m: &Message| {
                let sent = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                    .and_then(|t| t.parse::<i64>().ok());
                (sent, m.message_id().map(str::to_owned))
            });
            return Ok(all);
        }
        all.extend(messages);
    }
}

/// Makes `messages` visible again at once.
async fn give_back(client: &Client, url: &str, messages: &[&Message]) -> Result<()> {
    for chunk in messages.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle()?)
                    .visibility_timeout(0)
                    .build()
                    .ok()
            })
            .collect();
        client
            .change_message_visibility_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| failed(describe(&e)))?;
    }
    Ok(())
}

/// Header `name` of `r` as text.
fn text_header(r: &SqsRecord, name: &str) -> Option<String> {
    r.headers
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_deref())
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn letter(index: usize, r: &SqsRecord) -> Letter {
    let h = |name: &str| text_header(r, name);
    let n = |name: &str| h(name).and_then(|v| v.parse::<i64>().ok());
    Letter {
        partition: 0,
        offset: index as i64,
        source_topic: h(header::SOURCE_TOPIC),
        source_partition: n(header::SOURCE_PARTITION).map(|v| v as i32),
        source_offset: n(header::SOURCE_OFFSET),
        reason: h(header::REASON),
        attempts: n(header::ATTEMPTS).map(|v| v as u32),
        failed_at_ms: n(header::FAILED_AT_MS),
        error: h(header::ERROR),
    }
}

/// The client, the dead-letter queue's URL and its messages (hidden while read).
async fn read(dlq: &Topic) -> Result<(Client, String, Vec<Message>)> {
    let client = connect(STALL).await.map_err(failed)?;
    let url = url_of(&client, &dlq.topic).await?;
    let messages = receive_all(&client, &url).await?;
    Ok((client, url, messages))
}

/// Every letter of the dead-letter queue, which is given back whole.
fn read_letters(dlq: &Topic) -> Result<Vec<Letter>> {
    runtime()?.block_on(async {
        let (client, url, messages) = read(dlq).await?;
        give_back(&client, &url, &messages.iter().collect::<Vec<_>>()).await?;
        Ok(messages
            .iter()
            .enumerate()
            .map(|(i, m)| letter(i, &record_of(m)))
            .collect())
    })
}

pub(super) fn list(args: &ListArgs) -> Result<()> {
    print_letters(&read_letters(&args.dlq)?, args.json)
}

pub(super) fn show(args: &ShowArgs) -> Result<()> {
    let json = runtime()?.block_on(async {
        let (client, url, messages) = read(&args.dlq).await?;
        give_back(&client, &url, &messages.iter().collect::<Vec<_>>()).await?;
        if args.partition != 0 {
            return Err(Error::Input(format!(
                "{} has no lane {} (an SQS queue is one lane, 0)",
                args.dlq.topic, args.partition
            )));
        }
        let m = usize::try_from(args.offset)
            .ok()
            .and_then(|i| messages.get(i))
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no letter at {}/0 offset {}: the queue holds {}",
                    args.dlq.topic,
                    args.offset,
                    messages.len()
                ))
            })?;
        let r = record_of(m);
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let headers: Vec<(String, Option<String>)> = r
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), v.as_deref().map(text)))
            .collect();
        Ok(serde_json::json!({
            "partition": 0,
            "offset": args.offset,
            "timestamp_ms": r.timestamp_ms,
            "key": r.key.as_deref().map(text),
            "value": r.value.as_deref().map(text),
            "headers": headers,
            "message_id": m.message_id(),
        }))
    })?;
    let pretty = serde_json::to_string_pretty(&json).map_err(std::io::Error::other)?;
    writeln!(std::io::stdout().lock(), "{pretty}")?;
    Ok(())
}

pub(super) fn redrive(args: &RedriveArgs) -> Result<()> {
    if !args.execute {
        let letters = read_letters(&args.dlq)?;
        print_letters(&letters, false)?;
        eprintln!(
            "dry run: {} dead letters would be sent back into their source queues; run again with --execute",
            letters.len()
        );
        return Ok(());
    }
    runtime()?.block_on(redrive_all(&args.dlq))
}

async fn redrive_all(dlq: &Topic) -> Result<()> {
    let (client, url, messages) = read(dlq).await?;
    let bar = indicatif::ProgressBar::new(messages.len() as u64);
    let mut skipped = Vec::new();
    let mut redriven = 0;
    let mut targets = std::collections::BTreeMap::<String, String>::new();
    // A run cut short leaves each letter not yet deleted in the queue (visible again after
    // READING_SECONDS): sent and not deleted, it is sent again by the next run (at least once).
    for (i, m) in messages.iter().enumerate() {
        let r = record_of(m);
        let l = letter(i, &r);
        let Some(target) = &l.source_topic else {
            eprintln!(
                "weir: {}/0 offset {i} has no {} header: not a weir dead letter, left in the queue",
                dlq.topic,
                header::SOURCE_TOPIC
            );
            skipped.push(m);
            continue;
        };
        let target_url = match targets.get(target) {
            Some(u) => u.clone(),
            None => {
                let u = url_of(&client, target).await?;
                targets.insert(target.clone(), u.clone());
                u
            }
        };
        let from_id = m.message_id().unwrap_or_default();
        let from = format!("{}/0/{from_id}", dlq.topic);
        let source = format!(
            "{target}/{}/{}",
            l.source_partition.unwrap_or(-1),
            l.source_offset.unwrap_or(-1)
        );
        // The record's own headers; weir's dead-letter and source headers are replaced by
        // where it comes from (a downstream weir worker must not take it for a re-send).
        let mut headers: Vec<(&str, Option<&[u8]>)> = r
            .headers
            .iter()
            .filter(|(n, _)| !n.starts_with("weir."))
            .map(|(n, v)| (n.as_str(), v.as_deref()))
            .collect();
        headers.push((header::REDRIVE_FROM, Some(from.as_bytes())));
        headers.push((header::REDRIVE_SOURCE, Some(source.as_bytes())));
        let id = format!("redrive/{from}");
        let (body, attributes) =
            message_of(r.key.as_deref(), r.value.as_deref(), &headers, Some(&id));
        let mut send = client
            .send_message()
            .queue_url(&target_url)
            .message_body(body)
            .set_message_attributes(Some(attributes));
        if target.ends_with(".fifo") {
            let group = r
                .key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .filter(|k| !k.is_empty())
                .unwrap_or_else(|| "weir".to_owned());
            send = send
                .message_group_id(group)
                .message_deduplication_id(from_id);
        }
        send.send()
            .await
            .map_err(|e| failed(format!("sending {from} to {target}: {}", describe(&e))))?;
        if let Some(receipt) = m.receipt_handle() {
            client
                .delete_message()
                .queue_url(&url)
                .receipt_handle(receipt)
                .send()
                .await
                .map_err(|e| failed(format!("deleting {from}: {}", describe(&e))))?;
        }
        redriven += 1;
        bar.inc(1);
    }
    give_back(&client, &url, &skipped).await?;
    bar.finish_and_clear();
    eprintln!(
        "redrove {redriven} dead letters ({} skipped, left in the queue); redriven letters left the dead-letter queue",
        skipped.len()
    );
    Ok(())
}
