//! Rebuilding a partition's store from its changelog topic when the local copy is missing or
//! behind (the partition was processed on another machine).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use weir_state::wire::{header, ChangelogEntry, ChangelogPosition};
use weir_state::PartitionStore;

use crate::observe::metric_names::{RESTORED_RECORDS_TOTAL, RESTORE_DURATION_SECONDS};

/// How long a restore waits for the broker without getting a record before giving up.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Distinct restored keys buffered before they are written, in one SQLite transaction.
const APPLY_CHUNK: usize = 50_000;

/// Where a partition's store stands against its changelog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restore {
    /// The local store is current (or the changelog is empty): process from its offset.
    Local(Option<i64>),
    /// The store was rebuilt from the changelog: process from this offset.
    Restored { next_offset: i64 },
}

/// Compares `store` (whose next offset is `local_next`) with the newest entry of `changelog`'s
/// `partition`, and rebuilds the store from the changelog when the changelog is ahead: at a
/// higher rewind generation (a `weir reset` since the store was written), or at the same one
/// with a higher offset.
///
/// It blocks (run it off the async workers) and returns `Err` soon after `cancelled` turns
/// true. On error the store is either untouched or emptied with no offset (a restore cut
/// short): both are consistent, so the caller may go on from the store's offset, processing
/// the partition from further back.
pub(crate) fn restore_if_behind(
    client: &ClientConfig,
    store: &PartitionStore,
    topic: &str,
    partition: i32,
    changelog: &str,
    local_next: Option<i64>,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<Restore, String> {
    let consumer = RestoreConsumer(Some(Arc::new(
        client
            .clone()
            .set("group.id", "weir-restore")
            .set("enable.auto.commit", "false")
            // The end is where a fetch response's high watermark says (some brokers answer
            // ListOffsets with less than the end), signalled as a partition EOF.
            .set("enable.partition.eof", "true")
            // Read as fast as the broker sends: no backoff once librdkafka's local queue fills
            // (the restore drains it at once), and large fetches.
            .set("fetch.queue.backoff.ms", "1")
            .set("queued.min.messages", "200000")
            .create_with_context(RestoreContext)
            .map_err(|e| e.to_string())?,
    )));
    let consumer = consumer.get();
    let (low, high) = watermarks(consumer, changelog, partition, cancelled)?;
    // Read the newest record from just before the end as ListOffsets tells it; some brokers
    // (tansu) answer with less than the end, even with `low`, so reading goes on to the EOF.
    let start = if high > low {
        Offset::Offset(high - 1)
    } else {
        Offset::Beginning
    };
    let newest = newest_position(consumer, changelog, partition, start, cancelled)?;
    let local = store
        .position(topic, partition)
        .map_err(|e| e.to_string())?;
    tracing::debug!(%changelog, partition, low, high, ?newest, ?local, "changelog checked");
    let Some(latest) = newest else {
        return Ok(Restore::Local(local_next)); // an empty changelog
    };
    if local.is_some_and(|l| l >= latest) {
        return Ok(Restore::Local(local_next));
    }
    let started = Instant::now();
    tracing::info!(
        %topic, partition, %changelog, ?local_next, changelog_next = latest.next_offset,
        changelog_generation = latest.generation, local_generation = ?local.map(|l| l.generation),
        approx_records = high - low, "restoring the partition's store from its changelog"
    );
    store.reset(topic, partition).map_err(|e| e.to_string())?;
    assign(consumer, changelog, partition, Offset::Beginning)?;
    // Reading and writing overlap: this thread reads and coalesces the changelog while a
    // writer thread puts the previous chunk into SQLite (at most one chunk waits between them).
    let (records, next_offset) = std::thread::scope(|scope| {
        let (chunks, written) = std::sync::mpsc::sync_channel::<Chunk>(1);
        let writer = std::thread::Builder::new()
            .name("weir-restore-write".into())
            .spawn_scoped(scope, move || -> Result<(), String> {
                for chunk in written {
                    if chunk.start_over {
                        store.reset(topic, partition).map_err(|e| e.to_string())?;
                    }
                    store
                        .apply_restored(&chunk.entries, topic, partition, chunk.end)
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            })
            .map_err(|e| format!("cannot start the restore's writer thread: {e}"))?;
        let read = read_changelog(consumer, (topic, changelog, partition), cancelled, |c| {
            chunks.send(c).is_ok()
        });
        drop(chunks);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err("the restore's writer thread panicked".into()));
        written.and(read)
    })?;
    let took = started.elapsed();
    metrics::counter!(RESTORED_RECORDS_TOTAL).increment(records);
    metrics::histogram!(RESTORE_DURATION_SECONDS).record(took);
    tracing::info!(
        %topic, partition, records, next_offset, took_ms = took.as_millis() as u64,
        rate = (records as f64 / took.as_secs_f64().max(1e-3)) as u64,
        "partition store restored from its changelog"
    );
    Ok(Restore::Restored { next_offset })
}

/// A restored entry: store, JSON key, JSON value (`None` deletes).
type Entry = (String, String, Option<String>);

/// Restored entries for one SQLite transaction.
struct Chunk {
    /// Empty the store first: a rewind began a new generation after what was written so far.
    start_over: bool,
    entries: Vec<Entry>,
    /// With the last chunk: the position to store.
    end: Option<ChangelogPosition>,
}

/// Reads `changelog`'s `partition` from its start to its end, handing `write` chunks of
/// coalesced entries, the last one with the position to process from. Returns the number of
/// changelog records and the next offset. Stops when `write` answers false (the writer
/// failed).
///
/// The log is followed in order, by generation: the first entry of a higher rewind generation
/// starts the state over (a rewind deleted everything before it, including keys the rewound
/// store never saw), and entries of a lower one (an old owner's outbox sent after a rewind)
/// are dropped. A batch's entries are applied at their offset marker only if their headers
/// name that marker's position: entries of a batch whose marker never came (the sender died
/// mid-flush, and the records were processed again, maybe in other batches) are dropped.
fn read_changelog(
    consumer: &BaseConsumer<RestoreContext>,
    (topic, changelog, partition): (&str, &str, i32),
    cancelled: &(dyn Fn() -> bool + Sync),
    mut write: impl FnMut(Chunk) -> bool,
) -> Result<(u64, i64), String> {
    const WRITER_FAILED: &str = "the restore's writer stopped";
    // Entries of marked batches, newest per key: a changelog not yet compacted holds many
    // versions of a hot key, and only the last one is written.
    let mut entries = Coalesced::default();
    // Entries since the last offset marker, with the position their headers name.
    let mut unmarked: Vec<(Option<ChangelogPosition>, Entry)> = Vec::new();
    let mut at = ChangelogPosition {
        generation: 0,
        next_offset: 0,
    };
    let (mut start_over, mut dropped) = (false, 0u64);
    let mut records = 0u64;
    let mut last_log = Instant::now();
    let mut last_record = Instant::now();
    loop {
        if cancelled() {
            return Err(format!(
                "stopped after {records} records (the partition is released)"
            ));
        }
        let msg = match consumer.poll(Duration::from_millis(200)) {
            None => {
                if last_record.elapsed() > STALL_TIMEOUT {
                    return Err(format!(
                        "no changelog record for {STALL_TIMEOUT:?} after {records} records"
                    ));
                }
                continue;
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(format!("reading {changelog}/{partition}: {e}")),
            Some(Ok(msg)) => msg,
        };
        last_record = Instant::now();
        records += 1;
        let Some(entry) = ChangelogEntry::parse(msg.key(), msg.payload()) else {
            continue;
        };
        let position = position_of(&msg);
        let generation = position.map_or(0, |p| p.generation);
        if generation < at.generation {
            dropped += 1;
            continue;
        }
        if generation > at.generation {
            tracing::info!(
                %topic, partition, generation, previous = at.generation,
                "the changelog was rewound (weir reset): its state starts over here"
            );
            at = ChangelogPosition {
                generation,
                next_offset: 0,
            };
            entries = Coalesced::default();
            unmarked.clear();
            start_over = true;
        }
        match entry {
            ChangelogEntry::Offset(n) => {
                at.next_offset = at.next_offset.max(n);
                for (of, entry) in unmarked.drain(..) {
                    // Without headers (written before they existed), the marker's own.
                    if of.is_none() || of == position {
                        entries.extend(std::iter::once(entry));
                    } else {
                        dropped += 1;
                    }
                }
                if entries.len() >= APPLY_CHUNK {
                    let chunk = Chunk {
                        start_over: std::mem::take(&mut start_over),
                        entries: entries.take(),
                        end: None,
                    };
                    if !write(chunk) {
                        return Err(WRITER_FAILED.into());
                    }
                }
                continue;
            }
            ChangelogEntry::State {
                store: name,
                key,
                value,
            } => unmarked.push((position, (name, key, value))),
        }
        if last_log.elapsed() >= Duration::from_secs(2) {
            last_log = Instant::now();
            tracing::info!(
                %topic, partition, records,
                "restoring from the changelog"
            );
        }
    }
    dropped += unmarked.len() as u64;
    if dropped > 0 {
        tracing::warn!(
            %topic, partition, entries = dropped,
            "dropped changelog entries of batches whose offset marker is missing (their records are processed again) or of an older rewind generation"
        );
    }
    let chunk = Chunk {
        start_over,
        entries: entries.take(),
        end: Some(at),
    };
    if !write(chunk) {
        return Err(WRITER_FAILED.into());
    }
    Ok((records, at.next_offset))
}

/// A changelog record's position, from its headers.
fn position_of(msg: &impl Message) -> Option<ChangelogPosition> {
    let headers = msg.headers()?;
    ChangelogPosition::from_headers(headers.iter().filter_map(|h| Some((h.key, h.value?))))
}

/// Restored entries waiting to be written, the newest value per (store, key).
#[derive(Default)]
struct Coalesced(std::collections::HashMap<(String, String), Option<String>>);

impl Coalesced {
    fn extend(&mut self, entries: impl Iterator<Item = (String, String, Option<String>)>) {
        for (store, key, value) in entries {
            self.0.insert((store, key), value);
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// The entries in key order: SQLite inserts into its B-tree in order far faster than at
    /// random places.
    fn take(&mut self) -> Vec<(String, String, Option<String>)> {
        let mut entries: Vec<_> = self
            .0
            .drain()
            .map(|((store, key), value)| (store, key, value))
            .collect();
        entries.sort_unstable_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        entries
    }
}

/// The changelog partition's watermarks, asked on a helper thread so that a stop does not
/// wait for a slow broker's answer.
fn watermarks(
    consumer: &Arc<BaseConsumer<RestoreContext>>,
    changelog: &str,
    partition: i32,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<(i64, i64), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (asker, name) = (Arc::clone(consumer), changelog.to_owned());
    std::thread::Builder::new()
        .name("weir-restore-offsets".into())
        .spawn(move || {
            let _ = tx.send(asker.fetch_watermarks(&name, partition, Duration::from_secs(60)));
        })
        .map_err(|e| e.to_string())?;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(answer) => {
                return answer
                    .map_err(|e| format!("reading {changelog}/{partition}'s offsets: {e}"))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !cancelled() => {}
            Err(_) => return Err("stopped while reading the changelog's offsets".into()),
        }
    }
}

/// The earliest offset of `topic`/`partition` (where a consumer from the beginning starts).
pub(crate) fn low_watermark(
    client: &ClientConfig,
    topic: &str,
    partition: i32,
) -> Result<i64, String> {
    let consumer: BaseConsumer = client.create().map_err(|e| e.to_string())?;
    consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .map(|(low, _)| low)
        .map_err(|e| format!("reading {topic}/{partition}'s offsets: {e}"))
}

/// The restore consumer, closed on a thread of its own when dropped: closing may wait for
/// requests in flight, and a stopped restore must not wait for a slow broker.
struct RestoreConsumer(Option<Arc<BaseConsumer<RestoreContext>>>);

impl RestoreConsumer {
    fn get(&self) -> &Arc<BaseConsumer<RestoreContext>> {
        self.0.as_ref().expect("taken only on drop")
    }
}

impl Drop for RestoreConsumer {
    fn drop(&mut self) {
        if let Some(consumer) = self.0.take() {
            let _ = std::thread::Builder::new()
                .name("weir-restore-close".into())
                .spawn(move || drop(consumer));
        }
    }
}

/// The restore consumer's context: the end of the changelog is expected, not an error.
struct RestoreContext;

impl ClientContext for RestoreContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::warn!("changelog restore consumer: {error}: {reason}");
        }
    }
}

impl ConsumerContext for RestoreContext {}

fn assign(
    consumer: &BaseConsumer<RestoreContext>,
    changelog: &str,
    partition: i32,
    offset: Offset,
) -> Result<(), String> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(changelog, partition, offset)
        .map_err(|e| e.to_string())?;
    consumer.assign(&tpl).map_err(|e| e.to_string())
}

/// The highest position carried by the changelog's records from `start` to the end (every
/// entry has the headers; compaction always keeps the newest record); `None` when the
/// changelog has no records.
fn newest_position(
    consumer: &BaseConsumer<RestoreContext>,
    changelog: &str,
    partition: i32,
    start: Offset,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<Option<ChangelogPosition>, String> {
    assign(consumer, changelog, partition, start)?;
    let mut any = false;
    let deadline = Instant::now() + STALL_TIMEOUT;
    let mut newest = None;
    while Instant::now() < deadline {
        if cancelled() {
            return Err("stopped while reading the changelog's end".into());
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) if !any => return Ok(None),
            Some(Err(KafkaError::PartitionEOF(_))) => {
                return newest.map(Some).ok_or_else(|| {
                    format!(
                        "{changelog}/{partition}: no record with a {} header at its end",
                        header::SOURCE_NEXT_OFFSET
                    )
                })
            }
            Some(Err(e)) => return Err(format!("reading {changelog}/{partition}: {e}")),
            Some(Ok(msg)) => {
                any = true;
                newest = newest.max(position_of(&msg));
            }
        }
    }
    Err(format!(
        "the end of {changelog}/{partition} not reached within {STALL_TIMEOUT:?}"
    ))
}
