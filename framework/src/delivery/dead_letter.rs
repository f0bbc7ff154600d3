//! Dead letters: where a record goes when its retries are used up (or at once, for a record
//! that cannot be decoded).

use std::sync::{Arc, Mutex};

use weir_state::wire::header;

use crate::broker::Producer;
use crate::broker::{HeaderList, Outgoing};
use crate::inbound::Inbound;
use crate::observe::metric_names::DEAD_LETTERS_TOTAL;
use crate::wall_clock::now_ms;

/// Why a record was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// The handler failed (or panicked) on every attempt.
    Failed,
    /// The key or value could not be decoded (no retries: it would never decode).
    Undecodable,
    /// An earlier record with the same key was dead-lettered and key order is kept.
    FollowsDeadLetter,
}

impl DeadLetterReason {
    /// The `weir.reason` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Undecodable => "undecodable",
            Self::FollowsDeadLetter => "follows-dead-letter",
        }
    }
}

/// A record sent to a dead-letter topic: the original record plus why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The dead-letter topic.
    pub topic: String,
    /// The source topic, partition and offset.
    pub source: (String, i32, i64),
    /// The original key.
    pub key: Option<Vec<u8>>,
    /// The original value.
    pub value: Option<Vec<u8>>,
    /// The original timestamp (a dead letter keeps it), ms since the Unix epoch.
    pub timestamp: Option<i64>,
    /// The error of the last attempt.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// Why.
    pub reason: DeadLetterReason,
}

/// Dead-letter settings of one source topic.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetterPolicy {
    pub(crate) topic: String,
    pub(crate) keep_key_order: bool,
}

/// Where dead letters go: Kafka (the runtime) or memory (the test kit).
#[derive(Clone)]
pub(crate) enum DeadLetterSink {
    Broker(Arc<Producer>),
    Memory(Arc<Mutex<Vec<DeadLetter>>>),
}

impl std::fmt::Debug for DeadLetterSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Broker(_) => f.write_str("DeadLetterSink::Broker"),
            Self::Memory(m) => write!(
                f,
                "DeadLetterSink::Memory({})",
                m.lock().map_or(0, |v| v.len())
            ),
        }
    }
}

impl DeadLetterSink {
    /// Sends `msg` to the dead-letter topic and waits for the broker's acknowledgement.
    pub(crate) async fn send(
        &self,
        policy: &DeadLetterPolicy,
        msg: &Inbound,
        error: &str,
        attempts: u32,
        reason: DeadLetterReason,
    ) -> Result<(), String> {
        let letter = DeadLetter {
            topic: policy.topic.clone(),
            source: (msg.topic().to_owned(), msg.partition(), msg.offset()),
            key: msg.key().map(<[u8]>::to_vec),
            value: msg.payload().map(<[u8]>::to_vec),
            timestamp: msg.timestamp_ms(),
            error: error.to_owned(),
            attempts,
            reason,
        };
        match self {
            Self::Memory(letters) => {
                letters
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(letter);
            }
            Self::Broker(producer) => {
                let (partition, offset) = (msg.partition().to_string(), msg.offset().to_string());
                let (attempts, now) = (attempts.to_string(), now_ms().to_string());
                let mut headers: Vec<(&str, Option<&[u8]>)> = msg.headers().collect();
                for (k, v) in [
                    (header::SOURCE_TOPIC, msg.topic()),
                    (header::SOURCE_PARTITION, partition.as_str()),
                    (header::SOURCE_OFFSET, offset.as_str()),
                    (header::ERROR, error),
                    (header::ATTEMPTS, attempts.as_str()),
                    (header::FAILED_AT_MS, now.as_str()),
                    (header::REASON, reason.as_str()),
                ] {
                    headers.push((k, Some(v.as_bytes())));
                }
                // Unchanged: with the source record's timestamp too.
                producer
                    .send(Outgoing {
                        topic: &policy.topic,
                        partition: None,
                        key: msg.key(),
                        value: msg.payload(),
                        headers: HeaderList::List(&headers),
                        timestamp: msg.timestamp_ms(),
                    })
                    .await
                    .map_err(|e| format!("dead-letter write to {} failed: {e}", policy.topic))?;
            }
        }
        metrics::counter!(DEAD_LETTERS_TOTAL, "topic" => msg.topic().to_owned(), "reason" => reason.as_str())
            .increment(1);
        tracing::warn!(
            topic = msg.topic(), partition = msg.partition(), offset = msg.offset(),
            dead_letter_topic = %policy.topic, attempts, reason = reason.as_str(),
            "record dead-lettered: {error}"
        );
        Ok(())
    }
}
