//! The state changes of one batch, buffered in memory until the batch commits.

use std::collections::HashMap;

use serde::{de::DeserializeOwned, Serialize};

use crate::{Error, Result};

/// State changes of one batch: per named store, key (JSON) to new value (JSON) or deletion.
///
/// Repeated writes to the same key coalesce, so a hot key costs one row write per batch.
#[derive(Debug, Default, Clone)]
pub struct WriteSet {
    /// Per store (a handler has few, so a list beats hashing the name), its changed keys.
    stores: Vec<(String, HashMap<String, Option<String>>)>,
    /// While a savepoint is open: what each changed key held before it, newest last.
    undo: Vec<Undo>,
    savepoint_open: bool,
    /// Records to produce once the batch commits, in order.
    outbox: Vec<OutboxRecord>,
    /// `outbox.len()` when the open savepoint was taken.
    outbox_at_savepoint: usize,
}

/// A record to produce once its batch is committed: a handler's output, or a changelog entry.
/// It is written to the partition's outbox table in the batch's transaction and deleted once
/// the broker acknowledged it, so it is sent at least once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct OutboxRecord {
    /// Destination topic.
    pub topic: String,
    /// Destination partition; `None` leaves it to the producer's partitioner (by key).
    pub partition: Option<i32>,
    /// The record's key.
    pub key: Option<Vec<u8>>,
    /// The record's value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// A key's buffered change before a write after the savepoint (store index, key, before):
/// `None` if it had none.
type Undo = (usize, String, Option<Option<String>>);

impl WriteSet {
    /// Buffers `key = value` in `store`.
    pub fn put<K: Serialize + ?Sized, V: Serialize + ?Sized>(
        &mut self,
        store: &str,
        key: &K,
        value: &V,
    ) -> Result<()> {
        let key = encode(store, key)?;
        let value = encode(store, value)?;
        self.put_encoded(store, key, Some(value));
        Ok(())
    }

    /// Buffers the deletion of `key` from `store`.
    pub fn delete<K: Serialize + ?Sized>(&mut self, store: &str, key: &K) -> Result<()> {
        let key = encode(store, key)?;
        self.put_encoded(store, key, None);
        Ok(())
    }

    /// What this batch wrote for `key`: `None` if untouched, `Some(None)` if deleted.
    pub fn lookup<K: Serialize + ?Sized, V: DeserializeOwned>(
        &self,
        store: &str,
        key: &K,
    ) -> Result<Option<Option<V>>> {
        let key = encode(store, key)?;
        match self.lookup_encoded(store, &key) {
            None => Ok(None),
            Some(None) => Ok(Some(None)),
            Some(Some(json)) => decode(store, json).map(|v| Some(Some(v))),
        }
    }

    /// Queues `record` for sending after the batch commits.
    pub fn emit(&mut self, record: OutboxRecord) {
        self.outbox.push(record);
    }

    /// Records queued by [`emit`](Self::emit), in order.
    pub fn outbox(&self) -> &[OutboxRecord] {
        &self.outbox
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
        self.undo.clear();
        self.savepoint_open = false;
        self.outbox.clear();
    }

    /// Opens a savepoint: later changes can be undone with [`rollback`](Self::rollback)
    /// (the writes of one failed record) or kept with [`release`](Self::release).
    pub fn savepoint(&mut self) {
        self.undo.clear();
        self.savepoint_open = true;
        self.outbox_at_savepoint = self.outbox.len();
    }

    /// Keeps the changes made since the savepoint and closes it.
    pub fn release(&mut self) {
        self.undo.clear();
        self.savepoint_open = false;
    }

    /// Undoes the changes made since the savepoint and closes it.
    pub fn rollback(&mut self) {
        if !std::mem::take(&mut self.savepoint_open) {
            return;
        }
        self.outbox.truncate(self.outbox_at_savepoint);
        while let Some((store, key, before)) = self.undo.pop() {
            let map = &mut self.stores[store].1;
            match before {
                Some(v) => map.insert(key, v),
                None => map.remove(&key),
            };
        }
    }

    pub(crate) fn put_encoded(&mut self, store: &str, key: String, value: Option<String>) {
        let index = match self.stores.iter().position(|(name, _)| name == store) {
            Some(i) => i,
            None => {
                self.stores.push((store.to_owned(), HashMap::new()));
                self.stores.len() - 1
            }
        };
        let map = &mut self.stores[index].1;
        match map.get_mut(&key) {
            Some(slot) => {
                let before = std::mem::replace(slot, value);
                if self.savepoint_open {
                    self.undo.push((index, key, Some(before)));
                }
            }
            None if self.savepoint_open => {
                map.insert(key.clone(), value);
                self.undo.push((index, key, None));
            }
            None => {
                map.insert(key, value);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn snapshot(&self) -> Vec<(String, String, Option<String>)> {
        let mut v: Vec<_> = self
            .iter()
            .map(|(s, k, v)| (s.to_owned(), k.to_owned(), v.map(str::to_owned)))
            .collect();
        v.sort();
        v
    }

    pub(crate) fn lookup_encoded(&self, store: &str, key: &str) -> Option<Option<&str>> {
        self.stores
            .iter()
            .find(|(name, _)| name == store)
            .and_then(|(_, m)| m.get(key))
            .map(Option::as_deref)
    }

    /// Every change as (store, key, value-or-deletion).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str, Option<&str>)> {
        self.stores.iter().flat_map(|(store, m)| {
            m.iter()
                .map(move |(k, v)| (store.as_str(), k.as_str(), v.as_deref()))
        })
    }
}

pub(crate) fn encode<T: Serialize + ?Sized>(store: &str, value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|source| Error::Codec {
        store: store.to_owned(),
        source,
    })
}

pub(crate) fn decode<T: DeserializeOwned>(store: &str, json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|source| Error::Codec {
        store: store.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(value: &str) -> OutboxRecord {
        OutboxRecord {
            topic: "out".into(),
            partition: None,
            key: None,
            value: Some(value.as_bytes().to_vec()),
            headers: Vec::new(),
        }
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
        assert_eq!(ws.outbox(), &[record("kept")]);
        ws.savepoint();
        ws.put("s", "c", &3).expect("put");
        ws.emit(record("released"));
        ws.release();
        ws.rollback();
        assert_eq!(ws.outbox().len(), 2);
        assert_eq!(
            ws.lookup::<_, i32>("s", "c").expect("lookup"),
            Some(Some(3))
        );
    }
}
