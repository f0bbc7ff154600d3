//! A read cache of committed state: the values a partition's handler read or wrote stay in
//! memory across batches, so a hot key costs no SQLite read. It holds only committed values
//! (a batch's own changes live in its [`WriteSet`](crate::WriteSet) until the commit, and are
//! copied in after it), so a failed or abandoned commit leaves it right as it is, and a crash
//! loses nothing but the cache.
//!
//! All caches of a worker share one [`CacheBudget`] of bytes; a cache over it evicts its
//! entries not read since its previous sweep (a clock-like second chance).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Memory per entry beyond its key and value bytes: the hash table's slot (56 bytes) at its
/// load factor after growth (half to seven eighths full), the two strings' allocator chunks
/// and headers, the table's growth. Measured over 10M distinct keys with a 256 MiB budget:
/// with 96 here the worker's RSS grew by 510 MiB, with this by 230 MiB (docs/performance.md).
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
    value: Option<String>,
    /// Read since the last sweep.
    hot: bool,
}

impl Entry {
    fn weight(key: &str, value: Option<&str>) -> usize {
        key.len() + value.map_or(0, str::len) + ENTRY_OVERHEAD
    }
}

/// The cache of one partition store: per named store, JSON key to committed JSON value.
#[derive(Debug)]
pub(crate) struct StateCache {
    stores: Vec<(String, HashMap<String, Entry>)>,
    bytes: usize,
    budget: Arc<CacheBudget>,
}

impl StateCache {
    pub(crate) fn new(budget: Arc<CacheBudget>) -> Self {
        Self {
            stores: Vec::new(),
            bytes: 0,
            budget,
        }
    }

    /// The cached committed value of `key`: `None` when not cached, `Some(None)` when the key
    /// is known to have no value.
    pub(crate) fn get(&mut self, store: &str, key: &str) -> Option<Option<&str>> {
        let (_, map) = self.stores.iter_mut().find(|(name, _)| name == store)?;
        let entry = map.get_mut(key)?;
        entry.hot = true;
        Some(entry.value.as_deref())
    }

    /// Remembers that `key` holds `value` in committed state.
    pub(crate) fn insert(&mut self, store: &str, key: &str, value: Option<&str>) {
        if self.budget.limit() == 0 {
            return;
        }
        let index = match self.stores.iter().position(|(name, _)| name == store) {
            Some(i) => i,
            None => {
                self.stores.push((store.to_owned(), HashMap::new()));
                self.stores.len() - 1
            }
        };
        let map = &mut self.stores[index].1;
        let added = Entry::weight(key, value);
        let value = value.map(str::to_owned);
        let removed = match map.get_mut(key) {
            Some(entry) => {
                let before = Entry::weight(key, entry.value.as_deref());
                entry.value = value;
                before
            }
            None => {
                map.insert(key.to_owned(), Entry { value, hot: false });
                0
            }
        };
        self.account(added, removed);
        if self.budget.over() {
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
                    freed += Entry::weight(key, entry.value.as_deref());
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
                    let w = Entry::weight(key, entry.value.as_deref());
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
            assert_eq!(cache.get("s", "hot"), Some(Some("1")));
            cache.insert("s", &format!("k{i:05}"), Some("v"));
            assert!(budget.used() <= budget.limit() + ENTRY_OVERHEAD + 10);
        }
        assert_eq!(cache.get("s", "hot"), Some(Some("1")));
        assert_eq!(cache.get("s", "k00000"), None, "a cold entry was evicted");
        drop(cache);
        assert_eq!(budget.used(), 0);
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
