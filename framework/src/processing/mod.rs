//! Handling records: codecs, the record a handler sees, the handler traits, the per-record
//! context, and the batch runner that commits a batch's state and offset in one SQLite
//! transaction.

pub(crate) mod batch;
mod codec;
mod context;
mod handler;
mod message_ids;
mod record;
pub(crate) mod table;
pub(crate) mod time;
mod upstream;

pub use codec::{Codec, DecodeError, Envelope, Enveloped, Json, Raw, UndecodableRecord, Utf8};
#[cfg(feature = "kafka")]
pub(crate) use context::repartition_topic;
pub use context::{Ctx, State, StoreDef};
pub(crate) use context::{Scope, Source};
pub use handler::{Delivery, Handler, HandlerSettings, KeyOf, Process, StoreInfo, ValueOf};
pub use record::Record;
pub use table::{Table, TableDef, TableInfo};
pub use time::{FiredTimer, TimerAt, Window, WindowDef, WindowResult, WindowState, Windows};
