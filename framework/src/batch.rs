//! One batch: decode each record, run the handler, and commit the batch's state changes and
//! offset in one SQLite transaction. The runtime's partition tasks and the test kit both run
//! batches through here.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use rdkafka::message::{Message, OwnedMessage};
use weir_state::{PartitionStore, WriteSet};

use crate::handler::{BoxError, Delivery};
use crate::metric_names::{COMMIT_DURATION_SECONDS, MESSAGES_TOTAL};
use crate::{Codec, Ctx, Process, Record, UndecodableRecord};

/// Why a batch failed; nothing of it was committed.
#[derive(Debug)]
pub(crate) enum BatchError {
    /// A record could not be decoded, or the handler failed or panicked on it.
    Record { offset: i64, error: BoxError },
    /// The SQLite commit failed.
    Commit(weir_state::Error),
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Record { offset, error } => write!(f, "record at offset {offset}: {error}"),
            Self::Commit(e) => write!(f, "commit failed: {e}"),
        }
    }
}

/// Runs `batch` (records of one partition, in order) and commits it; returns the committed
/// next offset.
pub(crate) async fn run_batch<H: Process>(
    handler: &H,
    store: &Arc<impl AsRef<PartitionStore> + Send + Sync + 'static>,
    topic: &str,
    partition: i32,
    delivery: Delivery,
    batch: &[OwnedMessage],
) -> Result<i64, BatchError> {
    let next = batch.last().map_or(0, |m| m.offset() + 1);
    if delivery == Delivery::AtMostOnce {
        // The offset first: a crash from here on skips the batch rather than repeating it.
        commit(store, WriteSet::default(), topic, partition, next).await?;
    }
    let mut writes = WriteSet::default();
    for msg in batch {
        writes.savepoint();
        match run_record(handler, store.as_ref().as_ref(), &mut writes, msg).await {
            Ok(()) => writes.release(),
            Err(error) if delivery == Delivery::AtMostOnce => {
                writes.rollback();
                metrics::counter!(MESSAGES_TOTAL, "outcome" => "skipped").increment(1);
                tracing::error!(
                    topic,
                    partition,
                    offset = msg.offset(),
                    "record failed and is skipped (at-most-once delivery): {error}"
                );
            }
            Err(error) => {
                return Err(BatchError::Record {
                    offset: msg.offset(),
                    error,
                })
            }
        }
    }
    commit(store, writes, topic, partition, next).await?;
    Ok(next)
}

async fn run_record<H: Process>(
    handler: &H,
    store: &PartitionStore,
    writes: &mut WriteSet,
    msg: &OwnedMessage,
) -> Result<(), BoxError> {
    let undecodable = |part, raw: Option<&[u8]>, error| UndecodableRecord {
        part,
        raw: raw.map(<[u8]>::to_vec),
        error,
    };
    let value = <H::Value as Codec>::decode(msg.payload())
        .map_err(|e| undecodable("value", msg.payload(), e))?;
    let key = <H::Key as Codec>::decode(msg.key()).map_err(|e| undecodable("key", msg.key(), e))?;
    let mut ctx = Ctx::new(store, writes);
    let outcome = AssertUnwindSafe(handler.process(Record::new(msg, key, value), &mut ctx))
        .catch_unwind()
        .await;
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(panic) => {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".into());
            Err(format!("handler panicked: {text}").into())
        }
    }
}

async fn commit(
    store: &Arc<impl AsRef<PartitionStore> + Send + Sync + 'static>,
    writes: WriteSet,
    topic: &str,
    partition: i32,
    next: i64,
) -> Result<(), BatchError> {
    let store = Arc::clone(store);
    let topic = topic.to_owned();
    let started = Instant::now();
    let committed = tokio::task::spawn_blocking(move || {
        (*store).as_ref().commit(&writes, &topic, partition, next)
    })
    .await;
    metrics::histogram!(COMMIT_DURATION_SECONDS).record(started.elapsed());
    match committed {
        Ok(result) => result.map_err(BatchError::Commit),
        Err(join) => Err(BatchError::Record {
            offset: next - 1,
            error: format!("commit task failed: {join}").into(),
        }),
    }
}
