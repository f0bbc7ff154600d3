//! Window stores: tumbling, hopping and session windows over event time, closed by timers.

use std::borrow::Borrow;
use std::marker::PhantomData;
use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};
use weir_state::{PartitionStore, WriteSet};

use super::timers::{Due, TimerAt, delete_timer, put_timer, window_tag};
use super::watermark::RecordTime;
use super::{Window, codec_err};
use crate::error::Result;

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
/// use weir::time::Windows;
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
    fn containing(&self, t: i64) -> impl Iterator<Item = Window> + use<> {
        let (size, advance) = match self.kind {
            Kind::Tumbling { size } => (size, size),
            Kind::Hopping { size, advance } => (size, advance),
            // No time windows: an empty range.
            Kind::Session { .. } => (0, 1),
        };
        // Checked, so that no time can make the walk saturate and never end (records'
        // event times are checked for sanity before, but this must end for any time).
        let latest = t.div_euclid(advance).checked_mul(advance);
        (0..)
            .map_while(move |i: i64| latest?.checked_sub(i.checked_mul(advance)?))
            .map_while(move |start| Some((start, start.checked_add(size)?)))
            .take_while(move |(_, end)| size > 0 && *end > t)
            .map(|(start, end)| Window {
                start_ms: start,
                end_ms: end,
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
/// impl weir::time::WindowDef for ViewsPerMinute {
///     const NAME: &'static str = "views_per_minute";
///     const WINDOWS: weir::time::Windows =
///         weir::time::Windows::tumbling(Duration::from_secs(60)).grace(Duration::from_secs(10));
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
    type Value: Serialize + DeserializeOwned + Send + 'static;
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
            return Err(crate::error::Error::Window {
                store: W::NAME,
                reason: "session windows take `add_session`".into(),
            });
        }
        let t = self.time.event_time();
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
            let key_json = || serde_json::to_string(key).map_err(|e| codec_err(W::NAME, e));
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
        self.time.counted(counted);
        Ok(counted)
    }

    /// Folds the record into `key`'s session: every open session it lies within the inactivity
    /// gap of (inclusive), or a new one. A record that bridges sessions merges them: `merge`
    /// combines their aggregates, oldest first, before `f` adds the record.
    ///
    /// Returns false if the record is late: the session it would be part of (its own, merged
    /// with those it joins) is closed already, `end + grace <= watermark`.
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
            return Err(crate::error::Error::Window {
                store: W::NAME,
                reason: "tumbling and hopping windows take `add`".into(),
            });
        };
        let t = self.time.event_time();
        let grace = W::WINDOWS.grace;
        let sessions: Vec<Session<W::Value>> = self
            .store
            .get_through(self.writes, W::NAME, key)?
            .unwrap_or_default();
        // The record joins every open session of its key within the gap of it, inclusive
        // (Kafka Streams' rule: a session ends `gap` after its last record, and a record at
        // that end still belongs to it). A session closed by the watermark already (its
        // timer fires at the end of this batch) is final: nothing joins it.
        let joins: Vec<bool> = sessions
            .iter()
            .map(|&(s, e, _)| {
                !self.time.is_closed(e.saturating_add(grace))
                    && s <= t.saturating_add(gap)
                    && t <= e
            })
            .collect();
        let (mut start, mut end) = (t, t.saturating_add(gap));
        for ((s, e, _), _) in sessions.iter().zip(&joins).filter(|(_, j)| **j) {
            start = start.min(*s);
            end = end.max(*e);
        }
        // Late only if the session it would be part of is closed already.
        if self.time.is_closed(end.saturating_add(grace)) {
            self.time.counted(false);
            return Ok(false);
        }
        let key_json = serde_json::to_string(key).map_err(|e| codec_err(W::NAME, e))?;
        let mut merged: Option<W::Value> = None;
        let mut kept = Vec::with_capacity(sessions.len() + 1);
        for (session, joined) in sessions.into_iter().zip(joins) {
            if !joined {
                kept.push(session);
                continue;
            }
            let (s, e, v) = session;
            merged = Some(match merged {
                Some(acc) => merge(acc, v),
                None => v,
            });
            delete_timer(
                self.writes,
                TimerAt::EventTime(e.saturating_add(grace)),
                &window_tag(W::NAME, &key_json, s),
            )?;
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
        self.time.counted(true);
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

/// Where a window's aggregate is, as the batch sees it.
enum Stored {
    /// A tumbling or hopping window's own row (`[key, start]`) and its JSON value.
    Row { row: String, value: String },
    /// A session store's row of `key`: its sessions, the window's at `index`.
    Session {
        sessions: Vec<(i64, i64, serde_json::Value)>,
        index: usize,
    },
}

/// Finds `window` of the key `key_json` (JSON) in window store `name`.
fn stored(
    store: &PartitionStore,
    writes: &WriteSet,
    name: &str,
    key_json: &str,
    window: Window,
) -> Result<Option<Stored>> {
    let row = format!("[{key_json},{}]", window.start_ms);
    if let Some(value) = store.get_encoded_through(writes, name, &row)? {
        return Ok(Some(Stored::Row { row, value }));
    }
    let Some(list) = store.get_encoded_through(writes, name, key_json)? else {
        return Ok(None);
    };
    let sessions: Vec<(i64, i64, serde_json::Value)> =
        serde_json::from_str(&list).map_err(|e| codec_err(name, e))?;
    Ok(sessions
        .iter()
        .position(|(s, e, _)| *s == window.start_ms && *e == window.end_ms)
        .map(|index| Stored::Session { sessions, index }))
}

/// The aggregate (JSON) of `window` of the key `key_json` in window store `name`; `None` if it
/// is not (or no longer) open.
pub(crate) fn window_value(
    store: &PartitionStore,
    writes: &WriteSet,
    name: &str,
    key_json: &str,
    window: Window,
) -> Result<Option<String>> {
    match stored(store, writes, name, key_json, window)? {
        None => Ok(None),
        Some(Stored::Row { value, .. }) => Ok(Some(value)),
        Some(Stored::Session { sessions, index }) => Ok(Some(
            serde_json::to_string(&sessions[index].2).map_err(|e| codec_err(name, e))?,
        )),
    }
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
    match stored(store, writes, name, key_json, window)? {
        None => Ok(None),
        Some(Stored::Row { row, value }) => {
            writes.put_encoded(name, &row, None)?;
            Ok(Some(value))
        }
        Some(Stored::Session {
            mut sessions,
            index,
        }) => {
            let (_, _, value) = sessions.remove(index);
            if sessions.is_empty() {
                writes.put_encoded(name, key_json, None)?;
            } else {
                let rest = serde_json::to_string(&sessions).map_err(|e| codec_err(name, e))?;
                writes.put_encoded(name, key_json, Some(&rest))?;
            }
            Ok(Some(
                serde_json::to_string(&value).map_err(|e| codec_err(name, e))?,
            ))
        }
    }
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
        let decode = |json: &str| serde_json::from_str(json).map_err(|e| codec_err(W::NAME, e));
        let key = decode(&self.key)?;
        let value = serde_json::from_str(&self.value).map_err(|e| codec_err(W::NAME, e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn w(start_ms: i64, end_ms: i64) -> Window {
        Window { start_ms, end_ms }
    }

    #[test]
    fn any_time_has_a_finite_walk() {
        for t in [i64::MIN, i64::MIN + 3, -1, 0, i64::MAX - 1, i64::MAX] {
            let n = Windows::hopping(Duration::from_secs(10), Duration::from_secs(1))
                .containing(t)
                .take(11)
                .count();
            assert!(n <= 10, "{t}: {n}");
        }
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
}
