//! Records as the runtime holds them between the consumer thread and a partition task.
//!
//! The consumer thread copies a run of one partition's records out of librdkafka into ONE
//! shared buffer, so a run costs two allocations however many records it holds. Allocating
//! per record on the consumer thread and freeing on the tokio workers made the two fight over
//! the allocator's arena lock, which capped throughput far below the raw consumer (see
//! `docs/performance.md`).

use std::ops::Range;
use std::sync::Arc;

/// A record as a broker's client hands it over, before it is copied into a run.
pub(crate) trait Delivered {
    /// The topic (a lane's name, with its partition).
    fn topic(&self) -> &str;
    fn partition(&self) -> i32;
    fn offset(&self) -> i64;
    fn timestamp_ms(&self) -> Option<i64>;
    fn key(&self) -> Option<&[u8]>;
    fn payload(&self) -> Option<&[u8]>;
    /// Every header, in order.
    fn headers(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)>;
    /// What a queue (which keeps no positions) says of the message; `None` on logs.
    fn queued(&self) -> Option<Queued> {
        None
    }
}

/// A queue's message beyond its record: a queue has no positions (a lane's positions count
/// its deliveries), so a redelivered message is recognised by its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Queued {
    /// The message's id (AMQP `message_id`); `None`: it cannot be told from a redelivery.
    pub(crate) id: Option<Box<str>>,
    /// The broker delivered it before (to this worker or another): it may be committed
    /// already. A message delivered for the first time cannot be.
    pub(crate) redelivered: bool,
    /// Every delivery of the lane below this position was settled and the broker confirmed
    /// it: none of them comes again, so their ids need not be kept.
    pub(crate) settled_below: i64,
    /// The lane's first position on this worker's current hold of it. What earlier holders
    /// left unacknowledged comes back first, at the hold's first positions.
    pub(crate) hold_start: i64,
    /// How long a message can come again after it was settled (SQS: the queue's retention
    /// period, since a standard queue may deliver a copy of a deleted message); its id is kept
    /// that long after its batch committed. `None`: never (RabbitMQ, once the broker
    /// confirmed the acknowledgement: `settled_below`).
    pub(crate) keep_ids_for: Option<std::time::Duration>,
}

/// Where one header's name and value are in the run's buffer.
#[derive(Debug, Clone)]
struct HeaderAt {
    name: Range<usize>,
    value: Option<Range<usize>>,
}

/// One record of a partition, with its key, payload and headers in a buffer shared with its
/// run.
#[derive(Debug, Clone)]
pub(crate) struct Inbound {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    buf: Arc<[u8]>,
    key: Option<Range<usize>>,
    payload: Option<Range<usize>>,
    /// Empty (no allocation) for a record without headers.
    headers: Box<[HeaderAt]>,
    /// Bytes this record holds in a queue (see [`weight`](Self::weight)).
    weight: usize,
    /// A queue's message: its id and whether it came before (`None` on logs).
    queued: Option<Box<Queued>>,
}

/// What a queued record costs beyond its key, payload and headers (this struct, its share of
/// the run's vector and buffer header), counted against the queue's byte bound.
const RECORD_OVERHEAD: usize = 128;

/// Copies `r`'s key, payload and headers into `buf`; returns where they are.
#[allow(clippy::type_complexity)]
fn copy_parts<'h>(
    buf: &mut Vec<u8>,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: impl Iterator<Item = (&'h str, Option<&'h [u8]>)>,
) -> (Option<Range<usize>>, Option<Range<usize>>, Box<[HeaderAt]>) {
    let key = key.map(|k| append(buf, k));
    let payload = payload.map(|p| append(buf, p));
    let headers: Vec<HeaderAt> = headers
        .map(|(name, value)| HeaderAt {
            name: append(buf, name.as_bytes()),
            value: value.map(|v| append(buf, v)),
        })
        .collect();
    (key, payload, headers.into_boxed_slice())
}

fn weight_of(
    key: &Option<Range<usize>>,
    payload: &Option<Range<usize>>,
    headers: &[HeaderAt],
) -> usize {
    let len = |r: &Option<Range<usize>>| r.as_ref().map_or(0, Range::len);
    let headers: usize = headers.iter().map(|h| h.name.len() + len(&h.value)).sum();
    len(key) + len(payload) + headers + RECORD_OVERHEAD
}

impl Inbound {
    /// A record on its own (the test kit's records, and tests).
    pub(crate) fn new(
        topic: Arc<str>,
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> Self {
        let mut scratch = Vec::new();
        let (key, payload, headers) =
            copy_parts(&mut scratch, key, payload, headers.iter().copied());
        Self {
            topic,
            partition,
            offset,
            timestamp_ms,
            weight: weight_of(&key, &payload, &headers),
            buf: Arc::from(scratch.as_slice()),
            key,
            payload,
            headers,
            queued: None,
        }
    }

    /// This record, as the queue message `queued` (tests).
    #[cfg(test)]
    pub(crate) fn with_queued(mut self, queued: Queued) -> Self {
        self.queued = Some(Box::new(queued));
        self
    }

    /// Copies `msgs` (records of `topic`'s one partition) into one shared buffer; `scratch` is
    /// reused between calls to build it.
    pub(crate) fn copy_run<M: Delivered>(
        topic: &Arc<str>,
        msgs: &[M],
        scratch: &mut Vec<u8>,
    ) -> Vec<Self> {
        scratch.clear();
        let parts: Vec<_> = msgs
            .iter()
            .map(|m| copy_parts(scratch, m.key(), m.payload(), m.headers()))
            .collect();
        let buf: Arc<[u8]> = Arc::from(scratch.as_slice());
        msgs.iter()
            .zip(parts)
            .map(|(m, (key, payload, headers))| Self {
                topic: Arc::clone(topic),
                partition: m.partition(),
                offset: m.offset(),
                timestamp_ms: m.timestamp_ms(),
                weight: weight_of(&key, &payload, &headers),
                buf: Arc::clone(&buf),
                key,
                payload,
                headers,
                queued: m.queued().map(Box::new),
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

    /// A queue's message: its id and whether it came before (`None` on logs).
    pub(crate) fn queued(&self) -> Option<&Queued> {
        self.queued.as_deref()
    }

    /// Every header, in order.
    pub(crate) fn headers(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.headers.iter().map(|h| {
            // (Names were copied from `&str`s: always UTF-8.)
            let name = std::str::from_utf8(&self.buf[h.name.clone()]).unwrap_or_default();
            (name, h.value.clone().map(|r| &self.buf[r]))
        })
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
        let r = Inbound::new(
            Arc::from("t"),
            3,
            7,
            Some(42),
            Some(b"key"),
            Some(b""),
            &[("h", Some(b"v".as_slice())), ("empty", None)],
        );
        assert_eq!((r.topic(), r.partition(), r.offset()), ("t", 3, 7));
        assert_eq!(r.timestamp_ms(), Some(42));
        assert_eq!(r.key(), Some(b"key".as_slice()));
        assert_eq!(r.payload(), Some(b"".as_slice()));
        assert_eq!(
            r.headers().collect::<Vec<_>>(),
            vec![("h", Some(b"v".as_slice())), ("empty", None)]
        );
        let none = Inbound::new(Arc::from("t"), 0, 0, None, None, None, &[]);
        assert_eq!((none.key(), none.payload()), (None, None));
        assert_eq!(none.headers().count(), 0);
    }
}
