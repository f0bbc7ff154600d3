//! The counting handler most tests run, with its fault injection (poison records, stalls).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir::prelude::*;

/// The state store the counting handler writes.
pub const COUNTS: &str = "counts";

/// Counts records per key in state. Optionally fails on records whose value is `poison`, and
/// notes which partitions it processed.
#[derive(Debug, Default, Clone, weir::Handler)]
#[handler(value = Utf8)]
pub struct CountHandler {
    /// Failures left per poison value: each failing attempt takes one; `u64::MAX` never heals.
    pub poison: Arc<Mutex<HashMap<String, u64>>>,
    /// Partitions this handler processed records of.
    pub seen_partitions: Arc<Mutex<std::collections::BTreeSet<i32>>>,
    /// Records processed (attempts, including failed ones).
    pub attempts: Arc<AtomicU64>,
    /// Panic instead of returning an error on poison.
    pub panic_on_poison: bool,
    /// Hang forever at the record with this value (to crash a worker mid-batch).
    pub stall_on: Option<String>,
    /// Set once the handler reached `stall_on`.
    pub stalled: Arc<std::sync::atomic::AtomicBool>,
    /// Opens the stall: `release.open()` lets a stalled record finish.
    pub release: Gate,
    /// Sleep this long on every record (a slow handler).
    pub delay: Option<Duration>,
    /// Sleep this long on the record with this value.
    pub slow_on: Option<(String, Duration)>,
    /// Every attempt, in order: partition, value, when it started.
    pub log: Arc<Mutex<Vec<(i32, String, std::time::Instant)>>>,
}

impl CountHandler {
    /// A handler that fails `times` attempts at a record whose value is `value`.
    pub fn with_poison(value: &str, times: u64) -> Self {
        let h = Self::default();
        h.poison
            .lock()
            .expect("lock")
            .insert(value.to_owned(), times);
        h
    }

    /// Failing attempts left for `value`.
    pub fn poison_left(&self, value: &str) -> u64 {
        self.poison
            .lock()
            .expect("lock")
            .get(value)
            .copied()
            .unwrap_or(0)
    }
}

/// A gate that starts closed; once opened, every waiter passes.
#[derive(Debug, Clone)]
pub struct Gate(Arc<tokio::sync::Semaphore>);

impl Default for Gate {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(0)))
    }
}

impl Gate {
    /// Lets every waiter, now and later, pass.
    pub fn open(&self) {
        self.0.close();
    }

    /// Waits until the gate is open.
    pub async fn passed(&self) {
        // A closed semaphore fails every acquire at once: that is the open gate.
        let _ = self.0.acquire().await;
    }
}

/// Error of the counting handler.
#[derive(Debug, thiserror::Error)]
pub enum CountError {
    /// An injected failure.
    #[error("poison record {0}")]
    Poison(String),
    /// A state error.
    #[error(transparent)]
    Weir(#[from] weir::Error),
}

impl Process for CountHandler {
    type Error = CountError;

    async fn process(&self, rec: Record<'_, String>, ctx: &mut Ctx<'_>) -> Result<(), CountError> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        self.log.lock().expect("lock").push((
            rec.partition(),
            rec.value().clone(),
            std::time::Instant::now(),
        ));
        self.seen_partitions
            .lock()
            .expect("lock")
            .insert(rec.partition());
        let failing = {
            let mut poison = self.poison.lock().expect("lock");
            match poison.get_mut(rec.value().as_str()) {
                Some(left) if *left > 0 => {
                    if *left != u64::MAX {
                        *left -= 1;
                    }
                    true
                }
                _ => false,
            }
        };
        let key = rec.key_str().unwrap_or("").to_owned();
        if self.stall_on.as_deref() == Some(rec.value().as_str()) {
            ctx.state::<str, u64>(COUNTS)
                .update(&key, |n| Some(n.unwrap_or(0) + 1))?;
            self.stalled.store(true, Ordering::SeqCst);
            self.release.passed().await;
            return Ok(());
        }
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        if let Some((v, d)) = &self.slow_on {
            if v == rec.value() {
                tokio::time::sleep(*d).await;
            }
        }
        let mut counts = ctx.state::<str, u64>(COUNTS);
        // Write before failing, so a failed batch really has writes to throw away.
        counts.update(&key, |n| Some(n.unwrap_or(0) + 1))?;
        if failing {
            if self.panic_on_poison {
                panic!("injected panic at {}", rec.value());
            }
            return Err(CountError::Poison(rec.value().clone()));
        }
        Ok(())
    }
}
