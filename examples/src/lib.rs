//! Handlers of the example workers, kept in a library so their tests use the test kit.

pub mod enrich;
pub mod orders;
pub mod pageviews;
pub mod sample;
pub mod wordcount;
