//! Rebalance callbacks: on assign, open each partition's store, claim it, and start its task
//! at its stored offset (a partition whose store may need a changelog restore starts paused,
//! and its task restores it off the consumer thread); on revoke, let each task finish its
//! batch, commit, and close its store before the callback returns.

use std::path::PathBuf;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use tokio::sync::mpsc;
use weir_state::PartitionStore;

use crate::observe::metric_names::{
    CLIENT_ERRORS_TOTAL, KAFKA_COMMIT_FAILURES_TOTAL, REBALANCES_TOTAL,
};
use crate::processing::batch::{BatchRunner, Mode};
use crate::processing::Process;
use crate::runtime::flow::PartitionFlow;
use crate::runtime::partition_task::{PartitionTask, TaskStore};
use crate::runtime::shared::{PartitionHandle, Shared};

/// The consumer's context: librdkafka calls it from the consumer thread's `poll`.
pub(crate) struct WeirContext<H> {
    pub(crate) shared: Arc<Shared<H>>,
}

impl<H: Process> ClientContext for WeirContext<H> {
    /// Client-level errors (broker connections down, transport failures): counted and logged;
    /// librdkafka reconnects by itself.
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let kind = error
            .rdkafka_error_code()
            .map_or_else(|| "other".to_owned(), |c| format!("{c:?}"));
        metrics::counter!(CLIENT_ERRORS_TOTAL, "kind" => kind).increment(1);
        tracing::warn!("kafka client error: {error}: {reason}");
    }

    /// librdkafka's log lines, forwarded to `tracing` (target `librdkafka`). Failed offset
    /// commits are counted here: librdkafka reports the result of a manual asynchronous
    /// commit only in its log (`COMMITFAIL`).
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "COMMITFAIL" {
            // Kafka's committed offset is progress only; the truth is in SQLite.
            metrics::counter!(KAFKA_COMMIT_FAILURES_TOTAL).increment(1);
        }
        crate::broker::kafka::client_log::forward(level, fac, message);
    }

    /// librdkafka's statistics carry each partition's watermarks as learned from fetch
    /// responses: they feed the lag of the partitions this worker owns.
    fn stats(&self, stats: Statistics) {
        let owned = self.shared.owned();
        for (topic, partitions) in owned.iter() {
            let Some(t) = stats.topics.get(topic) else {
                continue;
            };
            for (p, h) in partitions {
                if let Some(s) = t.partitions.get(p) {
                    h.flow.set_watermarks(s.lo_offset, s.hi_offset);
                }
            }
        }
    }
}

impl<H: Process> ConsumerContext for WeirContext<H> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(tpl);
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                // Partitions whose store is still being prepared fetch nothing yet.
                for partitions in self.shared.owned().values() {
                    for (&p, h) in partitions {
                        if h.flow.is_restoring() && !h.flow.is_paused() {
                            h.pause(consumer, p);
                        }
                    }
                }
                assigned
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revoke(consumer, tpl, consumer.assignment_lost());
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!("rebalance error: {other:?}");
                let _ = consumer.unassign();
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::error!("applying the new assignment failed: {e}");
        }
    }
}

impl<H: Process> WeirContext<H> {
    fn store_path(&self, topic: &str, partition: i32) -> PathBuf {
        let c = &self.shared.config;
        c.state_dir
            .join(&c.group)
            .join(topic)
            .join(format!("{partition}.sqlite"))
    }

    fn assign(&self, tpl: &mut TopicPartitionList) {
        if tpl.count() > 0 {
            metrics::counter!(REBALANCES_TOTAL, "kind" => "assign").increment(1);
        }
        let shared = &self.shared;
        shared.lifecycle.joined();
        let c = &shared.config;
        let mut seeks = Vec::new();
        for el in tpl.elements() {
            let (topic, partition) = (el.topic().to_owned(), el.partition());
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
                    continue;
                }
            };
            let changelog = c.changelog_topic_of(&topic);
            // No stored offset: state is empty, so it must see the partition from its start.
            seeks.push((
                topic.clone(),
                partition,
                next_offset.map_or(Offset::Beginning, Offset::Offset),
            ));
            tracing::info!(%topic, partition, ?next_offset, store = %path.display(), restore_check = changelog.is_some(), "partition assigned");
            let (store, closed) = TaskStore::new(store);
            let (tx, rx) = mpsc::unbounded_channel();
            let flow = Arc::new(PartitionFlow::new(
                (c.queue_capacity, c.queue_capacity_mb << 20),
                next_offset,
                changelog.is_some() || !shared.task_ctx.tables.is_empty(),
            ));
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
        for (topic, partition, offset) in seeks {
            if let Err(e) = tpl.set_partition_offset(&topic, partition, offset) {
                tracing::error!(%topic, partition, "cannot set start offset: {e}");
            }
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList, lost: bool) {
        let kind = if lost { "lost" } else { "revoke" };
        if tpl.count() > 0 {
            metrics::counter!(REBALANCES_TOTAL, "kind" => kind).increment(1);
        }
        let abandon = self.shared.lifecycle.is_abandoned();
        let mut handles = Vec::new();
        {
            let mut owned = self.shared.owned();
            for el in tpl.elements() {
                let removed = owned
                    .get_mut(el.topic())
                    .and_then(|m| m.remove(&el.partition()));
                if let Some(h) = removed {
                    handles.push((el.topic().to_owned(), el.partition(), h));
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
        let mut final_offsets = TopicPartitionList::new();
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
                let _ = final_offsets.add_partition_offset(&topic, partition, Offset::Offset(next));
            }
            tracing::info!(%topic, partition, kind, committed = ?flow.committed_offset(), "partition released");
        }
        if !lost && !abandon && final_offsets.count() > 0 {
            if let Err(e) = consumer.commit(&final_offsets, CommitMode::Sync) {
                tracing::warn!(
                    "final offset commit to Kafka failed (state is safe in SQLite): {e}"
                );
            }
        }
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
