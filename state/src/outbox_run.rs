//! How a commit's outbox records are stored: one value (a row of `outbox_runs`) holding them
//! all, in order, instead of a row per record. A commit writes one row however much it emitted
//! (SQLite's cost per row was most of an emit's cost: docs/performance.md), and the outbox
//! deletes a sent commit's records with one row.
//!
//! A record's id is its run's row id and its place in the run ([`record_id`]), so ids rise in
//! the order records were committed.

use crate::headers::{take_part, Headers};
use crate::wire::header;
use crate::write_set::OutboxRecord;

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

/// The id of the `index`-th record of run `run`.
pub(crate) fn record_id(run: i64, index: usize) -> i64 {
    (run << INDEX_BITS) | index as i64
}

/// The run of the record `id`.
pub(crate) fn run_of(id: i64) -> i64 {
    id >> INDEX_BITS
}

/// A run being written.
#[derive(Debug)]
struct Open {
    buf: Vec<u8>,
    records: usize,
    /// Where the topic of the last record is in `buf`.
    topic: std::ops::Range<usize>,
}

/// Runs being written: records go into the last one until it is full.
#[derive(Debug, Default)]
pub(crate) struct RunWriter {
    runs: Vec<Open>,
}

impl RunWriter {
    /// Appends `r` to the last run, or to a new one when that is full.
    pub(crate) fn push(&mut self, r: &OutboxRecord) {
        let full = |run: &Open| run.records == MAX_RECORDS || run.buf.len() >= MAX_BYTES;
        let run = match self.runs.last_mut() {
            Some(run) if !full(run) => run,
            _ => {
                self.runs.push(Open {
                    buf: vec![FORMAT],
                    records: 0,
                    topic: 0..0,
                });
                self.runs.last_mut().expect("a run was just pushed")
            }
        };
        let same_topic = run.records > 0 && run.buf[run.topic.clone()] == *r.topic.as_bytes();
        let flags = [
            (r.partition.is_some(), HAS_PARTITION),
            (r.key.is_some(), HAS_KEY),
            (r.value.is_some(), HAS_VALUE),
            (r.timestamp.is_some(), HAS_TIMESTAMP),
            (same_topic, SAME_TOPIC),
        ]
        .iter()
        .filter(|(has, _)| *has)
        .fold(0, |flags, (_, flag)| flags | flag);
        let buf = &mut run.buf;
        buf.push(flags);
        if !same_topic {
            push_varint(buf, r.topic.len());
            run.topic = buf.len()..buf.len() + r.topic.len();
            buf.extend_from_slice(r.topic.as_bytes());
        }
        if let Some(p) = r.partition {
            buf.extend_from_slice(&p.to_le_bytes());
        }
        for bytes in [&r.key, &r.value].into_iter().flatten() {
            push_bytes(buf, bytes);
        }
        push_varint(buf, r.headers.len());
        for (name, value) in r.headers.iter() {
            match NAMES.iter().position(|known| *known == name) {
                Some(i) => buf.push(i as u8 + 1),
                None => {
                    buf.push(0);
                    push_bytes(buf, name.as_bytes());
                }
            }
            push_bytes(buf, value);
        }
        if let Some(t) = r.timestamp {
            buf.extend_from_slice(&t.to_le_bytes());
        }
        run.records += 1;
    }

    /// The runs, each with its record count.
    pub(crate) fn finish(self) -> Vec<(Vec<u8>, usize)> {
        self.runs.into_iter().map(|r| (r.buf, r.records)).collect()
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

/// The records of a stored run, checked.
pub(crate) fn decode(run: &[u8]) -> Result<Vec<OutboxRecord>, String> {
    match run.split_first() {
        None => Err("an empty outbox run".to_owned()),
        Some((&FORMAT, rest)) => decode_records(rest),
        Some((&FORMAT_1, rest)) => decode_format_1(rest),
        Some((format, _)) => Err(format!("an outbox run of unknown form {format}")),
    }
}

/// The records of a run of form 2.
fn decode_records(mut rest: &[u8]) -> Result<Vec<OutboxRecord>, String> {
    let mut records: Vec<OutboxRecord> = Vec::new();
    while let Some((&flags, tail)) = rest.split_first() {
        rest = tail;
        let topic = match (flags & SAME_TOPIC != 0, records.last()) {
            (true, Some(before)) => before.topic.clone(),
            (true, None) => return Err("an outbox run's first record names no topic".into()),
            (false, _) => text(bytes(&mut rest)?, "topic")?.to_owned(),
        };
        let partition = (flags & HAS_PARTITION != 0)
            .then(|| fixed(&mut rest).map(i32::from_le_bytes))
            .transpose()?;
        let key = (flags & HAS_KEY != 0)
            .then(|| bytes(&mut rest).map(<[u8]>::to_vec))
            .transpose()?;
        let value = (flags & HAS_VALUE != 0)
            .then(|| bytes(&mut rest).map(<[u8]>::to_vec))
            .transpose()?;
        let count = varint(&mut rest)?;
        let mut headers = Headers::default();
        for _ in 0..count {
            let (&code, tail) = rest.split_first().ok_or(CUT_SHORT)?;
            rest = tail;
            let name = match code {
                0 => text(bytes(&mut rest)?, "header name")?,
                _ => NAMES.get(usize::from(code) - 1).ok_or_else(|| {
                    format!("an outbox record's header name of unknown code {code}")
                })?,
            };
            headers.push(name, bytes(&mut rest)?);
        }
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
            let mut writer = RunWriter::default();
            for r in &records {
                writer.push(r);
            }
            let runs = writer.finish();
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
        let mut writer = RunWriter::default();
        records.iter().for_each(|r| writer.push(r));
        let (run, _) = writer.finish().remove(0);
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
    fn broken_runs_are_refused() {
        assert_eq!(
            decode(&[9]),
            Err("an outbox run of unknown form 9".to_owned())
        );
        // A first record that says its topic is the one before it.
        assert!(decode(&[FORMAT, SAME_TOPIC, 0]).is_err());
        // A header name of a code past the known names.
        assert!(decode(&[FORMAT, 0, 1, b't', 1, NAMES.len() as u8 + 1, 0]).is_err());
        // A length of more varint bytes than a length has.
        assert!(decode(&[
            FORMAT, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1
        ])
        .is_err());
        assert_eq!(decode(&[FORMAT, 0, 1, b't', 0]).map(|r| r.len()), Ok(1));
    }

    #[test]
    fn ids_rise_with_runs_and_places() {
        assert!(record_id(1, MAX_RECORDS - 1) < record_id(2, 0));
        assert_eq!(run_of(record_id(7, 12)), 7);
    }
}
