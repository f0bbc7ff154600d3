//! Waiting for a condition with a deadline, saying what was seen when it passes.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::stores::{assert_counts_exact, StoredCounts};

/// Waits until `check` returns `Ok`, polling every 100 ms; past `timeout` panics with the last
/// thing `check` saw.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(()) => return,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits until a [`CountHandler`](crate::CountHandler) made with `stall_on` hangs at its record (`stalled`).
pub async fn wait_stalled(stalled: &std::sync::atomic::AtomicBool) {
    wait_until(
        "the handler to hang at its record",
        Duration::from_secs(60),
        || async {
            if stalled.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("not reached yet".into())
            }
        },
    )
    .await;
}

/// Waits until the stores of `topic` count at least `min` records in all.
pub async fn wait_for_total(
    state_dir: &Path,
    group: &str,
    topic: &str,
    min: u64,
    timeout: Duration,
) {
    wait_until(&format!("{min} records counted"), timeout, || async {
        let total = StoredCounts::read(state_dir, group, topic).total();
        if total >= min {
            Ok(())
        } else {
            Err(format!("{total} counted"))
        }
    })
    .await;
}

/// Waits until the stores count `expected` records in all, then checks per-key equality.
pub async fn wait_for_counts(
    state_dir: &Path,
    group: &str,
    topic: &str,
    expected: &BTreeMap<String, u64>,
    timeout: Duration,
) -> StoredCounts {
    let want: u64 = expected.values().sum();
    wait_until(&format!("{want} records counted"), timeout, || async {
        let s = StoredCounts::read(state_dir, group, topic);
        if s.total() >= want {
            Ok(())
        } else {
            Err(format!("{} counted, offsets {:?}", s.total(), s.offsets))
        }
    })
    .await;
    let s = StoredCounts::read(state_dir, group, topic);
    assert_counts_exact(&s.counts, expected);
    s
}

/// Waits until `done()` (records processed, as the test counts them) reaches `want`; past
/// `timeout` panics with the last count.
pub async fn wait_processed(timeout: Duration, want: i64, mut done: impl FnMut() -> i64) {
    wait_until("records processed", timeout, || {
        let done = done();
        async move {
            if done >= want {
                Ok(())
            } else {
                Err(format!("{done} of {want} processed"))
            }
        }
    })
    .await;
}
