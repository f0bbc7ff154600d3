//! Topic administration: the dead-letter and changelog topics a worker writes to.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;

use crate::config::Config;

/// Creates missing dead-letter and changelog topics (a changelog compacted, with as many
/// partitions as its source topic); failures are warnings, since the topics may exist or be
/// auto-created.
pub(crate) async fn ensure_topics(config: &Config, connection: &ClientConfig) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    // (source topic, topic, what it is, compacted)
    let mut wanted: Vec<(String, String, &str, bool)> = Vec::new();
    for t in &config.topics {
        if let Some(d) = config.dead_letter_topic_of(t) {
            wanted.push((t.clone(), d, "dead-letter topic", false));
        }
        if let (true, Some(l)) = (config.windows, config.late_topic_of(t)) {
            wanted.push((t.clone(), l, "late-record topic", false));
        }
        if let Some(c) = config.changelog_topic_of(t) {
            wanted.push((t.clone(), c, "changelog topic", true));
        }
    }
    if wanted.is_empty() {
        return;
    }
    let admin: AdminClient<DefaultClientContext> = match connection
        .clone()
        .set("allow.auto.create.topics", "false")
        .create()
    {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!("cannot check dead-letter and changelog topics: {e}");
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
        tracing::warn!("cannot read topic metadata to check dead-letter and changelog topics");
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
        .filter(|(_, name, _, _)| partitions(name).is_none())
        .map(|(src, name, kind, compacted)| {
            let t = NewTopic::new(
                name,
                partitions(src).unwrap_or(1).max(1),
                TopicReplication::Fixed(-1),
            );
            (
                if *compacted {
                    t.set("cleanup.policy", "compact")
                } else {
                    t
                },
                *kind,
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
            "cannot create dead-letter and changelog topics ({e}); they must exist or be auto-created"
        ),
        Err(_) => tracing::warn!(
            "creating dead-letter and changelog topics timed out; they must exist or be auto-created"
        ),
    }
}
