//! The worker: preparing it (clients, embedded broker, state dir), running the consumer thread,
//! and stopping gracefully.

use std::future::Future;
use std::sync::{Arc, mpsc as std_mpsc};

use crate::config::Config;
use crate::delivery::{DeadLetterSink, OutboxSink};
use crate::error::{Error, Result};
use crate::observe;
use crate::processing::table::GlobalTables;
use crate::processing::{Process, Scope};
#[cfg(feature = "kafka")]
use crate::runtime::EmbeddedBroker;
use crate::runtime::client::{Clients, Made, Started};
use crate::runtime::lifecycle::Lifecycle;
use crate::runtime::partition_task::TaskContext;
use crate::runtime::shared::Shared;
#[cfg(feature = "kafka")]
use crate::runtime::stages::Stages;
#[cfg(feature = "kafka")]
use crate::runtime::tables::{check_copartitioned, follow_globals};
use crate::runtime::{consumer, signals};
#[cfg(feature = "kafka")]
use crate::wall_clock::now_ms;

/// A worker process's runtime: one consumer in the group, one task per owned partition.
///
/// ```no_run
/// # use weir::prelude::*;
/// # #[derive(Handler)]
/// # #[handler(value = Utf8)]
/// # struct Count;
/// # impl Process for Count {
/// #     type Error = weir::Error;
/// #     async fn process(&self, _: Record<'_, String>, _: &mut Ctx<'_>) -> weir::Result<()> { Ok(()) }
/// # }
/// # async fn run() -> weir::Result<()> {
/// Worker::builder().topic("lines").with_env()?.build(Count)?.run_until_signal().await
/// # }
/// ```
#[derive(Debug)]
pub struct Worker<H> {
    config: Config,
    brokers: String,
    clients: Clients,
    metrics_listener: Option<std::net::TcpListener>,
    handler: Arc<H>,
    #[cfg(feature = "kafka")]
    embedded: Option<Arc<EmbeddedBroker>>,
    /// The pipeline this worker is a stage of.
    #[cfg(feature = "kafka")]
    stages: Option<Arc<Stages>>,
}

impl<H: Process> Worker<H> {
    /// Prepares a worker with checked settings; starts the embedded broker (creating the
    /// topics) when no broker is configured.
    #[cfg(feature = "kafka")]
    pub(crate) fn prepare(config: Config, handler: H) -> Result<Self> {
        Self::prepare_in(config, handler, None)
    }

    /// Prepares a worker with checked settings (a broker must be configured: the embedded
    /// one is Kafka's).
    #[cfg(not(feature = "kafka"))]
    pub(crate) fn prepare(config: Config, handler: H) -> Result<Self> {
        let Some(brokers) = config.brokers.clone() else {
            return Err(Error::config(
                "brokers (WEIR_BROKERS)",
                "no broker configured, and the embedded broker needs weir's `kafka` feature: set WEIR_BROKERS to nats://... or amqp://...",
            ));
        };
        check_state_dir(&config)?;
        let clients = Clients::new(&config, &brokers, false)?;
        let metrics_listener = metrics_listener(&config)?;
        Ok(Worker {
            config,
            brokers,
            clients,
            metrics_listener,
            handler: Arc::new(handler),
        })
    }

    /// [`prepare`](Self::prepare), as a stage of a pipeline when `stages` is given (on its
    /// embedded broker, if it runs on one).
    #[cfg(feature = "kafka")]
    pub(crate) fn prepare_in(
        mut config: Config,
        handler: H,
        stages: Option<Arc<Stages>>,
    ) -> Result<Self> {
        let shared_embedded = stages.as_ref().and_then(|s| s.embedded());
        let embedded = match (&config.brokers, shared_embedded) {
            (_, Some(shared)) => Some(shared),
            (Some(_), None) => None,
            (None, None) => {
                config.state_dir = embedded_state_dir(&config.state_dir);
                let broker = EmbeddedBroker::start(1)?;
                config.brokers = Some(broker.bootstrap_servers().to_owned());
                Some(Arc::new(broker))
            }
        };
        check_state_dir(&config)?;
        let brokers = config.brokers.clone().unwrap_or_default();
        if let Some(broker) = &embedded {
            if stages.is_none() {
                warn_embedded(broker, &config.state_dir);
            }
            let mut topics = config.topics.clone();
            for topic in &config.topics {
                topics.extend(config.dead_letter_topic_of(topic));
                topics.extend(config.changelog_topic_of(topic));
            }
            let tables = config.tables(false).into_iter().chain(config.tables(true));
            topics.extend(tables.map(|t| t.topic));
            for topic in topics {
                // (A pipeline's stages share the broker: a topic may exist already.)
                if let Err(e) = broker.create_topic(&topic, config.embedded_partitions) {
                    if stages.is_none() || !e.to_string().to_lowercase().contains("exist") {
                        return Err(e);
                    }
                }
            }
        }
        let clients = Clients::new(&config, &brokers, stages.is_some())?;
        let metrics_listener = metrics_listener(&config)?;
        Ok(Worker {
            config,
            brokers,
            clients,
            metrics_listener,
            handler: Arc::new(handler),
            embedded,
            stages,
        })
    }

    /// The bootstrap servers the worker uses (the embedded broker's when it runs embedded).
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The address `/metrics` and `/health/*` are served on, when a metrics address is set.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Where this worker's partition stores live.
    pub fn state_dir(&self) -> &std::path::Path {
        &self.config.state_dir
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.config.group
    }

    /// Whether the worker runs on the embedded broker.
    fn is_embedded(&self) -> bool {
        #[cfg(feature = "kafka")]
        return self.embedded.is_some();
        #[cfg(not(feature = "kafka"))]
        false
    }

    /// The embedded broker, when no broker was configured. It lives as long as the worker or
    /// any clone of this handle (keep one in a producer so it outlives the worker).
    #[cfg(feature = "kafka")]
    pub fn embedded_broker(&self) -> Option<Arc<EmbeddedBroker>> {
        self.embedded.clone()
    }

    /// Runs until SIGINT or SIGTERM, then stops gracefully. Signals are caught from
    /// [`Worker::from_env`] (or this call) on, so one that arrives while the worker builds,
    /// checks the broker or joins the group is not lost: `run` then stops at once, exit 0.
    pub async fn run_until_signal(self) -> Result<()> {
        signals::listen();
        self.run(std::future::pending()).await
    }

    /// Runs until `shutdown` completes, then stops gracefully: in-flight batches finish and
    /// commit, stores close, the worker leaves the group.
    ///
    /// Dropping this future instead abandons the work like a crash would: tasks are aborted,
    /// uncommitted batches are lost from memory and processed again by the next owner.
    ///
    /// Once weir listens for signals in the process ([`Worker::from_env`],
    /// [`run_until_signal`](Self::run_until_signal)), SIGINT and SIGTERM stop it too.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let listening = signals::listening();
        let shutdown = async move {
            if listening {
                tokio::select! {
                    () = shutdown => {}
                    () = signals::received() => {}
                }
            } else {
                shutdown.await
            }
        };
        tokio::pin!(shutdown);
        // A stop requested while the broker is checked ends the worker at once: it has joined
        // nothing and owns nothing yet.
        let startup = self
            .clients
            .start(&self.config, &self.brokers, self.is_embedded());
        let started = tokio::select! {
            r = startup => r?,
            () = &mut shutdown => {
                tracing::info!("shutdown requested while starting: stopped");
                return Ok(());
            }
        };
        let Started {
            connection,
            producer,
            reader,
        } = started;
        // Tables: co-partitioned ones checked, global ones read in full before joining.
        let globals = Arc::new(GlobalTables::default());
        let tables = read_tables(&self.config, &connection, &globals);
        let _globals_follower = tokio::select! {
            r = tables => r?,
            () = &mut shutdown => {
                tracing::info!("shutdown requested while reading tables: stopped");
                return Ok(());
            }
        };
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let lifecycle = Arc::new(Lifecycle::default());
        let shared = Arc::new(Shared::new(
            Arc::clone(&self.handler),
            self.config.clone(),
            tokio::runtime::Handle::current(),
            DeadLetterSink::Broker(Arc::clone(&producer)),
            TaskContext {
                batch_size: self.config.batch_size,
                linger: self.config.linger,
                allow_partial_history: self.config.allow_partial_history,
                outbox: OutboxSink::Broker(producer),
                connection: connection.clone(),
                ready: ready_tx,
                lifecycle: Arc::clone(&lifecycle),
                idle_close_after: self.config.idle_close_after,
                tables: self.config.tables(false).into(),
                scope: Scope {
                    globals,
                    pipeline_group: Arc::from(self.config.pipeline_group()),
                    group: Arc::from(self.config.group.as_str()),
                },
            },
        ));
        let source = reader.source(Arc::clone(&shared))?;
        tracing::info!(
            group = %self.config.group, topics = ?self.config.topics, brokers = %self.brokers,
            embedded = self.is_embedded(), "worker starting"
        );
        #[cfg(feature = "kafka")]
        if let Some(stages) = &self.stages {
            stages.add_view(shared.view());
        }
        let mut background = Vec::new();
        if let Some(listener) = self.metrics_listener {
            let listener =
                tokio::net::TcpListener::from_std(listener).map_err(|source| Error::Io {
                    context: "serving the metrics endpoint",
                    source,
                })?;
            let token = self
                .config
                .http_token
                .as_ref()
                .map(|t| Arc::from(t.0.as_str()));
            background.push(tokio::spawn(observe::serve(listener, shared.view(), token)));
        }
        if !self.config.progress_interval.is_zero() {
            background.push(tokio::spawn(observe::log_progress(
                shared.view(),
                self.config.progress_interval,
            )));
        }
        let _background = AbortOnDrop(background);
        let guard = AbandonOnDrop(Arc::clone(&lifecycle));
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("weir-consumer".into())
            .spawn(move || {
                let result = match source {
                    #[cfg(feature = "kafka")]
                    Made::Kafka(s) => consumer::run(s, thread_shared, ready_rx),
                    #[cfg(not(feature = "kafka"))]
                    Made::Never(never, _) => match never {},
                    #[cfg(feature = "nats")]
                    Made::Nats(s) => consumer::run(*s, thread_shared, ready_rx),
                    #[cfg(feature = "nats")]
                    Made::NatsCore(s) => consumer::run(*s, thread_shared, ready_rx),
                    #[cfg(feature = "rabbitmq")]
                    Made::RabbitMq(s) => consumer::run(*s, thread_shared, ready_rx),
                    #[cfg(feature = "sqs")]
                    Made::Sqs(s) => consumer::run(*s, thread_shared, ready_rx),
                };
                let _ = done_tx.send(result);
            })
            .map_err(|source| Error::Io {
                context: "starting the consumer thread",
                source,
            })?;
        let result = tokio::select! {
            r = &mut done_rx => r,
            () = &mut shutdown => {
                tracing::info!("shutdown requested: finishing in-flight batches");
                lifecycle.request_stop();
                let drain = self.config.drain_timeout;
                match tokio::time::timeout(drain, done_rx).await {
                    Ok(r) => r,
                    Err(_) => {
                        // Dropping `guard` abandons what is left, like a crash.
                        let partitions = shared.unreleased();
                        tracing::error!(?partitions, "graceful stop exceeded {drain:?}");
                        return Err(Error::DrainTimeout { timeout: drain, partitions });
                    }
                }
            }
        };
        lifecycle.ended();
        std::mem::forget(guard);
        let result = result.unwrap_or_else(|_| Err(Error::Embedded("consumer thread died".into())));
        if result.is_ok() {
            tracing::info!("worker stopped");
        }
        result
    }
}

/// Cancels a blocking step (reading global tables) when the step's future is dropped.
#[cfg(feature = "kafka")]
struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);

#[cfg(feature = "kafka")]
impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Aborts background tasks (metrics endpoint, progress log) when `run` (a worker's or a
/// pipeline's) ends.
pub(crate) struct AbortOnDrop(pub(crate) Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Says that the worker (or pipeline) runs on the embedded broker, and what that means.
#[cfg(feature = "kafka")]
pub(crate) fn warn_embedded(broker: &EmbeddedBroker, state_dir: &std::path::Path) {
    tracing::warn!(
        bootstrap = broker.bootstrap_servers(),
        state_dir = %state_dir.display(),
        "no broker configured (WEIR_BROKERS): running on the embedded in-process broker; it \
         keeps only the newest ~5 MiB per partition and forgets everything on exit"
    );
}

/// Where an embedded broker's worker keeps its stores: a fresh folder in the state dir, since
/// offsets from an earlier broker's life would not match the new one's.
#[cfg(feature = "kafka")]
pub(crate) fn embedded_state_dir(state_dir: &std::path::Path) -> std::path::PathBuf {
    let secs = now_ms() / 1000;
    state_dir.join(format!("embedded-{}-{secs}", std::process::id()))
}

/// The metrics endpoint's listener, when a metrics address is set, with the recorder
/// installed now, so that nothing recorded from here on is lost.
fn metrics_listener(config: &Config) -> Result<Option<std::net::TcpListener>> {
    config
        .metrics_addr
        .as_deref()
        .map(|addr| {
            observe::prometheus();
            bind_metrics(addr)
        })
        .transpose()
}

/// Checks the worker's co-partitioned tables, and reads its global ones in full (on a
/// blocking thread; stopped when the future is dropped): their follower, if any.
#[cfg(feature = "kafka")]
async fn read_tables(
    config: &Config,
    connection: &crate::broker::Connection,
    globals: &Arc<GlobalTables>,
) -> Result<Option<crate::runtime::tables::GlobalFollower>> {
    let (config, client) = (config.clone(), connection.clone());
    let globals = Arc::clone(globals);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cancel = StopOnDrop(Arc::clone(&stop));
    let read = tokio::task::spawn_blocking(move || {
        check_copartitioned(&config, &client)?;
        let global = config.tables(true);
        if global.is_empty() {
            return Ok(None);
        }
        let cancelled = || stop.load(std::sync::atomic::Ordering::SeqCst);
        let client = client
            .kafka("a global table")
            .map_err(|m| Error::config("tables", m))?;
        follow_globals(client, &global, &globals, &cancelled).map(Some)
    })
    .await;
    drop(cancel);
    read.map_err(|e| Error::Panic {
        context: "reading tables".into(),
        message: e.to_string(),
    })?
}

/// Tables run on Kafka only: a worker on another broker has none (its settings were refused).
#[cfg(not(feature = "kafka"))]
async fn read_tables(
    _: &Config,
    _: &crate::broker::Connection,
    _: &Arc<GlobalTables>,
) -> Result<Option<()>> {
    Ok(None)
}

pub(crate) fn bind_metrics(addr: &str) -> Result<std::net::TcpListener> {
    let err = |e: std::io::Error| {
        Error::config(
            "metrics_addr (WEIR_METRICS_ADDR)",
            format!("cannot listen on {addr:?}: {e}"),
        )
    };
    let listener = std::net::TcpListener::bind(addr).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// Abandons the worker when its `run` future is dropped before finishing.
struct AbandonOnDrop(Arc<Lifecycle>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

fn check_state_dir(config: &Config) -> Result<()> {
    let dir = config.state_dir.join(&config.group);
    let err = |e: std::io::Error| {
        Error::config(
            "state_dir (WEIR_STATE_DIR)",
            format!("{} is not a writable directory: {e}", dir.display()),
        )
    };
    std::fs::create_dir_all(&dir).map_err(err)?;
    // A name of this check's own: workers sharing the state dir may check it at once.
    static CHECKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CHECKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = dir.join(format!(".weir-write-probe-{}-{n}", std::process::id()));
    std::fs::write(&probe, b"ok").map_err(err)?;
    std::fs::remove_file(&probe).map_err(err)?;
    Ok(())
}
