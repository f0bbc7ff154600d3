//! The map from a store's keys to what the write set or the cache holds for them.

/// Keys (`String`, or the write set's [`SmallBytes`](crate::small_bytes::SmallBytes)) to what a
/// store holds for them, hashed with foldhash: std's SipHash was 7% of a word count's samples.
/// The seed is still random per map.
pub(crate) type KeyMap<V, K = String> =
    std::collections::HashMap<K, V, foldhash::fast::RandomState>;
