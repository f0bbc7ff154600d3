//! Codecs: how a record's payload bytes become the value a handler sees.

use std::fmt;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;

/// A payload that could not be decoded. The record's raw bytes stay with the runtime, which
/// reports them with this error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(String);

impl DecodeError {
    /// A decode error with the given message.
    pub fn new(message: impl fmt::Display) -> Self {
        Self(message.to_string())
    }
}

/// A record whose key or value its codec could not decode, with the raw bytes. It is the
/// error (`source`) of [`Error::Record`](crate::Error::Record) for such a record; downcast to
/// it to inspect the bytes.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot decode the record's {part} ({} bytes): {error}", .raw.as_ref().map_or(0, Vec::len))]
pub struct UndecodableRecord {
    /// `"key"`, `"value"` or `"event time"` (outside the range taken as real).
    pub part: &'static str,
    /// The bytes that did not decode (`None`: the record had none).
    pub raw: Option<Vec<u8>>,
    /// What the codec said.
    pub error: DecodeError,
}

/// Turns a record's payload into a typed value.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a weir codec",
    note = "use one of weir's codecs, e.g. `Json<{Self}>`, `Utf8` or `Raw`, or implement `weir::Codec`"
)]
pub trait Codec: Send + Sync + 'static {
    /// The decoded value.
    type Value: Send + Sync + 'static;

    /// Decodes a payload; `None` is a record without payload (a tombstone).
    fn decode(payload: Option<&[u8]>) -> Result<Self::Value, DecodeError>;
}

/// JSON payloads decoded with serde into `T`.
pub struct Json<T>(PhantomData<fn() -> T>);

impl<T> fmt::Debug for Json<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Json<{}>", std::any::type_name::<T>())
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> Codec for Json<T> {
    type Value = T;

    fn decode(payload: Option<&[u8]>) -> Result<T, DecodeError> {
        let bytes = payload.ok_or_else(|| DecodeError::new("record has no payload"))?;
        serde_json::from_slice(bytes).map_err(|e| DecodeError::new(format!("invalid JSON: {e}")))
    }
}

/// UTF-8 text payloads.
#[derive(Debug)]
pub struct Utf8;

impl Codec for Utf8 {
    type Value = String;

    fn decode(payload: Option<&[u8]>) -> Result<String, DecodeError> {
        let bytes = payload.ok_or_else(|| DecodeError::new("record has no payload"))?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| DecodeError::new(format!("invalid UTF-8: {e}")))
    }
}

/// Raw bytes, unchanged; a tombstone is an empty vector.
#[derive(Debug)]
pub struct Raw;

impl Codec for Raw {
    type Value = Vec<u8>;

    fn decode(payload: Option<&[u8]>) -> Result<Vec<u8>, DecodeError> {
        Ok(payload.map(<[u8]>::to_vec).unwrap_or_default())
    }
}

/// JSON envelopes: `{"schema_version": N, "trace_id": ..., "published_at": ..., "payload": T}`.
///
/// `V` is the newest schema version the handler reads; a record with a newer `schema_version`
/// is rejected with an error instead of being mis-read.
pub struct Envelope<T, const V: u32 = 1>(PhantomData<fn() -> T>);

impl<T, const V: u32> fmt::Debug for Envelope<T, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Envelope<{}, {V}>", std::any::type_name::<T>())
    }
}

/// A decoded [`Envelope`]: the payload with the envelope's fields.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct Enveloped<T> {
    /// The payload's schema version.
    pub schema_version: u32,
    /// Trace id of the request that produced the record, if any.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// When the producer published the record (as the producer wrote it, e.g. RFC 3339).
    #[serde(default)]
    pub published_at: Option<String>,
    /// The payload.
    pub payload: T,
}

impl<T: DeserializeOwned + Send + Sync + 'static, const V: u32> Codec for Envelope<T, V> {
    type Value = Enveloped<T>;

    fn decode(payload: Option<&[u8]>) -> Result<Enveloped<T>, DecodeError> {
        #[derive(serde::Deserialize)]
        struct Version {
            schema_version: u32,
        }
        let bytes = payload.ok_or_else(|| DecodeError::new("record has no payload"))?;
        let version: Version = serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::new(format!("invalid envelope: {e}")))?;
        if version.schema_version > V {
            return Err(DecodeError::new(format!(
                "envelope schema_version {} is newer than {V}, the newest this handler reads",
                version.schema_version
            )));
        }
        serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::new(format!("invalid envelope payload: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_fields_and_newer_versions() {
        let ok = br#"{"schema_version":2,"trace_id":"t1","published_at":"2026-11-25T10:00:00Z","payload":5}"#;
        let e = Envelope::<u32, 2>::decode(Some(ok)).expect("valid");
        assert_eq!(
            (e.schema_version, e.trace_id.as_deref(), e.payload),
            (2, Some("t1"), 5)
        );
        let err = Envelope::<u32, 1>::decode(Some(ok)).expect_err("too new");
        assert!(
            err.to_string().contains("schema_version 2 is newer than 1"),
            "{err}"
        );
        let err = Envelope::<u32>::decode(Some(br#"{"payload":5}"#)).expect_err("no version");
        assert!(err.to_string().contains("invalid envelope"), "{err}");
    }

    #[test]
    fn json_errors_are_values_not_panics() {
        let err = Json::<u32>::decode(Some(b"{not json")).expect_err("invalid");
        assert!(err.to_string().contains("invalid JSON"), "{err}");
        let err = Json::<u32>::decode(None).expect_err("tombstone");
        assert!(err.to_string().contains("no payload"), "{err}");
        assert_eq!(Json::<u32>::decode(Some(b"7")).ok(), Some(7));
    }

    #[test]
    fn utf8_and_raw() {
        assert!(Utf8::decode(Some(&[0xff, 0xfe])).is_err());
        assert_eq!(Utf8::decode(Some(b"hi")).ok().as_deref(), Some("hi"));
        assert_eq!(Raw::decode(None).ok(), Some(vec![]));
    }
}
