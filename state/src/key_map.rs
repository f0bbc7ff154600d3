//! The map from a store's keys to what the write set or the cache holds for them.

/// Keys to what a store holds for them, hashed with foldhash: std's SipHash was 7% of a word
/// count's samples. The seed is still random per map.
pub(crate) type KeyMap<V> = std::collections::HashMap<String, V, foldhash::fast::RandomState>;
