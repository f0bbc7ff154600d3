//! How a commit's outbox records are stored: one value (a row of `outbox_runs`) holding them
//! all, in order, instead of a row per record. A commit writes one row however much it emitted
//! (SQLite's cost per row was most of an emit's cost: docs/performance.md), and the outbox
//! deletes a sent commit's records with one row.
//!
//! A record's id is its run's row id and its place in the run ([`record_id`]), so ids rise in
//! the order records were committed.
//!
//! A batch's emits are written in this form as the handler makes them ([`Records`], in the
//! write set), stored as they are, and sent read in place ([`OutboxRun::records`]): an emit
//! allocates nothing of its own between the handler and the producer.

use std::ops::Range;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::headers::{take_part, HeaderSink, Headers};
use crate::wire::header;

/// The first byte of a run: the form of what follows. Form 1 (schema version 6) gave every
/// part a 4-byte length and every header its name; form 2 (version 7) gives lengths as
/// varints, weir's own header names as a byte ([`NAMES`]) and a topic once for the records
/// that follow with the same one: about a third of the bytes of a typical emit.
const FORMAT: u8 = 2;
const FORMAT_1: u8 = 1;

/// Bits of a record id that give its place in its run.
const INDEX_BITS: u32 = 24;

/// Records per run at most (a commit with more writes more runs).
const MAX_RECORDS: usize = 1 << INDEX_BITS;

/// A run's size past which a commit starts another (a row far below SQLite's 1 GB limit).
const MAX_BYTES: usize = 64 << 20;

const HAS_PARTITION: u8 = 1;
const HAS_KEY: u8 = 2;
const HAS_VALUE: u8 = 4;
const HAS_TIMESTAMP: u8 = 8;
/// Form 2: the record's topic is the one before it in the run (and is not written again).
const SAME_TOPIC: u8 = 16;

/// Form 2: after a record's headers.
const END: u8 = 0xff;

/// Form 2: header names written as a byte, `i + 1` for `NAMES[i]` (0: the name follows).
/// Names are only ever added at the end.
const NAMES: [&str; 16] = [
    header::SOURCE_TOPIC,
    header::SOURCE_PARTITION,
    header::SOURCE_OFFSET,
    header::SOURCE_SEQ,
    header::SOURCE_GROUP,
    header::SOURCE_ACKED_BELOW,
    header::SOURCE_NEXT_OFFSET,
    header::SOURCE_GENERATION,
    header::ERROR,
    header::ATTEMPTS,
    header::FAILED_AT_MS,
    header::REASON,
    header::REDRIVE_FROM,
    header::REDRIVE_SOURCE,
    header::KEY,
    header::READ_END,
];

/// A record to produce once its batch is committed: a handler's output, or a changelog entry.
/// It is written to the partition's outbox table in the batch's transaction and deleted once
/// the broker acknowledged it, so it is sent at least once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct OutboxRecord {
    /// Destination topic.
    pub topic: String,
    /// Destination partition; `None` leaves it to the producer's partitioner (by key).
    pub partition: Option<i32>,
    /// The record's key.
    pub key: Option<Vec<u8>>,
    /// The record's value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    /// Headers, in order.
    pub headers: Headers,
    /// The record's timestamp, ms since the Unix epoch; `None` leaves it to the producer (the
    /// time it is sent).
    pub timestamp: Option<i64>,
}

/// The id of the `index`-th record of run `run`.
pub(crate) fn record_id(run: i64, index: usize) -> i64 {
    (run << INDEX_BITS) | index as i64
}

/// The run of the record `id`.
pub(crate) fn run_of(id: i64) -> i64 {
    id >> INDEX_BITS
}

/// Outbox records written as a run of form 2 holds them, one after another: what a batch
/// emits goes straight in, and a commit stores it as it is.
#[derive(Debug, Default, Clone)]
pub(crate) struct Records {
    /// The form byte, then the records (empty while there are none).
    buf: Vec<u8>,
    count: usize,
    /// Where the last record's topic is in `buf`.
    topic: Range<usize>,
}

/// Where [`Records`] stood: what a savepoint goes back to.
#[derive(Debug, Default, Clone)]
pub(crate) struct Mark {
    len: usize,
    count: usize,
    topic: Range<usize>,
}

impl Mark {
    /// How many records there were.
    pub(crate) fn count(&self) -> usize {
        self.count
    }
}

/// Appends the headers of a record being emitted ([`WriteSet::emit_with`]) in place.
///
/// [`WriteSet::emit_with`]: crate::WriteSet::emit_with
#[derive(Debug)]
pub struct HeaderWriter<'a>(&'a mut Vec<u8>);

impl HeaderSink for HeaderWriter<'_> {
    fn push(&mut self, name: &str, value: &[u8]) {
        match NAMES.iter().position(|known| *known == name) {
            Some(i) => self.0.push(i as u8 + 1),
            None => {
                self.0.push(0);
                push_bytes(self.0, name.as_bytes());
            }
        }
        push_bytes(self.0, value);
    }
}

/// A record's parts but its headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Parts<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: Option<i32>,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: Option<&'a [u8]>,
    pub(crate) timestamp: Option<i64>,
}

impl Records {
    /// Appends `r`.
    pub(crate) fn push(&mut self, r: &OutboxRecord) {
        let parts = Parts {
            topic: &r.topic,
            partition: r.partition,
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            timestamp: r.timestamp,
        };
        self.push_headers(parts, r.headers.iter());
    }

    /// Appends a record of `parts` with `headers`.
    fn push_headers<'h>(
        &mut self,
        parts: Parts<'_>,
        headers: impl Iterator<Item = (&'h str, &'h [u8])>,
    ) {
        self.push_with(parts, |h| headers.for_each(|(k, v)| h.push(k, v)));
    }

    /// Appends a record of `parts`, its headers written by `headers`.
    pub(crate) fn push_with(
        &mut self,
        parts: Parts<'_>,
        headers: impl FnOnce(&mut HeaderWriter<'_>),
    ) {
        if self.buf.is_empty() {
            self.buf.push(FORMAT);
        }
        let same_topic = self.count > 0 && self.buf[self.topic.clone()] == *parts.topic.as_bytes();
        let flags = [
            (parts.partition.is_some(), HAS_PARTITION),
            (parts.key.is_some(), HAS_KEY),
            (parts.value.is_some(), HAS_VALUE),
            (parts.timestamp.is_some(), HAS_TIMESTAMP),
            (same_topic, SAME_TOPIC),
        ]
        .iter()
        .filter(|(has, _)| *has)
        .fold(0, |flags, (_, flag)| flags | flag);
        let buf = &mut self.buf;
        buf.push(flags);
        if !same_topic {
            push_varint(buf, parts.topic.len());
            self.topic = buf.len()..buf.len() + parts.topic.len();
            buf.extend_from_slice(parts.topic.as_bytes());
        }
        if let Some(p) = parts.partition {
            buf.extend_from_slice(&p.to_le_bytes());
        }
        for bytes in [parts.key, parts.value].into_iter().flatten() {
            push_bytes(buf, bytes);
        }
        if let Some(t) = parts.timestamp {
            buf.extend_from_slice(&t.to_le_bytes());
        }
        headers(&mut HeaderWriter(buf));
        buf.push(END);
        self.count += 1;
    }

    /// Appends the records of `other`, in order.
    pub(crate) fn append(&mut self, other: &Records) {
        let Some(records) = other.buf.get(1..).filter(|_| other.count > 0) else {
            return;
        };
        if self.buf.is_empty() {
            self.buf.push(FORMAT);
        }
        // `other`'s first record names its topic: it was the first there.
        let at = self.buf.len() - 1;
        self.buf.extend_from_slice(records);
        self.topic = other.topic.start + at..other.topic.end + at;
        self.count += other.count;
    }

    /// How many records there are.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Where the records stand now.
    pub(crate) fn mark(&self) -> Mark {
        Mark {
            len: self.buf.len(),
            count: self.count,
            topic: self.topic.clone(),
        }
    }

    /// Drops the records after `mark`.
    pub(crate) fn truncate(&mut self, mark: &Mark) {
        self.buf.truncate(mark.len);
        self.count = mark.count;
        self.topic = mark.topic.clone();
    }

    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }

    /// The records after `mark`.
    pub(crate) fn since(&self, mark: &Mark) -> Result<Vec<RecordView<'_>>, String> {
        let from = mark.len.max(1);
        let records = self.buf.get(from..).unwrap_or_default();
        let topic = (mark.count > 0).then(|| &self.buf[mark.topic.clone()]);
        parse_records(records, topic)
    }

    /// The runs to store: these records, in one run unless they are too many or too large;
    /// each with its record count.
    pub(crate) fn into_runs(self) -> Result<Vec<(Vec<u8>, usize)>, String> {
        if self.count == 0 {
            return Ok(Vec::new());
        }
        if self.count <= MAX_RECORDS && self.buf.len() <= MAX_BYTES {
            return Ok(vec![(self.buf, self.count)]);
        }
        let mut runs = Vec::new();
        let mut run = Records::default();
        for r in parse_records(&self.buf[1..], None)? {
            if run.count == MAX_RECORDS || run.buf.len() >= MAX_BYTES {
                runs.push((std::mem::take(&mut run.buf), std::mem::take(&mut run.count)));
                run.clear();
            }
            run.push_view(&r);
        }
        runs.push((run.buf, run.count));
        Ok(runs)
    }

    /// Appends a record read from a run.
    fn push_view(&mut self, r: &RecordView<'_>) {
        self.push_headers(r.parts(), r.headers.iter());
    }
}

/// Appends `n` as a varint (LEB128: seven bits a byte, lowest first).
fn push_varint(buf: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        buf.push(n as u8 | 0x80);
        n >>= 7;
    }
    buf.push(n as u8);
}

/// Appends `bytes` as their length (a varint) and the bytes.
fn push_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    push_varint(buf, bytes.len());
    buf.extend_from_slice(bytes);
}

/// The records of a commit waiting in the outbox (a row of `outbox_runs`), as stored.
#[derive(Debug, Clone)]
pub struct OutboxRun {
    pub(crate) id: i64,
    pub(crate) count: usize,
    pub(crate) bytes: Vec<u8>,
}

impl OutboxRun {
    /// Its records, read in place (checked).
    pub fn records(&self) -> Result<Vec<RecordView<'_>>> {
        parse_run(&self.bytes)
            .and_then(|records| match records.len() == self.count {
                true => Ok(records),
                false => Err(format!(
                    "an outbox run of {} records where {} were written",
                    records.len(),
                    self.count
                )),
            })
            .map_err(|reason| Error::Outbox {
                run: self.id,
                reason,
            })
    }

    /// The ids of its records, in order (for [`delete_outbox`]).
    ///
    /// [`delete_outbox`]: crate::PartitionStore::delete_outbox
    pub fn ids(&self) -> impl Iterator<Item = i64> + '_ {
        (0..self.count).map(|i| record_id(self.id, i))
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// An outbox record read in place from a run.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    /// Destination topic.
    pub topic: &'a str,
    /// Destination partition; `None` leaves it to the producer's partitioner (by key).
    pub partition: Option<i32>,
    /// The record's key.
    pub key: Option<&'a [u8]>,
    /// The record's value; `None` is a tombstone.
    pub value: Option<&'a [u8]>,
    /// Headers, in order.
    pub headers: HeadersView<'a>,
    /// The record's timestamp, ms since the Unix epoch.
    pub timestamp: Option<i64>,
}

impl RecordView<'_> {
    /// The record, owned.
    pub fn to_record(&self) -> OutboxRecord {
        OutboxRecord {
            topic: self.topic.to_owned(),
            partition: self.partition,
            key: self.key.map(<[u8]>::to_vec),
            value: self.value.map(<[u8]>::to_vec),
            headers: self.headers.iter().collect(),
            timestamp: self.timestamp,
        }
    }

    fn parts(&self) -> Parts<'_> {
        Parts {
            topic: self.topic,
            partition: self.partition,
            key: self.key,
            value: self.value,
            timestamp: self.timestamp,
        }
    }
}

/// A record's headers read in place from a run.
#[derive(Debug, Clone, Copy)]
pub struct HeadersView<'a> {
    /// The headers and their end (checked by [`parse_records`]).
    bytes: &'a [u8],
    count: usize,
    /// The bytes of all names and values.
    size: usize,
}

impl<'a> HeadersView<'a> {
    /// The headers, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        let mut rest = self.bytes;
        std::iter::from_fn(move || {
            let (name, value) = next_header(&mut rest).ok()??;
            Some((name, value))
        })
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The bytes of all names and values.
    pub fn size(&self) -> usize {
        self.size
    }
}

/// The next header of `b` (`None` at the end of a record's headers), which moves past it.
fn next_header<'a>(b: &mut &'a [u8]) -> Result<Option<(&'a str, &'a [u8])>, String> {
    let (&code, rest) = b.split_first().ok_or(CUT_SHORT)?;
    *b = rest;
    let name = match code {
        END => return Ok(None),
        0 => text(bytes(b)?, "header name")?,
        _ => NAMES
            .get(usize::from(code) - 1)
            .ok_or_else(|| format!("an outbox record's header name of unknown code {code}"))?,
    };
    Ok(Some((name, bytes(b)?)))
}

/// The records of form 2 in `rest`, checked; `topic`: the one of the record before them.
fn parse_records<'a>(
    mut rest: &'a [u8],
    mut topic: Option<&'a [u8]>,
) -> Result<Vec<RecordView<'a>>, String> {
    let mut records = Vec::new();
    while let Some((&flags, tail)) = rest.split_first() {
        rest = tail;
        let named = match flags & SAME_TOPIC {
            0 => bytes(&mut rest)?,
            _ => topic.ok_or("an outbox run's first record names no topic")?,
        };
        topic = Some(named);
        let partition = (flags & HAS_PARTITION != 0)
            .then(|| fixed(&mut rest).map(i32::from_le_bytes))
            .transpose()?;
        let key = (flags & HAS_KEY != 0)
            .then(|| bytes(&mut rest))
            .transpose()?;
        let value = (flags & HAS_VALUE != 0)
            .then(|| bytes(&mut rest))
            .transpose()?;
        let timestamp = (flags & HAS_TIMESTAMP != 0)
            .then(|| fixed(&mut rest).map(i64::from_le_bytes))
            .transpose()?;
        let start = rest;
        let (mut count, mut size) = (0, 0);
        while let Some((name, value)) = next_header(&mut rest)? {
            count += 1;
            size += name.len() + value.len();
        }
        records.push(RecordView {
            topic: text(named, "topic")?,
            partition,
            key,
            value,
            headers: HeadersView {
                bytes: &start[..start.len() - rest.len()],
                count,
                size,
            },
            timestamp,
        });
    }
    Ok(records)
}

/// A stored run of form 1 in form 2 (one run, whatever its size), as a file of schema
/// version 6 is brought up to date; a run of form 2 as it is.
pub(crate) fn in_form_2(run: &[u8]) -> Result<Option<Vec<u8>>, String> {
    if run.first() != Some(&FORMAT_1) {
        return Ok(None);
    }
    let mut records = Records::default();
    decode(run)?.iter().for_each(|r| records.push(r));
    Ok(Some(records.buf))
}

/// The records of a stored run, owned and checked.
pub(crate) fn decode(run: &[u8]) -> Result<Vec<OutboxRecord>, String> {
    match run.split_first() {
        Some((&FORMAT_1, rest)) => decode_format_1(rest),
        _ => Ok(parse_run(run)?.iter().map(RecordView::to_record).collect()),
    }
}

/// The records of a stored run of form 2, read in place and checked.
fn parse_run(run: &[u8]) -> Result<Vec<RecordView<'_>>, String> {
    match run.split_first() {
        Some((&FORMAT, records)) => parse_records(records, None),
        Some((format, _)) => Err(format!("an outbox run of unknown form {format}")),
        None => Err("an empty outbox run".to_owned()),
    }
}

/// The records of a run of form 1 (written by schema version 6).
fn decode_format_1(mut rest: &[u8]) -> Result<Vec<OutboxRecord>, String> {
    let mut records = Vec::new();
    while let Some((&flags, tail)) = rest.split_first() {
        rest = tail;
        let topic = text(take(&mut rest)?, "topic")?.to_owned();
        let partition = (flags & HAS_PARTITION != 0)
            .then(|| fixed(&mut rest).map(i32::from_le_bytes))
            .transpose()?;
        let key = (flags & HAS_KEY != 0)
            .then(|| take(&mut rest).map(<[u8]>::to_vec))
            .transpose()?;
        let value = (flags & HAS_VALUE != 0)
            .then(|| take(&mut rest).map(<[u8]>::to_vec))
            .transpose()?;
        let headers = Headers::from_bytes(take(&mut rest)?.to_vec())?;
        let timestamp = (flags & HAS_TIMESTAMP != 0)
            .then(|| fixed(&mut rest).map(i64::from_le_bytes))
            .transpose()?;
        records.push(OutboxRecord {
            topic,
            partition,
            key,
            value,
            headers,
            timestamp,
        });
    }
    Ok(records)
}

const CUT_SHORT: &str = "an outbox run cut short";

/// `b` as text, or why not.
fn text<'a>(b: &'a [u8], what: &str) -> Result<&'a str, String> {
    std::str::from_utf8(b).map_err(|e| format!("an outbox record's {what}: {e}"))
}

/// The next varint of `b`, which moves past it.
fn varint(b: &mut &[u8]) -> Result<usize, String> {
    let mut n: usize = 0;
    for shift in (0..usize::BITS).step_by(7) {
        let (&byte, rest) = b.split_first().ok_or(CUT_SHORT)?;
        *b = rest;
        n |= usize::from(byte & 0x7f)
            .checked_shl(shift)
            .filter(|v| v >> shift == usize::from(byte & 0x7f))
            .ok_or("an outbox run's length out of range")?;
        if byte & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err("an outbox run's length out of range".to_owned())
}

/// The next part [`push_bytes`] wrote in `b`, which moves past it.
fn bytes<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], String> {
    let len = varint(b)?;
    if b.len() < len {
        return Err(CUT_SHORT.to_owned());
    }
    let (part, rest) = b.split_at(len);
    *b = rest;
    Ok(part)
}

/// Form 1: the next length-prefixed part of `b`, which moves past it.
fn take<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], String> {
    take_part(b).ok_or_else(|| CUT_SHORT.to_owned())
}

/// The next `N` bytes of `b`, which moves past them.
fn fixed<const N: usize>(b: &mut &[u8]) -> Result<[u8; N], String> {
    let (bytes, rest) = b.split_first_chunk::<N>().ok_or(CUT_SHORT)?;
    *b = rest;
    Ok(*bytes)
}

#[cfg(test)]
/// Records as a run of form 1 (schema version 6) stored them.
pub(crate) fn format_1(records: &[OutboxRecord]) -> Vec<u8> {
    let mut buf = vec![FORMAT_1];
    for r in records {
        let flags = [
            (r.partition.is_some(), HAS_PARTITION),
            (r.key.is_some(), HAS_KEY),
            (r.value.is_some(), HAS_VALUE),
            (r.timestamp.is_some(), HAS_TIMESTAMP),
        ];
        buf.push(
            flags
                .iter()
                .filter(|(has, _)| *has)
                .fold(0, |f, (_, flag)| f | flag),
        );
        crate::headers::push_part(&mut buf, r.topic.as_bytes());
        if let Some(p) = r.partition {
            buf.extend_from_slice(&p.to_le_bytes());
        }
        for bytes in [&r.key, &r.value].into_iter().flatten() {
            crate::headers::push_part(&mut buf, bytes);
        }
        crate::headers::push_part(&mut buf, r.headers.as_bytes());
        if let Some(t) = r.timestamp {
            buf.extend_from_slice(&t.to_le_bytes());
        }
    }
    buf
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn record() -> impl Strategy<Value = OutboxRecord> {
        // Long enough for lengths of two varint bytes.
        let bytes = || prop::option::of(prop::collection::vec(any::<u8>(), 0..200));
        // Topics that repeat (a run writes them once) and ones that do not.
        let topic = prop_oneof![
            prop::sample::select(vec!["a", "b", ""]).prop_map(String::from),
            ".{0,6}"
        ];
        // weir's names (written as a byte) and others.
        let name = prop_oneof![
            prop::sample::select(NAMES.to_vec()).prop_map(String::from),
            ".{0,4}"
        ];
        (
            topic,
            any::<Option<i32>>(),
            bytes(),
            bytes(),
            prop::collection::vec((name, prop::collection::vec(any::<u8>(), 0..6)), 0..7),
            any::<Option<i64>>(),
        )
            .prop_map(
                |(topic, partition, key, value, headers, timestamp)| OutboxRecord {
                    topic,
                    partition,
                    key,
                    value,
                    headers: headers.into_iter().collect(),
                    timestamp,
                },
            )
    }

    proptest! {
        /// Records read back as written; a run cut short anywhere is refused or gives fewer
        /// records (cut between two), never other ones.
        #[test]
        fn a_run_reads_back_as_written(records in prop::collection::vec(record(), 0..8)) {
            let mut writer = Records::default();
            for r in &records {
                writer.push(r);
            }
            let runs = writer.into_runs().expect("runs");
            prop_assert!(runs.len() <= 1);
            let (run, n) = runs.into_iter().next().unwrap_or((vec![FORMAT], 0));
            prop_assert_eq!(n, records.len());
            prop_assert_eq!(&decode(&run).expect("decode"), &records);
            for cut in 0..run.len() {
                if let Ok(read) = decode(&run[..cut]) {
                    prop_assert!(read.len() < records.len());
                    prop_assert_eq!(&read[..], &records[..read.len()]);
                }
            }
        }
    }

    #[test]
    fn a_typical_emit_takes_under_two_fifths_of_the_bytes_of_form_1() {
        let emit = |offset: &str| OutboxRecord {
            topic: "orders.enriched".to_owned(),
            partition: None,
            key: Some(b"customer-1234".to_vec()),
            value: Some(b"1765143200000".to_vec()),
            headers: [
                (header::SOURCE_TOPIC, "orders"),
                (header::SOURCE_PARTITION, "3"),
                (header::SOURCE_OFFSET, offset),
                (header::SOURCE_SEQ, "0"),
                (header::SOURCE_GROUP, "shop-enrich"),
            ]
            .into_iter()
            .collect(),
            timestamp: Some(1_765_143_200_000),
        };
        let records = [emit("41"), emit("42")];
        let mut writer = Records::default();
        records.iter().for_each(|r| writer.push(r));
        let (run, _) = writer.into_runs().expect("runs").remove(0);
        let old = format_1(&records);
        assert_eq!(decode(&old), Ok(records.to_vec()), "form 1 is still read");
        assert!(
            run.len() * 5 < old.len() * 2,
            "{} bytes against {}",
            run.len(),
            old.len()
        );
    }

    #[test]
    fn records_past_64_mib_go_into_more_runs() {
        let record = |value: Vec<u8>| OutboxRecord {
            topic: "out".into(),
            partition: None,
            key: None,
            value: Some(value),
            headers: Headers::default(),
            timestamp: None,
        };
        let records = [record(vec![1; MAX_BYTES]), record(vec![2]), record(vec![3])];
        let mut writer = Records::default();
        records.iter().for_each(|r| writer.push(r));
        let runs = writer.into_runs().expect("runs");
        let counts: Vec<usize> = runs.iter().map(|(_, n)| *n).collect();
        assert_eq!(counts, [1, 2]);
        let read: Vec<OutboxRecord> = runs
            .iter()
            .flat_map(|(run, _)| decode(run).expect("decode"))
            .collect();
        assert_eq!(read, records, "the second run names its topic again");
    }

    #[test]
    fn broken_runs_are_refused() {
        assert_eq!(
            decode(&[9]),
            Err("an outbox run of unknown form 9".to_owned())
        );
        // A first record that says its topic is the one before it.
        assert!(decode(&[FORMAT, SAME_TOPIC, END]).is_err());
        // A header name of a code past the known names.
        assert!(decode(&[FORMAT, 0, 1, b't', NAMES.len() as u8 + 1, 0, END]).is_err());
        // A length of more varint bytes than a length has.
        assert!(decode(&[
            FORMAT, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1
        ])
        .is_err());
        // Headers that never end.
        assert!(decode(&[FORMAT, 0, 1, b't', 1, 0]).is_err());
        assert_eq!(decode(&[FORMAT, 0, 1, b't', END]).map(|r| r.len()), Ok(1));
    }

    #[test]
    fn ids_rise_with_runs_and_places() {
        assert!(record_id(1, MAX_RECORDS - 1) < record_id(2, 0));
        assert_eq!(run_of(record_id(7, 12)), 7);
    }
}
