//! Rebalance callbacks: on assign, open each partition's store, seek to its stored offset and
//! start its task; on revoke, let each task finish its batch, commit, and close its store
//! before the callback returns.

use std::path::PathBuf;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;
use weir_state::PartitionStore;

use crate::batch::Policy;
use crate::dead_letter::DeadLetterPolicy;
use crate::metric_names::{CLIENT_ERRORS_TOTAL, REBALANCES_TOTAL};
use crate::partition_task::{BatchSettings, PartitionFlow, PartitionTask, TaskStore};
use crate::restore::{self, Restore};
use crate::shared::{PartitionHandle, Shared};
use crate::Process;

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
                    if s.hi_offset >= 0 {
                        h.flow.high_watermark.store(s.hi_offset, Ordering::Relaxed);
                    }
                    if s.lo_offset >= 0 {
                        h.flow.low_watermark.store(s.lo_offset, Ordering::Relaxed);
                    }
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
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
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

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            // Kafka's committed offset is progress only; the truth is in SQLite.
            tracing::debug!("offset commit to Kafka failed ({e}): {offsets:?}");
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
        metrics::counter!(REBALANCES_TOTAL, "kind" => "assign").increment(1);
        self.shared.joined.store(true, Ordering::SeqCst);
        let shared = &self.shared;
        let c = &shared.config;
        let mut seeks = Vec::new();
        // Open each store, fence earlier owners and read its offset, without holding the owned
        // map (the metrics endpoint reads it).
        let mut opened = Vec::new();
        for el in tpl.elements() {
            let (topic, partition) = (el.topic().to_owned(), el.partition());
            let path = self.store_path(&topic, partition);
            let store = match PartitionStore::open(&path) {
                Ok(s) => s,
                Err(e) => {
                    shared.fail(e.into());
                    continue;
                }
            };
            // Fence any earlier owner of this file (another worker sharing the state dir):
            // from now on its commits for this partition are refused.
            if let Err(e) = store.claim(&topic, partition) {
                shared.fail(e.into());
                continue;
            }
            let next_offset = match store.next_offset(&topic, partition) {
                Ok(o) => o,
                Err(e) => {
                    shared.fail(e.into());
                    continue;
                }
            };
            opened.push((topic, partition, path, store, next_offset));
        }
        // With a changelog, stores that are missing or behind are rebuilt from it first, all
        // partitions at once.
        std::thread::scope(|s| {
            for (topic, partition, _, store, next_offset) in opened.iter_mut() {
                let Some(cl) = c.changelog_topic_of(topic) else {
                    continue;
                };
                let brokers = shared.brokers.as_str();
                s.spawn(move || {
                    *next_offset = match restore::restore_if_behind(
                        brokers,
                        store,
                        topic,
                        *partition,
                        &cl,
                        *next_offset,
                    ) {
                        Ok(Restore::Local(n)) => n,
                        Ok(Restore::Restored { next_offset }) => Some(next_offset),
                        Err(e) => {
                            // The store is untouched, or emptied without an offset: either
                            // way consistent, so go on from its offset (further back, not
                            // wrong).
                            let n = store.next_offset(topic, *partition).ok().flatten();
                            tracing::warn!(%topic, partition, changelog = %cl, next_offset = ?n, "changelog restore failed, going on from the local store: {e}");
                            n
                        }
                    };
                });
            }
        });
        let mut owned = shared.owned();
        for (topic, partition, path, store, next_offset) in opened {
            // No stored offset: state is empty, so it must see the partition from its start.
            seeks.push((
                topic.clone(),
                partition,
                next_offset.map_or(Offset::Beginning, Offset::Offset),
            ));
            tracing::info!(%topic, partition, ?next_offset, store = %path.display(), "partition assigned");
            let (store, closed) = TaskStore::new(store);
            let (tx, rx) = mpsc::unbounded_channel();
            let flow = Arc::new(PartitionFlow::new(next_offset));
            let task = PartitionTask {
                handler: Arc::clone(&shared.handler),
                store,
                topic: topic.clone(),
                partition,
                queue: rx,
                carry: Default::default(),
                flow: Arc::clone(&flow),
                control: shared.control.clone(),
                next_offset,
                sink: shared.sink.clone(),
                outbox: shared.outbox.clone(),
                settings: BatchSettings {
                    policy: Policy {
                        delivery: c.delivery,
                        changelog: c.changelog_topic_of(&topic),
                        retry: c.retry,
                        dead_letter: c.dead_letter_topic_of(&topic).map(|t| DeadLetterPolicy {
                            topic: t,
                            keep_key_order: c.keep_key_order,
                        }),
                    },
                    batch_size: c.batch_size,
                    linger: c.linger,
                    low_water: c.queue_capacity / 2,
                },
            };
            let task = shared.runtime.spawn(task.run());
            let handle_topic = Arc::from(topic.as_str());
            owned.entry(topic).or_default().insert(
                partition,
                PartitionHandle {
                    topic: handle_topic,
                    queue: tx,
                    flow,
                    overflow: Default::default(),
                    closed,
                    task,
                },
            );
        }
        drop(owned);
        for (topic, partition, offset) in seeks {
            if let Err(e) = tpl.set_partition_offset(&topic, partition, offset) {
                tracing::error!(%topic, partition, "cannot set start offset: {e}");
            }
        }
    }

    fn releasing(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.shared
            .releasing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList, lost: bool) {
        let kind = if lost { "lost" } else { "revoke" };
        metrics::counter!(REBALANCES_TOTAL, "kind" => kind).increment(1);
        let abandon = self
            .shared
            .abandon
            .load(std::sync::atomic::Ordering::SeqCst);
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
        let release_names: Vec<String> =
            handles.iter().map(|(t, p, _)| format!("{t}/{p}")).collect();
        self.releasing().extend(release_names.iter().cloned());
        for (topic, partition, h) in handles {
            let PartitionHandle {
                queue,
                flow,
                closed,
                ..
            } = h;
            drop(queue);
            wait_closed(&closed, &topic, partition);
            self.releasing().remove(&format!("{topic}/{partition}"));
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
