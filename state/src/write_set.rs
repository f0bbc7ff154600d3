//! The state changes of one batch, buffered in memory until the batch commits.

use std::cell::RefCell;
use std::ops::Range;

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};
use crate::key_map::KeyMap;
use crate::outbox_run::{HeaderWriter, Mark, OutboxRecord, Parts, RecordView, Records};
use crate::slot::{codec, decode_bytes, Slot};
use crate::small_bytes::SmallBytes;

/// State changes of one batch: per named store, key (JSON) to new value or deletion.
///
/// Repeated writes to the same key coalesce, so a hot key costs one row write per batch. A
/// value is held as JSON, rewritten in place, or (from a key's second update in the batch on)
/// as the update's own type, encoded once before the commit: updating a key the batch already
/// holds allocates nothing and, updated as the same type, decodes nothing.
#[derive(Debug, Default)]
pub struct WriteSet {
    /// Per store (a handler has few, so a list beats hashing the name), its changed keys.
    stores: Vec<(String, Changes)>,
    /// What the open savepoint can undo.
    undo: UndoLog,
    /// Records to produce once the batch commits, in order, as the outbox stores them.
    outbox: Records,
    /// Encode every value as it is written, keeping none as it is ([`eager`](Self::eager)).
    eager: bool,
    /// The store an update last named and its index: an update names its store by a constant,
    /// found again by its address instead of comparing names.
    last_store: Option<(&'static str, usize)>,
    /// An update kept a value as it is since the last [`settle`](Self::settle), so the batch
    /// runner's settle and the commit's do not both walk every slot.
    unsettled: bool,
}

/// A store's changed keys (JSON) and their changes.
type Changes = KeyMap<Slot, SmallBytes>;

/// While a savepoint is open: what each changed key held before, newest last. Keys and values
/// are copied into one buffer, reused from savepoint to savepoint, so recording costs no
/// allocation.
#[derive(Debug, Default, Clone)]
struct UndoLog {
    open: Open,
    entries: Vec<Undo>,
    bytes: Vec<u8>,
    /// Where the outbox stood when the savepoint was taken.
    outbox: Mark,
}

/// A key's buffered change before a write after the savepoint.
#[derive(Debug, Clone)]
struct Undo {
    store: usize,
    key: Range<usize>,
    before: Before,
}

#[derive(Debug, Clone)]
enum Before {
    /// The batch had not touched the key.
    Untouched,
    /// The batch had deleted it.
    Deleted,
    /// The batch had set it to this JSON (a range of [`UndoLog::bytes`]).
    Value(Range<usize>),
}

/// Whether a savepoint is open, and what it can undo.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Open {
    /// No savepoint.
    #[default]
    No,
    /// A savepoint that marks where a record's emits start and undoes nothing.
    Emits,
    /// A savepoint that can undo state writes and emits.
    Full,
}

impl UndoLog {
    fn text(&mut self, s: &[u8]) -> Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(s);
        start..self.bytes.len()
    }

    /// Remembers what `key` of store `index` held before a write (if a savepoint is open).
    fn record(
        &mut self,
        (index, store): (usize, &str),
        key: &[u8],
        before: Option<&Slot>,
    ) -> Result<()> {
        if self.open != Open::Full {
            return Ok(());
        }
        let key = self.text(key);
        let before = match before {
            None => Before::Untouched,
            Some(slot) => {
                let start = self.bytes.len();
                match slot.write_json(store, &mut self.bytes) {
                    Ok(true) => Before::Value(start..self.bytes.len()),
                    Ok(false) => Before::Deleted,
                    Err(e) => {
                        self.bytes.truncate(key.start);
                        return Err(e);
                    }
                }
            }
        };
        self.entries.push(Undo {
            store: index,
            key,
            before,
        });
        Ok(())
    }

    fn reset(&mut self, open: Open, outbox: Mark) {
        self.entries.clear();
        self.bytes.clear();
        self.open = open;
        self.outbox = outbox;
    }
}

impl WriteSet {
    /// Buffers `key = value` in `store`.
    pub fn put<K: Serialize + ?Sized, V: Serialize + ?Sized>(
        &mut self,
        store: &str,
        key: &K,
        value: &V,
    ) -> Result<()> {
        with_json(store, value, |json| {
            with_key(store, key, |key| self.replace(store, key, Some(json)))
        })
    }

    /// Buffers the deletion of `key` from `store`.
    pub fn delete<K: Serialize + ?Sized>(&mut self, store: &str, key: &K) -> Result<()> {
        with_key(store, key, |key| self.replace(store, key, None))
    }

    /// Buffers an already encoded change: `key` and `value` are JSON (`None` deletes).
    pub fn put_encoded(&mut self, store: &str, key: &str, value: Option<&str>) -> Result<()> {
        self.replace(store, key, value.map(str::as_bytes))
    }

    /// What this batch wrote for `key`: `None` if untouched, `Some(None)` if deleted.
    pub fn lookup<K: Serialize + ?Sized, V: DeserializeOwned>(
        &self,
        store: &str,
        key: &K,
    ) -> Result<Option<Option<V>>> {
        with_key(store, key, |key| match self.lookup_slot(store, key) {
            None => Ok(None),
            Some(slot) => slot.decode(store).map(Some),
        })
    }

    /// Queues `record` for sending after the batch commits.
    pub fn emit(&mut self, record: OutboxRecord) {
        self.outbox.push(&record);
    }

    /// Queues a record for sending after the batch commits, written in place: to `topic`
    /// (`partition`; `None`: by key) with `key`, `value` and `timestamp`, its headers appended
    /// by `headers`. Nothing is allocated per record.
    pub fn emit_with(
        &mut self,
        (topic, partition): (&str, Option<i32>),
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: Option<i64>,
        headers: impl FnOnce(&mut HeaderWriter<'_>),
    ) {
        let parts = Parts {
            topic,
            partition,
            key,
            value,
            timestamp,
        };
        self.outbox.push_with(parts, headers);
    }

    /// Records queued since the open savepoint (all of them when none is open).
    pub fn emitted_since_savepoint(&self) -> usize {
        self.outbox.len() - self.savepoint_mark().map_or(0, |m| m.count())
    }

    /// The records queued since the open savepoint (all of them when none is open), in place.
    pub fn emits_since_savepoint(&self) -> Result<Vec<RecordView<'_>>> {
        self.outbox_since(&self.savepoint_mark().cloned().unwrap_or_default())
    }

    fn outbox_since(&self, mark: &Mark) -> Result<Vec<RecordView<'_>>> {
        (self.outbox.since(mark)).map_err(|reason| Error::Outbox { run: 0, reason })
    }

    fn savepoint_mark(&self) -> Option<&Mark> {
        (self.undo.open != Open::No).then_some(&self.undo.outbox)
    }

    /// Records queued by [`emit`](Self::emit), in order, owned.
    pub fn outbox(&self) -> Result<Vec<OutboxRecord>> {
        let all = self.outbox_since(&Mark::default())?;
        Ok(all.iter().map(RecordView::to_record).collect())
    }

    /// The queued records, as the outbox stores them.
    pub(crate) fn outbox_records(&self) -> &Records {
        &self.outbox
    }

    /// Drops the queued records, once a commit stored them.
    pub(crate) fn clear_outbox(&mut self) {
        self.outbox.clear();
    }

    /// Number of buffered key changes.
    pub fn len(&self) -> usize {
        self.stores.iter().map(|(_, m)| m.len()).sum()
    }

    /// True when the batch changed no state.
    pub fn is_empty(&self) -> bool {
        self.stores.iter().all(|(_, m)| m.is_empty()) && self.outbox.is_empty()
    }

    /// Drops every buffered change (a failed batch).
    pub fn clear(&mut self) {
        self.stores.clear();
        self.last_store = None;
        self.undo.reset(Open::No, Mark::default());
        self.outbox.clear();
    }

    /// Opens a savepoint: later changes can be undone with [`rollback`](Self::rollback)
    /// (the writes of one failed record) or kept with [`release`](Self::release).
    pub fn savepoint(&mut self) {
        self.undo.reset(Open::Full, self.outbox.mark());
    }

    /// Opens a savepoint that only marks where the next emits start (for
    /// [`emits_since_savepoint`](Self::emits_since_savepoint)) and remembers nothing to undo,
    /// for a batch that is run again from its start when a record fails. It must not be rolled
    /// back; [`release`](Self::release) closes it.
    pub fn mark_emits(&mut self) {
        self.undo.reset(Open::Emits, self.outbox.mark());
    }

    /// Keeps the changes made since the savepoint and closes it.
    pub fn release(&mut self) {
        self.undo.reset(Open::No, Mark::default());
    }

    /// Undoes the changes made since the savepoint and closes it.
    pub fn rollback(&mut self) {
        match self.undo.open {
            Open::No => return,
            Open::Emits => {
                debug_assert!(false, "a savepoint of `mark_emits` cannot be rolled back");
                return;
            }
            Open::Full => {}
        }
        self.outbox.truncate(&self.undo.outbox);
        let bytes = &self.undo.bytes;
        for Undo { store, key, before } in self.undo.entries.drain(..).rev() {
            let map = &mut self.stores[store].1;
            let key = &bytes[key];
            match before {
                Before::Untouched => {
                    map.remove(key);
                }
                Before::Deleted => {
                    map.insert(SmallBytes::new(key), Slot::Deleted);
                }
                Before::Value(json) => {
                    map.insert(
                        SmallBytes::new(key),
                        Slot::Json(SmallBytes::new(&bytes[json])),
                    );
                }
            }
        }
        self.undo.reset(Open::No, Mark::default());
    }

    /// Applies `f` to `key`'s value in this batch, or to `committed()` if the batch has not
    /// touched it, and buffers the result (`None` deletes).
    ///
    /// From the key's second update in the batch on, the result is kept as it is, not encoded
    /// (unless the write set is [`eager`](Self::eager) or a savepoint that can be rolled back is
    /// open): the next update takes it back without decoding, and the commit encodes it once.
    /// A key's first update is encoded at once: most keys updated once in a batch would only pay
    /// for an allocation.
    pub(crate) fn update_with<V: Serialize + DeserializeOwned + Send + 'static>(
        &mut self,
        store: &'static str,
        key: &[u8],
        committed: impl FnOnce() -> Result<Option<V>>,
        f: impl FnOnce(Option<V>) -> Option<V>,
    ) -> Result<()> {
        let keep = !self.eager && self.undo.open != Open::Full;
        let index = match self.last_store {
            // The same text at the same address: a `'static` str never changes.
            Some((last, index)) if std::ptr::eq(last, store) => index,
            _ => {
                let index = self.store_index(store);
                self.last_store = Some((store, index));
                index
            }
        };
        let map = &mut self.stores[index].1;
        let Some(slot) = map.get_mut(key) else {
            let slot = match f(committed()?) {
                Some(v) => with_json(store, &v, |json| Ok(Slot::Json(SmallBytes::new(json))))?,
                None => Slot::Deleted,
            };
            self.undo.record((index, store), key, None)?;
            map.insert(SmallBytes::new(key), slot);
            return Ok(());
        };
        if keep {
            if let Some(held) = slot.held_mut::<V>() {
                // Nothing to undo: no savepoint that rolls back is open.
                match f(held.take()) {
                    Some(value) => *held = Some(value),
                    None => *slot = Slot::Deleted,
                }
                return Ok(());
            }
        }
        let current = slot.decode(store)?;
        self.undo.record((index, store), key, Some(slot))?;
        match f(current) {
            None => *slot = Slot::Deleted,
            Some(value) if keep => {
                *slot = Slot::typed(value);
                self.unsettled = true;
            }
            Some(value) => with_json(store, &value, |json| {
                slot.overwrite(Some(json));
                Ok(())
            })?,
        }
        Ok(())
    }

    /// A write set that encodes every value as it is written (as one that rolls back does),
    /// so that a value that cannot be encoded fails the update that made it rather than the
    /// batch's commit.
    pub fn eager() -> Self {
        Self {
            eager: true,
            ..Self::default()
        }
    }

    /// Encodes the values that updates kept as they are, so that every buffered value is JSON.
    /// A commit does it first; a batch runner does it before, to tell a value that cannot be
    /// encoded from a failed commit.
    pub fn settle(&mut self) -> Result<()> {
        if !self.unsettled {
            return Ok(());
        }
        let mut buf = Vec::new();
        for (store, map) in &mut self.stores {
            for slot in map.values_mut() {
                slot.settle(store, &mut buf)?;
            }
        }
        self.unsettled = false;
        Ok(())
    }

    fn store_index(&mut self, store: &str) -> usize {
        match self.stores.iter().position(|(name, _)| name == store) {
            Some(i) => i,
            None => {
                self.stores.push((store.to_owned(), KeyMap::default()));
                self.stores.len() - 1
            }
        }
    }

    fn replace(&mut self, store: &str, key: &str, value: Option<&[u8]>) -> Result<()> {
        let index = self.store_index(store);
        let map = &mut self.stores[index].1;
        let key = key.as_bytes();
        match map.get_mut(key) {
            Some(slot) => {
                self.undo.record((index, store), key, Some(slot))?;
                slot.overwrite(value);
            }
            None => {
                self.undo.record((index, store), key, None)?;
                let slot = value.map_or(Slot::Deleted, |v| Slot::Json(SmallBytes::new(v)));
                map.insert(SmallBytes::new(key), slot);
            }
        }
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn snapshot(&self) -> Vec<(String, String, Option<String>)> {
        let mut v: Vec<_> = (self.stores.iter())
            .flat_map(|(s, m)| m.iter().map(move |(k, v)| (s, k, v)))
            .map(|(s, k, v)| {
                (
                    s.clone(),
                    k.as_str().to_owned(),
                    v.to_json(s).expect("json"),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// What this batch wrote for the JSON `key` (`None`: untouched).
    pub(crate) fn lookup_slot(&self, store: &str, key: &str) -> Option<&Slot> {
        self.stores
            .iter()
            .find(|(name, _)| name == store)
            .and_then(|(_, m)| m.get(key.as_bytes()))
    }

    /// Every change of one store as (key, change).
    pub(crate) fn iter_store<'a>(
        &'a self,
        store: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a Slot)> + 'a {
        self.stores
            .iter()
            .filter(move |(name, _)| name == store)
            .flat_map(|(_, m)| m.iter().map(|(k, v)| (k.as_str(), v)))
    }

    /// Every change as (store, key, value-or-deletion), once [`settle`](Self::settle)d.
    ///
    /// # Panics
    /// On a value an update kept as it is, when called before `settle`.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str, Option<&str>)> {
        self.stores.iter().flat_map(|(store, m)| {
            m.iter()
                .map(move |(k, v)| (store.as_str(), k.as_str(), v.settled_json()))
        })
    }
}

thread_local! {
    /// Where keys are encoded for lookups, so that finding a key allocates nothing.
    static KEY_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Where values are encoded before they are copied into place.
    static VALUE_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with `key` encoded as JSON (in a per-thread buffer).
pub(crate) fn with_key<K: Serialize + ?Sized, T>(
    store: &str,
    key: &K,
    f: impl FnOnce(&str) -> Result<T>,
) -> Result<T> {
    with_key_bytes(store, key, |json| f(key_text(store, json)?))
}

/// Runs `f` with `key` encoded as JSON (in a per-thread buffer), as bytes: a key found in the
/// write set is not checked for UTF-8 again (serde_json writes nothing else, and a key enters
/// the write set through [`key_text`] or as text).
pub(crate) fn with_key_bytes<K: Serialize + ?Sized, T>(
    store: &str,
    key: &K,
    f: impl FnOnce(&[u8]) -> Result<T>,
) -> Result<T> {
    encoded_in(&KEY_BUF, store, key, f)
}

/// A key's JSON as text.
pub(crate) fn key_text<'a>(store: &str, json: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(json).or_else(|_| unreachable_json(store))
}

/// Runs `f` with `value` encoded as JSON (in a per-thread buffer). The write set keeps values
/// as bytes, so they are not checked for UTF-8 (serde_json writes nothing else).
fn with_json<V: Serialize + ?Sized, T>(
    store: &str,
    value: &V,
    f: impl FnOnce(&[u8]) -> Result<T>,
) -> Result<T> {
    encoded_in(&VALUE_BUF, store, value, f)
}

fn encoded_in<V: Serialize + ?Sized, T>(
    buf: &'static std::thread::LocalKey<RefCell<Vec<u8>>>,
    store: &str,
    value: &V,
    f: impl FnOnce(&[u8]) -> Result<T>,
) -> Result<T> {
    buf.with(|buf| {
        // A nested call (a `Serialize` impl that reads state) finds the buffer taken and uses
        // a fresh one.
        let mut mine = buf
            .try_borrow_mut()
            .map(|mut b| std::mem::take(&mut *b))
            .unwrap_or_default();
        mine.clear();
        let result = codec(store, serde_json::to_writer(&mut mine, value)).and_then(|()| f(&mine));
        if let Ok(mut b) = buf.try_borrow_mut() {
            *b = mine;
        }
        result
    })
}

/// serde_json writes UTF-8 only; should that ever fail, it is a codec error, not a panic.
fn unreachable_json<T>(store: &str) -> Result<T> {
    codec(
        store,
        Err(serde::ser::Error::custom("JSON output is not UTF-8")),
    )
}

pub(crate) fn encode<T: Serialize + ?Sized>(store: &str, value: &T) -> Result<String> {
    codec(store, serde_json::to_string(value))
}

pub(crate) fn decode<T: DeserializeOwned>(store: &str, json: &str) -> Result<T> {
    decode_bytes(store, json.as_bytes())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::headers::{HeaderSink, Headers};

    fn record(value: &str) -> OutboxRecord {
        OutboxRecord {
            topic: "out".into(),
            partition: None,
            key: None,
            value: Some(value.as_bytes().to_vec()),
            headers: Headers::default(),
            timestamp: None,
        }
    }

    #[test]
    fn updates_find_their_store_by_name_whatever_the_names_address() {
        let mut ws = WriteSet::default();
        // The same name at another address, and another name, in turns.
        let again: &'static str = Box::leak(String::from("s").into_boxed_str());
        let add = |ws: &mut WriteSet, store: &'static str, key: &str| {
            let key = with_key(store, key, |k| Ok(k.to_owned())).expect("key");
            ws.update_with(
                store,
                key.as_bytes(),
                || Ok(None),
                |n: Option<u64>| Some(n.unwrap_or(0) + 1),
            )
            .expect("update");
        };
        for store in ["s", "t", again, "s", again, "t", "s"] {
            add(&mut ws, store, "k");
        }
        // A cleared write set forgets the store it named last.
        ws.clear();
        add(&mut ws, "s", "k");
        add(&mut ws, "t", "k");
        add(&mut ws, again, "k");
        ws.settle().expect("settle");
        let expected = [("s", "\"k\"", Some("2")), ("t", "\"k\"", Some("1"))];
        let expected: Vec<_> = (expected.iter())
            .map(|(s, k, v)| (s.to_string(), k.to_string(), v.map(str::to_owned)))
            .collect();
        assert_eq!(ws.snapshot(), expected);
    }

    #[test]
    fn rollback_restores_the_state_at_the_savepoint() {
        let mut ws = WriteSet::default();
        ws.put("s", "a", &1).expect("put");
        ws.put("s", "b", &2).expect("put");
        let before = ws.snapshot();
        ws.savepoint();
        ws.put("s", "a", &10).expect("put");
        ws.delete("s", "b").expect("delete");
        ws.put("s", "c", &3).expect("put");
        ws.put("t", "c", &3).expect("put");
        ws.put("s", "a", &11).expect("put");
        ws.rollback();
        assert_eq!(ws.snapshot(), before);
        ws.emit(record("kept"));
        ws.savepoint();
        ws.emit(record("undone"));
        ws.rollback();
        assert_eq!(ws.outbox().expect("outbox"), [record("kept")]);
        ws.savepoint();
        ws.put("s", "c", &3).expect("put");
        ws.emit(record("released"));
        ws.release();
        ws.rollback();
        assert_eq!(ws.outbox().expect("outbox").len(), 2);
        assert_eq!(
            ws.lookup::<_, i32>("s", "c").expect("lookup"),
            Some(Some(3))
        );
    }

    /// A change to the write set, on keys and values short enough to be kept in place and too
    /// long for it.
    #[derive(Debug, Clone)]
    enum Op {
        Put(usize, usize),
        Delete(usize),
        /// Appends to the value (or starts it); with `true`, deletes it instead.
        Update(usize, bool),
        /// Appends to the value, reading and writing it as another type than `Update` does.
        UpdateAsJson(usize),
        Savepoint,
        /// A savepoint that only marks the emits (never rolled back).
        MarkEmits,
        /// Encodes the values kept as they are, as a commit does.
        Settle,
        Release,
        Rollback,
        /// Emits to a topic (topics repeat), through `emit` or, with `true`, `emit_with`.
        Emit(usize, usize, bool),
    }

    const TOPICS: [&str; 3] = ["out", "other", ""];

    const KEYS: [&str; 4] = ["a", "b", "a key that is longer than thirty bytes", "c"];
    const VALUES: [&str; 3] = ["", "short", "a value that is longer than thirty bytes"];

    fn op() -> impl Strategy<Value = Op> {
        let key = || 0..KEYS.len();
        prop_oneof![
            3 => (key(), 0..VALUES.len()).prop_map(|(k, v)| Op::Put(k, v)),
            1 => key().prop_map(Op::Delete),
            4 => (key(), prop::bool::weighted(0.1)).prop_map(|(k, d)| Op::Update(k, d)),
            1 => key().prop_map(Op::UpdateAsJson),
            1 => Just(Op::Savepoint),
            1 => Just(Op::MarkEmits),
            1 => Just(Op::Settle),
            1 => Just(Op::Release),
            1 => Just(Op::Rollback),
            3 => (0..TOPICS.len(), 0..VALUES.len(), any::<bool>())
                .prop_map(|(t, v, with)| Op::Emit(t, v, with)),
        ]
    }

    proptest! {
        /// The write set holds what a plain map of the same changes holds (savepoints copying
        /// it), whatever the keys' and values' lengths and however they change, whether it
        /// keeps updated values as they are or encodes them at once.
        #[test]
        fn the_write_set_holds_what_a_plain_map_holds(
            ops in prop::collection::vec(op(), 1..80),
            eager in any::<bool>(),
        ) {
            let mut ws = if eager { WriteSet::eager() } else { WriteSet::default() };
            let mut model: BTreeMap<String, Option<String>> = BTreeMap::new();
            let mut saved = None;
            // The open savepoint can be rolled back (not one of `mark_emits`).
            let mut undoable = false;
            let mut emits: Vec<OutboxRecord> = Vec::new();
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        ws.put("s", KEYS[k], VALUES[v]).expect("put");
                        model.insert(KEYS[k].into(), Some(VALUES[v].into()));
                    }
                    Op::Delete(k) => {
                        ws.delete("s", KEYS[k]).expect("delete");
                        model.insert(KEYS[k].into(), None);
                    }
                    Op::Update(k, delete) => {
                        let key = with_key("s", KEYS[k], |key| Ok(key.to_owned())).expect("key");
                        ws.update_with("s", key.as_bytes(), || Ok(None), |v: Option<String>| {
                            (!delete).then(|| v.unwrap_or_default() + "more text")
                        })
                        .expect("update");
                        let entry = model.entry(KEYS[k].into()).or_insert(None);
                        *entry = (!delete).then(|| entry.take().unwrap_or_default() + "more text");
                    }
                    Op::UpdateAsJson(k) => {
                        let key = with_key("s", KEYS[k], |key| Ok(key.to_owned())).expect("key");
                        ws.update_with("s", key.as_bytes(), || Ok(None), |v: Option<serde_json::Value>| {
                            let text = v.as_ref().and_then(serde_json::Value::as_str);
                            Some(serde_json::Value::from(text.unwrap_or_default().to_owned() + "+"))
                        })
                        .expect("update");
                        let entry = model.entry(KEYS[k].into()).or_insert(None);
                        *entry = Some(entry.take().unwrap_or_default() + "+");
                    }
                    Op::Savepoint => {
                        ws.savepoint();
                        saved = Some((model.clone(), emits.len()));
                        undoable = true;
                    }
                    Op::MarkEmits => {
                        ws.mark_emits();
                        saved = Some((model.clone(), emits.len()));
                        undoable = false;
                    }
                    Op::Settle => ws.settle().expect("settle"),
                    Op::Release => {
                        ws.release();
                        saved = None;
                    }
                    Op::Rollback if saved.is_some() && !undoable => {}
                    Op::Rollback => {
                        ws.rollback();
                        if let Some((saved, emitted)) = saved.take() {
                            model = saved;
                            emits.truncate(emitted);
                        }
                    }
                    Op::Emit(t, v, with) => {
                        let record = OutboxRecord {
                            topic: TOPICS[t].into(),
                            partition: with.then_some(3),
                            key: Some(KEYS[t].into()),
                            value: Some(VALUES[v].into()),
                            headers: [(crate::wire::header::SOURCE_SEQ, VALUES[v]), ("x", "")]
                                .into_iter()
                                .collect(),
                            timestamp: (!with).then_some(7),
                        };
                        match with {
                            false => ws.emit(record.clone()),
                            true => ws.emit_with(
                                (&record.topic, record.partition),
                                record.key.as_deref(),
                                record.value.as_deref(),
                                record.timestamp,
                                |h| record.headers.iter().for_each(|(k, v)| h.push(k, v)),
                            ),
                        }
                        emits.push(record);
                    }
                }
                for (key, value) in &model {
                    let held = ws.lookup::<_, String>("s", key.as_str()).expect("lookup");
                    prop_assert_eq!(held.as_ref(), Some(value), "{}", key);
                }
                prop_assert_eq!(ws.len(), model.len());
                let encoded: BTreeMap<String, Option<String>> = ws
                    .iter_store("s")
                    .map(|(k, v)| Ok((k.to_owned(), v.to_json("s")?)))
                    .collect::<Result<_>>()
                    .expect("iter_store");
                let expected: BTreeMap<String, Option<String>> = model
                    .iter()
                    .map(|(k, v)| (encode("s", k).expect("k"), v.as_ref().map(|v| encode("s", v).expect("v"))))
                    .collect();
                prop_assert_eq!(&encoded, &expected);
                prop_assert_eq!(ws.outbox().expect("outbox"), emits.clone());
                let since = saved.as_ref().map_or(0, |(_, emitted)| *emitted);
                prop_assert_eq!(ws.emitted_since_savepoint(), emits.len() - since);
                let mine: Vec<OutboxRecord> = ws.emits_since_savepoint().expect("read")
                    .iter().map(RecordView::to_record).collect();
                prop_assert_eq!(&mine[..], &emits[since..]);
            }
            ws.settle().expect("settle");
            let settled: BTreeMap<String, Option<String>> = ws
                .iter()
                .map(|(_, k, v)| (k.to_owned(), v.map(str::to_owned)))
                .collect();
            let expected: BTreeMap<String, Option<String>> = model
                .iter()
                .map(|(k, v)| (encode("s", k).expect("k"), v.as_ref().map(|v| encode("s", v).expect("v"))))
                .collect();
            prop_assert_eq!(settled, expected);
        }
    }
}
