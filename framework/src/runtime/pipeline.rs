//! Several handlers in one worker process: a pipeline of stages. Each stage is a worker of its
//! own consumer group (`<group>-<stage>`) with its own topics and stores; the pipeline gives
//! them one builder, one embedded broker, one metrics endpoint and one graceful stop, and
//! creates the repartition topics between them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::broker::Connection;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::observe::{self, PartitionRow, StateAnswer, WorkerView};
use crate::processing::{Process, repartition_topic};
use crate::runtime::admin::ensure_repartition_topics;
use crate::runtime::client::connection;
use crate::runtime::stages::Stages;
use crate::runtime::worker::{
    AbortOnDrop, Worker, bind_metrics, embedded_state_dir, warn_embedded,
};
use crate::runtime::{EmbeddedBroker, WorkerBuilder, signals};

type StageFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// A stage ready to run: its worker, type-erased.
trait StageRun: Send {
    fn run(self: Box<Self>, shutdown: tokio::sync::watch::Receiver<bool>) -> StageFuture;
}

impl<H: Process> StageRun for Worker<H> {
    fn run(self: Box<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) -> StageFuture {
        Box::pin(async move {
            let stop = async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            };
            (*self).run(stop).await
        })
    }
}

/// How a stage is made once the pipeline's settings are known.
type MakeStage = Box<dyn FnOnce(Config, Arc<Stages>) -> Result<Box<dyn StageRun>>>;

/// Builds a [`Pipeline`]: the worker's settings (brokers, group, state dir, metrics address,
/// ...) apply to every stage; each stage may add its own.
#[must_use]
pub struct PipelineBuilder {
    base: WorkerBuilder,
    stages: Vec<(String, MakeStage)>,
}

impl std::fmt::Debug for PipelineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineBuilder")
            .field("base", &self.base)
            .field(
                "stages",
                &self.stages.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl PipelineBuilder {
    pub(crate) fn new(base: WorkerBuilder) -> Self {
        Self {
            base,
            stages: Vec::new(),
        }
    }

    /// Adds stage `name` run by `handler`, consuming the handler's declared topics.
    pub fn stage<H: Process>(self, name: &str, handler: H) -> Self {
        self.stage_with(name, handler, |b| b)
    }

    /// Adds stage `name`, consuming the repartition topic `<group>-<name>-repartition` that
    /// earlier stages feed with [`Ctx::repartition`](crate::Ctx::repartition). The pipeline
    /// creates it at start, with the partition count of the previous stage's input.
    pub fn repartitioned_stage<H: Process>(self, name: &str, handler: H) -> Self {
        let stage = name.to_owned();
        self.stage_with(name, handler, move |b| b.repartitioned_input(&stage))
    }

    /// Adds stage `name` with settings of its own over the pipeline's (its topics, table
    /// topics, batch size, ...).
    pub fn stage_with<H: Process>(
        mut self,
        name: &str,
        handler: H,
        configure: impl FnOnce(WorkerBuilder) -> WorkerBuilder + 'static,
    ) -> Self {
        let stage = name.to_owned();
        let make: MakeStage = Box::new(move |base: Config, stages: Arc<Stages>| {
            let builder = configure(WorkerBuilder::from_config(base));
            let worker = builder.build_stage(&stage, handler, stages)?;
            Ok(Box::new(worker) as Box<dyn StageRun>)
        });
        self.stages.push((name.to_owned(), make));
        self
    }

    /// Checks every stage's settings and prepares them; starts the embedded broker (shared by
    /// the stages) when no broker is configured.
    pub fn build(self) -> Result<Pipeline> {
        let mut base = self.base.into_config();
        if self.stages.is_empty() {
            return Err(Error::config(
                "pipeline",
                "a pipeline needs at least one stage",
            ));
        }
        if !base.topics.is_empty() {
            return Err(Error::config(
                "topics (WEIR_TOPICS)",
                format!(
                    "{:?} would belong to no stage of the pipeline: a stage consumes its handler's declared topics, those given with stage_with(name, handler, |b| b.topic(..)), or its repartition topic",
                    base.topics
                ),
            ));
        }
        let mut names: Vec<&str> = Vec::new();
        for (name, _) in &self.stages {
            crate::config::validate_topic_name(&repartition_topic(&base.group, name))
                .map_err(|m| Error::config("pipeline stage", format!("{name:?}: {m}")))?;
            if names.contains(&name.as_str()) {
                return Err(Error::config(
                    "pipeline stage",
                    format!("stage {name:?} is added twice"),
                ));
            }
            names.push(name);
        }
        let embedded = match &base.brokers {
            Some(_) => None,
            None => {
                base.state_dir = embedded_state_dir(&base.state_dir);
                let broker = Arc::new(EmbeddedBroker::start(1)?);
                base.brokers = Some(broker.bootstrap_servers().to_owned());
                warn_embedded(&broker, &base.state_dir);
                Some(broker)
            }
        };
        let metrics_listener = match base.metrics_addr.take() {
            Some(addr) => {
                observe::prometheus();
                Some(bind_metrics(&addr)?)
            }
            None => None,
        };
        let stages = Arc::new(Stages::new(embedded.clone(), self.stages.len()));
        let mut runs = Vec::new();
        for (name, make) in self.stages {
            let mut config = base.clone();
            config.pipeline = Some(base.group.clone());
            config.group = format!("{}-{name}", base.group);
            // (A handler's declared group does not replace the stage's.)
            config.given("group");
            config.topics.clear();
            runs.push((name, make(config, Arc::clone(&stages))?));
        }
        let connection = Connection::Kafka(connection(
            &base,
            base.brokers.as_deref().unwrap_or_default(),
        ));
        Ok(Pipeline {
            http_token: base.http_token.clone(),
            state_dir: base.state_dir.clone(),
            group: base.group,
            connection,
            stages,
            runs,
            metrics_listener,
        })
    }
}

/// The stages' views as one worker's.
struct PipelineView(Arc<Stages>);

impl WorkerView for PipelineView {
    fn state(&self, topic: Option<&str>, store: &str, key: &str) -> StateAnswer {
        let mut views: Vec<Arc<dyn WorkerView>> = self.0.views();
        // The stages that declare the store, if any do: another stage that owns the key's
        // partition of its own input would answer "absent".
        if views.iter().any(|v| v.declares_store(store)) {
            views.retain(|v| v.declares_store(store));
        }
        let answers: Vec<StateAnswer> = views.iter().map(|v| v.state(topic, store, key)).collect();
        let rank = |a: &StateAnswer| match a {
            StateAnswer::Found { .. }
            | StateAnswer::Absent { .. }
            | StateAnswer::Restoring { .. } => 0,
            StateAnswer::NotOwned { .. } => 1,
            StateAnswer::Unavailable(_) => 2,
            StateAnswer::Invalid(_) => 3,
        };
        answers
            .into_iter()
            .min_by_key(rank)
            .unwrap_or_else(|| StateAnswer::Unavailable("no stage has started".into()))
    }

    fn live(&self) -> bool {
        self.0.views().iter().all(|v| v.live())
    }

    fn not_ready(&self) -> Option<String> {
        let views = self.0.views();
        if views.len() < self.0.expected() {
            return Some(format!(
                "{} of {} stages started",
                views.len(),
                self.0.expected()
            ));
        }
        let why: Vec<String> = views.iter().filter_map(|v| v.not_ready()).collect();
        (!why.is_empty()).then(|| why.join("; "))
    }

    fn partitions(&self) -> Vec<PartitionRow> {
        let mut rows: Vec<PartitionRow> =
            self.0.views().iter().flat_map(|v| v.partitions()).collect();
        rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        rows
    }

    fn groups(&self) -> Vec<String> {
        self.0.views().iter().flat_map(|v| v.groups()).collect()
    }
}

/// Several handlers in one process: one worker per stage, each in its own consumer group
/// `<group>-<stage>` (so a rebalance of one stage does not stop the others, and each scales by
/// its own input's partitions), with one embedded broker, one metrics endpoint and one graceful
/// stop.
///
/// ```no_run
/// # use weir::prelude::*;
/// # #[derive(Handler)]
/// # #[handler(topic = "orders", value = Utf8)]
/// # struct Enrich;
/// # impl Process for Enrich {
/// #     type Error = weir::Error;
/// #     async fn process(&self, _: Record<'_, String>, _: &mut Ctx<'_>) -> weir::Result<()> { Ok(()) }
/// # }
/// # #[derive(Handler)]
/// # #[handler(value = Utf8)]
/// # struct Totals;
/// # impl Process for Totals {
/// #     type Error = weir::Error;
/// #     async fn process(&self, _: Record<'_, String>, _: &mut Ctx<'_>) -> weir::Result<()> { Ok(()) }
/// # }
/// # async fn run() -> weir::Result<()> {
/// Worker::from_env()?
///     .pipeline()
///     .stage("enrich", Enrich)
///     .repartitioned_stage("totals", Totals)
///     .build()?
///     .run_until_signal()
///     .await
/// # }
/// ```
pub struct Pipeline {
    group: String,
    http_token: Option<crate::config::Secret>,
    state_dir: std::path::PathBuf,
    connection: Connection,
    stages: Arc<Stages>,
    runs: Vec<(String, Box<dyn StageRun>)>,
    metrics_listener: Option<std::net::TcpListener>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("group", &self.group)
            .field(
                "stages",
                &self.runs.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// The address `/metrics` and `/health/*` are served on, when a metrics address is set.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The embedded broker, when no broker was configured.
    pub fn embedded_broker(&self) -> Option<Arc<EmbeddedBroker>> {
        self.stages.embedded()
    }

    /// Where stage `stage` keeps its partition stores: `<state_dir>/<group>-<stage>`, one
    /// folder per input topic inside.
    pub fn stage_state_dir(&self, stage: &str) -> std::path::PathBuf {
        self.state_dir.join(format!("{}-{stage}", self.group))
    }

    /// The repartition topic feeding `stage`: `<group>-<stage>-repartition`.
    pub fn repartition_topic(&self, stage: &str) -> String {
        repartition_topic(&self.group, stage)
    }

    /// Runs until SIGINT or SIGTERM, then stops every stage gracefully.
    pub async fn run_until_signal(self) -> Result<()> {
        signals::listen();
        self.run(std::future::pending()).await
    }

    /// Runs every stage until `shutdown` completes (or SIGINT/SIGTERM, once weir listens for
    /// them), then stops them all gracefully. A stage that fails stops the others; the first
    /// error is returned.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        if self.stages.embedded().is_none() {
            let inputs = self.stages.inputs();
            ensure_repartition_topics(&self.group, &inputs, &self.connection).await?;
        }
        let token = self.http_token.as_ref().map(|t| Arc::from(t.0.as_str()));
        let endpoint = self.metrics_listener.map(|listener| {
            let view: Arc<dyn WorkerView> = Arc::new(PipelineView(Arc::clone(&self.stages)));
            let listener = tokio::net::TcpListener::from_std(listener);
            tokio::spawn(async move {
                match listener {
                    Ok(l) => observe::serve(l, view, token).await,
                    Err(e) => tracing::error!("metrics endpoint: {e}"),
                }
            })
        });
        let _endpoint = AbortOnDrop(endpoint.into_iter().collect());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut running: futures::stream::FuturesUnordered<_> = self
            .runs
            .into_iter()
            .map(|(name, stage)| {
                let run = stage.run(stop_rx.clone());
                async move { (name, run.await) }
            })
            .collect();
        tokio::pin!(shutdown);
        let mut first_error = None;
        let mut stopping = false;
        use futures::StreamExt;
        loop {
            tokio::select! {
                done = running.next() => match done {
                    None => break,
                    Some((name, result)) => {
                        if let Err(e) = result {
                            tracing::error!(stage = %name, "stage failed, stopping the pipeline: {e}");
                            first_error.get_or_insert(e);
                        }
                        let _ = stop_tx.send(true);
                    }
                },
                () = &mut shutdown, if !stopping => {
                    stopping = true;
                    let _ = stop_tx.send(true);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl WorkerBuilder {
    /// Runs several handlers in this worker process: a pipeline of stages, each in its own
    /// consumer group `<group>-<stage>`, sharing these settings (see [`Pipeline`](crate::Pipeline)).
    /// Topics given here (`topic`, `WEIR_TOPICS`) are refused: a stage consumes its handler's
    /// declared topics, those given with [`stage_with`](crate::worker::PipelineBuilder::stage_with), or
    /// its repartition topic.
    pub fn pipeline(self) -> PipelineBuilder {
        PipelineBuilder::new(self)
    }
}
