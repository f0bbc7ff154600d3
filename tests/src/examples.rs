//! What the `wordcount` and `orders` examples are fed and must produce, on any broker.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use weir_examples::orders::{CustomerTotal, Order};

use crate::{store_files, wait_until};

/// Lines for `wordcount` (key, line): "the" three times among five words.
pub fn wordcount_lines() -> Vec<(String, String)> {
    [("a", "the fox and the dog"), ("b", "the end")]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec()
}

/// Waits until the stores of `topic` hold the word counts of [`wordcount_lines`].
pub async fn wait_for_word_counts(dir: &Path, group: &str, topic: &str) {
    wait_until("the words counted", Duration::from_secs(30), || async {
        let mut counts = BTreeMap::<String, u64>::new();
        for (_, path) in store_files(dir, group, topic) {
            let Ok(store) = weir_state::StoreReader::open(&path) else {
                continue;
            };
            for (w, n) in store.entries::<String, u64>("counts").unwrap_or_default() {
                *counts.entry(w).or_default() += n;
            }
        }
        if counts.get("the") == Some(&3) && counts.len() == 5 {
            Ok(())
        } else {
            Err(format!("{counts:?}"))
        }
    })
    .await;
}

/// Orders for `orders` (customer, order JSON), with alice's `o3` placed twice.
pub fn placed_orders() -> Vec<(String, String)> {
    let order = |id: &str, cents| {
        serde_json::to_string(&Order {
            order_id: id.into(),
            cents,
        })
        .expect("json")
    };
    vec![
        ("alice".into(), order("o1", 100)),
        ("bob".into(), order("o2", 250)),
        ("alice".into(), order("o3", 50)),
        ("alice".into(), order("o3", 50)),
    ]
}

/// Asserts that `totals` (the payloads emitted for [`placed_orders`]) are one per new order,
/// the last of each customer's being their sum.
pub fn assert_order_totals(totals: &[&str]) {
    let mut last = BTreeMap::new();
    for t in totals {
        let t: CustomerTotal = serde_json::from_str(t).expect("a total");
        last.insert(t.customer, t.cents);
    }
    assert_eq!(totals.len(), 3, "one total per new order: {totals:?}");
    assert_eq!(
        last,
        [("alice".to_owned(), 150), ("bob".to_owned(), 250)].into(),
        "{totals:?}"
    );
}
