//! The formats weir writes to Kafka, in one place for the writer (this crate's commit, the
//! framework's outbox and dead letters) and the readers (changelog restore, tools):
//! record headers and changelog entries.

use crate::headers::Headers;

/// Headers weir adds to the records it produces.
pub mod header {
    use crate::headers::{HeaderSink, Headers};

    /// Topic of the record an emitted record or dead letter came from.
    pub const SOURCE_TOPIC: &str = "weir.source.topic";
    /// Partition of the record an emitted record or dead letter came from.
    pub const SOURCE_PARTITION: &str = "weir.source.partition";
    /// Offset of the record an emitted record or dead letter came from.
    pub const SOURCE_OFFSET: &str = "weir.source.offset";
    /// Which of the records emitted while processing the source record this is (0, 1, ...):
    /// with the source offset, it identifies an emitted record for de-duplication downstream.
    pub const SOURCE_SEQ: &str = "weir.source.seq";
    /// On emitted records: the consumer group of the worker that emitted it (a pipeline
    /// stage's is `<pipeline>-<stage>`). Two writers reading the same source partition are
    /// told apart by it downstream.
    pub const SOURCE_GROUP: &str = "weir.source.group";
    /// On emitted records, added when they are sent: every record the writer (its
    /// `weir.source.group`) emitted from source offsets below this one, of the same source
    /// partition, was acknowledged by the broker before this one was sent. So a downstream
    /// partition has read all of them that it will ever get before it reads this record, and
    /// need remember only what it applied at and above it (a send that failed and was made
    /// again lands after later ones).
    pub const SOURCE_ACKED_BELOW: &str = "weir.source.acked_below";
    /// On changelog entries: the next offset of the batch they came from.
    pub const SOURCE_NEXT_OFFSET: &str = "weir.source.next_offset";
    /// On changelog entries: the rewind generation of the store that wrote them (absent: 0).
    /// A rewind (`weir reset`) raises it; a restore follows the highest generation it reads,
    /// so entries written before a rewind never outrank those after it.
    pub const SOURCE_GENERATION: &str = "weir.source.generation";
    /// On dead letters: the error of the last attempt.
    pub const ERROR: &str = "weir.error";
    /// On dead letters: attempts made.
    pub const ATTEMPTS: &str = "weir.attempts";
    /// On dead letters: when it was dead-lettered, in ms since the epoch.
    pub const FAILED_AT_MS: &str = "weir.failed_at_ms";
    /// On dead letters: why (`failed`, `undecodable`, `follows-dead-letter`).
    pub const REASON: &str = "weir.reason";
    /// On redriven records (`weir dlq redrive`): the dead letter they were produced from,
    /// `<dead-letter topic>/<partition>/<offset>`.
    pub const REDRIVE_FROM: &str = "weir.redrive.from";
    /// On redriven records: where the dead letter came from, `<topic>/<partition>/<offset>`.
    pub const REDRIVE_SOURCE: &str = "weir.redrive.source";
    /// On changelog entries in a RabbitMQ stream (`<changelog>.<lane>`, published through the
    /// default exchange, so the routing key is the stream's name): the entry's key.
    pub const KEY: &str = "weir.key";
    /// On the end marks a changelog read publishes to a RabbitMQ stream (an AMQP read of a
    /// stream never says where it ends): the read's id. The read ends at its own mark; every
    /// read skips the others.
    pub const READ_END: &str = "weir.read_end";

    /// Appends the `weir.source.*` headers of a record produced because of record `offset`
    /// of `topic`/`partition` (no offset header when no single record caused it: a timer, a
    /// closing window).
    pub fn push_source(to: &mut impl HeaderSink, topic: &str, partition: i32, offset: Option<i64>) {
        to.push(SOURCE_TOPIC, topic.as_bytes());
        push_number(to, SOURCE_PARTITION, partition.into());
        if let Some(offset) = offset {
            push_number(to, SOURCE_OFFSET, offset);
        }
    }

    /// Appends the headers weir gives a record a handler emitted while processing record
    /// `offset` of `topic`/`partition`: the source position, `seq` and the writer's `group`,
    /// in that order and last (see [`emitted_offset`]).
    pub fn push_emitted(
        to: &mut impl HeaderSink,
        topic: &str,
        partition: i32,
        offset: i64,
        seq: usize,
        group: &str,
    ) {
        to.push(SOURCE_TOPIC, topic.as_bytes());
        push_number(to, SOURCE_PARTITION, partition.into());
        push_number(to, SOURCE_OFFSET, offset);
        push_number(to, SOURCE_SEQ, i64::try_from(seq).unwrap_or(i64::MAX));
        to.push(SOURCE_GROUP, group.as_bytes());
    }

    /// Appends `name` = `n` in decimal.
    pub(crate) fn push_number(to: &mut impl HeaderSink, name: &str, n: i64) {
        use std::io::Write;
        let mut digits = [0u8; 20];
        let mut at = &mut digits[..];
        let _ = write!(at, "{n}");
        let len = 20 - at.len();
        to.push(name, &digits[..len]);
    }

    /// The source offset of a record a handler emitted, read from the headers
    /// [`push_emitted`] appended; `None` for anything else (a timer's emit, a late record, a
    /// changelog entry), whatever headers a handler passed along.
    pub fn emitted_offset(headers: &Headers) -> Option<i64> {
        emitted_offset_in(headers.iter(), headers.len())
    }

    /// [`emitted_offset`] of `len` headers read in order.
    pub fn emitted_offset_in<'a>(
        headers: impl Iterator<Item = (&'a str, &'a [u8])>,
        len: usize,
    ) -> Option<i64> {
        let mut last = headers.skip(len.checked_sub(5)?);
        let mut offset = None;
        for name in [
            SOURCE_TOPIC,
            SOURCE_PARTITION,
            SOURCE_OFFSET,
            SOURCE_SEQ,
            SOURCE_GROUP,
        ] {
            let (n, value) = last.next()?;
            if n != name {
                return None;
            }
            if name == SOURCE_OFFSET {
                offset = Some(value);
            }
        }
        std::str::from_utf8(offset?).ok()?.parse().ok()
    }
}

/// Where a record produced by weir came from, as its `weir.source.*` headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePosition {
    /// The source record's topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Which of the records emitted for it this is (0 when not given: the record itself, e.g.
    /// a dead letter or a late record).
    pub seq: u32,
    /// The group of the worker that emitted it, when given (emits carry it; late records,
    /// dead letters and emits of earlier weir versions do not).
    pub group: Option<String>,
    /// Its `weir.source.acked_below`, when given: the writer's emits from source offsets
    /// below it were all acknowledged before this one was sent.
    pub acked_below: Option<i64>,
}

impl SourcePosition {
    /// Reads the `weir.source.*` headers (the last of each name: weir appends its own after
    /// any a handler passed along); `None` unless topic, partition and offset are all there.
    pub fn from_headers<'h>(
        headers: impl Iterator<Item = (&'h str, Option<&'h [u8]>)>,
    ) -> Option<Self> {
        let (mut topic, mut partition, mut offset, mut seq) = (None, None, None, None);
        let (mut group, mut acked_below) = (None, None);
        for (name, value) in headers {
            let Some(text) = value.and_then(|v| std::str::from_utf8(v).ok()) else {
                continue;
            };
            match name {
                header::SOURCE_TOPIC => topic = Some(text),
                header::SOURCE_PARTITION => partition = text.parse().ok(),
                header::SOURCE_OFFSET => offset = text.parse().ok(),
                header::SOURCE_SEQ => seq = text.parse().ok(),
                header::SOURCE_GROUP => group = Some(text),
                header::SOURCE_ACKED_BELOW => acked_below = text.parse().ok(),
                _ => {}
            }
        }
        Some(Self {
            topic: topic?.to_owned(),
            partition: partition?,
            offset: offset?,
            seq: seq.unwrap_or(0),
            group: group.map(str::to_owned),
            acked_below,
        })
    }
}

/// The partition Kafka's Java client (and weir's producer, `murmur2_random`) puts a record
/// with `key` in, of `partitions`: `(murmur2(key) & 0x7fffffff) % partitions`. Tools use it
/// to find the partition store that holds a key.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    let positive = murmur2(key) & 0x7fff_ffff;
    positive % partitions.max(1)
}

/// CRC-32 (IEEE, as zlib): librdkafka's default partitioner (`consistent_random`) puts a record
/// with `key` in partition `crc32(key) % partitions`.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Kafka's `Utils.murmur2`: MurmurHash2, seed `0x9747b28c`, little-endian 4-byte words.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len() as u32;
    let mut h: u32 = 0x9747_b28c ^ len;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if let Some(first) = rest.first() {
        h ^= u32::from(*first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The changelog topic of `group`'s stores of source `topic`: `<group>-<topic>-changelog`,
/// partition for partition.
pub fn changelog_topic(group: &str, topic: &str) -> String {
    format!("{group}-{topic}-changelog")
}

/// The store name of the changelog entry that carries a batch's next offset (its value).
pub const CHANGELOG_OFFSET_STORE: &str = "__weir_offset";

/// One changelog record, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangelogEntry {
    /// A state change: `key` and `value` are the store's JSON texts; `None` deletes the key.
    State {
        /// The named store.
        store: String,
        /// The key's JSON text.
        key: String,
        /// The value's JSON text, or `None` for a deletion.
        value: Option<String>,
    },
    /// The end of a batch: every state entry before it (since the previous marker) belongs to
    /// a batch whose next offset is this.
    Offset(i64),
}

impl ChangelogEntry {
    /// The record key of a state change of `key` (JSON text) in `store`: the JSON array
    /// `[store, key]`.
    pub fn key(store: &str, key: &str) -> Vec<u8> {
        serde_json::to_vec(&(store, key)).unwrap_or_default()
    }

    /// The record key and value of the offset marker of a batch ending at `next_offset`.
    pub fn offset_marker(next_offset: i64) -> (Vec<u8>, Vec<u8>) {
        (
            Self::key(CHANGELOG_OFFSET_STORE, "\"\""),
            next_offset.to_string().into_bytes(),
        )
    }

    /// Whether a record with this key is a batch's offset marker.
    pub fn is_offset_marker(key: Option<&[u8]>) -> bool {
        key == Some(Self::key(CHANGELOG_OFFSET_STORE, "\"\"").as_slice())
    }

    /// Decodes a changelog record's key and value; `None` if it is not a weir changelog entry.
    pub fn parse(key: Option<&[u8]>, value: Option<&[u8]>) -> Option<Self> {
        let (store, key): (String, String) = serde_json::from_slice(key?).ok()?;
        let value = value.map(|v| String::from_utf8_lossy(v).into_owned());
        if store == CHANGELOG_OFFSET_STORE {
            return value?.trim().parse().ok().map(Self::Offset);
        }
        Some(Self::State { store, key, value })
    }
}

/// Where a changelog entry stands: the rewind generation and the next offset of the batch it
/// belongs to. Positions order by generation first, so the state after a rewind outranks
/// everything written before it, even at a lower offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChangelogPosition {
    /// The store's rewind generation (0 until its first rewind).
    pub generation: i64,
    /// The next source offset to process after the batch.
    pub next_offset: i64,
}

impl ChangelogPosition {
    /// The headers every changelog entry of a batch carries (no generation header at 0, so
    /// stores that were never rewound write what earlier versions wrote).
    pub fn headers(self) -> Headers {
        let mut out = Headers::with_capacity(2, 48);
        header::push_number(&mut out, header::SOURCE_NEXT_OFFSET, self.next_offset);
        if self.generation != 0 {
            header::push_number(&mut out, header::SOURCE_GENERATION, self.generation);
        }
        out
    }

    /// Reads a changelog record's position from its headers; `None` without a
    /// [`header::SOURCE_NEXT_OFFSET`].
    pub fn from_headers<'h>(
        headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
    ) -> Option<Self> {
        let number = |v: &[u8]| std::str::from_utf8(v).ok()?.trim().parse::<i64>().ok();
        let (mut next_offset, mut generation) = (None, 0);
        for (name, value) in headers {
            match name {
                header::SOURCE_NEXT_OFFSET => next_offset = number(value),
                header::SOURCE_GENERATION => generation = number(value).unwrap_or(0),
                _ => {}
            }
        }
        Some(Self {
            generation,
            next_offset: next_offset?,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32_is_the_ieee_one() {
        assert_eq!(super::crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(super::crc32(b""), 0);
    }

    use super::*;

    #[test]
    fn murmur2_matches_kafkas_java_client() {
        // Kafka's own test vectors (`UtilsTest.testMurmur2`).
        for (key, hash) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("1", -1_993_445_489),
            ("12", 126_087_238),
            ("123", -267_702_483),
            ("1234", -1_614_185_708),
            ("12345", -1_188_365_604),
            ("0", 971_027_396),
        ] {
            assert_eq!(murmur2(key.as_bytes()), hash, "{key}");
        }
        assert_eq!(murmur2(&[0, 1, 2]), murmur2(&[0, 1, 2]));
        assert_eq!(
            partition_for_key(b"1", 7),
            (-1_993_445_489i32 & 0x7fff_ffff) % 7
        );
        assert_eq!(partition_for_key(b"anything", 1), 0);
    }

    #[test]
    fn a_source_position_needs_topic_partition_and_offset_and_the_last_header_wins() {
        let h = |pairs: &[(&'static str, &'static str)]| -> Option<SourcePosition> {
            SourcePosition::from_headers(pairs.iter().map(|(k, v)| (*k, Some(v.as_bytes()))))
        };
        let full = [
            (header::SOURCE_TOPIC, "old"),
            (header::SOURCE_TOPIC, "orders"),
            (header::SOURCE_PARTITION, "3"),
            (header::SOURCE_OFFSET, "41"),
            (header::SOURCE_SEQ, "2"),
        ];
        assert_eq!(
            h(&full),
            Some(SourcePosition {
                topic: "orders".into(),
                partition: 3,
                offset: 41,
                seq: 2,
                group: None,
                acked_below: None,
            })
        );
        assert_eq!(
            h(&full[..4]).map(|p| p.seq),
            Some(0),
            "no seq: the record itself"
        );
        assert_eq!(h(&full[1..3]), None, "no offset: not a record's emit");
        assert_eq!(h(&[(header::SOURCE_OFFSET, "x")]), None);
    }

    #[test]
    fn only_weirs_own_trailing_headers_give_an_emitted_offset() {
        let mut headers: Headers = [(header::SOURCE_OFFSET, "999"), ("app", "x")]
            .into_iter()
            .collect();
        header::push_emitted(&mut headers, "orders", 3, 41, 1, "shop");
        assert_eq!(header::emitted_offset(&headers), Some(41));
        let acked_below = [(header::SOURCE_ACKED_BELOW, Some(&b"40"[..]))];
        let read = SourcePosition::from_headers(
            headers.iter().map(|(k, v)| (k, Some(v))).chain(acked_below),
        )
        .expect("position");
        assert_eq!((read.offset, read.seq), (41, 1));
        assert_eq!(read.group.as_deref(), Some("shop"));
        assert_eq!(read.acked_below, Some(40));
        // A timer's emit passing along an upstream record's headers: not an emit of a record.
        let mut forwarded = headers.clone();
        header::push_source(&mut forwarded, "orders", 3, None);
        assert_eq!(header::emitted_offset(&forwarded), None);
        let too_few: Headers = headers.iter().skip(3).collect();
        assert_eq!(header::emitted_offset(&too_few), None, "too few");
        assert_eq!(header::emitted_offset(&Headers::default()), None);
    }

    #[test]
    fn entries_round_trip() {
        let k = ChangelogEntry::key("counts", "\"a\"");
        assert_eq!(
            ChangelogEntry::parse(Some(&k), Some(b"3")),
            Some(ChangelogEntry::State {
                store: "counts".into(),
                key: "\"a\"".into(),
                value: Some("3".into())
            })
        );
        assert_eq!(
            ChangelogEntry::parse(Some(&k), None),
            Some(ChangelogEntry::State {
                store: "counts".into(),
                key: "\"a\"".into(),
                value: None
            })
        );
        let (mk, mv) = ChangelogEntry::offset_marker(42);
        assert_eq!(
            ChangelogEntry::parse(Some(&mk), Some(&mv)),
            Some(ChangelogEntry::Offset(42))
        );
        assert!(ChangelogEntry::is_offset_marker(Some(&mk)));
        assert!(!ChangelogEntry::is_offset_marker(Some(&k)));
        assert_eq!(ChangelogEntry::parse(Some(b"not json"), Some(b"1")), None);
        assert_eq!(ChangelogEntry::parse(None, Some(b"1")), None);
        let hs = [("x", &b"1"[..]), (header::SOURCE_NEXT_OFFSET, &b"17"[..])];
        let at = |generation, next_offset| ChangelogPosition {
            generation,
            next_offset,
        };
        assert_eq!(ChangelogPosition::from_headers(hs), Some(at(0, 17)));
        assert_eq!(ChangelogPosition::from_headers([("x", &b"1"[..])]), None);
        for p in [at(0, 17), at(1_795_000_000_000, 3)] {
            let headers = p.headers();
            let back = ChangelogPosition::from_headers(headers.iter());
            assert_eq!(back, Some(p));
        }
        assert_eq!(
            at(0, 17).headers().len(),
            1,
            "generation 0 writes what it always wrote"
        );
        assert!(
            at(1, 0) > at(0, 1_000_000),
            "a rewind outranks any offset before it"
        );
    }
}
