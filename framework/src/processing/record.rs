//! The record a handler receives.

use crate::inbound::Inbound;

/// One record of a partition, with its decoded value `V` and key `K`.
#[derive(Debug)]
pub struct Record<'a, V, K = Vec<u8>> {
    msg: &'a Inbound,
    key: K,
    value: V,
}

impl<'a, V, K> Record<'a, V, K> {
    pub(crate) fn new(msg: &'a Inbound, key: K, value: V) -> Self {
        Self { msg, key, value }
    }

    /// The decoded key.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// The decoded value.
    pub fn value(&self) -> &V {
        &self.value
    }

    /// The decoded value, owned.
    pub fn into_value(self) -> V {
        self.value
    }

    /// The raw key, if the record has one.
    pub fn key_bytes(&self) -> Option<&'a [u8]> {
        self.msg.key()
    }

    /// The key as UTF-8 text, if it is present and valid UTF-8.
    pub fn key_str(&self) -> Option<&'a str> {
        self.msg.key().and_then(|k| std::str::from_utf8(k).ok())
    }

    /// The raw payload bytes.
    pub fn payload(&self) -> Option<&'a [u8]> {
        self.msg.payload()
    }

    /// The topic the record was read from.
    pub fn topic(&self) -> &'a str {
        self.msg.topic()
    }

    /// The partition the record was read from.
    pub fn partition(&self) -> i32 {
        self.msg.partition()
    }

    /// The record's offset in its partition.
    pub fn offset(&self) -> i64 {
        self.msg.offset()
    }

    /// The record's timestamp in milliseconds since the Unix epoch, if it has one.
    pub fn timestamp_ms(&self) -> Option<i64> {
        self.msg.timestamp_ms()
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers()
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v)
    }

    /// Every header, in order.
    pub fn headers(
        &self,
    ) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + 'a + use<'a, V, K> {
        self.msg.headers()
    }
}
