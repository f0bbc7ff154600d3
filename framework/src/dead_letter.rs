//! Retries and dead letters: how a failing record is retried, and where it goes when the
//! retries are used up (or at once, for a record that cannot be decoded).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureProducer;

use crate::inbound::Inbound;
use crate::metric_names::DEAD_LETTERS_TOTAL;
use crate::outbox::produce;

/// How a failing record is retried: its whole batch runs again, in place, so the partition's
/// order holds; the consumer keeps polling meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per record before it is dead-lettered; 0 retries forever (the partition waits).
    pub max_attempts: u32,
    /// Wait after the first failure; doubles each attempt, with ±25% jitter.
    pub backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (1-based `attempt`), with jitter from `seed`.
    pub(crate) fn delay(&self, attempt: u32, seed: u64) -> Duration {
        let exp = self
            .backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max_backoff);
        // ±25% jitter, from a cheap hash of the seed and the attempt.
        let mut x = seed ^ (u64::from(attempt) << 32) ^ 0x9e37_79b9_7f4a_7c15;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        let factor = 0.75 + (x % 1000) as f64 / 2000.0;
        exp.mul_f64(factor)
    }
}

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
    Kafka(Arc<FutureProducer>),
    Memory(Arc<Mutex<Vec<DeadLetter>>>),
}

impl std::fmt::Debug for DeadLetterSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Kafka(_) => f.write_str("DeadLetterSink::Kafka"),
            Self::Memory(m) => write!(
                f,
                "DeadLetterSink::Memory({})",
                m.lock().map_or(0, |v| v.len())
            ),
        }
    }
}

/// Header names added to a dead letter (the original headers are kept before them).
pub(crate) mod header {
    pub(crate) const SOURCE_TOPIC: &str = "weir.source.topic";
    pub(crate) const SOURCE_PARTITION: &str = "weir.source.partition";
    pub(crate) const SOURCE_OFFSET: &str = "weir.source.offset";
    pub(crate) const ERROR: &str = "weir.error";
    pub(crate) const ATTEMPTS: &str = "weir.attempts";
    pub(crate) const FAILED_AT_MS: &str = "weir.failed_at_ms";
    pub(crate) const REASON: &str = "weir.reason";
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
            Self::Kafka(producer) => {
                let mut headers = OwnedHeaders::new();
                for (key, value) in msg.headers() {
                    headers = headers.insert(Header { key, value });
                }
                let (partition, offset) = (msg.partition().to_string(), msg.offset().to_string());
                let (attempts, now) = (
                    attempts.to_string(),
                    crate::metrics_server::now_ms().to_string(),
                );
                for (k, v) in [
                    (header::SOURCE_TOPIC, msg.topic()),
                    (header::SOURCE_PARTITION, partition.as_str()),
                    (header::SOURCE_OFFSET, offset.as_str()),
                    (header::ERROR, error),
                    (header::ATTEMPTS, attempts.as_str()),
                    (header::FAILED_AT_MS, now.as_str()),
                    (header::REASON, reason.as_str()),
                ] {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v),
                    });
                }
                produce(
                    producer,
                    &policy.topic,
                    None,
                    msg.key(),
                    msg.payload(),
                    headers,
                )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        let p = RetryPolicy {
            max_attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        for seed in 0..50 {
            let d1 = p.delay(1, seed).as_millis();
            let d3 = p.delay(3, seed).as_millis();
            let d9 = p.delay(9, seed).as_millis();
            assert!((75..=125).contains(&d1), "{d1}");
            assert!((300..=500).contains(&d3), "{d3}");
            assert!((750..=1250).contains(&d9), "{d9}");
        }
        assert_ne!(p.delay(2, 1), p.delay(2, 2), "jitter varies with the seed");
    }
}
