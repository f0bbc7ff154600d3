//! The handler traits: [`Handler`] describes a handler (usually derived), [`Process`] is the
//! one method users write.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

use crate::error::BoxError;
use crate::processing::{Codec, Ctx, FiredTimer, Record, TableInfo, WindowResult};

/// The decoded value type of handler `H`'s records.
pub type ValueOf<H> = <<H as Handler>::Value as Codec>::Value;
/// The decoded key type of handler `H`'s records.
pub type KeyOf<H> = <<H as Handler>::Key as Codec>::Value;

/// What a handler consumes and how: codecs, topics, stores and tuning. `#[derive(Handler)]`
/// writes this from a `#[handler(...)]` attribute; the worker's builder and environment
/// override its settings.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a weir handler",
    note = "add `#[derive(weir::Handler)]` with `#[handler(topic = \"...\", value = Json<...>)]` to `{Self}`, and implement `weir::Process` for it"
)]
pub trait Handler: Send + Sync + 'static {
    /// The codec of record keys, e.g. `Utf8` or `Raw`.
    type Key: Codec;
    /// The codec of record values, e.g. `Json<Order>`, `Utf8` or `Raw`.
    type Value: Codec;

    /// Topics, group, stores and tuning declared with the handler.
    fn settings() -> HandlerSettings {
        HandlerSettings::DEFAULT
    }

    /// A record's event time in milliseconds since the Unix epoch, by which windows group it
    /// and the partition's watermark advances. By default the record's Kafka timestamp;
    /// `#[handler(event_time = field)]` takes a field of the decoded value instead. A record
    /// without one (`None`) takes the partition's watermark, or else the wall clock.
    fn event_time(record: &Record<'_, ValueOf<Self>, KeyOf<Self>>) -> Option<i64> {
        record.timestamp_ms()
    }
}

/// Processes the records of the partitions a worker owns.
///
/// One call per record, in offset order within a partition; partitions run in parallel. State
/// reads and writes go through `ctx`; the writes of a batch become durable together with the
/// batch's offset, so a record's effects on state count exactly once.
///
/// Returning an error (or panicking) fails the record's batch: none of its writes are kept and
/// the batch is retried (in `at_most_once` mode the record is skipped instead).
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not process records",
    note = "implement `weir::Process` for `{Self}`: `type Error` and `async fn process(&self, record, ctx)`"
)]
pub trait Process: Handler {
    /// The handler's error.
    type Error: Into<BoxError> + Send + 'static;

    /// Processes one record.
    fn process(
        &self,
        record: Record<'_, ValueOf<Self>, KeyOf<Self>>,
        ctx: &mut Ctx<'_>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Called once per window when it closes (the partition's watermark reached its end plus
    /// grace), with its final aggregate, in the batch that closes it: what it emits commits
    /// together with the window's removal, so each window closes exactly once in state and
    /// its emitted result is sent at least once, identical on a repeat. Windows close in the
    /// order of their closing times. By default does nothing.
    fn on_window_closed(
        &self,
        closed: WindowResult,
        ctx: &mut Ctx<'_>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = (closed, ctx);
        async { Ok(()) }
    }

    /// Called after each record that updated a window, with the window's aggregate so far,
    /// when the handler asks for every update (`#[handler(window_updates = true)]`). By
    /// default does nothing.
    fn on_window_updated(
        &self,
        updated: WindowResult,
        ctx: &mut Ctx<'_>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = (updated, ctx);
        async { Ok(()) }
    }

    /// Called once when a timer scheduled with [`Ctx::schedule_at`] is due, in order of due
    /// time within the partition (event-time timers, then wall-clock ones). By default does
    /// nothing.
    fn on_timer(
        &self,
        timer: FiredTimer,
        ctx: &mut Ctx<'_>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = (timer, ctx);
        async { Ok(()) }
    }
}

/// When a record's offset is committed relative to its processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// Offset and state commit together after processing; a failed batch is retried. State
    /// counts every record exactly once.
    #[default]
    AtLeastOnce,
    /// The batch's offset commits before processing; a record that fails is logged and
    /// skipped (its own writes undone). A crash mid-batch loses the rest of that batch.
    AtMostOnce,
}

/// A store declared with a handler (for docs, logs and checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreInfo {
    /// The store's name.
    pub name: &'static str,
    /// Its key type, as written.
    pub key: &'static str,
    /// Its value type, as written.
    pub value: &'static str,
}

/// Settings declared with a handler; `None` leaves the worker's setting as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandlerSettings {
    /// Topics to consume (used when the worker is given none).
    pub topics: &'static [&'static str],
    /// Consumer group.
    pub group: Option<&'static str>,
    /// Records per batch.
    pub batch_size: Option<usize>,
    /// Milliseconds a batch waits for more records after its first.
    pub linger_ms: Option<u64>,
    /// Records buffered per partition before it is paused.
    pub queue_capacity: Option<usize>,
    /// Delivery mode.
    pub delivery: Delivery,
    /// Declared state stores.
    pub stores: &'static [StoreInfo],
    /// Attempts per record before it is dead-lettered (0: retry forever).
    pub max_attempts: Option<u32>,
    /// First retry wait in milliseconds (doubles per attempt).
    pub backoff_ms: Option<u64>,
    /// Longest retry wait in milliseconds.
    pub max_backoff_ms: Option<u64>,
    /// Dead-letter topic; `{topic}` stands for the source topic; empty turns dead letters off.
    pub dead_letter_topic: Option<&'static str>,
    /// Send later records with a dead-lettered record's key to the dead-letter topic too.
    pub keep_key_order: Option<bool>,
    /// Declared window stores (names).
    pub windows: &'static [&'static str],
    /// Late-record topic; `{topic}` stands for the source topic; empty drops late records.
    pub late_topic: Option<&'static str>,
    /// Milliseconds without records after which a partition's watermark follows the wall
    /// clock, so that its last windows close.
    pub idle_close_after_ms: Option<u64>,
    /// Call [`Process::on_window_updated`] after every window update.
    pub window_updates: bool,
    /// Declared tables.
    pub tables: &'static [TableInfo],
}

impl HandlerSettings {
    /// No topics, nothing overridden, at-least-once.
    pub const DEFAULT: Self = Self {
        topics: &[],
        group: None,
        batch_size: None,
        linger_ms: None,
        queue_capacity: None,
        delivery: Delivery::AtLeastOnce,
        stores: &[],
        max_attempts: None,
        backoff_ms: None,
        max_backoff_ms: None,
        dead_letter_topic: None,
        keep_key_order: None,
        windows: &[],
        late_topic: None,
        idle_close_after_ms: None,
        window_updates: false,
        tables: &[],
    };
}

impl Default for HandlerSettings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Runs a handler callback, turning its error or panic into a [`BoxError`].
pub(crate) async fn caught<E: Into<BoxError>>(
    callback: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), BoxError> {
    match AssertUnwindSafe(callback).catch_unwind().await {
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
