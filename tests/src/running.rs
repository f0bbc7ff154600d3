//! A worker running on the test's own runtime.

use weir::prelude::*;

/// A worker running on the test's runtime until [`stop`](Self::stop)ped.
#[derive(Debug)]
pub struct RunningWorker {
    stop: tokio::sync::oneshot::Sender<()>,
    run: tokio::task::JoinHandle<weir::Result<()>>,
}

impl RunningWorker {
    /// Spawns `worker.run(...)` with a shutdown that [`stop`](Self::stop) triggers.
    pub fn spawn<H: Process>(worker: Worker<H>) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(worker.run(async {
            let _ = stopped.await;
        }));
        Self { stop, run }
    }

    /// Asks for a graceful stop and returns what `run` returned.
    pub async fn stop(self) -> weir::Result<()> {
        let _ = self.stop.send(());
        self.run.await.expect("the worker task panicked")
    }

    /// Asks for a graceful stop and panics unless it succeeds.
    pub async fn stop_cleanly(self) {
        self.stop().await.expect("the worker stops cleanly");
    }

    /// Drops the running worker without a graceful stop, like a crash.
    pub async fn crash(self) {
        self.run.abort();
        assert!(self.run.await.expect_err("aborted").is_cancelled());
    }
}
