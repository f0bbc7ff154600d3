//! A read cache of committed state: the values a partition's handler read or wrote stay in
//! memory across batches, so a hot key costs no SQLite read. It holds only committed values
//! (a batch's own changes live in its [`WriteSet`](crate::WriteSet) until the commit, and are
//! copied in after it), so a failed or abandoned commit leaves it right as it is, and a crash
//! loses nothing but the cache.
//!
//! All caches of a worker share one [`CacheBudget`] of bytes; a cache over it evicts its
//! entries not read since its previous sweep (a clock-like second chance).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::key_map::KeyMap;
use crate::small_bytes::SmallBytes;

/// Memory per entry beyond its key and value bytes: the hash table's slot (72 bytes, holding
/// keys and values up to 30 bytes) at its load factor after growth (half to seven eighths
/// full), longer ones' allocator chunks and headers, the table's growth. Set when the slot was
/// 56 bytes and both were allocated apart, over 10M distinct keys with a 256 MiB budget: with
/// 96 here the worker's RSS grew by 510 MiB, with this by 230 MiB (docs/performance.md).
const ENTRY_OVERHEAD: usize = 288;

/// The memory the state caches of one worker may hold together.
#[derive(Debug)]
pub struct CacheBudget {
    limit: usize,
    used: AtomicUsize,
}

impl CacheBudget {
    /// A budget of `bytes` (0: nothing is cached).
    pub fn new(bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: bytes,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes the caches hold now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    fn over(&self) -> bool {
        self.used() > self.limit
    }
}

#[derive(Debug)]
struct Entry {
    /// The committed JSON value; `None`: the key has no value.
    value: Option<SmallBytes>,
    /// Read since the last sweep.
    hot: bool,
}

impl Entry {
    fn weight(key: &[u8], value: Option<&[u8]>) -> usize {
        key.len() + value.map_or(0, <[u8]>::len) + ENTRY_OVERHEAD
    }

    /// This entry's weight under `key`.
    fn weight_as(&self, key: &[u8]) -> usize {
        Self::weight(key, self.value.as_ref().map(SmallBytes::as_bytes))
    }
}

/// Lookups between two checks of the hit rate.
const CHECK_EVERY: u64 = 100_000;
/// Below this share of hits, once the cache has been full, new keys stop entering it.
const MIN_HIT_RATE: f64 = 0.02;
/// Lookups after which a cache that stopped taking new keys tries again.
const RETRY_AFTER: u64 = 2_000_000;

/// The cache of one partition store: per named store, JSON key to committed JSON value.
///
/// When keys are hardly ever read twice before they leave it (millions of keys used
/// uniformly), caching them only costs: once the cache has been full and fewer than 2% of its
/// lookups hit, it stops taking new keys (those it holds are still kept current), and tries
/// again after two million lookups.
#[derive(Debug)]
pub(crate) struct StateCache {
    /// Per store, JSON key to entry; short keys and values are held in the slot itself, as in
    /// the write set.
    stores: Vec<(String, KeyMap<Entry, SmallBytes>)>,
    bytes: usize,
    budget: Arc<CacheBudget>,
    /// New keys enter the cache.
    admitting: bool,
    /// The cache went over its budget since it last started admitting.
    filled: bool,
    lookups: u64,
    hits: u64,
}

impl StateCache {
    pub(crate) fn new(budget: Arc<CacheBudget>) -> Self {
        Self {
            stores: Vec::new(),
            bytes: 0,
            budget,
            admitting: true,
            filled: false,
            lookups: 0,
            hits: 0,
        }
    }

    /// The cached committed value of `key`: `None` when not cached, `Some(None)` when the key
    /// is known to have no value.
    pub(crate) fn get(&mut self, store: &str, key: &str) -> Option<Option<&[u8]>> {
        self.lookups += 1;
        self.check_hit_rate();
        let (_, map) = self.stores.iter_mut().find(|(name, _)| name == store)?;
        let entry = map.get_mut(key.as_bytes())?;
        entry.hot = true;
        self.hits += 1;
        Some(entry.value.as_ref().map(SmallBytes::as_bytes))
    }

    /// Decides whether new keys enter the cache, from the hits of the last lookups.
    fn check_hit_rate(&mut self) {
        let period = if self.admitting {
            CHECK_EVERY
        } else {
            RETRY_AFTER
        };
        if self.lookups < period {
            return;
        }
        let rate = self.hits as f64 / self.lookups as f64;
        if !self.admitting {
            self.admitting = true;
            self.filled = false;
        } else if self.filled && rate < MIN_HIT_RATE {
            self.admitting = false;
        }
        self.lookups = 0;
        self.hits = 0;
    }

    /// Remembers that `key` holds `value` in committed state (a key not cached yet only while
    /// the cache admits new keys).
    pub(crate) fn insert(&mut self, store: &str, key: &str, value: Option<&str>) {
        if self.budget.limit() == 0 {
            return;
        }
        let index = match self.stores.iter().position(|(name, _)| name == store) {
            Some(i) => i,
            None => {
                self.stores.push((store.to_owned(), KeyMap::default()));
                self.stores.len() - 1
            }
        };
        let map = &mut self.stores[index].1;
        let (key, value) = (key.as_bytes(), value.map(str::as_bytes));
        let added = Entry::weight(key, value);
        let removed = match map.get_mut(key) {
            Some(entry) => {
                let before = entry.weight_as(key);
                match (&mut entry.value, value) {
                    (Some(old), Some(new)) => old.set(new),
                    (slot, new) => *slot = new.map(SmallBytes::new),
                }
                before
            }
            None if !self.admitting => return,
            None => {
                let value = value.map(SmallBytes::new);
                map.insert(SmallBytes::new(key), Entry { value, hot: false });
                0
            }
        };
        self.account(added, removed);
        if self.budget.over() {
            self.filled = true;
            self.sweep();
        }
    }

    /// Forgets everything (the store was emptied or rewritten underneath).
    pub(crate) fn clear(&mut self) {
        self.stores.clear();
        let bytes = std::mem::take(&mut self.bytes);
        self.budget.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn account(&mut self, added: usize, removed: usize) {
        self.bytes = self.bytes + added - removed;
        if added >= removed {
            self.budget
                .used
                .fetch_add(added - removed, Ordering::Relaxed);
        } else {
            self.budget
                .used
                .fetch_sub(removed - added, Ordering::Relaxed);
        }
    }

    /// Evicts the entries not read since the previous sweep and marks the rest unread; if
    /// that freed nothing, evicts half of what this cache holds.
    fn sweep(&mut self) {
        let mut freed = 0;
        for (_, map) in &mut self.stores {
            map.retain(|key, entry| {
                let keep = std::mem::take(&mut entry.hot);
                if !keep {
                    freed += entry.weight_as(key.as_bytes());
                }
                keep
            });
        }
        if freed == 0 {
            let mut left = self.bytes / 2;
            for (_, map) in &mut self.stores {
                map.retain(|key, entry| {
                    if left == 0 {
                        return true;
                    }
                    let w = entry.weight_as(key.as_bytes());
                    left = left.saturating_sub(w);
                    freed += w;
                    false
                });
            }
        }
        self.account(0, freed);
    }
}

impl Drop for StateCache {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_holds_and_read_entries_survive_a_sweep() {
        let budget = CacheBudget::new(100 * (ENTRY_OVERHEAD + 10));
        let mut cache = StateCache::new(Arc::clone(&budget));
        cache.insert("s", "hot", Some("1"));
        for i in 0..1_000 {
            assert_eq!(cache.get("s", "hot"), Some(Some(&b"1"[..])));
            cache.insert("s", &format!("k{i:05}"), Some("v"));
            assert!(budget.used() <= budget.limit() + ENTRY_OVERHEAD + 10);
        }
        assert_eq!(cache.get("s", "hot"), Some(Some(&b"1"[..])));
        assert_eq!(cache.get("s", "k00000"), None, "a cold entry was evicted");
        drop(cache);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn keys_read_only_once_stop_entering_a_full_cache_until_it_tries_again() {
        let budget = CacheBudget::new(1000 * (ENTRY_OVERHEAD + 20));
        let mut cache = StateCache::new(Arc::clone(&budget));
        cache.insert("s", "kept", Some("1"));
        // Every key new: misses only, and the cache fills up.
        let mut i = 0u64;
        let mut miss = |cache: &mut StateCache| {
            i += 1;
            let key = format!("k{i:09}");
            assert_eq!(cache.get("s", &key), None);
            cache.insert("s", &key, Some("v"));
            key
        };
        for _ in 0..CHECK_EVERY {
            miss(&mut cache);
        }
        miss(&mut cache);
        assert!(
            !cache.admitting,
            "a full cache with no hits stopped admitting"
        );
        let key = miss(&mut cache);
        assert_eq!(cache.get("s", &key), None, "a new key did not enter");
        // What it holds is still kept current.
        if cache.get("s", "kept").is_some() {
            cache.insert("s", "kept", Some("2"));
            assert_eq!(cache.get("s", "kept"), Some(Some(&b"2"[..])));
        }
        for _ in 0..RETRY_AFTER {
            miss(&mut cache);
        }
        let key = miss(&mut cache);
        assert!(
            cache.admitting,
            "it tries again after {RETRY_AFTER} lookups"
        );
        assert_eq!(cache.get("s", &key), Some(Some(&b"v"[..])));
    }

    #[test]
    fn a_cache_with_hits_keeps_admitting() {
        let budget = CacheBudget::new(100 * (ENTRY_OVERHEAD + 20));
        let mut cache = StateCache::new(Arc::clone(&budget));
        for i in 0..3 * CHECK_EVERY {
            // One key in ten is new; the rest are ten hot keys.
            let key = match i % 10 {
                0 => format!("new{i}"),
                n => format!("hot{n}"),
            };
            if cache.get("s", &key).is_none() {
                cache.insert("s", &key, Some("v"));
            }
        }
        assert!(cache.admitting);
    }

    #[test]
    fn a_zero_budget_caches_nothing() {
        let budget = CacheBudget::new(0);
        let mut cache = StateCache::new(Arc::clone(&budget));
        cache.insert("s", "k", Some("1"));
        assert_eq!(cache.get("s", "k"), None);
        assert_eq!(budget.used(), 0);
    }
}
