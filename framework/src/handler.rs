//! The handler trait users implement.

use std::future::Future;

use crate::{Codec, Ctx, Record};

/// The error type a handler may return: anything that converts into a boxed error
/// (`std::error::Error` types, `anyhow::Error`, `String`, `&str`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Processes the records of the partitions a worker owns.
///
/// One call per record, in offset order within a partition; partitions run in parallel. State
/// reads and writes go through `ctx`; the writes of a batch become durable together with the
/// batch's offset, so a record's effects on state count exactly once.
///
/// Returning an error (or panicking) fails the record's batch: none of its writes are kept and
/// the batch is retried.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a weir handler",
    note = "implement `weir::Handler` for `{Self}`: an associated `Value` codec, an `Error` type and `async fn process`"
)]
pub trait Handler: Send + Sync + 'static {
    /// The codec of the record values, e.g. `Json<Order>`, `Utf8` or `Raw`.
    type Value: Codec;
    /// The handler's error.
    type Error: Into<BoxError> + Send + 'static;

    /// Processes one record.
    fn process(
        &self,
        record: Record<'_, <Self::Value as Codec>::Value>,
        ctx: &mut Ctx<'_>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}
