//! How a record is an SQS message, both ways (weir writes it, weir and its tools read it).
//!
//! - The body is the value. SQS bodies are text of a restricted character set and never empty,
//!   so a value that is not such text is sent in base64, and an empty or missing value as a
//!   space; attribute `weir.body` (`base64`, `empty`, `none`) says which.
//! - Attribute `key` (String, or Binary when not text) is the key. A message without it is
//!   keyed by its FIFO message group, if any.
//! - Attribute `weir.id` is weir's id of a record it sent (`broker::message_id`), the id
//!   redeliveries are recognised by; a message without it goes by its FIFO deduplication id,
//!   else by SQS's `MessageId`.
//! - Every other attribute is a header: String and Number values as their text, Binary as
//!   bytes, an empty value as `String.empty` and a missing one as `String.none`. A message
//!   allows 10 attributes, with names of letters, digits, `-`, `_` and `.`: headers beyond
//!   that (or with other names) all travel in one Binary attribute `weir.headers`.

use std::collections::HashMap;

use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};
use base64::Engine as _;

use crate::broker::queue_message::QueueMessage;

/// The key attribute.
pub(crate) const KEY: &str = "key";
/// weir's id of a message it sent.
pub(crate) const ID: &str = "weir.id";
/// How the body holds the value (absent: as it is).
const BODY: &str = "weir.body";
/// All headers in one attribute.
const HEADERS: &str = "weir.headers";
/// The most attributes SQS allows on a message.
const MAX_ATTRIBUTES: usize = 10;
/// The type of an empty header value, and of a missing one.
const EMPTY: &str = "String.empty";
const NONE: &str = "String.none";

/// A record as an SQS message's body and attributes.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) body: String,
    pub(crate) attributes: HashMap<String, MessageAttributeValue>,
}

/// Whether SQS takes `s` as a body or String value: its characters are #x9, #xA, #xD and
/// #x20 to #x10FFFF less the surrogates and #xFFFE, #xFFFF (and it is not empty).
fn sqs_text(bytes: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(bytes).ok()?;
    let allowed = |c: char| matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..);
    (!s.is_empty() && s.chars().all(allowed)).then_some(s)
}

/// Whether SQS takes `name` as an attribute name.
fn sqs_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && !lower.starts_with("aws.")
        && !lower.starts_with("amazon.")
        && ![KEY, ID, BODY, HEADERS].contains(&name)
}

fn attribute(
    data_type: &str,
    string: Option<&str>,
    binary: Option<&[u8]>,
) -> MessageAttributeValue {
    let mut value = MessageAttributeValue::builder().data_type(data_type);
    if let Some(s) = string {
        value = value.string_value(s);
    }
    if let Some(b) = binary {
        value = value.binary_value(Blob::new(b));
    }
    value
        .build()
        .unwrap_or_else(|_| unreachable!("the data type is set"))
}

/// `value` as an attribute.
fn value_attribute(value: Option<&[u8]>) -> MessageAttributeValue {
    match value {
        None => attribute(NONE, Some(" "), None),
        Some([]) => attribute(EMPTY, Some(" "), None),
        Some(v) => match sqs_text(v) {
            Some(s) => attribute("String", Some(s), None),
            None => attribute("Binary", None, Some(v)),
        },
    }
}

/// Headers as one value: per header its name's length (4 bytes, big-endian) and name, then
/// its value's length plus one (0: missing) and value.
fn pack(headers: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        match value {
            None => out.extend_from_slice(&0u32.to_be_bytes()),
            Some(v) => {
                out.extend_from_slice(&(v.len() as u32 + 1).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    out
}

/// [`pack`]'s headers back (`None`: not such a value).
fn unpack(mut bytes: &[u8]) -> Option<Vec<(String, Option<Vec<u8>>)>> {
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, rest) = (bytes.get(..n)?, bytes.get(n..)?);
        bytes = rest;
        Some(head)
    };
    let mut headers = Vec::new();
    loop {
        let Some(len) = take(4) else {
            return Some(headers);
        };
        let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
        let name = String::from_utf8(take(len)?.to_vec()).ok()?;
        let len = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
        let value = match len {
            0 => None,
            n => Some(take(n - 1)?.to_vec()),
        };
        headers.push((name, value));
    }
}

/// The message of a record: `key`, `value`, `headers`, and weir's id of it.
pub(crate) fn encode(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&str, Option<&[u8]>)],
    id: Option<&str>,
) -> Encoded {
    let mut attributes = HashMap::new();
    let body = match value.map(|v| (v, sqs_text(v))) {
        None => {
            attributes.insert(BODY.to_owned(), attribute("String", Some("none"), None));
            " ".to_owned()
        }
        Some(([], _)) => {
            attributes.insert(BODY.to_owned(), attribute("String", Some("empty"), None));
            " ".to_owned()
        }
        Some((_, Some(text))) => text.to_owned(),
        Some((v, None)) => {
            attributes.insert(BODY.to_owned(), attribute("String", Some("base64"), None));
            base64::engine::general_purpose::STANDARD.encode(v)
        }
    };
    if let Some(key) = key {
        attributes.insert(KEY.to_owned(), value_attribute(Some(key)));
    }
    if let Some(id) = id {
        attributes.insert(ID.to_owned(), attribute("String", Some(id), None));
    }
    let one_each = attributes.len() + headers.len() <= MAX_ATTRIBUTES
        && headers.iter().all(|(name, _)| sqs_name(name))
        && {
            let mut names: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
            names.sort_unstable();
            names.windows(2).all(|w| w[0] != w[1])
        };
    if one_each {
        for (name, value) in headers {
            attributes.insert((*name).to_owned(), value_attribute(*value));
        }
    } else {
        attributes.insert(
            HEADERS.to_owned(),
            attribute("Binary", None, Some(&pack(headers))),
        );
    }
    Encoded { body, attributes }
}

/// An attribute's value as bytes: String and Number values as their text, Binary as bytes;
/// `None` for a missing value (see the module's doc).
fn value_of(v: &MessageAttributeValue) -> Option<Vec<u8>> {
    match v.data_type() {
        NONE => None,
        EMPTY => Some(Vec::new()),
        t if t.starts_with("Binary") => Some(
            v.binary_value()
                .map(|b| b.as_ref().to_vec())
                .unwrap_or_default(),
        ),
        _ => Some(v.string_value().unwrap_or_default().as_bytes().to_vec()),
    }
}

/// A received message as a record, for tools (`weir::state::sqs::record_of`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsRecord {
    /// Attribute `key`, else the FIFO message group.
    pub key: Option<Vec<u8>>,
    /// The body, as weir wrote it (`weir.body`).
    pub value: Option<Vec<u8>>,
    /// Every header, `None` for a missing value.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// `SentTimestamp`, in ms since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    /// The id weir recognises it by: `weir.id`, else the FIFO deduplication id, else
    /// `MessageId`.
    pub id: Option<String>,
}

/// A received message as weir reads it.
pub fn record_of(m: &Message) -> SqsRecord {
    let (q, id) = decode(m);
    SqsRecord {
        key: q.key,
        value: q.payload,
        headers: q.headers,
        timestamp_ms: q.timestamp_ms,
        id: id.map(String::from),
    }
}

/// A record as weir sends it: the body and the message attributes (`id`: weir's id of it,
/// the `weir.id` attribute). For tools.
pub fn message_of(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&str, Option<&[u8]>)],
    id: Option<&str>,
) -> (String, HashMap<String, MessageAttributeValue>) {
    let e = encode(key, value, headers, id);
    (e.body, e.attributes)
}

/// A received message as a record, and the id its redeliveries are recognised by.
pub(crate) fn decode(m: &Message) -> (QueueMessage, Option<Box<str>>) {
    let attributes = m.message_attributes();
    let system = m.attributes();
    let system_value = |name: &MessageSystemAttributeName| system.and_then(|s| s.get(name));
    let attribute = |name: &str| attributes.and_then(|a| a.get(name));
    let body = m.body().unwrap_or_default();
    let payload = match attribute(BODY).and_then(|b| b.string_value()) {
        Some("none") => None,
        Some("empty") => Some(Vec::new()),
        Some("base64") => Some(
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .unwrap_or_else(|_| body.as_bytes().to_vec()),
        ),
        _ => Some(body.as_bytes().to_vec()),
    };
    let key = attribute(KEY).and_then(value_of).or_else(|| {
        system_value(&MessageSystemAttributeName::MessageGroupId).map(|g| g.as_bytes().to_vec())
    });
    let id = attribute(ID)
        .and_then(|i| i.string_value())
        .or_else(|| {
            system_value(&MessageSystemAttributeName::MessageDeduplicationId).map(String::as_str)
        })
        .or(m.message_id())
        .map(Box::from);
    let headers = match attribute(HEADERS).and_then(|h| h.binary_value()) {
        Some(packed) => unpack(packed.as_ref()).unwrap_or_default(),
        None => {
            let mut headers: Vec<(String, Option<Vec<u8>>)> = attributes
                .into_iter()
                .flatten()
                .filter(|(name, _)| ![KEY, ID, BODY, HEADERS].contains(&name.as_str()))
                .map(|(name, v)| (name.clone(), value_of(v)))
                .collect();
            headers.sort_by(|a, b| a.0.cmp(&b.0));
            headers
        }
    };
    let timestamp_ms =
        system_value(&MessageSystemAttributeName::SentTimestamp).and_then(|t| t.parse().ok());
    (
        QueueMessage {
            timestamp_ms,
            key,
            payload,
            headers,
        },
        id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(e: &Encoded) -> Message {
        Message::builder()
            .message_id("sqs-id")
            .body(&e.body)
            .set_message_attributes(Some(e.attributes.clone()))
            .attributes(MessageSystemAttributeName::SentTimestamp, "1700000000123")
            .build()
    }

    /// A record's key, value and headers.
    type Record<'a> = (
        Option<&'a [u8]>,
        Option<&'a [u8]>,
        Vec<(&'a str, Option<&'a [u8]>)>,
    );

    #[test]
    fn records_go_through_sqs_unchanged() {
        let cases: Vec<Record<'_>> = vec![
            (
                Some(b"k1"),
                Some(b"{\"n\":1}"),
                vec![("origin", Some(b"py"))],
            ),
            (None, None, vec![]),
            (
                Some(b"\xff\x00"),
                Some(b""),
                vec![("empty", Some(b"")), ("none", None)],
            ),
            (
                Some(b"k"),
                Some(b"\x00\x01binary\xff"),
                vec![("bin", Some(b"\x00\xff"))],
            ),
            // More headers than attributes allow, and names SQS refuses: packed.
            (
                Some(b"k"),
                Some(b"v"),
                (0..12)
                    .map(|_| ("weir.x", Some(&b"1"[..])))
                    .chain([("a b", None), ("AWS.x", Some(&b"2"[..]))])
                    .collect(),
            ),
        ];
        for (key, value, headers) in cases {
            let e = encode(key, value, &headers, Some("counts/lines/0/7"));
            assert!(e.attributes.len() <= MAX_ATTRIBUTES, "{e:?}");
            assert!(!e.body.is_empty());
            let (m, id) = decode(&received(&e));
            assert_eq!(m.key.as_deref(), key);
            assert_eq!(m.payload.as_deref(), value);
            let mut want: Vec<(String, Option<Vec<u8>>)> = headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.map(<[u8]>::to_vec)))
                .collect();
            if e.attributes.contains_key(HEADERS) {
                assert_eq!(m.headers, want);
            } else {
                want.sort_by(|a, b| a.0.cmp(&b.0));
                assert_eq!(m.headers, want);
            }
            assert_eq!(id.as_deref(), Some("counts/lines/0/7"));
            assert_eq!(m.timestamp_ms, Some(1_700_000_000_123));
        }
    }

    #[test]
    fn a_foreign_message_goes_by_its_group_and_ids() {
        let plain = Message::builder().message_id("m-1").body("hello").build();
        let (m, id) = decode(&plain);
        assert_eq!(
            (m.key, m.payload.as_deref(), id.as_deref()),
            (None, Some(&b"hello"[..]), Some("m-1"))
        );
        let fifo = Message::builder()
            .message_id("m-2")
            .body("x")
            .attributes(MessageSystemAttributeName::MessageGroupId, "alice")
            .attributes(
                MessageSystemAttributeName::MessageDeduplicationId,
                "order-7",
            )
            .build();
        let (m, id) = decode(&fifo);
        assert_eq!(
            (m.key.as_deref(), id.as_deref()),
            (Some(&b"alice"[..]), Some("order-7"))
        );
    }
}
