//! A Kafka consumer group as the giver of a worker's lanes: librdkafka calls the context from
//! the consumer thread's poll on every rebalance, and the context hands the partitions to the
//! runtime's [`Assignments`] (assigned lanes start at their stores' offsets; revoked ones are
//! released, then their final offsets committed). Client errors are counted and logged, and
//! the statistics give each owned partition's watermarks.

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use super::Property;
use crate::broker::{Assignments, Lane, Source};
use crate::error::{Error, Result};
use crate::observe::metric_names::{CLIENT_ERRORS_TOTAL, KAFKA_COMMIT_FAILURES_TOTAL};

/// The settings a worker's group consumer is made with.
#[derive(Debug, Clone)]
pub(crate) struct GroupSettings(ClientConfig);

impl GroupSettings {
    /// The consumer of `group` on `brokers`: weir's defaults, then the user's librdkafka
    /// `properties` (each checked on its own, so an error names the one that is wrong).
    pub(crate) fn new(
        brokers: &str,
        group: &str,
        instance_id: Option<&str>,
        properties: &[Property<'_>],
    ) -> Result<Self> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", "10000")
            // A member learns of a rebalance at its next heartbeat: librdkafka's 3 s default
            // would add up to 3 s to every hand-off.
            .set("heartbeat.interval.ms", "1000")
            .set("enable.partition.eof", "false")
            // librdkafka backs a partition's fetching off by this much once its local queue
            // passes queued.min.messages; the consumer thread drains that queue at once, so
            // the default 1000 ms only stalls the stream (docs/performance.md).
            .set("fetch.queue.backoff.ms", "20")
            // The statistics carry the high watermarks learned from fetch responses (lag).
            .set("statistics.interval.ms", "1000");
        if let Some(id) = instance_id {
            client.set("group.instance.id", id);
        }
        for p in properties {
            client.set(p.name, p.value);
            let mut single = ClientConfig::new();
            single.set(p.name, p.value);
            if let Err(e) = single.create_native_config() {
                return Err(Error::config(p.origin, e.to_string()));
            }
        }
        client
            .create_native_config()
            .map_err(|e| Error::config("kafka properties", e.to_string()))?;
        Ok(Self(client))
    }

    pub(super) fn client_config(&self) -> &ClientConfig {
        &self.0
    }

    /// The consumer; it joins the group at its first poll after [`Source::subscribe`].
    pub(crate) fn consumer<A: Assignments>(
        &self,
        assignments: A,
    ) -> Result<BaseConsumer<GroupContext<A>>> {
        self.0
            .create_with_context(GroupContext { assignments })
            .map_err(super::error)
    }
}

/// The consumer's context.
pub(crate) struct GroupContext<A> {
    assignments: A,
}

impl<A: Assignments> ClientContext for GroupContext<A> {
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
        super::client_log::forward(level, fac, message);
    }

    /// librdkafka's statistics carry each partition's watermarks as learned from fetch
    /// responses: they feed the lag of the partitions this worker owns.
    fn stats(&self, stats: Statistics) {
        self.assignments.watermarks(&|lane| {
            let p = stats
                .topics
                .get(lane.topic)?
                .partitions
                .get(&lane.partition)?;
            Some((p.lo_offset, p.hi_offset))
        });
    }
}

impl<A: Assignments> ConsumerContext for GroupContext<A> {
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
                let paused = self.assign(tpl);
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                // Partitions whose store is still being prepared fetch nothing yet.
                for (topic, partition) in paused {
                    if let Err(e) = Source::pause(
                        consumer,
                        Lane {
                            topic: &topic,
                            partition,
                        },
                    ) {
                        tracing::warn!(%topic, partition, "pause failed: {e}");
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

impl<A: Assignments> GroupContext<A> {
    /// Hands the assigned partitions to the runtime and sets where each starts; returns those
    /// to pause once assigned.
    fn assign(&self, tpl: &mut TopicPartitionList) -> Vec<(String, i32)> {
        let owned: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|el| (el.topic().to_owned(), el.partition()))
            .collect();
        let lanes: Vec<Lane<'_>> = owned
            .iter()
            .map(|(topic, partition)| Lane {
                topic,
                partition: *partition,
            })
            .collect();
        let starts = self.assignments.assigned(&lanes);
        let mut paused = Vec::new();
        for ((topic, partition), start) in owned.iter().zip(starts) {
            let Some(start) = start else {
                continue;
            };
            let offset = start.next.map_or(Offset::Beginning, Offset::Offset);
            if let Err(e) = tpl.set_partition_offset(topic, *partition, offset) {
                tracing::error!(%topic, partition, "cannot set start offset: {e}");
            }
            if start.paused {
                paused.push((topic.clone(), *partition));
            }
        }
        paused
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList, lost: bool) {
        let elements = tpl.elements();
        let lanes: Vec<Lane<'_>> = elements
            .iter()
            .map(|el| Lane {
                topic: el.topic(),
                partition: el.partition(),
            })
            .collect();
        let done = self.assignments.revoked(&lanes, lost);
        if lost || done.is_empty() {
            return;
        }
        let mut final_offsets = TopicPartitionList::new();
        for (topic, partition, next) in &done {
            let _ = final_offsets.add_partition_offset(topic, *partition, Offset::Offset(*next));
        }
        if let Err(e) = consumer.commit(&final_offsets, CommitMode::Sync) {
            tracing::warn!("final offset commit to Kafka failed (state is safe in SQLite): {e}");
        }
    }
}
