//! Records as the runtime holds them between the consumer thread and a partition task.
//!
//! The consumer thread copies a run of one partition's records out of librdkafka into ONE
//! shared buffer, so a run costs two allocations however many records it holds. Allocating
//! per record on the consumer thread and freeing on the tokio workers made the two fight over
//! the allocator's arena lock, which capped throughput far below the raw consumer (see
//! `docs/performance.md`).

use std::ops::Range;
use std::sync::Arc;

use rdkafka::message::{BorrowedMessage, Headers, Message, OwnedHeaders};

/// One record of a partition, with its key and payload in a buffer shared with its run.
#[derive(Debug, Clone)]
pub(crate) struct Inbound {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    buf: Arc<[u8]>,
    key: Option<Range<usize>>,
    payload: Option<Range<usize>>,
    headers: Option<OwnedHeaders>,
    /// Bytes this record holds in a queue (see [`weight`](Self::weight)).
    weight: usize,
}

/// What a queued record costs beyond its key, payload and headers (this struct, its share of
/// the run's vector and buffer header), counted against the queue's byte bound.
const RECORD_OVERHEAD: usize = 128;

fn weight_of(key: Option<&[u8]>, payload: Option<&[u8]>, headers: Option<&OwnedHeaders>) -> usize {
    let headers = headers.map_or(0, |h| {
        h.iter()
            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
            .sum()
    });
    key.map_or(0, <[u8]>::len) + payload.map_or(0, <[u8]>::len) + headers + RECORD_OVERHEAD
}

impl Inbound {
    /// A record on its own (the test kit's records).
    pub(crate) fn new(
        topic: Arc<str>,
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> Self {
        let weight = weight_of(key, payload, headers.as_ref());
        let mut scratch = Vec::new();
        let key = key.map(|k| append(&mut scratch, k));
        let payload = payload.map(|p| append(&mut scratch, p));
        Self {
            topic,
            partition,
            offset,
            timestamp_ms,
            buf: Arc::from(scratch.as_slice()),
            key,
            payload,
            headers,
            weight,
        }
    }

    /// Copies `msgs` (records of `topic`'s one partition) into one shared buffer; `scratch` is
    /// reused between calls to build it.
    pub(crate) fn copy_run(
        topic: &Arc<str>,
        msgs: &[BorrowedMessage<'_>],
        scratch: &mut Vec<u8>,
    ) -> Vec<Self> {
        scratch.clear();
        let ranges: Vec<_> = msgs
            .iter()
            .map(|m| {
                let key = m.key().map(|k| append(scratch, k));
                let payload = m.payload().map(|p| append(scratch, p));
                (key, payload)
            })
            .collect();
        let buf: Arc<[u8]> = Arc::from(scratch.as_slice());
        msgs.iter()
            .zip(ranges)
            .map(|(m, (key, payload))| {
                let headers = m.headers().map(|h| h.detach());
                Self {
                    topic: Arc::clone(topic),
                    partition: m.partition(),
                    offset: m.offset(),
                    timestamp_ms: m.timestamp().to_millis(),
                    weight: weight_of(m.key(), m.payload(), headers.as_ref()),
                    buf: Arc::clone(&buf),
                    key,
                    payload,
                    headers,
                }
            })
            .collect()
    }

    /// Bytes the record holds while queued: key, payload, headers and a fixed overhead.
    pub(crate) fn weight(&self) -> usize {
        self.weight
    }

    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }

    pub(crate) fn partition(&self) -> i32 {
        self.partition
    }

    pub(crate) fn offset(&self) -> i64 {
        self.offset
    }

    pub(crate) fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp_ms
    }

    pub(crate) fn key(&self) -> Option<&[u8]> {
        self.key.clone().map(|r| &self.buf[r])
    }

    pub(crate) fn payload(&self) -> Option<&[u8]> {
        self.payload.clone().map(|r| &self.buf[r])
    }

    /// Every header, in order.
    pub(crate) fn headers(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.headers
            .iter()
            .flat_map(|h| h.iter().map(|h| (h.key, h.value)))
    }
}

fn append(buf: &mut Vec<u8>, bytes: &[u8]) -> Range<usize> {
    let start = buf.len();
    buf.extend_from_slice(bytes);
    start..buf.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_keeps_its_key_payload_and_headers_apart() {
        let headers = OwnedHeaders::new().insert(rdkafka::message::Header {
            key: "h",
            value: Some(b"v".as_slice()),
        });
        let r = Inbound::new(
            Arc::from("t"),
            3,
            7,
            Some(42),
            Some(b"key"),
            Some(b""),
            Some(headers),
        );
        assert_eq!((r.topic(), r.partition(), r.offset()), ("t", 3, 7));
        assert_eq!(r.timestamp_ms(), Some(42));
        assert_eq!(r.key(), Some(b"key".as_slice()));
        assert_eq!(r.payload(), Some(b"".as_slice()));
        assert_eq!(
            r.headers().collect::<Vec<_>>(),
            vec![("h", Some(b"v".as_slice()))]
        );
        let none = Inbound::new(Arc::from("t"), 0, 0, None, None, None, None);
        assert_eq!((none.key(), none.payload()), (None, None));
        assert_eq!(none.headers().count(), 0);
    }
}
