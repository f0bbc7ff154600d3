//! The formats weir writes to Kafka, in one place for the writer (this crate's commit, the
//! framework's outbox and dead letters) and the readers (changelog restore, tools):
//! record headers and changelog entries.

/// Headers weir adds to the records it produces.
pub mod header {
    /// Topic of the record an emitted record or dead letter came from.
    pub const SOURCE_TOPIC: &str = "weir.source.topic";
    /// Partition of the record an emitted record or dead letter came from.
    pub const SOURCE_PARTITION: &str = "weir.source.partition";
    /// Offset of the record an emitted record or dead letter came from.
    pub const SOURCE_OFFSET: &str = "weir.source.offset";
    /// On changelog entries: the next offset of the batch they came from.
    pub const SOURCE_NEXT_OFFSET: &str = "weir.source.next_offset";
    /// On dead letters: the error of the last attempt.
    pub const ERROR: &str = "weir.error";
    /// On dead letters: attempts made.
    pub const ATTEMPTS: &str = "weir.attempts";
    /// On dead letters: when it was dead-lettered, in ms since the epoch.
    pub const FAILED_AT_MS: &str = "weir.failed_at_ms";
    /// On dead letters: why (`failed`, `undecodable`, `follows-dead-letter`).
    pub const REASON: &str = "weir.reason";

    /// The `weir.source.*` headers of a record produced because of record `offset` of
    /// `topic`/`partition` (no offset header when no single record caused it: a timer, a
    /// closing window).
    pub fn source(topic: &str, partition: i32, offset: Option<i64>) -> Vec<(String, Vec<u8>)> {
        let mut out = vec![
            (SOURCE_TOPIC.to_owned(), topic.as_bytes().to_vec()),
            (
                SOURCE_PARTITION.to_owned(),
                partition.to_string().into_bytes(),
            ),
        ];
        if let Some(offset) = offset {
            out.push((SOURCE_OFFSET.to_owned(), offset.to_string().into_bytes()));
        }
        out
    }
}

/// The store name of the changelog entry that carries a batch's next offset (its value).
pub const CHANGELOG_OFFSET_STORE: &str = "__weir_offset";

/// One changelog record, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangelogEntry {
    /// A state change: `key` and `value` are the store's JSON texts; `None` deletes the key.
    State {
        /// The named store.
        store: String,
        /// The key's JSON text.
        key: String,
        /// The value's JSON text, or `None` for a deletion.
        value: Option<String>,
    },
    /// The end of a batch: every state entry before it (since the previous marker) belongs to
    /// a batch whose next offset is this.
    Offset(i64),
}

impl ChangelogEntry {
    /// The record key of a state change of `key` (JSON text) in `store`: the JSON array
    /// `[store, key]`.
    pub fn key(store: &str, key: &str) -> Vec<u8> {
        serde_json::to_vec(&(store, key)).unwrap_or_default()
    }

    /// The record key and value of the offset marker of a batch ending at `next_offset`.
    pub fn offset_marker(next_offset: i64) -> (Vec<u8>, Vec<u8>) {
        (
            Self::key(CHANGELOG_OFFSET_STORE, "\"\""),
            next_offset.to_string().into_bytes(),
        )
    }

    /// Whether a record with this key is a batch's offset marker.
    pub fn is_offset_marker(key: Option<&[u8]>) -> bool {
        key == Some(Self::key(CHANGELOG_OFFSET_STORE, "\"\"").as_slice())
    }

    /// Decodes a changelog record's key and value; `None` if it is not a weir changelog entry.
    pub fn parse(key: Option<&[u8]>, value: Option<&[u8]>) -> Option<Self> {
        let (store, key): (String, String) = serde_json::from_slice(key?).ok()?;
        let value = value.map(|v| String::from_utf8_lossy(v).into_owned());
        if store == CHANGELOG_OFFSET_STORE {
            return value?.trim().parse().ok().map(Self::Offset);
        }
        Some(Self::State { store, key, value })
    }
}

/// The value of the [`header::SOURCE_NEXT_OFFSET`] header in `headers`, if any.
pub fn source_next_offset<'h>(
    headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
) -> Option<i64> {
    headers
        .into_iter()
        .find(|(k, _)| *k == header::SOURCE_NEXT_OFFSET)
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let k = ChangelogEntry::key("counts", "\"a\"");
        assert_eq!(
            ChangelogEntry::parse(Some(&k), Some(b"3")),
            Some(ChangelogEntry::State {
                store: "counts".into(),
                key: "\"a\"".into(),
                value: Some("3".into())
            })
        );
        assert_eq!(
            ChangelogEntry::parse(Some(&k), None),
            Some(ChangelogEntry::State {
                store: "counts".into(),
                key: "\"a\"".into(),
                value: None
            })
        );
        let (mk, mv) = ChangelogEntry::offset_marker(42);
        assert_eq!(
            ChangelogEntry::parse(Some(&mk), Some(&mv)),
            Some(ChangelogEntry::Offset(42))
        );
        assert!(ChangelogEntry::is_offset_marker(Some(&mk)));
        assert!(!ChangelogEntry::is_offset_marker(Some(&k)));
        assert_eq!(ChangelogEntry::parse(Some(b"not json"), Some(b"1")), None);
        assert_eq!(ChangelogEntry::parse(None, Some(b"1")), None);
        let hs = [("x", &b"1"[..]), (header::SOURCE_NEXT_OFFSET, &b"17"[..])];
        assert_eq!(source_next_offset(hs), Some(17));
    }
}
