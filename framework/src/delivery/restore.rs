//! Rebuilding a partition's store from its changelog topic when the local copy is missing or
//! behind (the partition was processed on another machine).

use std::time::{Duration, Instant};

use weir_state::PartitionStore;
use weir_state::wire::{ChangelogEntry, ChangelogPosition, header};

use crate::broker::{Connection, LogReader, Polled};
use crate::inbound::Delivered;
use crate::observe::metric_names::{RESTORE_DURATION_SECONDS, RESTORED_RECORDS_TOTAL};

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
    connection: &Connection,
    store: &PartitionStore,
    topic: &str,
    partition: i32,
    changelog: &str,
    local_next: Option<i64>,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<Restore, String> {
    let reader = connection.log_reader()?;
    let newest = newest_position(&reader, changelog, partition, cancelled)?;
    let ends_in_marker = newest.is_some_and(|n| n.ends_in_marker);
    let newest = newest.map(|n| n.position);
    let local = store
        .position(topic, partition)
        .map_err(|e| e.to_string())?;
    tracing::debug!(%changelog, partition, ?newest, ?local, "changelog checked");
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
        "restoring the partition's store from its changelog"
    );
    store.reset(topic, partition).map_err(|e| e.to_string())?;
    // The changelog is read in order first when its last record is an offset marker, and
    // again with markers awaited if it turns out not to be (see `Mode`).
    let mut mode = if ends_in_marker {
        Mode::InOrder
    } else {
        Mode::Marked
    };
    let Read {
        records,
        next_offset,
        orphans,
    } = loop {
        match read_and_write(
            &reader,
            store,
            (topic, changelog, partition),
            mode,
            cancelled,
        )? {
            Ok(read) => break read,
            Err(OutOfOrder(why)) => {
                tracing::info!(
                    %topic, partition, %changelog, why,
                    "the changelog is not in order: reading it again, applying each batch at its offset marker"
                );
                mode = Mode::Marked;
            }
        }
    };
    if !orphans.is_empty() {
        // Entries of a batch whose marker never came, gone before the lane writes new
        // versions of their keys: where the log keeps only a key's last two records (NATS),
        // they would otherwise push out the last version a restore can use.
        reader.forget(changelog, &orphans).map_err(|e| {
            format!("removing the changelog's entries of a batch without its offset marker: {e}")
        })?;
    }
    let took = started.elapsed();
    metrics::counter!(RESTORED_RECORDS_TOTAL, "topic" => topic.to_owned()).increment(records);
    metrics::histogram!(RESTORE_DURATION_SECONDS).record(took);
    tracing::info!(
        %topic, partition, records, next_offset, took_ms = took.as_millis() as u64,
        rate = (records as f64 / took.as_secs_f64().max(1e-3)) as u64,
        "partition store restored from its changelog"
    );
    Ok(Restore::Restored { next_offset })
}

/// How a restore applies the changelog's state entries.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Each batch's entries when an offset marker at or past their position comes (see
    /// [`read_changelog`]).
    Marked,
    /// Each entry as it is read, for a log whose last record is an offset marker and whose
    /// positions never go back. There every marker completes all the entries before it, so
    /// applying them at once, in log order, is the same, and a compacted log (which keeps one
    /// marker, the last) is written while it is still being read rather than all at its end.
    /// A record against the order (a position lower than one before it, or without one after
    /// one with it) or an entry after the last marker (the log grew since its end was read)
    /// ends the read with [`OutOfOrder`]. A proptest below holds both modes to the same store.
    InOrder,
}

/// Why a read in [`Mode::InOrder`] stopped.
struct OutOfOrder(&'static str);

/// What a read of the changelog found.
struct Read {
    /// Changelog records read.
    records: u64,
    /// The offset to process from.
    next_offset: i64,
    /// The positions of the entries dropped as orphans (of a batch past the last offset
    /// marker).
    orphans: Vec<i64>,
}

/// Reads `changelog`'s `partition` from its start and writes it into `store` (emptied
/// first), reading and writing at once: this thread reads and coalesces the changelog while a
/// writer thread puts the previous chunk into SQLite (at most one chunk waits between them).
fn read_and_write(
    reader: &LogReader,
    store: &PartitionStore,
    (topic, changelog, partition): (&str, &str, i32),
    mode: Mode,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<Result<Read, OutOfOrder>, String> {
    reader.read_all(changelog, partition)?;
    std::thread::scope(|scope| {
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
        let read = read_changelog(
            |timeout| reader.poll(timeout),
            (topic, changelog, partition),
            mode,
            cancelled,
            |c| chunks.send(c).is_ok(),
        );
        drop(chunks);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err("the restore's writer thread panicked".into()));
        written.and(read)
    })
}

/// A restored entry: store, JSON key, JSON value (`None` deletes).
type Entry = (String, String, Option<String>);

/// Restored entries for one SQLite transaction.
struct Chunk {
    /// Empty the store first: the read's first chunk, or a rewind began a new generation
    /// after what was written so far.
    start_over: bool,
    entries: Vec<Entry>,
    /// With the last chunk: the position to store.
    end: Option<ChangelogPosition>,
}

/// Reads `changelog`'s `partition` from its start to its end, handing `write` chunks of
/// coalesced entries, the last one with the position to process from, and says what it found.
/// Stops when `write` answers false (the writer failed).
///
/// The log is followed in order, by generation: the first entry of a higher rewind generation
/// starts the state over (a rewind deleted everything before it, including keys the rewound
/// store never saw), and entries of a lower one (an old owner's outbox sent after a rewind)
/// are dropped. A batch's entries (their headers name its position) are applied at the first
/// offset marker at or past that position: their own, or a later one where compaction removed
/// theirs (markers share one key). Entries past the last marker belong to a batch whose marker
/// never came (the sender died mid-flush, and the records were processed again, maybe in
/// other batches): they are dropped.
///
/// In [`Mode::InOrder`] entries are applied as they are read, and chunks written whenever
/// they are full; a record against the order returns [`OutOfOrder`].
fn read_changelog<R: Delivered>(
    mut poll: impl FnMut(Duration) -> Polled<R>,
    (topic, changelog, partition): (&str, &str, i32),
    mode: Mode,
    cancelled: &(dyn Fn() -> bool + Sync),
    mut write: impl FnMut(Chunk) -> bool,
) -> Result<Result<Read, OutOfOrder>, String> {
    const WRITER_FAILED: &str = "the restore's writer stopped";
    // Entries of marked batches, newest per key: a changelog not yet compacted holds many
    // versions of a hot key, and only the last one is written.
    let mut entries = Coalesced::default();
    // Entries since the last offset marker, with the position their headers name and their
    // own offset in the changelog.
    let mut unmarked: Vec<(Option<ChangelogPosition>, i64, Entry)> = Vec::new();
    let mut at = ChangelogPosition {
        generation: 0,
        next_offset: 0,
    };
    // Every read starts from an empty store: the first chunk empties what an earlier read
    // (one that found the log out of order) wrote.
    let (mut start_over, mut dropped) = (true, 0u64);
    // In order: the highest position so far, and whether an entry came after the last marker.
    let mut highest = None;
    let mut entry_after_marker = false;
    let mut records = 0u64;
    let mut last_log = Instant::now();
    let mut last_record = Instant::now();
    loop {
        if cancelled() {
            return Err(format!(
                "stopped after {records} records (the partition is released)"
            ));
        }
        let msg = match poll(Duration::from_millis(200)) {
            Polled::Nothing => {
                if last_record.elapsed() > STALL_TIMEOUT {
                    return Err(format!(
                        "no changelog record for {STALL_TIMEOUT:?} after {records} records"
                    ));
                }
                continue;
            }
            Polled::End => break,
            Polled::Failed(e) => return Err(format!("reading {changelog}/{partition}: {e}")),
            Polled::Record(msg) => msg,
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
        if let Mode::InOrder = mode {
            // (A record without a position is lower than any with one.)
            if position < highest {
                return Ok(Err(OutOfOrder(
                    "a record at a lower position than one before it",
                )));
            }
            highest = position;
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
                entry_after_marker = false;
                at.next_offset = at.next_offset.max(n);
                // The marker completes every batch up to its own position: its own, and
                // earlier ones whose markers compaction removed (all markers share a key).
                // Entries of a later position wait for a marker that reaches them.
                let mark = position.unwrap_or(ChangelogPosition {
                    generation,
                    next_offset: n,
                });
                let (done, later): (Vec<_>, Vec<_>) = unmarked
                    .drain(..)
                    // Without headers (written before they existed), the marker's own.
                    .partition(|(of, _, _)| of.is_none_or(|of| of <= mark));
                unmarked = later;
                entries.extend(done.into_iter().map(|(_, _, entry)| entry));
                if !write_if_full(&mut entries, &mut start_over, &mut write) {
                    return Err(WRITER_FAILED.into());
                }
                continue;
            }
            ChangelogEntry::State {
                store: name,
                key,
                value,
            } if matches!(mode, Mode::InOrder) => {
                entry_after_marker = true;
                entries.extend(std::iter::once((name, key, value)));
                if !write_if_full(&mut entries, &mut start_over, &mut write) {
                    return Err(WRITER_FAILED.into());
                }
            }
            ChangelogEntry::State {
                store: name,
                key,
                value,
            } => unmarked.push((position, msg.offset(), (name, key, value))),
        }
        if last_log.elapsed() >= Duration::from_secs(2) {
            last_log = Instant::now();
            tracing::info!(
                %topic, partition, records,
                "restoring from the changelog"
            );
        }
    }
    if entry_after_marker {
        return Ok(Err(OutOfOrder("entries after the last offset marker")));
    }
    dropped += unmarked.len() as u64;
    let orphans = unmarked.iter().map(|(_, offset, _)| *offset).collect();
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
    Ok(Ok(Read {
        records,
        next_offset: at.next_offset,
        orphans,
    }))
}

/// Hands `write` the coalesced entries as a chunk once there are [`APPLY_CHUNK`] of them (the
/// first chunk of a read, or of a new generation, starts the store over); false when the
/// writer failed.
fn write_if_full(
    entries: &mut Coalesced,
    start_over: &mut bool,
    write: &mut impl FnMut(Chunk) -> bool,
) -> bool {
    entries.len() < APPLY_CHUNK
        || write(Chunk {
            start_over: std::mem::take(start_over),
            entries: entries.take(),
            end: None,
        })
}

/// A changelog record's position, from its headers.
fn position_of(msg: &impl Delivered) -> Option<ChangelogPosition> {
    ChangelogPosition::from_headers(
        msg.headers()
            .filter_map(|(name, value)| Some((name, value?))),
    )
}

/// Restored entries waiting to be written, the newest value per (store, key). (Hashed with
/// foldhash: SipHash was a fifth of a restore's reading thread.)
struct Coalesced(
    std::collections::HashMap<(String, String), Option<String>, foldhash::fast::RandomState>,
);

impl Default for Coalesced {
    fn default() -> Self {
        // A chunk is written once it reaches APPLY_CHUNK keys (read in order, at once;
        // otherwise at the next offset marker).
        Self(std::collections::HashMap::with_capacity_and_hasher(
            APPLY_CHUNK + APPLY_CHUNK / 4,
            foldhash::fast::RandomState::default(),
        ))
    }
}

impl Coalesced {
    fn extend(&mut self, entries: impl Iterator<Item = Entry>) {
        for (store, key, value) in entries {
            self.0.insert((store, key), value);
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// The entries in key order (SQLite inserts into its B-tree in order far faster than at
    /// random places), leaving the map empty.
    fn take(&mut self) -> Vec<Entry> {
        let mut entries: Vec<_> = self
            .0
            .drain()
            .map(|((store, key), value)| (store, key, value))
            .collect();
        entries.sort_unstable_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        entries
    }
}

/// The end of a changelog's lane.
#[derive(Debug, Clone, Copy)]
struct Newest {
    /// The highest position carried by its records from its last one to the end.
    position: ChangelogPosition,
    /// The last record is an offset marker at that position.
    ends_in_marker: bool,
}

/// The end of the changelog's lane, read from its last record to the end (every entry has
/// the headers; compaction always keeps the newest record); `None` when the changelog has no
/// records.
fn newest_position(
    reader: &LogReader,
    changelog: &str,
    partition: i32,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<Option<Newest>, String> {
    reader.read_last(changelog, partition, cancelled)?;
    let mut any = false;
    let deadline = Instant::now() + STALL_TIMEOUT;
    let mut newest = None;
    let mut last_marker = None;
    while Instant::now() < deadline {
        if cancelled() {
            return Err("stopped while reading the changelog's end".into());
        }
        match reader.poll(Duration::from_millis(200)) {
            Polled::Nothing => {}
            Polled::End if !any => return Ok(None),
            Polled::End => {
                let position = newest.ok_or_else(|| {
                    format!(
                        "{changelog}/{partition}: no record with a {} header at its end",
                        header::SOURCE_NEXT_OFFSET
                    )
                })?;
                return Ok(Some(Newest {
                    position,
                    ends_in_marker: last_marker == Some(position),
                }));
            }
            Polled::Failed(e) => return Err(format!("reading {changelog}/{partition}: {e}")),
            Polled::Record(msg) => {
                any = true;
                let position = position_of(&msg);
                newest = newest.max(position);
                last_marker = position.filter(|_| ChangelogEntry::is_offset_marker(msg.key()));
            }
        }
    }
    Err(format!(
        "the end of {changelog}/{partition} not reached within {STALL_TIMEOUT:?}"
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    /// A changelog record as a broker hands it over.
    #[derive(Debug, Clone)]
    struct Logged {
        offset: i64,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        headers: weir_state::Headers,
    }

    impl Delivered for Logged {
        fn topic(&self) -> &str {
            "changelog"
        }
        fn partition(&self) -> i32 {
            0
        }
        fn offset(&self) -> i64 {
            self.offset
        }
        fn timestamp_ms(&self) -> Option<i64> {
            None
        }
        fn key(&self) -> Option<&[u8]> {
            Some(&self.key)
        }
        fn payload(&self) -> Option<&[u8]> {
            self.value.as_deref()
        }
        fn headers(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
            self.headers.iter().map(|(name, value)| (name, Some(value)))
        }
    }

    /// What a restore left: the store's entries, its position, the next offset and the
    /// orphans it would remove.
    type Outcome = (
        BTreeMap<(String, String), String>,
        Option<ChangelogPosition>,
        i64,
        Vec<i64>,
    );

    /// Restores `log` into a map as the writer thread does into SQLite, in `mode`, read again
    /// in [`Mode::Marked`] when it is out of order (as `restore_if_behind` does).
    fn restore(log: &[Logged], mode: Mode) -> Outcome {
        let mut store = BTreeMap::new();
        let mut end = None;
        let mut mode = mode;
        loop {
            let mut records = log.iter().cloned();
            let read = read_changelog(
                |_| records.next().map_or(Polled::End, Polled::Record),
                ("topic", "changelog", 0),
                mode,
                &|| false,
                |chunk| {
                    if chunk.start_over {
                        store.clear();
                        end = None;
                    }
                    for (name, key, value) in chunk.entries {
                        match value {
                            Some(v) => store.insert((name, key), v),
                            None => store.remove(&(name, key)),
                        };
                    }
                    end = end.or(chunk.end);
                    true
                },
            )
            .expect("read");
            match read {
                Ok(read) => return (store, end, read.next_offset, read.orphans),
                Err(_) => mode = Mode::Marked,
            }
        }
    }

    /// The mode `restore_if_behind` picks for `log`: in order when its last record is an
    /// offset marker at the highest position of its last record.
    fn mode_for(log: &[Logged]) -> Mode {
        let Some(last) = log.last() else {
            return Mode::Marked;
        };
        match position_of(last) {
            Some(_) if ChangelogEntry::is_offset_marker(Some(&last.key)) => Mode::InOrder,
            _ => Mode::Marked,
        }
    }

    /// One record of a generated log: a state entry of key `key` (a deletion at value 0) or
    /// a marker, at a position that moves by `step` (backwards now and then, as when two
    /// owners' outboxes overlap), in a generation that a rewind may raise; rarely without
    /// headers, as versions before them wrote.
    fn logs() -> impl Strategy<Value = Vec<Logged>> {
        let record = (
            prop::bool::weighted(0.3),
            0u8..3,
            0u32..4,
            prop_oneof![4 => 0i64..3, 1 => -3i64..0],
            prop::bool::weighted(0.03),
            prop::bool::weighted(0.02),
        );
        prop::collection::vec(record, 0..60).prop_map(|records| {
            let (mut next_offset, mut generation) = (0i64, 0i64);
            let mut log = Vec::new();
            for (offset, (is_marker, key, value, step, rewind, headerless)) in
                records.into_iter().enumerate()
            {
                if rewind {
                    generation += 1;
                    next_offset = 0;
                }
                next_offset = (next_offset + step).max(0);
                let position = ChangelogPosition {
                    generation,
                    next_offset,
                };
                let headers = if headerless {
                    weir_state::Headers::default()
                } else {
                    position.headers()
                };
                let (key, value) = if is_marker {
                    let (k, v) = ChangelogEntry::offset_marker(next_offset);
                    (k, Some(v))
                } else {
                    let k = ChangelogEntry::key("counts", &format!("\"k{key}\""));
                    (k, (value > 0).then(|| value.to_string().into_bytes()))
                };
                log.push(Logged {
                    offset: offset as i64,
                    key,
                    value,
                    headers,
                });
            }
            log
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Whatever the log, the restore that applies entries as it reads them (when the log
        /// ends in a marker) leaves what waiting for each batch's marker leaves; also where
        /// the log grew between reading its end and reading it (its end was read at `grown`
        /// records of it, or at all of them).
        #[test]
        fn reading_in_order_restores_what_waiting_for_markers_restores(
            log in logs(),
            grown in any::<prop::sample::Index>(),
            grew in prop::bool::weighted(0.3),
        ) {
            let marked = restore(&log, Mode::Marked);
            let end_read_at = if grew { grown.index(log.len() + 1) } else { log.len() };
            let fast = restore(&log, mode_for(&log[..end_read_at]));
            prop_assert_eq!(fast, marked);
        }
    }

    /// The fast path is taken: an in-order log is restored without a second read.
    #[test]
    fn an_in_order_log_is_read_once() {
        let entry = |offset, key: &str, value: &str, next_offset| Logged {
            offset,
            key: ChangelogEntry::key("counts", key),
            value: Some(value.as_bytes().to_vec()),
            headers: ChangelogPosition {
                generation: 0,
                next_offset,
            }
            .headers(),
        };
        let (marker_key, marker_value) = ChangelogEntry::offset_marker(4);
        let log = vec![
            entry(0, "\"a\"", "1", 2),
            entry(1, "\"b\"", "2", 4),
            Logged {
                offset: 2,
                key: marker_key,
                value: Some(marker_value),
                headers: ChangelogPosition {
                    generation: 0,
                    next_offset: 4,
                }
                .headers(),
            },
        ];
        let mode = mode_for(&log);
        assert!(matches!(mode, Mode::InOrder), "{mode:?}");
        let mut records = log.into_iter();
        let read = read_changelog(
            |_| records.next().map_or(Polled::End, Polled::Record),
            ("topic", "changelog", 0),
            mode,
            &|| false,
            |_| true,
        )
        .expect("read");
        let read = read.map_err(|OutOfOrder(why)| why).expect("in order");
        assert_eq!((read.records, read.next_offset), (3, 4));
    }
}
