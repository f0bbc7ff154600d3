//! Timers: rows of the `__weir_timers` store keyed by due time, for window closes and user
//! timers.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use weir_state::{PartitionStore, WriteSet};

use super::codec_err;
use crate::error::Result;

/// The store of pending timers (window closes and user timers), ordered by due time.
pub(crate) const TIMERS: &str = "__weir_timers";

/// When a timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TimerAt {
    /// When the partition's watermark reaches this event time (ms since the Unix epoch).
    EventTime(i64),
    /// When the wall clock reaches this time (ms since the Unix epoch).
    WallClock(i64),
}

impl TimerAt {
    fn prefix(self) -> (char, i64) {
        match self {
            Self::EventTime(t) => (EVENT_PREFIX, t),
            Self::WallClock(t) => (WALL_PREFIX, t),
        }
    }
}

const EVENT_PREFIX: char = 'e';
const WALL_PREFIX: char = 'c';

/// `t` as 20 digits that sort as the numbers do (negative times included).
fn sortable(t: i64) -> String {
    format!("{:020}", (t as u64) ^ (1 << 63))
}

/// The timer row key (before JSON encoding) of what is due at `at`.
fn timer_key(at: TimerAt, what: &str) -> String {
    let (prefix, t) = at.prefix();
    format!("{prefix}{}|{what}", sortable(t))
}

/// JSON-encoded bounds `[from, to)` of the timer keys of `prefix` due at or before `t`.
fn due_range(prefix: char, t: i64) -> (String, String) {
    let to = match t.checked_add(1) {
        Some(next) => format!("\"{prefix}{}", sortable(next)),
        // Everything of the prefix: the next prefix character.
        None => format!("\"{}", (prefix as u8 + 1) as char),
    };
    (format!("\"{prefix}"), to)
}

/// What a timer row stands for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Due {
    /// A window of `store` for the key `key` (JSON) closes.
    Window {
        store: String,
        key: String,
        start: i64,
        end: i64,
    },
    /// A user timer for the key `key` (JSON).
    User { key: String },
}

/// A timer that is due, as read from the timer store.
#[derive(Debug)]
pub(crate) struct DueTimer {
    /// The timer row's key (JSON), to delete it.
    pub(crate) row: String,
    pub(crate) at: TimerAt,
    pub(crate) due: Due,
}

/// The timers due at watermark `watermark` (event time) and wall-clock time `now`, as the
/// batch sees them: event-time timers in time order, then wall-clock ones.
pub(crate) fn due_timers(
    store: &PartitionStore,
    writes: &WriteSet,
    watermark: Option<i64>,
    now: i64,
) -> Result<Vec<DueTimer>> {
    let mut out = Vec::new();
    let kinds = [(EVENT_PREFIX, watermark), (WALL_PREFIX, Some(now))];
    for (prefix, until) in kinds {
        let Some(until) = until else { continue };
        let (from, to) = due_range(prefix, until);
        for (row, value) in store.range_through(writes, TIMERS, &from, &to)? {
            out.push(parse_timer(row, &value)?);
        }
    }
    Ok(out)
}

/// The earliest pending wall-clock timer (committed), if any.
pub(crate) fn next_wall_timer(store: &PartitionStore) -> Result<Option<i64>> {
    let (from, to) = due_range(WALL_PREFIX, i64::MAX);
    match store.first_in_range(TIMERS, &from, &to)? {
        Some((row, value)) => Ok(match parse_timer(row, &value)?.at {
            TimerAt::WallClock(t) | TimerAt::EventTime(t) => Some(t),
        }),
        None => Ok(None),
    }
}

fn parse_timer(row: String, value: &str) -> Result<DueTimer> {
    let bad = |what: &str| {
        crate::error::Error::State(weir_state::Error::Codec {
            store: TIMERS.to_owned(),
            source: <serde_json::Error as serde::de::Error>::custom(format!(
                "timer row {row:?}: {what}"
            )),
        })
    };
    let key: String = serde_json::from_str(&row).map_err(|_| bad("key is not a JSON string"))?;
    let prefix = key.chars().next();
    let digits = key.get(1..21).ok_or_else(|| bad("too short"))?;
    let t = digits
        .parse::<u64>()
        .map(|v| (v ^ (1 << 63)) as i64)
        .map_err(|_| bad("time is not a number"))?;
    let at = match prefix {
        Some(EVENT_PREFIX) => TimerAt::EventTime(t),
        Some(WALL_PREFIX) => TimerAt::WallClock(t),
        _ => return Err(bad("unknown kind")),
    };
    let due = serde_json::from_str(value).map_err(|e| bad(&e.to_string()))?;
    Ok(DueTimer { row, at, due })
}

/// Buffers timer `due` at `at`.
pub(super) fn put_timer(writes: &mut WriteSet, at: TimerAt, what: &str, due: &Due) -> Result<()> {
    Ok(writes.put(TIMERS, &timer_key(at, what), due)?)
}

pub(super) fn delete_timer(writes: &mut WriteSet, at: TimerAt, what: &str) -> Result<()> {
    Ok(writes.delete(TIMERS, &timer_key(at, what))?)
}

/// The tag of a window's close timer.
pub(super) fn window_tag(store: &str, key_json: &str, start: i64) -> String {
    format!("w|{store}|{}|{key_json}", sortable(start))
}

/// The tag of a user timer.
fn user_tag(key_json: &str) -> String {
    format!("u|{key_json}")
}

/// Schedules a user timer for `key` at `at` (once per key and time).
pub(crate) fn schedule(writes: &mut WriteSet, at: TimerAt, key_json: String) -> Result<()> {
    let tag = user_tag(&key_json);
    put_timer(writes, at, &tag, &Due::User { key: key_json })
}

/// Cancels the user timer for `key` at `at`, if scheduled.
pub(crate) fn cancel(writes: &mut WriteSet, at: TimerAt, key_json: &str) -> Result<()> {
    delete_timer(writes, at, &user_tag(key_json))
}

/// A user timer that fired: see [`Process::on_timer`](crate::Process::on_timer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FiredTimer {
    at: TimerAt,
    key: String,
}

impl FiredTimer {
    pub(crate) fn new(at: TimerAt, key: String) -> Self {
        Self { at, key }
    }

    /// When it was due.
    pub fn at(&self) -> TimerAt {
        self.at
    }

    /// The key it was scheduled for.
    pub fn key<K: DeserializeOwned>(&self) -> Result<K> {
        serde_json::from_str(&self.key).map_err(|e| codec_err(TIMERS, e))
    }

    /// The key as JSON.
    pub fn key_json(&self) -> &str {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_keys_sort_by_time_including_negative_times() {
        let times = [i64::MIN, -5, -1, 0, 1, 9, 10, 1_700_000_000_000, i64::MAX];
        let keys: Vec<String> = times
            .iter()
            .map(|t| timer_key(TimerAt::EventTime(*t), "x"))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        // The JSON-encoded bounds select exactly the times at or before the limit.
        let (from, to) = due_range(EVENT_PREFIX, 9);
        for (t, k) in times.iter().zip(&keys) {
            let json = serde_json::to_string(k).expect("json");
            assert_eq!(
                json.as_str() >= from.as_str() && json.as_str() < to.as_str(),
                *t <= 9,
                "{t}"
            );
        }
        let (_, all) = due_range(EVENT_PREFIX, i64::MAX);
        assert!(serde_json::to_string(&keys[8]).expect("json") < all);
    }
}
