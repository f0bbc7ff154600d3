//! What a pipeline's stages share while they are built and run: the embedded broker, their
//! views (served by the one endpoint) and their input topics.

use std::sync::{Arc, Mutex};

use crate::broker::kafka::EmbeddedBroker;
use crate::observe::WorkerView;
use crate::runtime::admin::StageInputs;

/// What the stages share: the embedded broker, their views (for the one endpoint), and their
/// input topics (for the repartition topics' partition counts).
pub(crate) struct Stages {
    embedded: Option<Arc<EmbeddedBroker>>,
    views: Mutex<Vec<Arc<dyn WorkerView>>>,
    /// Each stage's input topics and stores, in stage order.
    inputs: Mutex<Vec<StageInputs>>,
    expected: usize,
}

impl std::fmt::Debug for Stages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stages")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl Stages {
    /// What `expected` stages will share, on `embedded` if the pipeline runs on one.
    pub(crate) fn new(embedded: Option<Arc<EmbeddedBroker>>, expected: usize) -> Self {
        Self {
            embedded,
            views: Mutex::default(),
            inputs: Mutex::default(),
            expected,
        }
    }

    /// How many stages the pipeline has.
    pub(crate) fn expected(&self) -> usize {
        self.expected
    }

    /// The views of the stages running so far.
    pub(crate) fn views(&self) -> Vec<Arc<dyn WorkerView>> {
        lock(&self.views).clone()
    }

    /// The input topics and store folders of the stages built so far.
    pub(crate) fn inputs(&self) -> Vec<StageInputs> {
        lock(&self.inputs).clone()
    }

    /// The pipeline's embedded broker, if it runs on one.
    pub(crate) fn embedded(&self) -> Option<Arc<EmbeddedBroker>> {
        self.embedded.clone()
    }

    /// Records a stage's input topics, and the folder of its stores, as it is built.
    pub(crate) fn add_inputs(&self, stage: &str, topics: &[String], stores: std::path::PathBuf) {
        lock(&self.inputs).push((stage.to_owned(), topics.to_vec(), stores));
    }

    /// A running stage's view, served by the pipeline's endpoint.
    pub(crate) fn add_view(&self, view: Arc<dyn WorkerView>) {
        lock(&self.views).push(view);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
