//! What leaves a partition besides its state: retries and dead letters, the outbox of emitted
//! records and changelog entries, and the restore of a store from its changelog.

mod dead_letter;
mod outbox;
pub(crate) mod restore;
mod retry;

pub use dead_letter::{DeadLetter, DeadLetterReason};
pub(crate) use dead_letter::{DeadLetterPolicy, DeadLetterSink};
pub(crate) use outbox::OutboxSink;
pub use retry::RetryPolicy;
