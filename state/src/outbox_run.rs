//! How a commit's outbox records are stored: one value (a row of `outbox_runs`) holding them
//! all, in order, instead of a row per record. A commit writes one row however much it emitted
//! (SQLite's cost per row was most of an emit's cost: docs/performance.md), and the outbox
//! deletes a sent commit's records with one row.
//!
//! A record's id is its run's row id and its place in the run ([`record_id`]), so ids rise in
//! the order records were committed.

use crate::headers::{push_part, take_part, Headers};
use crate::write_set::OutboxRecord;

/// The first byte of a run: the form of what follows.
const FORMAT: u8 = 1;

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

/// The id of the `index`-th record of run `run`.
pub(crate) fn record_id(run: i64, index: usize) -> i64 {
    (run << INDEX_BITS) | index as i64
}

/// The run of the record `id`.
pub(crate) fn run_of(id: i64) -> i64 {
    id >> INDEX_BITS
}

/// Runs being written: records go into the last one until it is full.
#[derive(Debug, Default)]
pub(crate) struct RunWriter {
    /// Each run's encoded records and how many there are.
    runs: Vec<(Vec<u8>, usize)>,
}

impl RunWriter {
    /// Appends `r` to the last run, or to a new one when that is full.
    pub(crate) fn push(&mut self, r: &OutboxRecord) -> Result<(), String> {
        let full = |(buf, n): &(Vec<u8>, usize)| *n == MAX_RECORDS || buf.len() >= MAX_BYTES;
        if self.runs.last().is_none_or(full) {
            self.runs.push((vec![FORMAT], 0));
        }
        let Some((buf, n)) = self.runs.last_mut() else {
            unreachable!("a run was just pushed")
        };
        let flags = [
            (r.partition.is_some(), HAS_PARTITION),
            (r.key.is_some(), HAS_KEY),
            (r.value.is_some(), HAS_VALUE),
            (r.timestamp.is_some(), HAS_TIMESTAMP),
        ]
        .iter()
        .filter(|(has, _)| *has)
        .fold(0, |flags, (_, flag)| flags | flag);
        buf.push(flags);
        part(buf, r.topic.as_bytes())?;
        if let Some(p) = r.partition {
            buf.extend_from_slice(&p.to_le_bytes());
        }
        for bytes in [&r.key, &r.value].into_iter().flatten() {
            part(buf, bytes)?;
        }
        part(buf, r.headers.as_bytes())?;
        if let Some(t) = r.timestamp {
            buf.extend_from_slice(&t.to_le_bytes());
        }
        *n += 1;
        Ok(())
    }

    /// The runs, each with its record count.
    pub(crate) fn finish(self) -> Vec<(Vec<u8>, usize)> {
        self.runs
    }
}

fn part(buf: &mut Vec<u8>, bytes: &[u8]) -> Result<(), String> {
    match push_part(buf, bytes) {
        true => Ok(()),
        false => Err(format!(
            "an outbox record's part of {} bytes (4 GiB at most)",
            bytes.len()
        )),
    }
}

/// The records of a stored run, checked.
pub(crate) fn decode(run: &[u8]) -> Result<Vec<OutboxRecord>, String> {
    let Some((&format, mut rest)) = run.split_first() else {
        return Err("an empty outbox run".to_owned());
    };
    if format != FORMAT {
        return Err(format!("an outbox run of unknown form {format}"));
    }
    let mut records = Vec::new();
    while let Some((&flags, tail)) = rest.split_first() {
        rest = tail;
        let topic = String::from_utf8(take(&mut rest)?.to_vec())
            .map_err(|e| format!("an outbox record's topic: {e}"))?;
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

/// The next length-prefixed part of `b`, which moves past it.
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
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn record() -> impl Strategy<Value = OutboxRecord> {
        let bytes = || prop::option::of(prop::collection::vec(any::<u8>(), 0..10));
        (
            ".{0,6}",
            any::<Option<i32>>(),
            bytes(),
            bytes(),
            prop::collection::vec((".{0,4}", prop::collection::vec(any::<u8>(), 0..6)), 0..3),
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
                writer.push(r).expect("push");
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
    fn ids_rise_with_runs_and_places() {
        assert!(record_id(1, MAX_RECORDS - 1) < record_id(2, 0));
        assert_eq!(run_of(record_id(7, 12)), 7);
        assert_eq!(
            decode(&[9]),
            Err("an outbox run of unknown form 9".to_owned())
        );
    }
}
