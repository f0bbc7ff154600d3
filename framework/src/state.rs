//! Reading partition stores outside a handler (reports, tools, tests), and the formats weir
//! writes to Kafka. Read-only: a worker's stores are written only by the worker.
//!
//! ```no_run
//! let store = weir::state::StoreReader::open("weir-state/wordcount/lines/0.sqlite")?;
//! let top: Vec<(String, u64)> = store.entries("counts")?;
//! # Ok::<(), weir::state::Error>(())
//! ```

pub use weir_state::wire::{header, ChangelogEntry, CHANGELOG_OFFSET_STORE};
pub use weir_state::{Error, Progress, StoreReader, SCHEMA_VERSION};
