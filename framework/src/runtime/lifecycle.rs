//! Where a worker is in its life: joined, running, stopping, abandoned, or failed.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::Error;

/// A worker's life, shared by `run`, the consumer thread, the partition tasks and the endpoint.
#[derive(Debug)]
pub(crate) struct Lifecycle {
    /// Set once the first assignment arrived: the worker is in the group.
    joined: AtomicBool,
    /// True while the consumer thread runs and no stop was requested.
    running: AtomicBool,
    /// Graceful stop requested.
    stop: AtomicBool,
    /// The worker was dropped without a graceful stop: abort tasks, commit nothing more.
    abandon: AtomicBool,
    /// The error that stops the worker (the first one wins).
    fatal: Mutex<Option<Error>>,
    /// Why the broker cannot be reached, while it cannot (for `unreadable_after` at least).
    unreachable: Mutex<Option<String>>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            joined: AtomicBool::new(false),
            running: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            abandon: AtomicBool::new(false),
            fatal: Mutex::new(None),
            unreachable: Mutex::new(None),
        }
    }
}

impl Lifecycle {
    pub(crate) fn joined(&self) {
        self.joined.store(true, Ordering::SeqCst);
    }

    pub(crate) fn has_joined(&self) -> bool {
        self.joined.load(Ordering::SeqCst)
    }

    pub(crate) fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Asks for a graceful stop.
    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.running.store(false, Ordering::SeqCst);
    }

    /// The consumer thread ended.
    pub(crate) fn ended(&self) {
        self.running.store(false, Ordering::SeqCst);
    }

    /// Gives up on a graceful stop: tasks are aborted, nothing more is committed.
    pub(crate) fn abandon(&self) {
        self.abandon.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_abandoned(&self) -> bool {
        self.abandon.load(Ordering::SeqCst)
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.is_abandoned()
    }

    /// Records an error that stops the worker (the first one wins).
    pub(crate) fn fail(&self, error: Error) {
        tracing::error!("worker stopping: {error}");
        self.fatal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert(error);
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Notes that the broker cannot be reached (`None`: it can); true if that changed.
    pub(crate) fn set_unreachable(&self, why: Option<String>) -> bool {
        let mut current = self
            .unreachable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = current.is_some() != why.is_some();
        *current = why;
        changed
    }

    /// Why the broker cannot be reached, if it cannot.
    pub(crate) fn unreachable(&self) -> Option<String> {
        self.unreachable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn take_fatal(&self) -> Option<Error> {
        self.fatal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}
