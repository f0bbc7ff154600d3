//! A record's headers in one buffer, without a name and a value allocated per header: an
//! owned outbox record's (`OutboxRecord`, the test kit's), a changelog entry's.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Headers, in order, each as the length of its name (u32, little endian), the name, the
/// length of its value and the value: as the outbox stored them up to schema version 6 (an
/// outbox run of version 7 has a shorter form of its own: `outbox_run.rs`).
///
/// ```
/// let mut h = weir_state::Headers::default();
/// h.push("origin", b"shop");
/// h.push("weir.source.offset", b"41");
/// assert_eq!(h.iter().last(), Some(("weir.source.offset", &b"41"[..])));
/// assert_eq!(weir_state::Headers::from_bytes(h.as_bytes().to_vec()), Ok(h));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// Length-prefixed parts, names valid UTF-8 (checked by [`Headers::from_bytes`]).
    buf: Vec<u8>,
    /// How many headers `buf` holds.
    len: usize,
}

/// Where headers are appended: [`Headers`], or an outbox record being written in place.
pub trait HeaderSink {
    /// Appends header `name` = `value`.
    fn push(&mut self, name: &str, value: &[u8]);
}

impl HeaderSink for Headers {
    fn push(&mut self, name: &str, value: &[u8]) {
        Headers::push(self, name, value);
    }
}

impl Headers {
    /// Room for headers of `bytes` names and values in all, `n` of them.
    pub fn with_capacity(n: usize, bytes: usize) -> Self {
        Self {
            buf: Vec::with_capacity(bytes + 8 * n),
            len: 0,
        }
    }

    /// Appends header `name` = `value`.
    ///
    /// # Panics
    /// If the name or the value is 4 GiB or longer (no broker takes such a record).
    pub fn push(&mut self, name: &str, value: &[u8]) {
        self.part(name.as_bytes());
        self.part(value);
        self.len += 1;
    }

    fn part(&mut self, part: &[u8]) {
        if !push_part(&mut self.buf, part) {
            panic!("a header part of {} bytes (4 GiB at most)", part.len());
        }
    }

    /// The headers, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        let mut rest = &self.buf[..];
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            // Both parts are there and the name is UTF-8: `push` and `from_bytes` saw to it.
            let name = take_part(&mut rest)?;
            let value = take_part(&mut rest)?;
            Some((std::str::from_utf8(name).ok()?, value))
        })
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes of all names and values.
    pub fn size(&self) -> usize {
        self.buf.len() - 8 * self.len
    }

    /// The stored form.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Reads the stored form back, checking it.
    pub fn from_bytes(buf: Vec<u8>) -> Result<Self, String> {
        let mut rest = &buf[..];
        let mut len = 0;
        let short = || "headers cut short".to_owned();
        while !rest.is_empty() {
            let name = take_part(&mut rest).ok_or_else(short)?;
            std::str::from_utf8(name).map_err(|e| format!("a header name: {e}"))?;
            take_part(&mut rest).ok_or_else(short)?;
            len += 1;
        }
        Ok(Self { buf, len })
    }
}

/// Appends `part` to `buf` as its length (u32, little endian) and its bytes: the form of a
/// header's name and value, and of the parts of an outbox run of form 1. False (and `buf` as
/// it was) if it is 4 GiB or longer.
pub(crate) fn push_part(buf: &mut Vec<u8>, part: &[u8]) -> bool {
    let Ok(len) = u32::try_from(part.len()) else {
        return false;
    };
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(part);
    true
}

/// The next part [`push_part`] wrote in `b`, which moves past it; `None` if `b` is cut short.
pub(crate) fn take_part<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, rest) = b.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return None;
    }
    let (part, rest) = rest.split_at(len);
    *b = rest;
    Some(part)
}

impl<N: AsRef<str>, V: AsRef<[u8]>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut h = Self::default();
        h.extend(iter);
        h
    }
}

impl<N: AsRef<str>, V: AsRef<[u8]>> Extend<(N, V)> for Headers {
    fn extend<I: IntoIterator<Item = (N, V)>>(&mut self, iter: I) {
        for (n, v) in iter {
            self.push(n.as_ref(), v.as_ref());
        }
    }
}

/// As a list of `(name, value bytes)` pairs.
impl Serialize for Headers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pairs = Vec::<(String, Vec<u8>)>::deserialize(d)?;
        Ok(pairs.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_read_back_as_written() {
        let mut h: Headers = [("a", &b""[..]), ("", b"x")].into_iter().collect();
        h.push("n", b"12345");
        let read: Vec<_> = h.iter().collect();
        assert_eq!(read, [("a", &b""[..]), ("", b"x"), ("n", b"12345")]);
        assert_eq!((h.len(), h.size()), (3, 8));
        assert_eq!(Headers::from_bytes(h.as_bytes().to_vec()), Ok(h.clone()));
        let json = serde_json::to_string(&h).expect("json");
        assert_eq!(serde_json::from_str::<Headers>(&json).expect("back"), h);
    }

    #[test]
    fn broken_stored_headers_are_refused() {
        assert!(Headers::from_bytes(vec![5, 0, 0, 0, b'a']).is_err());
        assert!(Headers::from_bytes(vec![1, 0, 0, 0, 0xff, 0, 0, 0, 0]).is_err());
        assert!(Headers::from_bytes(vec![1, 0, 0]).is_err());
    }
}
