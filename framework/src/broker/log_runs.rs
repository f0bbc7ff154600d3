//! A log read by a task on the runtime and taken by a blocking thread (a restore's), the
//! records handed over in runs so that the two meet once per run rather than once per record:
//! what the NATS and RabbitMQ log readers share.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::broker::Polled;

/// Runs waiting between the reading task and the reader.
const RUNS_AHEAD: usize = 64;

/// What a reading task hands over. (Mostly records: boxing them to shrink the rest would
/// cost an allocation each.)
#[allow(clippy::large_enum_variant)]
pub(crate) enum Read<R> {
    Record(R),
    /// The end of the lane as the broker knew it when the read got there: the read is done.
    End,
    /// The read failed: the last thing a task hands over.
    Failed(String),
}

/// Where a reading task's runs go.
pub(crate) type RunSender<R> = mpsc::Sender<Vec<Read<R>>>;

/// One read at a time, by a task on `runtime`.
pub(crate) struct LogRuns<R> {
    runtime: Handle,
    reading: RefCell<Reading<R>>,
}

struct Reading<R> {
    runs: Option<mpsc::Receiver<Vec<Read<R>>>>,
    ready: VecDeque<Read<R>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl<R> Drop for Reading<R> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl<R: Send + 'static> LogRuns<R> {
    /// Reads on `runtime` (the one whose clients the reading tasks use).
    pub(crate) fn new(runtime: Handle) -> Self {
        Self {
            runtime,
            reading: RefCell::new(Reading {
                runs: None,
                ready: VecDeque::new(),
                task: None,
            }),
        }
    }

    /// The runtime the reads run on.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn runtime(&self) -> &Handle {
        &self.runtime
    }

    /// Starts a new read (the one before is dropped): `read` hands its runs to the sender it
    /// is given.
    pub(crate) fn start<F>(&self, read: impl FnOnce(RunSender<R>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(RUNS_AHEAD);
        let task = self.runtime.spawn(read(tx));
        *self.reading.borrow_mut() = Reading {
            runs: Some(rx),
            ready: VecDeque::new(),
            task: Some(task),
        };
    }

    /// The next record, waiting at most `timeout`.
    pub(crate) fn poll(&self, timeout: Duration) -> Polled<R> {
        let mut reading = self.reading.borrow_mut();
        if reading.ready.is_empty() {
            let Some(runs) = reading.runs.as_mut() else {
                return Polled::Failed("nothing is being read".into());
            };
            match self
                .runtime
                .block_on(async { tokio::time::timeout(timeout, runs.recv()).await })
            {
                Err(_) => return Polled::Nothing,
                Ok(None) => return Polled::Failed("the log's reader stopped".into()),
                Ok(Some(run)) => reading.ready.extend(run),
            }
        }
        match reading.ready.pop_front() {
            Some(Read::Record(r)) => Polled::Record(r),
            Some(Read::End) => Polled::End,
            Some(Read::Failed(e)) => Polled::Failed(e),
            None => Polled::Nothing,
        }
    }
}
