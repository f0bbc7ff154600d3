//! Reading the partition stores a worker wrote.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use weir_state::PartitionStore;

use crate::count_handler::COUNTS;

/// The partition stores of `topic` in `state_dir` for `group`, by partition.
pub fn store_files(state_dir: &Path, group: &str, topic: &str) -> BTreeMap<i32, PathBuf> {
    let dir = state_dir.join(group).join(topic);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let path = e.path();
            let name = path.file_name()?.to_str()?;
            let p = name.strip_suffix(".sqlite")?.parse().ok()?;
            Some((p, path))
        })
        .collect()
}

/// Copies the files of `from` into `to` (a stopped worker's state dir: a machine's disk as it
/// was at that moment).
pub fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// What the stores of one topic hold: per-key counts summed over partitions, and each
/// partition's next offset.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoredCounts {
    /// Per key, summed over partitions.
    pub counts: BTreeMap<String, u64>,
    /// Next offset per partition.
    pub offsets: BTreeMap<i32, i64>,
}

impl StoredCounts {
    /// Reads the committed state of every partition store of `topic`.
    pub fn read(state_dir: &Path, group: &str, topic: &str) -> Self {
        let mut out = Self::default();
        for (p, path) in store_files(state_dir, group, topic) {
            let store = PartitionStore::open(&path).expect("open store");
            if let Some(o) = store.next_offset(topic, p).expect("offset") {
                out.offsets.insert(p, o);
            }
            for (k, v) in store.entries::<String, u64>(COUNTS).expect("entries") {
                *out.counts.entry(k).or_insert(0) += v;
            }
        }
        out
    }

    /// Per lane, the counts and position of the store (among the state dirs `dirs`, one per
    /// machine) with the highest position: the lane's newest state. A store that cannot be read
    /// yet (a worker is creating it) is passed over.
    pub fn newest(dirs: &[tempfile::TempDir], group: &str, topic: &str) -> Self {
        let mut best: BTreeMap<i32, (i64, Vec<(String, u64)>)> = BTreeMap::new();
        for dir in dirs {
            for (lane, path) in store_files(dir.path(), group, topic) {
                let Ok(store) = weir_state::StoreReader::open(&path) else {
                    continue;
                };
                let Ok(Some(next)) = store.next_offset(topic, lane) else {
                    continue;
                };
                if best.get(&lane).is_some_and(|(n, _)| *n >= next) {
                    continue;
                }
                let Ok(entries) = store.entries::<String, u64>(COUNTS) else {
                    continue;
                };
                best.insert(lane, (next, entries));
            }
        }
        let mut out = Self::default();
        for (lane, (next, entries)) in best {
            out.offsets.insert(lane, next);
            for (k, v) in entries {
                *out.counts.entry(k).or_insert(0) += v;
            }
        }
        out
    }

    /// Records counted in all.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// Panics, listing the differing keys, unless `got == expected`.
pub fn assert_counts_exact(got: &BTreeMap<String, u64>, expected: &BTreeMap<String, u64>) {
    if got == expected {
        return;
    }
    let diffs: Vec<String> = expected
        .keys()
        .chain(got.keys())
        .filter(|k| got.get(*k) != expected.get(*k))
        .take(10)
        .map(|k| format!("{k}: got {:?}, expected {:?}", got.get(k), expected.get(k)))
        .collect();
    panic!(
        "counts differ (got {} in all, expected {}): {}",
        got.values().sum::<u64>(),
        expected.values().sum::<u64>(),
        diffs.join("; ")
    );
}
