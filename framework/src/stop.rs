//! A partition's stop signal: set by a revoke or a shutdown; a batch sees it between records
//! and while it waits to retry, and an outbox flush while it waits for the broker.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// A partition's stop signal.
#[derive(Debug, Default)]
pub(crate) struct StopSignal {
    stop: AtomicBool,
    notify: Notify,
}

impl StopSignal {
    /// Asks the partition to finish what it does and stop.
    pub(crate) fn request(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Completes once a stop is requested.
    pub(crate) async fn requested(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_requested() {
                return;
            }
            notified.await;
        }
    }
}
