//! The per-record context: typed access to the partition's state.

use std::marker::PhantomData;

use serde::{de::DeserializeOwned, Serialize};
use weir_state::wire::header;
use weir_state::{OutboxRecord, PartitionStore, WriteSet};

use crate::inbound::Inbound;
use crate::Result;

/// What a handler can do besides reading its record: read and write keyed state, and emit
/// records to other topics.
///
/// Reads see the writes of earlier records of the same batch; writes become durable when the
/// batch commits, together with its offset. Emitted records are written to the partition's
/// outbox in that same transaction and produced after it.
#[derive(Debug)]
pub struct Ctx<'a> {
    store: &'a PartitionStore,
    writes: &'a mut WriteSet,
    source: &'a Inbound,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        store: &'a PartitionStore,
        writes: &'a mut WriteSet,
        source: &'a Inbound,
    ) -> Self {
        Self {
            store,
            writes,
            source,
        }
    }

    /// Produces a record to `topic` (partitioned by key) once this record's batch commits.
    ///
    /// Delivery is at least once: a crash after the commit and before the broker's
    /// acknowledgement sends it again, and so does reprocessing after a failure elsewhere in
    /// the batch. Each emitted record carries the headers `weir.source.topic`,
    /// `weir.source.partition` and `weir.source.offset` of the record it came from, by which a
    /// consumer can drop duplicates. If the record's processing fails, nothing it emitted is
    /// sent.
    pub fn emit(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, &[u8])],
    ) {
        let mut all: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
            .collect();
        all.extend([
            (
                header::SOURCE_TOPIC.to_owned(),
                self.source.topic().as_bytes().to_vec(),
            ),
            (
                header::SOURCE_PARTITION.to_owned(),
                self.source.partition().to_string().into_bytes(),
            ),
            (
                header::SOURCE_OFFSET.to_owned(),
                self.source.offset().to_string().into_bytes(),
            ),
        ]);
        self.writes.emit(OutboxRecord {
            topic: topic.to_owned(),
            partition: None,
            key: key.map(<[u8]>::to_vec),
            value: Some(value.to_vec()),
            headers: all,
        });
    }

    /// [`emit`](Self::emit) with the value serialized as JSON.
    pub fn emit_json<V: Serialize + ?Sized>(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: &V,
    ) -> Result<()> {
        let json = serde_json::to_vec(value).map_err(|e| crate::Error::Emit {
            topic: topic.to_owned(),
            reason: e.to_string(),
        })?;
        self.emit(topic, key, &json, &[]);
        Ok(())
    }

    /// The named keyed state store with keys `K` and values `V` (both serde, stored as JSON).
    pub fn state<K, V>(&mut self, name: &'static str) -> State<'_, K, V>
    where
        K: Serialize + ?Sized,
        V: Serialize + DeserializeOwned,
    {
        State {
            name,
            store: self.store,
            writes: self.writes,
            types: PhantomData,
        }
    }

    /// The store declared by `S`, with its key and value types checked at compile time.
    pub fn store<S: StoreDef>(&mut self) -> State<'_, S::Key, S::Value> {
        self.state(S::NAME)
    }
}

/// A named state store with fixed key and value types.
///
/// ```
/// struct Totals;
/// impl weir::StoreDef for Totals {
///     const NAME: &'static str = "totals";
///     type Key = str;
///     type Value = u64;
/// }
/// ```
pub trait StoreDef {
    /// The store's name (its rows carry it in the `store` column).
    const NAME: &'static str;
    /// The key type.
    type Key: Serialize + ?Sized;
    /// The value type.
    type Value: Serialize + DeserializeOwned;
}

/// A typed view of one named store for the current batch.
#[derive(Debug)]
pub struct State<'c, K: ?Sized, V> {
    name: &'static str,
    store: &'c PartitionStore,
    writes: &'c mut WriteSet,
    types: PhantomData<fn(&K) -> V>,
}

impl<K: Serialize + ?Sized, V: Serialize + DeserializeOwned> State<'_, K, V> {
    /// The current value of `key`, including this batch's earlier writes.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        Ok(self.store.get_through(self.writes, self.name, key)?)
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: &K, value: &V) -> Result<()> {
        Ok(self.writes.put(self.name, key, value)?)
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: &K) -> Result<()> {
        Ok(self.writes.delete(self.name, key)?)
    }

    /// Applies `f` to the current value (or `None`) and stores its result; `None` deletes.
    pub fn update(&mut self, key: &K, f: impl FnOnce(Option<V>) -> Option<V>) -> Result<()> {
        Ok(self.store.update_through(self.writes, self.name, key, f)?)
    }
}
