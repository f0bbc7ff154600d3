//! What a batch holds for one key: a deletion, a value's JSON, or a value an update made, kept
//! as it is until the batch commits.

use std::any::Any;
use std::fmt;

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};
use crate::small_bytes::SmallBytes;

/// A key's change in a batch.
pub(crate) enum Slot {
    /// The batch deleted the key.
    Deleted,
    /// The key's new value, as JSON.
    Json(SmallBytes),
    /// The key's new value as an update left it, encoded once when the batch commits
    /// ([`settle`](Self::settle)) or when something reads its JSON: a key updated many times
    /// in a batch is decoded once and encoded once, not at every update.
    Typed(Box<dyn Typed>),
}

/// A value of some type, kept as that type.
pub(crate) trait Typed: Send {
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn encode(&self, out: &mut Vec<u8>) -> serde_json::Result<()>;
}

/// The value, in an `Option` so that an update takes it out and puts its result back.
struct Held<V>(Option<V>);

impl<V: Serialize + Send + 'static> Typed for Held<V> {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn encode(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        match &self.0 {
            Some(value) => serde_json::to_writer(out, value),
            // Only while an update's function runs; a panic there fails the whole batch.
            None => Err(serde::ser::Error::custom(
                "the value was taken by an update that did not finish",
            )),
        }
    }
}

impl Slot {
    /// The slot of a value kept as it is.
    pub(crate) fn typed<V: Serialize + Send + 'static>(value: V) -> Self {
        Self::Typed(Box::new(Held(Some(value))))
    }

    /// The value, if the slot holds one of type `V` as it is, to be taken and put back.
    pub(crate) fn held_mut<V: 'static>(&mut self) -> Option<&mut Option<V>> {
        match self {
            Self::Typed(held) => held
                .as_any_mut()
                .downcast_mut::<Held<V>>()
                .map(|h| &mut h.0),
            _ => None,
        }
    }

    /// The value as a `V` (`None`: deleted).
    pub(crate) fn decode<V: DeserializeOwned>(&self, store: &str) -> Result<Option<V>> {
        match self {
            Self::Deleted => Ok(None),
            Self::Json(json) => decode_bytes(store, json.as_bytes()).map(Some),
            Self::Typed(_) => {
                let mut json = Vec::new();
                self.write_json(store, &mut json)?;
                decode_bytes(store, &json).map(Some)
            }
        }
    }

    /// Appends the value's JSON to `out`; false (nothing appended) when deleted.
    pub(crate) fn write_json(&self, store: &str, out: &mut Vec<u8>) -> Result<bool> {
        match self {
            Self::Deleted => Ok(false),
            Self::Json(json) => {
                out.extend_from_slice(json.as_bytes());
                Ok(true)
            }
            Self::Typed(held) => codec(store, held.encode(out)).map(|()| true),
        }
    }

    /// The value's JSON (`None`: deleted), encoding a typed value.
    pub(crate) fn to_json(&self, store: &str) -> Result<Option<String>> {
        match self {
            Self::Deleted => Ok(None),
            Self::Json(json) => Ok(Some(json.as_str().to_owned())),
            Self::Typed(_) => {
                let mut json = Vec::new();
                self.write_json(store, &mut json)?;
                Ok(Some(String::from_utf8(json).unwrap_or_default()))
            }
        }
    }

    /// Encodes a typed value in place, so that [`settled_json`](Self::settled_json) can read it.
    pub(crate) fn settle(&mut self, store: &str, buf: &mut Vec<u8>) -> Result<()> {
        if let Self::Typed(held) = self {
            buf.clear();
            codec(store, held.encode(buf))?;
            *self = Self::Json(SmallBytes::new(buf));
        }
        Ok(())
    }

    /// The JSON of a settled slot (`None`: deleted).
    ///
    /// # Panics
    /// On a typed value: the write set settles every slot before it hands them out this way.
    pub(crate) fn settled_json(&self) -> Option<&str> {
        match self {
            Self::Deleted => None,
            Self::Json(json) => Some(json.as_str()),
            Self::Typed(_) => unreachable!("a batch's values are encoded before they are read"),
        }
    }

    /// Holds `json` from now on (`None`: deleted), in the memory it has where it fits.
    pub(crate) fn overwrite(&mut self, json: Option<&[u8]>) {
        match (self, json) {
            (Self::Json(old), Some(json)) => old.set(json),
            (slot, json) => *slot = json.map_or(Self::Deleted, |j| Self::Json(SmallBytes::new(j))),
        }
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Deleted => f.write_str("Deleted"),
            Self::Json(json) => json.fmt(f),
            Self::Typed(_) => f.write_str("Typed(..)"),
        }
    }
}

/// `result`, its error as the store's codec error.
pub(crate) fn codec<T>(store: &str, result: serde_json::Result<T>) -> Result<T> {
    result.map_err(|source| Error::Codec {
        store: store.to_owned(),
        source,
    })
}

pub(crate) fn decode_bytes<T: DeserializeOwned>(store: &str, json: &[u8]) -> Result<T> {
    codec(store, serde_json::from_slice(json))
}
