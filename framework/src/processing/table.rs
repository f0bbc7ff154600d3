//! Tables: the latest value per key of another topic, read inside `process`.
//!
//! A table is co-partitioned with the handler's input (same partition count, same keys): its
//! partition `p` lives in the input partition `p`'s SQLite file, as the store
//! [`TableDef::NAME`], and is kept there outside the batches and the changelog, with its
//! position in the store [`POSITIONS`]. A global table is held in full in memory by every
//! worker. Both are read with [`Ctx::table`](crate::Ctx::table).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::RwLock;

use serde::Serialize;
use serde::de::DeserializeOwned;
use weir_state::{PartitionStore, WriteSet};

use crate::error::Result;

/// The store holding each table partition's next offset: key `[table topic, partition]`.
#[cfg(feature = "kafka")]
pub(crate) const POSITIONS: &str = "__weir_tables";

/// A table a handler reads: the newest value of each key of `TOPIC`. Keys are the records'
/// keys as UTF-8 text; values are JSON, decoded into `Value`; a record without a value (a
/// tombstone) deletes its key. Usually declared with `#[handler(table(...))]` or
/// `#[handler(global_table(...))]`.
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Customer { country: String }
/// struct Customers;
/// impl weir::tables::TableDef for Customers {
///     const NAME: &'static str = "customers";
///     const TOPIC: &'static str = "customers";
///     const GLOBAL: bool = false;
///     type Value = Customer;
/// }
/// ```
pub trait TableDef {
    /// The store the table is kept in.
    const NAME: &'static str;
    /// The topic it follows.
    const TOPIC: &'static str;
    /// Replicated in full to every worker (`true`), or co-partitioned with the input.
    const GLOBAL: bool;
    /// The value type.
    type Value: Serialize + DeserializeOwned;
}

/// A table declared with a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableInfo {
    /// Its store's name.
    pub name: &'static str,
    /// Its topic.
    pub topic: &'static str,
    /// Replicated to every worker rather than co-partitioned.
    pub global: bool,
}

/// Why a table record is skipped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unusable {
    #[error("it has no key")]
    NoKey,
    #[error("its key is not UTF-8 text")]
    KeyNotText,
    #[error("its value is not JSON: {0}")]
    NotJson(serde_json::Error),
}

/// A table record as a state entry `(store, JSON key, JSON value or None: deleted)`; the one
/// place that says how table records are stored.
pub(crate) fn entry(
    store: &str,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<(String, String, Option<String>), Unusable> {
    let key = std::str::from_utf8(key.ok_or(Unusable::NoKey)?).map_err(|_| Unusable::KeyNotText)?;
    let value = match value {
        None => None,
        Some(v) => {
            serde_json::from_slice::<serde::de::IgnoredAny>(v).map_err(Unusable::NotJson)?;
            // Valid JSON is valid UTF-8.
            Some(String::from_utf8_lossy(v).into_owned())
        }
    };
    Ok((store.to_owned(), json_key(key), value))
}

/// The position entry of `topic`'s `partition`: its next offset.
#[cfg(feature = "kafka")]
pub(crate) fn position_entry(
    topic: &str,
    partition: i32,
    next: i64,
) -> (String, String, Option<String>) {
    (
        POSITIONS.to_owned(),
        position_key(topic, partition),
        Some(next.to_string()),
    )
}

/// The stored next offset of `topic`'s `partition`, if any of it was read.
#[cfg(feature = "kafka")]
pub(crate) fn position(store: &PartitionStore, topic: &str, partition: i32) -> Result<Option<i64>> {
    Ok(store.get(POSITIONS, &(topic, partition))?)
}

#[cfg(feature = "kafka")]
fn position_key(topic: &str, partition: i32) -> String {
    serde_json::json!([topic, partition]).to_string()
}

fn json_key(key: &str) -> String {
    serde_json::Value::String(key.to_owned()).to_string()
}

/// The global tables of a worker, in memory: table name → key → JSON value.
#[derive(Debug, Default)]
pub(crate) struct GlobalTables {
    tables: RwLock<HashMap<String, HashMap<String, String>>>,
}

impl GlobalTables {
    /// Sets (or with `None` deletes) `key` of table `name`.
    pub(crate) fn apply(&self, name: &str, key: String, value: Option<String>) {
        let mut tables = self
            .tables
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let table = tables.entry(name.to_owned()).or_default();
        match value {
            Some(v) => table.insert(key, v),
            None => table.remove(&key),
        };
    }

    fn get(&self, name: &str, key: &str) -> Option<String> {
        self.tables
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)?
            .get(key)
            .cloned()
    }

    /// Keys in table `name`.
    #[cfg(feature = "kafka")]
    pub(crate) fn len(&self, name: &str) -> usize {
        self.tables
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .map_or(0, HashMap::len)
    }
}

/// A table, read inside `process` (see [`Ctx::table`](crate::Ctx::table)).
#[derive(Debug)]
pub struct Table<'c, T> {
    store: &'c PartitionStore,
    writes: &'c WriteSet,
    globals: &'c GlobalTables,
    table: PhantomData<fn() -> T>,
}

impl<'c, T: TableDef> Table<'c, T> {
    pub(crate) fn new(
        store: &'c PartitionStore,
        writes: &'c WriteSet,
        globals: &'c GlobalTables,
    ) -> Self {
        Self {
            store,
            writes,
            globals,
            table: PhantomData,
        }
    }

    /// The table's current value for `key` (the record key of the table's topic), or `None`
    /// when the table has no such key (never had, or a tombstone deleted it).
    pub fn get(&self, key: &str) -> Result<Option<T::Value>> {
        if T::GLOBAL {
            let Some(json) = self.globals.get(T::NAME, &json_key(key)) else {
                return Ok(None);
            };
            return serde_json::from_str(&json).map(Some).map_err(|e| {
                crate::error::Error::State(weir_state::Error::Codec {
                    store: T::NAME.to_owned(),
                    source: e,
                })
            });
        }
        Ok(self.store.get_through(self.writes, T::NAME, key)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_records_become_entries_keyed_by_their_text() {
        let e = entry("customers", Some(b"c1"), Some(br#"{"country":"FR"}"#)).expect("entry");
        assert_eq!(
            e,
            (
                "customers".into(),
                "\"c1\"".into(),
                Some(r#"{"country":"FR"}"#.into())
            )
        );
        assert_eq!(entry("t", Some(b"c1"), None).expect("entry").2, None);
        assert!(matches!(entry("t", None, Some(b"1")), Err(Unusable::NoKey)));
        assert!(matches!(
            entry("t", Some(&[0xff]), Some(b"1")),
            Err(Unusable::KeyNotText)
        ));
        assert!(matches!(
            entry("t", Some(b"k"), Some(b"{nope")),
            Err(Unusable::NotJson(_))
        ));
        // A key with quotes is stored as the JSON string `get` looks up.
        let (_, key, _) = entry("t", Some(br#"a"b"#), Some(b"1")).expect("entry");
        assert_eq!(key, serde_json::to_string(r#"a"b"#).expect("entry"));
    }
}
