//! Topic administration: the dead-letter, late-record, changelog and repartition topics a
//! worker writes to.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::processing::repartition_topic;
use crate::runtime::tables::partition_counts;

/// A pipeline stage's name, input topics, and the folder of its stores.
pub(crate) type StageInputs = (String, Vec<String>, std::path::PathBuf);

/// A topic a worker writes to, created when missing.
struct Wanted {
    name: String,
    /// Created with as many partitions as the largest of these topics (at least 1).
    partitions_like: Vec<String>,
    /// What it is, for logs.
    kind: &'static str,
    compacted: bool,
}

/// Creates missing dead-letter, late-record and changelog topics (a changelog compacted, with
/// as many partitions as its source topic); failures are warnings, since the topics may exist
/// or be auto-created.
pub(crate) async fn ensure_topics(config: &Config, connection: &ClientConfig) {
    let mut wanted = Vec::new();
    let mut want = |source: &str, name: String, kind, compacted| {
        wanted.push(Wanted {
            name,
            partitions_like: vec![source.to_owned()],
            kind,
            compacted,
        })
    };
    for t in &config.topics {
        if let Some(d) = config.dead_letter_topic_of(t) {
            want(t, d, "dead-letter topic", false);
        }
        if let (true, Some(l)) = (config.windows, config.late_topic_of(t)) {
            want(t, l, "late-record topic", false);
        }
        if let Some(c) = config.changelog_topic_of(t) {
            want(t, c, "changelog topic", true);
        }
    }
    create_missing(connection, wanted).await;
}

/// Creates the missing repartition topics of a pipeline whose stages (in order) consume
/// `inputs`: the one feeding a stage gets as many partitions as the previous stage's input.
/// A missing one that the stage's stores (in `stores/<topic>`) have offsets of was deleted
/// after records went through it: that is an error, since a new topic's offsets start again
/// at 0 and the stores would skip its first records. A stage reading a repartition topic with
/// no stage before it is an error too.
pub(crate) async fn ensure_repartition_topics(
    group: &str,
    inputs: &[StageInputs],
    connection: &ClientConfig,
) -> Result<()> {
    let mut wanted = Vec::new();
    for (i, (stage, topics, stores)) in inputs.iter().enumerate() {
        let own = repartition_topic(group, stage);
        if !topics.contains(&own) {
            continue;
        }
        let Some((_, before, _)) = i.checked_sub(1).and_then(|i| inputs.get(i)) else {
            return Err(Error::config(
                "pipeline stage",
                format!("stage {stage:?} reads its repartition topic {own:?}, but no stage comes before it to feed it"),
            ));
        };
        let (client, name) = (connection.clone(), own.clone());
        let exists = tokio::task::spawn_blocking(move || {
            partition_counts(&client, std::iter::once(name.as_str()))
                .map(|c| c.values().any(Option::is_some))
        })
        .await;
        let dir = stores.join(&own);
        let used = std::fs::read_dir(&dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "sqlite"))
        });
        if let (Ok(Ok(false)), true) = (exists, used) {
            return Err(Error::RepartitionTopicDeleted {
                topic: own,
                stage: stage.clone(),
                stores: dir,
            });
        }
        wanted.push(Wanted {
            name: own,
            partitions_like: before.clone(),
            kind: "repartition topic",
            compacted: false,
        });
    }
    create_missing(connection, wanted).await;
    Ok(())
}

async fn create_missing(connection: &ClientConfig, wanted: Vec<Wanted>) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
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
