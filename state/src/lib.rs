//! SQLite partition stores for weir.
//!
//! One [`PartitionStore`] per owned partition holds the partition's keyed state (named stores of
//! JSON-encoded keys and values) and the next offset to process. A batch's state changes are
//! buffered in a [`WriteSet`] and written together with the batch's offset in ONE transaction
//! by [`PartitionStore::commit`], so after any crash the store reflects exactly the messages
//! before its stored offset. [`PartitionStore::with_cache`] keeps the committed values a
//! handle reads and writes in memory, within a [`CacheBudget`] shared by a worker's stores.
//!
//! ```
//! use weir_state::{PartitionStore, WriteSet};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("orders/0.sqlite");
//! let store = PartitionStore::open(&path)?;
//! assert_eq!(store.next_offset("orders", 0)?, None);
//!
//! let mut batch = WriteSet::default();
//! batch.put("totals", &"alice", &42u64)?;
//! store.commit(&mut batch, "orders", 0, 7)?;
//! drop(store);
//!
//! let store = PartitionStore::open(&path)?;
//! assert_eq!(store.next_offset("orders", 0)?, Some(7));
//! assert_eq!(store.get::<_, u64>("totals", &"alice")?, Some(42));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod cache;
mod error;
mod headers;
mod key_map;
mod outbox_run;
mod partition_store;
mod reader;
mod schema;
mod slot;
mod small_bytes;
pub mod wire;
mod write_set;

pub use cache::CacheBudget;
pub use error::{Error, Result};
pub use headers::{HeaderSink, Headers};
pub use outbox_run::OutboxRecord;
pub use outbox_run::{HeaderWriter, HeadersView, OutboxRun, RecordView};
pub use partition_store::PartitionStore;
pub use reader::{Progress, StoreReader};
pub use schema::SCHEMA_VERSION;
pub use write_set::WriteSet;
