//! Topic administration on Kafka: partition counts, and creating the topics a worker writes
//! to.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::Connection;
use crate::broker::WantedTopic;

impl Connection {
    /// Creates the topics of `wanted` that do not exist (failures are warnings: the topics may
    /// exist or be auto-created).
    pub(crate) async fn create_missing(&self, wanted: Vec<WantedTopic>) {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::client::DefaultClientContext;
        if wanted.is_empty() {
            return;
        }
        let admin: AdminClient<DefaultClientContext> = match self
            .client_config()
            .clone()
            .set("allow.auto.create.topics", "false")
            .create()
        {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("cannot check the topics the worker writes to: {e}");
                return;
            }
        };
        let admin = Arc::new(admin);
        let meta_admin = Arc::clone(&admin);
        let metadata = tokio::task::spawn_blocking(move || {
            meta_admin
                .inner()
                .fetch_metadata(None, Duration::from_secs(10))
        })
        .await;
        let Ok(Ok(metadata)) = metadata else {
            tracing::warn!("cannot read topic metadata to check the topics the worker writes to");
            return;
        };
        let partitions = |name: &str| {
            metadata
                .topics()
                .iter()
                .find(|t| t.name() == name && t.error().is_none())
                .map(|t| t.partitions().len() as i32)
        };
        let missing: Vec<(NewTopic<'_>, &str)> = wanted
            .iter()
            .filter(|w| partitions(&w.name).is_none())
            .map(|w| {
                let n = w
                    .partitions_like
                    .iter()
                    .filter_map(|t| partitions(t))
                    .max()
                    .unwrap_or(1)
                    .max(1);
                let t = NewTopic::new(&w.name, n, TopicReplication::Fixed(-1));
                (
                    if w.compacted {
                        t.set("cleanup.policy", "compact")
                    } else {
                        t
                    },
                    w.kind,
                )
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        let kind_of = |name: &str| {
            missing
                .iter()
                .find(|(t, _)| t.name == name)
                .map_or("topic", |(_, k)| *k)
        };
        let topics: Vec<&NewTopic<'_>> = missing.iter().map(|(t, _)| t).collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
        let created =
            tokio::time::timeout(Duration::from_secs(10), admin.create_topics(topics, &opts)).await;
        match created {
            Ok(Ok(results)) => {
                for r in results {
                    match r {
                        Ok(t) => tracing::info!(topic = %t, "{} created", kind_of(&t)),
                        Err((t, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                            tracing::debug!(topic = %t, "{} exists", kind_of(&t))
                        }
                        Err((t, e)) => {
                            tracing::warn!(topic = %t, "cannot create {} ({e}); it must exist or be auto-created", kind_of(&t))
                        }
                    }
                }
            }
            Ok(Err(e)) => tracing::warn!(
                "cannot create the topics the worker writes to ({e}); they must exist or be auto-created"
            ),
            Err(_) => tracing::warn!(
                "creating the topics the worker writes to timed out; they must exist or be auto-created"
            ),
        }
    }

    /// Each topic's partition count (`None`: no such topic).
    pub(crate) fn partition_counts<'t>(
        &self,
        topics: impl Iterator<Item = &'t str>,
    ) -> Result<HashMap<&'t str, Option<i32>>, String> {
        let consumer: BaseConsumer = self
            .client_config()
            .clone()
            .set("allow.auto.create.topics", "false")
            .create()
            .map_err(|e| e.to_string())?;
        let mut counts = HashMap::new();
        for topic in topics {
            let md = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .map_err(|e| format!("reading the metadata of {topic:?}: {e}"))?;
            let n = md
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
                .map(|t| t.partitions().len() as i32);
            counts.insert(topic, n);
        }
        Ok(counts)
    }
}
