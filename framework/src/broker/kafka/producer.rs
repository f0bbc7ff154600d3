//! The worker's producer of emitted records, changelog entries and dead letters: idempotent
//! and gapless, so that librdkafka stops rather than carry on past a record that failed, and
//! replaced by a new one when that guarantee stops it.
//!
//! Why gapless: a downstream stage drops a record whose source offset is at or below the
//! highest it applied from the same source partition. If the outbox's record for offset 10
//! failed while the one for offset 11 (in flight with it) landed, the 10 sent again would
//! land after 11 and be dropped downstream. With `enable.gapless.guarantee` librdkafka
//! instead stops the producer at the first failure that could leave a gap, failing every
//! record still queued; `message.timeout.ms=0` keeps records from timing out (a timeout is
//! outside the guarantee). The rows stay in the outbox and go out again, in order, through
//! the producer that replaces the stopped one. Requests already on their way when the
//! failure comes may still land first (a known gap: `docs/delivery-guarantees.md`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};

use crate::broker::{Outgoing, SendError};

type Inner = ThreadedProducer<ProducerLog>;

/// How long a send waits before trying again while librdkafka's queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(2);

/// The producer's log: librdkafka's, less its warning that the gapless guarantee weir relies
/// on is "experimental" (at every start); and its delivery reports, counted into their
/// [`Wave`].
struct ProducerLog;

impl ClientContext for ProducerLog {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "CONFWARN" && message.contains("enable.gapless.guarantee") {
            tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}");
        } else {
            super::client_log::forward(level, fac, message);
        }
    }
}

impl ProducerContext for ProducerLog {
    type DeliveryOpaque = Arc<Wave>;

    fn delivery(&self, result: &DeliveryResult<'_>, wave: Arc<Wave>) {
        if let Err((e, _)) = result {
            wave.failed(e.clone());
        }
        wave.done_one();
    }
}

/// Records sent together: how many the broker has not acknowledged yet, and the first
/// failure. One report per record through the producer's callback, rather than a future
/// and a channel per record.
#[derive(Default)]
struct Wave {
    /// Records not yet reported, plus one while records are still being queued.
    left: AtomicUsize,
    failure: Mutex<Option<KafkaError>>,
    done: tokio::sync::Notify,
}

impl Wave {
    fn failed(&self, e: KafkaError) {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert(e);
    }

    fn done_one(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }

    /// Waits until every record is reported; the first failure, if any.
    async fn reported(&self) -> Result<(), KafkaError> {
        while self.left.load(Ordering::Acquire) != 0 {
            self.done.notified().await;
        }
        match self
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// A producer that replaces itself after a fatal error.
pub(crate) struct Producer {
    /// How to build a replacement.
    config: ClientConfig,
    current: RwLock<Arc<Inner>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Producer")
    }
}

impl Producer {
    /// Builds the producer `config` describes, and its replacements.
    pub(crate) fn new(config: ClientConfig) -> Result<Self, KafkaError> {
        let producer = config.create_with_context(ProducerLog)?;
        Ok(Self {
            config,
            current: RwLock::new(Arc::new(producer)),
        })
    }

    fn current(&self) -> Arc<Inner> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Produces `r` and waits for the broker's acknowledgement. After a fatal error the next
    /// call goes through a new producer.
    pub(crate) async fn send(&self, r: Outgoing<'_>) -> Result<(), SendError> {
        self.send_all(std::slice::from_ref(&r)).await
    }

    /// Produces `records` in order and waits until the broker acknowledged all of them; the
    /// first failure if one failed. After a fatal error the next call goes through a new
    /// producer.
    pub(crate) async fn send_all(&self, records: &[Outgoing<'_>]) -> Result<(), SendError> {
        let producer = self.current();
        let wave = Arc::new(Wave::default());
        wave.left.store(1, Ordering::Release);
        for r in records {
            if let Err(e) = queue(&producer, &wave, r).await {
                wave.failed(e);
                break;
            }
        }
        wave.done_one();
        wave.reported().await.map_err(|e| {
            self.replace_if_fatal(&producer);
            SendError {
                permanent: is_permanent(&e),
                message: e.to_string(),
            }
        })
    }

    /// Replaces `failed` (if still current) when it has stopped for good.
    fn replace_if_fatal(&self, failed: &Arc<Inner>) {
        let Some((code, reason)) = failed.client().fatal_error() else {
            return;
        };
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !Arc::ptr_eq(&current, failed) {
            return; // replaced already, by a record that failed with this one
        }
        match self.config.create_with_context(ProducerLog) {
            Ok(fresh) => {
                tracing::warn!(
                    "the producer stopped ({code:?}: {reason}); a new one takes its place and \
                     the unacknowledged records go out again, in order"
                );
                *current = Arc::new(fresh);
            }
            Err(e) => tracing::error!(
                "the producer stopped ({code:?}: {reason}) and no new one could be built \
                 (trying again on the next send): {e}"
            ),
        }
    }
}

/// Whether the broker (or librdkafka) refuses `error`'s record for good.
fn is_permanent(error: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        error.rdkafka_error_code(),
        Some(
            MessageSizeTooLarge
                | InvalidMessageSize
                | MessageBatchTooLarge
                | InvalidRecord
                | InvalidTopic
                | TopicAuthorizationFailed
                | ClusterAuthorizationFailed
                | UnknownTopic
                | UnknownPartition
        )
    )
}

/// Hands `r` to librdkafka, counted in `wave` (waiting while its queue is full).
async fn queue(producer: &Inner, wave: &Arc<Wave>, r: &Outgoing<'_>) -> Result<(), KafkaError> {
    let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
    for (key, value) in r.headers.iter() {
        headers = headers.insert(Header { key, value });
    }
    let mut record: BaseRecord<'_, [u8], [u8], Arc<Wave>> =
        BaseRecord::with_opaque_to(r.topic, Arc::clone(wave)).headers(headers);
    if let Some(p) = r.partition {
        record = record.partition(p);
    }
    if let Some(ms) = r.timestamp {
        record = record.timestamp(ms);
    }
    if let Some(k) = r.key {
        record = record.key(k);
    }
    if let Some(v) = r.value {
        record = record.payload(v);
    }
    wave.left.fetch_add(1, Ordering::AcqRel);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(QUEUE_FULL_PAUSE).await;
            }
            Err((e, _)) => {
                // Not queued: no report will come for it.
                wave.left.fetch_sub(1, Ordering::AcqRel);
                return Err(e);
            }
        }
    }
}
