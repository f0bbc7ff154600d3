//! The broker seam: what the runtime asks of a broker, in weir's own words, and each broker's
//! implementation in a folder of its own (`kafka/`, the only place that knows Kafka's client).
//!
//! The runtime needs from a broker: lanes assigned and revoked (a Kafka partition is a lane),
//! runs of deliveries per lane ([`Delivered`](crate::inbound::Delivered): key, value, headers,
//! timestamp and position), pause and resume per lane, settling what a committed batch
//! covered, producing with an acknowledgement ([`SendError`] when it fails), reading a log from
//! a position to its end, and making sure topics exist. (Producing and deliveries go through
//! the seam so far; the rest still lives in `runtime/` and `delivery/restore.rs`.)

pub(crate) mod kafka;

/// Why a record was not produced.
#[derive(Debug, Clone)]
pub(crate) struct SendError {
    /// The broker's or the client's reason.
    pub(crate) message: String,
    /// The broker refuses the record for good (too large, not authorized, no such topic):
    /// sending it again fails the same way until someone changes the topic or the cluster.
    pub(crate) permanent: bool,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A record to produce.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outgoing<'a> {
    pub(crate) topic: &'a str,
    /// The partition; `None`: by key (murmur2, as Kafka's Java client), or any without a key.
    pub(crate) partition: Option<i32>,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: Option<&'a [u8]>,
    pub(crate) headers: &'a [(&'a str, Option<&'a [u8]>)],
    /// Milliseconds since the Unix epoch; `None`: the producer's clock.
    pub(crate) timestamp: Option<i64>,
}

/// A topic a worker writes to, created when missing.
#[derive(Debug, Clone)]
pub(crate) struct WantedTopic {
    pub(crate) name: String,
    /// Created with as many partitions as the largest of these topics (at least 1).
    pub(crate) partitions_like: Vec<String>,
    /// What it is, for logs.
    pub(crate) kind: &'static str,
    pub(crate) compacted: bool,
}
