//! SIGINT and SIGTERM, caught from the first weir call of a worker process on: a signal that
//! arrives while the worker builds, checks the broker, creates topics, joins the group or
//! restores a store is kept, and stops the worker gracefully as soon as it runs.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// The process's stop latch: set by the first SIGINT/SIGTERM once weir listens.
#[derive(Debug, Default)]
struct Latch {
    fired: AtomicBool,
    notify: Notify,
}

static LATCH: OnceLock<Latch> = OnceLock::new();

/// Starts listening for SIGINT and SIGTERM (once per process), if a tokio runtime is running;
/// returns whether weir listens.
pub(crate) fn listen() -> bool {
    if LATCH.get().is_some() {
        return true;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    let _guard = runtime.enter();
    let mut installed = false;
    let latch = LATCH.get_or_init(|| {
        installed = true;
        Latch::default()
    });
    if installed {
        match streams() {
            Ok(mut signals) => {
                runtime.spawn(async move {
                    signals.recv().await;
                    tracing::info!("SIGINT/SIGTERM received");
                    latch.fired.store(true, Ordering::SeqCst);
                    latch.notify.notify_waiters();
                });
            }
            Err(e) => tracing::error!("cannot listen for SIGINT/SIGTERM; stop with Ctrl-C: {e}"),
        }
    }
    true
}

/// Completes once SIGINT or SIGTERM arrived (listening first, if need be). Pending forever
/// when weir cannot listen (no runtime).
pub(crate) async fn received() {
    if !listen() {
        return std::future::pending().await;
    }
    let Some(latch) = LATCH.get() else {
        return std::future::pending().await;
    };
    loop {
        let notified = latch.notify.notified();
        if latch.fired.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }
}

/// Whether weir listens for signals in this process (then every `run` stops on them).
pub(crate) fn listening() -> bool {
    LATCH.get().is_some()
}

#[cfg(unix)]
struct Streams {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Streams {
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

#[cfg(unix)]
fn streams() -> std::io::Result<Streams> {
    use tokio::signal::unix::{SignalKind, signal};
    Ok(Streams {
        int: signal(SignalKind::interrupt())?,
        term: signal(SignalKind::terminate())?,
    })
}

#[cfg(not(unix))]
struct Streams;

#[cfg(not(unix))]
impl Streams {
    async fn recv(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(not(unix))]
fn streams() -> std::io::Result<Streams> {
    Ok(Streams)
}
