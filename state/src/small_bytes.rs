//! A key's or value's encoded bytes, kept inside the map slot that holds them when short.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

/// Bytes held in place at most: with the length byte and the tag, as large as a `Vec`.
const INLINE: usize = 30;

/// Encoded bytes (JSON text, made from `&str` only), inline up to 30 bytes and on the heap
/// beyond. Most keys and values are that short (a word, a count), so a batch's map finds and
/// compares a key in its own slot instead of following a pointer to another cache line (a
/// word count's lookups spent as long in `memcmp` as in the hash table), and keeps a short value
/// without an allocation.
#[derive(Clone)]
pub(crate) enum SmallBytes {
    /// The first `.0` bytes of `.1`.
    Inline(u8, [u8; INLINE]),
    /// Longer ones.
    Heap(Vec<u8>),
}

impl SmallBytes {
    pub(crate) fn new(bytes: &[u8]) -> Self {
        match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= INLINE => {
                let mut inline = [0; INLINE];
                inline[..bytes.len()].copy_from_slice(bytes);
                Self::Inline(len, inline)
            }
            _ => Self::Heap(bytes.to_vec()),
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline(len, inline) => &inline[..usize::from(*len)],
            Self::Heap(heap) => heap,
        }
    }

    /// The text it holds (it is only ever made from text).
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// Holds `bytes` from now on, in the memory it has where they fit.
    pub(crate) fn set(&mut self, bytes: &[u8]) {
        match self {
            Self::Heap(heap) if bytes.len() > INLINE => {
                heap.clear();
                heap.extend_from_slice(bytes);
            }
            _ => *self = Self::new(bytes),
        }
    }
}

impl Borrow<[u8]> for SmallBytes {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// As `[u8]` hashes, so that a map of them is searched with `&[u8]`.
impl Hash for SmallBytes {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq for SmallBytes {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for SmallBytes {}

impl std::fmt::Debug for SmallBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_bytes_read_back_and_change_in_place() {
        assert_eq!(std::mem::size_of::<SmallBytes>(), 32);
        let long = "x".repeat(INLINE + 1);
        for (first, then) in [
            ("\"a\"", long.as_str()),
            (&long, "7"),
            ("", ""),
            (&long, &long),
        ] {
            let mut b = SmallBytes::new(first.as_bytes());
            assert_eq!(b.as_str(), first);
            assert_eq!(matches!(b, SmallBytes::Inline(..)), first.len() <= INLINE);
            b.set(then.as_bytes());
            assert_eq!(b.as_str(), then);
            assert_eq!(b, SmallBytes::new(then.as_bytes()));
        }
    }
}
