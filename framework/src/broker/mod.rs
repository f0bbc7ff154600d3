//! The broker seam: what the runtime asks of a broker, in weir's own words, and each broker's
//! implementation in a folder of its own (`kafka/`, the only place that knows Kafka's client).
//!
//! The runtime needs from a broker: lanes assigned and revoked (a Kafka partition is a lane),
//! deliveries per lane ([`Delivered`]: key, value, headers, timestamp and position), pause,
//! resume and a new read position per lane, settling what a committed batch covered (all of
//! these: [`Source`]), producing with an acknowledgement ([`SendError`] when it fails),
//! reading a log from a position to its end, and making sure topics exist. Lanes come and go
//! as the broker decides; the broker's client tells the runtime through [`Assignments`].
//! (Reading logs is still called from `runtime/tables.rs` and `delivery/restore.rs` with
//! Kafka's types.)

use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::inbound::Delivered;

pub(crate) mod kafka;

/// A lane: a topic's partition on Kafka.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lane<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
}

impl std::fmt::Display for Lane<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// What a worker consumes from: deliveries of the lanes the broker assigned it, and per lane
/// pause, resume, a new read position, and settling. Used by the worker's one consumer
/// thread.
pub(crate) trait Source {
    /// A delivery, borrowed from the source until the runtime copies it out.
    type Delivery<'s>: Delivered
    where
        Self: 's;

    /// Starts taking `topics`' lanes, as the broker assigns them.
    fn subscribe(&self, topics: &[&str]) -> Result<()>;

    /// The next delivery, waiting up to `timeout`; `Some(Err)`: an error the client reports,
    /// of no lane in particular.
    fn poll(&self, timeout: Duration) -> Option<Result<Self::Delivery<'_>, String>>;

    /// Stops deliveries of `lane` (those already taken still come) until [`resume`](Self::resume).
    fn pause(&self, lane: Lane<'_>) -> Result<(), String>;

    fn resume(&self, lane: Lane<'_>) -> Result<(), String>;

    /// Delivers `lane` from position `next` on (`None`: from its beginning).
    fn seek(&self, lane: Lane<'_>, next: Option<i64>) -> Result<(), String>;

    /// Tells the broker that the lanes' records below these positions are done, without
    /// waiting (progress only: the lanes' stores hold what was committed).
    fn settle(&self, done: &[(Lane<'_>, i64)]) -> Result<(), String>;
}

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

/// Where an assigned lane's deliveries start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Start {
    /// The position of its first delivery (`None`: the lane's beginning).
    pub(crate) next: Option<i64>,
    /// Deliveries wait until the runtime resumes the lane (its store is being prepared).
    pub(crate) paused: bool,
}

/// What the runtime does as the broker assigns lanes to this worker and takes them away.
/// The broker's client calls it on the consumer thread, in the middle of a
/// [`Source::poll`].
pub(crate) trait Assignments: Send + Sync + 'static {
    /// `lanes` are this worker's now: their stores are opened and claimed and their tasks
    /// started. Where each starts, in order (`None`: a lane whose store failed; the worker
    /// is failing, and the lane starts where the broker says).
    fn assigned(&self, lanes: &[Lane<'_>]) -> Vec<Option<Start>>;

    /// `lanes` are taken away (`lost`: another owner may have them already). Each lane's task
    /// finishes its batch and closes its store before this returns. The positions to settle
    /// before they go (none when lost, or when the worker is abandoned).
    fn revoked(&self, lanes: &[Lane<'_>], lost: bool) -> Vec<(Arc<str>, i32, i64)>;

    /// The owned lanes' low and high watermarks, as `of` reads them from the client.
    fn watermarks(&self, of: &dyn Fn(Lane<'_>) -> Option<(i64, i64)>);
}
