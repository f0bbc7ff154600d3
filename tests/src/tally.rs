//! The kill test's handler: per key a count and a sum of the records' numbers, both of which
//! change on every record, so a record applied twice (or lost) shows in state; and every new
//! tally is emitted, so the emitted stream can be checked too.

use serde::{Deserialize, Serialize};
use weir::prelude::*;

/// The store of tallies.
pub const TALLIES: &str = "tallies";

/// What is kept per key, and emitted after each record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Records of the key.
    pub count: u64,
    /// Sum of their numbers (record `v{i}` adds `i`).
    pub sum: u64,
}

/// An emitted tally: the key's tally after one of its records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Emitted {
    /// The key.
    pub key: String,
    /// Its tally after the record.
    pub tally: Tally,
}

/// The topic tallies of `topic` are emitted to.
pub fn tallies_topic(topic: &str) -> String {
    format!("{topic}-tallies")
}

/// Counts and sums per key; emits every new tally to [`tallies_topic`].
#[derive(Debug, Default, Handler)]
#[handler(value = Utf8, key = Utf8)]
pub struct TallyHandler {
    /// Sleep this long on every record (so that a kill finds records in flight).
    pub delay: Option<std::time::Duration>,
    /// Emit to this topic rather than [`tallies_topic`].
    pub to: Option<String>,
}

impl Process for TallyHandler {
    type Error = weir::Error;

    async fn process(
        &self,
        rec: Record<'_, String, String>,
        ctx: &mut Ctx<'_>,
    ) -> weir::Result<()> {
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        let n: u64 = rec
            .value()
            .strip_prefix('v')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| weir::Error::Emit {
                topic: "tallies".into(),
                reason: format!("not a numbered record: {:?}", rec.value()),
            })?;
        let mut tally = ctx
            .state::<str, Tally>(TALLIES)
            .get(rec.key())?
            .unwrap_or_default();
        tally.count += 1;
        tally.sum += n;
        ctx.state::<str, Tally>(TALLIES).put(rec.key(), &tally)?;
        let out = Emitted {
            key: rec.key().clone(),
            tally,
        };
        let to = match &self.to {
            Some(to) => to.clone(),
            None => tallies_topic(rec.topic()),
        };
        ctx.emit_json(&to, Some(rec.key().as_bytes()), &out)
    }
}

/// Asserts that `emitted` (the payloads of [`Emitted`] tallies, in the order the broker holds
/// them) are `per_key` tallies of each of `keys` keys, each key's counting up 1, 2, 3...:
/// every key's emits landed in the order they were emitted.
pub fn assert_tallies_in_order<'a>(
    emitted: impl IntoIterator<Item = &'a str>,
    keys: usize,
    per_key: u64,
) {
    let mut counts: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for e in emitted {
        let e: Emitted = serde_json::from_str(e).expect("a tally");
        counts.entry(e.key).or_default().push(e.tally.count);
    }
    let expected: Vec<u64> = (1..=per_key).collect();
    for (key, seen) in &counts {
        assert_eq!(
            seen, &expected,
            "key {key}'s tallies in the order they landed"
        );
    }
    assert_eq!(counts.len(), keys, "{counts:?}");
}
