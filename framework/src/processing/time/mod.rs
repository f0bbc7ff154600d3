//! Event time: the partition's watermark, the time of the record being processed, window
//! stores and timers.
//!
//! Everything time keeps lives in the partition's keyed state under reserved store names, so
//! it commits in the batch's transaction, is cached, and moves with the changelog like any
//! store:
//!
//! | store | key | value |
//! | --- | --- | --- |
//! | `__weir_time` | `"watermark"` | the partition's watermark (ms) |
//! | `__weir_timers` | `"<e or c><time, sortable>\|<what>"` | what is due: a window to close or a user timer |
//! | a window store (`W::NAME`) | `[key, start_ms]` (tumbling, hopping) or `key` (session) | the aggregate (session: `[[start, end, aggregate], ...]`) |
//!
//! `watermark` holds the watermark and a record's time, `timers` the timer store, `windows` the
//! window stores (built on timers), and `firing` fires what is due.

mod firing;
mod timers;
mod watermark;
mod windows;

pub(crate) use firing::fire_due;
pub use timers::{FiredTimer, TimerAt};
pub(crate) use timers::{TIMERS, cancel, due_timers, next_wall_timer, schedule};
pub(crate) use watermark::{RecordTime, json_field_ms, set_watermark, watermark};
pub(crate) use windows::window_value;
pub use windows::{WindowDef, WindowResult, WindowState, Windows};

/// A window: from `start_ms` (inclusive) to `end_ms` (exclusive), event time in milliseconds
/// since the Unix epoch.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Window {
    /// First millisecond in the window.
    pub start_ms: i64,
    /// First millisecond after the window.
    pub end_ms: i64,
}

/// A codec error of a time store.
fn codec_err(store: &str, source: serde_json::Error) -> crate::error::Error {
    crate::error::Error::State(weir_state::Error::Codec {
        store: store.to_owned(),
        source,
    })
}
