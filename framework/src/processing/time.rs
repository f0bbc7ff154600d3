//! Event time: window definitions, the watermark, late records and timers.
//!
//! Everything time keeps lives in the partition's keyed state under reserved store names, so
//! it commits in the batch's transaction, is cached, and moves with the changelog like any
//! store:
//!
//! | store | key | value |
//! | --- | --- | --- |
//! | `__weir_time` | `"watermark"` | the partition's watermark (ms) |
//! | `__weir_timers` | `"<e or c><time, sortable>\|<what>"` | [`Due`]: a window to close or a user timer |
//! | a window store (`W::NAME`) | `[key, start_ms]` (tumbling, hopping) or `key` (session) | the aggregate (session: `[[start, end, aggregate], ...]`) |

use std::borrow::Borrow;
use std::marker::PhantomData;
use std::time::Duration;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use weir_state::{PartitionStore, WriteSet};

use crate::Result;

/// The store holding the partition's watermark.
pub(crate) const TIME_STORE: &str = "__weir_time";
/// The watermark's key in [`TIME_STORE`].
pub(crate) const WATERMARK_KEY: &str = "watermark";
/// The store of pending timers (window closes and user timers), ordered by due time.
pub(crate) const TIMERS: &str = "__weir_timers";

/// A window: from `start_ms` (inclusive) to `end_ms` (exclusive), event time in milliseconds
/// since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Window {
    /// First millisecond in the window.
    pub start_ms: i64,
    /// First millisecond after the window.
    pub end_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tumbling { size: i64 },
    Hopping { size: i64, advance: i64 },
    Session { gap: i64 },
}

/// How a window store groups records by event time, and how long a window waits for late
/// records (its grace period) before it closes.
///
/// Tumbling and hopping windows are aligned to the Unix epoch. A window closes when the
/// partition's watermark reaches its end plus the grace period; a record whose windows are
/// all closed is late.
///
/// ```
/// use std::time::Duration;
/// use weir::Windows;
///
/// // Kafka Streams' TimeWindows.ofSizeAndGrace(60 s, 10 s).
/// const PER_MINUTE: Windows = Windows::tumbling(Duration::from_secs(60)).grace(Duration::from_secs(10));
/// // Five-minute windows starting every minute.
/// const LAST_5_MIN: Windows = Windows::hopping(Duration::from_secs(300), Duration::from_secs(60));
/// // SessionWindows.ofInactivityGapAndGrace(30 min, 1 min).
/// const VISITS: Windows = Windows::session(Duration::from_secs(1800)).grace(Duration::from_secs(60));
/// assert_eq!(PER_MINUTE.grace_ms(), 10_000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    kind: Kind,
    grace: i64,
}

const fn ms(d: Duration) -> i64 {
    let ms = d.as_millis();
    assert!(
        ms > 0,
        "a window size, advance or gap must be at least 1 ms"
    );
    assert!(ms <= i64::MAX as u128, "window duration too long");
    ms as i64
}

impl Windows {
    /// Windows of `size`, one after the other, each record in exactly one.
    pub const fn tumbling(size: Duration) -> Self {
        Self {
            kind: Kind::Tumbling { size: ms(size) },
            grace: 0,
        }
    }

    /// Windows of `size` starting every `advance` (overlapping when `advance < size`); a
    /// record is in every window that covers its event time.
    pub const fn hopping(size: Duration, advance: Duration) -> Self {
        let (size, advance) = (ms(size), ms(advance));
        assert!(
            advance <= size,
            "a hopping window's advance must not exceed its size"
        );
        Self {
            kind: Kind::Hopping { size, advance },
            grace: 0,
        }
    }

    /// Per key, a session of records each at most `inactivity_gap` after the one before; a
    /// record that bridges two sessions merges them. A session's window ends `inactivity_gap`
    /// after its last record.
    pub const fn session(inactivity_gap: Duration) -> Self {
        Self {
            kind: Kind::Session {
                gap: ms(inactivity_gap),
            },
            grace: 0,
        }
    }

    /// How long after a window's end it still takes out-of-order records (default 0).
    pub const fn grace(mut self, grace: Duration) -> Self {
        let g = grace.as_millis();
        assert!(g <= i64::MAX as u128, "grace too long");
        self.grace = g as i64;
        self
    }

    /// The grace period in milliseconds.
    pub const fn grace_ms(&self) -> i64 {
        self.grace
    }

    /// True for session windows.
    pub const fn is_session(&self) -> bool {
        matches!(self.kind, Kind::Session { .. })
    }

    /// The time windows (tumbling or hopping) that contain event time `t`, latest first.
    fn containing(&self, t: i64) -> impl Iterator<Item = Window> {
        let (size, advance) = match self.kind {
            Kind::Tumbling { size } => (size, size),
            Kind::Hopping { size, advance } => (size, advance),
            // No time windows: an empty range.
            Kind::Session { .. } => (0, 1),
        };
        let latest = t.div_euclid(advance) * advance;
        (0..)
            .map(move |i: i64| latest.saturating_sub(i.saturating_mul(advance)))
            .take_while(move |start| size > 0 && start.saturating_add(size) > t)
            .map(move |start| Window {
                start_ms: start,
                end_ms: start.saturating_add(size),
            })
    }

    /// The end of the tumbling or hopping window starting at `start`.
    pub(crate) fn end_of(&self, start: i64) -> i64 {
        match self.kind {
            Kind::Tumbling { size } | Kind::Hopping { size, .. } => start.saturating_add(size),
            Kind::Session { .. } => start,
        }
    }

    /// When `window` closes: its end plus the grace period.
    fn close_at(&self, window: Window) -> i64 {
        window.end_ms.saturating_add(self.grace)
    }
}

/// A windowed store: its name, windows and types. `#[derive(Handler)]` writes one for each
/// `window(...)` in `#[handler(...)]`; by hand:
///
/// ```
/// use std::time::Duration;
/// struct ViewsPerMinute;
/// impl weir::WindowDef for ViewsPerMinute {
///     const NAME: &'static str = "views_per_minute";
///     const WINDOWS: weir::Windows =
///         weir::Windows::tumbling(Duration::from_secs(60)).grace(Duration::from_secs(10));
///     type Key = String;
///     type Value = u64;
/// }
/// ```
pub trait WindowDef: Send + Sync + 'static {
    /// The store's name (its rows carry it in the `store` column).
    const NAME: &'static str;
    /// How records are grouped in time.
    const WINDOWS: Windows;
    /// The key type.
    type Key: Serialize + DeserializeOwned;
    /// The aggregate kept per key and window.
    type Value: Serialize + DeserializeOwned;
}

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
        crate::Error::State(weir_state::Error::Codec {
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
fn put_timer(writes: &mut WriteSet, at: TimerAt, what: &str, due: &Due) -> Result<()> {
    Ok(writes.put(TIMERS, &timer_key(at, what), due)?)
}

fn delete_timer(writes: &mut WriteSet, at: TimerAt, what: &str) -> Result<()> {
    Ok(writes.delete(TIMERS, &timer_key(at, what))?)
}

/// The tag of a window's close timer.
fn window_tag(store: &str, key_json: &str, start: i64) -> String {
    format!("w|{store}|{}|{key_json}", sortable(start))
}

/// The tag of a user timer.
fn user_tag(key_json: &str) -> String {
    format!("u|{key_json}")
}

/// The top-level `field` of the JSON object `payload` as milliseconds: a whole number, or a
/// string of digits; `None` when the payload is no object or the field is missing or neither.
pub(crate) fn json_field_ms(payload: &[u8], field: &str) -> Option<i64> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

    struct Field<'f>(&'f str);

    impl<'de> Visitor<'de> for Field<'_> {
        type Value = Option<serde_json::Value>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if found.is_none() && key == self.0 {
                    found = Some(map.next_value::<serde_json::Value>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }

    impl<'de> DeserializeSeed<'de> for Field<'_> {
        type Value = Option<serde_json::Value>;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    let mut de = serde_json::Deserializer::from_slice(payload);
    match Field(field).deserialize(&mut de).ok()?? {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The partition's committed-or-pending watermark.
pub(crate) fn watermark(store: &PartitionStore, writes: &WriteSet) -> Result<Option<i64>> {
    Ok(store.get_through(writes, TIME_STORE, WATERMARK_KEY)?)
}

/// Buffers the partition's watermark.
pub(crate) fn set_watermark(writes: &mut WriteSet, watermark: i64) -> Result<()> {
    Ok(writes.put(TIME_STORE, WATERMARK_KEY, &watermark)?)
}

/// The time of the record being processed, and what its window updates found.
#[derive(Debug, Default)]
pub(crate) struct RecordTime {
    /// The record's event time (for a timer callback: the timer's time).
    pub(crate) event_time: i64,
    /// The partition's watermark before this record.
    pub(crate) watermark: Option<i64>,
    /// Some window update found the record late.
    pub(crate) late: bool,
    /// Some window update counted the record.
    pub(crate) counted: bool,
    /// Windows updated by this record (store, key JSON, window), when the handler wants
    /// every update.
    pub(crate) updated: Option<Vec<(&'static str, String, Window)>>,
}

impl RecordTime {
    pub(crate) fn new(event_time: i64, watermark: Option<i64>, track_updates: bool) -> Self {
        Self {
            event_time,
            watermark,
            late: false,
            counted: false,
            updated: track_updates.then(Vec::new),
        }
    }

    /// A window closing at `close_at` is closed already.
    fn is_closed(&self, close_at: i64) -> bool {
        self.watermark.is_some_and(|w| close_at <= w)
    }

    fn note_update(
        &mut self,
        store: &'static str,
        key_json: impl FnOnce() -> Result<String>,
        window: Window,
    ) -> Result<()> {
        if let Some(updated) = &mut self.updated {
            let key = key_json()?;
            if !updated
                .iter()
                .any(|(s, k, w)| *s == store && *k == key && *w == window)
            {
                updated.push((store, key, window));
            }
        }
        Ok(())
    }
}

/// A session: its window and aggregate.
type Session<V> = (i64, i64, V);

/// A windowed store for the record being processed: see [`Ctx::window`](crate::Ctx::window).
#[derive(Debug)]
pub struct WindowState<'c, W: WindowDef> {
    store: &'c PartitionStore,
    writes: &'c mut WriteSet,
    time: &'c mut RecordTime,
    def: PhantomData<fn() -> W>,
}

impl<'c, W: WindowDef> WindowState<'c, W> {
    pub(crate) fn new(
        store: &'c PartitionStore,
        writes: &'c mut WriteSet,
        time: &'c mut RecordTime,
    ) -> Self {
        Self {
            store,
            writes,
            time,
            def: PhantomData,
        }
    }

    /// Folds the record into every open window of `key` that covers its event time (one for
    /// tumbling windows, `size / advance` for hopping ones): `f` gets the window's aggregate
    /// so far (`None` for a new window) and returns the new one.
    ///
    /// Returns false if the record is late: all its windows are closed already. A late record
    /// is counted in none; once its processing succeeds it is sent to the late topic.
    ///
    /// # Errors
    /// On session windows (use [`add_session`](Self::add_session)), and when a value cannot
    /// be encoded or decoded.
    pub fn add<Q>(
        &mut self,
        key: &Q,
        mut f: impl FnMut(Option<W::Value>) -> W::Value,
    ) -> Result<bool>
    where
        W::Key: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        if W::WINDOWS.is_session() {
            return Err(crate::Error::Window {
                store: W::NAME,
                reason: "session windows take `add_session`".into(),
            });
        }
        let t = self.time.event_time;
        let mut counted = false;
        for window in W::WINDOWS.containing(t) {
            let close_at = W::WINDOWS.close_at(window);
            if self.time.is_closed(close_at) {
                continue;
            }
            counted = true;
            let mut created = false;
            self.store.update_through(
                self.writes,
                W::NAME,
                &(key, window.start_ms),
                |v: Option<W::Value>| {
                    created = v.is_none();
                    Some(f(v))
                },
            )?;
            let key_json = || serde_json::to_string(key).map_err(|e| encode_err(W::NAME, e));
            if created {
                let key_json = key_json()?;
                let due = Due::Window {
                    store: W::NAME.to_owned(),
                    key: key_json.clone(),
                    start: window.start_ms,
                    end: window.end_ms,
                };
                let tag = window_tag(W::NAME, &key_json, window.start_ms);
                put_timer(self.writes, TimerAt::EventTime(close_at), &tag, &due)?;
                self.time.note_update(W::NAME, || Ok(key_json), window)?;
            } else {
                self.time.note_update(W::NAME, key_json, window)?;
            }
        }
        self.time.counted |= counted;
        self.time.late |= !counted;
        Ok(counted)
    }

    /// Folds the record into `key`'s session: the open session its event time falls in (or
    /// within the inactivity gap of), or a new one. A record that bridges sessions merges
    /// them: `merge` combines their aggregates, oldest first, before `f` adds the record.
    ///
    /// Returns false if the record is late: its event time is more than the grace period
    /// behind the watermark.
    ///
    /// # Errors
    /// On tumbling and hopping windows (use [`add`](Self::add)), and when a value cannot be
    /// encoded or decoded.
    pub fn add_session<Q>(
        &mut self,
        key: &Q,
        f: impl FnOnce(Option<W::Value>) -> W::Value,
        merge: impl Fn(W::Value, W::Value) -> W::Value,
    ) -> Result<bool>
    where
        W::Key: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let Kind::Session { gap } = W::WINDOWS.kind else {
            return Err(crate::Error::Window {
                store: W::NAME,
                reason: "tumbling and hopping windows take `add`".into(),
            });
        };
        let t = self.time.event_time;
        let grace = W::WINDOWS.grace;
        if self
            .time
            .is_closed(t.saturating_add(grace).saturating_add(1))
        {
            self.time.late = true;
            return Ok(false);
        }
        let sessions: Vec<Session<W::Value>> = self
            .store
            .get_through(self.writes, W::NAME, key)?
            .unwrap_or_default();
        let key_json = serde_json::to_string(key).map_err(|e| encode_err(W::NAME, e))?;
        let (mut start, mut end) = (t, t.saturating_add(gap));
        let mut merged: Option<W::Value> = None;
        let mut kept = Vec::with_capacity(sessions.len() + 1);
        for (s, e, v) in sessions {
            if s < end && t < e {
                start = start.min(s);
                end = end.max(e);
                merged = Some(match merged {
                    Some(acc) => merge(acc, v),
                    None => v,
                });
                delete_timer(
                    self.writes,
                    TimerAt::EventTime(e.saturating_add(grace)),
                    &window_tag(W::NAME, &key_json, s),
                )?;
            } else {
                kept.push((s, e, v));
            }
        }
        let value = f(merged);
        let window = Window {
            start_ms: start,
            end_ms: end,
        };
        kept.push((start, end, value));
        kept.sort_by_key(|(s, _, _)| *s);
        self.writes.put(W::NAME, key, &kept)?;
        let due = Due::Window {
            store: W::NAME.to_owned(),
            key: key_json.clone(),
            start,
            end,
        };
        let tag = window_tag(W::NAME, &key_json, start);
        put_timer(
            self.writes,
            TimerAt::EventTime(end.saturating_add(grace)),
            &tag,
            &due,
        )?;
        self.time.note_update(W::NAME, || Ok(key_json), window)?;
        self.time.counted = true;
        Ok(true)
    }

    /// The aggregate of `key`'s open window starting at `start_ms` (a session: the one starting
    /// there), as this batch sees it.
    pub fn get<Q>(&self, key: &Q, start_ms: i64) -> Result<Option<W::Value>>
    where
        W::Key: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        if W::WINDOWS.is_session() {
            let sessions: Vec<Session<W::Value>> = self
                .store
                .get_through(self.writes, W::NAME, key)?
                .unwrap_or_default();
            return Ok(sessions
                .into_iter()
                .find(|(s, _, _)| *s == start_ms)
                .map(|(_, _, v)| v));
        }
        Ok(self
            .store
            .get_through(self.writes, W::NAME, &(key, start_ms))?)
    }
}

fn encode_err(store: &str, source: serde_json::Error) -> crate::Error {
    crate::Error::State(weir_state::Error::Codec {
        store: store.to_owned(),
        source,
    })
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

/// Takes a due window out of its store: its aggregate (JSON), deleted in the batch. `None` if
/// the window is gone already.
pub(crate) fn take_window(
    store: &PartitionStore,
    writes: &mut WriteSet,
    name: &str,
    key_json: &str,
    window: Window,
) -> Result<Option<String>> {
    let row = format!("[{key_json},{}]", window.start_ms);
    if let Some(value) = store.get_encoded_through(writes, name, &row)? {
        writes.put_encoded(name, &row, None);
        return Ok(Some(value));
    }
    // A session store: the key's row holds its sessions.
    let Some(list) = store.get_encoded_through(writes, name, key_json)? else {
        return Ok(None);
    };
    let mut sessions: Vec<(i64, i64, serde_json::Value)> =
        serde_json::from_str(&list).map_err(|e| encode_err(name, e))?;
    let Some(i) = sessions
        .iter()
        .position(|(s, e, _)| *s == window.start_ms && *e == window.end_ms)
    else {
        return Ok(None);
    };
    let (_, _, value) = sessions.remove(i);
    if sessions.is_empty() {
        writes.put_encoded(name, key_json, None);
    } else {
        let rest = serde_json::to_string(&sessions).map_err(|e| encode_err(name, e))?;
        writes.put_encoded(name, key_json, Some(&rest));
    }
    Ok(Some(
        serde_json::to_string(&value).map_err(|e| encode_err(name, e))?,
    ))
}

/// A window's result, handed to [`Process::on_window_closed`](crate::Process::on_window_closed)
/// when the window closes and to [`Process::on_window_updated`](crate::Process::on_window_updated)
/// after each update when the handler asks for every update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowResult {
    store: String,
    key: String,
    window: Window,
    value: String,
}

impl WindowResult {
    pub(crate) fn new(store: String, key: String, window: Window, value: String) -> Self {
        Self {
            store,
            key,
            window,
            value,
        }
    }

    /// The window store's name.
    pub fn store(&self) -> &str {
        &self.store
    }

    /// The window's bounds.
    pub fn window(&self) -> Window {
        self.window
    }

    /// The key and aggregate, if this is a window of `W` (`None` for another store's).
    pub fn get<W: WindowDef>(&self) -> Result<Option<(W::Key, W::Value)>> {
        if self.store != W::NAME {
            return Ok(None);
        }
        let decode = |json: &str| serde_json::from_str(json).map_err(|e| encode_err(W::NAME, e));
        let key = decode(&self.key)?;
        let value = serde_json::from_str(&self.value).map_err(|e| encode_err(W::NAME, e))?;
        Ok(Some((key, value)))
    }

    /// The key as JSON.
    pub fn key_json(&self) -> &str {
        &self.key
    }

    /// The aggregate as JSON.
    pub fn value_json(&self) -> &str {
        &self.value
    }
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
        serde_json::from_str(&self.key).map_err(|e| encode_err(TIMERS, e))
    }

    /// The key as JSON.
    pub fn key_json(&self) -> &str {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(start_ms: i64, end_ms: i64) -> Window {
        Window { start_ms, end_ms }
    }

    #[test]
    fn tumbling_windows_are_aligned_to_the_epoch() {
        let tumbling = Windows::tumbling(Duration::from_secs(60));
        let at = |t: i64| -> Vec<Window> { tumbling.containing(t).collect() };
        assert_eq!(at(0), vec![w(0, 60_000)]);
        assert_eq!(at(59_999), vec![w(0, 60_000)]);
        assert_eq!(at(60_000), vec![w(60_000, 120_000)]);
        assert_eq!(at(-1), vec![w(-60_000, 0)]);
        let session = Windows::session(Duration::from_secs(1));
        assert_eq!(session.containing(5).count(), 0);
    }

    #[test]
    fn hopping_windows_cover_a_time_size_over_advance_times() {
        let h = Windows::hopping(Duration::from_secs(30), Duration::from_secs(10));
        let at = |t: i64| -> Vec<Window> { h.containing(t).collect() };
        assert_eq!(
            at(25_000),
            vec![w(20_000, 50_000), w(10_000, 40_000), w(0, 30_000)]
        );
        assert_eq!(
            at(30_000),
            vec![w(30_000, 60_000), w(20_000, 50_000), w(10_000, 40_000)]
        );
    }

    #[test]
    fn the_event_time_field_is_read_from_json_objects() {
        let ms = |json: &str| json_field_ms(json.as_bytes(), "ts_ms");
        assert_eq!(
            ms(r#"{"page":"/","ts_ms":1700000000123,"n":[1,{"ts_ms":2}]}"#),
            Some(1_700_000_000_123)
        );
        assert_eq!(ms(r#"{"ts_ms":"42"}"#), Some(42));
        assert_eq!(ms(r#"{"ts_ms":12.9}"#), Some(12));
        assert_eq!(ms(r#"{"other":1}"#), None);
        assert_eq!(ms(r#"{"ts_ms":null}"#), None);
        assert_eq!(ms("[1,2]"), None);
        assert_eq!(ms("not json"), None);
    }

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
