//! Reading tables from their topics: a co-partitioned table's partition into its input
//! partition's store (caught up before the partition's first record and before each batch),
//! and global tables, in full, into the worker's memory (caught up before the worker joins
//! its group, then followed while it runs). Also the check at start that co-partitioned
//! tables have their inputs' partition counts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use weir_state::PartitionStore;

use crate::broker::Polled;
use crate::broker::kafka::{Connection, LogReader, LogRecord};
use crate::config::{Config, TableSource};
use crate::error::{Error, Result};
use crate::inbound::Delivered;
use crate::observe::metric_names::{TABLE_RECORDS_SKIPPED_TOTAL, TABLE_RECORDS_TOTAL};
use crate::processing::table::{self, GlobalTables};

/// How long catching up waits without a record before giving up.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// After the broker said "end of partition", how long to wait for records up to the end the
/// offsets query gave (past it, the rest are offsets without records: transaction markers).
const END_GRACE: Duration = Duration::from_secs(1);
/// Table records written per SQLite transaction while catching up.
const CHUNK: usize = 20_000;

/// Reads table partitions from a position up to their end.
pub(crate) struct TableReader {
    reader: LogReader,
    /// Next offset to read, per (topic, partition).
    next: HashMap<(String, i32), i64>,
    /// A catch-up has run: the positions in `next` were read from the logs by this reader,
    /// not stored by an earlier one.
    caught_up_once: bool,
}

impl std::fmt::Debug for TableReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableReader")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

/// One table record read.
type Read<'m> = LogRecord<'m>;

impl TableReader {
    /// A reader of `partitions` (topic, partition, next offset or `None`: from the start).
    pub(crate) fn open(
        connection: &Connection,
        partitions: &[(String, i32, Option<i64>)],
    ) -> Result<Self, String> {
        // A stored position the log no longer has reads the table again from its start;
        // `take` says so.
        let reader = connection.table_reader()?;
        reader.read_each_from(partitions)?;
        let next = partitions
            .iter()
            .map(|(topic, partition, from)| ((topic.clone(), *partition), from.unwrap_or(0)))
            .collect();
        Ok(Self {
            reader,
            next,
            caught_up_once: false,
        })
    }

    /// Reads every partition up to its end as the broker tells it now, handing the records to
    /// `apply` in chunks (with the positions after them). Returns the number of records.
    fn catch_up(
        &mut self,
        cancelled: &dyn Fn() -> bool,
        mut apply: impl FnMut(&[Read<'_>], &HashMap<(String, i32), i64>) -> Result<(), String>,
    ) -> Result<u64, String> {
        let mut ends = HashMap::new();
        for ((topic, partition), next) in &mut self.next {
            let high = self.reader.end(topic, *partition)?;
            if high < *next && self.caught_up_once {
                // Some brokers (tansu) answer the offsets query with less than the end (see
                // below): a position this reader read to stands. A topic recreated since is
                // read from its start when a fetch finds the position out of range (`take`).
                continue;
            }
            if high < *next {
                // A stored position: only a topic deleted and created again (or a log
                // truncated by an unclean leader election) ends below it, or the offsets
                // query answered short (tansu), and then the table is read again once.
                tracing::warn!(
                    %topic,
                    partition,
                    position = *next,
                    end = high,
                    "the table's stored position is past its log's end (the topic recreated?): reading it again from the start"
                );
                self.reader.rewind(topic, *partition)?;
                *next = 0;
            }
            if high > *next {
                ends.insert((topic.clone(), *partition), high);
            }
        }
        let mut records = 0u64;
        let mut chunk: Vec<Read<'_>> = Vec::new();
        let mut last_record = Instant::now();
        let mut eof_at: Option<Instant> = None;
        // End-of-partition events since the last record (they name no topic: the tables of
        // one input partition share its number).
        let mut eofs = 0usize;
        let mut moved = false;
        let next = &mut self.next;
        let behind = |next: &HashMap<(String, i32), i64>| {
            ends.iter()
                .any(|(tp, end)| next.get(tp).is_some_and(|n| n < end))
        };
        while behind(next) {
            if cancelled() {
                return Err("stopped while reading tables".into());
            }
            match self.reader.poll(Duration::from_millis(100)) {
                Polled::Nothing => {}
                Polled::End => {
                    eof_at.get_or_insert_with(Instant::now);
                    eofs += 1;
                }
                Polled::Failed(e) => return Err(format!("reading tables: {e}")),
                Polled::Record(msg) => {
                    last_record = Instant::now();
                    eof_at = None;
                    eofs = 0;
                    records += take(next, &mut chunk, msg);
                    if chunk.len() >= CHUNK {
                        apply(&chunk, next)?;
                        chunk.clear();
                    }
                    continue;
                }
            }
            if eof_at.is_some_and(|t| t.elapsed() >= END_GRACE) {
                tracing::debug!(
                    ?ends,
                    "tables: the broker reports their end short of the offsets it gave (transaction markers); caught up"
                );
                // Every partition still short of its end said "end": the rest are offsets
                // without records (a transaction's commit marker, a compacted tail). Their
                // positions move to the end, so the next catch-up does not wait for them again.
                let short: Vec<&(String, i32)> = ends
                    .iter()
                    .filter(|(tp, end)| next.get(*tp).is_some_and(|n| n < *end))
                    .map(|(tp, _)| tp)
                    .collect();
                if eofs >= short.len() {
                    for tp in short {
                        if let (Some(n), Some(end)) = (next.get_mut(tp), ends.get(tp)) {
                            *n = *end;
                            moved = true;
                        }
                    }
                }
                break;
            }
            if last_record.elapsed() >= STALL_TIMEOUT {
                return Err(format!(
                    "no table record for {STALL_TIMEOUT:?} although the end is further: ends {ends:?}, read up to {next:?}"
                ));
            }
        }
        // Some brokers (tansu) answer the offsets query with the last record batch's first
        // offset plus one: the rest of that batch came in the same fetch response as its first
        // record, so it waits in the local queue.
        loop {
            match self.reader.poll(Duration::ZERO) {
                Polled::Nothing => break,
                Polled::End => {}
                Polled::Failed(e) => return Err(format!("reading tables: {e}")),
                Polled::Record(msg) => records += take(next, &mut chunk, msg),
            }
        }
        if !chunk.is_empty() || moved {
            apply(&chunk, next)?;
        }
        self.caught_up_once = true;
        Ok(records)
    }

    /// Hands what arrived within `timeout` to `apply` (a global table, kept current).
    fn poll_some(&mut self, timeout: Duration, apply: impl Fn(&Read<'_>)) {
        let mut wait = timeout;
        for _ in 0..CHUNK {
            match self.reader.poll(wait) {
                Polled::Nothing => return,
                Polled::End => {}
                Polled::Failed(e) => {
                    tracing::warn!("reading global tables: {e}");
                    return;
                }
                Polled::Record(msg) => {
                    self.next
                        .insert((msg.topic().to_owned(), msg.partition()), msg.offset() + 1);
                    apply(&msg);
                }
            }
            wait = Duration::ZERO;
        }
    }
}

/// Moves the position of `msg`'s partition past it and adds it to `chunk`; 1 if it is a
/// record of a partition being read, else 0.
fn take<'m>(
    next: &mut HashMap<(String, i32), i64>,
    chunk: &mut Vec<Read<'m>>,
    msg: Read<'m>,
) -> u64 {
    let Some(n) = next.get_mut(&(msg.topic().to_owned(), msg.partition())) else {
        return 0;
    };
    if msg.offset() < *n {
        tracing::warn!(
            topic = msg.topic(),
            partition = msg.partition(),
            position = *n,
            restart = msg.offset(),
            "the table's stored position is outside its log (compacted or deleted below it, or the topic recreated): reading it again from the start"
        );
    }
    *n = msg.offset() + 1;
    chunk.push(msg);
    1
}

/// The co-partitioned tables of one input partition, in its store.
#[derive(Debug)]
pub(crate) struct PartitionTables {
    reader: TableReader,
    /// Store name per table topic.
    stores: HashMap<String, &'static str>,
}

impl PartitionTables {
    /// A reader of `tables`' partition `partition`, from where `store` says each was read.
    pub(crate) fn open(
        connection: &Connection,
        store: &PartitionStore,
        tables: &[TableSource],
        partition: i32,
    ) -> Result<Self, String> {
        let mut from = Vec::new();
        for t in tables {
            let next = table::position(store, &t.topic, partition).map_err(|e| e.to_string())?;
            from.push((t.topic.clone(), partition, next));
        }
        Ok(Self {
            reader: TableReader::open(connection, &from)?,
            stores: tables.iter().map(|t| (t.topic.clone(), t.name)).collect(),
        })
    }

    /// Reads each table partition to its end into `store`, each chunk in one transaction with
    /// the positions after it. Returns the number of records read.
    pub(crate) fn catch_up(
        &mut self,
        store: &PartitionStore,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<u64, String> {
        let stores = &self.stores;
        self.reader.catch_up(cancelled, |chunk, next| {
            let mut entries = Vec::with_capacity(chunk.len() + next.len());
            for r in chunk {
                let Some(name) = stores.get(r.topic()) else {
                    continue;
                };
                if let Some(e) = usable(name, r) {
                    entries.push(e);
                }
            }
            for ((topic, partition), n) in next {
                entries.push(table::position_entry(topic, *partition, *n));
            }
            store.apply_unlogged(&entries).map_err(|e| e.to_string())
        })
    }
}

/// A table record as a state entry; an unusable one is counted, logged and skipped.
fn usable(store: &str, r: &Read<'_>) -> Option<(String, String, Option<String>)> {
    metrics::counter!(TABLE_RECORDS_TOTAL, "topic" => r.topic().to_owned()).increment(1);
    match table::entry(store, r.key(), r.payload()) {
        Ok(e) => Some(e),
        Err(why) => {
            metrics::counter!(TABLE_RECORDS_SKIPPED_TOTAL, "topic" => r.topic().to_owned())
                .increment(1);
            tracing::warn!(
                topic = r.topic(),
                partition = r.partition(),
                offset = r.offset(),
                "table record skipped: {why}"
            );
            None
        }
    }
}

/// Global tables being followed; dropping it stops the reader thread.
#[derive(Debug)]
pub(crate) struct GlobalFollower {
    stop: Arc<AtomicBool>,
}

impl Drop for GlobalFollower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Reads the global `tables` in full into `globals` (blocking), then follows them on a thread
/// of their own until the returned follower is dropped.
pub(crate) fn follow_globals(
    connection: &Connection,
    tables: &[TableSource],
    globals: &Arc<GlobalTables>,
    cancelled: &dyn Fn() -> bool,
) -> Result<GlobalFollower> {
    let failed = |message: String| Error::Table {
        topics: tables.iter().map(|t| t.topic.clone()).collect(),
        message,
    };
    let counts = connection
        .partition_counts(tables.iter().map(|t| t.topic.as_str()))
        .map_err(failed)?;
    let mut from = Vec::new();
    for t in tables {
        let n = counts
            .get(t.topic.as_str())
            .copied()
            .flatten()
            .ok_or_else(|| failed(format!("global table topic {:?} does not exist", t.topic)))?;
        from.extend((0..n).map(|p| (t.topic.clone(), p, None)));
    }
    let names: Arc<HashMap<String, &'static str>> =
        Arc::new(tables.iter().map(|t| (t.topic.clone(), t.name)).collect());
    let apply = {
        let (names, globals) = (Arc::clone(&names), Arc::clone(globals));
        move |r: &Read<'_>| {
            let Some(name) = names.get(r.topic()) else {
                return;
            };
            if let Some((_, key, value)) = usable(name, r) {
                globals.apply(name, key, value);
            }
        }
    };
    let started = Instant::now();
    let mut reader = TableReader::open(connection, &from).map_err(failed)?;
    let records = reader
        .catch_up(cancelled, |chunk, _| {
            chunk.iter().for_each(&apply);
            Ok(())
        })
        .map_err(failed)?;
    for t in tables {
        tracing::info!(
            topic = %t.topic,
            keys = globals.len(t.name),
            records,
            took_ms = started.elapsed().as_millis() as u64,
            "global table read"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    std::thread::Builder::new()
        .name("weir-global-tables".into())
        .spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                reader.poll_some(Duration::from_millis(100), &apply);
            }
        })
        .map_err(|source| Error::Io {
            context: "starting the global table reader",
            source,
        })?;
    Ok(GlobalFollower { stop })
}

/// Refuses co-partitioned tables whose topic is missing or has another partition count than
/// an input topic: their partitions would not hold the input partitions' keys.
pub(crate) fn check_copartitioned(
    config: &Config,
    connection: &crate::broker::Connection,
) -> Result<()> {
    let tables = config.tables(false);
    if tables.is_empty() {
        return Ok(());
    }
    let topics = tables
        .iter()
        .map(|t| t.topic.as_str())
        .chain(config.topics.iter().map(String::as_str));
    let counts = connection
        .partition_counts(topics)
        .map_err(|message| Error::Table {
            topics: tables.iter().map(|t| t.topic.clone()).collect(),
            message,
        })?;
    for t in &tables {
        let Some(table_n) = counts.get(t.topic.as_str()).copied().flatten() else {
            return Err(Error::Table {
                topics: vec![t.topic.clone()],
                message: format!(
                    "table topic {:?} does not exist; create it with as many partitions as {}",
                    t.topic,
                    config.topics.join(", ")
                ),
            });
        };
        for input in &config.topics {
            let Some(input_n) = counts.get(input.as_str()).copied().flatten() else {
                continue; // auto-created, or reported by the consumer
            };
            if input_n != table_n {
                return Err(Error::NotCopartitioned {
                    table: t.topic.clone(),
                    table_partitions: table_n,
                    input: input.clone(),
                    input_partitions: input_n,
                });
            }
        }
    }
    Ok(())
}
