//! The partition's watermark, and the time of the record (or timer) being processed.

use weir_state::{PartitionStore, WriteSet};

use super::Window;
use crate::error::Result;

/// The store holding the partition's watermark.
const TIME_STORE: &str = "__weir_time";
/// The watermark's key in [`TIME_STORE`].
const WATERMARK_KEY: &str = "watermark";

/// The partition's committed-or-pending watermark.
pub(crate) fn watermark(store: &PartitionStore, writes: &WriteSet) -> Result<Option<i64>> {
    Ok(store.get_through(writes, TIME_STORE, WATERMARK_KEY)?)
}

/// Buffers the partition's watermark.
pub(crate) fn set_watermark(writes: &mut WriteSet, watermark: i64) -> Result<()> {
    Ok(writes.put(TIME_STORE, WATERMARK_KEY, &watermark)?)
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

/// The time of the record being processed, and what its window updates found.
#[derive(Debug, Default)]
pub(crate) struct RecordTime {
    /// The record's event time (for a timer callback: the timer's time).
    event_time: i64,
    /// The partition's watermark before this record.
    watermark: Option<i64>,
    /// Some window update found the record late.
    late: bool,
    /// Some window update counted the record.
    counted: bool,
    /// Windows updated by this record (store, key JSON, window), when the handler wants
    /// every update.
    updated: Option<Vec<Updated>>,
    /// The time of records emitted meanwhile, when not the event time (a closed window's).
    emit_at: Option<i64>,
}

/// A window a record updated: its store, key (JSON) and bounds.
pub(crate) type Updated = (&'static str, String, Window);

impl RecordTime {
    pub(crate) fn new(event_time: i64, watermark: Option<i64>, track_updates: bool) -> Self {
        Self {
            event_time,
            watermark,
            late: false,
            counted: false,
            updated: track_updates.then(Vec::new),
            emit_at: None,
        }
    }

    /// The timestamp of records emitted now: the event time, or what
    /// [`emit_at`](Self::emit_at) set.
    pub(crate) fn emit_time(&self) -> i64 {
        self.emit_at.unwrap_or(self.event_time)
    }

    /// Records emitted from now on carry `t` (a closed window's last instant).
    pub(crate) fn emit_at(&mut self, t: i64) {
        self.emit_at = Some(t);
    }

    /// The record's event time (a timer's: when it was due).
    pub(crate) fn event_time(&self) -> i64 {
        self.event_time
    }

    /// The partition's watermark before this record.
    pub(crate) fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// Some window store found the record late and none counted it.
    pub(crate) fn is_late(&self) -> bool {
        self.late && !self.counted
    }

    /// The windows this record updated (when every update is reported), in order.
    pub(crate) fn take_updates(&mut self) -> Vec<Updated> {
        self.updated.take().unwrap_or_default()
    }

    /// A window closing at `close_at` is closed already.
    pub(super) fn is_closed(&self, close_at: i64) -> bool {
        self.watermark.is_some_and(|w| close_at <= w)
    }

    /// Notes that a window store counted the record, or found it late.
    pub(super) fn counted(&mut self, counted: bool) {
        if counted {
            self.counted = true;
        } else {
            self.late = true;
        }
    }

    /// Notes an update of `window` (for `on_window_updated`), if updates are reported.
    pub(super) fn note_update(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
