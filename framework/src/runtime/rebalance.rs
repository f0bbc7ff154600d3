//! The worker's side of rebalances: on assign, open each partition's store, claim it, and
//! start its task at its stored offset (a partition whose store may need a changelog restore
//! starts paused, and its task restores it off the consumer thread); on revoke, let each task
//! finish its batch, commit, and close its store before returning the offsets to settle.

use std::path::PathBuf;
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use weir_state::PartitionStore;

use crate::broker::{Assignments, Lane, Start};
use crate::observe::metric_names::{PAUSES_TOTAL, REBALANCES_TOTAL};
use crate::processing::Process;
use crate::processing::batch::{BatchRunner, Mode};
use crate::runtime::flow::PartitionFlow;
use crate::runtime::partition_task::{PartitionTask, TaskStore};
use crate::runtime::shared::{PartitionHandle, Shared};

/// The worker's side of its broker's assignments.
pub(crate) struct Rebalances<H> {
    shared: Arc<Shared<H>>,
}

impl<H: Process> Rebalances<H> {
    pub(crate) fn new(shared: Arc<Shared<H>>) -> Self {
        Self { shared }
    }
}

impl<H: Process> Assignments for Rebalances<H> {
    fn assigned(&self, lanes: &[Lane<'_>]) -> Vec<Option<Start>> {
        self.assign(lanes)
    }

    fn revoked(&self, lanes: &[Lane<'_>], lost: bool) -> Vec<(Arc<str>, i32, i64)> {
        self.revoke(lanes, lost)
    }

    fn watermarks(&self, of: &dyn Fn(Lane<'_>) -> Option<(i64, i64)>) {
        let owned = self.shared.owned();
        for (topic, partitions) in owned.iter() {
            for (&partition, h) in partitions {
                if let Some((low, high)) = of(Lane { topic, partition }) {
                    h.flow.set_watermarks(low, high);
                }
            }
        }
    }
}

impl<H: Process> Rebalances<H> {
    /// The consumer group, the label of this worker's rebalance counts.
    fn group(&self) -> String {
        self.shared.config.group.clone()
    }

    fn store_path(&self, topic: &str, partition: i32) -> PathBuf {
        let c = &self.shared.config;
        c.state_dir
            .join(&c.group)
            .join(topic)
            .join(format!("{partition}.sqlite"))
    }

    fn assign(&self, lanes: &[Lane<'_>]) -> Vec<Option<Start>> {
        if !lanes.is_empty() {
            metrics::counter!(REBALANCES_TOTAL, "kind" => "assign", "group" => self.group())
                .increment(1);
        }
        let shared = &self.shared;
        shared.lifecycle.joined();
        let c = &shared.config;
        let mut starts = Vec::with_capacity(lanes.len());
        for lane in lanes {
            let (topic, partition) = (lane.topic.to_owned(), lane.partition);
            // Opening, claiming and reading the offset are quick local SQLite steps; a
            // changelog restore, which may take long, runs in the partition's task.
            let path = self.store_path(&topic, partition);
            let opened = PartitionStore::open(&path).and_then(|store| {
                let store = store.with_cache(Arc::clone(&shared.cache_budget));
                // Fence any earlier owner of this file (another worker sharing the state
                // dir): from now on its commits for this partition are refused.
                store.claim(&topic, partition)?;
                let next = store.next_offset(&topic, partition)?;
                Ok((store, next))
            });
            let (store, next_offset) = match opened {
                Ok(o) => o,
                Err(e) => {
                    shared.lifecycle.fail(e.into());
                    starts.push(None);
                    continue;
                }
            };
            let changelog = c.changelog_topic_of(&topic);
            tracing::info!(%topic, partition, ?next_offset, store = %path.display(), restore_check = changelog.is_some(), "partition assigned");
            let (store, closed) = TaskStore::new(store);
            let (tx, rx) = mpsc::unbounded_channel();
            let restoring = changelog.is_some() || !shared.task_ctx.tables.is_empty();
            let flow = Arc::new(PartitionFlow::new(
                (c.queue_capacity, c.queue_capacity_mb << 20),
                next_offset,
                restoring,
            ));
            // No stored offset: state is empty, so it must see the partition from its start.
            if restoring {
                // Its store is still being prepared: it fetches nothing yet.
                flow.set_paused(true);
                metrics::counter!(PAUSES_TOTAL).increment(1);
            }
            starts.push(Some(Start {
                next: next_offset,
                paused: restoring,
            }));
            let topic_name: Arc<str> = Arc::from(topic.as_str());
            let runner = BatchRunner::new(
                Arc::clone(&shared.handler),
                store,
                (Arc::clone(&topic_name), partition),
                c.policy_for(&topic),
                shared.sink.clone(),
                Mode::Runtime(Arc::clone(flow.stop_signal())),
            )
            .with_scope(shared.task_ctx.scope.clone());
            let task = PartitionTask::new(
                runner,
                (Arc::clone(&topic_name), partition),
                rx,
                Arc::clone(&flow),
                next_offset,
                changelog,
                shared.task_ctx.clone(),
            );
            let task = shared.runtime.spawn(task.run());
            shared.owned().entry(topic).or_default().insert(
                partition,
                PartitionHandle {
                    topic: topic_name,
                    store_path: path.clone(),
                    queue: tx,
                    flow,
                    overflow: Default::default(),
                    closed,
                    task,
                },
            );
        }
        starts
    }

    fn revoke(&self, lanes: &[Lane<'_>], lost: bool) -> Vec<(Arc<str>, i32, i64)> {
        let kind = if lost { "lost" } else { "revoke" };
        if !lanes.is_empty() {
            metrics::counter!(REBALANCES_TOTAL, "kind" => kind, "group" => self.group())
                .increment(1);
        }
        let abandon = self.shared.lifecycle.is_abandoned();
        let mut handles = Vec::new();
        {
            let mut owned = self.shared.owned();
            for lane in lanes {
                let removed = owned
                    .get_mut(lane.topic)
                    .and_then(|m| m.remove(&lane.partition));
                if let Some(h) = removed {
                    handles.push((Arc::clone(&h.topic), lane.partition, h));
                }
            }
            owned.retain(|_, m| !m.is_empty());
        }
        for (_, _, h) in &handles {
            if abandon {
                h.task.abort();
            } else {
                h.flow.request_stop();
            }
        }
        let mut final_offsets = Vec::new();
        for (t, p, _) in &handles {
            self.shared.set_releasing(format!("{t}/{p}"), true);
        }
        for (topic, partition, h) in handles {
            let PartitionHandle {
                queue,
                flow,
                closed,
                ..
            } = h;
            drop(queue);
            wait_closed(&closed, &topic, partition);
            self.shared
                .set_releasing(format!("{topic}/{partition}"), false);
            if let Some(next) = flow.committed_offset() {
                final_offsets.push((Arc::clone(&topic), partition, next));
            }
            tracing::info!(%topic, partition, kind, committed = ?flow.committed_offset(), "partition released");
        }
        if lost || abandon {
            final_offsets.clear();
        }
        final_offsets
    }
}

/// Blocks until a partition's store is closed, logging while it takes long.
fn wait_closed(closed: &std_mpsc::Receiver<()>, topic: &str, partition: i32) {
    let started = Instant::now();
    loop {
        match closed.recv_timeout(Duration::from_secs(5)) {
            Err(std_mpsc::RecvTimeoutError::Timeout) => tracing::warn!(
                %topic, partition, waited_s = started.elapsed().as_secs(),
                "waiting for the partition's batch to finish before releasing it"
            ),
            _ => return,
        }
    }
}
